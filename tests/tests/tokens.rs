//! Tokens over the life of a connection, against a real relay on loopback:
//! a connection ends when its token expires even if it says nothing, a
//! client hands over a fresh token without reconnecting (`set_token`,
//! `Reauth`), a `Reauth` takes away what the new token does not grant, and
//! a bad one closes the connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use accord_engine::sync::{ErrorCode, Frame, SyncDocs};
use accord_engine::{Collection, ConnectOptions, ConnectionState, Replica, SyncError};
use accord_relay::auth::{unix_now, Claims, Right, Tokens};
use accord_relay::Config;
use accord_tests::wire::{empty_sync, hello, next_error, next_frame, raw, send, subscribed};
use accord_tests::{wait_until, TestRelay};
use serde_json::json;

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"the secret of the tokens test, long";

fn tokens() -> Tokens {
    Tokens::new(SECRET).expect("secret")
}

/// A token granting `rights` until `exp` (Unix seconds).
fn token_until(exp: u64, rights: &[(&str, Right)]) -> String {
    let c: BTreeMap<String, Right> = rights.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
    tokens().sign(&Claims { exp, c })
}

/// A token that expires in a few seconds, and its expiry (Unix seconds).
fn short_token(rights: &[(&str, Right)]) -> (String, u64) {
    let exp = unix_now() + 3;
    (token_until(exp, rights), exp)
}

