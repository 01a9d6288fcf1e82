//! A hostile relay against a real replica: a WebSocket server on
//! 127.0.0.1:0 that speaks just enough of the protocol to send a sync
//! message whose change chunk inflates to gibibytes. The replica's guard
//! refuses it before Automerge sees it; the replica reports it and this
//! process's memory stays bounded. (Alone in its test binary, so the
//! process's peak memory is this test's.)

use std::time::Duration;

use accord_engine::sync::{DocSummary, ErrorCode, Frame, PROTOCOL_VERSION};
use accord_engine::{ConnectOptions, DocId, Heads, Replica, SyncError};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// Serves one connection: welcome, announce `doc`, send the bomb for it.
async fn hostile_relay(listener: TcpListener, doc: DocId) {
    let (stream, _) = listener.accept().await.expect("accept");
    let mut ws = tokio_tungstenite::accept_async(stream)
        .await
        .expect("upgrade");
    let send = |frame: Frame| Message::Binary(frame.encode().into());
    // Hello, then the pipelined Subscribe.
    for _ in 0..2 {
        ws.next().await.expect("a frame").expect("readable");
    }
    ws.send(send(Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: "evil-relay".into(),
        expires_at_ms: None,
    }))
    .await
    .expect("welcome");
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
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("r.db")).expect("replica");
    let sync = replica.connect(
        &url,
        ConnectOptions {
            collections: vec!["c".into()],
            reconnect: false,
            ..ConnectOptions::default()
        },
    );
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
