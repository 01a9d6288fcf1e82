//! Collection cursors in the sans-IO sessions: what a relay lists for a
//! cursor (only what changed since it, or everything when it names
//! another relay or a number its sequence never reached), how a
//! version-2 replica is still served, and what a replica offers and saves
//! around a listing.

use accord_engine::sync::{
    ClientConfig, ClientOutput, ClientSession, Cursor, DocSummary, Frame, OpenAccess, RelayOutput,
    RelaySession, SubscribeFrom, SubscribeRequest, SyncCursor, SyncDocs, PROTOCOL_VERSION,
};
use accord_engine::{Collection, DocId, PeerId, Replica};
use serde_json::json;

mod sessions;
use sessions::{drain, welcomed};

fn notes() -> Collection {
    Collection::new("notes").expect("a valid name")
}

/// A relay store holding `n` notes, created one after the other.
fn relay_store(n: usize) -> (Replica, Vec<DocId>) {
    let store = Replica::open_in_memory().expect("store");
    let ids = (0..n)
        .map(|i| store.create("notes", &json!({ "i": i })).expect("create"))
        .collect();
    (store, ids)
}

/// Every frame the relay sends for `frame` and the listings it owes.
fn answer(session: &mut RelaySession, store: &Replica, frame: Frame) -> Vec<Frame> {
    let out = session.handle_frame(frame, 0, &OpenAccess, store);
    drain(session, store, out)
}

fn since(relay_id: &str, seq: Option<u64>) -> Frame {
    Frame::SubscribeSince {
        collections: vec![SubscribeFrom {
            collection: "notes".into(),
            cursor: seq.map(|seq| Cursor {
                relay_id: relay_id.into(),
                seq,
            }),
        }],
    }
}

/// The documents announced in `frames`, and the `Listing` headers.
fn announced(frames: &[Frame]) -> (Vec<DocId>, Vec<(Option<u64>, u64)>) {
    let mut docs = Vec::new();
    let mut headers = Vec::new();
    for f in frames {
        match f {
            Frame::Announce { docs: list, .. } => docs.extend(list.iter().map(|s| s.doc)),
            Frame::Listing { since, seq, .. } => headers.push((*since, *seq)),
            _ => {}
        }
    }
    (docs, headers)
}

#[test]
fn a_cursor_of_this_relay_lists_only_what_changed_since() {
    let (store, ids) = relay_store(5);
    let cursor = store.collection_seq("notes").expect("seq");
    store.put(&ids[1], "i", &json!(10), None).expect("change");
    store.delete(&ids[3]).expect("delete");
    let created = store.create("notes", &json!({})).expect("create");
    let now = store.collection_seq("notes").expect("seq");

    let (mut session, _) = welcomed(&store, PROTOCOL_VERSION);
    let frames = answer(&mut session, &store, since("relay", Some(cursor)));
    let (docs, headers) = announced(&frames);
    assert_eq!(headers, vec![(Some(cursor), now)]);
    // In sequence order: the change, the tombstone, the new record.
    assert_eq!(docs, vec![ids[1], ids[3], created]);
    let deleted = frames.iter().any(|f| {
        matches!(f, Frame::Announce { docs, .. }
            if docs.iter().any(|s: &DocSummary| s.doc == ids[3] && s.deleted))
    });
    assert!(deleted, "tombstones are listed too");
}

#[test]
fn compaction_is_not_a_change_and_a_restart_keeps_the_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.db");
    let store = Replica::open(&path).expect("store");
    let ids: Vec<DocId> = (0..3)
        .map(|i| store.create("notes", &json!({ "i": i })).expect("create"))
        .collect();
    for i in 0..5 {
        store.put(&ids[0], "i", &json!(i), None).expect("change");
    }
    let cursor = store.collection_seq("notes").expect("seq");
    store.compact_all().expect("compact");
    drop(store);
    let store = Replica::open(&path).expect("reopen");
    let (mut session, _) = welcomed(&store, PROTOCOL_VERSION);
    let (docs, headers) = announced(&answer(&mut session, &store, since("relay", Some(cursor))));
    assert!(docs.is_empty(), "compacting changed nothing: {docs:?}");
    assert_eq!(headers, vec![(Some(cursor), cursor)]);
}

