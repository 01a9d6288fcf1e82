//! Compaction never changes a record: a property test.
//!
//! Replica A compacts eagerly (a small `compact_after_chunks`, plus explicit
//! `compact` calls at random points, plus reopening at random points);
//! replica B receives exactly A's new changes after every write and is
//! opened so that it never compacts by chunk count. Whatever the sequence of
//! edits, A and B end with the same content, the same heads and the same
//! history (same hashes, same order), before and after reopening, and A's
//! chunk count stays bounded.

use std::path::{Path, PathBuf};

use accord_engine::automerge::transaction::{Transactable, Transaction};
use accord_engine::automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ROOT};
use accord_engine::{DocId, Durability, Origin, Replica, ReplicaOptions};
use proptest::prelude::*;
use proptest::sample::Index;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

/// A's compaction threshold: small, so compaction runs all the time.
const A_COMPACT_AFTER: u64 = 3;
const COLLECTION: &str = "c";

/// One step of a random run.
#[derive(Debug, Clone)]
enum Op {
    /// `put` of a scalar at a key of the nested map `m`, through the JSON
    /// path API, with an optional commit message.
    Put {
        key: u8,
        value: i64,
        message: Option<String>,
    },
    /// Deletes a key of the root map (a no-op change if it is absent).
    DeleteKey { key: u8 },
    /// Inserts into the list `list`.
    ListInsert { at: Index, value: i64 },
    /// Deletes from the list `list` (nothing if it is empty).
    ListDelete { at: Index },
    /// Splices the text `text`.
    Splice {
        at: Index,
        delete: u8,
        insert: String,
    },
    /// Several edits in one change.
    Batch { keys: Vec<u8> },
    /// `Replica::compact` now.
    Compact,
    /// Closes and reopens A.
    ReopenA,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, any::<i64>(), proptest::option::of("[a-z ]{1,12}"))
            .prop_map(|(key, value, message)| Op::Put { key, value, message }),
        1 => (0u8..6).prop_map(|key| Op::DeleteKey { key }),
        3 => (any::<Index>(), any::<i64>()).prop_map(|(at, value)| Op::ListInsert { at, value }),
        1 => any::<Index>().prop_map(|at| Op::ListDelete { at }),
        3 => (any::<Index>(), 0u8..4, "[a-z ]{0,8}")
            .prop_map(|(at, delete, insert)| Op::Splice { at, delete, insert }),
        1 => proptest::collection::vec(0u8..6, 1..5).prop_map(|keys| Op::Batch { keys }),
        2 => Just(Op::Compact),
        1 => Just(Op::ReopenA),
    ]
}

fn options(compact_after_chunks: u64) -> ReplicaOptions {
    ReplicaOptions {
        compact_after_chunks,
        // Durability is not under test here; keep the cases fast.
        durability: Durability::Normal,
        ..ReplicaOptions::default()
    }
}

fn open_a(path: &Path) -> Replica {
    Replica::open_with(path, options(A_COMPACT_AFTER)).expect("open A")
}

fn open_b(path: &Path) -> Replica {
    Replica::open_with(path, options(u64::MAX)).expect("open B")
}

/// The object at a root key (the list and the text made at creation).
fn object(tx: &Transaction<'_>, key: &str) -> Result<ObjId, AutomergeError> {
    match tx.get(ROOT, key)? {
        Some((_, id)) => Ok(id),
        None => Err(AutomergeError::InvalidObjId(key.to_owned())),
    }
}

/// Applies one editing op to A; returns `false` for ops that are not edits.
fn edit(a: &Replica, id: &DocId, op: &Op) -> Result<bool, accord_engine::Error> {
    match op {
        Op::Put {
            key,
            value,
            message,
        } => a.put(id, &format!("m.k{key}"), &json!(value), message.as_deref())?,
        Op::DeleteKey { key } => a.change(id, None, |tx| tx.delete(ROOT, format!("k{key}")))?,
        Op::ListInsert { at, value } => a.change(id, Some("insert"), |tx| {
            let list = object(tx, "list")?;
            let at = at.index(tx.length(&list) + 1);
            tx.insert(&list, at, *value)
        })?,
        Op::ListDelete { at } => a.change(id, None, |tx| {
            let list = object(tx, "list")?;
            match tx.length(&list) {
                0 => Ok(()),
                len => tx.delete(&list, at.index(len)),
            }
        })?,
        Op::Splice { at, delete, insert } => a.change(id, None, |tx| {
            let text = object(tx, "text")?;
            let len = tx.length(&text);
            let at = at.index(len + 1);
            let delete = usize::from(*delete).min(len - at) as isize;
            tx.splice_text(&text, at, delete, insert)
        })?,
        Op::Batch { keys } => a.change(id, Some("batch"), |tx| {
            keys.iter()
                .try_for_each(|k| tx.put(ROOT, format!("k{k}"), i64::from(*k)))
        })?,
        Op::Compact | Op::ReopenA => return Ok(false),
    }
    Ok(true)
}

