//! The automerge-repo door's decisions, on a fake clock and an in-memory
//! store: handshake, tokens, which collection a document lives in, what a
//! read-only peer may do, and what a hub's frames become on this wire.

use automerge::sync::{ChunkList, Message, MessageVersion};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use serde_json::json;

use super::*;
use crate::sync::access::Right;
use crate::Replica;

fn collection(name: &str) -> Collection {
    Collection::new(name).expect("a valid name")
}

/// `notes` writes `notes` only (until 10 s); `two` writes `notes` and
/// `tasks`; `read` reads `notes`; `open` does everything; else refused.
#[derive(Debug)]
struct FakeAccess;

impl Access for FakeAccess {
    fn check(&self, token: &str, _now_ms: u64) -> Result<Grant, String> {
        let rw = Right::ReadWrite;
        match token {
            "notes" => Ok(
                Grant::collections([(collection("notes"), rw)].into(), Some(10_000))
                    .with_subject("t-notes"),
            ),
            "two" => Ok(Grant::collections(
                [(collection("notes"), rw), (collection("tasks"), rw)].into(),
                None,
            )),
            "read" => Ok(Grant::collections(
                [(collection("notes"), Right::Read)].into(),
                None,
            )),
            "open" => Ok(Grant::everything()),
            "" => Err("no token".into()),
            _ => Err("bad token signature".into()),
        }
    }
}

fn session(url_token: Option<&str>) -> RepoSession {
    RepoSession::new(
        "relay-1",
        collection(DEFAULT_COLLECTION),
        Limits::unlimited(),
        url_token.map(str::to_owned),
    )
}

fn join(sender: &str, metadata: Option<PeerMetadata>) -> RepoMessage {
    RepoMessage::Join {
        sender: sender.into(),
        versions: vec!["1".into()],
        metadata,
    }
}

fn storage(id: &str, is_ephemeral: bool) -> Option<PeerMetadata> {
    Some(PeerMetadata {
        storage_id: Some(id.into()),
        is_ephemeral,
        token: None,
    })
}

/// A session that joined as `client` with the URL token `token`.
fn joined(token: &str, store: &Replica) -> RepoSession {
    let mut s = session(Some(token));
    let out = s.handle_message(join("client", storage("s1", false)), 0, &FakeAccess, store);
    assert!(
        out.iter()
            .any(|o| matches!(o, RepoOutput::Send(RepoMessage::Peer { .. }))),
        "{out:?}"
    );
    s
}

