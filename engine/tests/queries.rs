//! Queries: the `records` projection agrees with the documents after local
//! changes, remote changes, merges and deletes; indexes are used; SQL that
//! writes is refused with nothing changed (also when rows are streamed);
//! streamed rows arrive one at a time, stop when the reader says so, and
//! stop at a time limit; live queries fire on remote
//! changes; a version-1 file gets its projection on open; `reindex` and
//! `check_projection` repair and find damage. Real SQLite files in
//! temporary directories throughout.
//!
//! `ACCORD_QUERY_CASES` sets the number of property-test cases (default 24).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{ObjType, ReadDoc, ScalarValue, ROOT};
use accord_engine::store::Store;
use accord_engine::sync::SyncDocs;
use accord_engine::{
    DocId, Durability, Error, Filter, ListOptions, Origin, ProjectionProblem, QueryError, Replica,
    ReplicaOptions, SqlValue,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::Connection;
use serde_json::{json, Value};

/// A guard against a broken test, not a synchronisation.
const PATIENCE: Duration = Duration::from_secs(10);

fn options() -> ReplicaOptions {
    ReplicaOptions {
        durability: Durability::Normal,
        ..ReplicaOptions::default()
    }
}

fn open(path: &Path) -> Replica {
    Replica::open_with(path, options()).expect("open replica")
}

fn file_replica() -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = open(&dir.path().join("r.db"));
    (dir, replica)
}

/// Every projection row, read through the public query API:
/// id -> (collection, deleted, content).
fn projection(replica: &Replica) -> BTreeMap<String, (String, bool, Value)> {
    let rows = replica
        .query("SELECT id, collection, deleted, json FROM records", &[])
        .expect("query records");
    rows.rows
        .into_iter()
        .map(|row| {
            let text = |v: &SqlValue| v.as_str().expect("text").to_owned();
            let json = serde_json::from_str(&text(&row[3])).expect("json column is JSON");
            let deleted = row[2].as_i64().expect("deleted is an integer") != 0;
            (text(&row[0]), (text(&row[1]), deleted, json))
        })
        .collect()
}

fn c(name: &str) -> accord_engine::Collection {
    name.parse().expect("valid collection")
}

fn p(name: &str) -> accord_engine::PeerId {
    name.parse().expect("valid peer id")
}

/// What the projection should be: every record's current content (also
/// for deleted ones, read at their heads).
fn documents(replica: &Replica) -> BTreeMap<String, (String, bool, Value)> {
    let all = replica.list_with(&ListOptions::everything()).expect("list");
    all.into_iter()
        .map(|meta| {
            let heads = replica.heads(&meta.id).expect("heads");
            let value = replica.get_at(&meta.id, &heads).expect("content").value;
            (
                meta.id.to_string(),
                (meta.collection.to_string(), meta.deleted, value),
            )
        })
        .collect()
}

fn assert_projection_agrees(replica: &Replica, what: &str) {
    assert_eq!(projection(replica), documents(replica), "{what}");
    assert_eq!(replica.check_projection().expect("check"), vec![], "{what}");
}

/// Brings `to` up to date with `from`'s copy of `id`, as a peer would.
fn send(from: &Replica, to: &Replica, id: &DocId, collection: &str) {
    let bytes = from.save(id).expect("save");
    to.merge_bytes(
        id,
        collection,
        &bytes,
        Origin::Remote("peer".parse().expect("valid peer id")),
    )
    .expect("merge");
}

// ---- the projection follows every kind of change ----

#[test]
fn the_projection_follows_local_changes_and_deletes() {
    let (_dir, r) = file_replica();
    assert_eq!(projection(&r), BTreeMap::new());
    let ada = r
        .create("contacts", &json!({"name": "Ada", "tags": ["math"]}))
        .expect("create");
    assert_projection_agrees(&r, "after create");
    r.put(&ada, "address.city", &json!("London"), Some("moved"))
        .expect("put");
    r.change(&ada, None, |tx| {
        let text = tx.put_object(ROOT, "bio", ObjType::Text)?;
        tx.splice_text(&text, 0, 0, "Analyst")?;
        tx.put(ROOT, "visits", ScalarValue::counter(1))?;
        tx.put(ROOT, "photo", ScalarValue::Bytes(vec![1, 2, 3]))
    })
    .expect("change");
    r.change(&ada, None, |tx| tx.increment(ROOT, "visits", 41))
        .expect("increment");
    let (_, deleted, content) = projection(&r)[&ada.to_string()].clone();
    assert!(!deleted);
    assert_eq!(
        content,
        json!({"name": "Ada", "tags": ["math"], "address": {"city": "London"},
               "bio": "Analyst", "visits": 42, "photo": "AQID"})
    );
    assert_eq!(
        content,
        r.get(&ada).expect("get").value,
        "same mapping as get"
    );
    let note = r.create("notes", &json!({})).expect("empty record");
    r.delete(&ada).expect("delete");
    assert_projection_agrees(&r, "after delete");
    let rows = projection(&r);
    assert!(rows[&ada.to_string()].1, "deleted is 1");
    assert_eq!(rows[&note.to_string()], ("notes".into(), false, json!({})));
    r.compact(&note).expect("compact");
    assert_projection_agrees(&r, "after compaction");
}

#[test]
fn the_projection_follows_remote_changes_merges_and_remote_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    let id = a
        .create("tasks", &json!({"title": "write docs", "done": false}))
        .expect("create");
    send(&a, &b, &id, "tasks");
    assert_projection_agrees(&b, "a record arriving from a peer");
    // Concurrent edits on both sides, then merged both ways.
    a.put(&id, "done", &json!(true), None).expect("a edits");
    b.put(&id, "due", &json!("2030-01-01"), None)
        .expect("b edits");
    b.put(&id, "title", &json!("write the docs"), None)
        .expect("b edits");
    send(&a, &b, &id, "tasks");
    send(&b, &a, &id, "tasks");
    for r in [&a, &b] {
        assert_projection_agrees(r, "after merging concurrent edits");
        let (_, _, content) = projection(r)[&id.to_string()].clone();
        assert_eq!(
            content,
            json!({"title": "write the docs", "done": true, "due": "2030-01-01"})
        );
    }
    // A deletion arriving from a peer, and one for a record not seen yet.
    SyncDocs::delete(&b, &id, &c("tasks"), &p("peer")).expect("remote delete");
    let unseen = DocId::random();
    SyncDocs::delete(&b, &unseen, &c("tasks"), &p("peer")).expect("early tombstone");
    assert_projection_agrees(&b, "after remote deletes");
    assert_eq!(
        projection(&b)[&unseen.to_string()],
        ("tasks".into(), true, json!({}))
    );
}

