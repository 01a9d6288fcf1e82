use super::*;

/// A chunk for `doc` with the given heads and base (the bytes are not
/// Automerge: the store does not parse them).
fn append(doc: DocId, heads: u8, base: Option<u8>) -> WriteOp {
    let hash = |b: u8| Heads::new(vec![automerge::ChangeHash([b; 32])]);
    WriteOp::Append {
        doc,
        collection: "c".parse().expect("collection"),
        kind: ChunkKind::Incremental,
        data: vec![heads],
        heads: hash(heads),
        base: base.map(hash).unwrap_or_else(Heads::empty),
        new_changes: 1,
        content: None,
    }
}

#[test]
fn cached_statements_are_compiled_once_and_synchronous_follows_each_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("s.db"), Durability::Full).expect("open");
    let synchronous = |store: &Store| -> i64 {
        store
            .connection()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous")
    };
    let doc = DocId::random();
    let (mut base, mut fsynced) = (None, 0);
    for heads in 1..=6u8 {
        // Received changes (recoverable) and local writes, in runs.
        let recoverable = heads % 4 < 2;
        let results = store
            .apply_with(&[&[append(doc, heads, base)]], recoverable)
            .expect("commits");
        assert!(results[0].is_ok(), "{results:?}");
        base = Some(heads);
        fsynced += u64::from(!recoverable);
        // 1 is NORMAL, 2 is FULL: a commit that must fsync ran at FULL.
        assert_eq!(synchronous(&store), if recoverable { 1 } else { 2 });
        assert_eq!(store.fsynced_commits(), fsynced);
    }
    assert_eq!(store.meta(&doc).expect("meta").expect("doc").chunk_count, 6);
    // SQLite compiles a statement again when its plan may depend on a bound
    // value and its bindings are cleared, as rusqlite's cache does: without
    // the planner's stability guarantee this one was, on every append.
    let stmt = store
        .connection()
        .prepare_cached(CHUNK_INSERT)
        .expect("cached");
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 6);
}

#[test]
fn a_failing_group_leaves_nothing_and_the_others_commit() {
    let mut store = Store::open_in_memory().expect("open");
    let (a, b, c, d) = (
        DocId::random(),
        DocId::random(),
        DocId::random(),
        DocId::random(),
    );
    let first = [append(a, 1, None)];
    // Its first write alone would succeed; its second names a base the
    // store does not hold, so the whole group is rolled back.
    let failing = [append(d, 1, None), append(b, 2, Some(9))];
    let last = [append(c, 1, None)];
    let results = store
        .apply(&[&first, &failing, &last])
        .expect("the transaction commits");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::Stale { .. })),
        "{results:?}"
    );
    assert!(store.meta(&a).expect("meta").is_some());
    assert!(store.meta(&c).expect("meta").is_some());
    assert!(
        store.meta(&d).expect("meta").is_none(),
        "half a group stayed"
    );
    assert!(store.meta(&b).expect("meta").is_none());
    // Savepoints are reused: a second batch works the same.
    let again = [append(a, 2, Some(1))];
    let results = store.apply(&[&again, &failing]).expect("commits");
    assert!(results[0].is_ok() && results[1].is_err(), "{results:?}");
    assert_eq!(store.meta(&a).expect("meta").expect("a").change_count, 2);
}
