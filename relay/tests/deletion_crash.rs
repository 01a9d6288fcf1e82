//! A deletion counts as synced only once the relay committed it: the relay
//! process is killed with SIGKILL the moment `wait_synced` reports a batch
//! of deletions, and every one of them must be in its file afterwards.
//!
//! `ACCORD_DELETE_CRASH_TRIALS=N` runs more trials (default sized for CI).

use std::time::Duration;

use accord_engine::{ConnectOptions, ListOptions, Replica};
use serde_json::json;

mod support;
use support::spawn_relay;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reported_synced_survives_killing_the_relay() {
    let trials: usize = std::env::var("ACCORD_DELETE_CRASH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    for trial in 0..trials {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay_db = dir.path().join("relay.db");
        let mut relay = spawn_relay(&relay_db);
        let replica = Replica::open(dir.path().join("r.db")).expect("replica");
        let ids: Vec<_> = (0..8)
            .map(|i| replica.create("c", &json!({ "i": i })).expect("create"))
            .collect();
        let mut sync = replica.connect(
            &relay.url,
            ConnectOptions {
                collections: vec!["c".into()],
                reconnect: false,
                ..ConnectOptions::default()
            },
        );
        sync.wait_synced(T).await.expect("records reach the relay");
        for id in &ids {
            replica.delete(id).expect("delete");
        }
        sync.wait_synced(T)
            .await
            .expect("the relay acknowledges the deletions");
        // No grace period: whatever the relay acknowledged must be on disk.
        relay.child.kill().expect("SIGKILL the relay");
        relay.child.wait().expect("reap the relay");
        drop(sync);

        let after = Replica::open(&relay_db).expect("the relay's file opens");
        let stored = after.list_with(&ListOptions::everything()).expect("list");
        for id in &ids {
            let meta = stored
                .iter()
                .find(|m| m.id == *id)
                .unwrap_or_else(|| panic!("trial {trial}: {id} is missing at the relay"));
            assert!(
                meta.deleted,
                "trial {trial}: wait_synced reported the deletion of {id}, but the relay lost it"
            );
        }
    }
}
