//! Replicas converge through a real relay on 127.0.0.1:0, with real SQLite
//! files in temporary directories.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::ROOT;
use accord_engine::{ChangeKind, ConnectOptions, Filter, Replica, SyncHandle};
use accord_tests::proxy::{Fault, FaultProxy};
use accord_tests::{wait_until, TestRelay};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn options(collections: &[&str]) -> ConnectOptions {
    ConnectOptions {
        collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        ..ConnectOptions::default()
    }
}

async fn synced(replica: &Replica, relay: &TestRelay, collections: &[&str]) -> SyncHandle {
    let mut handle = replica.connect(&relay.url, options(collections));
    handle.wait_synced(T).await.expect("synced");
    handle
}

/// A relay in `dir` and a replica `a` holding `n` notes `{"n": i}`.
async fn relay_and_notes(
    dir: &std::path::Path,
    n: usize,
) -> (TestRelay, Replica, Vec<accord_engine::DocId>) {
    let relay = TestRelay::start(&dir.join("relay.db"))
        .await
        .expect("relay");
    let a = Replica::open(dir.join("a.db")).expect("a");
    let ids = (0..n)
        .map(|i| a.create("notes", &json!({"n": i})).expect("create"))
        .collect();
    (relay, a, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_on_two_replicas_converge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let b = Replica::open(dir.path().join("b.db")).expect("b");
    // A shared record reaches B first.
    let shared = a
        .create("tasks", &json!({"title": "plan", "done": false}))
        .expect("create");
    let ha = synced(&a, &relay, &["tasks"]).await;
    let hb = synced(&b, &relay, &["tasks"]).await;
    wait_until(T, "B to receive the shared record", || async {
        b.get(&shared).is_ok()
    })
    .await;
    ha.close().await;
    hb.close().await;

    // Offline: both edit the same record, same field and different fields,
    // and each creates a record of its own.
    a.put(&shared, "title", &json!("plan A"), None)
        .expect("a title");
    a.put(&shared, "owner", &json!("ann"), None)
        .expect("a owner");
    b.put(&shared, "title", &json!("plan B"), None)
        .expect("b title");
    b.put(&shared, "done", &json!(true), None).expect("b done");
    let only_a = a
        .create("tasks", &json!({"title": "a's"}))
        .expect("a create");
    let only_b = b
        .create("tasks", &json!({"title": "b's"}))
        .expect("b create");

    let mut ha = synced(&a, &relay, &["tasks"]).await;
    let mut hb = synced(&b, &relay, &["tasks"]).await;
    ha.wait_synced(T).await.expect("a synced again");
    for id in [shared, only_a, only_b] {
        wait_until(T, "identical heads", || async {
            matches!((a.heads(&id), b.heads(&id)), (Ok(x), Ok(y)) if x == y)
        })
        .await;
        assert_eq!(a.get(&id).expect("a").value, b.get(&id).expect("b").value);
    }
    let merged = a.get(&shared).expect("merged").value;
    assert_eq!(merged["owner"], json!("ann"));
    assert_eq!(merged["done"], json!(true));
    assert!(merged["title"] == json!("plan A") || merged["title"] == json!("plan B"));
    hb.wait_synced(T).await.expect("b synced");
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_online_with_the_others_gets_everything_from_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, a, ids) = relay_and_notes(dir.path(), 5).await;
    a.delete(&ids[4]).expect("delete");
    synced(&a, &relay, &["notes"]).await.close().await;
    drop(a);

    let c = Replica::open(dir.path().join("c.db")).expect("c");
    let handle = synced(&c, &relay, &["notes"]).await;
    wait_until(T, "all records at C", || async {
        c.list("notes").map(|l| l.len() == 4).unwrap_or(false)
    })
    .await;
    for (i, id) in ids.iter().enumerate().take(4) {
        assert_eq!(c.get(id).expect("get").value, json!({"n": i}));
    }
    assert!(c.meta(&ids[4]).expect("tombstone").deleted);
    handle.close().await;
    relay.stop().await.expect("stop");
}