#[test]
fn a_cursor_of_another_relay_or_beyond_the_sequence_lists_everything() {
    let (store, ids) = relay_store(4);
    let seq = store.collection_seq("notes").expect("seq");
    for frame in [
        since("another-relay", Some(1)),
        since("relay", Some(seq + 1)), // a restored, older copy
        since("relay", None),
    ] {
        let (mut session, _) = welcomed(&store, PROTOCOL_VERSION);
        let (mut docs, headers) = announced(&answer(&mut session, &store, frame));
        docs.sort();
        let mut all = ids.clone();
        all.sort();
        assert_eq!(docs, all);
        assert_eq!(headers, vec![(None, seq)]);
    }
}

#[test]
fn a_listing_since_a_cursor_pages_in_sequence_order() {
    let (store, _) = relay_store(1_200); // more than two pages
    let (mut session, _) = welcomed(&store, PROTOCOL_VERSION);
    let (docs, headers) = announced(&answer(&mut session, &store, since("relay", Some(100))));
    assert_eq!(docs.len(), 1_100);
    assert_eq!(headers, vec![(Some(100), 1_200)]);
    let unique: std::collections::HashSet<_> = docs.iter().collect();
    assert_eq!(unique.len(), docs.len(), "no document twice");
}

#[test]
fn a_version_2_replica_is_answered_in_version_2_with_full_listings() {
    let (store, ids) = relay_store(3);
    let (mut session, out) = welcomed(&store, 2);
    assert!(out
        .iter()
        .any(|o| matches!(o, RelayOutput::Send(Frame::Welcome { version: 2, .. }))));
    let frames = answer(
        &mut session,
        &store,
        Frame::Subscribe {
            collections: vec!["notes".into()],
        },
    );
    let (docs, headers) = announced(&frames);
    assert_eq!(docs.len(), ids.len());
    assert!(headers.is_empty(), "no version-3 frame reaches it");
    // Versions outside 2..=3 are refused.
    let (_, out) = welcomed(&store, 1);
    assert!(out.iter().any(|o| matches!(o, RelayOutput::Close { .. })));
}

#[test]
fn a_repeated_subscribe_before_the_listing_starts_is_answered_by_it() {
    let (store, ids) = relay_store(3);
    let seq = store.collection_seq("notes").expect("seq");
    let (mut session, _) = welcomed(&store, PROTOCOL_VERSION);
    session.handle_frame(since("relay", Some(1)), 0, &OpenAccess, &store);
    // The older of the two cursors wins: it covers what both asked for.
    let frames = answer(&mut session, &store, since("relay", None));
    let (docs, headers) = announced(&frames);
    assert_eq!(docs.len(), ids.len());
    assert_eq!(headers, vec![(None, seq), (Some(seq), seq)]);
    let complete = frames
        .iter()
        .filter(|f| matches!(f, Frame::Announce { complete: true, .. }))
        .count();
    assert_eq!(complete, 2, "one complete listing per request");
}

// The replica's side.

fn client(collections: &[&str]) -> ClientSession {
    ClientSession::new(ClientConfig {
        peer_id: PeerId::new("replica").expect("peer id"),
        token: String::new(),
        collections: collections
            .iter()
            .map(|c| Collection::new(*c).expect("name"))
            .collect(),
        max_in_flight: 8,
        max_frame_bytes: usize::MAX,
    })
}

fn sent(out: &[ClientOutput]) -> Vec<&Frame> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn welcome() -> Frame {
    Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: "relay".into(),
        expires_at_ms: None,
    }
}

fn complete(docs: Vec<DocSummary>) -> Frame {
    Frame::Announce {
        collection: "notes".into(),
        docs,
        complete: true,
    }
}

