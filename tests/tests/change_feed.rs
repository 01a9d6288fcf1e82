//! The relay's change feed over real HTTP (`GET
//! /v1/collections/{c}/changes`), fed by replicas syncing to a real relay:
//! resuming from every cursor of a run gives exactly the rest of the run,
//! cursors survive a restart, long polls wake on a synced change, the
//! event stream resumes from `Last-Event-ID`, and rights hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accord_engine::{ConnectOptions, Replica};
use accord_relay::auth::{Right, Tokens};
use accord_relay::Config;
use accord_tests::http::{call, Events};
use accord_tests::TestRelay;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"the secret of the change feed test";

fn token(rights: &[(&str, Right)]) -> String {
    let rights: BTreeMap<String, Right> =
        rights.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
    Tokens::new(SECRET)
        .expect("secret")
        .mint(rights, Duration::from_secs(3600))
}

fn config(db: std::path::PathBuf) -> Config {
    Config {
        db,
        access: Arc::new(Tokens::new(SECRET).expect("secret")),
        ..Config::default()
    }
}

async fn page(relay: &TestRelay, token: &str, query: &str) -> Value {
    let path = format!("/v1/collections/contacts/changes?{query}");
    let answer = call(relay.addr, "GET", &path, Some(token), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// Events without their `event`, which depends on the cursor read from.
fn same(changes: &Value) -> Vec<Value> {
    changes
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.as_object_mut().expect("event").remove("event");
            c
        })
        .collect()
}