fn long_token(rights: &[(&str, Right)]) -> String {
    token_until(unix_now() + 3600, rights)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn secured(dir: &std::path::Path) -> TestRelay {
    let config = Config {
        db: dir.join("relay.db"),
        access: Arc::new(tokens()),
        ..Config::default()
    };
    TestRelay::start_with(config).await.expect("relay")
}

fn opts(token: String) -> ConnectOptions {
    ConnectOptions {
        token,
        collections: vec!["notes".into()],
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ConnectOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_with_token_expired_within_a_second_of_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path()).await;
    let (token, exp) = short_token(&[("notes", Right::ReadWrite)]);
    let mut ws = raw(&relay.url).await;
    match hello(&mut ws, "raw", &token).await {
        Some(Frame::Welcome { expires_at_ms, .. }) => {
            assert_eq!(expires_at_ms, Some(exp * 1000), "Welcome says when");
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    subscribed(&mut ws, &["notes"]).await;
    // From here on the peer sends nothing; pings are 20 s apart and the
    // idle timeout is 60 s, so only the expiry can close it.
    let (code, message) = next_error(&mut ws).await;
    let late_ms = now_ms() as i64 - (exp * 1000) as i64;
    assert_eq!(code, ErrorCode::TOKEN_EXPIRED, "{message}");
    assert!(message.contains("expired"), "{message}");
    assert!(
        (0..1_500).contains(&late_ms),
        "closed {late_ms} ms after the expiry"
    );
    assert!(next_frame(&mut ws).await.is_none(), "then closed");
    let metrics = relay.relay.metrics().encode();
    assert!(
        metrics.contains("accord_relay_refusals_total{kind=\"token_expired\"} 1"),
        "{metrics}"
    );
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_fresh_token_stays_connected_past_the_first_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path()).await;
    let rw = [("notes", Right::ReadWrite)];
    let writer = Replica::open(dir.path().join("writer.db")).expect("writer");
    let mut hw = writer.connect(&relay.url, opts(long_token(&rw)));
    hw.wait_connected(T).await.expect("writer connected");

    let phone = Replica::open(dir.path().join("phone.db")).expect("phone");
    let (short, exp) = short_token(&rw);
    let mut hp = phone.connect(&relay.url, opts(short));
    hp.wait_connected(T).await.expect("phone connected");
    let first = UNIX_EPOCH + Duration::from_secs(exp);
    assert_eq!(hp.status().token_expires, Some(first));
    hp.set_token(long_token(&rw)).await.expect("set_token");
    let mut status = hp.watch();
    tokio::time::timeout(T, status.wait_for(|s| s.token_expires > Some(first)))
        .await
        .expect("the relay accepted the fresh token in time")
        .expect("driver running");

    wait_until(
        T,
        "the first token to be a second past its expiry",
        || async { SystemTime::now() > first + Duration::from_secs(1) },
    )
    .await;
    // Both directions still sync on the same connection.
    let from_writer = writer
        .create("notes", &json!({"by": "writer"}))
        .expect("create");
    wait_until(T, "the writer's note to reach the phone", || async {
        phone.get(&from_writer).is_ok()
    })
    .await;
    let from_phone = phone
        .create("notes", &json!({"by": "phone"}))
        .expect("create");
    hp.wait_synced(T)
        .await
        .expect("the phone's note reached the relay");
    assert_eq!(
        relay
            .relay
            .replica()
            .get(&from_phone)
            .expect("at the relay")
            .value,
        json!({"by": "phone"})
    );
    let status = hp.status();
    assert_eq!(status.state, ConnectionState::Connected);
    assert_eq!(status.connects, 1, "never reconnected: {status:?}");
    hp.close().await;
    hw.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_stops_and_resumes_once_given_a_fresh_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path()).await;
    let rw = [("notes", Right::ReadWrite)];
    let phone = Replica::open(dir.path().join("phone.db")).expect("phone");
    let (short, _) = short_token(&rw);
    let mut hp = phone.connect(&relay.url, opts(short));
    hp.wait_connected(T).await.expect("connected");
    let mut status = hp.watch();
    let stopped = tokio::time::timeout(T, status.wait_for(|s| s.state == ConnectionState::Stopped))
        .await
        .expect("stopped after the expiry")
        .expect("driver running")
        .clone();
    match &stopped.last_error {
        Some(SyncError::Refused { code, message, .. }) => {
            assert_eq!(*code, ErrorCode::TOKEN_EXPIRED, "{message}");
            assert!(message.contains("expired"), "{message}");
        }
        other => panic!("expected the expiry as the last error, got {other:?}"),
    }
    assert_eq!(stopped.connects, 1, "no retry with the stale token");
    // A note written while stopped goes out with the fresh token.
    let note = phone
        .create("notes", &json!({"offline": true}))
        .expect("create");
    hp.set_token(long_token(&rw)).await.expect("set_token");
    hp.wait_synced(T)
        .await
        .expect("synced with the fresh token");
    assert!(relay.relay.replica().get(&note).is_ok());
    assert_eq!(hp.status().connects, 2);
    assert_eq!(hp.status().state, ConnectionState::Connected);
    hp.close().await;
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauth_without_a_subscribed_collection_drops_that_subscription() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path()).await;
    let both = long_token(&[("notes", Right::ReadWrite), ("tasks", Right::ReadWrite)]);
    let mut ws = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut ws, "raw", &both).await,
        Some(Frame::Welcome { .. })
    ));
    subscribed(&mut ws, &["notes", "tasks"]).await;
    let tasks = Collection::new("tasks").expect("name");
    let notes = Collection::new("notes").expect("name");
    let (conn, _) = relay
        .relay
        .peers()
        .connections()
        .into_iter()
        .find(|(_, peer)| peer == "raw")
        .expect("the raw connection is registered");
    let listens = |c: &Collection| {
        relay
            .relay
            .peers()
            .subscribers(c)
            .iter()
            .any(|s| s.conn == conn)
    };
    assert!(listens(&tasks) && listens(&notes));

    let exp = unix_now() + 600;
    let notes_read = token_until(exp, &[("notes", Right::Read)]);
    send(&mut ws, &Frame::Reauth { token: notes_read }).await;
    match next_frame(&mut ws).await {
        Some(Frame::SubscribeRefused {
            collection,
            code,
            message,
        }) => {
            assert_eq!(code, ErrorCode::FORBIDDEN, "{message}");
            assert_eq!(collection, "tasks");
        }
        other => panic!("expected tasks refused, got {other:?}"),
    }
    assert_eq!(
        next_frame(&mut ws).await,
        Some(Frame::Subscribed {
            collection: "notes".into(),
            write: false
        }),
        "what stays subscribed is confirmed with its new right"
    );
    assert_eq!(
        next_frame(&mut ws).await,
        Some(Frame::Reauthorized {
            expires_at_ms: Some(exp * 1000)
        })
    );
    assert!(!listens(&tasks), "no longer a subscriber of tasks");
    assert!(listens(&notes), "still one of notes");
    // Documents of tasks are no longer admitted; notes became read-only.
    let sync = Frame::Sync {
        doc: accord_engine::DocId::random(),
        collection: "tasks".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send(&mut ws, &sync).await;
    assert_eq!(next_error(&mut ws).await.0, ErrorCode::NOT_SUBSCRIBED);
    let delete = Frame::Delete {
        doc: accord_engine::DocId::random(),
        collection: "notes".into(),
    };
    send(&mut ws, &delete).await;
    let (code, message) = next_error(&mut ws).await;
    assert_eq!(code, ErrorCode::FORBIDDEN, "{message}");
    assert!(message.contains("read-only"), "{message}");
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reauth_token_closes_with_unauthorized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path()).await;
    let good = long_token(&[("notes", Right::ReadWrite)]);
    let forged = Tokens::new(b"not the relay's secret, but long")
        .expect("secret")
        .mint(
            [("notes".to_owned(), Right::ReadWrite)].into(),
            Duration::from_secs(600),
        );
    for (bad, reason) in [
        (forged, "bad token signature"),
        ("garbage".into(), "malformed"),
    ] {
        let mut ws = raw(&relay.url).await;
        assert!(matches!(
            hello(&mut ws, "raw", &good).await,
            Some(Frame::Welcome { .. })
        ));
        send(&mut ws, &Frame::Reauth { token: bad }).await;
        let (code, message) = next_error(&mut ws).await;
        assert_eq!(code, ErrorCode::UNAUTHORIZED, "{message}");
        assert!(message.contains(reason), "{message}");
        assert!(next_frame(&mut ws).await.is_none(), "then closed");
    }
    assert_eq!(relay.relay.metrics().auth_failures.get(), 2);
    relay.stop().await.expect("stop");
}

