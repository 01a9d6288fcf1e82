//! Whole documents (protocol 4) in the sans-IO sessions: a replica that
//! holds none of a collection asks for it `whole`, and the relay sends the
//! listed documents in their saved form (`Documents`) instead of
//! announcing them, within its per-frame and per-document bounds;
//! tombstones and large documents are announced as before. A replica
//! merges what it is sent, resumes each document's exchange from the sent
//! heads, and falls back to an exchange for bytes that do not apply.

use accord_engine::automerge::Automerge;
use accord_engine::sync::session::{MAX_WHOLE_DOC_BYTES, WHOLE_FRAME_BYTES};
use accord_engine::sync::{
    Announcing, ClientConfig, ClientOutput, ClientSession, ErrorCode, Frame, OpenAccess,
    RelaySession, SessionEvent, SubscribeFrom, SubscribeRequest, SyncDocs, WholeDoc,
    PROTOCOL_VERSION,
};
use accord_engine::{Collection, DocId, Heads, PeerId, Replica};
use serde_json::json;

mod sessions;
use sessions::drain;

fn notes() -> Collection {
    Collection::new("notes").expect("a valid name")
}

/// A relay session welcomed in this build's protocol.
fn welcomed(store: &Replica) -> RelaySession {
    sessions::welcomed(store, PROTOCOL_VERSION).0
}

fn subscribe_with(whole: bool) -> Frame {
    Frame::SubscribeWith {
        collections: vec![SubscribeRequest {
            collection: "notes".into(),
            cursor: None,
            whole,
        }],
    }
}

/// The documents sent whole and those announced, in order.
fn sorted_out(frames: &[Frame]) -> (Vec<WholeDoc>, Vec<DocId>) {
    let mut whole = Vec::new();
    let mut announced = Vec::new();
    for f in frames {
        match f {
            Frame::Documents { docs, .. } => whole.extend(docs.iter().cloned()),
            Frame::Announce { docs, .. } => announced.extend(docs.iter().map(|s| s.doc)),
            _ => {}
        }
    }
    (whole, announced)
}

/// `n` characters of random ids (base58: about 75% of `n` once
/// compressed).
fn noise(n: usize) -> String {
    let mut text = String::with_capacity(n + 64);
    while text.len() < n {
        text.push_str(&DocId::random().to_string());
    }
    text.truncate(n);
    text
}

#[test]
fn a_whole_listing_sends_live_documents_saved_and_announces_the_rest() {
    let store = Replica::open_in_memory().expect("store");
    let small: Vec<DocId> = (0..3)
        .map(|i| store.create("notes", &json!({ "i": i })).expect("create"))
        .collect();
    // Several chunks: the saved form is a snapshot followed by changes.
    for i in 0..4 {
        store
            .put(&small[0], "i", &json!(10 + i), None)
            .expect("change");
    }
    let deleted = store.create("notes", &json!({})).expect("create");
    store.delete(&deleted).expect("delete");
    let large = store
        .create("notes", &json!({ "blob": noise(2 * MAX_WHOLE_DOC_BYTES) }))
        .expect("create a large record");

    let mut session = welcomed(&store);
    let out = session.handle_frame(subscribe_with(true), 0, &OpenAccess, &store);
    let frames = drain(&mut session, &store, out);
    let (whole, announced) = sorted_out(&frames);

    let mut sent: Vec<DocId> = whole.iter().map(|w| w.doc).collect();
    sent.sort();
    let mut expected = small.clone();
    expected.sort();
    assert_eq!(sent, expected, "the small live documents go whole");
    let mut announced_sorted = announced.clone();
    announced_sorted.sort();
    let mut rest = vec![deleted, large];
    rest.sort();
    assert_eq!(
        announced_sorted, rest,
        "tombstones and large documents are announced"
    );
    for w in &whole {
        let loaded = Automerge::load(&w.data).expect("the saved form loads");
        let stored = store.local_state(&w.doc).expect("read").expect("known");
        assert_eq!(Heads::new(loaded.get_heads()), stored.heads, "{}", w.doc);
    }
    assert!(
        matches!(frames.last(), Some(Frame::Announce { complete: true, .. })),
        "the listing still ends with a complete announcement: {frames:?}"
    );
}

