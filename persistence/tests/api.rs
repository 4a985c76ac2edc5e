//! The persistence gRPC API on real Redis and PostgreSQL: streaming checkpoints, fencing by
//! epoch in both tiers, and malformed or oversized batches answered with errors, not panics.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use worldmesh_persistence::Store;
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::grpc::persistence::{
    Character, CheckpointBatch, LoadCharacterRequest, LoadOrCreateCharacterRequest,
    SaveCharactersRequest,
};
use worldmesh_testkit as testing;

struct Harness {
    client: PersistenceClient<worldmesh_runtime::Channel>,
    store: Store,
    shutdown: CancellationToken,
    base: String,
    db: String,
}

async fn start() -> Harness {
    let base = testing::postgres_base_url();
    let db = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running");
    let config = testing::tiered_config(&db, "wmapi");
    let store = Store::connect(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(worldmesh_persistence::serve(
        listener,
        store.clone(),
        shutdown.clone(),
    ));
    let client = PersistenceClient::new(worldmesh_runtime::grpc_channel(&url).unwrap());
    Harness {
        client,
        store,
        shutdown,
        base,
        db,
    }
}

impl Harness {
    async fn stop(self) {
        self.shutdown.cancel();
        self.store.close().await;
        testing::drop_postgres_database(&self.base, &self.db).await;
    }

    async fn create(&mut self, name: &str) -> Character {
        self.client
            .load_or_create_character(LoadOrCreateCharacterRequest {
                name: name.into(),
                spawn_x: 1.0,
                spawn_y: 2.0,
            })
            .await
            .unwrap()
            .into_inner()
            .character
            .unwrap()
    }

    async fn wait_sql(&self, id: u64, stamp: (u64, u64)) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .store
                .sql()
                .load(id)
                .await
                .unwrap()
                .is_some_and(|c| c.stamp() == stamp)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{stamp:?} of {id} never reached SQL");
    }
}

#[tokio::test]
async fn streamed_checkpoints_are_acked_in_order_and_reach_sql() {
    let mut h = start().await;
    let c = h.create("streamer").await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks = h
        .client
        .checkpoint(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for v in 1..=5u64 {
        tx.send(CheckpointBatch {
            batch_id: 100 + v,
            characters: vec![Character {
                version: v,
                x: v as f32,
                ..c.clone()
            }],
        })
        .await
        .unwrap();
    }
    for v in 1..=5u64 {
        let ack = acks.message().await.unwrap().expect("an ack per batch");
        assert_eq!(ack.batch_id, 100 + v);
        assert!(ack.error.is_empty() && ack.rejected.is_empty(), "{ack:?}");
    }
    h.wait_sql(c.id, (0, 5)).await;
    // A malformed batch ends the stream with INVALID_ARGUMENT.
    tx.send(CheckpointBatch {
        batch_id: 999,
        characters: vec![Character {
            x: f32::NAN,
            ..c.clone()
        }],
    })
    .await
    .unwrap();
    let err = acks.message().await.expect_err("malformed batch");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn an_old_epoch_is_fenced_in_redis_and_in_sql() {
    let mut h = start().await;
    let c = h.create("fenced").await;
    let save = |epoch, version, x| SaveCharactersRequest {
        characters: vec![Character {
            epoch,
            version,
            x,
            ..c.clone()
        }],
    };
    assert!(
        h.client
            .save_characters(save(0, 5, 5.0))
            .await
            .unwrap()
            .into_inner()
            .rejected
            .is_empty()
    );
    // Handoff: the new owner writes epoch 1 from version 0.
    assert!(
        h.client
            .save_characters(save(1, 0, 100.0))
            .await
            .unwrap()
            .into_inner()
            .rejected
            .is_empty()
    );
    // The partitioned old owner keeps writing epoch 0: refused by Redis…
    assert_eq!(
        h.client
            .save_characters(save(0, 6, 6.0))
            .await
            .unwrap()
            .into_inner()
            .rejected,
        vec![c.id]
    );
    h.wait_sql(c.id, (1, 0)).await;
    // …and by SQL, even if a stale write reached the flusher's upsert directly.
    h.store
        .sql()
        .upsert_batch(&[worldmesh_persistence::Character {
            id: c.id,
            name: c.name.clone(),
            x: 7.0,
            y: 0.0,
            heading: 0.0,
            epoch: 0,
            version: 7,
            game: Vec::new(),
        }])
        .await
        .unwrap();
    let durable = h.store.sql().load(c.id).await.unwrap().unwrap();
    assert_eq!((durable.epoch, durable.version, durable.x), (1, 0, 100.0));
    let loaded = h
        .client
        .load_character(LoadCharacterRequest { id: c.id })
        .await
        .unwrap()
        .into_inner()
        .character
        .unwrap();
    assert_eq!((loaded.epoch, loaded.x), (1, 100.0));
    h.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_batches_get_errors() {
    let mut h = start().await;
    let c = h.create("victim").await;
    let bad = |f: &dyn Fn(&mut Character)| {
        let mut x = c.clone();
        f(&mut x);
        SaveCharactersRequest {
            characters: vec![x],
        }
    };
    for (what, req) in [
        ("NaN position", bad(&|c| c.x = f32::NAN)),
        ("infinite heading", bad(&|c| c.heading = f32::INFINITY)),
        ("bad name", bad(&|c| c.name = "no spaces".into())),
        (
            "too many",
            SaveCharactersRequest {
                characters: vec![c.clone(); 10_001],
            },
        ),
    ] {
        let err = h.client.save_characters(req).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err}");
    }
    // Beyond the 4 MiB gRPC message limit: refused by the transport.
    let huge = SaveCharactersRequest {
        characters: vec![
            Character {
                name: "x".repeat(1 << 20),
                ..c.clone()
            };
            5
        ],
    };
    assert!(h.client.save_characters(huge).await.is_err());
    // The service is still fine.
    assert!(
        h.client
            .save_characters(bad(&|c| c.version = 1))
            .await
            .is_ok()
    );
    h.stop().await;
}