fn cursors(page: &Value) -> Vec<String> {
    page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["cursor"].as_str().expect("cursor").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cursor_resumes_with_exactly_the_rest_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("relay.db");
    let relay = TestRelay::start_with(config(db.clone()))
        .await
        .expect("relay");
    let admin = token(&[("contacts", Right::ReadWrite), ("notes", Right::ReadWrite)]);
    let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
    let mut sync = replica.connect(
        &relay.url,
        ConnectOptions {
            collections: vec!["contacts".into(), "notes".into()],
            token: admin.clone(),
            ..ConnectOptions::default()
        },
    );
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            replica
                .create("contacts", &json!({"n": i}))
                .expect("create"),
        );
        replica.create("notes", &json!({"n": i})).expect("note");
    }
    sync.wait_synced(T).await.expect("synced");
    // Later changes: the relay commits them after the creations.
    replica.put(&ids[3], "n", &json!(100), None).expect("put");
    sync.wait_synced(T).await.expect("synced");
    replica.delete(&ids[5]).expect("delete");
    sync.wait_synced(T).await.expect("synced");

    let full = page(&relay, &admin, "since=0&limit=1000").await;
    let all = full["changes"].as_array().expect("changes").clone();
    assert_eq!(all.len(), 12, "each record once: {full}");
    let numbers: Vec<u64> = cursors(&full)
        .iter()
        .map(|c| c.parse().expect("n"))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "commit order: {numbers:?}"
    );
    assert_eq!(
        all[10]["id"],
        ids[3].to_string(),
        "the changed one moved late"
    );
    assert_eq!(all[10]["value"]["n"], 100);
    assert_eq!(all[11]["id"], ids[5].to_string());
    assert_eq!(all[11]["event"], "deleted");
    assert_eq!(
        all[11]["value"]["n"], 5,
        "a deletion carries the last content"
    );
    assert_eq!(full["next"], cursors(&full)[11].as_str());

    // Resuming from every cursor gives exactly the rest, also in pages
    // (the event says what happened since the cursor: a record created
    // before it is `changed`).
    for (i, cursor) in cursors(&full).iter().enumerate() {
        let rest = page(&relay, &admin, &format!("since={cursor}&limit=1000")).await;
        assert_eq!(same(&rest["changes"]), same(&json!(all[i + 1..])));
    }
    let from_seven = page(&relay, &admin, &format!("since={}", cursors(&full)[7])).await;
    let late = from_seven["changes"].as_array().expect("changes");
    assert_eq!(
        late[late.len() - 2]["event"],
        "changed",
        "created before the cursor"
    );
    let mut paged = Vec::new();
    let mut since = "0".to_owned();
    loop {
        let p = page(&relay, &admin, &format!("since={since}&limit=5")).await;
        let changes = p["changes"].as_array().expect("changes").clone();
        if changes.is_empty() {
            break;
        }
        paged.extend(changes);
        since = p["next"].as_str().expect("next").to_owned();
    }
    assert_eq!(same(&json!(paged)), same(&json!(all)));

    // A cursor from before a restart stays valid.
    let before = cursors(&full)[7].clone();
    sync.close().await;
    relay.stop().await.expect("stop");
    let relay = TestRelay::start_with(config(db)).await.expect("restarted");
    let rest = page(&relay, &admin, &format!("since={before}")).await;
    assert_eq!(same(&rest["changes"]), same(&json!(all[8..])));

    // Rights: no token, another collection, a bad cursor.
    let notes_only = token(&[("notes", Right::Read)]);
    let answer = call(
        relay.addr,
        "GET",
        "/v1/collections/contacts/changes",
        None,
        None,
    )
    .await;
    assert_eq!((answer.status, answer.code()), (401, "unauthorized"));
    let answer = call(
        relay.addr,
        "GET",
        "/v1/collections/contacts/changes",
        Some(&notes_only),
        None,
    )
    .await;
    assert_eq!((answer.status, answer.code()), (403, "forbidden"));
    for bad in ["since=x", "since=-1", "limit=0", "wait=999"] {
        let path = format!("/v1/collections/contacts/changes?{bad}");
        let answer = call(relay.addr, "GET", &path, Some(&admin), None).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid_parameter"),
            "{bad}"
        );
    }
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_streams_wake_on_synced_changes_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start_with(config(dir.path().join("relay.db")))
        .await
        .expect("relay");
    let admin = token(&[("contacts", Right::ReadWrite)]);
    let replica = Replica::open(dir.path().join("phone.db")).expect("replica");
    let mut sync = replica.connect(
        &relay.url,
        ConnectOptions {
            collections: vec!["contacts".into()],
            token: admin.clone(),
            ..ConnectOptions::default()
        },
    );
    sync.wait_connected(T).await.expect("connected");

    // A long poll with nothing new answers empty after its wait...
    let started = Instant::now();
    let empty = page(&relay, &admin, "since=0&wait=1").await;
    assert_eq!(empty["changes"], json!([]));
    assert_eq!(empty["next"], "0");
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");

    // ...and one waiting when a replica's change arrives answers with it.
    let poll = {
        let admin = admin.clone();
        let addr = relay.addr;
        tokio::spawn(async move {
            let path = "/v1/collections/contacts/changes?since=0&wait=30";
            call(addr, "GET", path, Some(&admin), None).await
        })
    };
    // Whether the poll reads before or after the change lands, it
    // answers with the record, without waiting out its 30 s.
    let ada = replica
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    sync.wait_synced(T).await.expect("synced");
    let answer = tokio::time::timeout(T, poll)
        .await
        .expect("answered")
        .expect("join");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["changes"][0]["id"], ada.to_string());

    // The event stream: from the start, then live, then resumed.
    let stream = [("accept", "text/event-stream")];
    let path = "/v1/collections/contacts/changes?since=0";
    let mut events = Events::open_with(relay.addr, path, Some(&admin), &stream).await;
    assert_eq!(events.status, 200);
    let first = events.next(T).await.expect("the first event");
    assert_eq!(
        (first.name.as_str(), &first.data["id"]),
        ("change", &json!(ada.to_string()))
    );
    let grace = replica
        .create("contacts", &json!({"name": "Grace"}))
        .expect("create");
    sync.wait_synced(T).await.expect("synced");
    let second = events.next(T).await.expect("a live event");
    assert_eq!(second.data["id"], grace.to_string());
    assert_eq!(second.data["event"], "created");
    drop(events);
    let after_first = first.data["cursor"].as_str().expect("cursor").to_owned();
    let resume = [
        ("accept", "text/event-stream"),
        ("last-event-id", after_first.as_str()),
    ];
    let mut resumed = Events::open_with(relay.addr, path, Some(&admin), &resume).await;
    let again = resumed.next(T).await.expect("the resumed stream");
    assert_eq!(again.data, second.data, "Last-Event-ID wins over since=0");
    sync.close().await;
    relay.shutdown.cancel();
    assert!(
        resumed.ends_within(T).await,
        "a stream ends when the relay stops"
    );
    relay.task.await.expect("join").expect("stopped");
}
