//! Backward compatibility of schema 4: `tests/fixtures/v4.db` was written
//! by the schema-version-4 code through the public API, by
//! [`regenerate_v4_fixture`]. It holds what schema 4 added — collection
//! sequences, a replica's sync cursor, a feed consumer's cursor and a dead
//! letter — beside records, a tombstone and a sync state. The test opens a
//! copy with the current code and checks all of it, and that numbering
//! goes on from where the file left it. Never regenerate a fixture that
//! shipped: when the schema changes, add the next one beside it.

use std::path::{Path, PathBuf};

use accord_engine::automerge::sync::State;
use accord_engine::store::DeadLetter;
use accord_engine::sync::{EncodedState, SyncCursor, SyncDocs};
use accord_engine::{ChangeKind, Collection, DocId, PeerId, Replica};
use rusqlite::Connection;
use serde_json::json;

/// Set to `1` to write `tests/fixtures/v4.db` (only when creating it).
const REGENERATE_ENV: &str = "ACCORD_REGENERATE_V4_FIXTURE";
/// The relay the fixture's replica synced with.
const RELAY: &str = "relay-1";

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v4.db")
}

fn contacts() -> Collection {
    Collection::new("contacts").expect("a valid name")
}

fn relay() -> PeerId {
    PeerId::new(RELAY).expect("a valid peer id")
}

/// Writes the fixture when [`REGENERATE_ENV`] is `1`; otherwise does
/// nothing. Contacts Ada (then given a phone), Grace and Bob (then
/// deleted), numbered 1, 2, 3, then 4 and 5; a task; the feed consumer
/// `hook` at 4, which then gave up on batch 5; a sync cursor of `relay-1`
/// and its sync state for Ada.
#[test]
fn regenerate_v4_fixture() {
    if std::env::var(REGENERATE_ENV).as_deref() != Ok("1") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v4.db");
    let r = Replica::open(&path).expect("open");
    let ada = r
        .create("contacts", &json!({"name": "Ada Lovelace"}))
        .expect("ada");
    r.create("contacts", &json!({"name": "Grace Hopper"}))
        .expect("grace");
    let bob = r.create("contacts", &json!({"name": "Bob"})).expect("bob");
    r.put(&ada, "phone", &json!("555-0100"), Some("phone"))
        .expect("phone");
    r.delete(&bob).expect("delete bob");
    r.create("tasks", &json!({"title": "ship v4"}))
        .expect("task");
    r.set_feed_cursor("hook", "contacts", 4)
        .expect("feed cursor");
    r.give_up(DeadLetter {
        id: 0,
        consumer: "hook".into(),
        collection: "contacts".into(),
        first_seq: 5,
        last_seq: 5,
        body: r#"[{"seq":5}]"#.into(),
        attempts: 3,
        error: "HTTP 500".into(),
        failed_at: 0,
    })
    .expect("dead letter");
    let cursor = SyncCursor {
        relay: relay(),
        relay_seq: 42,
        local_seq: 5,
        write: false,
    };
    r.save_sync_cursor(&contacts(), &cursor).expect("cursor");
    let mut state = State::new();
    state.shared_heads = r.heads(&ada).expect("heads").into_vec();
    let encoded = EncodedState {
        doc: ada,
        bytes: state.encode(),
    };
    r.save_sync_states(&relay(), vec![encoded])
        .expect("sync state");
    drop(r);
    accord_engine::testing::write_fixture(&path, &fixture_path());
}

/// The record of `collection` named `name`.
fn named(r: &Replica, name: &str) -> DocId {
    r.changes_since("contacts", 0, 10)
        .expect("feed")
        .into_iter()
        .find(|e| e.value.as_ref().is_some_and(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("{name} is in the fixture"))
        .id
}

#[test]
fn a_v4_database_keeps_its_sequences_cursors_and_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v4.db");
    std::fs::copy(fixture_path(), &path).expect("fixture v4.db is present");
    let version: i64 = Connection::open(&path)
        .expect("sqlite")
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("user_version");
    assert_eq!(version, 4, "written by the schema 4 code");

    let r = Replica::open(&path).expect("opens with the current code");
    let (ada, grace, bob) = (
        named(&r, "Ada Lovelace"),
        named(&r, "Grace Hopper"),
        named(&r, "Bob"),
    );
    assert_eq!(
        r.get(&ada).expect("ada").value,
        json!({"name": "Ada Lovelace", "phone": "555-0100"})
    );
    let listed: Vec<DocId> = r
        .list("contacts")
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed.len(), 2, "Bob is deleted");
    assert!(listed.contains(&ada) && listed.contains(&grace));
    assert!(r.meta(&bob).expect("tombstone").deleted);

    // The sequences, in order of each record's latest write.
    assert_eq!(r.collection_seq("contacts").expect("seq"), 5);
    assert_eq!(r.collection_seq("tasks").expect("seq"), 1);
    let feed: Vec<(u64, DocId, ChangeKind)> = r
        .changes_since("contacts", 0, 10)
        .expect("feed")
        .into_iter()
        .map(|e| (e.seq, e.id, e.kind))
        .collect();
    assert_eq!(
        feed,
        vec![
            (2, grace, ChangeKind::Created),
            (4, ada, ChangeKind::Created),
            (5, bob, ChangeKind::Deleted),
        ]
    );
    let later: Vec<DocId> = r
        .changes_since("contacts", 4, 10)
        .expect("feed")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(later, vec![bob]);

    // The feed consumer and what it gave up on.
    assert_eq!(r.feed_cursor("hook", "contacts").expect("cursor"), 5);
    let letters = r.dead_letters(Some("hook")).expect("letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].first_seq,
            letters[0].last_seq,
            letters[0].error.as_str()
        ),
        (5, 5, "HTTP 500")
    );

    // The replica's sync bookkeeping with its relay.
    assert_eq!(
        r.sync_cursor(&contacts()).expect("cursor"),
        // Written before cursors kept the right to write: read as none.
        Some(SyncCursor {
            relay: relay(),
            relay_seq: 42,
            local_seq: 5,
            write: false,
        })
    );
    let state = r
        .load_sync_state(&relay(), &ada)
        .expect("read")
        .expect("Ada's sync state");
    assert_eq!(state.shared_heads, r.heads(&ada).expect("heads").into_vec());

    // Numbering goes on from the file's last number.
    r.put(&grace, "age", &json!(85), None).expect("write");
    assert_eq!(r.collection_seq("contacts").expect("seq"), 6);
    let last = r.changes_since("contacts", 5, 10).expect("feed");
    assert_eq!(
        last.iter().map(|e| (e.seq, e.id)).collect::<Vec<_>>(),
        vec![(6, grace)]
    );
}
