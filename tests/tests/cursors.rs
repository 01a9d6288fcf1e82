//! Collection cursors through a real relay on 127.0.0.1:0: a replica that
//! reconnects is told only what changed since its cursor (counted on a raw
//! connection and in bytes through a proxy), a cursor a relay did not
//! issue gets a full listing (and the replica's records reach that relay),
//! and a version-2 replica is still served.

use std::time::Duration;

use accord_engine::sync::{Cursor, Frame, SubscribeFrom, SyncCursor, SyncDocs};
use accord_engine::{Collection, ConnectOptions, DocId, Replica, SyncHandle};
use accord_tests::proxy::FaultProxy;
use accord_tests::wire::{next_frame, raw, send, welcomed};
use accord_tests::{wait_until, TestRelay};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn notes() -> Collection {
    "notes".parse().expect("a valid name")
}

fn options() -> ConnectOptions {
    ConnectOptions {
        collections: vec!["notes".into()],
        ..ConnectOptions::default()
    }
}

/// Connects `replica` to `url` and waits until it agrees with the relay.
async fn agreed(replica: &Replica, url: &str) -> SyncHandle {
    let mut handle = replica.connect(url, options());
    handle.wait_agreed(T).await.expect("agreed");
    handle
}

/// Waits until `replica` saved a cursor of `relay_id` (it does once
/// everything agrees, at the latest at its session's next tick).
async fn cursor_saved(replica: &Replica, relay_id: &str) -> SyncCursor {
    wait_until(T, "the cursor to be saved", || async {
        replica
            .sync_cursor(&notes())
            .expect("read")
            .is_some_and(|c| c.relay.as_str() == relay_id)
    })
    .await;
    replica.sync_cursor(&notes()).expect("read").expect("saved")
}

/// What a raw `SubscribeSince` with `cursor` is answered with: the
/// `Listing` header's `since` and the documents announced.
async fn listing(url: &str, cursor: Option<Cursor>) -> (Option<u64>, Vec<DocId>) {
    let mut ws = welcomed(url, "raw-peer", "").await;
    let frame = Frame::SubscribeSince {
        collections: vec![SubscribeFrom {
            collection: "notes".into(),
            cursor,
        }],
    };
    send(&mut ws, &frame).await;
    let (mut since, mut docs) = (None, Vec::new());
    loop {
        match next_frame(&mut ws).await {
            Some(Frame::Listing { since: s, .. }) => since = s,
            Some(Frame::Announce {
                docs: page,
                complete,
                ..
            }) => {
                docs.extend(page.iter().map(|s| s.doc));
                if complete {
                    return (since, docs);
                }
            }
            Some(Frame::Subscribed { .. }) => {}
            other => panic!("expected a listing, got {other:?}"),
        }
    }
}

