//! Chat channels end to end, over real QUIC: two gateways in front of four zones, the chat
//! bus on real Redis. World lines reach everyone once, in one order; whispers reach their
//! player on the other gateway (and echo to the speaker) and nobody else; zone lines reach
//! the players of the speaker's zone only; parties span gateways; a mute silences one speaker
//! for one player; bad lines and floods are refused with a reason, and nobody is cut off; an
//! operator's silence (`worldmesh chat silence`) holds across logins until lifted.

mod common;

use std::time::Duration;

use common::*;
use worldmesh_client::Session;
use worldmesh_protocol::{ChatChannel, ChatLine, ChatRefusal, ServerMessage};

/// What a player heard over `wait`: chat lines and refusals, in arrival order.
async fn heard(s: &mut Session, wait: Duration) -> (Vec<ChatLine>, Vec<ChatRefusal>) {
    let (lines, refusals, _) = heard_all(s, wait).await;
    (lines, refusals)
}

/// The same, with party news (invitations as `("invite", from)`, members as
/// `("joined" | "left", name)`).
async fn heard_all(
    s: &mut Session,
    wait: Duration,
) -> (Vec<ChatLine>, Vec<ChatRefusal>, Vec<(&'static str, String)>) {
    let deadline = tokio::time::Instant::now() + wait;
    let (mut lines, mut refusals, mut party) = (Vec::new(), Vec::new(), Vec::new());
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, s.next_control()).await {
        match m {
            ServerMessage::ChatLine(l) => lines.push(l),
            ServerMessage::ChatRefused(r) => refusals.push(r),
            ServerMessage::PartyInvite(from) => party.push(("invite", from)),
            ServerMessage::PartyMember(m) => {
                party.push((if m.joined { "joined" } else { "left" }, m.name));
            }
            ServerMessage::Kick(k) => panic!("kicked: {k:?}"),
            _ => {}
        }
    }
    (lines, refusals, party)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_reach_whom_they_should_once_in_one_order_across_gateways() {
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence.clone());
    config.zones = 4;
    config.gateways = 2;
    config.gateway.chat_bus = worldmesh_gateway::chat::bus::ChatBus::redis(
        &worldmesh_testkit::redis_url(),
        &persistence.redis_prefix,
    );
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let endpoint = endpoint();
    let names = [
        "chat_ann", "chat_bob", "chat_cid", "chat_dan", "chat_eve", "chat_fay",
    ];
    let mut players = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let gw = cluster.gateway_addrs[i % 2];
        players.push(Session::login(&endpoint, gw, name).await.unwrap());
    }
    let mut zones = Vec::new();
    for p in &players {
        zones.push(
            owner(&cluster.coordinator_url, p.welcome.entity_id.0)
                .await
                .0,
        );
    }

    // World lines from three speakers on both gateways, interleaved: everyone hears all 12,
    // once, in the same order.
    for round in 0..4 {
        for speaker in [0, 1, 3] {
            players[speaker]
                .chat(
                    ChatChannel::World,
                    &format!("{} says {round}", names[speaker]),
                )
                .await
                .unwrap();
        }
    }
    let mut orders = Vec::new();
    let all = futures_join(players.iter_mut().map(|p| heard(p, Duration::from_secs(2)))).await;
    for (lines, refusals) in all {
        assert!(refusals.is_empty(), "{refusals:?}");
        assert_eq!(lines.len(), 12, "{lines:?}");
        assert!(lines.iter().all(|l| l.channel == ChatChannel::World));
        assert!(
            lines.windows(2).all(|w| w[0].seq < w[1].seq),
            "in order, no repeat"
        );
        orders.push(lines.iter().map(|l| l.seq).collect::<Vec<_>>());
        // Each speaker's own lines keep the order it sent them in.
        let own: Vec<&str> = lines
            .iter()
            .filter(|l| l.from == names[0])
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(
            own,
            [
                "chat_ann says 0",
                "chat_ann says 1",
                "chat_ann says 2",
                "chat_ann says 3"
            ]
        );
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "one order for everyone"
    );

    // A whisper from gateway 0 to a player on gateway 1: the player and the echo, nobody else.
    players[0]
        .chat(ChatChannel::Whisper(names[3].into()), "psst")
        .await
        .unwrap();
    // A zone line from ann: the players of ann's zone.
    players[0]
        .chat(ChatChannel::Zone, "zone hello")
        .await
        .unwrap();
    let all = futures_join(
        players
            .iter_mut()
            .map(|p| heard(p, Duration::from_millis(1500))),
    )
    .await;
    for (i, (lines, _)) in all.into_iter().enumerate() {
        let whispers = lines
            .iter()
            .filter(|l| matches!(&l.channel, ChatChannel::Whisper(to) if to == names[3]))
            .count();
        assert_eq!(
            whispers,
            usize::from(i == 0 || i == 3),
            "{} heard {lines:?}",
            names[i]
        );
        let zone_lines = lines
            .iter()
            .filter(|l| l.channel == ChatChannel::Zone)
            .count();
        assert_eq!(
            zone_lines,
            usize::from(zones[i] == zones[0]),
            "{} in zone {}",
            names[i],
            zones[i]
        );
    }

    // Bob mutes ann: her next world line reaches everyone but bob; unmuted, bob hears her.
    players[1].mute(names[0], true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    players[0]
        .chat(ChatChannel::World, "can you hear me")
        .await
        .unwrap();
    players[2]
        .chat(ChatChannel::World, "cid here")
        .await
        .unwrap();
    let (bob, _) = heard(&mut players[1], Duration::from_millis(1500)).await;
    assert_eq!(
        bob.iter().map(|l| l.from.as_str()).collect::<Vec<_>>(),
        [names[2]]
    );
    players[1].mute(names[0], false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    players[0]
        .chat(ChatChannel::World, "and now")
        .await
        .unwrap();
    let (bob, _) = heard(&mut players[1], Duration::from_millis(1500)).await;
    assert_eq!(bob.len(), 1);
    for p in players.iter_mut().skip(2) {
        heard(p, Duration::from_millis(100)).await;
    }

    // A party across gateways: ann invites dan (gateway 1) and cid; dan accepts, cid does not.
    // Party lines reach ann and dan only; bob, in no party, is refused; dan leaves.
    players[0].party_invite(names[3]).await.unwrap();
    players[0].party_invite(names[2]).await.unwrap();
    let (_, _, news) = heard_all(&mut players[3], Duration::from_millis(700)).await;
    assert_eq!(news, [("invite", names[0].to_owned())]);
    players[3].party_accept(names[0]).await.unwrap();
    players[1].party_accept(names[0]).await.unwrap(); // never invited
    players[1]
        .chat(ChatChannel::Party, "me too?")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    players[0]
        .chat(ChatChannel::Party, "welcome")
        .await
        .unwrap();
    let all = futures_join(
        players
            .iter_mut()
            .map(|p| heard_all(p, Duration::from_millis(1500))),
    )
    .await;
    for (i, (lines, refusals, news)) in all.into_iter().enumerate() {
        let party_lines = lines
            .iter()
            .filter(|l| l.channel == ChatChannel::Party)
            .count();
        assert_eq!(
            party_lines,
            usize::from(i == 0 || i == 3),
            "{}: {lines:?}",
            names[i]
        );
        match i {
            0 => assert_eq!(
                news,
                [
                    ("joined", names[0].to_owned()),
                    ("joined", names[3].to_owned())
                ],
                "ann made the party, then dan joined"
            ),
            1 => assert_eq!(refusals, [ChatRefusal::NoParty, ChatRefusal::NoParty]),
            2 => assert!(news.iter().all(|(what, _)| *what == "invite")),
            3 => assert_eq!(news, [("joined", names[3].to_owned())]),
            _ => assert!(news.is_empty() && refusals.is_empty()),
        }
    }
    players[3].party_leave().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    players[0].chat(ChatChannel::Party, "alone").await.unwrap();
    let (ann, _, news) = heard_all(&mut players[0], Duration::from_millis(800)).await;
    assert_eq!(news, [("left", names[3].to_owned())]);
    assert_eq!(ann.len(), 1);
    let (dan, _, news) = heard_all(&mut players[3], Duration::from_millis(300)).await;
    assert!(dan.is_empty(), "dan left: {dan:?}");
    assert_eq!(news, [("left", names[3].to_owned())]);

    // Refusals: an empty line, a long one, a whisper to a malformed name, then a flood (the
    // burst goes out, the rest is refused). Nobody is cut off.
    let eve = &mut players[4];
    // Let the allowance refill from the lines above.
    tokio::time::sleep(Duration::from_secs(4)).await;
    eve.chat(ChatChannel::World, "").await.unwrap();
    eve.chat(ChatChannel::World, &"x".repeat(257))
        .await
        .unwrap();
    eve.chat(ChatChannel::Whisper("no such!".into()), "hi")
        .await
        .unwrap();
    for i in 0..20 {
        eve.chat(ChatChannel::World, &format!("flood {i}"))
            .await
            .unwrap();
    }
    let (lines, refusals) = heard(eve, Duration::from_secs(2)).await;
    assert_eq!(
        refusals[..3],
        [
            ChatRefusal::Length,
            ChatRefusal::Length,
            ChatRefusal::BadRecipient
        ]
    );
    let limited = refusals
        .iter()
        .filter(|r| **r == ChatRefusal::RateLimited)
        .count();
    assert_eq!(
        lines.len() + limited,
        20,
        "every flood line sent or refused"
    );
    assert!(
        (8..=10).contains(&lines.len()),
        "the burst went out: {}",
        lines.len()
    );
    let (fay, _) = heard(&mut players[5], Duration::from_millis(500)).await;
    assert_eq!(fay.len(), lines.len(), "others hear what was sent, once");

    // An operator silences fay with the command line tool: her lines on every channel, `say`
    // included, are refused, also after she logs in again; lifted, she is heard again.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worldmesh"))
        .args([
            "chat",
            "silence",
            names[5],
            "--minutes",
            "5",
            "--by",
            "test",
        ])
        .env("REDIS_URL", worldmesh_testkit::redis_url())
        .env("WORLDMESH_REDIS_PREFIX", &persistence.redis_prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fay = players.pop().unwrap();
    fay.chat(ChatChannel::World, "am I muted").await.unwrap();
    fay.say("and here").await.unwrap();
    let (lines, refusals) = heard(&mut fay, Duration::from_millis(700)).await;
    assert!(lines.is_empty());
    assert_eq!(refusals, [ChatRefusal::Silenced, ChatRefusal::Silenced]);
    fay.bye().await.unwrap();
    let mut fay = Session::login(&endpoint, cluster.gateway_addrs[1], names[5])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fay.chat(ChatChannel::World, "now?").await.unwrap();
    let (_, refusals) = heard(&mut fay, Duration::from_millis(700)).await;
    assert_eq!(
        refusals,
        [ChatRefusal::Silenced],
        "a silence outlives the session"
    );
    let bus = worldmesh_gateway::chat::bus::ChatBus::redis(
        &worldmesh_testkit::redis_url(),
        &persistence.redis_prefix,
    );
    worldmesh_gateway::chat::bus::Publisher::new(&bus)
        .silence(names[5], 0)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fay.chat(ChatChannel::World, "back").await.unwrap();
    let (lines, refusals) = heard(&mut fay, Duration::from_millis(700)).await;
    assert!(
        refusals.is_empty() && lines.len() == 1,
        "{lines:?} {refusals:?}"
    );
    players.push(fay);

    for p in players {
        p.bye().await.unwrap();
    }
    cluster.stop().await;
    backend.cleanup().await;
}

/// A login reads `Welcome` (and, for an account, `Session`) first, whatever flows meanwhile:
/// world chat fans out to every session of a gateway, including those whose join is still
/// under way. Thirty players keep the world channel busy while 100 accounts log in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_read_welcome_first_while_world_chat_flows() {
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let cluster = worldmesh::cluster::Cluster::start(small_world(persistence.clone()))
        .await
        .unwrap();
    let endpoint = endpoint();
    let suffix = worldmesh_testkit::unique_suffix();
    let mut chatters = Vec::new();
    for i in 0..30 {
        let name = format!("wc{i}_{suffix}");
        chatters.push(
            Session::login(&endpoint, cluster.gateway_addr, &name)
                .await
                .unwrap(),
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let talk = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0;
            // A line every 17 ms, round the players: each within its 2 lines/s.
            while !stop.is_cancelled() {
                let s = &mut chatters[n % 30];
                n += 1;
                let _ = s.chat(ChatChannel::World, &format!("line {n}")).await;
                tokio::time::sleep(Duration::from_millis(17)).await;
            }
            chatters
        }
    });
    let logins = (0..100).map(|i| {
        let (endpoint, addr) = (endpoint.clone(), cluster.gateway_addr);
        let name = format!("wl{i}_{suffix}");
        async move {
            // Spread over a second, each joining while lines arrive.
            tokio::time::sleep(Duration::from_millis(10 * i)).await;
            worldmesh_load_test::bot::login(&endpoint, addr, &name, true).await
        }
    });
    let sessions = futures::future::join_all(logins).await;
    // The premise: the channel was busy meanwhile.
    let mut watcher = Session::login(&endpoint, cluster.gateway_addr, &format!("ww_{suffix}"))
        .await
        .unwrap();
    let (lines, refusals) = heard(&mut watcher, Duration::from_secs(1)).await;
    assert!(
        lines.len() >= 5,
        "world chat flowing: {} lines, {refusals:?}",
        lines.len()
    );
    stop.cancel();
    let failed: Vec<String> = sessions
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} logins failed: {failed:?}",
        failed.len()
    );
    for s in sessions.into_iter().flatten() {
        s.bye().await.unwrap();
    }
    for s in talk.await.unwrap() {
        s.bye().await.unwrap();
    }
    cluster.stop().await;
    backend.cleanup().await;
}
