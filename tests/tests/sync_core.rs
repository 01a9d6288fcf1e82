//! The sync core's promises at its edges, against a real relay on
//! 127.0.0.1:0 and real SQLite files: local changes are never dropped
//! silently, the relay's storage failures are reported and retried, a
//! panic ends only the task it happened in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accord_engine::automerge::sync::{Message, State};
use accord_engine::sync::{
    EncodedState, ErrorCode, LocalState, NumberedSummary, SyncCursor, SyncDocs,
};
use accord_engine::{
    Collection, ConnectOptions, DocId, Heads, PeerId, Replica, ReplicaOptions, SyncError,
};
use accord_relay::Config;
use accord_tests::{wait_until, TestRelay};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn options(collections: &[&str]) -> ConnectOptions {
    ConnectOptions {
        collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        ..ConnectOptions::default()
    }
}

fn fast(path: &std::path::Path) -> Replica {
    let options = ReplicaOptions {
        durability: accord_engine::Durability::Normal,
        ..ReplicaOptions::default()
    };
    Replica::open_with(path, options).expect("open")
}

/// More local changes than the driver's change feed holds, written while
/// the driver cannot run (this test's runtime has one thread, and the
/// burst does not yield): the feed overflows, and the driver must still
/// push every record, on the same connection.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_larger_than_the_change_feed_reaches_the_relay_without_a_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = fast(&dir.path().join("a.db"));
    let b = fast(&dir.path().join("b.db"));
    let mut ha = a.connect(&relay.url, options(&["c"]));
    let mut hb = b.connect(&relay.url, options(&["c"]));
    ha.wait_synced(T).await.expect("a synced");
    hb.wait_synced(T).await.expect("b synced");
    let burst = accord_engine::replica::SUBSCRIPTION_CAPACITY + 500;
    for i in 0..burst {
        a.create("c", &json!({ "i": i })).expect("create");
    }
    ha.wait_synced(T)
        .await
        .expect("the burst reaches the relay");
    let status = ha.status();
    assert_eq!(status.connects, 1, "no reconnect was needed");
    assert!(
        status.stats.local_resyncs >= 1,
        "the overflow was noticed: {:?}",
        status.stats
    );
    wait_until(T, "B to hold every record of the burst", || async {
        b.list("c").map(|l| l.len()).unwrap_or(0) == burst
    })
    .await;
    assert_eq!(hb.status().connects, 1, "B stayed connected too");
    relay.stop().await.expect("stop");
}

/// The relay's store refuses writes (a trigger installed by another
/// process, the way a full disk or a locked file fails a write): the
/// client is told `storage_unavailable`, keeps its data, and finishes
/// syncing once the store works again, without a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_relay_store_is_reported_and_retried_until_it_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_db = dir.path().join("relay.db");
    let relay = TestRelay::start(&relay_db).await.expect("relay");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let before = a.create("c", &json!({"n": 0})).expect("create");
    let mut ha = a.connect(&relay.url, options(&["c"]));
    ha.wait_synced(T).await.expect("synced");

    let other = rusqlite::Connection::open(&relay_db).expect("second connection");
    other
        .execute_batch(
            "CREATE TRIGGER fail_writes BEFORE INSERT ON chunks
             BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END;",
        )
        .expect("install failing trigger");
    let id = a
        .create("c", &json!({"n": 1}))
        .expect("create offline-safe");
    a.put(&before, "n", &json!(2), None).expect("change");
    let mut watch = ha.watch();
    let refused = tokio::time::timeout(
        T,
        watch.wait_for(|s| {
            matches!(
                &s.last_error,
                Some(SyncError::Refused { code, .. }) if *code == ErrorCode::STORAGE_UNAVAILABLE
            )
        }),
    )
    .await
    .is_ok_and(|told| told.is_ok()); // (the status must not stay borrowed)
    assert!(refused, "the client is told: {:?}", ha.status());
    assert!(
        relay.relay.replica().get(&id).is_err(),
        "nothing was stored"
    );
    assert_eq!(a.get(&id).expect("still local").value, json!({"n": 1}));

    other
        .execute_batch("DROP TRIGGER fail_writes")
        .expect("repair the store");
    ha.wait_synced(T)
        .await
        .expect("syncing finishes once the store works");
    assert_eq!(
        relay.relay.replica().get(&id).expect("stored").value,
        json!({"n": 1})
    );
    assert_eq!(
        relay.relay.replica().get(&before).expect("stored").value,
        json!({"n": 2})
    );
    assert_eq!(ha.status().connects, 1, "retried on the same connection");
    let metrics = relay.relay.metrics().encode();
    assert!(
        !metrics.contains("accord_relay_storage_failures_total 0"),
        "the operator sees the failures: {metrics}"
    );
    relay.stop().await.expect("stop");
}

