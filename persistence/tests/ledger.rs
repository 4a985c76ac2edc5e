//! The economy's ledger in SQL against its model: the same random requests (trades, aborts,
//! inventory changes, claims, retries) on PostgreSQL, on SQLite and on
//! `worldmesh_economy::Ledger` give the same outcomes and the same holdings; racing commits of
//! the same items on PostgreSQL commit once; the gRPC service refuses malformed requests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use worldmesh_economy::{
    AbortReason, Change, ChangeId, Commit, Item, ItemId, ItemKind, Ledger, Offer, Outcome, Party,
    Place, TradeId,
};
use worldmesh_persistence::Store;
use worldmesh_persistence::ledger::SqlLedger;
use worldmesh_protocol::grpc::persistence as pb;
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::ids::EntityId;
use worldmesh_testkit::db::Backend;

const PLAYERS: u64 = 6;

/// Characters `1..=PLAYERS` in SQL (ids as created), each claimed at epoch 1 in both ledgers,
/// with 100 gold and three items granted by a first change.
async fn populate(store: &Store, model: &mut Ledger) -> Vec<EntityId> {
    let ledger = store.ledger();
    let mut who = Vec::new();
    for p in 0..PLAYERS {
        let (c, _) = store
            .load_or_create(&format!("p{p}"), (0.0, 0.0))
            .await
            .unwrap();
        who.push(EntityId(c.id));
    }
    let first = ledger.reserve_ids(1000).await.unwrap();
    for (n, w) in who.iter().enumerate() {
        ledger.claim(w.0, 1).await.unwrap().unwrap();
        model.claim(*w, 1).unwrap();
        let mut changes = vec![Change::Gold(100)];
        for k in 0..3 {
            changes.push(Change::Grant(Item {
                id: ItemId(first + 10 * n as u64 + k),
                kind: ItemKind(k as u16),
                count: 1 + k as u32,
                version: 1,
            }));
        }
        let id = ChangeId(first + 900 + n as u64);
        assert_eq!(
            ledger.change(id, w.0, 1, &changes).await.unwrap(),
            Outcome::Committed
        );
        assert_eq!(model.change(id, *w, 1, &changes), Outcome::Committed);
    }
    who
}

/// Every item with its place, and every purse as `(character, gold, epoch)`.
type State = (Vec<(Item, Place)>, Vec<(u64, u64, u64)>);

/// The state as SQL has it.
async fn sql_state(store: &Store) -> State {
    let pool = store.sql().pool();
    let rows = sqlx::query("SELECT id, kind, count, version, holder, x, y FROM items ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let items = rows
        .iter()
        .map(|r| {
            let item = Item {
                id: ItemId(r.get::<i64, _>("id") as u64),
                kind: ItemKind(r.get::<i64, _>("kind") as u16),
                count: r.get::<i64, _>("count") as u32,
                version: r.get::<i64, _>("version") as u64,
            };
            let place = match r.get::<Option<i64>, _>("holder") {
                Some(h) => Place::Carried(EntityId(h as u64)),
                None => Place::Ground([
                    r.get::<Option<f64>, _>("x").unwrap() as f32,
                    r.get::<Option<f64>, _>("y").unwrap() as f32,
                ]),
            };
            (item, place)
        })
        .collect();
    let rows = sqlx::query("SELECT character_id, gold, epoch FROM wallets ORDER BY character_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let purses = rows
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>("character_id") as u64,
                r.get::<i64, _>("gold") as u64,
                r.get::<i64, _>("epoch") as u64,
            )
        })
        .collect();
    (items, purses)
}

fn model_state(model: &Ledger, who: &[EntityId]) -> State {
    let mut items: Vec<(Item, Place)> = model.all_items().map(|(p, i)| (i, p)).collect();
    items.sort_by_key(|(i, _)| i.id);
    let purses = who
        .iter()
        .map(|w| (w.0, model.gold(*w), model.epoch(*w)))
        .collect();
    (items, purses)
}

/// A request both ledgers get.
#[derive(Debug, Clone)]
enum Req {
    Commit(Commit),
    Abort(TradeId, AbortReason),
    Change(ChangeId, EntityId, u64, Vec<Change>),
    Claim(EntityId, u64),
}

