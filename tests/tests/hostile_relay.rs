//! A hostile relay against a real replica: a WebSocket server on
//! 127.0.0.1:0 that speaks just enough of the protocol to send a sync
//! message, or a document sent whole, whose chunk inflates to gibibytes.
//! The replica's guard refuses it before Automerge sees it; the replica
//! reports it and this process's memory stays bounded. (The only tests in
//! their binary, so the process's peak memory is theirs.)

use std::time::Duration;

use accord_engine::sync::{DocSummary, ErrorCode, Frame, WholeDoc, PROTOCOL_VERSION};
use accord_engine::{ConnectOptions, DocId, Heads, Replica, SyncError};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// A replica on a fresh file, connected to `url` once (no reconnects).
fn replica_of(url: &str) -> (tempfile::TempDir, Replica, accord_engine::SyncHandle) {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("r.db")).expect("replica");
    let sync = replica.connect(
        url,
        ConnectOptions {
            collections: vec!["c".into()],
            reconnect: false,
            ..ConnectOptions::default()
        },
    );
    (dir, replica, sync)
}

/// A message carrying `frame`.
fn send(frame: Frame) -> Message {
    Message::Binary(frame.encode().into())
}

/// Accepts one connection, reads its `Hello` and pipelined subscription,
/// and welcomes it.
async fn welcome_one(
    listener: TcpListener,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let (stream, _) = listener.accept().await.expect("accept");
    let mut ws = tokio_tungstenite::accept_async(stream)
        .await
        .expect("upgrade");
    // Version 5 packs them into one message; read frames until both came.
    let mut frames = 0;
    while frames < 2 {
        let message = ws.next().await.expect("a message").expect("readable");
        frames += Frame::decode_message(&message.into_data())
            .expect("frames")
            .len();
    }
    ws.send(send(Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: "evil-relay".into(),
        expires_at_ms: None,
    }))
    .await
    .expect("welcome");
    ws
}

/// Serves one connection: welcome, announce `doc`, send the bomb for it.
async fn hostile_relay(listener: TcpListener, doc: DocId) {
    let mut ws = welcome_one(listener).await;
    let heads = Heads::new(vec![accord_engine::automerge::ChangeHash([9; 32])]);
    ws.send(send(Frame::Announce {
        collection: "c".into(),
        docs: vec![DocSummary {
            doc,
            heads,
            deleted: false,
        }],
        complete: true,
    }))
    .await
    .expect("announce");
    ws.send(send(Frame::Sync {
        doc,
        collection: "c".into(),
        message: accord_engine::fuzzing::bomb_sync_message(4 << 30),
        want_reply: true,
    }))
    .await
    .expect("bomb");
    // Keep the connection open while the replica deals with it.
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_from_the_relay_is_refused_and_reported_by_the_replica() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let doc = DocId::random();
    let relay = tokio::spawn(hostile_relay(listener, doc));
    let (_dir, replica, sync) = replica_of(&url);
    let mut watch = sync.watch();
    let reported = tokio::time::timeout(
        T,
        watch.wait_for(|s| {
            matches!(
                &s.last_error,
                Some(SyncError::Local { code, .. }) if *code == ErrorCode::TOO_LARGE
            )
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(reported, "the replica reports it: {:?}", sync.status());
    assert!(replica.meta(&doc).is_err(), "nothing was stored");
    let peak = accord_engine::testing::peak_rss_bytes(std::process::id());
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
    drop(sync);
    relay.abort();
}

/// Serves one connection: welcome, then a listing whose documents come
/// whole: garbage, a bomb, and one valid document.
async fn hostile_whole_relay(listener: TcpListener, docs: [DocId; 3], valid: Vec<u8>) {
    let mut ws = welcome_one(listener).await;
    let [garbage, bomb, good] = docs;
    ws.send(send(Frame::Documents {
        collection: "c".into(),
        docs: vec![
            WholeDoc {
                doc: garbage,
                data: b"these bytes are not automerge".to_vec(),
            },
            WholeDoc {
                doc: bomb,
                data: accord_engine::fuzzing::bomb_chunk(4 << 30),
            },
            WholeDoc {
                doc: good,
                data: valid,
            },
        ],
    }))
    .await
    .expect("documents");
    ws.send(send(Frame::Announce {
        collection: "c".into(),
        docs: Vec::new(),
        complete: true,
    }))
    .await
    .expect("announce");
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_sent_whole_are_checked_like_any_bytes_from_outside() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let docs = [DocId::random(), DocId::random(), DocId::random()];
    let mut valid = accord_engine::automerge::AutoCommit::new();
    accord_engine::automerge::transaction::Transactable::put(
        &mut valid,
        accord_engine::automerge::ROOT,
        "name",
        "Ada",
    )
    .expect("put");
    let relay = tokio::spawn(hostile_whole_relay(listener, docs, valid.save()));
    let (_dir, replica, sync) = replica_of(&url);
    let mut watch = sync.watch();
    let [garbage, bomb, good] = docs;
    let reported = tokio::time::timeout(
        T,
        watch.wait_for(|s| {
            matches!(
                &s.last_error,
                Some(SyncError::Local { code, .. }) if *code == ErrorCode::TOO_LARGE
            ) && s.stats.docs_whole == 1
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        reported,
        "the bomb is refused and reported: {:?}",
        sync.status()
    );
    assert_eq!(
        replica
            .get(&good)
            .expect("the valid document is stored")
            .value,
        serde_json::json!({ "name": "Ada" })
    );
    assert!(replica.meta(&garbage).is_err(), "no garbage stored");
    assert!(replica.meta(&bomb).is_err(), "no bomb stored");
    let peak = accord_engine::testing::peak_rss_bytes(std::process::id());
    assert!(peak < 256 * MIB, "peak RSS {} MiB", peak / MIB);
    drop(sync);
    relay.abort();
}