/// Runs Automerge's sync protocol between two replicas through
/// [`SyncDocs`], the path the sync layer uses, until both are quiet.
fn sync_through_protocol(a: &Replica, b: &Replica, id: &DocId, collection: &str) {
    use accord_engine::automerge::sync::State;
    let collection = &c(collection);
    let (mut sa, mut sb) = (State::new(), State::new());
    for _ in 0..20 {
        let to_b = a.generate(id, collection, &mut sa).expect("generate");
        let to_a = b.generate(id, collection, &mut sb).expect("generate");
        if to_b.is_none() && to_a.is_none() {
            return;
        }
        if let Some(m) = to_b {
            b.receive(id, collection, &mut sb, m, &p("a"))
                .expect("b receives");
        }
        if let Some(m) = to_a {
            a.receive(id, collection, &mut sa, m, &p("b"))
                .expect("a receives");
        }
    }
    panic!("sync did not settle");
}

#[test]
fn the_projection_follows_changes_received_through_the_sync_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    let id = a.create("notes", &json!({"n": 1})).expect("create");
    sync_through_protocol(&a, &b, &id, "notes");
    assert_projection_agrees(&b, "a new record received");
    a.put(&id, "n", &json!(2), None).expect("edit");
    b.put(&id, "m", &json!(3), None).expect("edit");
    sync_through_protocol(&a, &b, &id, "notes");
    for r in [&a, &b] {
        assert_projection_agrees(r, "changes received");
        assert_eq!(projection(r)[&id.to_string()].2, json!({"n": 2, "m": 3}));
    }
}

// ---- property: random change sequences ----

/// One step of a random history of one shared record on two replicas.
#[derive(Debug, Clone)]
enum Step {
    /// Replica `r` sets key `k` to a number.
    Put { r: usize, k: u8, v: i64 },
    /// Replica `r` sets key `k` to a string.
    PutText { r: usize, k: u8, v: String },
    /// Replica `r` appends to the list `l`.
    Push { r: usize, v: i64 },
    /// Replica `r` removes key `k` (if present).
    Remove { r: usize, k: u8 },
    /// Replica `r` increments the counter.
    Count { r: usize, by: i64 },
    /// Replica `from`'s copy arrives at the other.
    Sync { from: usize },
    /// Replica `r` deletes the record.
    Delete { r: usize },
    /// Replica `r` creates an unrelated record.
    Create { r: usize, v: i64 },
    /// Replica `r` compacts the record.
    Compact { r: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let r = 0..2usize;
    prop_oneof![
        4 => (r.clone(), 0..4u8, any::<i64>()).prop_map(|(r, k, v)| Step::Put { r, k, v }),
        2 => (r.clone(), 0..4u8, "[a-zé \"'\\\\]{0,8}").prop_map(|(r, k, v)| Step::PutText { r, k, v }),
        2 => (r.clone(), -5..5i64).prop_map(|(r, v)| Step::Push { r, v }),
        2 => (r.clone(), 0..4u8).prop_map(|(r, k)| Step::Remove { r, k }),
        2 => (r.clone(), -3..9i64).prop_map(|(r, by)| Step::Count { r, by }),
        4 => (0..2usize).prop_map(|from| Step::Sync { from }),
        1 => r.clone().prop_map(|r| Step::Delete { r }),
        1 => (r.clone(), any::<i64>()).prop_map(|(r, v)| Step::Create { r, v }),
        1 => r.prop_map(|r| Step::Compact { r }),
    ]
}

/// Applies a step; writes to a deleted record are refused, which is fine.
fn apply(replicas: &[Replica; 2], id: &DocId, step: &Step) {
    let result = match step {
        Step::Put { r, k, v } => replicas[*r].put(id, &format!("k{k}"), &json!(v), None),
        Step::PutText { r, k, v } => replicas[*r].put(id, &format!("k{k}"), &json!(v), None),
        Step::Push { r, v } => replicas[*r].change(id, None, |tx| {
            let list = match tx.get(ROOT, "list")? {
                Some((_, list)) => list,
                None => tx.put_object(ROOT, "list", ObjType::List)?,
            };
            let at = tx.length(&list);
            tx.insert(&list, at, *v)
        }),
        Step::Remove { r, k } => {
            replicas[*r].change(id, None, |tx| match tx.get(ROOT, format!("k{k}"))? {
                Some(_) => tx.delete(ROOT, format!("k{k}")),
                None => Ok(()),
            })
        }
        Step::Count { r, by } => {
            replicas[*r].change(id, None, |tx| match tx.get(ROOT, "count")? {
                Some((accord_engine::automerge::Value::Scalar(s), _))
                    if matches!(s.as_ref(), ScalarValue::Counter(_)) =>
                {
                    tx.increment(ROOT, "count", *by)
                }
                _ => tx.put(ROOT, "count", ScalarValue::counter(*by)),
            })
        }
        Step::Sync { from } => {
            send(&replicas[*from], &replicas[1 - from], id, "p");
            if replicas[*from].meta(id).expect("meta").deleted {
                SyncDocs::delete(&replicas[1 - from], id, &c("p"), &p("peer")).expect("delete");
            }
            Ok(())
        }
        Step::Delete { r } => replicas[*r].delete(id),
        Step::Create { r, v } => replicas[*r].create("other", &json!({ "v": v })).map(|_| ()),
        Step::Compact { r } => replicas[*r].compact(id),
    };
    match result {
        Ok(()) | Err(Error::Deleted(_)) => {}
        Err(e) => panic!("{step:?}: {e}"),
    }
}

fn cases() -> u32 {
    std::env::var("ACCORD_QUERY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

#[test]
fn for_random_change_sequences_the_projection_equals_the_content() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        ..Config::default()
    });
    let steps = proptest::collection::vec(step(), 1..24);
    runner
        .run(&steps, |steps| {
            let dir = tempfile::tempdir().expect("tempdir");
            let small_chunks = ReplicaOptions {
                compact_after_chunks: 3,
                ..options()
            };
            let replicas = [
                Replica::open_with(dir.path().join("a.db"), small_chunks.clone()).expect("a"),
                Replica::open_with(dir.path().join("b.db"), small_chunks).expect("b"),
            ];
            let id = replicas[0].create("p", &json!({"k0": 0})).expect("create");
            send(&replicas[0], &replicas[1], &id, "p");
            for step in &steps {
                apply(&replicas, &id, step);
                for r in &replicas {
                    prop_assert_eq!(projection(r), documents(r), "after {:?}", step);
                }
            }
            Ok(())
        })
        .expect("the projection always equals the content");
}

