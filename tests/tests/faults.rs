//! Sync over a faulty network: a proxy between the replicas and the relay
//! delays, throttles, stalls, resets and cuts connections mid-frame while
//! both replicas keep editing. After each fault is lifted everything
//! converges, and once converged the traffic stops.

use std::time::Duration;

use accord_engine::{ConnectOptions, DocId, Replica, SyncHandle};
use accord_tests::proxy::{Fault, FaultProxy};
use accord_tests::{wait_until, TestRelay};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn options() -> ConnectOptions {
    ConnectOptions {
        collections: vec!["c".into()],
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    }
}

struct Side {
    replica: Replica,
    handle: SyncHandle,
}

async fn converged(a: &Side, b: &Side, docs: &[DocId]) {
    for id in docs {
        wait_until(T, "identical heads", || async {
            matches!((a.replica.heads(id), b.replica.heads(id)), (Ok(x), Ok(y)) if x == y)
        })
        .await;
        assert_eq!(
            a.replica.get(id).expect("a").value,
            b.replica.get(id).expect("b").value
        );
    }
}

async fn edit_through(
    fault: Fault,
    a: &mut Side,
    b: &mut Side,
    proxy: &FaultProxy,
    docs: &[DocId],
    round: i64,
) {
    proxy.set(fault);
    for (i, id) in docs.iter().enumerate() {
        a.replica
            .put(id, "a", &json!(round * 100 + i as i64), None)
            .expect("a edit");
        b.replica
            .put(id, "b", &json!(round * 100 + i as i64), None)
            .expect("b edit");
        b.replica
            .put(id, "same", &json!(format!("b{round}")), None)
            .expect("b same-field edit");
        a.replica
            .put(id, "same", &json!(format!("a{round}")), None)
            .expect("a same-field edit");
    }
    let extra = a
        .replica
        .create("c", &json!({"round": round}))
        .expect("create during the fault");
    // Let the fault act on live traffic, then heal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::None);
    a.handle
        .wait_synced(T)
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: a not synced: {e}"));
    b.handle
        .wait_synced(T)
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: b not synced: {e}"));
    let mut all = docs.to_vec();
    all.push(extra);
    converged(a, b, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_recovers_from_every_network_fault_and_then_goes_quiet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let proxy_a = FaultProxy::start(relay.addr).await.expect("proxy a");
    let proxy_b = FaultProxy::start(relay.addr).await.expect("proxy b");
    let ra = Replica::open(dir.path().join("a.db")).expect("a");
    let rb = Replica::open(dir.path().join("b.db")).expect("b");
    let docs: Vec<DocId> = (0..5)
        .map(|i| ra.create("c", &json!({"i": i})).expect("create"))
        .collect();
    let mut a = Side {
        handle: ra.connect(&proxy_a.url(), options()),
        replica: ra,
    };
    let mut b = Side {
        handle: rb.connect(&proxy_b.url(), options()),
        replica: rb,
    };
    a.handle.wait_synced(T).await.expect("a");
    b.handle.wait_agreed(T).await.expect("b");
    converged(&a, &b, &docs).await;

    let faults = [
        Fault::Delay(Duration::from_millis(50)),
        Fault::Throttle(2_000),
        Fault::Stall,
        Fault::Reset,
        Fault::CutMidFrame,
    ];
    for (round, fault) in faults.into_iter().enumerate() {
        // Each side gets the fault on its own link in turn.
        let proxy = if round % 2 == 0 { &proxy_a } else { &proxy_b };
        edit_through(fault, &mut a, &mut b, proxy, &docs, round as i64).await;
    }

    // No sync loops: with nothing changing, nothing more crosses the wire.
    let before = (proxy_a.forwarded(), proxy_b.forwarded());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.handle.wait_synced(T).await.expect("a");
    b.handle.wait_synced(T).await.expect("b");
    let after = (proxy_a.forwarded(), proxy_b.forwarded());
    // Pings (every 20 s) are the only traffic allowed; none fall in this window.
    assert_eq!(before, after, "traffic continued after convergence");
    relay.stop().await.expect("stop");
}