#[test]
fn a_replica_sends_its_stored_cursor_and_offers_only_what_it_wrote_since() {
    let local = Replica::open_in_memory().expect("replica");
    for i in 0..50 {
        local.create("notes", &json!({ "i": i })).expect("create");
    }
    let local_seq = local.collection_seq("notes").expect("seq");
    let cursor = SyncCursor {
        relay: PeerId::new("relay").expect("id"),
        relay_seq: 7,
        local_seq,
        write: true,
    };
    local.save_sync_cursor(&notes(), &cursor).expect("save");
    let written = local
        .create("notes", &json!({ "new": true }))
        .expect("create");

    let mut session = client(&["notes"]);
    let out = session.connected(0, &local);
    let subscribe = Frame::SubscribeWith {
        collections: vec![SubscribeRequest {
            collection: "notes".into(),
            cursor: Some(Cursor {
                relay_id: "relay".into(),
                seq: 7,
            }),
            // It holds documents of the collection: listed, not sent whole.
            whole: false,
        }],
    };
    assert!(sent(&out).contains(&&subscribe));
    session.handle_frame(0, welcome(), &local);
    let listing = Frame::Listing {
        collection: "notes".into(),
        since: Some(7),
        seq: 9,
    };
    session.handle_frame(0, listing, &local);
    let out = session.handle_frame(0, complete(Vec::new()), &local);
    let offered: Vec<DocId> = sent(&out)
        .iter()
        .filter_map(|f| match f {
            Frame::Sync { doc, .. } => Some(*doc),
            _ => None,
        })
        .collect();
    assert_eq!(offered, vec![written], "only the record written since");
    // Not agreed yet (the relay has not answered): the old cursor stays.
    assert_eq!(local.sync_cursor(&notes()).expect("read"), Some(cursor));
}

#[test]
fn a_replica_saves_the_listing_number_once_everything_agrees() {
    let local = Replica::open_in_memory().expect("replica");
    let doc = local.create("notes", &json!({ "a": 1 })).expect("create");
    let heads = local.meta(&doc).expect("meta").heads;
    let mut session = client(&["notes"]);
    session.connected(0, &local);
    session.handle_frame(0, welcome(), &local);
    let listing = Frame::Listing {
        collection: "notes".into(),
        since: None,
        seq: 41,
    };
    session.handle_frame(0, listing, &local);
    // The relay holds the same heads: nothing to sync, all agrees.
    let summary = DocSummary {
        doc,
        heads,
        deleted: false,
    };
    let out = session.handle_frame(0, complete(vec![summary]), &local);
    assert!(sent(&out).is_empty(), "nothing to exchange");
    let saved = local.sync_cursor(&notes()).expect("read").expect("saved");
    assert_eq!(saved.relay.as_str(), "relay");
    assert_eq!(saved.relay_seq, 41);
    assert_eq!(saved.local_seq, local.collection_seq("notes").expect("seq"));
}

#[test]
fn a_replica_keeps_its_cursor_while_an_announced_change_is_missing() {
    let relay = Replica::open_in_memory().expect("relay");
    let doc = relay.create("notes", &json!({ "a": 1 })).expect("create");
    let heads = relay.meta(&doc).expect("meta").heads;
    let local = Replica::open_in_memory().expect("replica");
    let mut session = client(&["notes"]);
    session.connected(0, &local);
    session.handle_frame(0, welcome(), &local);
    let listing = Frame::Listing {
        collection: "notes".into(),
        since: None,
        seq: 3,
    };
    session.handle_frame(0, listing, &local);
    let summary = DocSummary {
        doc,
        heads,
        deleted: false,
    };
    let out = session.handle_frame(0, complete(vec![summary]), &local);
    assert!(
        sent(&out)
            .iter()
            .any(|f| matches!(f, Frame::Sync { doc: d, .. } if *d == doc)),
        "the missing record is asked for"
    );
    session.tick(60_000, &local);
    assert_eq!(local.sync_cursor(&notes()).expect("read"), None);
}

#[test]
fn a_cursor_of_another_relay_is_sent_and_a_full_listing_compares_everything() {
    let local = Replica::open_in_memory().expect("replica");
    let doc = local.create("notes", &json!({ "a": 1 })).expect("create");
    let cursor = SyncCursor {
        relay: PeerId::new("relay").expect("id"),
        relay_seq: 7,
        local_seq: local.collection_seq("notes").expect("seq"),
        write: true,
    };
    local.save_sync_cursor(&notes(), &cursor).expect("save");
    let mut session = client(&["notes"]);
    session.connected(0, &local);
    // Another relay answers: it lists everything (here: nothing), so
    // the record the old cursor covered is offered after all.
    let other = Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: "other".into(),
        expires_at_ms: None,
    };
    session.handle_frame(0, other, &local);
    let listing = Frame::Listing {
        collection: "notes".into(),
        since: None,
        seq: 2,
    };
    session.handle_frame(0, listing, &local);
    let out = session.handle_frame(0, complete(Vec::new()), &local);
    assert!(sent(&out)
        .iter()
        .any(|f| matches!(f, Frame::Sync { doc: d, .. } if *d == doc)));
}

