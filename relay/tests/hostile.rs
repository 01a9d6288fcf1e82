//! Hostile clients against the real `accord-relay` binary: each attack is
//! sent as raw frames, the relay's peak memory (VmHWM) is asserted under a
//! bound, and an honest replica still syncs afterwards.

use std::time::Duration;

use accord_engine::sync::{ErrorCode, Frame};
use accord_engine::{ConnectOptions, Replica, ReplicaOptions};
use serde_json::json;

mod support;
use support::spawn_relay;
use support::wire::{expect_error, next_frame, peak_rss_bytes, send, subscribe, welcomed};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// The relay's peak memory may not pass this, whatever the attack.
const RSS_BOUND: u64 = 256 * MIB;

/// A relay file holding `n` documents in collection `c`.
fn populated(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let db = dir.join("relay.db");
    let options = ReplicaOptions {
        durability: accord_engine::Durability::Normal,
        ..ReplicaOptions::default()
    };
    let replica = Replica::open_with(&db, options).expect("relay file");
    for i in 0..n {
        replica
            .create("c", &json!({ "i": i, "pad": "x".repeat(64) }))
            .expect("create");
    }
    db
}

/// An honest replica syncs collection `c` through the relay.
async fn honest_replica_syncs(dir: &std::path::Path, url: &str, expect: usize) {
    let replica = Replica::open(dir.join("honest.db")).expect("replica");
    let mut sync = replica.connect(
        url,
        ConnectOptions {
            collections: vec!["c".into()],
            ..ConnectOptions::default()
        },
    );
    sync.wait_agreed(T).await.expect("the relay still serves");
    assert_eq!(replica.list("c").expect("list").len(), expect);
    sync.close().await;
}

/// One `Subscribe` naming a 300-document collection thousands of times
/// made the relay build every announcement in memory at once (7,655× the
/// frame's size). Names are now deduplicated and capped per frame,
/// listings are sent a page at a time as the socket drains, and repeated
/// subscriptions while a listing waits cost one empty frame each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_amplification_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = populated(dir.path(), 300);
    let relay = spawn_relay(&db);
    let mut attacker = welcomed(&relay.url, "attacker", "").await;

    // One frame, 20,000 names: refused whole, nothing is listed.
    let huge = Frame::Subscribe {
        collections: vec!["c".into(); 20_000],
    };
    send(&mut attacker, &huge).await;
    expect_error(&mut attacker, ErrorCode::TOO_LARGE).await;

    // Thousands of frames of 64 duplicate names, never reading the answer:
    // each frame owes at most one listing, sent only as fast as the
    // attacker reads (not at all), one page at a time.
    let dupes = Frame::Subscribe {
        collections: vec!["c".into(); 64],
    };
    let sent = tokio::time::timeout(T, async {
        for _ in 0..1_000 {
            send(&mut attacker, &dupes).await;
        }
    })
    .await;
    assert!(
        sent.is_ok(),
        "the relay keeps reading the attacker's frames"
    );

    honest_replica_syncs(dir.path(), &relay.url, 300).await;
    let peak = peak_rss_bytes(relay.child.id());
    assert!(
        peak < RSS_BOUND,
        "relay peak RSS {} MiB exceeds {} MiB",
        peak / MIB,
        RSS_BOUND / MIB
    );

    // What the attacker does receive is a listing per frame at most, and
    // each complete listing names every document once.
    let mut complete = 0;
    let mut listed = 0;
    while complete < 3 {
        match next_frame(&mut attacker).await {
            Some(Frame::Announce {
                docs, complete: c, ..
            }) => {
                listed += docs.len();
                complete += usize::from(c);
            }
            Some(_) => {}
            None => panic!("the attacker was disconnected"),
        }
    }
    assert!(listed <= 3 * 300, "listings are not duplicated: {listed}");
}

/// A 2 MiB `Sync` frame whose change chunk inflates to 6 GiB took the relay
/// from 8 MB to 6.3 GB of memory. The guard measures it before Automerge
/// sees it and refuses it with `too_large`; nothing is stored, and the
/// relay keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_before_it_expands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = populated(dir.path(), 3);
    let relay = spawn_relay(&db);
    let mut attacker = welcomed(&relay.url, "attacker", "").await;
    subscribe(&mut attacker, &["c"]).await;
    let bomb = accord_engine::fuzzing::bomb_sync_message(6 << 30);
    assert!(
        bomb.len() < 16 << 20,
        "fits the frame limit: {}",
        bomb.len()
    );
    let doc = accord_engine::DocId::random();
    send(
        &mut attacker,
        &Frame::Sync {
            doc,
            collection: "c".into(),
            message: bomb,
            want_reply: true,
        },
    )
    .await;
    loop {
        match next_frame(&mut attacker).await {
            Some(Frame::Error {
                code,
                doc: Some(d),
                message,
            }) if d == doc => {
                assert_eq!(code, ErrorCode::TOO_LARGE, "{message}");
                break;
            }
            Some(_) => {}
            None => panic!("the attacker was disconnected instead of refused"),
        }
    }
    honest_replica_syncs(dir.path(), &relay.url, 3).await;
    let peak = peak_rss_bytes(relay.child.id());
    assert!(
        peak < RSS_BOUND,
        "relay peak RSS {} MiB exceeds {} MiB",
        peak / MIB,
        RSS_BOUND / MIB
    );
    drop(relay);
    let after = Replica::open(&db).expect("the relay's file opens");
    assert!(after.meta(&doc).is_err(), "nothing was stored");
}
