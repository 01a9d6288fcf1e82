//! A replica holding several relay URLs (the nodes of a cluster) moves on
//! to the next when one is unreachable or its connection ends. Real relays
//! on 127.0.0.1:0 with real SQLite files in temporary directories.

use std::collections::BTreeSet;
use std::time::Duration;

use accord_engine::{ConnectOptions, ConnectionState, DocId, Replica, SyncError};
use accord_tests::TestRelay;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// Syncs `notes`, trying `fallbacks` after the `connect` URL.
fn options(fallbacks: &[&str]) -> ConnectOptions {
    ConnectOptions {
        collections: vec!["notes".into()],
        fallback_urls: fallbacks.iter().map(|u| (*u).to_owned()).collect(),
        ..ConnectOptions::default()
    }
}

/// A URL nothing listens on: a port bound, then released.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("ws://{}", listener.local_addr().expect("addr"))
}

fn notes(replica: &Replica, texts: &[&str]) -> Vec<DocId> {
    texts
        .iter()
        .map(|t| {
            replica
                .create("notes", &json!({ "text": t }))
                .expect("create")
        })
        .collect()
}

/// Whether `relay` holds each record as `replica` has it.
fn holds(relay: &TestRelay, replica: &Replica, ids: &[DocId]) -> bool {
    ids.iter().all(|id| {
        matches!(
            (relay.relay.replica().heads(id), replica.heads(id)),
            (Ok(there), Ok(here)) if there == here
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_first_url_is_passed_over_for_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let phone = Replica::open(dir.path().join("phone.db")).expect("phone");
    let ids = notes(&phone, &["milk", "eggs", "bread"]);

    let dead = dead_url();
    let mut sync = phone.connect(&dead, options(&[&relay.url]));
    sync.wait_agreed(T)
        .await
        .expect("agreed through the second URL");
    let status = sync.status();
    assert_eq!(status.relay_url, relay.url);
    assert_eq!(status.connects, 1);
    assert!(
        holds(&relay, &phone, &ids),
        "the live relay holds every note"
    );

    sync.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_urls_are_tried_in_turn_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let phone = Replica::open(dir.path().join("phone.db")).expect("phone");
    notes(&phone, &["milk"]);
    let (first, second) = (dead_url(), dead_url());

    // Reconnecting: the attempts go round both URLs, each error naming its own.
    let sync = phone.connect(&first, options(&[&second]));
    let mut status = sync.watch();
    let mut named = BTreeSet::new();
    let both = status.wait_for(|s| {
        if let Some(SyncError::Unreachable { url, .. }) = &s.last_error {
            named.insert(url.clone());
        }
        named.len() == 2
    });
    tokio::time::timeout(T, both)
        .await
        .expect("both URLs tried within the timeout")
        .expect("driver running");
    assert_eq!(named, BTreeSet::from([first.clone(), second.clone()]));
    sync.close().await;

    // Without reconnecting: one attempt per URL, in order, then it stops.
    let once = ConnectOptions {
        reconnect: false,
        ..options(&[&second])
    };
    let mut sync = phone.connect(&first, once);
    match sync.wait_synced(T).await {
        Err(SyncError::Unreachable { url, .. }) => assert_eq!(url, second),
        other => panic!("expected the last URL unreachable, got {other:?}"),
    }
    let status = sync.status();
    assert_eq!(status.state, ConnectionState::Stopped);
    assert_eq!(status.relay_url, second);
    sync.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_relay_shuts_down_the_next_gets_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two independent relays: separate files, so different relay ids.
    let a = TestRelay::start(&dir.path().join("a.db"))
        .await
        .expect("relay a");
    let b = TestRelay::start(&dir.path().join("b.db"))
        .await
        .expect("relay b");
    assert_ne!(a.relay.replica().peer_id(), b.relay.replica().peer_id());
    let phone = Replica::open(dir.path().join("phone.db")).expect("phone");

    // Step 1: the first notes reach A only.
    let before = notes(&phone, &["milk", "eggs"]);
    let mut sync = phone.connect(&a.url, options(&[&b.url]));
    sync.wait_synced(T).await.expect("synced with A");
    assert_eq!(sync.status().relay_url, a.url);
    assert!(holds(&a, &phone, &before), "A holds the first notes");
    assert!(
        before.iter().all(|id| b.relay.replica().get(id).is_err()),
        "B has nothing yet"
    );

    // Step 2: A shuts down; more notes are written meanwhile.
    a.stop().await.expect("stop a");
    let after = notes(&phone, &["bread", "tea"]);

    // Step 3: the driver moved on to B, which gets what only A had too.
    sync.wait_agreed(T).await.expect("agreed with B");
    let status = sync.status();
    assert_eq!(status.relay_url, b.url);
    assert_eq!(status.connects, 2);
    let all: Vec<DocId> = before.into_iter().chain(after).collect();
    assert!(holds(&b, &phone, &all), "B holds every note");

    sync.close().await;
    b.stop().await.expect("stop b");
}
