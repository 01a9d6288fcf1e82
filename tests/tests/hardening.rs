//! Relay hardening against real sockets: tokens, rights, limits, flooding,
//! and the operator endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use accord_engine::sync::{ErrorCode, Frame, Limits};
use accord_engine::{ConnectOptions, ConnectionState, Replica, SyncError};
use accord_relay::auth::{Claims, Right, Tokens};
use accord_relay::Config;
use accord_tests::wire::{empty_sync, hello, next_error, next_frame, raw, send, subscribe};
use accord_tests::{wait_until, TestRelay};
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"a test secret that is long enough";

fn tokens() -> Tokens {
    Tokens::new(SECRET).expect("secret")
}

fn token(rights: &[(&str, Right)]) -> String {
    let rights: BTreeMap<String, Right> =
        rights.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
    tokens().mint(rights, Duration::from_secs(3600))
}

async fn secured(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> TestRelay {
    let mut config = Config {
        db: dir.join("relay.db"),
        access: Arc::new(tokens()),
        ..Config::default()
    };
    tweak(&mut config);
    TestRelay::start_with(config).await.expect("relay")
}

fn opts(token: String, collections: &[&str]) -> ConnectOptions {
    ConnectOptions {
        token,
        collections: collections.iter().map(|c| (*c).to_owned()).collect(),
        ..ConnectOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |_| {}).await;
    let other = Tokens::new(b"someone else's secret, also long").expect("secret");
    let expired = tokens().sign(&Claims {
        exp: 1,
        c: [("c".to_owned(), Right::Read)].into(),
    });
    let cases = [
        ("", "token is required"),
        ("not-a-token", "malformed token"),
        ("acc1.e30.AAAA", "bad token signature"),
        (
            other
                .mint(
                    [("c".to_owned(), Right::Read)].into(),
                    Duration::from_secs(60),
                )
                .as_str()
                .to_owned()
                .leak() as &str,
            "bad token signature",
        ),
        (expired.as_str(), "token expired"),
    ];
    for (token, reason) in cases {
        let mut ws = raw(&relay.url).await;
        match hello(&mut ws, "raw", token).await {
            Some(Frame::Error { code, message, .. }) => {
                assert_eq!(code, ErrorCode::UNAUTHORIZED, "{token}: {message}");
                assert!(message.contains(reason), "{token}: {message}");
            }
            other => panic!("{token}: expected a refusal, got {other:?}"),
        }
        assert!(
            next_frame(&mut ws).await.is_none(),
            "closed after the refusal"
        );
    }
    // Through the client driver: a clear reason, and no retrying.
    let replica = Replica::open(dir.path().join("r.db")).expect("replica");
    let mut handle = replica.connect(&relay.url, opts(expired, &["c"]));
    match handle.wait_synced(T).await {
        Err(SyncError::Refused { url, code, message }) => {
            assert_eq!(code, ErrorCode::UNAUTHORIZED);
            assert!(message.contains("expired"), "{message}");
            assert_eq!(url, relay.url, "the refusal names its relay");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(handle.status().state, ConnectionState::Stopped);
    assert!(relay.relay.metrics().auth_failures.get() >= 5);
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_decide_what_a_connection_sees_and_may_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |_| {}).await;
    // A writer fills two collections.
    let writer = Replica::open(dir.path().join("w.db")).expect("writer");
    let shared = writer.create("shared", &json!({"v": 1})).expect("create");
    let secret = writer
        .create("secret", &json!({"pin": 1234}))
        .expect("create");
    let rw = token(&[("shared", Right::ReadWrite), ("secret", Right::ReadWrite)]);
    let mut hw = writer.connect(&relay.url, opts(rw, &["shared", "secret"]));
    hw.wait_synced(T).await.expect("writer synced");

    // A reader with read-only rights on `shared` only.
    let reader = Replica::open(dir.path().join("r.db")).expect("reader");
    let ro = token(&[("shared", Right::Read)]);
    let mut hr = reader.connect(&relay.url, opts(ro.clone(), &["shared"]));
    hr.wait_agreed(T)
        .await
        .expect("reader got the shared collection");
    assert_eq!(reader.get(&shared).expect("shared").value, json!({"v": 1}));
    assert!(
        reader.get(&secret).is_err(),
        "nothing from a collection it may not read"
    );

    // Its own changes stay local: never stored, never forwarded; it keeps
    // pulling, and says what it could not push.
    reader
        .put(&shared, "v", &json!(666), None)
        .expect("local write");
    let traffic = relay
        .relay
        .metrics()
        .frames_in
        .get_or_create(&accord_relay::metrics::KindLabel {
            kind: "sync".into(),
        })
        .get();
    hr.wait_synced(T)
        .await
        .expect("a read-only device still syncs");
    assert_eq!(
        hr.status().unpushed,
        vec![shared],
        "the local change is reported"
    );
    assert!(hr.status().read_only.contains("shared"));
    assert_eq!(
        relay
            .relay
            .replica()
            .get(&shared)
            .expect("relay copy")
            .value,
        json!({"v": 1})
    );
    writer
        .put(&shared, "w", &json!(true), None)
        .expect("writer keeps writing");
    hw.wait_synced(T).await.expect("writer synced");
    assert_eq!(
        writer.get(&shared).expect("writer copy").value["v"],
        json!(1)
    );
    wait_until(T, "the reader to pull the writer's change", || async {
        reader
            .get(&shared)
            .map(|r| r.value["w"] == json!(true))
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        reader.get(&shared).expect("merged").value["v"],
        json!(666),
        "its own change is kept"
    );
    hr.wait_agreed(T)
        .await
        .expect("agreed with what the relay holds");
    let quiet = relay
        .relay
        .metrics()
        .frames_in
        .get_or_create(&accord_relay::metrics::KindLabel {
            kind: "sync".into(),
        })
        .get();
    hr.wait_synced(T).await.expect("synced again");
    let after = relay
        .relay
        .metrics()
        .frames_in
        .get_or_create(&accord_relay::metrics::KindLabel {
            kind: "sync".into(),
        })
        .get();
    assert!(quiet > traffic, "it did sync");
    assert_eq!(
        after, quiet,
        "no frames traded for ever over the unpushable change"
    );

    // Subscribing to a collection it may not read is refused, and so is
    // fetching a document of that collection by its id.
    let mut ws = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut ws, "raw", &ro).await,
        Some(Frame::Welcome { .. })
    ));
    subscribe(&mut ws, &["secret"]).await;
    match next_frame(&mut ws).await {
        Some(Frame::SubscribeRefused {
            collection,
            code,
            message,
        }) => {
            assert_eq!(
                (collection.as_str(), code),
                ("secret", ErrorCode::FORBIDDEN),
                "{message}"
            );
        }
        other => panic!("expected the subscription refused, got {other:?}"),
    }
    subscribe(&mut ws, &["shared"]).await;
    let guess = Frame::Sync {
        doc: secret,
        collection: "shared".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send(&mut ws, &guess).await;
    let (code, _) = next_error(&mut ws).await;
    assert_eq!(code, ErrorCode::WRONG_COLLECTION);
    let guess = Frame::Sync {
        doc: secret,
        collection: "secret".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send(&mut ws, &guess).await;
    let (code, _) = next_error(&mut ws).await;
    assert_eq!(code, ErrorCode::NOT_SUBSCRIBED);
    relay.stop().await.expect("stop");
}

/// A document's collection is decided by the write that creates it. A
/// read-only client that knows the id of a document another replica has
/// not pushed yet names it under its own collection first: that must not
/// make the document exist there, capture the writer's push, or leak its
/// content (ids travel in `automerge:` URLs, so knowing one is no defence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_a_document_under_another_collection_never_captures_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |_| {}).await;
    let y = Replica::open(dir.path().join("y.db")).expect("y");
    let secret = y
        .create("a", &json!({"secret": "only for collection a"}))
        .expect("create offline");

    // X, read-only on `b`, gets there first with a heads-only message.
    let mut x = raw(&relay.url).await;
    let ro_b = token(&[("b", Right::Read)]);
    assert!(matches!(
        hello(&mut x, "x", &ro_b).await,
        Some(Frame::Welcome { .. })
    ));
    subscribe(&mut x, &["b"]).await;
    let claim = Frame::Sync {
        doc: secret,
        collection: "b".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send(&mut x, &claim).await;
    loop {
        match next_frame(&mut x).await {
            Some(Frame::Sync { doc, .. }) if doc == secret => break, // the relay's empty answer
            Some(_) => {}
            None => panic!("x was disconnected"),
        }
    }
    assert!(
        relay.relay.replica().meta(&secret).is_err(),
        "a read-only message created nothing"
    );

    // Y pushes the document under `a`: it syncs, and lands in `a`.
    let rw_a = token(&[("a", Right::ReadWrite)]);
    let mut hy = y.connect(&relay.url, opts(rw_a, &["a"]));
    hy.wait_synced(T).await.expect("y's own sync completes");
    let stored = relay.relay.replica().meta(&secret).expect("stored");
    assert_eq!(stored.collection, "a");

    // X asks again under `b`: refused, and no content ever reached it.
    send(&mut x, &claim).await;
    let mut refused = false;
    while !refused {
        match next_frame(&mut x).await {
            Some(Frame::Sync { doc, message, .. }) => {
                let m = accord_engine::automerge::sync::Message::decode(&message)
                    .expect("valid message");
                assert!(
                    doc != secret || m.changes.is_empty(),
                    "content of a collection x may not read reached it"
                );
            }
            Some(Frame::Error { code, doc, .. }) => {
                assert_eq!(code, ErrorCode::WRONG_COLLECTION);
                assert_eq!(doc, Some(secret));
                refused = true;
            }
            Some(_) => {}
            None => panic!("x was disconnected"),
        }
    }
    assert_eq!(
        relay
            .relay
            .replica()
            .get(&secret)
            .expect("relay copy")
            .value,
        json!({"secret": "only for collection a"})
    );
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_cut_off_while_another_keeps_syncing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |c| {
        c.limits = Limits {
            rate_per_sec: 200.0,
            burst: 400.0,
            ..Limits::default()
        };
    })
    .await;
    let rw = token(&[("c", Right::ReadWrite)]);
    let good = Replica::open(dir.path().join("good.db")).expect("good");
    let id = good.create("c", &json!({"n": 0})).expect("create");
    let mut handle = good.connect(&relay.url, opts(rw.clone(), &["c"]));
    handle.wait_synced(T).await.expect("synced");

    let mut flood = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut flood, "raw", &rw).await,
        Some(Frame::Welcome { .. })
    ));
    let spam = Frame::Subscribe {
        collections: vec!["c".into()],
    }
    .encode();
    let flooder = tokio::spawn(async move {
        for _ in 0..5_000 {
            if flood
                .send(Message::Binary(spam.clone().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        next_error(&mut flood).await
    });
    for i in 1..=20 {
        good.put(&id, "n", &json!(i), None).expect("put");
    }
    handle
        .wait_synced(T)
        .await
        .expect("the good connection keeps syncing");
    let (code, message) = flooder.await.expect("flooder");
    assert_eq!(code, ErrorCode::RATE_LIMITED, "{message}");
    assert_eq!(
        relay.relay.replica().get(&id).expect("relay").value,
        json!({"n": 20})
    );
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_document_and_time_limits_close_with_their_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |c| {
        c.max_connections = 2;
        c.limits = Limits {
            max_docs: 2,
            ..Limits::default()
        };
        c.handshake_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(500);
        c.ping_interval = Duration::from_secs(60);
    })
    .await;
    let rw = token(&[("c", Right::ReadWrite)]);
    // Handshake timeout: say nothing.
    let mut silent = raw(&relay.url).await;
    assert_eq!(next_error(&mut silent).await.0, ErrorCode::TIMEOUT);
    // Idle timeout: welcomed, then silent.
    let mut idle = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut idle, "raw", &rw).await,
        Some(Frame::Welcome { .. })
    ));
    assert_eq!(next_error(&mut idle).await.0, ErrorCode::TIMEOUT);
    // Documents per connection.
    let mut ws = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut ws, "raw", &rw).await,
        Some(Frame::Welcome { .. })
    ));
    subscribe(&mut ws, &["c"]).await;
    for _ in 0..3 {
        let doc = accord_engine::DocId::random();
        send(
            &mut ws,
            &Frame::Sync {
                doc,
                collection: "c".into(),
                message: empty_sync(),
                want_reply: false,
            },
        )
        .await;
    }
    assert_eq!(next_error(&mut ws).await.0, ErrorCode::TOO_MANY_DOCUMENTS);
    drop(ws);
    // Connection limit: two held open, the third refused.
    let mut a = raw(&relay.url).await;
    let mut b = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut a, "raw", &rw).await,
        Some(Frame::Welcome { .. })
    ));
    assert!(matches!(
        hello(&mut b, "raw", &rw).await,
        Some(Frame::Welcome { .. })
    ));
    let mut c = raw(&relay.url).await;
    assert_eq!(next_error(&mut c).await.0, ErrorCode::TOO_MANY_CONNECTIONS);
    relay.stop().await.expect("stop");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_report_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = http.local_addr().expect("addr");
    tokio::spawn(accord_relay::metrics::serve_http(
        http,
        relay.relay.metrics(),
        relay.shutdown.clone(),
    ));

    let replica = Replica::open(dir.path().join("r.db")).expect("replica");
    replica.create("c", &json!({"x": 1})).expect("create");
    let mut handle = replica.connect(&relay.url, opts(String::new(), &["c"]));
    handle.wait_synced(T).await.expect("synced");
    let health = http_get(addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains(r#""status":"ok""#) && health.contains(r#""connections":1"#),
        "{health}"
    );
    let metrics = http_get(addr, "/metrics").await;
    for name in [
        "accord_relay_connections 1",
        "accord_relay_live_documents",
        "accord_relay_frames_received_total{kind=\"sync\"}",
        "accord_relay_frames_sent_total{kind=\"welcome\"} 1",
        "accord_relay_received_bytes_total",
        "accord_relay_sync_errors_total",
        "accord_relay_auth_failures_total",
        "accord_relay_evictions_total",
        "accord_relay_store_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    handle.close().await;
    wait_until(T, "connection gauge back to 0", || async {
        relay.relay.metrics().connections.get() == 0
    })
    .await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_keep_up_is_disconnected_not_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |c| c.outbound_queue = 4).await;
    let rw = token(&[("c", Right::ReadWrite)]);
    let writer = Replica::open(dir.path().join("w.db")).expect("writer");
    writer.create("c", &json!({})).expect("create");
    let mut hw = writer.connect(&relay.url, opts(rw.clone(), &["c"]));
    hw.wait_synced(T).await.expect("synced");
    let mut slow = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut slow, "raw", &rw).await,
        Some(Frame::Welcome { .. })
    ));
    let (conn, _) = relay
        .relay
        .peers()
        .connections()
        .into_iter()
        .find(|(_, peer)| peer == "raw")
        .expect("the raw connection is registered");
    // Fan-out faster than the connection drains its 4-frame queue, as
    // document actors do for a peer on a slow link.
    let frame = Frame::Delete {
        doc: accord_engine::DocId::random(),
        collection: "c".into(),
    };
    let mut queued = 0;
    while relay.relay.peers().send(conn, &frame) {
        queued += 1;
        assert!(queued < 1_000_000, "the queue never filled");
    }
    let (code, message) = next_error(&mut slow).await;
    assert_eq!(code, ErrorCode::TOO_SLOW, "{message}");
    assert!(
        next_frame(&mut slow).await.is_none(),
        "closed after too_slow"
    );
    hw.wait_synced(T)
        .await
        .expect("the other connection is unaffected");
    let metrics = relay.relay.metrics().encode();
    assert!(
        metrics.contains("accord_relay_refusals_total{kind=\"too_slow\"} 1"),
        "{metrics}"
    );
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_documents_leave_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        db: dir.path().join("relay.db"),
        ..Config::default()
    };
    config.doc_idle = Duration::from_millis(200);
    let relay = TestRelay::start_with(config).await.expect("relay");
    let replica = Replica::open(dir.path().join("r.db")).expect("replica");
    for i in 0..30 {
        replica.create("c", &json!({"i": i})).expect("create");
    }
    let mut handle = replica.connect(&relay.url, opts(String::new(), &["c"]));
    handle.wait_synced(T).await.expect("synced");
    assert!(
        relay.relay.live_documents() > 0,
        "documents were live while syncing"
    );
    wait_until(T, "idle document actors to stop", || async {
        relay.relay.live_documents() == 0
    })
    .await;
    assert!(relay.relay.metrics().evictions.get() >= 30);
    // Evicted documents still sync: a change brings its actor back.
    let first = replica.list("c").expect("list")[0].id;
    replica
        .put(&first, "again", &json!(true), None)
        .expect("put");
    handle.wait_synced(T).await.expect("synced after eviction");
    assert_eq!(
        relay.relay.replica().get(&first).expect("relay").value["again"],
        json!(true)
    );
    relay.stop().await.expect("stop");
}

