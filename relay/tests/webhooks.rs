//! Webhooks against the real `accord-relay` binary and a real HTTP
//! receiver: every change arrives once, in order, signed; 5xx answers are
//! retried with backoff; a 4xx is not retried and the batch becomes a
//! dead letter that can be replayed; a receiver that is down while 1,000
//! changes are made gets all of them when it comes back; and SIGKILL in
//! the middle of deliveries loses nothing (trials:
//! `ACCORD_WEBHOOK_CRASH_TRIALS`, default 3).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use accord_engine::{ConnectOptions, DocId, Replica, SyncHandle};
use accord_relay::http::client::{fetch, Target};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{json, Value};
use support::receiver::{Delivery, Receiver};
use support::{spawn_relay_with, RelayProcess};

const T: Duration = Duration::from_secs(30);
const SECRET: &str = "the webhook test's secret, long enough";

/// A relay with one webhook for `contacts` to `url`, retrying fast.
fn relay_with_hook(dir: &Path, url: &str, max_attempts: u32) -> RelayProcess {
    let file = dir.join("hooks.toml");
    std::fs::write(
        &file,
        format!(
            "[[webhook]]\nname = \"search\"\nurl = \"{url}\"\ncollections = [\"contacts\"]\n\
             secret = \"{SECRET}\"\nmax_attempts = {max_attempts}\nretry_base = \"10ms\"\n\
             retry_max = \"200ms\"\nbatch = 50\n"
        ),
    )
    .expect("hooks file");
    let file = file.to_str().expect("path").to_owned();
    spawn_relay_with(&dir.join("relay.db"), &["--webhooks", &file])
}

fn connect(replica: &Replica, url: &str) -> SyncHandle {
    replica.connect(
        url,
        ConnectOptions {
            collections: vec!["contacts".into()],
            ..ConnectOptions::default()
        },
    )
}

/// Every event delivered with a 2xx, in delivery order.
fn accepted(deliveries: &[Delivery]) -> Vec<Value> {
    deliveries
        .iter()
        .filter(|d| d.status < 300)
        .flat_map(Delivery::events)
        .collect()
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}

