//! What an unauthenticated peer can cost the relay: until `Welcome` a
//! message may be no larger than the handshake limit (64 KiB by default),
//! so a peer that has not authenticated cannot make the relay reserve
//! large buffers.

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ScalarValue, ROOT};
use accord_engine::sync::{ErrorCode, Frame, PROTOCOL_VERSION};
use accord_engine::DocId;
use accord_tests::wire::{full_sync, next_error, next_frame, raw, send, send_bytes};
use accord_tests::TestRelay;
use rand::RngCore;

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
