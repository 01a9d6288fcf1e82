//! Damaged databases: a corrupt document is reported with its id and spares
//! every other document; a file that is not an Accord database is refused
//! with a clear error. Damage is done with plain SQL on real SQLite files,
//! the way a bad disk, a bad copy or a foreign tool would do it.

use std::path::{Path, PathBuf};

use accord_engine::store::{Store, APPLICATION_ID};
use accord_engine::{DocId, Durability, Error, ListOptions, Replica, ReplicaOptions, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

/// How many records the sample database holds.
const RECORDS: usize = 5;
/// How many `put`s each record gets after its creation (one incremental
/// chunk each).
const PUTS: u64 = 4;
/// The record that gets damaged.
const VICTIM: usize = 2;

/// A database with [`RECORDS`] records, each stored as one snapshot plus
/// [`PUTS`] incremental chunks; record `i` holds [`expected`]`(i)`.
struct Sample {
    dir: tempfile::TempDir,
    ids: Vec<DocId>,
}

impl Sample {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let replica = Replica::open_with(dir.path().join("r.db"), no_compaction()).expect("open");
        let ids = (0..RECORDS)
            .map(|i| {
                let id = replica
                    .create("c", &json!({"i": i, "name": format!("record {i}")}))
                    .expect("create");
                for n in 1..=PUTS {
                    replica
                        .put(&id, "n", &json!(n), Some(&format!("n = {n}")))
                        .expect("put");
                }
                id
            })
            .collect();
        drop(replica);
        Sample { dir, ids }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("r.db")
    }

    fn victim(&self) -> DocId {
        self.ids[VICTIM]
    }
}

fn no_compaction() -> ReplicaOptions {
    ReplicaOptions {
        compact_after_chunks: u64::MAX,
        durability: Durability::Normal,
        ..ReplicaOptions::default()
    }
}

fn expected(i: usize) -> Value {
    json!({"i": i, "name": format!("record {i}"), "n": PUTS})
}

/// The ways one document's chunks get damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The snapshot replaced by random bytes of the same length.
    GarbageSnapshot,
    /// One byte in the middle of an incremental chunk flipped.
    FlipByte,
    /// The snapshot cut in half.
    TruncateSnapshot,
    /// The last incremental chunk cut short by one byte.
    TruncateLastIncremental,
    /// An incremental chunk emptied.
    EmptyIncremental,
    /// An incremental chunk in the middle deleted.
    DeleteMiddleIncremental,
    /// The newest incremental chunk deleted.
    DeleteLastIncremental,
    /// The snapshot deleted (only incremental chunks remain).
    DeleteSnapshot,
    /// The snapshot replaced by another record's snapshot.
    ForeignSnapshot,
    /// An incremental chunk replaced by a forged bundle chunk whose header
    /// makes Automerge 0.12 panic before it checks the checksum (found by
    /// fuzzing, `fuzz/regressions/chunks/`).
    PanickingChunk,
    /// An incremental chunk's kind code set to one this build does not
    /// know (past the table's CHECK constraint, as a foreign tool could).
    UnknownKind,
    /// An incremental chunk's kind set to text.
    TextKind,
}

/// The bundle chunk of the `chunks` fuzz target's regression (its first
/// byte is the target's own selector, not part of the chunk).
const PANICKING_CHUNK: &[u8] =
    include_bytes!("../../fuzz/regressions/chunks/bundle-chunk-panics-before-its-checksum");

const ALL_DAMAGE: [Damage; 12] = [
    Damage::GarbageSnapshot,
    Damage::FlipByte,
    Damage::TruncateSnapshot,
    Damage::TruncateLastIncremental,
    Damage::EmptyIncremental,
    Damage::DeleteMiddleIncremental,
    Damage::DeleteLastIncremental,
    Damage::DeleteSnapshot,
    Damage::ForeignSnapshot,
    Damage::PanickingChunk,
    Damage::UnknownKind,
    Damage::TextKind,
];