/// A device that could write a collection edits a record offline; its
/// right to write is withdrawn meanwhile, and someone else edits the same
/// record. On reconnecting, its first message offers the offline change
/// (its cursor said the relay took its changes); the relay refuses it as
/// read-only, and the device goes on read-only without an error: it
/// receives the other edit, and its own change stays local, listed as
/// unpushed. Nothing it sent reached the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_changes_of_a_device_whose_right_to_write_was_withdrawn_stay_local() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = secured(dir.path()).await;
    let rw = [("notes", Right::ReadWrite)];
    let device = Replica::open(dir.path().join("device.db")).expect("device");
    let other = Replica::open(dir.path().join("other.db")).expect("other");
    let id = device
        .create("notes", &json!({"mine": 0, "theirs": 0}))
        .expect("create");
    let mut h = device.connect(&relay.url, opts(long_token(&rw)));
    h.wait_agreed(T).await.expect("device agreed");
    h.close().await;
    let cursor = device
        .sync_cursor(&Collection::new("notes").expect("name"))
        .expect("read")
        .expect("a cursor");
    assert!(
        cursor.write,
        "the cursor keeps that the relay took our changes"
    );

    device
        .put(&id, "mine", &json!(1), None)
        .expect("offline edit");
    let mut o = other.connect(&relay.url, opts(long_token(&rw)));
    o.wait_agreed(T).await.expect("other agreed");
    other
        .put(&id, "theirs", &json!(1), None)
        .expect("their edit");
    o.wait_synced(T).await.expect("their edit at the relay");
    o.close().await;

    let read = [("notes", Right::Read)];
    let mut h = device.connect(&relay.url, opts(long_token(&read)));
    h.wait_agreed(T).await.expect("agreed read-only, no error");
    let status = h.status();
    assert!(status.read_only.contains("notes"), "{status:?}");
    assert_eq!(status.unpushed, vec![id], "the offline change is listed");
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    let got = device.get(&id).expect("get").value;
    assert_eq!(got, json!({"mine": 1, "theirs": 1}), "their edit arrived");
    h.close().await;
    let metrics = relay.relay.metrics().encode();
    assert!(
        metrics.contains("accord_relay_refusals_total{kind=\"forbidden\"} 1"),
        "the first message offered the change and was refused once: {metrics}"
    );

    // The relay never took the refused change.
    let mut o = other.connect(&relay.url, opts(long_token(&rw)));
    o.wait_agreed(T).await.expect("other agreed again");
    let theirs = other.get(&id).expect("get").value;
    assert_eq!(theirs, json!({"mine": 0, "theirs": 1}));
    o.close().await;
    relay.stop().await.expect("stop");
}
