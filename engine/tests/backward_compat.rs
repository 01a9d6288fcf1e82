//! Backward compatibility: databases written by older builds keep opening.
//!
//! `tests/fixtures/v1.db` was written by the schema-version-1 code through
//! the public API, by [`regenerate_v1_fixture`]. The test opens a copy with
//! the current code and checks everything the generator wrote: content of
//! every value type, listings, a tombstone, histories with messages, a
//! record stored as a compacted snapshot, a record with two heads after a
//! merge, and a peer's sync state. The expected ids and hashes below are the
//! ones the generator printed. Never regenerate a fixture that shipped: add
//! `v2.db` next to it when the schema changes.

use std::path::{Path, PathBuf};

use accord_engine::automerge::sync::{State as SyncState, SyncDoc};
use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ChangeHash, ObjType, ScalarValue, ROOT};
use accord_engine::store::{Store, WriteOp, APPLICATION_ID};
use accord_engine::{DocId, Durability, Error, ListOptions, Origin, Replica, ReplicaOptions};
use rusqlite::Connection;
use serde_json::{json, Value};

/// Set to `1` to rewrite `tests/fixtures/v1.db` (only when creating it).
const REGENERATE_ENV: &str = "ACCORD_REGENERATE_FIXTURES";
/// The peer whose sync state the fixture holds.
const PEER: &str = "relay-1";

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.db")
}

/// What the generator wrote. Ids and hashes as it printed them.
mod v1 {
    pub const ADA: &str = "38Mi4rPHEM9P3FQpHsDJtzyfEpXD";
    pub const BOB: &str = "cUBK3SbYEf1HGLrNJVCqTYZYa3a";
    pub const CY: &str = "vmRpYtc9636FtsGjAdoxehYoUG";
    pub const NOTE: &str = "2sqPBCmAY3CauqZPX2cBEMYDJM1m";
    pub const MERGED: &str = "2grAm3i7YmKnMXmQhEH5Hg49Tuc6";
    /// Ada's history: (hash, message), oldest first.
    pub const ADA_HISTORY: &[(&str, Option<&str>)] = &[
        (
            "b31263a572dd17777c9f1d85fa5691bbd5c9b21d5e9c238f1105148863a42713",
            None,
        ),
        (
            "fd19e1aa4dbcd9566ed1296c2b838c7140fd4c6d132d644f55e50849ad1ad068",
            Some("add phone"),
        ),
        (
            "4eec4611ccaf95d5cf33f5ff93f3ed7fafec2c18f68f0236d19f94cd50223c34",
            Some("tag"),
        ),
    ];
    /// Bob's history.
    pub const BOB_HISTORY: &[(&str, Option<&str>)] = &[
        (
            "0297d6361107f40e824cdbd266b77e6733e98c1a72e8dbde62fdb83fb21fa469",
            None,
        ),
        (
            "3bb8ecae76a5379ef3894bcc18bd605d4698373d4360a8936ad2e4bff27bf5ce",
            Some("age"),
        ),
    ];
    /// The first and last change of Cy's eleven.
    pub const CY_FIRST: &str = "24e755f1c5ae2d71560beb3de57b08f67fde7cb04546dbd69b734667869fd9ad";
    pub const CY_LAST: &str = "b6d8b30e554af1ada0e4d90d68b8948729b02bc2808d0e460a1ba92b37cb7f7a";
    /// The note's single change.
    pub const NOTE_HISTORY: &[(&str, Option<&str>)] = &[(
        "cda42d01b71b7cbd9c38dfb2e2aca029a3a2f5e09bae7a8e0ee373aad32a5072",
        Some("create note"),
    )];
    /// The two heads of the merged record, sorted.
    pub const MERGED_HEADS: &[&str] = &[
        "1878771b5f83b65538bc04d780b7c26a825f3d0917ffca9f782315029fddb0b2",
        "e1612ec5b3b43fc5e42acdc83d9ccd6bcc84ee46db544a9af4b17d2ed9682c22",
    ];
    /// When Bob was deleted (ms since the epoch).
    pub const BOB_DELETED_AT: i64 = 1_795_693_467_977;
}

fn id(text: &str) -> DocId {
    text.parse().expect("fixture id")
}

fn hash(text: &str) -> ChangeHash {
    text.parse().expect("fixture hash")
}

fn hashes(texts: &[&str]) -> Vec<ChangeHash> {
    texts.iter().map(|t| hash(t)).collect()
}

/// Copies the fixture into a temporary directory; the original is never
/// opened for writing.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    std::fs::copy(fixture_path(), &path).expect("fixture v1.db is present");
    (dir, path)
}