/// A sync message carrying one change that sets `title`.
fn with_change() -> Vec<u8> {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "title", "from js").expect("put");
    let change = doc
        .get_last_local_change()
        .expect("a change")
        .raw_bytes()
        .to_vec();
    Message {
        heads: doc.get_heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![change]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

fn empty_message() -> Vec<u8> {
    crate::sync::exchange::heads_only(Vec::new()).encode()
}

fn sync(doc: DocId, data: Vec<u8>) -> RepoMessage {
    RepoMessage::Sync {
        sender: "client".into(),
        target: "relay-1".into(),
        doc,
        data,
    }
}

fn request(doc: DocId) -> RepoMessage {
    RepoMessage::Request {
        sender: "client".into(),
        target: "relay-1".into(),
        doc,
        data: empty_message(),
    }
}

fn closed_with(out: &[RepoOutput]) -> Option<ErrorCode> {
    out.iter().find_map(|o| match o {
        RepoOutput::Common(RelayOutput::Close { code, .. }) => Some(*code),
        _ => None,
    })
}

fn routed_to(out: &[RepoOutput]) -> Option<(Collection, Message)> {
    out.iter().find_map(|o| match o {
        RepoOutput::Common(RelayOutput::Route {
            collection,
            message,
            ..
        }) => Some((collection.clone(), message.clone())),
        _ => None,
    })
}

fn unavailable(out: &[RepoOutput], doc: DocId) -> bool {
    out.iter().any(|o| {
        matches!(o, RepoOutput::Send(RepoMessage::DocUnavailable { doc: d, target, .. })
            if *d == doc && target == "client")
    })
}

#[test]
fn join_is_answered_with_peer_naming_the_relay_and_its_storage() {
    let store = Replica::open_in_memory().expect("store");
    let mut s = session(Some("open"));
    let out = s.handle_message(join("client", None), 0, &FakeAccess, &store);
    assert_eq!(
        out,
        vec![RepoOutput::Send(RepoMessage::Peer {
            sender: "relay-1".into(),
            target: "client".into(),
            version: "1".into(),
            metadata: storage("relay-1", false),
        })]
    );
    assert_eq!(s.client(), Some("client"));
}

#[test]
fn the_handshake_refuses_versions_tokens_and_messages_out_of_turn() {
    let store = Replica::open_in_memory().expect("store");
    let versions = RepoMessage::Join {
        sender: "c".into(),
        versions: vec!["0".into(), "2".into()],
        metadata: None,
    };
    let out = session(Some("open")).handle_message(versions, 0, &FakeAccess, &store);
    assert_eq!(closed_with(&out), Some(ErrorCode::VERSION));
    for token in [None, Some("forged")] {
        let out = session(token).handle_message(join("c", None), 0, &FakeAccess, &store);
        assert_eq!(
            closed_with(&out),
            Some(ErrorCode::UNAUTHORIZED),
            "{token:?}"
        );
    }
    let early = request(DocId::random());
    let out = session(Some("open")).handle_message(early, 0, &FakeAccess, &store);
    assert_eq!(closed_with(&out), Some(ErrorCode::NOT_HANDSHAKEN));
    let out = session(Some("open")).handle_bytes(&[0xff, 0x00], 0, &FakeAccess, &store);
    assert_eq!(closed_with(&out), Some(ErrorCode::MALFORMED));
    // A token in the peer metadata counts as one in the URL.
    let meta = PeerMetadata {
        token: Some("open".into()),
        ..PeerMetadata::default()
    };
    let out = session(None).handle_message(join("c", Some(meta)), 0, &FakeAccess, &store);
    assert!(closed_with(&out).is_none(), "{out:?}");
}

#[test]
fn a_closed_session_ignores_everything_after() {
    let store = Replica::open_in_memory().expect("store");
    let mut s = session(None);
    assert!(closed_with(&s.handle_message(join("c", None), 0, &FakeAccess, &store)).is_some());
    assert!(s
        .handle_message(join("c", None), 0, &FakeAccess, &store)
        .is_empty());
}

#[test]
fn a_request_for_a_document_the_relay_does_not_hold_is_unavailable() {
    let store = Replica::open_in_memory().expect("store");
    let mut s = joined("open", &store);
    let doc = DocId::random();
    let out = s.handle_message(request(doc), 0, &FakeAccess, &store);
    assert!(unavailable(&out, doc), "{out:?}");
    assert!(routed_to(&out).is_none());
}

#[test]
fn a_new_document_goes_to_the_tokens_one_writable_collection_or_the_default() {
    let store = Replica::open_in_memory().expect("store");
    let cases = [
        ("notes", DEFAULT_COLLECTION, "notes"),
        ("open", DEFAULT_COLLECTION, DEFAULT_COLLECTION),
        ("two", "tasks", "tasks"),
    ];
    for (token, default, expected) in cases {
        let mut s = RepoSession::new(
            "relay-1",
            collection(default),
            Limits::unlimited(),
            Some(token.into()),
        );
        s.handle_message(join("client", None), 0, &FakeAccess, &store);
        let doc = DocId::random();
        let out = s.handle_message(sync(doc, with_change()), 0, &FakeAccess, &store);
        let (c, message) = routed_to(&out).expect("routed");
        assert_eq!(c.as_str(), expected, "{token}");
        assert_eq!(message.changes.len(), 1, "the change goes to the hub");
        assert!(out.iter().any(|o| matches!(
            o,
            RepoOutput::Open { doc: d, write: true, .. } if *d == doc
        )));
    }
    // `two` may not write the default collection: nowhere to put it.
    let mut s = RepoSession::new(
        "relay-1",
        collection("elsewhere"),
        Limits::unlimited(),
        Some("two".into()),
    );
    s.handle_message(join("client", None), 0, &FakeAccess, &store);
    let doc = DocId::random();
    let out = s.handle_message(sync(doc, with_change()), 0, &FakeAccess, &store);
    assert!(
        unavailable(&out, doc) && routed_to(&out).is_none(),
        "{out:?}"
    );
}

#[test]
fn an_existing_document_is_served_from_its_collection_only_to_readers() {
    let store = Replica::open_in_memory().expect("store");
    let note = store.create("notes", &json!({"a": 1})).expect("note");
    let task = store.create("tasks", &json!({"b": 2})).expect("task");
    let gone = store.create("notes", &json!({"c": 3})).expect("gone");
    store.delete(&gone).expect("delete");
    let mut s = joined("read", &store);
    let out = s.handle_message(request(note), 0, &FakeAccess, &store);
    assert_eq!(routed_to(&out).map(|(c, _)| c), Some(collection("notes")));
    assert!(out
        .iter()
        .any(|o| matches!(o, RepoOutput::Open { write: false, .. })));
    for doc in [task, gone] {
        let out = s.handle_message(request(doc), 0, &FakeAccess, &store);
        assert!(
            unavailable(&out, doc) && routed_to(&out).is_none(),
            "{out:?}"
        );
        let out = s.handle_message(sync(doc, with_change()), 0, &FakeAccess, &store);
        assert!(
            unavailable(&out, doc) && routed_to(&out).is_none(),
            "{out:?}"
        );
    }
}

#[test]
fn a_read_only_peers_changes_are_taken_out_and_the_rest_still_syncs() {
    let store = Replica::open_in_memory().expect("store");
    let note = store.create("notes", &json!({"a": 1})).expect("note");
    let mut s = joined("read", &store);
    let out = s.handle_message(sync(note, with_change()), 0, &FakeAccess, &store);
    let (_, message) = routed_to(&out).expect("still routed, to keep pulling");
    assert!(message.changes.is_empty(), "no change reaches the hub");
    assert!(!message.heads.is_empty(), "the rest of the message stays");
    assert!(out.iter().any(|o| matches!(
        o,
        RepoOutput::Refused {
            code: ErrorCode::FORBIDDEN,
            ..
        }
    )));
    assert!(closed_with(&out).is_none(), "the connection stays open");
    // Nor does it create documents.
    let doc = DocId::random();
    let out = s.handle_message(sync(doc, with_change()), 0, &FakeAccess, &store);
    assert!(unavailable(&out, doc) && routed_to(&out).is_none());
}

#[test]
fn messages_must_come_from_the_peer_that_joined_and_be_for_the_relay() {
    let store = Replica::open_in_memory().expect("store");
    let doc = DocId::random();
    let mut s = joined("open", &store);
    let other = RepoMessage::Sync {
        sender: "someone-else".into(),
        target: "relay-1".into(),
        doc,
        data: with_change(),
    };
    let out = s.handle_message(other, 0, &FakeAccess, &store);
    assert_eq!(closed_with(&out), Some(ErrorCode::MALFORMED));
    assert!(routed_to(&out).is_none());
    let mut s = joined("open", &store);
    let misaddressed = RepoMessage::Sync {
        sender: "client".into(),
        target: "another-peer".into(),
        doc,
        data: with_change(),
    };
    let out = s.handle_message(misaddressed, 0, &FakeAccess, &store);
    assert_eq!(closed_with(&out), Some(ErrorCode::MALFORMED));
    let mut s = joined("open", &store);
    let leave = RepoMessage::Leave {
        sender: "impostor".into(),
    };
    assert_eq!(
        closed_with(&s.handle_message(leave, 0, &FakeAccess, &store)),
        Some(ErrorCode::MALFORMED)
    );
}

#[test]
fn sync_data_that_is_not_an_automerge_message_is_refused_and_the_connection_stays() {
    let store = Replica::open_in_memory().expect("store");
    let mut s = joined("open", &store);
    let doc = DocId::random();
    let out = s.handle_message(sync(doc, b"not automerge".to_vec()), 0, &FakeAccess, &store);
    assert!(closed_with(&out).is_none() && routed_to(&out).is_none());
    let told = out.iter().any(|o| {
        matches!(o, RepoOutput::Send(RepoMessage::Error { message })
            if message.contains("bad_document") && message.contains(&doc.to_string()))
    });
    assert!(told, "{out:?}");
}

#[test]
fn the_connection_closes_when_its_token_expires() {
    let store = Replica::open_in_memory().expect("store");
    let mut s = joined("notes", &store);
    assert_eq!(s.deadline(), Some(10_000));
    assert!(s.tick(9_999).is_empty());
    assert_eq!(closed_with(&s.tick(10_000)), Some(ErrorCode::TOKEN_EXPIRED));
}

#[test]
fn sync_states_are_kept_by_storage_for_returning_peers_and_by_peer_otherwise() {
    let store = Replica::open_in_memory().expect("store");
    let key = |sender: &str, meta: Option<PeerMetadata>| {
        let mut s = session(Some("notes"));
        let out = s.handle_message(join(sender, meta), 0, &FakeAccess, &store);
        assert!(
            out.iter()
                .any(|o| matches!(o, RepoOutput::Common(RelayOutput::RetireStates { .. }))),
            "a token's states are bounded"
        );
        s.state_key().cloned().expect("joined")
    };
    assert_eq!(
        key("a", storage("s1", false)),
        key("b", storage("s1", false))
    );
    assert_ne!(key("a", storage("s1", true)), key("b", storage("s1", true)));
    assert_eq!(key("a", storage("s1", true)), key("a", None));
    assert!(
        key("a", None).as_str().starts_with("t-notes/"),
        "under the token"
    );
}

#[test]
fn hub_frames_become_this_protocols_messages() {
    let doc = DocId::random();
    let sync = Frame::Sync {
        doc,
        collection: "notes".into(),
        message: vec![1, 2, 3],
        want_reply: true,
    };
    assert_eq!(
        outbound(&sync, "r", "c"),
        Some(RepoMessage::Sync {
            sender: "r".into(),
            target: "c".into(),
            doc,
            data: vec![1, 2, 3]
        })
    );
    let gone = Frame::Delete {
        doc,
        collection: "notes".into(),
    };
    let not_yours = Frame::error(ErrorCode::WRONG_COLLECTION, "x", Some(doc));
    for frame in [gone, not_yours] {
        assert!(matches!(
            outbound(&frame, "r", "c"),
            Some(RepoMessage::DocUnavailable { doc: d, .. }) if d == doc
        ));
    }
    let bad = Frame::error(ErrorCode::TOO_LARGE, "too big", Some(doc));
    assert!(matches!(
        outbound(&bad, "r", "c"),
        Some(RepoMessage::Error { message }) if message.starts_with("too_large") && message.contains("too big")
    ));
    let other = Frame::Subscribe {
        collections: vec![],
    };
    assert_eq!(outbound(&other, "r", "c"), None);
}

#[test]
fn presence_goes_on_for_opened_documents_within_the_limit() {
    let store = Replica::open_in_memory().expect("store");
    let note = store.create("notes", &json!({"a": 1})).expect("note");
    let limits = Limits {
        max_ephemeral_bytes: 8,
        ..Limits::unlimited()
    };
    let mut s = RepoSession::new(
        "relay-1",
        collection(DEFAULT_COLLECTION),
        limits,
        Some("read".into()),
    );
    s.handle_message(join("client", None), 0, &FakeAccess, &store);
    let ephemeral = |data: &[u8]| RepoMessage::Ephemeral {
        sender: "client".into(),
        target: "relay-1".into(),
        count: 3,
        session: "s".into(),
        doc: note,
        data: data.to_vec(),
    };
    // Not opened yet: dropped, counted.
    let out = s.handle_message(ephemeral(b"hi"), 0, &FakeAccess, &store);
    assert!(matches!(
        out.as_slice(),
        [RepoOutput::Refused {
            code: ErrorCode::NOT_SUBSCRIBED,
            ..
        }]
    ));
    s.handle_message(request(note), 0, &FakeAccess, &store);
    let out = s.handle_message(ephemeral(b"hi"), 0, &FakeAccess, &store);
    match out.as_slice() {
        [RepoOutput::Common(RelayOutput::Ephemeral {
            doc,
            collection: c,
            frame,
        })] => {
            assert_eq!((*doc, c.as_str()), (note, "notes"));
            assert_eq!(
                *frame,
                Frame::Ephemeral {
                    doc: note,
                    collection: "notes".into(),
                    sender: "client".into(),
                    session: "s".into(),
                    count: 3,
                    data: b"hi".to_vec(),
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let out = s.handle_message(ephemeral(b"far too long"), 0, &FakeAccess, &store);
    assert!(matches!(
        out.as_slice(),
        [RepoOutput::Refused {
            code: ErrorCode::TOO_LARGE,
            ..
        }]
    ));
    // A copy of someone else's presence, passed back as clients do, is
    // dropped quietly: the connection stays.
    let relayed = RepoMessage::Ephemeral {
        sender: "someone-else".into(),
        target: "relay-1".into(),
        count: 4,
        session: "x".into(),
        doc: note,
        data: b"hi".to_vec(),
    };
    assert!(s.handle_message(relayed, 0, &FakeAccess, &store).is_empty());
    assert_eq!(s.client(), Some("client"), "still joined");
    // And on this wire it stays the sender's message.
    let frame = Frame::Ephemeral {
        doc: note,
        collection: "notes".into(),
        sender: "other-peer".into(),
        session: "t".into(),
        count: 9,
        data: vec![1],
    };
    assert_eq!(
        outbound(&frame, "relay-1", "client"),
        Some(RepoMessage::Ephemeral {
            sender: "other-peer".into(),
            target: "client".into(),
            count: 9,
            session: "t".into(),
            doc: note,
            data: vec![1],
        })
    );
}