#[test]
fn without_whole_a_listing_only_announces() {
    let store = Replica::open_in_memory().expect("store");
    for i in 0..3 {
        store.create("notes", &json!({ "i": i })).expect("create");
    }
    let mut session = welcomed(&store);
    let out = session.handle_frame(subscribe_with(false), 0, &OpenAccess, &store);
    let frames = drain(&mut session, &store, out);
    let (whole, announced) = sorted_out(&frames);
    assert!(whole.is_empty());
    assert_eq!(announced.len(), 3);
}

#[test]
fn a_documents_frame_stays_within_its_byte_bound_and_the_listing_goes_on() {
    let store = Replica::open_in_memory().expect("store");
    // Ten documents of 200 KiB of random ids (about 150 KiB saved,
    // compressed): they take more than one frame of at most 1 MiB.
    let ids: Vec<DocId> = (0..10)
        .map(|_| {
            let text = noise(200 * 1024);
            store
                .create("notes", &json!({ "text": text }))
                .expect("create")
        })
        .collect();
    let mut session = welcomed(&store);
    let out = session.handle_frame(subscribe_with(true), 0, &OpenAccess, &store);
    let frames = drain(&mut session, &store, out);
    let mut frames_of_documents = 0;
    for f in &frames {
        if let Frame::Documents { docs, .. } = f {
            frames_of_documents += 1;
            let bytes: usize = docs.iter().map(|w| w.data.len()).sum();
            assert!(bytes <= WHOLE_FRAME_BYTES, "{bytes} bytes in one frame");
        }
    }
    assert!(
        frames_of_documents >= 2,
        "the page was cut: {frames_of_documents}"
    );
    let (whole, announced) = sorted_out(&frames);
    assert!(announced.is_empty());
    let mut sent: Vec<DocId> = whole.iter().map(|w| w.doc).collect();
    sent.sort();
    let mut expected = ids;
    expected.sort();
    assert_eq!(sent, expected, "every document once");
    let completes = frames
        .iter()
        .filter(|f| matches!(f, Frame::Announce { complete: true, .. }))
        .count();
    assert_eq!(completes, 1);
}