/// The relay's store with a fault: the first sync message for a marked
/// document panics, once.
#[derive(Debug)]
struct PanicOnce {
    replica: Replica,
    target: DocId,
    fired: AtomicBool,
}

impl SyncDocs for PanicOnce {
    fn summaries(
        &self,
        c: &Collection,
    ) -> accord_engine::Result<Vec<accord_engine::sync::DocSummary>> {
        self.replica.summaries(c)
    }
    fn summaries_page(
        &self,
        c: &Collection,
        after: Option<&DocId>,
        limit: usize,
    ) -> accord_engine::Result<Vec<accord_engine::sync::DocSummary>> {
        self.replica.summaries_page(c, after, limit)
    }
    fn collection_seq(&self, c: &Collection) -> accord_engine::Result<u64> {
        self.replica.collection_seq(c)
    }
    fn summaries_since(
        &self,
        c: &Collection,
        since: u64,
        limit: usize,
    ) -> accord_engine::Result<Vec<NumberedSummary>> {
        self.replica.summaries_since(c, since, limit)
    }
    fn sync_cursor(&self, c: &Collection) -> accord_engine::Result<Option<SyncCursor>> {
        self.replica.sync_cursor(c)
    }
    fn save_sync_cursor(&self, c: &Collection, cursor: &SyncCursor) -> accord_engine::Result<()> {
        self.replica.save_sync_cursor(c, cursor)
    }
    fn local_state(&self, doc: &DocId) -> accord_engine::Result<Option<LocalState>> {
        self.replica.local_state(doc)
    }
    fn heads(&self, doc: &DocId) -> accord_engine::Result<Heads> {
        SyncDocs::heads(&self.replica, doc)
    }
    fn covers(
        &self,
        doc: &DocId,
        heads: &Heads,
        of: &Heads,
    ) -> accord_engine::Result<Option<bool>> {
        self.replica.covers(doc, heads, of)
    }
    fn generate(
        &self,
        doc: &DocId,
        c: &Collection,
        state: &mut State,
    ) -> accord_engine::Result<Option<Message>> {
        self.replica.generate(doc, c, state)
    }
    fn receive(
        &self,
        doc: &DocId,
        c: &Collection,
        state: &mut State,
        message: Message,
        from: &PeerId,
    ) -> accord_engine::Result<bool> {
        if *doc == self.target && !self.fired.swap(true, Ordering::SeqCst) {
            panic!("injected fault while applying {doc}");
        }
        self.replica.receive(doc, c, state, message, from)
    }
    fn delete(&self, doc: &DocId, c: &Collection, from: &PeerId) -> accord_engine::Result<bool> {
        SyncDocs::delete(&self.replica, doc, c, from)
    }
    fn numbering_held(&self) -> bool {
        self.replica.numbering_held()
    }
    fn saved_form(&self, doc: &DocId, max_bytes: usize) -> accord_engine::Result<Option<Vec<u8>>> {
        self.replica.saved_form(doc, max_bytes)
    }
    fn receive_whole(
        &self,
        doc: &DocId,
        c: &Collection,
        data: &[u8],
        from: &PeerId,
    ) -> accord_engine::Result<accord_engine::sync::Received> {
        self.replica.receive_whole(doc, c, data, from)
    }
    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> accord_engine::Result<Option<State>> {
        self.replica.load_sync_state(peer, doc)
    }
    fn retire_sync_states(
        &self,
        prefix: &str,
        keep: usize,
        current: &PeerId,
    ) -> accord_engine::Result<()> {
        self.replica.retire_sync_states(prefix, keep, current)
    }
    fn save_sync_states(
        &self,
        peer: &PeerId,
        states: Vec<EncodedState>,
    ) -> accord_engine::Result<()> {
        self.replica.save_sync_states(peer, states)
    }
}