/// A random request: mostly plausible (items as the model has them now), sometimes stale,
/// foreign, malformed, overflowing or from an old epoch.
fn random_request(rng: &mut StdRng, model: &Ledger, who: &[EntityId], next: &mut u64) -> Req {
    let pick = |rng: &mut StdRng| who[rng.random_range(0..who.len())];
    *next += 1;
    let id = *next;
    let some_items = |rng: &mut StdRng, w: EntityId| -> Vec<(ItemId, u64)> {
        let mut held = model.items_of(w);
        let n = rng.random_range(0..=held.len().min(3));
        held.truncate(n);
        let mut refs: Vec<(ItemId, u64)> = held.iter().map(|i| (i.id, i.version)).collect();
        if rng.random_bool(0.1) {
            // Someone else's, or an old version.
            let other = model.items_of(pick(rng));
            if let Some(i) = other.first() {
                refs.push((i.id, i.version.saturating_sub(rng.random_range(0..2))));
            }
        }
        refs
    };
    match rng.random_range(0..10) {
        0..=3 => {
            let (a, b) = (pick(rng), pick(rng));
            let epoch =
                |rng: &mut StdRng, w: EntityId| model.epoch(w) - u64::from(rng.random_bool(0.05));
            let gold = |rng: &mut StdRng| match rng.random_range(0..20) {
                0 => u64::MAX,
                1 => 1 << 60,
                _ => rng.random_range(0..80),
            };
            Req::Commit(Commit {
                id: TradeId(id),
                a: (
                    Party {
                        who: a,
                        epoch: epoch(rng, a),
                    },
                    Offer {
                        items: some_items(rng, a),
                        gold: gold(rng),
                    },
                ),
                b: (
                    Party {
                        who: b,
                        epoch: epoch(rng, b),
                    },
                    Offer {
                        items: some_items(rng, b),
                        gold: gold(rng),
                    },
                ),
            })
        }
        4 => Req::Abort(TradeId(id), AbortReason::Cancelled),
        5 => {
            let w = pick(rng);
            Req::Claim(w, model.epoch(w) + rng.random_range(0..2))
        }
        _ => {
            let w = pick(rng);
            let mut changes = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                let held = model.items_of(w);
                let mine = held.get(rng.random_range(0..held.len().max(1))).copied();
                let ground: Vec<Item> = model
                    .all_items()
                    .filter(|(p, _)| matches!(p, Place::Ground(_)))
                    .map(|(_, i)| i)
                    .collect();
                changes.push(match (rng.random_range(0..6), mine) {
                    (0, _) => Change::Gold(rng.random_range(-120..120)),
                    (1, _) => {
                        *next += 1;
                        Change::Grant(Item {
                            id: ItemId(*next),
                            kind: ItemKind(7),
                            count: rng.random_range(0..4),
                            version: 1,
                        })
                    }
                    (2, Some(i)) => Change::Consume {
                        item: i.id,
                        version: i.version,
                        count: rng.random_range(0..=i.count + 1),
                    },
                    (3, Some(i)) => Change::Drop {
                        item: i.id,
                        version: i.version,
                        at: [rng.random_range(0.0..100.0), rng.random_range(0.0..100.0)],
                    },
                    (4, _) if !ground.is_empty() => {
                        let i = ground[rng.random_range(0..ground.len())];
                        Change::PickUp {
                            item: i.id,
                            version: i.version,
                        }
                    }
                    (5, _) if rng.random_bool(0.1) => Change::Gold(i64::MIN),
                    _ => Change::Gold(rng.random_range(-5..5)),
                });
            }
            let epoch = model.epoch(w) - u64::from(rng.random_bool(0.05));
            Req::Change(ChangeId(id), w, epoch, changes)
        }
    }
}

async fn run_sql(l: &SqlLedger, r: &Req) -> Result<Outcome, AbortReason> {
    Ok(match r {
        Req::Commit(c) => l.commit(c).await.unwrap(),
        Req::Abort(id, why) => l.abort(*id, *why).await.unwrap(),
        Req::Change(id, w, e, ch) => l.change(*id, w.0, *e, ch).await.unwrap(),
        Req::Claim(w, e) => return l.claim(w.0, *e).await.unwrap().map(|_| Outcome::Committed),
    })
}

fn run_model(m: &mut Ledger, r: &Req) -> Result<Outcome, AbortReason> {
    Ok(match r {
        Req::Commit(c) => m.commit(c),
        Req::Abort(id, why) => m.abort(*id, *why),
        Req::Change(id, w, e, ch) => m.change(*id, *w, *e, ch),
        Req::Claim(w, e) => return m.claim(*w, *e).map(|_| Outcome::Committed),
    })
}