/// Applies `damage` to `doc`'s chunks with plain SQL.
fn inflict(path: &Path, doc: &DocId, other: &DocId, damage: Damage) {
    let conn = Connection::open(path).expect("sqlite");
    let id = doc.as_bytes().as_slice();
    let seqs: Vec<i64> = {
        let mut stmt = conn
            .prepare("SELECT seq FROM chunks WHERE doc = ?1 ORDER BY seq")
            .expect("prepare");
        let rows = stmt.query_map([id], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("seqs")
    };
    assert_eq!(seqs.len() as u64, 1 + PUTS, "sample layout");
    let (first, middle, last) = (seqs[0], seqs[seqs.len() / 2], seqs[seqs.len() - 1]);
    let data = |seq: i64| -> Vec<u8> {
        conn.query_row(
            "SELECT data FROM chunks WHERE doc = ?1 AND seq = ?2",
            params![id, seq],
            |r| r.get(0),
        )
        .expect("chunk")
    };
    let set = |seq: i64, bytes: Vec<u8>| {
        let n = conn
            .execute(
                "UPDATE chunks SET data = ?3 WHERE doc = ?1 AND seq = ?2",
                params![id, seq, bytes],
            )
            .expect("update");
        assert_eq!(n, 1);
    };
    let delete = |seq: i64| {
        let n = conn
            .execute(
                "DELETE FROM chunks WHERE doc = ?1 AND seq = ?2",
                params![id, seq],
            )
            .expect("delete");
        assert_eq!(n, 1);
    };
    match damage {
        Damage::GarbageSnapshot => {
            let len = data(first).len();
            set(first, (0..len).map(|_| rand::random()).collect());
        }
        Damage::FlipByte => {
            let mut bytes = data(middle);
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
            set(middle, bytes);
        }
        Damage::TruncateSnapshot => {
            let bytes = data(first);
            set(first, bytes[..bytes.len() / 2].to_vec());
        }
        Damage::TruncateLastIncremental => {
            let bytes = data(last);
            set(last, bytes[..bytes.len() - 1].to_vec());
        }
        Damage::EmptyIncremental => set(middle, Vec::new()),
        Damage::DeleteMiddleIncremental => delete(middle),
        Damage::DeleteLastIncremental => delete(last),
        Damage::DeleteSnapshot => delete(first),
        Damage::ForeignSnapshot => {
            let foreign: Vec<u8> = conn
                .query_row(
                    "SELECT data FROM chunks WHERE doc = ?1 ORDER BY seq LIMIT 1",
                    [other.as_bytes().as_slice()],
                    |r| r.get(0),
                )
                .expect("foreign chunk");
            set(first, foreign);
        }
        Damage::PanickingChunk => set(middle, PANICKING_CHUNK[1..].to_vec()),
        Damage::UnknownKind | Damage::TextKind => {
            let kind = match damage {
                Damage::UnknownKind => rusqlite::types::Value::Integer(300),
                _ => rusqlite::types::Value::Text("snapshot".into()),
            };
            conn.pragma_update(None, "ignore_check_constraints", true)
                .expect("pragma");
            let n = conn
                .execute(
                    "UPDATE chunks SET kind = ?3 WHERE doc = ?1 AND seq = ?2",
                    params![id, middle, kind],
                )
                .expect("update kind");
            assert_eq!(n, 1);
        }
    }
}

/// Asserts that `result` is the corruption error of `doc` and that its
/// text names the document.
fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, Error>, doc: &DocId, what: &str) {
    match result {
        Err(e @ Error::Store(StoreError::Corrupt { doc: d, .. })) => {
            assert_eq!(d, *doc, "{what}: wrong document in {e}");
            assert!(
                e.to_string().contains(&doc.to_string()),
                "{what}: error does not name the document: {e}"
            );
        }
        other => panic!("{what}: expected a corruption error naming {doc}, got {other:?}"),
    }
}

/// Everything except the damaged record still works after reopening.
fn assert_others_intact(replica: &Replica, sample: &Sample, what: &str) {
    for (i, id) in sample.ids.iter().enumerate().filter(|(i, _)| *i != VICTIM) {
        let record = replica.get(id).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(record.value, expected(i), "{what}: record {i}");
        let history = replica.history(id).expect("history");
        assert_eq!(history.len() as u64, 1 + PUTS, "{what}: history of {i}");
        assert_eq!(history[1].message.as_deref(), Some("n = 1"), "{what}");
    }
}