#[test]
fn a_subscribe_during_a_listing_gets_only_what_changed_since_it() {
    let store = Replica::open_in_memory().expect("store");
    for i in 0..(accord_engine::sync::session::ANNOUNCE_BATCH + 100) {
        store.create("notes", &json!({ "i": i })).expect("create");
    }
    let seq = store.collection_seq("notes").expect("seq");
    let subscribe = || Frame::SubscribeSince {
        collections: vec![SubscribeFrom {
            collection: "notes".into(),
            cursor: None,
        }],
    };
    let mut session = welcomed(&store);
    let mut out = session.handle_frame(subscribe(), 0, &OpenAccess, &store);
    // The first page goes out; the replica's agreement check subscribes
    // again while the listing is under way.
    match session.next_announcement(0, &store) {
        Announcing::Page(page) => out.extend(page),
        other => panic!("a first page: {other:?}"),
    }
    let late = store
        .create("notes", &json!({ "late": true }))
        .expect("create");
    out.extend(session.handle_frame(subscribe(), 0, &OpenAccess, &store));
    let frames = drain(&mut session, &store, out);
    let headers: Vec<(Option<u64>, u64)> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Listing { since, seq, .. } => Some((*since, *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(headers, vec![(None, seq), (Some(seq), seq + 1)]);
    let (_, announced) = sorted_out(&frames);
    // The whole collection once, then only what changed after the first
    // listing's number (the late record, which the first listing may or
    // may not have reached in id order).
    assert!(announced.len() <= accord_engine::sync::session::ANNOUNCE_BATCH + 102);
    assert_eq!(announced.last(), Some(&late));
}

/// A replica session, connected and welcomed by relay `relay`.
fn client(replica: &Replica) -> (ClientSession, Vec<ClientOutput>) {
    let mut session = ClientSession::new(ClientConfig {
        peer_id: PeerId::new("replica").expect("peer id"),
        token: String::new(),
        collections: [notes()].into(),
        max_in_flight: 8,
        max_frame_bytes: 1 << 20,
    });
    let mut out = session.connected(0, replica);
    out.extend(session.handle_frame(
        0,
        Frame::Welcome {
            version: PROTOCOL_VERSION,
            relay_id: "relay".into(),
            expires_at_ms: None,
        },
        replica,
    ));
    (session, out)
}

fn whole_flag(out: &[ClientOutput]) -> Option<bool> {
    out.iter().find_map(|o| match o {
        ClientOutput::Send(Frame::SubscribeWith { collections }) => {
            collections.first().map(|c| c.whole)
        }
        _ => None,
    })
}

#[test]
fn a_replica_asks_for_documents_whole_only_while_it_holds_none() {
    let empty = Replica::open_in_memory().expect("replica");
    assert_eq!(whole_flag(&client(&empty).1), Some(true));
    let holding = Replica::open_in_memory().expect("replica");
    holding.create("notes", &json!({})).expect("create");
    assert_eq!(whole_flag(&client(&holding).1), Some(false));
}

#[test]
fn a_replica_takes_documents_whole_and_falls_back_to_an_exchange_for_bad_bytes() {
    let relay = Replica::open_in_memory().expect("relay store");
    let good = relay
        .create("notes", &json!({ "name": "Ada" }))
        .expect("create");
    relay.put(&good, "age", &json!(36), None).expect("change");
    let data = relay
        .saved_form(&good, MAX_WHOLE_DOC_BYTES)
        .expect("read")
        .expect("saved form");
    let bad = DocId::random();

    let replica = Replica::open_in_memory().expect("replica");
    let (mut session, _) = client(&replica);
    let out = session.handle_frame(
        0,
        Frame::Documents {
            collection: "notes".into(),
            docs: vec![
                WholeDoc { doc: good, data },
                WholeDoc {
                    doc: bad,
                    data: b"not automerge".to_vec(),
                },
            ],
        },
        &replica,
    );
    assert_eq!(
        replica.get(&good).expect("stored").value,
        json!({ "name": "Ada", "age": 36 })
    );
    assert_eq!(
        replica
            .local_state(&good)
            .expect("read")
            .expect("known")
            .heads,
        relay
            .local_state(&good)
            .expect("read")
            .expect("known")
            .heads
    );
    assert!(
        replica.local_state(&bad).expect("read").is_none(),
        "nothing stored"
    );
    let reported = out.iter().any(|o| {
        matches!(o, ClientOutput::Event(SessionEvent::LocalFailure { code, doc: Some(d), .. })
            if *code == ErrorCode::BAD_DOCUMENT && *d == bad)
    });
    assert!(reported, "the bad bytes are reported: {out:?}");
    let exchanged = out
        .iter()
        .any(|o| matches!(o, ClientOutput::Send(Frame::Sync { doc, .. }) if *doc == bad));
    assert!(exchanged, "the bad one is synced by exchange instead");
    let saved = out.iter().any(|o| {
        matches!(o, ClientOutput::SaveStates { states, .. }
            if states.iter().any(|s| s.doc == good))
    });
    assert!(
        saved,
        "the good one's sync state resumes from the sent heads"
    );
    assert_eq!(session.stats().docs_whole, 1);
    assert_eq!(session.stats().records_discovered, 1);
}

#[test]
fn a_cursor_after_a_whole_listing_covers_the_documents_it_brought() {
    let relay = Replica::open_in_memory().expect("relay store");
    let ids: Vec<DocId> = (0..3)
        .map(|i| relay.create("notes", &json!({ "i": i })).expect("create"))
        .collect();
    let seq = relay.collection_seq("notes").expect("seq");
    let docs = ids
        .iter()
        .map(|doc| WholeDoc {
            doc: *doc,
            data: relay
                .saved_form(doc, MAX_WHOLE_DOC_BYTES)
                .expect("read")
                .expect("saved"),
        })
        .collect();
    let frames = vec![
        Frame::Listing {
            collection: "notes".into(),
            since: None,
            seq,
        },
        Frame::Documents {
            collection: "notes".into(),
            docs,
        },
        Frame::Announce {
            collection: "notes".into(),
            docs: Vec::new(),
            complete: true,
        },
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("r.db")).expect("replica");
    let (mut session, _) = client(&replica);
    // As the driver does: the run is handled inside one commit, where the
    // documents' local numbers are not known yet.
    let mut run = frames;
    SyncDocs::commit_together(&replica, &mut || {
        for frame in run.drain(..) {
            for output in session.handle_frame(0, frame, &replica) {
                if let ClientOutput::SaveStates { relay, states } = output {
                    replica.save_sync_states(&relay, states).expect("states");
                }
            }
        }
    })
    .expect("commit");
    assert!(replica.sync_cursor(&notes()).expect("read").is_none());
    assert!(
        session.cursors_deferred(),
        "the cursor waits for the commit"
    );
    SyncDocs::commit_together(&replica, &mut || {
        session.save_deferred_cursors(0, &replica);
    })
    .expect("commit");
    let cursor = replica.sync_cursor(&notes()).expect("read").expect("saved");
    assert_eq!(cursor.relay_seq, seq);
    assert_eq!(
        cursor.local_seq,
        replica.collection_seq("notes").expect("local seq"),
        "every document the listing brought is covered"
    );
}

#[test]
fn a_document_edited_here_before_its_listing_ends_is_offered_at_the_end() {
    let relay = Replica::open_in_memory().expect("relay store");
    let doc = relay.create("notes", &json!({ "n": 1 })).expect("create");
    let data = relay
        .saved_form(&doc, MAX_WHOLE_DOC_BYTES)
        .expect("read")
        .expect("saved");
    let replica = Replica::open_in_memory().expect("replica");
    let (mut session, _) = client(&replica);
    session.handle_frame(
        0,
        Frame::Documents {
            collection: "notes".into(),
            docs: vec![WholeDoc { doc, data }],
        },
        &replica,
    );
    // Edited before the listing's end: the session leaves it to the end.
    replica.put(&doc, "n", &json!(2), None).expect("edit");
    let change = accord_engine::sync::client::LocalChange::Content;
    assert!(session
        .local_change(0, doc, &notes(), change, &replica)
        .is_empty());
    let out = session.handle_frame(
        0,
        Frame::Announce {
            collection: "notes".into(),
            docs: Vec::new(),
            complete: true,
        },
        &replica,
    );
    let offered = out
        .iter()
        .any(|o| matches!(o, ClientOutput::Send(Frame::Sync { doc: d, .. }) if *d == doc));
    assert!(offered, "the edit is offered: {out:?}");
}

#[test]
fn documents_sent_whole_count_their_bytes_against_the_announcement_budget() {
    use accord_engine::sync::limits::WHOLE_UNIT_BYTES;
    use accord_engine::sync::Limits;
    let store = Replica::open_in_memory().expect("store");
    for _ in 0..10 {
        store
            .create("notes", &json!({ "text": noise(200 * 1024) }))
            .expect("create");
    }
    // A budget of 300 documents, hardly refilled: by count, every page of
    // ten documents would fit; by bytes, the first page spends it.
    let limits = Limits {
        announce_per_sec: 0.001,
        announce_burst: 300.0,
        ..Limits::unlimited()
    };
    let mut session = RelaySession::with_limits("relay", limits);
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: "peer".into(),
        token: String::new(),
    };
    session.handle_frame(hello, 0, &OpenAccess, &store);
    session.handle_frame(subscribe_with(true), 0, &OpenAccess, &store);
    let first = match session.next_announcement(0, &store) {
        Announcing::Page(page) => page,
        other => panic!("a first page: {other:?}"),
    };
    let sent: usize = first
        .iter()
        .filter_map(|o| match o {
            accord_engine::sync::RelayOutput::Send(Frame::Documents { docs, .. }) => {
                Some(docs.iter().map(|w| w.data.len()).sum::<usize>())
            }
            _ => None,
        })
        .sum();
    assert!(
        sent > 300 * WHOLE_UNIT_BYTES,
        "{sent} bytes in the first page"
    );
    assert!(
        matches!(
            session.next_announcement(0, &store),
            Announcing::NotBefore(_)
        ),
        "the next page waits for the budget"
    );
}