/// A replica that holds none of a collection gets its documents whole
/// (protocol 4): each in its saved form, in one `Documents` entry, instead
/// of an exchange of sync messages. The relay sends its stored chunks as
/// they are (a snapshot and the changes appended since), tombstones and
/// large documents are announced and synced as before, and afterwards the
/// documents sync both ways from the heads they came with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_gets_documents_whole_and_syncs_them_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let ids: Vec<_> = (0..20)
        .map(|i| a.create("notes", &json!({"n": i})).expect("create"))
        .collect();
    synced(&a, &relay, &["notes"]).await.close().await;
    // A second push: the relay appends these as chunks after the snapshots.
    for id in &ids[..5] {
        a.put(id, "edited", &json!(true), None).expect("edit");
    }
    a.delete(&ids[19]).expect("delete");
    let noise: String = (0..20_000)
        .map(|_| accord_engine::DocId::random().to_string())
        .collect();
    let large = a
        .create("notes", &json!({ "blob": noise }))
        .expect("a record too large to go whole");
    let mut ha = synced(&a, &relay, &["notes"]).await;

    let b = Replica::open(dir.path().join("b.db")).expect("b");
    let mut hb = b.connect(&relay.url, options(&["notes"]));
    hb.wait_agreed(T).await.expect("agreed");
    let stats = hb.status().stats;
    assert_eq!(stats.docs_whole, 19, "the live small records went whole");
    for id in ids.iter().take(19).chain([&large]) {
        assert_eq!(
            b.get(id).expect("at b").value,
            a.get(id).expect("at a").value
        );
        assert_eq!(b.meta(id).expect("b").heads, a.meta(id).expect("a").heads);
    }
    assert!(b.meta(&ids[19]).expect("tombstone").deleted);

    // Both ways from the heads they came with.
    a.put(&ids[0], "from", &json!("a"), None)
        .expect("edit at a");
    b.put(&ids[1], "from", &json!("b"), None)
        .expect("edit at b");
    wait_until(T, "each edit at the other replica", || async {
        b.get(&ids[0]).is_ok_and(|r| r.value["from"] == json!("a"))
            && a.get(&ids[1]).is_ok_and(|r| r.value["from"] == json!("b"))
    })
    .await;
    hb.wait_agreed(T).await.expect("b agreed again");
    ha.wait_agreed(T).await.expect("a agreed again");
    hb.close().await;

    // Holding records now, b is listed as usual on its next connection.
    let hb = synced(&b, &relay, &["notes"]).await;
    assert_eq!(hb.status().stats.docs_whole, 0);
    hb.close().await;
    ha.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_on_a_appears_live_on_b_and_a_delete_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let b = Replica::open(dir.path().join("b.db")).expect("b");
    let mut ha = synced(&a, &relay, &["contacts"]).await;
    let hb = synced(&b, &relay, &["contacts"]).await;
    let events = b.subscribe(Filter::Collection("contacts".into()));

    let id = a
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    let event = tokio::task::spawn_blocking(move || events.recv_timeout(T).map(|e| (e, events)))
        .await
        .expect("join")
        .expect("event on B");
    let (event, events) = event;
    assert_eq!(
        (event.doc, event.kind, event.is_remote()),
        (id, ChangeKind::Created, true)
    );
    assert_eq!(b.get(&id).expect("on B").value, json!({"name": "Ada"}));

    a.change(&id, Some("rename"), |tx| tx.put(ROOT, "name", "Ada L."))
        .expect("change");
    wait_until(T, "rename on B", || async {
        b.get(&id)
            .map(|r| r.value["name"] == json!("Ada L."))
            .unwrap_or(false)
    })
    .await;

    a.delete(&id).expect("delete");
    ha.wait_synced(T).await.expect("delete synced");
    wait_until(T, "delete on B", || async {
        b.meta(&id).map(|m| m.deleted).unwrap_or(false)
    })
    .await;
    assert!(matches!(b.get(&id), Err(accord_engine::Error::Deleted(_))));
    let kinds: Vec<ChangeKind> = std::iter::from_fn(|| events.try_recv().and_then(Result::ok))
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&ChangeKind::Deleted), "{kinds:?}");
    hb.close().await;
    relay.stop().await.expect("stop");
}