#[test]
fn each_kind_of_chunk_damage_names_the_document_and_spares_the_others() {
    for damage in ALL_DAMAGE {
        let what = format!("{damage:?}");
        let sample = Sample::new();
        let victim = sample.victim();
        inflict(&sample.path(), &victim, &sample.ids[0], damage);

        let replica = Replica::open_with(sample.path(), no_compaction()).expect("reopen");
        assert_corrupt(replica.get(&victim), &victim, &what);
        // A failed load is not cached: asking again reports it again.
        assert_corrupt(replica.get(&victim), &victim, &what);
        assert_corrupt(replica.history(&victim), &victim, &what);
        assert_corrupt(replica.heads(&victim), &victim, &what);
        assert_corrupt(replica.save(&victim), &victim, &what);
        // Writes to the damaged record are refused, never stacked on top.
        assert_corrupt(replica.put(&victim, "n", &json!(99), None), &victim, &what);
        assert_corrupt(replica.compact(&victim), &victim, &what);
        assert_corrupt(replica.delete(&victim), &victim, &what);
        assert_others_intact(&replica, &sample, &what);

        // Listing reads only metadata, so the damaged record is still listed.
        let listed: Vec<DocId> = replica
            .list("c")
            .expect("list")
            .into_iter()
            .map(|m| m.id)
            .collect();
        let mut all = sample.ids.clone();
        all.sort();
        assert_eq!(listed, all, "{what}: listing");
        assert_eq!(
            replica.collections().expect("collections"),
            vec![("c".to_owned(), RECORDS as u64)]
        );

        // The rest of the database keeps taking writes.
        replica
            .put(&sample.ids[0], "after", &json!(true), None)
            .expect("write beside the damage");
        let fresh = replica.create("c", &json!({"fresh": 1})).expect("create");
        drop(replica);
        let replica = Replica::open_with(sample.path(), no_compaction()).expect("reopen");
        assert_eq!(
            replica.get(&sample.ids[0]).expect("get").value["after"],
            json!(true)
        );
        assert_eq!(replica.get(&fresh).expect("get").value, json!({"fresh": 1}));
        assert_corrupt(replica.get(&victim), &victim, &what);
    }
}

#[test]
fn damaged_heads_in_the_metadata_row_are_reported_with_the_document() {
    let sample = Sample::new();
    let victim = sample.victim();
    let conn = Connection::open(sample.path()).expect("sqlite");
    // Valid length, wrong hash: the chunks no longer load to these heads.
    conn.execute(
        "UPDATE docs SET heads = zeroblob(32) WHERE id = ?1",
        [victim.as_bytes().as_slice()],
    )
    .expect("update");
    drop(conn);
    let replica = Replica::open(sample.path()).expect("reopen");
    assert_corrupt(replica.get(&victim), &victim, "wrong heads");
    assert_others_intact(&replica, &sample, "wrong heads");
    assert_eq!(replica.list("c").expect("list").len(), RECORDS);
    drop(replica);

    // A length that is not a multiple of 32 does not even parse.
    let conn = Connection::open(sample.path()).expect("sqlite");
    conn.execute(
        "UPDATE docs SET heads = x'0102030405' WHERE id = ?1",
        [victim.as_bytes().as_slice()],
    )
    .expect("update");
    drop(conn);
    let replica = Replica::open(sample.path()).expect("reopen");
    let err = replica.get(&victim).expect_err("bad heads length");
    assert!(
        matches!(err, Error::Store(StoreError::BadRow(_)))
            && err.to_string().contains(&victim.to_string()),
        "{err}"
    );
    assert_others_intact(&replica, &sample, "bad heads length");
    // A listing that reaches the bad row says which document it is.
    let err = replica
        .list_with(&ListOptions::default())
        .expect_err("listing reaches the bad row");
    assert!(err.to_string().contains(&victim.to_string()), "{err}");
}

#[test]
fn random_byte_flips_and_truncations_never_panic_and_never_load_wrong_content() {
    let pristine = Sample::new();
    let victim = pristine.victim();
    let chunk_count = 1 + PUTS as usize;
    let work = tempfile::tempdir().expect("tempdir");
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..chunk_count,
        any::<prop::sample::Index>(),
        any::<u8>().prop_filter("a flip changes the byte", |b| *b != 0),
        any::<bool>(),
    );
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&strategy, |(chunk, at, mask, truncate)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = work.path().join(format!("case-{n}.db"));
            std::fs::copy(pristine.path(), &path).expect("copy");
            let conn = Connection::open(&path).expect("sqlite");
            let id = victim.as_bytes().as_slice();
            let (seq, mut bytes): (i64, Vec<u8>) = conn
                .query_row(
                    "SELECT seq, data FROM chunks WHERE doc = ?1 ORDER BY seq LIMIT 1 OFFSET ?2",
                    params![id, chunk as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("chunk");
            let at = at.index(bytes.len());
            if truncate {
                bytes.truncate(at);
            } else {
                bytes[at] ^= mask;
            }
            conn.execute(
                "UPDATE chunks SET data = ?3 WHERE doc = ?1 AND seq = ?2",
                params![id, seq, bytes],
            )
            .expect("update");
            drop(conn);

            let replica = Replica::open_with(&path, no_compaction()).expect("reopen");
            match replica.get(&victim) {
                // A flip Automerge cannot see must not change the content.
                Ok(record) => prop_assert_eq!(record.value, expected(VICTIM)),
                Err(e) => assert_corrupt(Err::<(), _>(e), &victim, "random damage"),
            }
            assert_others_intact(&replica, &pristine, "random damage");
            Ok(())
        })
        .expect("no damage may panic or load wrong content");
}