fn open(path: &Path) -> Replica {
    let options = ReplicaOptions {
        must_exist: true,
        ..ReplicaOptions::default()
    };
    Replica::open_with(path, options).expect("a v1 database opens")
}

fn assert_history(replica: &Replica, doc: &DocId, expected: &[(&str, Option<&str>)]) {
    let history: Vec<(String, Option<String>)> = replica
        .history(doc)
        .expect("history")
        .into_iter()
        .map(|c| (c.hash.to_string(), c.message))
        .collect();
    let expected: Vec<(String, Option<String>)> = expected
        .iter()
        .map(|(h, m)| ((*h).to_owned(), m.map(str::to_owned)))
        .collect();
    assert_eq!(history, expected, "history of {doc}");
}

#[test]
fn the_fixture_is_a_clean_schema_1_file() {
    let raw = std::fs::read(fixture_path()).expect("fixture");
    assert!(raw.starts_with(b"SQLite format 3\0"));
    // Bytes 18 and 19 of the header are 2 in WAL mode.
    assert_eq!((raw[18], raw[19]), (2, 2), "written in WAL mode");
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", fixture_path().display()));
        assert!(!side.exists(), "{} must not be committed", side.display());
    }
    let (_dir, path) = copy_fixture();
    let conn = Connection::open(&path).expect("sqlite");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("application_id");
    assert_eq!((version, app), (1, APPLICATION_ID));
}

#[test]
fn a_v1_database_opens_with_its_content_listing_tombstone_and_history() {
    let (_dir, path) = copy_fixture();
    let r = open(&path);
    let (ada, bob, cy, note, merged) = (
        id(v1::ADA),
        id(v1::BOB),
        id(v1::CY),
        id(v1::NOTE),
        id(v1::MERGED),
    );

    assert_eq!(
        r.collections().expect("collections"),
        vec![("contacts".to_owned(), 2), ("notes".to_owned(), 2)]
    );
    let listed = |options: ListOptions| -> Vec<DocId> {
        r.list_with(&options)
            .expect("list")
            .into_iter()
            .map(|m| m.id)
            .collect()
    };
    let sorted = |mut ids: Vec<DocId>| {
        ids.sort();
        ids
    };
    assert_eq!(
        listed(ListOptions {
            collection: Some("contacts".into()),
            include_deleted: false,
        }),
        sorted(vec![ada, cy])
    );
    assert_eq!(
        listed(ListOptions {
            collection: Some("contacts".into()),
            include_deleted: true,
        }),
        sorted(vec![ada, bob, cy])
    );
    assert_eq!(
        listed(ListOptions {
            collection: Some("notes".into()),
            include_deleted: false,
        }),
        sorted(vec![note, merged])
    );

    assert_eq!(
        r.get(&ada).expect("ada").value,
        json!({"name": "Ada Lovelace", "email": "ada@example.org",
               "tags": ["math", "engines"], "phone": "+44 20 7946 0000"})
    );
    assert_history(&r, &ada, v1::ADA_HISTORY);
    let first = [hash(v1::ADA_HISTORY[0].0)];
    assert_eq!(
        r.get_at(&ada, &first).expect("ada at first").value,
        json!({"name": "Ada Lovelace", "email": "ada@example.org", "tags": ["math"]})
    );

    // The tombstone: gone from get and listings, history kept.
    assert!(matches!(r.get(&bob), Err(Error::Deleted(d)) if d == bob));
    let meta = r.meta(&bob).expect("bob meta");
    assert!(meta.deleted);
    assert_eq!(meta.deleted_at, Some(v1::BOB_DELETED_AT));
    assert_history(&r, &bob, v1::BOB_HISTORY);
    let bob_heads = hashes(&[v1::BOB_HISTORY[1].0]);
    assert_eq!(
        r.get_at(&bob, &bob_heads).expect("bob at heads").value,
        json!({"name": "Bob", "age": 42})
    );

    // Cy was compacted into one snapshot of eleven changes.
    let meta = r.meta(&cy).expect("cy meta");
    assert_eq!((meta.chunk_count, meta.change_count), (1, 11));
    assert_eq!(
        r.get(&cy).expect("cy").value,
        json!({"name": "Cy", "visits": 10})
    );
    let history = r.history(&cy).expect("cy history");
    assert_eq!(history.len(), 11);
    assert_eq!(history[0].hash, hash(v1::CY_FIRST));
    assert_eq!(history[10].hash, hash(v1::CY_LAST));
    assert_eq!(r.heads(&cy).expect("heads"), vec![hash(v1::CY_LAST)]);

    // Every value type, and the JSON mapping of each.
    assert_eq!(
        r.get(&note).expect("note").value,
        json!({"title": "Shopping", "body": "milk, eggs", "items": ["milk", "eggs"],
               "views": 5, "at": 1_700_000_000_000_i64, "blob": "AQID", "ratio": 0.25,
               "big": u64::MAX, "done": false, "nothing": null})
    );
    assert_history(&r, &note, v1::NOTE_HISTORY);
    r.read(&note, |doc, _| {
        use accord_engine::automerge::ReadDoc;
        let (_, body) = doc.get(ROOT, "body").expect("get").expect("body");
        assert_eq!(doc.object_type(&body).expect("type"), ObjType::Text);
        assert_eq!(doc.text(&body).expect("text"), "milk, eggs");
    })
    .expect("read");

    // Two concurrent changes, merged: two heads, stored sorted.
    let heads = r.heads(&merged).expect("merged heads");
    assert_eq!(heads, hashes(v1::MERGED_HEADS));
    assert_eq!(r.meta(&merged).expect("meta").heads, heads);
    assert_eq!(
        r.get(&merged).expect("merged").value,
        json!({"title": "from A", "body": "from B", "n": 0})
    );
    assert_eq!(r.history(&merged).expect("history").len(), 3);

    // Schema 4 numbered the file's documents per collection, each once, in
    // order of their last write, and the next write takes the next number.
    for (collection, count) in [("contacts", 3), ("notes", 2)] {
        let feed = r.changes_since(collection, 0, 100).expect("feed");
        let seqs: Vec<u64> = feed.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<u64>>(), "{collection}");
        assert_eq!(r.collection_seq(collection).expect("seq"), count);
    }
    let feed = r.changes_since("contacts", 0, 100).expect("feed");
    assert!(feed
        .iter()
        .any(|e| e.kind == accord_engine::ChangeKind::Deleted));
    r.put(&ada, "v", &json!(2), None).expect("put");
    let after = r.changes_since("contacts", 3, 100).expect("feed");
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].id, after[0].seq), (ada, 4));
}