/// `GET` or `POST` on the relay's HTTP API.
async fn api(relay: &RelayProcess, method: &str, path: &str) -> (u16, Value) {
    let target = Target::parse(&relay.url).expect("url");
    let request = target
        .request(method, path)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (status, body) = fetch(&target, request, 1 << 20, T).await.expect("answer");
    (
        status.as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_in_order_and_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start("127.0.0.1:0").await;
    let relay = relay_with_hook(dir.path(), &receiver.url(), 5);
    let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
    let mut sync = connect(&replica, &relay.url);
    let mut made = Vec::new();
    for i in 0..30 {
        made.push(
            replica
                .create("contacts", &json!({"n": i}))
                .expect("create"),
        );
        if i % 7 == 0 {
            sync.wait_synced(T).await.expect("synced");
        }
    }
    replica
        .create("notes", &json!({"not": "hooked"}))
        .expect("note");
    sync.wait_synced(T).await.expect("synced");
    let want: BTreeSet<String> = made.iter().map(DocId::to_string).collect();
    receiver
        .wait_for(T, "every record", |d| ids(&accepted(d)) == want)
        .await;

    let deliveries = receiver.deliveries();
    let events = accepted(&deliveries);
    assert_eq!(events.len(), 30, "each change once: {events:?}");
    let cursors: Vec<u64> = events
        .iter()
        .map(|e| {
            e["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .expect("cursor")
        })
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "in order: {cursors:?}"
    );
    for d in &deliveries {
        assert!(d.signed_with(SECRET.as_bytes()), "signed: {}", d.signature);
        assert!(!d.signed_with(b"another secret entirely"), "and only so");
        assert_eq!(d.body["webhook"], "search");
        assert_eq!(d.body["collection"], "contacts");
        assert!(d.key.starts_with("search:contacts:"), "{}", d.key);
    }
    let keys: BTreeSet<&str> = events
        .iter()
        .map(|e| e["idempotency_key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys.len(), 30, "one idempotency key per event");
    assert!(events.iter().all(|e| e["event"] == "created"));

    // The cursor moves once the relay has the receiver's answer, just
    // after the receiver recorded the delivery: wait for it.
    let deadline = std::time::Instant::now() + T;
    let hooks = loop {
        let (status, hooks) = api(&relay, "GET", "/v1/webhooks").await;
        assert_eq!(status, 200);
        if hooks["webhooks"][0]["collections"][0]["behind"] == 0 {
            break hooks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still behind: {hooks}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(hooks["webhooks"][0]["name"], "search");
    assert_eq!(hooks["webhooks"][0]["dead_letters"], 0);
    sync.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_a_client_error_is_dead_lettered_then_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start("127.0.0.1:0").await;
    let relay = relay_with_hook(dir.path(), &receiver.url(), 5);
    let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
    let mut sync = connect(&replica, &relay.url);

    // 500 three times, then 200: delivered on the fourth try, same batch.
    receiver.answer_next(&[500, 500, 500]);
    let ada = replica
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    sync.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "the fourth try", |d| d.iter().any(|d| d.status == 200))
        .await;
    let tries = receiver.deliveries();
    assert_eq!(
        tries.iter().map(|d| d.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    assert!(tries
        .iter()
        .all(|d| d.raw == tries[0].raw && d.key == tries[0].key));
    assert_eq!(tries[3].events()[0]["id"], ada.to_string());

    // 400: no retry; the batch becomes a dead letter and the next change
    // is delivered after it.
    receiver.answer_next(&[400]);
    let bob = replica
        .create("contacts", &json!({"name": "Bob"}))
        .expect("create");
    sync.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "the refused try", |d| d.len() == 5)
        .await;
    let cy = replica
        .create("contacts", &json!({"name": "Cy"}))
        .expect("create");
    sync.wait_synced(T).await.expect("synced");
    receiver
        .wait_for(T, "the next change", |d| d.len() == 6)
        .await;
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries[4].status, 400);
    assert_eq!(deliveries[4].events()[0]["id"], bob.to_string());
    assert_eq!(
        deliveries[5].events()[0]["id"],
        cy.to_string(),
        "no retry of the 400"
    );

    let (_, letters) = api(&relay, "GET", "/v1/webhooks/search/dead-letters").await;
    let letters = letters["dead_letters"].as_array().expect("letters").clone();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["error"], "HTTP 400 Bad Request");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["events"], 1);
    let id = letters[0]["id"].as_i64().expect("id");

    // Replay: delivered now, and the letter is gone.
    let (status, replayed) = api(
        &relay,
        "POST",
        &format!("/v1/webhooks/search/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(
        (status, &replayed["delivered"]),
        (200, &json!(true)),
        "{replayed}"
    );
    let last = receiver.deliveries().pop().expect("the replay");
    assert_eq!(last.raw, deliveries[4].raw, "the same batch again");
    assert!(last.signed_with(SECRET.as_bytes()));
    let (_, letters) = api(&relay, "GET", "/v1/webhooks/search/dead-letters").await;
    assert_eq!(letters["dead_letters"], json!([]));
    let (status, missing) = api(
        &relay,
        "POST",
        &format!("/v1/webhooks/search/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    let (status, _) = api(&relay, "GET", "/v1/webhooks/nobody/dead-letters").await;
    assert_eq!(status, 404);
    sync.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_every_change_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nobody listens on until the receiver comes back on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let relay = relay_with_hook(dir.path(), &url, 100_000);
    let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
    let mut sync = connect(&replica, &relay.url);
    let contents: Vec<Value> = (0..1000).map(|i| json!({"n": i})).collect();
    let made = replica
        .create_many("contacts", &contents)
        .expect("create_many");
    sync.wait_synced(T).await.expect("synced");

    let receiver = Receiver::start(&format!("127.0.0.1:{port}")).await;
    let want: BTreeSet<String> = made.iter().map(DocId::to_string).collect();
    receiver
        .wait_for(Duration::from_secs(120), "all 1,000 changes", |d| {
            ids(&accepted(d)).len() == want.len()
        })
        .await;
    assert_eq!(ids(&accepted(&receiver.deliveries())), want);
    sync.close().await;
}

/// Starts the relay again on the same database and hook file.
fn restart(dir: &Path) -> RelayProcess {
    let file = dir.join("hooks.toml");
    let file = file.to_str().expect("path").to_owned();
    spawn_relay_with(&dir.join("relay.db"), &["--webhooks", &file])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_deliveries_loses_no_committed_change() {
    let trials: u64 = std::env::var("ACCORD_WEBHOOK_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    for trial in 0..trials {
        let dir = tempfile::tempdir().expect("tempdir");
        let receiver = Receiver::start("127.0.0.1:0").await;
        // Slow deliveries down with failures, so the kill lands in them.
        receiver.answer_next(&[503; 5]);
        let mut relay = relay_with_hook(dir.path(), &receiver.url(), 100_000);
        let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
        let mut sync = connect(&replica, &relay.url);
        let mut made = Vec::new();
        let kill_at = 20 + (trial * 37) % 60;
        for i in 0..120u64 {
            made.push(
                replica
                    .create("contacts", &json!({"n": i}))
                    .expect("create"),
            );
            if i % 10 == 9 {
                sync.wait_synced(T).await.expect("synced");
            }
            if i == kill_at {
                sync.wait_synced(T).await.expect("synced before the kill");
                receiver
                    .wait_for(T, "a delivery before the kill", |d| !d.is_empty())
                    .await;
                relay.child.kill().expect("SIGKILL");
                relay.child.wait().expect("reap");
                sync.close().await;
                relay = restart(dir.path());
                sync = connect(&replica, &relay.url);
            }
        }
        sync.wait_synced(T).await.expect("synced after the restart");
        let want: BTreeSet<String> = made.iter().map(DocId::to_string).collect();
        receiver
            .wait_for(Duration::from_secs(60), "every committed change", |d| {
                ids(&accepted(d)) == want
            })
            .await;
        // At least once; exactly once after deduplicating by key, and one
        // key never stands for two contents.
        let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
        for event in accepted(&receiver.deliveries()) {
            let key = event["idempotency_key"].as_str().expect("key").to_owned();
            let content = json!([event["id"], event["value"]]);
            if let Some(before) = by_key.insert(key.clone(), content.clone()) {
                assert_eq!(before, content, "trial {trial}: key {key} reused");
            }
        }
        assert_eq!(
            by_key.len(),
            want.len(),
            "trial {trial}: one key per record"
        );
        sync.close().await;
    }
}