// ---- queries are read-only ----

/// Everything in the database, as text: to show that nothing changed.
fn fingerprint(path: &Path) -> String {
    let conn = Connection::open(path).expect("sqlite");
    let mut out = String::new();
    for sql in [
        "SELECT type, name, sql FROM sqlite_master ORDER BY name",
        "SELECT key, value FROM meta ORDER BY key",
        "SELECT hex(id), collection, deleted, hex(heads), change_count, updated_at FROM docs ORDER BY id",
        "SELECT hex(doc), seq, kind, hex(data) FROM chunks ORDER BY doc, seq",
        "SELECT id, deleted, updated_at, json FROM projection ORDER BY id",
        "SELECT name, path FROM query_indexes ORDER BY name",
        "PRAGMA user_version",
    ] {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..n)
                    .map(|i| row.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("query");
        for row in rows {
            out.push_str(&row.expect("row").join("|"));
            out.push('\n');
        }
    }
    out
}

/// Files in a directory (a refused `ATTACH` or `VACUUM INTO` creates none).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    names.sort();
    names
}

fn writing_sql(dir: &Path) -> Vec<(String, &'static str)> {
    let other = dir.join("other.db").display().to_string();
    vec![
        (
            "INSERT INTO meta (key, value) VALUES ('x', 'y')".into(),
            "INSERT into meta",
        ),
        (
            "UPDATE projection SET json = '{}'".into(),
            "UPDATE of projection",
        ),
        ("DELETE FROM projection".into(), "DELETE from projection"),
        (
            "WITH x AS (SELECT 1) DELETE FROM docs".into(),
            "DELETE from docs",
        ),
        ("DROP TABLE docs".into(), "changing the schema"),
        ("DROP VIEW records".into(), "changing the schema"),
        (
            "DROP INDEX projection_by_collection".into(),
            "changing the schema",
        ),
        ("CREATE TABLE t (a)".into(), "changing the schema"),
        ("CREATE TEMP TABLE t (a)".into(), "changing the schema"),
        (
            "CREATE INDEX i ON docs (collection)".into(),
            "changing the schema",
        ),
        ("ALTER TABLE docs ADD COLUMN x".into(), "ALTER TABLE"),
        (format!("ATTACH '{other}' AS other"), "ATTACH"),
        ("DETACH main".into(), "DETACH"),
        ("PRAGMA user_version = 7".into(), "PRAGMA user_version = 7"),
        ("PRAGMA query_only = 0".into(), "PRAGMA query_only = 0"),
        ("PRAGMA journal_mode = DELETE".into(), "PRAGMA journal_mode"),
        (
            "PRAGMA writable_schema = 1".into(),
            "PRAGMA writable_schema",
        ),
        ("BEGIN".into(), "transaction"),
        ("SAVEPOINT s".into(), "SAVEPOINT"),
        ("REINDEX".into(), "REINDEX"),
        ("ANALYZE".into(), "changing the schema"),
        ("VACUUM".into(), "statement"),
        (format!("VACUUM INTO '{other}'"), "statement"),
    ]
}

/// Runs `sql` through the streaming API, with and without a time limit,
/// and fails the test if a row reaches the callback; returns the first
/// result (both must agree).
fn query_each_rowless(replica: &Replica, sql: &str) -> Result<Vec<String>, Error> {
    let no_row = |_: &[String], row: Vec<SqlValue>| -> ControlFlow<()> {
        panic!("a refused statement handed out a row: {sql}: {row:?}")
    };
    let plain = replica.query_each(sql, &[], no_row);
    let timed = replica.query_each_within(PATIENCE, sql, &[], no_row);
    assert_eq!(
        format!("{plain:?}"),
        format!("{timed:?}"),
        "with and without a time limit: {sql}"
    );
    plain
}