/// A panic in a document actor's blocking call ends that actor cleanly:
/// the sender is told to offer the document again, the next message
/// starts a fresh actor, the document syncs, and other documents and
/// connections never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_document_actor_ends_and_the_document_still_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Replica::open(dir.path().join("a.db")).expect("a");
    let b = Replica::open(dir.path().join("b.db")).expect("b");
    let doomed = a.create("c", &json!({"first": true})).expect("create");
    let calm = a.create("c", &json!({"calm": true})).expect("create");
    let config = Config {
        db: dir.path().join("relay.db"),
        ..Config::default()
    };
    let relay = TestRelay::start_layered(config, |replica| {
        Arc::new(PanicOnce {
            replica,
            target: doomed,
            fired: AtomicBool::new(false),
        })
    })
    .await
    .expect("relay");
    let mut hb = b.connect(&relay.url, options(&["c"]));
    hb.wait_synced(T).await.expect("b synced");
    let mut ha = a.connect(&relay.url, options(&["c"]));
    ha.wait_synced(T)
        .await
        .expect("both documents reach the relay despite the panic");
    for id in [doomed, calm] {
        assert_eq!(
            relay.relay.replica().get(&id).expect("stored").value,
            a.get(&id).expect("local").value
        );
    }
    wait_until(T, "B to receive both documents", || async {
        b.get(&doomed).is_ok() && b.get(&calm).is_ok()
    })
    .await;
    let metrics = relay.relay.metrics().encode();
    assert!(
        metrics.contains("accord_relay_panics_total{kind=\"document\"} 1"),
        "{metrics}"
    );
    assert_eq!(ha.status().connects, 1, "the connection survived");
    assert_eq!(
        hb.status().connects,
        1,
        "the other connection never noticed"
    );
    relay.stop().await.expect("stop");
}

/// A record with 40 MiB of incompressible history, more than the relay
/// accepts in one frame (16 MiB by default): it goes in batches, both ways
/// through the relay, and arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forty_mib_document_syncs_in_batches_under_the_frame_limit() {
    use accord_engine::automerge::transaction::Transactable;
    use accord_engine::automerge::{ScalarValue, ROOT};
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let a = fast(&dir.path().join("a.db"));
    let id = a.create("c", &json!({})).expect("create");
    for i in 0..40 {
        // One MiB of noise per change (deflate cannot shrink it).
        let noise = accord_engine::testing::noise(i, 1024 * 1024);
        a.change(&id, None, |tx| {
            tx.put(ROOT, format!("k{i}"), ScalarValue::Bytes(noise))
        })
        .expect("change");
    }
    assert!(a.meta(&id).expect("meta").size_bytes > 40 * 1024 * 1024);
    let mut ha = a.connect(&relay.url, options(&["c"]));
    ha.wait_synced(T * 4).await.expect("the relay holds it");
    let b = fast(&dir.path().join("b.db"));
    let mut hb = b.connect(&relay.url, options(&["c"]));
    hb.wait_agreed(T * 4)
        .await
        .expect("a second replica holds it");
    assert_eq!(b.heads(&id).expect("heads"), a.heads(&id).expect("heads"));
    assert!(
        ha.status().stats.messages_sent >= 4,
        "sent in several batches: {:?}",
        ha.status().stats
    );
    assert_eq!(ha.status().connects, 1, "never refused for size");
    relay.stop().await.expect("stop");
}

/// A relay with a document quota refuses a record past it with
/// `too_large`, once: the client stops offering it on that connection and
/// reports it, and other records keep syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_the_relay_quota_is_refused_once_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        db: dir.path().join("relay.db"),
        max_document_bytes: 64 * 1024,
        ..Config::default()
    };
    let relay = TestRelay::start_with(config).await.expect("relay");
    let a = fast(&dir.path().join("a.db"));
    let big = a
        .create(
            "c",
            &json!({ "text": accord_engine::testing::noise_text(7, 200_000) }),
        )
        .expect("create");
    let small = a.create("c", &json!({"n": 1})).expect("create");
    let mut ha = a.connect(&relay.url, options(&["c"]));
    let outcome = ha.wait_synced(Duration::from_secs(5)).await;
    assert!(
        outcome.is_err(),
        "the big record cannot be held: {outcome:?}"
    );
    assert!(
        matches!(
            &ha.status().last_error,
            Some(SyncError::Refused { code, .. }) if *code == ErrorCode::TOO_LARGE
        ),
        "{:?}",
        ha.status().last_error
    );
    assert!(relay.relay.replica().get(&small).is_ok(), "others sync");
    assert!(relay.relay.replica().get(&big).is_err(), "nothing stored");
    let metrics = relay.relay.metrics().encode();
    assert!(
        metrics.contains("accord_relay_sync_errors_total 1\n"),
        "refused once, not in a loop: {metrics}"
    );
    relay.stop().await.expect("stop");
}