/// A replica whose record changed since its cursor, with a stored sync
/// state under the cursor's relay: its exchange starts right behind
/// `Hello` (without changes), and is forgotten if another relay answers.
/// A replica whose one record changed offline since its cursor, which
/// says whether the relay let it `write` the collection.
fn early_exchange_setup(write: bool) -> (Replica, DocId) {
    use accord_engine::automerge::sync::State;
    use accord_engine::sync::EncodedState;
    let local = Replica::open_in_memory().expect("replica");
    let doc = local.create("notes", &json!({ "n": 1 })).expect("create");
    let relay = PeerId::new("relay").expect("id");
    let mut state = State::new();
    state.shared_heads = local.heads(&doc).expect("heads").to_vec();
    local
        .save_sync_states(
            &relay,
            vec![EncodedState {
                doc,
                bytes: state.encode(),
            }],
        )
        .expect("state");
    let cursor = SyncCursor {
        relay,
        relay_seq: 1,
        local_seq: local.collection_seq("notes").expect("seq"),
        write,
    };
    local.save_sync_cursor(&notes(), &cursor).expect("cursor");
    local
        .put(&doc, "n", &json!(2), None)
        .expect("offline change");
    (local, doc)
}

#[test]
fn a_replica_starts_exchanges_of_what_it_wrote_since_its_cursor_right_behind_hello() {
    let (local, doc) = early_exchange_setup(false);
    let mut session = client(&["notes"]);
    let out = session.connected(0, &local);
    let frames = sent(&out);
    assert!(matches!(frames[0], Frame::Hello { .. }));
    assert!(matches!(frames[1], Frame::SubscribeWith { .. }));
    let early = frames.iter().find_map(|f| match f {
        Frame::Sync {
            doc: d,
            message,
            want_reply,
            ..
        } if *d == doc => Some((message.clone(), *want_reply)),
        _ => None,
    });
    let (message, want_reply) = early.expect("an early Sync for the changed record");
    let message = accord_engine::automerge::sync::Message::decode(&message).expect("message");
    assert!(
        message.changes.is_empty(),
        "no changes before Welcome when the cursor does not say the relay took them"
    );
    assert!(want_reply);
    assert_eq!(session.pending(), 1, "it is in flight");
    session.handle_frame(0, welcome(), &local);
    assert_eq!(session.pending(), 1, "the same relay: it goes on");
}

/// Hands `session` the relay's refusal of an early `Sync`, which must
/// restart its exchange, then an empty listing since the cursor; returns
/// what the listing's end sent.
fn refused_then_listed(
    session: &mut ClientSession,
    local: &Replica,
    refusal: Frame,
) -> Vec<ClientOutput> {
    session.handle_frame(0, refusal, local);
    assert_eq!(session.pending(), 0, "the exchange starts over");
    let listing = Frame::Listing {
        collection: "notes".into(),
        since: Some(1),
        seq: 1,
    };
    session.handle_frame(0, listing, local);
    session.handle_frame(0, complete(Vec::new()), local)
}

/// The `Sync` of `doc` among `out`, decoded.
fn early_sync(out: &[ClientOutput], doc: DocId) -> accord_engine::automerge::sync::Message {
    let message = sent(out)
        .into_iter()
        .find_map(|f| match f {
            Frame::Sync {
                doc: d, message, ..
            } if *d == doc => Some(message.clone()),
            _ => None,
        })
        .expect("a Sync for the changed record");
    accord_engine::automerge::sync::Message::decode(&message).expect("message")
}