fn assert_refuses_writes(replica: &Replica, dir: &Path, db: Option<&Path>) {
    let before = db.map(fingerprint);
    let files_before = files(dir);
    let mut wrong = Vec::new();
    for (sql, named) in writing_sql(dir) {
        let streamed = query_each_rowless(replica, &sql);
        match (replica.query(&sql, &[]), streamed) {
            (
                Err(Error::Query(QueryError::ReadOnly { what })),
                Err(Error::Query(QueryError::ReadOnly { what: streamed })),
            ) if what.contains(named) && streamed == what => {
                let message = Error::Query(QueryError::ReadOnly { what }).to_string();
                assert!(message.starts_with("queries are read-only: "), "{message}");
            }
            (other, streamed) => wrong.push(format!("{sql}: {other:?} / {streamed:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as expected:\n{}",
        wrong.join("\n")
    );
    // The view cannot be written to at all; SQLite says so before asking.
    assert!(matches!(
        replica.query("DELETE FROM records", &[]),
        Err(Error::Query(QueryError::Invalid { message })) if message.contains("cannot modify records")
    ));
    for sql in [
        "SELECT 1; DELETE FROM docs",
        "SELECT 1; SELECT 2",
        "SELECT * FROM records; DROP TABLE docs; --",
    ] {
        assert!(
            matches!(
                replica.query(sql, &[]),
                Err(Error::Query(QueryError::MultipleStatements))
            ),
            "{sql}"
        );
        assert!(
            matches!(
                query_each_rowless(replica, sql),
                Err(Error::Query(QueryError::MultipleStatements))
            ),
            "streamed: {sql}"
        );
    }
    assert_eq!(before, db.map(fingerprint), "nothing changed");
    assert_eq!(files_before, files(dir), "no file was created");
}

#[test]
fn sql_that_writes_is_refused_and_nothing_changes() {
    let (dir, r) = file_replica();
    let id = r
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    r.create_index("contacts", "$.name").expect("index");
    let path = dir.path().join("r.db");
    assert_refuses_writes(&r, dir.path(), Some(&path));
    // The replica still reads and writes normally.
    r.put(&id, "name", &json!("Ada L."), None)
        .expect("write after refusals");
    assert_projection_agrees(&r, "after refused queries");
}

#[test]
fn an_in_memory_replica_queries_read_only_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Replica::open_in_memory().expect("open");
    let id = r
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    let before = projection(&r);
    assert_refuses_writes(&r, dir.path(), None);
    assert_eq!(projection(&r), before);
    // The write connection is writable again after each query.
    r.put(&id, "name", &json!("Grace"), None).expect("write");
    r.create_index("contacts", "$.name").expect("index");
    assert_projection_agrees(&r, "in memory");
    assert_eq!(projection(&r)[&id.to_string()].2, json!({"name": "Grace"}));
}

/// A result without end: only a reader that stops, or a time limit, ends it.
const ENDLESS: &str =
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n";

/// A file replica and an in-memory one (which queries on its writer), each
/// with three contacts.
fn both_kinds() -> Vec<(&'static str, tempfile::TempDir, Replica)> {
    let (dir, file) = file_replica();
    let memory = Replica::open_in_memory().expect("open in memory");
    let mut both = vec![
        ("file", dir, file),
        ("in memory", tempfile::tempdir().expect("tempdir"), memory),
    ];
    for (_, _, r) in &mut both {
        for name in ["Grace", "Ada", "Edsger"] {
            r.create("contacts", &json!({ "name": name }))
                .expect("create");
        }
    }
    both
}

#[test]
fn query_each_hands_rows_over_as_they_come_and_stops_when_told() {
    for (kind, _dir, r) in both_kinds() {
        let sql = "SELECT json ->> '$.name' AS name, ?1 AS p FROM records ORDER BY name";
        let params = [SqlValue::from("x")];
        let mut seen = Vec::new();
        let columns = r
            .query_each(sql, &params, |columns, row| {
                assert_eq!(columns, ["name", "p"], "{kind}");
                seen.push(row);
                ControlFlow::Continue(())
            })
            .expect("query_each");
        assert_eq!(columns, ["name", "p"], "{kind}");
        let text = |t: &str| SqlValue::Text(t.to_owned());
        assert_eq!(
            seen,
            [
                [text("Ada"), text("x")],
                [text("Edsger"), text("x")],
                [text("Grace"), text("x")]
            ],
            "{kind}"
        );
        assert_eq!(
            seen,
            r.query(sql, &params).expect("query").rows,
            "{kind}: query_each and query agree"
        );

        // No rows: the column names still come back.
        let columns = r
            .query_each(
                "SELECT id, json AS content FROM records WHERE 0",
                &[],
                |_, row| panic!("{kind}: a row of an empty result: {row:?}"),
            )
            .expect("empty result");
        assert_eq!(columns, ["id", "content"], "{kind}");

        // A result without end, read until the reader has had enough: the
        // call returns, having handed out exactly the rows asked for.
        let mut n = 0;
        r.query_each(ENDLESS, &[], |_, row| {
            n += 1;
            assert_eq!(row, [SqlValue::Integer(n)], "{kind}: rows in order");
            if n == 1000 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("stopped by the reader");
        assert_eq!(n, 1000, "{kind}");

        // A failure while running is reported after the rows before it.
        let mut before_failure = 0;
        let failed = r.query_each(
            "SELECT json_extract('{}', CASE WHEN x < 3 THEN '$.a' ELSE 'bad path' END) FROM
             (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5) SELECT x FROM n)",
            &[],
            |_, _| {
                before_failure += 1;
                ControlFlow::Continue(())
            },
        );
        assert!(
            matches!(&failed, Err(Error::Query(QueryError::Failed { message })) if message.contains("JSON path")),
            "{kind}: {failed:?}"
        );
        assert_eq!(before_failure, 2, "{kind}");

        // The replica carries on reading and writing.
        r.create("contacts", &json!({"name": "Barbara"}))
            .expect("write after streamed queries");
        let count = r.query("SELECT count(*) FROM records", &[]).expect("count");
        assert_eq!(count.rows, [[SqlValue::Integer(4)]], "{kind}");
    }
}

#[test]
fn a_query_started_while_rows_are_handed_out_does_not_wait_for_it() {
    let (_dir, r) = file_replica();
    r.create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut inner = Vec::new();
        let outer = r.query_each("SELECT id FROM records", &[], |_, _| {
            let count = r.query("SELECT count(*) FROM records", &[]);
            inner.push(count.map(|rows| rows.rows));
            ControlFlow::Continue(())
        });
        let _ = done.send((outer, inner));
    });
    let (outer, inner) = finished
        .recv_timeout(PATIENCE)
        .expect("a query inside query_each's callback finished");
    worker.join().expect("worker");
    assert_eq!(outer.expect("outer query").len(), 1);
    assert_eq!(
        inner
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("inner query"),
        [vec![vec![SqlValue::Integer(1)]]]
    );
}

#[test]
fn query_each_within_stops_a_runaway_statement_but_not_a_slow_reader() {
    let limit = Duration::from_millis(200);
    for (kind, _dir, r) in both_kinds() {
        let started = Instant::now();
        let endless_count = format!("SELECT count(*) FROM ({ENDLESS})");
        let result = r.query_each_within(limit, &endless_count, &[], |_, row| {
            panic!("{kind}: an endless count produced a row: {row:?}")
        });
        let elapsed = started.elapsed();
        match result {
            Err(Error::Query(QueryError::TimedOut { limit: given })) => {
                assert_eq!(given, limit, "{kind}");
                let message = Error::Query(QueryError::TimedOut { limit }).to_string();
                assert!(message.contains("time limit of 200ms"), "{message}");
            }
            other => panic!("{kind}: {other:?}"),
        }
        assert!(
            elapsed >= limit && elapsed < PATIENCE,
            "{kind}: stopped after {elapsed:?}"
        );

        // Rows handed out before the limit stay handed out.
        let mut rows = 0u64;
        let result = r.query_each_within(limit, ENDLESS, &[], |_, _| {
            rows += 1;
            ControlFlow::Continue(())
        });
        assert!(
            matches!(result, Err(Error::Query(QueryError::TimedOut { .. }))),
            "{kind}: {result:?}"
        );
        assert!(rows > 0, "{kind}: rows came before the limit");

        // Only SQLite's time counts: a reader that takes longer than the
        // limit over three quick rows is not cut off. (The sleep is the
        // reader being slow, not a synchronisation.)
        let mut handled = 0;
        r.query_each_within(
            limit,
            "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3",
            &[],
            |_, _| {
                std::thread::sleep(limit / 2);
                handled += 1;
                ControlFlow::Continue(())
            },
        )
        .expect("a slow reader of a fast query");
        assert_eq!(handled, 3, "{kind}");

        // The limit went with the statement: later queries and writes work.
        r.create("contacts", &json!({"name": "Barbara"}))
            .expect("write after a timed-out query");
        let count = r.query("SELECT count(*) FROM records", &[]).expect("count");
        assert_eq!(count.rows, [[SqlValue::Integer(4)]], "{kind}");
    }
}

/// Whether an error is the expected one.
type ErrorTest = fn(&QueryError) -> bool;

#[test]
fn bad_sql_and_bad_parameters_are_named() {
    let (_dir, r) = file_replica();
    let cases: Vec<(&str, Vec<SqlValue>, ErrorTest)> = vec![
        (
            "SELEC 1",
            vec![],
            |e| matches!(e, QueryError::Invalid { message } if message.contains("syntax error")),
        ),
        (
            "SELECT * FROM nope",
            vec![],
            |e| matches!(e, QueryError::Invalid { message } if message.contains("no such table: nope")),
        ),
        (
            "SELECT nope FROM records",
            vec![],
            |e| matches!(e, QueryError::Invalid { message } if message.contains("no such column: nope")),
        ),
        ("", vec![], |e| *e == QueryError::Empty),
        ("  -- nothing\n", vec![], |e| *e == QueryError::Empty),
        ("SELECT ?1, ?2", vec![1.into()], |e| {
            *e == QueryError::Params {
                expected: 2,
                given: 1,
            }
        }),
        ("SELECT 1", vec![1.into()], |e| {
            *e == QueryError::Params {
                expected: 0,
                given: 1,
            }
        }),
        (
            "SELECT json_extract('{}', 'no$')",
            vec![],
            |e| matches!(e, QueryError::Failed { message } if message.contains("JSON path")),
        ),
    ];
    for (sql, params, expected) in cases {
        match r.query(sql, &params) {
            Err(Error::Query(e)) => assert!(expected(&e), "{sql}: {e:?}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

// ---- results ----

#[test]
fn rows_come_back_typed_with_json_functions_working() {
    let (_dir, r) = file_replica();
    r.create(
        "tasks",
        &json!({"title": "a", "due": 3, "done": false, "tags": ["x", "y"], "w": 1.5}),
    )
    .expect("create");
    r.create(
        "tasks",
        &json!({"title": "b", "due": 1, "done": true, "tags": []}),
    )
    .expect("create");
    r.create(
        "tasks",
        &json!({"title": "c", "due": 2, "done": false, "tags": ["y"]}),
    )
    .expect("create");
    let open = r
        .query(
            "SELECT json_extract(json, '$.title') AS title, json_extract(json, '$.due') AS due
             FROM records WHERE collection = ?1 AND json_extract(json, '$.done') = 0
             ORDER BY due",
            &["tasks".into()],
        )
        .expect("open tasks by due date");
    assert_eq!(open.columns, ["title", "due"]);
    assert_eq!(
        open.rows,
        vec![
            vec![SqlValue::Text("c".into()), SqlValue::Integer(2)],
            vec![SqlValue::Text("a".into()), SqlValue::Integer(3)],
        ]
    );
    let tags = r
        .query(
            "SELECT t.value AS tag, count(*) AS n FROM records, json_each(records.json, '$.tags') AS t
             GROUP BY t.value ORDER BY t.value",
            &[],
        )
        .expect("json_each");
    assert_eq!(
        tags.to_json(),
        json!([{"tag": "x", "n": 1}, {"tag": "y", "n": 2}])
    );
    let kinds = r
        .query("SELECT NULL AS n, 2.5 AS r, x'0102' AS b, json_extract(json, '$.w') AS w FROM records WHERE json_extract(json, '$.title') = 'a'", &[])
        .expect("kinds");
    assert_eq!(
        kinds.rows[0],
        vec![
            SqlValue::Null,
            SqlValue::Real(2.5),
            SqlValue::Blob(vec![1, 2]),
            SqlValue::Real(1.5)
        ]
    );
    assert_eq!(
        serde_json::to_value(&kinds).expect("serde"),
        json!([{"n": null, "r": 2.5, "b": "AQI=", "w": 1.5}])
    );
    // Informational pragmas and the schema of the view can be read.
    let columns = r
        .query("SELECT name FROM pragma_table_info('records')", &[])
        .expect("pragma_table_info");
    let names: Vec<_> = columns
        .values("name")
        .filter_map(SqlValue::as_str)
        .collect();
    assert_eq!(
        names,
        [
            "id",
            "collection",
            "deleted",
            "created_at",
            "updated_at",
            "json",
            "conflicts",
            "created",
            "updated"
        ]
    );
    r.query("PRAGMA table_info(records)", &[])
        .expect("PRAGMA table_info");
    r.query("PRAGMA user_version", &[])
        .expect("PRAGMA user_version");
}

#[test]
fn the_id_column_is_the_printed_id_and_finds_the_record() {
    let (_dir, r) = file_replica();
    let id = r
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    let rows = r
        .query(
            "SELECT collection FROM records WHERE id = ?",
            &[id.to_string().into()],
        )
        .expect("by id");
    assert_eq!(rows.rows, vec![vec![SqlValue::Text("contacts".into())]]);
    let plan = r
        .query(
            "EXPLAIN QUERY PLAN SELECT json FROM records WHERE id = ?",
            &[id.to_string().into()],
        )
        .expect("plan");
    assert!(
        plan_text(&plan).contains("USING INDEX"),
        "{}",
        plan_text(&plan)
    );
}

// ---- indexes ----

fn plan_text(plan: &accord_engine::QueryRows) -> String {
    plan.values("detail")
        .filter_map(SqlValue::as_str)
        .collect::<Vec<_>>()
        .join("; ")
}

const BY_NAME: &str =
    "SELECT id FROM records WHERE collection = 'contacts' AND json_extract(json, '$.name') = ?1";

#[test]
fn an_index_on_a_json_path_is_used_idempotent_listed_and_dropped() {
    let (_dir, r) = file_replica();
    for i in 0..50 {
        r.create("contacts", &json!({"name": format!("n{i}")}))
            .expect("create");
        r.create("notes", &json!({"name": format!("n{i}")}))
            .expect("create");
    }
    let explain = |r: &Replica| {
        let plan = r
            .query(&format!("EXPLAIN QUERY PLAN {BY_NAME}"), &["n7".into()])
            .expect("explain");
        plan_text(&plan)
    };
    let index = r.create_index("contacts", "$.name").expect("create index");
    assert_eq!(index.collection, "contacts");
    assert_eq!(index.path, "$.name");
    assert_eq!(r.create_index("contacts", "$.name").expect("again"), index);
    assert_eq!(r.indexes().expect("indexes"), vec![index.clone()]);
    let plan = explain(&r);
    assert!(
        plan.contains(&format!("USING INDEX {}", index.name)),
        "{plan}"
    );
    // Ranges, sorting and a bound collection use it too.
    for (sql, params) in [
        (
            "SELECT id FROM records WHERE collection = 'contacts'
          AND json_extract(json, '$.name') >= ?1 AND json_extract(json, '$.name') < ?2",
            vec!["n1".into(), "n2".into()],
        ),
        (
            "SELECT id FROM records WHERE collection = 'contacts' AND deleted = 0
          ORDER BY json_extract(json, '$.name') LIMIT 5",
            vec![],
        ),
        (
            "SELECT id FROM records WHERE collection = ?1 AND json_extract(json, '$.name') = ?2",
            vec!["contacts".into(), "n7".into()],
        ),
    ] {
        let plan = r
            .query(&format!("EXPLAIN QUERY PLAN {sql}"), &params)
            .expect("explain");
        let plan = plan_text(&plan);
        assert!(
            plan.contains(&format!("USING INDEX {}", index.name)),
            "{sql}: {plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
    }
    let found = r.query(BY_NAME, &["n7".into()]).expect("lookup");
    assert_eq!(found.len(), 1);
    // Kept current by writes, like the table it indexes.
    let id = found.rows[0][0]
        .as_str()
        .expect("id")
        .parse::<DocId>()
        .expect("id");
    r.put(&id, "name", &json!("renamed"), None).expect("rename");
    assert!(r.query(BY_NAME, &["n7".into()]).expect("lookup").is_empty());
    assert_eq!(
        r.query(BY_NAME, &["renamed".into()]).expect("lookup").len(),
        1
    );
    // It survives reopening.
    let path = r.path().expect("file").to_owned();
    drop(r);
    let r = open(&path);
    assert_eq!(r.indexes().expect("indexes"), vec![index.clone()]);
    assert!(r.drop_index("contacts", "$.name").expect("drop"));
    assert!(!r.drop_index("contacts", "$.name").expect("drop again"));
    assert_eq!(r.indexes().expect("indexes"), vec![]);
    assert!(!explain(&r).contains(&index.name));
}

#[test]
fn index_paths_and_collections_are_checked_strictly() {
    let (dir, r) = file_replica();
    let before = fingerprint(&dir.path().join("r.db"));
    for path in [
        "name",
        "$",
        "$.name'); DROP TABLE docs; --",
        "$.a b",
        "$.\"x'\"",
        "$[x]",
    ] {
        assert!(
            matches!(
                r.create_index("contacts", path),
                Err(Error::Query(QueryError::BadPath { .. }))
            ),
            "{path}"
        );
    }
    assert!(matches!(
        r.create_index("contacts'; DROP TABLE docs; --", "$.name"),
        Err(Error::BadCollection(_))
    ));
    assert_eq!(before, fingerprint(&dir.path().join("r.db")));
    let quoted = r
        .create_index("contacts", "$.\"first name\"")
        .expect("quoted key");
    let nested = r
        .create_index("a-b/c.d", "$.address.lines[0]")
        .expect("nested");
    assert_ne!(quoted.name, nested.name);
    assert_eq!(r.indexes().expect("list").len(), 2);
}

// ---- live queries ----

#[test]
fn a_live_query_fires_on_a_remote_change_and_not_on_unrelated_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    let sql = "SELECT json_extract(json, '$.name') AS name FROM records
               WHERE collection = 'contacts' AND deleted = 0 ORDER BY name";
    let mut live = b.watch_query(sql, &[]).expect("watch");
    assert!(live.current().is_empty());
    // Unrelated: a change that leaves the result as it was.
    b.create("notes", &json!({"name": "x"})).expect("unrelated");
    assert_eq!(live.try_recv().expect("try_recv"), None);
    // A record created on `a` arrives at `b` from a peer.
    let ada = a
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    send(&a, &b, &ada, "contacts");
    let rows = live.recv_timeout(PATIENCE).expect("recv").expect("fired");
    assert_eq!(rows.to_json(), json!([{"name": "Ada"}]));
    assert_eq!(live.current(), &rows);
    // A remote edit, then a remote delete.
    a.put(&ada, "name", &json!("Ada L."), None).expect("edit");
    send(&a, &b, &ada, "contacts");
    let rows = live.recv_timeout(PATIENCE).expect("recv").expect("fired");
    assert_eq!(rows.to_json(), json!([{"name": "Ada L."}]));
    SyncDocs::delete(&b, &ada, &c("contacts"), &p("peer")).expect("remote delete");
    let rows = live.recv_timeout(PATIENCE).expect("recv").expect("fired");
    assert!(rows.is_empty());
    // Nothing more: it times out quietly.
    assert_eq!(
        live.recv_timeout(Duration::from_millis(20)).expect("recv"),
        None
    );
}

#[test]
fn a_live_query_with_a_filter_and_async_waiting() {
    let (_dir, r) = file_replica();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut live = r
        .watch_query_with(
            Filter::Collection("tasks".into()),
            "SELECT count(*) AS n FROM records WHERE collection = 'tasks'",
            &[],
        )
        .expect("watch");
    assert_eq!(live.current().rows, vec![vec![SqlValue::Integer(0)]]);
    let writer = r.clone();
    let rows = runtime.block_on(async move {
        let wait = live.recv_async();
        let write = tokio::task::spawn_blocking(move || {
            writer.create("tasks", &json!({"t": 1})).expect("create")
        });
        let (rows, _) = tokio::join!(wait, write);
        rows
    });
    assert_eq!(rows.expect("fired").rows, vec![vec![SqlValue::Integer(1)]]);
}

// ---- opening old files, replicas without a projection, repair ----

fn v1_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.db");
    std::fs::copy(fixture, &path).expect("fixture v1.db is present");
    (dir, path)
}

fn stale_flag(path: &Path) -> bool {
    Store::open(path, Durability::Normal)
        .expect("store")
        .projection_pending()
        .expect("flag")
}

#[test]
fn a_v1_database_gets_a_correct_projection_on_open() {
    let (_dir, path) = v1_fixture();
    let r = open(&path);
    assert_projection_agrees(&r, "the v1 fixture after open");
    let rows = projection(&r);
    assert_eq!(rows.len(), 5);
    let bob = &rows["cUBK3SbYEf1HGLrNJVCqTYZYa3a"];
    assert_eq!(
        bob,
        &("contacts".into(), true, json!({"name": "Bob", "age": 42}))
    );
    assert_eq!(
        rows["2sqPBCmAY3CauqZPX2cBEMYDJM1m"].2,
        json!({"title": "Shopping", "body": "milk, eggs", "items": ["milk", "eggs"],
               "views": 5, "at": 1_700_000_000_000_i64, "blob": "AQID", "ratio": 0.25,
               "big": u64::MAX, "done": false, "nothing": null})
    );
    drop(r);
    assert!(
        !stale_flag(&path),
        "the backfill finished and cleared the flag"
    );
    let conn = Connection::open(&path).expect("sqlite");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, accord_engine::store::SCHEMA_VERSION);
}

#[test]
fn a_replica_without_projection_leaves_rows_to_the_next_open() {
    let (_dir, path) = v1_fixture();
    let off = ReplicaOptions {
        projection: false,
        ..options()
    };
    // Opening without the projection migrates but does not backfill.
    let r = Replica::open_with(&path, off.clone()).expect("open without projection");
    assert!(projection(&r).is_empty());
    drop(r);
    assert!(stale_flag(&path));
    let r = open(&path);
    assert_projection_agrees(&r, "backfilled");
    let ada: DocId = "38Mi4rPHEM9P3FQpHsDJtzyfEpXD".parse().expect("id");
    drop(r);
    assert!(!stale_flag(&path));
    // A write without the projection drops its row and flags the file.
    let r = Replica::open_with(&path, off).expect("open without projection");
    r.put(&ada, "email", &json!("ada@new.example"), None)
        .expect("write");
    assert!(!projection(&r).contains_key(&ada.to_string()));
    drop(r);
    assert!(stale_flag(&path));
    let r = open(&path);
    assert_projection_agrees(&r, "refilled");
    assert_eq!(
        projection(&r)[&ada.to_string()].2["email"],
        json!("ada@new.example")
    );
}

#[test]
fn reindex_repairs_what_check_projection_finds() {
    let (dir, r) = file_replica();
    let ids: Vec<DocId> = (0..4)
        .map(|i| r.create("c", &json!({ "i": i })).expect("create"))
        .collect();
    let path = dir.path().join("r.db");
    let conn = Connection::open(&path).expect("sqlite");
    conn.execute_batch(&format!(
        "UPDATE projection SET json = '{{\"i\": 99}}' WHERE id = '{}';
         UPDATE projection SET deleted = 1 WHERE id = '{}';
         DELETE FROM projection WHERE id = '{}';
         INSERT INTO projection (doc, id, collection, deleted, created_at, updated_at, heads, json)
           VALUES (x'00000000000000000000000000000000', '11111111111111114Ki9Gx', 'c', 0, 0, 0, x'', '{{}}');",
        ids[0], ids[1], ids[2]
    ))
    .expect("damage the projection");
    drop(conn);
    let mut found: Vec<(DocId, ProjectionProblem)> = r
        .check_projection()
        .expect("check")
        .into_iter()
        .map(|i| (i.id, i.problem))
        .collect();
    found.sort_by_key(|(id, _)| *id);
    let mut expected = vec![
        (ids[0], ProjectionProblem::Content),
        (ids[1], ProjectionProblem::Metadata("deleted")),
        (ids[2], ProjectionProblem::Missing),
        (DocId::from_bytes([0; 16]), ProjectionProblem::Orphan),
    ];
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(found, expected);
    let report = r.reindex().expect("reindex");
    assert_eq!((report.records, report.repaired, report.removed), (4, 3, 1));
    assert!(report.unreadable.is_empty());
    assert_projection_agrees(&r, "after reindex");
}

// ---- the version-2 fixture ----

/// Set to `1` to write `tests/fixtures/v2.db` (only when creating it; never
/// regenerate a fixture that shipped).
const REGENERATE_V2_ENV: &str = "ACCORD_REGENERATE_V2_FIXTURE";

fn v2_fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2.db")
}

/// Writes `tests/fixtures/v2.db` with the schema-version-2 code when
/// [`REGENERATE_V2_ENV`] is `1`; otherwise does nothing. The file holds
/// three contacts (one deleted) and a task, an index on `$.name` of
/// `contacts`, and a last write by a replica without the projection, so
/// Grace's row is missing and `projection_stale` is set.
#[test]
fn regenerate_v2_fixture() {
    if std::env::var(REGENERATE_V2_ENV).as_deref() != Ok("1") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.db");
    let r = Replica::open(&path).expect("open");
    r.create(
        "contacts",
        &json!({"name": "Ada Lovelace", "tags": ["math", "engines"]}),
    )
    .expect("ada");
    let grace = r
        .create(
            "contacts",
            &json!({"name": "Grace Hopper", "tags": ["navy"]}),
        )
        .expect("grace");
    r.put(&grace, "age", &json!(85), Some("age")).expect("age");
    let bob = r.create("contacts", &json!({"name": "Bob"})).expect("bob");
    r.delete(&bob).expect("delete bob");
    r.create(
        "tasks",
        &json!({"title": "write docs", "done": false, "due": "2030-01-02"}),
    )
    .expect("task");
    r.create_index("contacts", "$.name").expect("index");
    drop(r);
    let off = ReplicaOptions {
        projection: false,
        ..ReplicaOptions::default()
    };
    let r = Replica::open_with(&path, off).expect("open without projection");
    r.put(&grace, "age", &json!(86), Some("birthday"))
        .expect("age");
    drop(r);
    accord_engine::testing::write_fixture(&path, &v2_fixture_path());
}

#[test]
fn a_v2_database_opens_with_its_projection_index_and_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.db");
    std::fs::copy(v2_fixture_path(), &path).expect("fixture v2.db is present");
    // As written: version 2, flagged, Grace's row missing, the index there.
    let conn = Connection::open(&path).expect("sqlite");
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).expect(sql) };
    assert_eq!(count("PRAGMA user_version"), 2);
    assert_eq!(
        count("SELECT count(*) FROM meta WHERE key = 'projection_stale'"),
        1
    );
    assert_eq!(count("SELECT count(*) FROM docs"), 4);
    assert_eq!(count("SELECT count(*) FROM records"), 3);
    assert_eq!(
        count("SELECT count(*) FROM query_indexes WHERE path = '$.name'"),
        1
    );
    drop(conn);

    let r = open(&path);
    assert_projection_agrees(&r, "the v2 fixture after open");
    assert!(!stale_flag(&path));
    let index = r.indexes().expect("indexes");
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].name, "records_contacts_name_d3e6c9f16b8a1a55");
    let grace = r
        .query(
            "SELECT json ->> '$.age' AS age FROM records
             WHERE collection = 'contacts' AND json_extract(json, '$.name') = ?1",
            &["Grace Hopper".into()],
        )
        .expect("grace");
    assert_eq!(grace.rows, vec![vec![SqlValue::Integer(86)]]);
    let plan = r
        .query(
            "EXPLAIN QUERY PLAN SELECT id FROM records
             WHERE collection = 'contacts' AND json_extract(json, '$.name') = 'Ada Lovelace'",
            &[],
        )
        .expect("plan");
    assert!(
        plan_text(&plan).contains(&index[0].name),
        "{}",
        plan_text(&plan)
    );
    let deleted = r
        .query("SELECT json FROM records WHERE deleted = 1", &[])
        .expect("deleted");
    assert_eq!(
        deleted.rows,
        vec![vec![SqlValue::Text(r#"{"name":"Bob"}"#.into())]]
    );
    // Version 3: the live view leaves Bob out, times read as RFC 3339.
    let live = r
        .query("SELECT count(*) FROM live_records", &[])
        .expect("live");
    assert_eq!(live.rows, vec![vec![SqlValue::Integer(3)]]);
    let created = r
        .query("SELECT created, conflicts FROM records LIMIT 1", &[])
        .expect("created");
    let text = created.rows[0][0].as_str().expect("created is text");
    assert!(
        text.len() == 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
        "{text}"
    );
    assert_eq!(created.rows[0][1], SqlValue::Integer(0));
}

#[test]
fn conflicts_deleted_records_and_readable_times_are_queryable() {
    let (_dir, r) = file_replica();
    let ada = r
        .create("contacts", &json!({"name": "Ada", "email": "ada@old.org"}))
        .expect("ada");
    let bob = r.create("contacts", &json!({"name": "Bob"})).expect("bob");
    r.delete(&bob).expect("delete bob");
    let other = Replica::open_in_memory().expect("other");
    other
        .merge_bytes(
            &ada,
            "contacts",
            &r.save(&ada).expect("save"),
            Origin::Local,
        )
        .expect("merge");
    other
        .put(&ada, "email", &json!("ada@laptop.org"), None)
        .expect("put");
    r.put(&ada, "email", &json!("ada@phone.org"), None)
        .expect("put");
    assert!(r
        .query("SELECT id FROM records WHERE conflicts > 0", &[])
        .expect("none yet")
        .rows
        .is_empty());
    r.merge_bytes(
        &ada,
        "contacts",
        &other.save(&ada).expect("save"),
        Origin::Local,
    )
    .expect("merge");

    let conflicted = r
        .query(
            "SELECT id, conflicts FROM live_records WHERE conflicts > 0",
            &[],
        )
        .expect("conflicted");
    assert_eq!(
        conflicted.rows,
        vec![vec![SqlValue::Text(ada.to_string()), SqlValue::Integer(1)]]
    );
    assert_eq!(r.check_projection().expect("check"), vec![]);
    let all = r.query("SELECT id FROM records", &[]).expect("all");
    let live = r.query("SELECT id FROM live_records", &[]).expect("live");
    assert_eq!((all.rows.len(), live.rows.len()), (2, 1));
    let times = r
        .query(
            "SELECT created, updated, created_at, updated_at FROM records WHERE id = ?1",
            &[ada.to_string().into()],
        )
        .expect("times");
    let row = &times.rows[0];
    let millis = row[2].as_i64().expect("created_at");
    let expected = chrono::DateTime::from_timestamp_millis(millis)
        .expect("a time")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert_eq!(row[0], SqlValue::Text(expected));
    assert!(row[1].as_str().expect("updated") >= row[0].as_str().expect("created"));

    // Writing the field again resolves the conflict, and the view says so.
    r.put(&ada, "email", &json!("ada@example.org"), None)
        .expect("resolve");
    let after = r
        .query(
            "SELECT conflicts FROM records WHERE id = ?1",
            &[ada.to_string().into()],
        )
        .expect("after");
    assert_eq!(after.rows, vec![vec![SqlValue::Integer(0)]]);
}
