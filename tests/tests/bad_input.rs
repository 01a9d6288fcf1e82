//! Hostile and broken input against a running relay: each case gets its
//! documented error code, the relay keeps serving everyone else, and the
//! stored documents are unchanged (heads compared before and after).

use std::time::Duration;

use accord_engine::automerge::Automerge;
use accord_engine::sync::{ErrorCode, Frame, PROTOCOL_VERSION};
use accord_engine::{ConnectOptions, DocId, ListOptions, Replica};
use accord_tests::wire::{self, empty_sync, hello, next_error, next_frame, raw, send_bytes, Ws};
use accord_tests::TestRelay;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// A welcomed, subscribed raw connection.
async fn session(url: &str, peer: &str) -> Ws {
    let mut ws = raw(url).await;
    assert!(matches!(
        hello(&mut ws, peer, "").await,
        Some(Frame::Welcome { .. })
    ));
    send_bytes(
        &mut ws,
        Frame::Subscribe {
            collections: vec!["c".into()],
        }
        .encode(),
    )
    .await;
    loop {
        if let Some(Frame::Announce { complete: true, .. }) = next_frame(&mut ws).await {
            return ws;
        }
    }
}

fn heads_of_all(replica: &Replica) -> Vec<(DocId, accord_engine::Heads, bool)> {
    let all = replica.list_with(&ListOptions::everything()).expect("list");
    all.into_iter()
        .map(|m| (m.id, m.heads, m.deleted))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = TestRelay::start(&dir.path().join("relay.db"))
        .await
        .expect("relay");
    let good = Replica::open(dir.path().join("good.db")).expect("good");
    let id = good.create("c", &json!({"v": 1})).expect("create");
    good.create("other", &json!({"x": 1}))
        .expect("create in another collection");
    let opts = ConnectOptions {
        collections: vec!["c".into(), "other".into()],
        ..ConnectOptions::default()
    };
    let mut handle = good.connect(&relay.url, opts);
    handle.wait_synced(T).await.expect("synced");
    let before = heads_of_all(relay.relay.replica());

    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: "p".into(),
        token: String::new(),
    }
    .encode();
    let fatal: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "garbage",
            vec![0x13, 0x37, 0xca, 0xfe],
            ErrorCode::MALFORMED,
        ),
        (
            "truncated hello",
            hello[..hello.len() - 1].to_vec(),
            ErrorCode::MALFORMED,
        ),
        ("empty frame", Vec::new(), ErrorCode::MALFORMED),
        (
            "wrong version",
            Frame::Hello {
                version: 99,
                peer_id: "p".into(),
                token: String::new(),
            }
            .encode(),
            ErrorCode::VERSION,
        ),
        (
            "before the handshake",
            Frame::Subscribe {
                collections: vec!["c".into()],
            }
            .encode(),
            ErrorCode::NOT_HANDSHAKEN,
        ),
        // Variant 0 (Hello), this version, then a peer-id length claiming 2^62 bytes.
        (
            "huge declared length",
            vec![0, PROTOCOL_VERSION as u8, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40],
            ErrorCode::MALFORMED,
        ),
    ];
    for (name, bytes, code) in fatal {
        let mut ws = raw(&relay.url).await;
        send_bytes(&mut ws, bytes).await;
        assert_eq!(next_error(&mut ws).await.0, code, "{name}");
        assert!(
            next_frame(&mut ws).await.is_none(),
            "{name}: closed after a fatal error"
        );
    }

    let mut ws = session(&relay.url, "attacker").await;
    // Valid frame, invalid Automerge bytes.
    let bogus = Frame::Sync {
        doc: id,
        collection: "c".into(),
        message: vec![0x42, 0xff, 0xff, 0xff],
        want_reply: true,
    };
    send_bytes(&mut ws, bogus.encode()).await;
    assert_eq!(next_error(&mut ws).await.0, ErrorCode::BAD_DOCUMENT);
    // A collection it did not subscribe to.
    let other = Frame::Sync {
        doc: id,
        collection: "other".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send_bytes(&mut ws, other.encode()).await;
    assert_eq!(next_error(&mut ws).await.0, ErrorCode::NOT_SUBSCRIBED);
    // An unknown document id: answered as an empty document, nothing stored.
    let unknown = DocId::random();
    let probe = Frame::Sync {
        doc: unknown,
        collection: "c".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send_bytes(&mut ws, probe.encode()).await;
    assert!(matches!(next_frame(&mut ws).await, Some(Frame::Sync { doc, .. }) if doc == unknown));
    // A replay of another peer's messages: the changes are already there.
    let replay = Frame::Sync {
        doc: id,
        collection: "c".into(),
        message: full_sync_of(&good, &id),
        want_reply: false,
    };
    send_bytes(&mut ws, replay.encode()).await;
    send_bytes(&mut ws, replay.encode()).await;
    // The connection is still served after all that.
    let again = Frame::Sync {
        doc: unknown,
        collection: "c".into(),
        message: empty_sync(),
        want_reply: true,
    };
    send_bytes(&mut ws, again.encode()).await;
    loop {
        match next_frame(&mut ws).await {
            Some(Frame::Sync { doc, .. }) if doc == unknown => break,
            Some(_) => {}
            None => panic!("the connection was closed"),
        }
    }

    // Nothing stored changed, and the good replica keeps syncing.
    assert_eq!(heads_of_all(relay.relay.replica()), before);
    good.put(&id, "v", &json!(2), None).expect("put");
    handle
        .wait_synced(T)
        .await
        .expect("the good replica still syncs");
    assert_eq!(
        relay.relay.replica().get(&id).expect("relay").value,
        json!({"v": 2})
    );
    relay.stop().await.expect("stop");
}

/// A sync message carrying the whole document, as a peer that has nothing
/// would receive it; replayed by someone else, it must change nothing.
fn full_sync_of(replica: &Replica, id: &DocId) -> Vec<u8> {
    wire::full_sync(Automerge::load(&replica.save(id).expect("save")).expect("load"))
}