#[test]
fn a_file_that_is_not_an_accord_database_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Random bytes: SQLite's own "not a database".
    let noise = dir.path().join("noise.db");
    let bytes: Vec<u8> = (0..8192).map(|_| rand::random()).collect();
    std::fs::write(&noise, &bytes).expect("write");
    let err = Replica::open(&noise).expect_err("random bytes");
    assert!(
        matches!(err, Error::Store(StoreError::Sqlite(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a database"), "{err}");
    assert_eq!(
        std::fs::read(&noise).expect("read"),
        bytes,
        "left untouched"
    );

    // A text file.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "just some notes\n".repeat(200)).expect("write");
    let err = Replica::open(&text).expect_err("text file");
    assert!(err.to_string().contains("not a database"), "{err}");

    // Another application's SQLite database.
    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).expect("sqlite");
    conn.execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
        .expect("other app");
    drop(conn);
    let err = Replica::open(&other).expect_err("foreign database");
    assert!(
        matches!(&err, Error::Store(StoreError::NotAccord(p)) if p.contains("other.db")),
        "{err:?}"
    );
    assert!(err.to_string().contains("not an Accord database"), "{err}");
    let conn = Connection::open(&other).expect("sqlite");
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .expect("count");
    assert_eq!(tables, 1, "a refused database is not migrated");
    drop(conn);

    // An Accord database from a newer build.
    let newer = dir.path().join("newer.db");
    drop(Replica::open(&newer).expect("create"));
    let conn = Connection::open(&newer).expect("sqlite");
    conn.execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    drop(conn);
    let err = Replica::open(&newer).expect_err("newer schema");
    assert!(
        matches!(
            err,
            Error::Store(StoreError::SchemaTooNew {
                found: 99,
                supported: accord_engine::store::SCHEMA_VERSION
            })
        ),
        "{err:?}"
    );

    // A directory.
    let err = Replica::open(dir.path()).expect_err("a directory");
    assert!(!err.to_string().is_empty());

    // A missing file when it must exist.
    let missing = dir.path().join("missing.db");
    let options = ReplicaOptions {
        must_exist: true,
        ..ReplicaOptions::default()
    };
    let err = Replica::open_with(&missing, options).expect_err("missing");
    assert!(
        matches!(err, Error::Store(StoreError::Missing(_))),
        "{err:?}"
    );
    assert!(!missing.exists(), "must_exist does not create the file");

    // An empty file is a new database, and becomes an Accord one.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("write");
    let replica = Replica::open(&empty).expect("empty file");
    let id = replica.create("c", &json!({"ok": true})).expect("create");
    assert_eq!(replica.get(&id).expect("get").value, json!({"ok": true}));
    drop(replica);
    let store = Store::open(&empty, Durability::Full).expect("store");
    let app_id: i64 = store
        .connection()
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("application_id");
    assert_eq!(app_id, APPLICATION_ID);
}

/// Runs the sync protocol between two replicas over one document until
/// neither has anything to say, through the same `SyncDocs` calls the
/// driver and the relay make.
fn sync_pair(a: &Replica, b: &Replica, doc: &DocId) {
    use accord_engine::sync::SyncDocs;
    use accord_engine::PeerId;
    use automerge::sync::State;
    let collection: accord_engine::Collection = "c".parse().expect("collection");
    let (pa, pb) = (
        PeerId::new("a").expect("peer"),
        PeerId::new("b").expect("peer"),
    );
    let (mut sa, mut sb) = (State::new(), State::new());
    for _ in 0..100 {
        let to_b = a.generate(doc, &collection, &mut sa).expect("a generates");
        let got_b = to_b.is_some();
        if let Some(m) = to_b {
            b.receive(doc, &collection, &mut sb, m, &pa)
                .expect("b receives");
        }
        let to_a = b.generate(doc, &collection, &mut sb).expect("b generates");
        let got_a = to_a.is_some();
        if let Some(m) = to_a {
            a.receive(doc, &collection, &mut sa, m, &pb)
                .expect("a receives");
        }
        if !got_a && !got_b {
            return;
        }
    }
    panic!("sync of {doc} did not settle");
}

#[test]
fn sync_fetches_a_damaged_document_again_and_replaces_its_chunks() {
    for damage in ALL_DAMAGE {
        let what = format!("{damage:?}");
        let sample = Sample::new();
        let victim = sample.victim();
        let good_path = sample.dir.path().join("good.db");
        std::fs::copy(sample.path(), &good_path).expect("copy");
        inflict(&sample.path(), &victim, &sample.ids[0], damage);
        let damaged = Replica::open_with(sample.path(), no_compaction()).expect("reopen");
        let good = Replica::open_with(&good_path, no_compaction()).expect("good");
        // The peer moved on meanwhile: what it has beyond is taken too.
        good.put(&victim, "later", &json!(true), None).expect("put");

        assert_corrupt(damaged.verify(&victim), &victim, &what);
        assert_eq!(damaged.damaged(), vec![victim], "{what}");
        sync_pair(&damaged, &good, &victim);
        assert!(damaged.damaged().is_empty(), "{what}: repaired");
        let mut want = expected(VICTIM);
        want["later"] = json!(true);
        assert_eq!(damaged.get(&victim).expect(&what).value, want, "{what}");
        assert_others_intact(&damaged, &sample, &what);
        drop(damaged);
        let reopened = Replica::open_with(sample.path(), no_compaction()).expect("reopen");
        assert_eq!(
            reopened.get(&victim).expect(&what).value,
            want,
            "{what}: stored"
        );
        assert_eq!(
            reopened.history(&victim).expect("history").len() as u64,
            PUTS + 2
        );
        assert!(
            reopened.check_projection().expect("projection").is_empty(),
            "{what}"
        );
    }
}

#[test]
fn a_damaged_document_whose_peer_lacks_its_changes_keeps_its_rows() {
    let sample = Sample::new();
    let victim = sample.victim();
    let good_path = sample.dir.path().join("good.db");
    std::fs::copy(sample.path(), &good_path).expect("copy");
    // A change only the damaged replica ever had.
    let local = Replica::open_with(sample.path(), no_compaction()).expect("open");
    local
        .put(&victim, "only_here", &json!(1), None)
        .expect("put");
    drop(local);
    inflict_last_snapshot_garbage(&sample.path(), &victim);
    let rows_before = chunk_rows(&sample.path(), &victim);

    let damaged = Replica::open_with(sample.path(), no_compaction()).expect("reopen");
    let good = Replica::open_with(&good_path, no_compaction()).expect("good");
    assert_corrupt(damaged.verify(&victim), &victim, "before");
    sync_pair(&damaged, &good, &victim);
    assert_eq!(damaged.damaged(), vec![victim], "still damaged");
    assert_corrupt(damaged.get(&victim), &victim, "after");
    drop(damaged);
    assert_eq!(
        chunk_rows(&sample.path(), &victim),
        rows_before,
        "rows kept"
    );
    // The peer got nothing from the damaged copy.
    assert_eq!(good.get(&victim).expect("good").value, expected(VICTIM));
}

/// Replaces the first chunk of `doc` with garbage of the same length.
fn inflict_last_snapshot_garbage(path: &Path, doc: &DocId) {
    let conn = Connection::open(path).expect("sqlite");
    conn.execute(
        "UPDATE chunks SET data = zeroblob(length(data)) WHERE doc = ?1 AND seq = (SELECT min(seq) FROM chunks WHERE doc = ?1)",
        [doc.as_bytes().as_slice()],
    )
    .expect("damage");
}

/// Every chunk row of `doc`, as stored.
fn chunk_rows(path: &Path, doc: &DocId) -> Vec<(i64, Vec<u8>)> {
    let conn = Connection::open(path).expect("sqlite");
    let mut stmt = conn
        .prepare("SELECT seq, data FROM chunks WHERE doc = ?1 ORDER BY seq")
        .expect("prepare");
    let rows = stmt
        .query_map([doc.as_bytes().as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

#[test]
fn with_refetch_off_a_damaged_document_stays_an_error_for_peers() {
    use accord_engine::sync::SyncDocs;
    let sample = Sample::new();
    let victim = sample.victim();
    inflict(&sample.path(), &victim, &sample.ids[0], Damage::FlipByte);
    let options = ReplicaOptions {
        refetch_damaged: false,
        ..no_compaction()
    };
    let relay_like = Replica::open_with(sample.path(), options).expect("reopen");
    assert_corrupt(relay_like.verify(&victim), &victim, "verify");
    assert!(relay_like.damaged().is_empty());
    let collection: accord_engine::Collection = "c".parse().expect("collection");
    let mut state = automerge::sync::State::new();
    assert_corrupt(
        relay_like.generate(&victim, &collection, &mut state),
        &victim,
        "generate",
    );
    let local = relay_like
        .local_state(&victim)
        .expect("meta")
        .expect("known");
    assert_eq!(local.heads, relay_like.meta(&victim).expect("meta").heads);
}
