//! The chat bus on a real Redis of the test's own: a reader whose connection is killed over
//! and over while lines keep coming catches up from the stream and hands on every line exactly
//! once, in the stream's order; the in-process bus keeps one order for all readers.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use worldmesh_gateway::chat::bus::{ChatBus, Publisher, subscribe};
use worldmesh_gateway::chat::{Audience, Kind, Line};
use worldmesh_testkit::redis::RedisServer;

fn text_line(to: Audience, from: &str, text: &str) -> Line {
    Line {
        seq: 0,
        to,
        kind: Kind::Text,
        from: from.to_owned(),
        text: text.to_owned(),
    }
}

async fn collect(rx: &mut tokio::sync::mpsc::Receiver<Line>, n: usize) -> Vec<Line> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(line)) => got.push(line),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cut_off_again_and_again_catches_up_without_repeats() {
    let server = RedisServer::start_new().await;
    let url = format!("redis://127.0.0.1:{}/", server.port);
    let bus = ChatBus::redis(&url, "wmtest:");
    let shutdown = CancellationToken::new();
    let mut a = subscribe(&bus, shutdown.clone());
    let mut b = subscribe(&bus, shutdown.clone());
    // Both readers have found the stream's end before the first line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let publisher = Publisher::new(&bus);
    let mut killer = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    const LINES: usize = 300;
    let mut kills = 0;
    for i in 0..LINES {
        if i % 15 == 7 {
            // Every other client: the readers (blocked in XREAD) and the publisher.
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query_async(&mut killer)
                .await
                .unwrap();
            kills += 1;
        }
        let to = if i % 2 == 0 {
            Audience::World
        } else {
            Audience::Whisper(format!("p{}", i % 7))
        };
        // A killed publisher fails once, then connects again.
        let mut sent = false;
        for _ in 0..3 {
            if publisher
                .publish(&text_line(to.clone(), "ann", &format!("line {i}")))
                .await
                .is_ok()
            {
                sent = true;
                break;
            }
        }
        assert!(sent, "line {i} published");
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    for (name, rx) in [("a", &mut a), ("b", &mut b)] {
        let got = collect(rx, LINES).await;
        let texts: Vec<String> = got.iter().map(|l| l.text.clone()).collect();
        let want: Vec<String> = (0..LINES).map(|i| format!("line {i}")).collect();
        assert_eq!(
            texts, want,
            "reader {name}: every line once, in order ({kills} kills)"
        );
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "seq grows");
        // Nothing more comes.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err()
        );
    }
    shutdown.cancel();
    drop(server);
}

#[tokio::test]
async fn the_local_bus_gives_every_reader_the_same_order() {
    let bus = ChatBus::local();
    let shutdown = CancellationToken::new();
    let mut readers = [
        subscribe(&bus, shutdown.clone()),
        subscribe(&bus, shutdown.clone()),
    ];
    let mut tasks = Vec::new();
    for speaker in 0..4 {
        let publisher = Publisher::new(&bus);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                publisher
                    .publish(&text_line(
                        Audience::World,
                        &format!("s{speaker}"),
                        &format!("{i}"),
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let first = collect(&mut readers[0], 200).await;
    let second = collect(&mut readers[1], 200).await;
    assert_eq!(first.len(), 200);
    assert_eq!(first, second);
    assert!(first.windows(2).all(|w| w[0].seq < w[1].seq));
    shutdown.cancel();
}