/// Distinct sync-state keys per token subject in the relay's file.
fn state_peers_per_subject(db: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).expect("open relay file");
    let mut stmt = conn
        .prepare(
            "SELECT substr(peer, 1, instr(peer, '/')), count(DISTINCT peer) FROM sync_states
             WHERE instr(peer, '/') > 0 GROUP BY 1",
        )
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Sync states are bound to the token: a read-only token's holder that
/// reuses another device's peer id reaches only its own states, and one
/// token makes the relay keep the states of a bounded number of peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_states_are_bound_to_the_token_and_bounded_per_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |c| c.limits.max_peers_per_subject = 4).await;
    let db = dir.path().join("relay.db");
    let owner = Replica::open(dir.path().join("owner.db")).expect("owner");
    let doc = owner.create("c", &json!({"n": 1})).expect("create");
    let rw = token(&[("c", Right::ReadWrite)]);
    let mut ho = owner.connect(&relay.url, opts(rw, &["c"]));
    ho.wait_agreed(T).await.expect("owner synced");
    ho.close().await;
    let victim_rows = || -> Vec<(String, Vec<u8>)> {
        let conn = rusqlite::Connection::open(&db).expect("open");
        let mut stmt = conn
            .prepare("SELECT peer, state FROM sync_states ORDER BY peer")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let before = victim_rows();
    assert!(!before.is_empty(), "the owner's states are stored");

    // Another token's holder connects as ten devices, one of them under
    // the owner's own peer id, and acknowledges the document each time so
    // the relay stores a state for it.
    let ro = token(&[("c", Right::Read)]);
    let heads = relay.relay.replica().heads(&doc).expect("heads");
    let mut peers: Vec<String> = (0..9).map(|i| format!("device-{i}")).collect();
    peers.push(owner.peer_id().to_string());
    for peer in &peers {
        let mut ws = raw(&relay.url).await;
        assert!(matches!(
            hello(&mut ws, peer, &ro).await,
            Some(Frame::Welcome { .. })
        ));
        subscribe(&mut ws, &["c"]).await;
        let ack = accord_engine::automerge::sync::Message {
            heads: heads.to_vec(),
            need: Vec::new(),
            have: Vec::new(),
            changes: accord_engine::automerge::sync::ChunkList::empty(),
            flags: None,
            version: accord_engine::automerge::sync::MessageVersion::V1,
        };
        let sync = Frame::Sync {
            doc,
            collection: "c".into(),
            message: ack.encode(),
            want_reply: true,
        };
        send(&mut ws, &sync).await;
        loop {
            match next_frame(&mut ws).await {
                Some(Frame::Sync { doc: d, .. }) if d == doc => break,
                Some(_) => {}
                None => panic!("{peer} was disconnected"),
            }
        }
    }
    wait_until(T, "the last device's state to be stored", || async {
        state_peers_per_subject(&db)
            .iter()
            .map(|(_, n)| n)
            .sum::<i64>()
            >= 5
    })
    .await;
    for (subject, peers) in state_peers_per_subject(&db) {
        assert!(peers <= 5, "subject {subject} keeps {peers} peers' states");
    }
    let after = victim_rows();
    for row in &before {
        assert!(
            after.contains(row),
            "the owner's state {} is untouched",
            row.0
        );
    }
    relay.stop().await.expect("stop");
}

/// A token that does not cover every collection configured: the relay
/// refuses those subscriptions one by one, the replica syncs the others and
/// reports what it skipped and why, instead of failing altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_a_token_does_not_cover_are_skipped_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path(), |_| {}).await;
    let phone = Replica::open(dir.path().join("phone.db")).expect("phone");
    let ada = phone
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    let old = phone
        .create("archive", &json!({"old": true}))
        .expect("create");
    let contacts_only = token(&[("contacts", Right::ReadWrite)]);
    let mut sync = phone.connect(&relay.url, opts(contacts_only, &["contacts", "archive"]));
    sync.wait_synced(T)
        .await
        .expect("the covered collection syncs");
    let status = sync.status();
    let reason = status
        .skipped
        .get("archive")
        .expect("archive is reported as skipped");
    assert!(reason.contains("no right to read"), "{reason}");
    assert!(status.refused.is_none() && !status.skipped.contains_key("contacts"));
    assert!(relay.relay.replica().get(&ada).is_ok());
    assert!(
        relay.relay.replica().meta(&old).is_err(),
        "nothing of archive reached the relay"
    );
    relay.stop().await.expect("stop");
}