#[test]
fn a_replica_the_relay_let_write_sends_its_offline_changes_in_the_first_message() {
    use accord_engine::automerge::sync::{State, SyncDoc};
    use accord_engine::automerge::Automerge;
    let (local, doc) = early_exchange_setup(true);
    // What the relay held at the last sync: the record before the change.
    let mut relay_doc = Automerge::load(&local.save(&doc).expect("save")).expect("load");
    let base = local
        .history(&doc)
        .expect("history")
        .first()
        .expect("a first change")
        .hash;
    relay_doc = relay_doc.fork_at(&[base]).expect("fork at the base");

    let mut session = client(&["notes"]);
    let out = session.connected(0, &local);
    let message = early_sync(&out, doc);
    assert!(
        !message.changes.is_empty(),
        "the offline change goes at once"
    );
    relay_doc
        .receive_sync_message(&mut State::new(), message)
        .expect("apply");
    assert_eq!(
        relay_doc.get_heads(),
        local.heads(&doc).expect("heads").to_vec(),
        "the first message alone brings the relay up to date"
    );
}

#[test]
fn offline_changes_refused_as_read_only_restart_the_exchange_without_them() {
    let (local, doc) = early_exchange_setup(true);
    let mut session = client(&["notes"]);
    session.connected(0, &local);
    session.handle_frame(0, welcome(), &local);
    // The right to write was withdrawn since the cursor was saved: the
    // relay confirms the subscription read-only, then refuses the changes.
    let read_only = Frame::Subscribed {
        collection: "notes".into(),
        write: false,
    };
    session.handle_frame(0, read_only, &local);
    let refused = Frame::error(
        accord_engine::sync::ErrorCode::FORBIDDEN,
        "read-only access to collection 'notes': changes refused",
        Some(doc),
    );
    let out = refused_then_listed(&mut session, &local, refused);
    let message = early_sync(&out, doc); // offered again, not held back
    assert!(message.changes.is_empty(), "no changes the second time");
}

#[test]
fn early_exchanges_are_forgotten_when_another_relay_answers() {
    let (local, _) = early_exchange_setup(true);
    let mut session = client(&["notes"]);
    session.connected(0, &local);
    assert_eq!(session.pending(), 1);
    let other = Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: "another-relay".into(),
        expires_at_ms: None,
    };
    session.handle_frame(0, other, &local);
    assert_eq!(session.pending(), 0, "its states were the other relay's");
}

#[test]
fn an_early_sync_refused_as_not_subscribed_is_offered_again_after_the_listing() {
    let (local, doc) = early_exchange_setup(true);
    let mut session = client(&["notes"]);
    session.connected(0, &local);
    session.handle_frame(0, welcome(), &local);
    // A transport that reordered it: the Sync reached the relay before
    // the subscription.
    let refused = Frame::error(
        accord_engine::sync::ErrorCode::NOT_SUBSCRIBED,
        "not subscribed to collection 'notes'",
        Some(doc),
    );
    let out = refused_then_listed(&mut session, &local, refused);
    let offered = sent(&out)
        .iter()
        .any(|f| matches!(f, Frame::Sync { doc: d, .. } if *d == doc));
    assert!(offered, "offered again once listed, not held back: {out:?}");
}

#[test]
fn a_replica_looks_at_a_bounded_number_of_documents_before_hello_goes_out() {
    use accord_engine::automerge::sync::State;
    use accord_engine::sync::client::EARLY_DOCS;
    use accord_engine::sync::EncodedState;
    let local = Replica::open_in_memory().expect("replica");
    let relay = PeerId::new("relay").expect("id");
    let docs: Vec<DocId> = (0..EARLY_DOCS + 40)
        .map(|i| local.create("notes", &json!({ "i": i })).expect("create"))
        .collect();
    let states = docs
        .iter()
        .map(|doc| {
            let mut state = State::new();
            state.shared_heads = local.heads(doc).expect("heads").to_vec();
            EncodedState {
                doc: *doc,
                bytes: state.encode(),
            }
        })
        .collect();
    local.save_sync_states(&relay, states).expect("states");
    let cursor = SyncCursor {
        relay,
        relay_seq: 1,
        local_seq: local.collection_seq("notes").expect("seq"),
        write: true,
    };
    local.save_sync_cursor(&notes(), &cursor).expect("cursor");
    for doc in &docs {
        local
            .put(doc, "i", &json!(-1), None)
            .expect("offline change");
    }
    let mut session = client(&["notes"]);
    let out = session.connected(0, &local);
    let early = sent(&out)
        .iter()
        .filter(|f| matches!(f, Frame::Sync { .. }))
        .count();
    assert!(early > 0 && early <= EARLY_DOCS, "{early} early exchanges");
}
