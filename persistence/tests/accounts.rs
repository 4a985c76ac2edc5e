//! Accounts against real PostgreSQL (+ Redis) and embedded SQLite: registration, passwords,
//! token generations and revocation, and guests kept off account characters.

use worldmesh_persistence::accounts::{Proof, Refusal};
use worldmesh_persistence::{Character, Config, Store};
use worldmesh_testkit as testing;

const SPAWN: (f32, f32) = (10.0, 20.0);

async fn accounts_work(store: &Store) {
    let pw = |p: &str| Proof::Password(p.into());
    // Registration creates the account and its character.
    let ann = store
        .login("ann", Proof::Register("correct horse".into()), SPAWN)
        .await
        .unwrap()
        .unwrap();
    assert!(ann.created);
    assert!(ann.account_id > 0);
    assert_eq!(ann.token_generation, 0);
    assert_eq!((ann.character.x, ann.character.y), SPAWN);

    // The same name cannot be registered twice; short passwords are refused.
    assert_eq!(
        store
            .login("ann", Proof::Register("another one".into()), SPAWN)
            .await
            .unwrap(),
        Err(Refusal::NameTaken)
    );
    assert_eq!(
        store
            .login("bob", Proof::Register("short".into()), SPAWN)
            .await
            .unwrap(),
        Err(Refusal::InvalidPassword)
    );

    // Password logins: right, wrong, unknown.
    let again = store
        .login("ann", pw("correct horse"), SPAWN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.character.id, ann.character.id);
    assert!(!again.created);
    assert_eq!(
        store.login("ann", pw("wrong horse"), SPAWN).await.unwrap(),
        Err(Refusal::WrongPassword)
    );
    assert_eq!(
        store.login("nobody", pw("whatever1"), SPAWN).await.unwrap(),
        Err(Refusal::UnknownAccount)
    );

    // A token login loads the newest state (a checkpoint after registration).
    let moved = Character {
        x: 55.0,
        epoch: 1,
        version: 3,
        ..ann.character.clone()
    };
    assert!(
        store
            .save(std::slice::from_ref(&moved))
            .await
            .unwrap()
            .is_empty()
    );
    let token = |generation| Proof::Token {
        account_id: ann.account_id,
        generation,
    };
    let resumed = store.login("ann", token(0), SPAWN).await.unwrap().unwrap();
    assert_eq!(resumed.character, moved);
    // A token names its account: presented for another name it is refused.
    assert_eq!(
        store.login("bob", token(0), SPAWN).await.unwrap(),
        Err(Refusal::UnknownAccount)
    );

    // Revocation: older tokens are refused, the password still works and gives the new
    // generation.
    assert_eq!(store.revoke_tokens("ann").await.unwrap(), Some(1));
    assert_eq!(store.revoke_tokens("nobody").await.unwrap(), None);
    assert_eq!(
        store.login("ann", token(0), SPAWN).await.unwrap(),
        Err(Refusal::TokenRevoked)
    );
    let after = store
        .login("ann", pw("correct horse"), SPAWN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.token_generation, 1);
    assert!(store.login("ann", token(1), SPAWN).await.unwrap().is_ok());

    // Guests: never on an account's character; a guest's name cannot be registered.
    assert_eq!(
        store.login("ann", Proof::Guest, SPAWN).await.unwrap(),
        Err(Refusal::AccountRequired)
    );
    let guest = store
        .login("drifter", Proof::Guest, SPAWN)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(guest.account_id, 0);
    assert_eq!(
        store
            .login("drifter", Proof::Register("mine now!".into()), SPAWN)
            .await
            .unwrap(),
        Err(Refusal::NameTaken)
    );
}

#[tokio::test]
async fn accounts_on_postgres_and_redis() {
    let base = testing::postgres_base_url();
    let db = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running");
    let store = Store::connect(&testing::tiered_config(&db, "wmacct"))
        .await
        .unwrap();
    accounts_work(&store).await;
    // The hash is an argon2id PHC string, never the password.
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM accounts WHERE name = 'ann'")
            .fetch_one(store.sql().pool())
            .await
            .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));
    store.close().await;
    testing::drop_postgres_database(&base, &db).await;
}

#[tokio::test]
async fn accounts_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("wm-acct-{}", testing::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::embedded(&dir.join("w.db"))
    };
    let store = Store::connect(&config).await.unwrap();
    accounts_work(&store).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
