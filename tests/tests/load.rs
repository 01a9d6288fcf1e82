//! Many connections at once: 1,000 replicas on loopback, each syncing a
//! small document of its own collection through one relay, all at the same
//! time; then one replica pulls every collection and must hold them all.
//! (A collection shared by all would be a million document exchanges: that
//! is fan-out, which the benchmark's W1 measures.) `ACCORD_LOAD_CONNECTIONS`
//! changes the count.

use std::time::{Duration, Instant};

use accord_engine::{ConnectOptions, Replica};
use accord_tests::{wait_until, TestRelay};
use serde_json::json;

const T: Duration = Duration::from_secs(120);

fn options(collections: Vec<String>) -> ConnectOptions {
    ConnectOptions {
        collections,
        ..ConnectOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_converge() {
    let n: usize = std::env::var("ACCORD_LOAD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let started = Instant::now();
    let mut replicas = Vec::with_capacity(n);
    for i in 0..n {
        let replica = Replica::open_in_memory().expect("replica");
        let collection = format!("load-{i}");
        replica
            .create(&collection, &json!({"from": i}))
            .expect("create");
        let handle = replica.connect(&relay.url, options(vec![collection]));
        replicas.push((replica, handle));
    }
    wait_until(T, "every connection welcomed at once", || async {
        relay.relay.connections() == n
    })
    .await;
    for (i, (_, handle)) in replicas.iter_mut().enumerate() {
        handle
            .wait_synced(T)
            .await
            .unwrap_or_else(|e| panic!("replica {i}: {e}"));
    }
    assert_eq!(relay.relay.connections(), n, "all still connected");
    // One more replica pulls everything and agrees with the relay.
    let reader = Replica::open(dir.path().join("reader.db")).expect("reader");
    let all: Vec<String> = (0..n).map(|i| format!("load-{i}")).collect();
    let mut handle = reader.connect(&relay.url, options(all));
    handle.wait_agreed(T).await.expect("reader agreed");
    let total: usize = reader
        .collections()
        .expect("collections")
        .iter()
        .map(|(_, count)| *count as usize)
        .sum();
    assert_eq!(total, n);
    for (i, (replica, _)) in replicas.iter().enumerate().step_by((n / 20).max(1)) {
        let id = replica.list(&format!("load-{i}")).expect("list")[0].id;
        assert_eq!(
            reader.get(&id).expect("at reader").value,
            json!({"from": i})
        );
    }
    eprintln!(
        "{n} concurrent connections converged in {:?}",
        started.elapsed()
    );
    for (_, handle) in replicas {
        handle.close().await;
    }
    relay.stop().await.expect("stop");
}