#[test]
fn a_v1_database_keeps_its_sync_state_and_takes_new_writes() {
    let (_dir, path) = copy_fixture();
    let ada = id(v1::ADA);
    let store = Store::open_existing(&path, Durability::Full).expect("store");
    let bytes = store
        .sync_state(PEER, &ada)
        .expect("sync_state")
        .expect("the fixture holds a sync state");
    let state = SyncState::decode(&bytes).expect("decodes");
    let ada_head = v1::ADA_HISTORY.last().expect("history").0;
    assert_eq!(state.shared_heads, hashes(&[ada_head]));
    assert_eq!(store.sync_state("someone-else", &ada).expect("query"), None);
    assert_eq!(
        store.integrity_check().expect("check"),
        Vec::<String>::new()
    );
    drop(store);

    let r = open(&path);
    r.put(&ada, "email", &json!("ada@new.example"), Some("move"))
        .expect("write to a v1 record");
    let fresh = r
        .create("contacts", &json!({"name": "Dee"}))
        .expect("create");
    drop(r);
    let r = open(&path);
    assert_eq!(
        r.get(&ada).expect("ada").value["email"],
        json!("ada@new.example")
    );
    assert_eq!(
        r.history(&ada).expect("history").len(),
        v1::ADA_HISTORY.len() + 1
    );
    assert_eq!(r.get(&fresh).expect("dee").value, json!({"name": "Dee"}));
    assert_eq!(r.list("contacts").expect("list").len(), 3);
}

