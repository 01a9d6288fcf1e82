//! What an unauthenticated peer can cost the relay: until `Welcome` a
//! message may be no larger than the handshake limit (64 KiB by default),
//! and connections over the connection limit are refused by a bounded
//! number of tasks; the rest are dropped.

use std::time::Duration;

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ScalarValue, ROOT};
use accord_engine::sync::{ErrorCode, Frame, PROTOCOL_VERSION};
use accord_engine::DocId;
use accord_relay::Config;
use accord_tests::wire::{full_sync, hello, next_error, next_frame, raw, send, send_bytes};
use accord_tests::{wait_until, TestRelay};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);
const MIB: usize = 1 << 20;

/// A document holding `bytes` random bytes, which no compression shrinks.
fn large_doc(bytes: usize) -> Automerge {
    let mut blob = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut blob);
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "blob", ScalarValue::Bytes(blob)).expect("put");
    tx.commit();
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_before_hello_is_refused_but_after_welcome_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");

    // Before the handshake: refused by size, whatever it holds.
    let mut early = raw(&relay.url).await;
    send_bytes(&mut early, vec![0u8; MIB]).await;
    let (code, message) = next_error(&mut early).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{message}");
    assert!(message.contains("before Welcome"), "{message}");
    assert!(next_frame(&mut early).await.is_none(), "then closed");

    // The same size right behind Hello, sent before the Welcome arrives:
    // read under the full limit, byte for byte, and stored.
    let doc = large_doc(MIB);
    let message = full_sync(doc.clone());
    assert!(message.len() > MIB, "{} bytes", message.len());
    let id = DocId::random();
    let mut ws = raw(&relay.url).await;
    let frames = [
        Frame::Hello {
            version: PROTOCOL_VERSION,
            peer_id: "big".into(),
            token: String::new(),
        },
        Frame::Subscribe {
            collections: vec!["c".into()],
        },
        Frame::Sync {
            doc: id,
            collection: "c".into(),
            message,
            want_reply: true,
        },
    ];
    for frame in &frames {
        send(&mut ws, frame).await;
    }
    assert!(matches!(
        next_frame(&mut ws).await,
        Some(Frame::Welcome { .. })
    ));
    loop {
        match next_frame(&mut ws).await {
            Some(Frame::Sync { doc, .. }) if doc == id => break, // the relay's answer
            Some(Frame::Error { code, message, .. }) => panic!("refused: {code} {message}"),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let stored = relay
        .relay
        .replica()
        .read(&id, |d, _| d.get_heads())
        .expect("the relay stored it");
    assert_eq!(stored, doc.get_heads());
    relay.stop().await.expect("stop");
}

/// Writes, straight to the socket, a masked binary frame that declares
/// `len` bytes, then those bytes: what a peer streaming one large message
/// does, which the relay refuses on reading the header.
async fn stream_declared_frame(ws: &mut accord_tests::wire::Ws, len: usize) -> std::io::Result<()> {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend((len as u64).to_be_bytes());
    header.extend([0u8; 4]); // the mask key: zero leaves the payload as it is
    let socket = ws.get_mut();
    socket.write_all(&header).await?;
    let chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        socket.write_all(&chunk[..n]).await?;
        left -= n;
    }
    socket.flush().await
}

/// A frame over the limit is refused as soon as its header is read, but
/// the relay goes on reading, and dropping, the rest of it: a peer still
/// sending gets no reset, and reads the error that names the limit. Its
/// payload is far larger than every buffer between the two, so a relay
/// that stopped reading (or tried to buffer it) would reset the
/// connection under the peer's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_still_sending_a_refused_frame_reads_the_error_instead_of_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start_with(Config {
        db: dir.path().join("relay.db"),
        max_frame_bytes: 256 * 1024,
        ..Config::default()
    })
    .await
    .expect("relay");
    let declared = 32 * MIB;

    // Before Hello, over the handshake limit.
    let mut early = raw(&relay.url).await;
    stream_declared_frame(&mut early, declared)
        .await
        .expect("the relay read the whole refused frame");
    let (code, message) = next_error(&mut early).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{message}");
    assert!(message.contains("before Welcome"), "{message}");
    assert!(next_frame(&mut early).await.is_none(), "then closed");

    // After Welcome, over the full limit.
    let mut late = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut late, "late", "").await,
        Some(Frame::Welcome { .. })
    ));
    stream_declared_frame(&mut late, declared)
        .await
        .expect("the relay read the whole refused frame");
    let (code, message) = next_error(&mut late).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{message}");
    assert!(message.contains("the limit is 262144 bytes"), "{message}");
    assert!(next_frame(&mut late).await.is_none(), "then closed");

    // Nothing else was touched: a new peer is welcomed.
    let mut next = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut next, "next", "").await,
        Some(Frame::Welcome { .. })
    ));
    relay.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_the_connection_limit_holds_only_a_few_refusal_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start_with(Config {
        db: dir.path().join("relay.db"),
        max_connections: 1,
        max_refusing_connections: 2,
        ..Config::default()
    })
    .await
    .expect("relay");
    let mut held = raw(&relay.url).await;
    assert!(matches!(
        hello(&mut held, "held", "").await,
        Some(Frame::Welcome { .. })
    ));
    let metrics = relay.relay.metrics();

    // Twelve connections that never even upgrade: two are waited for (up
    // to the handshake timeout), ten are dropped at once.
    let mut flood = Vec::new();
    for _ in 0..12 {
        flood.push(
            tokio::net::TcpStream::connect(relay.addr)
                .await
                .expect("connect"),
        );
    }
    wait_until(T, "ten connections dropped unanswered", || async {
        metrics.dropped_connections.get() == 10
    })
    .await;
    assert_eq!(metrics.refusing_connections.get(), 2, "the bound");
    // The listener's queue is first in, first out: the first two took the
    // places, the others find their socket closed without a byte.
    for (i, stream) in flood.iter_mut().enumerate().skip(2) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(T, stream.read(&mut byte))
            .await
            .expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "connection {i}: {read:?}");
    }

    // Once the flood is gone, an over-limit client is answered again,
    // even one still sending a large frame: the refusal is sent at once,
    // and the frame dropped unread instead of resetting the connection
    // under the refusal.
    drop(flood);
    wait_until(T, "the refusal tasks to end", || async {
        metrics.refusing_connections.get() == 0
    })
    .await;
    let mut late = raw(&relay.url).await;
    stream_declared_frame(&mut late, 32 * MIB)
        .await
        .expect("the relay read the whole frame");
    let (code, message) = next_error(&mut late).await;
    assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS, "{message}");
    assert_eq!(metrics.dropped_connections.get(), 10);
    relay.stop().await.expect("stop");
}