/// A replica commits what it receives without an fsync of its own
/// (`ReplicaOptions::received_durability`), so a power cut may drop the
/// last received commits, with the sync cursor and sync states saved
/// beside them: the file is then an older copy of itself. Here the older
/// copy is put back by hand, while the relay keeps believing the replica
/// holds everything. Reconnecting must bring back every lost change: an
/// edit, a new record and a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_received_commits_to_a_power_cut_gets_them_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, a, ids) = relay_and_notes(dir.path(), 5).await;
    let mut ha = synced(&a, &relay, &["notes"]).await;

    let b_path = dir.path().join("b.db");
    let b = Replica::open(&b_path).expect("b");
    let mut hb = synced(&b, &relay, &["notes"]).await;
    hb.wait_agreed(T).await.expect("agreed");
    assert_eq!(b.list("notes").expect("list").len(), 5);
    hb.close().await;
    // The file as a power cut would leave it: closing checkpoints the WAL
    // into the main file, which is then copied as it is (same peer id).
    drop(b);
    assert!(
        !dir.path().join("b.db-wal").exists(),
        "checkpointed on close"
    );
    let older = dir.path().join("b-before-the-cut.db");
    std::fs::copy(&b_path, &older).expect("copy");
    let b = Replica::open(&b_path).expect("b again");

    // What B then receives, and loses.
    a.put(&ids[0], "n", &json!(100), None).expect("edit");
    let added = a.create("notes", &json!({"n": 5})).expect("create");
    a.delete(&ids[1]).expect("delete");
    ha.wait_synced(T).await.expect("synced");
    let mut hb = synced(&b, &relay, &["notes"]).await;
    hb.wait_agreed(T).await.expect("agreed");
    assert_eq!(b.get(&ids[0]).expect("edit at B").value, json!({"n": 100}));
    hb.close().await;
    drop(b);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", b_path.display()));
    }
    std::fs::copy(&older, &b_path).expect("the older copy back");

    let b = Replica::open(&b_path).expect("b after the cut");
    assert_eq!(b.get(&ids[0]).expect("old").value, json!({"n": 0}));
    assert!(b.get(&added).is_err(), "the new record was lost");
    let mut hb = synced(&b, &relay, &["notes"]).await;
    hb.wait_agreed(T).await.expect("agreed again");
    for id in ids.iter().chain([&added]) {
        let (at_a, at_b) = (a.meta(id).expect("meta A"), b.meta(id).expect("meta B"));
        assert_eq!(at_b.deleted, at_a.deleted, "{id}");
        assert_eq!(b.heads(id).expect("B"), a.heads(id).expect("A"), "{id}");
    }
    assert_eq!(b.get(&ids[0]).expect("edit again").value, json!({"n": 100}));
    assert_eq!(b.get(&added).expect("new again").value, json!({"n": 5}));
    assert!(b.meta(&ids[1]).expect("tombstone").deleted);
    hb.close().await;
    ha.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_resumes_without_resending_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let path = dir.path().join("a.db");
    let a = Replica::open(&path).expect("a");
    let id = a.create("log", &json!({"n": 0})).expect("create");
    for i in 1..200 {
        // Random ids make incompressible text, so sizes reflect history.
        let text: String = (0..3)
            .map(|_| accord_engine::DocId::random().to_string())
            .collect();
        a.put(&id, &format!("k{i}"), &json!(text), None)
            .expect("put");
    }
    let handle = synced(&a, &relay, &["log"]).await;
    let first = handle.status().stats;
    drop(handle); // no clean close: the task is cancelled
    drop(a);

    let a = Replica::open(&path).expect("reopen");
    a.put(&id, "n", &json!(200), None).expect("one more");
    let handle = synced(&a, &relay, &["log"]).await;
    let second = handle.status().stats;
    assert!(
        second.bytes_sent * 10 < first.bytes_sent,
        "resumed sync sent {} bytes, the first sync {}",
        second.bytes_sent,
        first.bytes_sent
    );
    let relay_doc = relay.relay.replica().get(&id).expect("at relay");
    assert_eq!(relay_doc.value["n"], json!(200));
    assert_eq!(
        relay_doc.value["k199"],
        a.get(&id).expect("local").value["k199"]
    );
    handle.close().await;
    relay.stop().await.expect("stop");
}