/// Writes `tests/fixtures/v1.db` when `ACCORD_REGENERATE_FIXTURES=1`, and
/// prints the ids and hashes to paste into [`v1`]; otherwise does nothing.
/// Run it only to create a fixture for a new schema version, with the code
/// of that version.
#[test]
fn regenerate_v1_fixture() {
    if std::env::var(REGENERATE_ENV).as_deref() != Ok("1") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    let r = Replica::open(&path).expect("open");

    let ada = r
        .create(
            "contacts",
            &json!({"name": "Ada Lovelace", "email": "ada@example.org", "tags": ["math"]}),
        )
        .expect("ada");
    r.put(&ada, "phone", &json!("+44 20 7946 0000"), Some("add phone"))
        .expect("phone");
    r.put(&ada, "tags.1", &json!("engines"), Some("tag"))
        .expect("tag");

    let bob = r.create("contacts", &json!({"name": "Bob"})).expect("bob");
    r.put(&bob, "age", &json!(42), Some("age")).expect("age");
    r.delete(&bob).expect("delete bob");

    let cy = r
        .create("contacts", &json!({"name": "Cy", "visits": 0}))
        .expect("cy");
    for n in 1..=10 {
        r.put(&cy, "visits", &json!(n), None).expect("visit");
    }
    r.compact(&cy).expect("compact cy");

    let note = r
        .create_with("notes", Some("create note"), |tx| {
            tx.put(ROOT, "title", "Shopping")?;
            let body = tx.put_object(ROOT, "body", ObjType::Text)?;
            tx.splice_text(&body, 0, 0, "milk, eggs")?;
            let items = tx.put_object(ROOT, "items", ObjType::List)?;
            tx.insert(&items, 0, "milk")?;
            tx.insert(&items, 1, "eggs")?;
            tx.put(ROOT, "views", ScalarValue::counter(5))?;
            tx.put(ROOT, "at", ScalarValue::Timestamp(1_700_000_000_000))?;
            tx.put(ROOT, "blob", ScalarValue::Bytes(vec![1, 2, 3]))?;
            tx.put(ROOT, "ratio", 0.25)?;
            tx.put(ROOT, "big", ScalarValue::Uint(u64::MAX))?;
            tx.put(ROOT, "done", false)?;
            tx.put(ROOT, "nothing", ScalarValue::Null)
        })
        .expect("note");

    let merged = r.create("notes", &json!({"n": 0})).expect("merged");
    let other = Replica::open_in_memory().expect("other replica");
    let saved = r.save(&merged).expect("save");
    other
        .merge_bytes(
            &merged,
            "notes",
            &saved,
            Origin::Remote("a".parse().expect("valid peer id")),
        )
        .expect("other gets it");
    r.put(&merged, "title", &json!("from A"), Some("title"))
        .expect("a");
    other
        .put(&merged, "body", &json!("from B"), Some("body"))
        .expect("b");
    let theirs = other.save(&merged).expect("save");
    r.merge_bytes(
        &merged,
        "notes",
        &theirs,
        Origin::Remote("b".parse().expect("valid peer id")),
    )
    .expect("merge");

    print_constants(&r, [ada, bob, cy, note, merged]);
    let ada_bytes = r.save(&ada).expect("save ada");
    drop(r);

    // A finished sync with a peer, as the sync layer would persist it.
    let state = synced_state(&ada_bytes);
    let mut store = Store::open(&path, Durability::Full).expect("store");
    let op = WriteOp::SyncState {
        peer: PEER.into(),
        doc: ada,
        state: state.encode(),
    };
    let results = store.apply(&[&[op]]).expect("apply");
    assert!(results.iter().all(Result::is_ok));
    drop(store);
    accord_engine::testing::write_fixture(&path, &fixture_path());
}

/// The sync state of a replica that has finished syncing `bytes`' document
/// with a peer (its shared heads are the document's heads).
fn synced_state(bytes: &[u8]) -> SyncState {
    let mut ours = Automerge::load(bytes).expect("load");
    let mut theirs = Automerge::new();
    let (mut our_state, mut their_state) = (SyncState::new(), SyncState::new());
    for _ in 0..10 {
        let a = ours.generate_sync_message(&mut our_state);
        let b = theirs.generate_sync_message(&mut their_state);
        if a.is_none() && b.is_none() {
            break;
        }
        if let Some(m) = a {
            theirs
                .receive_sync_message(&mut their_state, m)
                .expect("receive");
        }
        if let Some(m) = b {
            ours.receive_sync_message(&mut our_state, m)
                .expect("receive");
        }
    }
    assert_eq!(our_state.shared_heads, ours.get_heads());
    our_state
}

fn print_constants(r: &Replica, [ada, bob, cy, note, merged]: [DocId; 5]) {
    let history = |d: &DocId| -> String {
        let items: Vec<String> = r
            .history(d)
            .expect("history")
            .into_iter()
            .map(|c| format!("(\"{}\", {:?})", c.hash, c.message))
            .collect();
        format!("&[{}]", items.join(", "))
    };
    let cy_history = r.history(&cy).expect("history");
    let merged_heads: Vec<String> = r
        .heads(&merged)
        .expect("heads")
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect();
    let meta: Value = json!(r.meta(&bob).expect("meta").deleted_at);
    println!("pub const ADA: &str = \"{ada}\";");
    println!("pub const BOB: &str = \"{bob}\";");
    println!("pub const CY: &str = \"{cy}\";");
    println!("pub const NOTE: &str = \"{note}\";");
    println!("pub const MERGED: &str = \"{merged}\";");
    println!("pub const ADA_HISTORY = {};", history(&ada));
    println!("pub const BOB_HISTORY = {};", history(&bob));
    println!("pub const CY_FIRST: &str = \"{}\";", cy_history[0].hash);
    println!("pub const CY_LAST: &str = \"{}\";", cy_history[10].hash);
    println!("pub const NOTE_HISTORY = {};", history(&note));
    println!("pub const MERGED_HEADS = &[{}];", merged_heads.join(", "));
    println!("pub const BOB_DELETED_AT: i64 = {meta};");
}