/// A writer creates `n` notes and hands them to the relay.
async fn written(dir: &std::path::Path, relay: &TestRelay, n: usize) -> (Replica, Vec<DocId>) {
    let writer = Replica::open(dir.join("writer.db")).expect("writer");
    let ids = (0..n)
        .map(|i| writer.create("notes", &json!({ "i": i })).expect("create"))
        .collect();
    let mut handle = writer.connect(&relay.url, options());
    handle.wait_synced(T).await.expect("uploaded");
    handle.close().await;
    (writer, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_is_told_only_what_changed_since_its_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let relay_id = relay.relay.replica().peer_id().to_string();
    let (writer, ids) = written(dir.path(), &relay, 300).await;

    // The reader's first sync goes through a counting proxy.
    let reader = Replica::open(dir.path().join("reader.db")).expect("reader");
    let proxy = FaultProxy::start(relay.addr).await.expect("proxy");
    let handle = agreed(&reader, &proxy.url()).await;
    let first_bytes = proxy.forwarded();
    assert_eq!(reader.list("notes").expect("list").len(), 300);
    let cursor = cursor_saved(&reader, &relay_id).await;
    handle.close().await;

    // Elsewhere, three records change and one is deleted.
    for id in &ids[..3] {
        writer.put(id, "i", &json!(-1), None).expect("change");
    }
    writer.delete(&ids[3]).expect("delete");
    let mut handle = writer.connect(&relay.url, options());
    handle.wait_synced(T).await.expect("pushed");
    handle.close().await;

    // On the wire, the cursor is answered by those four records only.
    let honoured = Cursor {
        relay_id: relay_id.clone(),
        seq: cursor.relay_seq,
    };
    let (since, mut announced) = listing(&relay.url, Some(honoured)).await;
    assert_eq!(since, Some(cursor.relay_seq));
    announced.sort();
    let mut changed = ids[..4].to_vec();
    changed.sort();
    assert_eq!(announced, changed);

    // The reader reconnects: it gets the changes, for a fraction of the
    // bytes of its first sync.
    let proxy = FaultProxy::start(relay.addr).await.expect("proxy");
    let handle = agreed(&reader, &proxy.url()).await;
    let reconnect_bytes = proxy.forwarded();
    for id in &ids[..3] {
        assert_eq!(
            reader.heads(id).expect("heads"),
            writer.heads(id).expect("heads")
        );
    }
    assert!(
        reader.meta(&ids[3]).expect("meta").deleted,
        "the tombstone arrived"
    );
    assert!(
        reconnect_bytes * 10 < first_bytes,
        "reconnect {reconnect_bytes} bytes, first sync {first_bytes}"
    );
    let later = cursor_saved(&reader, &relay_id).await;
    assert!(later.relay_seq >= cursor.relay_seq);
    handle.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_another_relay_issued_gets_a_full_listing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestRelay::start(&dir.path().join("first.db"))
        .await
        .expect("relay");
    let first_id = first.relay.replica().peer_id().to_string();
    let (_, ids) = written(dir.path(), &first, 20).await;
    let reader = Replica::open(dir.path().join("reader.db")).expect("reader");
    agreed(&reader, &first.url).await.close().await;
    let cursor = cursor_saved(&reader, &first_id).await;
    first.stop().await.expect("stop");

    // A second relay, on another database, holding records of its own.
    let second = TestRelay::start(&dir.path().join("second.db"))
        .await
        .expect("relay");
    let own = second
        .relay
        .replica()
        .create("notes", &json!({ "at": "second" }))
        .expect("create");
    let foreign = Cursor {
        relay_id: first_id.clone(),
        seq: cursor.relay_seq,
    };
    let (since, announced) = listing(&second.url, Some(foreign)).await;
    assert_eq!(since, None, "the first relay's number means nothing here");
    assert_eq!(announced, vec![own]);

    // The reader's cursor names the first relay: the second lists
    // everything, and every record the reader holds reaches it.
    let handle = agreed(&reader, &second.url).await;
    assert!(
        reader.get(&own).is_ok(),
        "the second relay's record arrived"
    );
    for id in &ids {
        assert!(
            second.relay.replica().get(id).is_ok(),
            "record {id} reached the second relay"
        );
    }
    let second_id = second.relay.replica().peer_id().to_string();
    cursor_saved(&reader, &second_id).await;
    handle.close().await;
    second.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_replica_is_still_served_with_full_listings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let (_, ids) = written(dir.path(), &relay, 5).await;
    let mut ws = raw(&relay.url).await;
    let hello = Frame::Hello {
        version: 2,
        peer_id: "old-replica".into(),
        token: String::new(),
    };
    send(&mut ws, &hello).await;
    assert!(matches!(
        next_frame(&mut ws).await,
        Some(Frame::Welcome { version: 2, .. })
    ));
    let subscribe = Frame::Subscribe {
        collections: vec!["notes".into()],
    };
    send(&mut ws, &subscribe).await;
    let mut announced = Vec::new();
    loop {
        match next_frame(&mut ws).await {
            Some(Frame::Announce { docs, complete, .. }) => {
                announced.extend(docs.iter().map(|s| s.doc));
                if complete {
                    break;
                }
            }
            Some(Frame::Subscribed { .. }) => {}
            other => panic!("a version-2 replica got {other:?}"),
        }
    }
    assert_eq!(announced.len(), ids.len());
    relay.stop().await.expect("stop");
}

/// A relay restored from a backup is an earlier state of itself: a
/// replica's cursor may be numbered past what the copy holds. Once the
/// copy has numbered more writes than that cursor, a relay keeping its old
/// id would honour it, and the records written after the backup, which the
/// replica holds, would never be offered again. The backup carries no id,
/// so the restored relay has a new one, and the replica lists and compares
/// everything once: what the copy lost comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restored_from_a_backup_gets_back_what_the_copy_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let relay_id = relay.relay.replica().peer_id().to_string();
    let (writer, kept) = written(dir.path(), &relay, 5).await;
    let backup = dir.path().join("backup.db");
    relay.relay.replica().backup_to(&backup).expect("backup");

    // Written after the backup: the copy will not have these.
    let lost: Vec<DocId> = (0..3)
        .map(|i| {
            writer
                .create("notes", &json!({ "lost": i }))
                .expect("create")
        })
        .collect();
    let mut handle = agreed(&writer, &relay.url).await;
    // Agreeing again lists what changed since: the uploads, numbered 6-8.
    handle.wait_agreed(T).await.expect("agreed again");
    wait_until(T, "the cursor to pass the backup", || async {
        writer
            .sync_cursor(&notes())
            .expect("read")
            .is_some_and(|c| c.relay.as_str() == relay_id && c.relay_seq >= 8)
    })
    .await;
    handle.close().await;
    let cursor = writer.sync_cursor(&notes()).expect("read").expect("saved");
    relay.stop().await.expect("stop");

    // The copy is restored, and numbers more writes than the cursor.
    let restored = TestRelay::start(&backup).await.expect("restored");
    let restored_id = restored.relay.replica().peer_id().to_string();
    assert_ne!(restored_id, relay_id, "the copy has an identity of its own");
    for id in &lost {
        assert!(
            restored.relay.replica().get(id).is_err(),
            "lost by the copy"
        );
    }
    let other = Replica::open(dir.path().join("other.db")).expect("other");
    for i in 0..10 {
        other
            .create("notes", &json!({ "other": i }))
            .expect("create");
    }
    agreed(&other, &restored.url).await.close().await;
    assert!(
        restored
            .relay
            .replica()
            .collection_seq("notes")
            .expect("seq")
            > cursor.relay_seq
    );

    let handle = agreed(&writer, &restored.url).await;
    for id in kept.iter().chain(&lost) {
        assert_eq!(
            restored
                .relay
                .replica()
                .heads(id)
                .expect("at the restored relay"),
            writer.heads(id).expect("at the writer"),
            "{id}"
        );
    }
    assert_eq!(writer.list("notes").expect("list").len(), 18);
    cursor_saved(&writer, &restored_id).await;
    handle.close().await;
    restored.stop().await.expect("stop");
}