/// Everything that must be identical between A and B.
fn snapshot(r: &Replica, id: &DocId) -> impl PartialEq + std::fmt::Debug {
    let record = r.get(id).expect("get");
    let heads = r.heads(id).expect("heads");
    let history = r.history(id).expect("history");
    let meta = r.meta(id).expect("meta");
    assert_eq!(meta.heads, heads, "metadata heads match the document");
    assert_eq!(
        meta.change_count,
        history.len() as u64,
        "metadata change count matches the history"
    );
    assert_eq!(
        stored_chunks(r, id),
        (meta.chunk_count, meta.size_bytes),
        "metadata chunk count and size match the chunks table"
    );
    (record, heads, history)
}

/// How many chunk rows a record has, and their total size, read with SQL.
fn stored_chunks(r: &Replica, id: &DocId) -> (u64, u64) {
    let path = r.path().expect("a file replica");
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("sqlite");
    conn.query_row(
        "SELECT count(*), coalesce(sum(length(data)), 0) FROM chunks WHERE doc = ?1",
        [id.as_bytes().as_slice()],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
    )
    .expect("count chunks")
}

struct Twins {
    _dir: tempfile::TempDir,
    a_path: PathBuf,
    b_path: PathBuf,
    a: Replica,
    b: Replica,
    id: DocId,
}

impl Twins {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let a = open_a(&a_path);
        let b = open_b(&b_path);
        let id = a
            .create_with(COLLECTION, Some("create"), |tx| {
                tx.put_object(ROOT, "list", ObjType::List)?;
                let text = tx.put_object(ROOT, "text", ObjType::Text)?;
                tx.splice_text(&text, 0, 0, "hello")
            })
            .expect("create");
        let saved = a.save(&id).expect("save");
        b.merge_bytes(
            &id,
            COLLECTION,
            &saved,
            Origin::Remote("a".parse().expect("valid peer id")),
        )
        .expect("B receives the record");
        Twins {
            _dir: dir,
            a_path,
            b_path,
            a,
            b,
            id,
        }
    }

    /// Runs one op on A and sends B only the changes it made.
    fn step(&mut self, op: &Op) {
        let before = self.a.heads(&self.id).expect("heads");
        match op {
            Op::Compact => self.a.compact(&self.id).expect("compact"),
            Op::ReopenA => {
                self.a = open_a(&self.a_path);
            }
            _ => {
                edit(&self.a, &self.id, op).expect("edit");
                let new = self
                    .a
                    .read(&self.id, |doc, _| doc.save_after(&before))
                    .expect("new changes");
                self.b
                    .merge_bytes(
                        &self.id,
                        COLLECTION,
                        &new,
                        Origin::Remote("a".parse().expect("valid peer id")),
                    )
                    .expect("merge");
            }
        }
        assert_eq!(
            self.a.heads(&self.id).expect("heads A"),
            self.b.heads(&self.id).expect("heads B"),
            "after {op:?}"
        );
    }

    fn reopen_both(&mut self) {
        self.a = open_a(&self.a_path);
        self.b = open_b(&self.b_path);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn compaction_preserves_content_heads_and_history(ops in proptest::collection::vec(op(), 1..40)) {
        let mut twins = Twins::new();
        for op in &ops {
            twins.step(op);
        }
        let (a, b) = (snapshot(&twins.a, &twins.id), snapshot(&twins.b, &twins.id));
        prop_assert_eq!(&a, &b);
        let chunks = twins.a.meta(&twins.id).expect("meta").chunk_count;
        prop_assert!(
            chunks <= A_COMPACT_AFTER,
            "A holds {} chunks, more than its threshold {}", chunks, A_COMPACT_AFTER
        );

        twins.reopen_both();
        let (a2, b2) = (snapshot(&twins.a, &twins.id), snapshot(&twins.b, &twins.id));
        prop_assert_eq!(&a2, &b2);
        prop_assert_eq!(&a2, &a, "reopening changed A");

        // A full compaction of A, and of B, changes nothing either.
        twins.a.compact(&twins.id).expect("compact A");
        twins.b.compact(&twins.id).expect("compact B");
        prop_assert_eq!(twins.a.meta(&twins.id).expect("meta").chunk_count, 1);
        twins.reopen_both();
        prop_assert_eq!(&snapshot(&twins.a, &twins.id), &a);
        prop_assert_eq!(&snapshot(&twins.b, &twins.id), &a);
    }
}