async fn agree_with_the_model(store: &Store, seed: u64, requests: usize) {
    let mut model = Ledger::default();
    let who = populate(store, &mut model).await;
    let ledger = store.ledger();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = ledger.reserve_ids(1_000_000).await.unwrap();
    let mut sent: Vec<Req> = Vec::new();
    let mut committed = 0;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..requests {
        // A retry of an earlier request now and then: it answers its first outcome.
        let req = if !sent.is_empty() && rng.random_bool(0.15) {
            sent[rng.random_range(0..sent.len())].clone()
        } else {
            random_request(&mut rng, &model, &who, &mut next)
        };
        let want = run_model(&mut model, &req);
        let got = run_sql(&ledger, &req).await;
        assert_eq!(got, want, "request {n} (seed {seed}): {req:?}");
        committed += usize::from(got == Ok(Outcome::Committed));
        let kind = format!("{req:?}")
            .split('(')
            .next()
            .unwrap_or("")
            .to_owned();
        *seen.entry(format!("{kind} {got:?}")).or_default() += 1;
        sent.push(req);
    }
    println!("seed {seed}: {seen:?}");
    assert_eq!(
        sql_state(store).await,
        model_state(&model, &who),
        "seed {seed}"
    );
    assert!(
        committed > requests / 10,
        "the walk commits things ({committed})"
    );
}

#[tokio::test]
async fn postgres_and_sqlite_agree_with_the_model_on_random_requests() {
    for tiered in [true, false] {
        let (backend, config) = if tiered {
            Backend::tiered().await
        } else {
            Backend::embedded()
        };
        let store = Store::connect(&config).await.unwrap();
        agree_with_the_model(&store, 7 + u64::from(tiered), 600).await;
        store.close().await;
        backend.cleanup().await;
    }
}