/// `wait_synced` promises the changes made before the call. An app that
/// never stops writing must still hear that its earlier writes are safe,
/// and they must really be at the relay when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_synced_answers_while_writes_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let id = a.create("notes", &json!({"n": 0})).expect("create");
    let mut handle = a.connect(&relay.url, options(&["notes"]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, stop) = (a.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                a.put(&id, "n", &json!(n), None).expect("put");
            }
            n
        })
    };
    for round in 0..5 {
        let before = a.heads(&id).expect("heads");
        handle
            .wait_synced(T)
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer while writes go on: {e}"));
        relay
            .relay
            .replica()
            .get_at(&id, &before)
            .unwrap_or_else(|e| panic!("round {round}: the relay lacks what was promised: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    assert!(writes > 0, "the writer never wrote");
    handle.close().await;
    relay.stop().await.expect("stop");
}

/// `wait_agreed` compares with what the relay holds when it is called: a
/// record another replica pushed just before is already there when it
/// returns, not merely on its way (B's link is slow, so the forwarded
/// record is still in transit when B is asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_agreed_includes_what_another_replica_just_pushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let slow = FaultProxy::start(relay.addr).await.expect("proxy");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let b = Replica::open(dir.path().join("b.db")).expect("b");
    let mut ha = synced(&a, &relay, &["notes"]).await;
    let mut hb = b.connect(&slow.url(), options(&["notes"]));
    hb.wait_agreed(T).await.expect("b agreed while empty");
    slow.set(Fault::Delay(Duration::from_millis(50)));
    for round in 0..5 {
        let id = a
            .create("notes", &json!({ "round": round }))
            .expect("create");
        ha.wait_synced(T).await.expect("a pushed");
        hb.wait_agreed(T).await.expect("b agreed");
        let heads = b
            .heads(&id)
            .unwrap_or_else(|e| panic!("round {round}: B agreed without the new record: {e}"));
        assert_eq!(heads, a.heads(&id).expect("a heads"), "round {round}");
    }
    ha.close().await;
    hb.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stops_once_converged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let b = Replica::open(dir.path().join("b.db")).expect("b");
    for i in 0..20 {
        a.create("c", &json!({"i": i})).expect("a create");
        b.create("c", &json!({"j": i})).expect("b create");
    }
    let mut ha = synced(&a, &relay, &["c"]).await;
    let mut hb = synced(&b, &relay, &["c"]).await;
    wait_until(T, "both hold 40", || async {
        a.list("c").map(|l| l.len() == 40).unwrap_or(false)
            && b.list("c").map(|l| l.len() == 40).unwrap_or(false)
    })
    .await;
    ha.wait_synced(T).await.expect("a");
    hb.wait_synced(T).await.expect("b");
    let before = (ha.status().stats, hb.status().stats);
    // Observe a quiet period spanning several driver ticks (1 s each): a
    // sync loop would show up as growing counters.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ha.wait_synced(T).await.expect("a");
    hb.wait_synced(T).await.expect("b");
    let after = (ha.status().stats, hb.status().stats);
    assert_eq!(
        before.0.messages_sent, after.0.messages_sent,
        "A kept sending"
    );
    assert_eq!(
        before.1.messages_sent, after.1.messages_sent,
        "B kept sending"
    );
    assert_eq!(
        before.0.messages_received, after.0.messages_received,
        "A kept receiving"
    );
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_coalesced_for_every_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    // NORMAL durability: commits without fsync, so the burst outpaces the
    // network round trips, which is the situation coalescing is for.
    let fast = accord_engine::ReplicaOptions {
        durability: accord_engine::Durability::Normal,
        ..Default::default()
    };
    let writer = Replica::open_with(dir.path().join("w.db"), fast).expect("writer");
    let id = writer.create("burst", &json!({"k": -1})).expect("create");
    let mut hw = synced(&writer, &relay, &["burst"]).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let r = Replica::open(dir.path().join(format!("r{i}.db"))).expect("reader");
        let h = synced(&r, &relay, &["burst"]).await;
        readers.push((r, h));
    }
    const CHANGES: i64 = 300;
    let w = writer.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..CHANGES {
            w.put(&id, "k", &json!(i), None).expect("put");
        }
    })
    .await
    .expect("writer");
    hw.wait_synced(T).await.expect("writer synced");
    for (r, h) in &mut readers {
        wait_until(T, "reader sees the last value", || async {
            r.get(&id)
                .map(|d| d.value["k"] == json!(CHANGES - 1))
                .unwrap_or(false)
        })
        .await;
        h.wait_synced(T).await.expect("reader synced");
        let got = h.status().stats.messages_received;
        eprintln!("reader received {got} messages for {CHANGES} changes");
        assert!(
            got < CHANGES as u64 / 2,
            "{got} messages for {CHANGES} changes: not coalesced"
        );
    }
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_urls_go_through_tls() {
    // A TCP listener that is not a TLS server: the client must attempt a
    // TLS handshake (and fail it), not refuse the scheme.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("wss://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let replica = Replica::open_in_memory().expect("replica");
    let options = ConnectOptions {
        reconnect: false,
        ..options(&["c"])
    };
    let mut handle = replica.connect(&url, options);
    match handle.wait_connected(T).await {
        Err(accord_engine::SyncError::Unreachable { reason, .. }) => {
            assert!(
                !reason.contains("not compiled"),
                "TLS must be available: {reason}"
            );
        }
        other => panic!("expected a failed TLS connection, got {other:?}"),
    }
}