/// Racing commits of the same item from many connections: one commits, the rest are stale;
/// a commit racing an abort of the same trade: every caller hears the same one outcome.
#[tokio::test]
async fn racing_commits_on_postgres_move_an_item_once() {
    let (backend, config) = Backend::tiered().await;
    let store = Store::connect(&config).await.unwrap();
    let mut model = Ledger::default();
    let who = populate(&store, &mut model).await;
    let ledger = store.ledger();
    let base = ledger.reserve_ids(10_000).await.unwrap();
    let sword = model.items_of(who[0])[0];
    let mut tasks = Vec::new();
    for k in 0..8u64 {
        let ledger = ledger.clone();
        let to = who[1 + (k as usize % 5)];
        let commit = Commit {
            id: TradeId(base + k),
            a: (
                Party {
                    who: who[0],
                    epoch: 1,
                },
                Offer {
                    items: vec![(sword.id, sword.version)],
                    gold: 0,
                },
            ),
            b: (
                Party { who: to, epoch: 1 },
                Offer {
                    items: vec![],
                    gold: 10,
                },
            ),
        };
        tasks.push(tokio::spawn(async move {
            ledger.commit(&commit).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let won = outcomes
        .iter()
        .filter(|o| **o == Outcome::Committed)
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Committed | Outcome::Aborted(AbortReason::Stale)))
    );

    for round in 0..40u64 {
        let id = TradeId(base + 100 + round);
        let gift = Commit {
            id,
            a: (
                Party {
                    who: who[2],
                    epoch: 1,
                },
                Offer {
                    items: vec![],
                    gold: 1,
                },
            ),
            b: (
                Party {
                    who: who[3],
                    epoch: 1,
                },
                Offer::default(),
            ),
        };
        let (l1, l2, l3) = (ledger.clone(), ledger.clone(), ledger.clone());
        let g = gift.clone();
        let commit = tokio::spawn(async move { l1.commit(&g).await.unwrap() });
        let abort = tokio::spawn(async move { l2.abort(id, AbortReason::HostLost).await.unwrap() });
        let again = tokio::spawn(async move { l3.commit(&gift).await.unwrap() });
        let (c, a, r) = (
            commit.await.unwrap(),
            abort.await.unwrap(),
            again.await.unwrap(),
        );
        assert!(c == a && a == r, "round {round}: {c:?} {a:?} {r:?}");
        assert_eq!(ledger.outcome(id.0).await.unwrap(), Some(c));
    }
    let (items, purses) = sql_state(&store).await;
    assert_eq!(items.len(), 3 * PLAYERS as usize, "every item once");
    let gold: u64 = purses.iter().map(|(_, g, _)| g).sum();
    assert_eq!(gold, 100 * PLAYERS, "gold conserved");
    store.close().await;
    backend.cleanup().await;
}

#[tokio::test]
async fn the_service_answers_ledger_requests_and_refuses_malformed_ones() {
    let (backend, config) = Backend::embedded();
    let store = Store::connect(&config).await.unwrap();
    let mut model = Ledger::default();
    let who = populate(&store, &mut model).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(worldmesh_persistence::serve(
        listener,
        store.clone(),
        shutdown.clone(),
    ));
    let mut client = PersistenceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let block = client
        .reserve_ids(pb::ReserveIdsRequest { count: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(block.count, 10);

    // A claim reads; an older one is fenced.
    let inv = client
        .claim_inventory(pb::ClaimInventoryRequest {
            character: who[0].0,
            epoch: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((inv.fenced, inv.gold, inv.items.len()), (false, 100, 3));
    let zombie = client
        .claim_inventory(pb::ClaimInventoryRequest {
            character: who[0].0,
            epoch: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(zombie.fenced);

    // A trade over gRPC, sent twice: committed once.
    let item = &inv.items[0];
    let commit = Commit {
        id: TradeId(block.first),
        a: (
            Party {
                who: who[0],
                epoch: 2,
            },
            Offer {
                items: vec![(ItemId(item.id), item.version)],
                gold: 30,
            },
        ),
        b: (
            Party {
                who: who[1],
                epoch: 1,
            },
            Offer::default(),
        ),
    };
    for _ in 0..2 {
        let reply = client
            .commit_trade(worldmesh_economy::wire::commit_to_pb(&commit))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            worldmesh_economy::wire::outcome_from_pb(&reply),
            Ok(Some(Outcome::Committed))
        );
    }
    let ledger = store.ledger();
    assert_eq!(ledger.inventory(who[0].0).await.unwrap().unwrap().gold, 70);
    assert_eq!(ledger.inventory(who[1].0).await.unwrap().unwrap().gold, 130);
    // An abort after the commit changes nothing; the outcome stays.
    let reply = client
        .abort_trade(pb::AbortTradeRequest {
            id: block.first,
            reason: worldmesh_economy::wire::reason_code(AbortReason::HostLost),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.known, reply.outcome), (true, 0));
    let unknown = client
        .ledger_outcome(pb::LedgerOutcomeRequest {
            id: block.first + 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.known);

    // Malformed: refused as INVALID_ARGUMENT, nothing stored.
    let steps = vec![
        pb::InventoryStep {
            step: Some(pb::inventory_step::Step::Gold(1)),
        };
        65
    ];
    let too_many = client
        .change_inventory(pb::ChangeInventoryRequest {
            id: block.first + 2,
            character: who[0].0,
            epoch: 2,
            steps,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    let empty = client
        .change_inventory(pb::ChangeInventoryRequest {
            id: block.first + 2,
            character: who[0].0,
            epoch: 2,
            steps: vec![pb::InventoryStep { step: None }],
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    for reason in [0, 9, u32::MAX] {
        let e = client
            .abort_trade(pb::AbortTradeRequest {
                id: block.first + 3,
                reason,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    for count in [0, u64::MAX] {
        let e = client
            .reserve_ids(pb::ReserveIdsRequest { count })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    assert_eq!(ledger.outcome(block.first + 2).await.unwrap(), None);
    assert_eq!(ledger.outcome(block.first + 3).await.unwrap(), None);
    // Hostile amounts and a trade with oneself are outcomes: refused, nothing moved.
    let mut myself = commit.clone();
    myself.id = TradeId(block.first + 4);
    myself.b.0 = myself.a.0;
    let mut rich = commit.clone();
    rich.id = TradeId(block.first + 5);
    rich.a.1.gold = u64::MAX;
    for c in [myself, rich] {
        let reply = client
            .commit_trade(worldmesh_economy::wire::commit_to_pb(&c))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            worldmesh_economy::wire::outcome_from_pb(&reply),
            Ok(Some(Outcome::Aborted(AbortReason::Invalid)))
        );
    }
    let overdraw = client
        .change_inventory(pb::ChangeInventoryRequest {
            id: block.first + 6,
            character: who[0].0,
            epoch: 2,
            steps: vec![pb::InventoryStep {
                step: Some(pb::inventory_step::Step::Gold(i64::MIN)),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overdraw.outcome, 6, "invalid");
    assert_eq!(ledger.inventory(who[0].0).await.unwrap().unwrap().gold, 70);

    shutdown.cancel();
    server.await.unwrap().unwrap();
    backend.cleanup().await;
}
