use std::time::Duration;

use crate::error::StoreError;
use automerge::transaction::Transactable;
use automerge::ROOT;
use serde_json::json;

use super::*;

fn file_replica() -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("r.db")).expect("open");
    (dir, replica)
}

#[test]
fn create_change_get_list_delete_round_trip_and_reopen() {
    let (dir, r) = file_replica();
    let ada = r
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    let bob = r
        .create("contacts", &json!({"name": "Bob"}))
        .expect("create");
    let note = r.create("notes", &json!({"text": "hi"})).expect("create");
    r.put(&ada, "email", &json!("ada@example.org"), Some("email"))
        .expect("put");
    r.change(&bob, None, |tx| tx.put(ROOT, "age", 42))
        .expect("change");
    assert_eq!(
        r.get(&ada).expect("get").value,
        json!({"name": "Ada", "email": "ada@example.org"})
    );
    assert_eq!(r.list("contacts").expect("list").len(), 2);
    r.delete(&bob).expect("delete");
    assert!(matches!(r.get(&bob), Err(Error::Deleted(_))));
    assert!(matches!(
        r.put(&bob, "x", &json!(1), None),
        Err(Error::Deleted(_))
    ));
    assert_eq!(r.list("contacts").expect("list").len(), 1);
    let all = r.list_with(&ListOptions::everything()).expect("list");
    assert_eq!(all.len(), 3);
    drop(r);

    let r = Replica::open(dir.path().join("r.db")).expect("reopen");
    assert_eq!(
        r.get(&ada).expect("get").get("email").expect("path"),
        &json!("ada@example.org")
    );
    assert_eq!(r.get(&note).expect("get").value, json!({"text": "hi"}));
    assert!(matches!(r.get(&bob), Err(Error::Deleted(_))));
    let meta = r.meta(&ada).expect("meta");
    assert_eq!(
        (meta.change_count, meta.collection.as_str(), meta.deleted),
        (2, "contacts", false)
    );
    let history = r.history(&ada).expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].message.as_deref(), Some("email"));
    assert_eq!(history[1].deps, vec![history[0].hash]);
    assert_eq!(r.heads(&ada).expect("heads"), vec![history[1].hash]);
}

#[test]
fn unknown_ids_bad_collections_and_aborted_changes_are_errors() {
    let r = Replica::open_in_memory().expect("open");
    let missing = DocId::random();
    assert!(matches!(r.get(&missing), Err(Error::NotFound(id)) if id == missing));
    assert!(matches!(
        r.create("bad name!", &json!({})),
        Err(Error::BadCollection(_))
    ));
    assert!(matches!(
        r.create("", &json!({})),
        Err(Error::BadCollection(_))
    ));
    assert!(matches!(
        r.create("c", &json!([1])),
        Err(Error::Aborted { .. })
    ));
    let id = r.create("c", &json!({"n": 1})).expect("create");
    let err = r.change(&id, None, |tx| {
        tx.put(ROOT, "n", 2).map_err(std::io::Error::other)?;
        Err::<(), _>(std::io::Error::other("no"))
    });
    assert!(matches!(err, Err(Error::Aborted { .. })));
    assert_eq!(r.get(&id).expect("get").value, json!({"n": 1}));
    assert_eq!(r.history(&id).expect("history").len(), 1);
    // A change that edits nothing records nothing.
    r.change(&id, None, |_| Ok::<_, automerge::AutomergeError>(()))
        .expect("noop");
    assert_eq!(r.history(&id).expect("history").len(), 1);
}

#[test]
fn history_at_heads_diff_and_short_hashes() {
    let r = Replica::open_in_memory().expect("open");
    let id = r.create("c", &json!({"n": 1})).expect("create");
    let first = r.heads(&id).expect("heads");
    r.put(&id, "n", &json!(2), None).expect("put");
    r.put(&id, "m", &json!("x"), None).expect("put");
    assert_eq!(r.get_at(&id, &first).expect("at").value, json!({"n": 1}));
    let now = r.heads(&id).expect("heads");
    let patches = r.diff(&id, &first, &now).expect("diff");
    let lines: Vec<String> = patches.iter().map(describe_patch).collect();
    assert!(lines.contains(&"set n = 2".to_owned()), "{lines:?}");
    assert!(lines.contains(&"set m = \"x\"".to_owned()), "{lines:?}");
    let short = &first[0].to_string()[..10];
    assert_eq!(r.resolve_heads(&id, short).expect("resolve"), first);
    assert!(matches!(
        r.resolve_heads(&id, "zz"),
        Err(Error::UnknownHead { .. })
    ));
    assert!(matches!(
        r.resolve_heads(&id, "0000000"),
        Err(Error::UnknownHead { .. })
    ));
}

#[test]
fn compaction_keeps_content_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ReplicaOptions {
        compact_after_chunks: 4,
        ..ReplicaOptions::default()
    };
    let r = Replica::open_with(dir.path().join("r.db"), options.clone()).expect("open");
    let id = r.create("c", &json!({"n": 0})).expect("create");
    for i in 1..=10 {
        r.put(&id, "n", &json!(i), None).expect("put");
    }
    let meta = r.meta(&id).expect("meta");
    assert!(meta.chunk_count < 5, "compaction ran: {meta:?}");
    let before = (r.get(&id).expect("get"), r.history(&id).expect("history"));
    drop(r);
    let r = Replica::open_with(dir.path().join("r.db"), options).expect("reopen");
    assert_eq!(
        (r.get(&id).expect("get"), r.history(&id).expect("history")),
        before
    );
}

#[test]
fn subscriptions_filter_and_report_origin() {
    let r = Replica::open_in_memory().expect("open");
    let all = r.subscribe(Filter::All);
    let contacts = r.subscribe(Filter::Collection("contacts".into()));
    let id = r.create("contacts", &json!({})).expect("create");
    let one = r.subscribe(Filter::Doc(id));
    r.create("notes", &json!({})).expect("create");
    r.put(&id, "a", &json!(1), None).expect("put");
    let t = Duration::from_secs(5);
    let e = all.recv_timeout(t).expect("created");
    assert_eq!(
        (e.doc, e.kind, e.origin.clone()),
        (id, ChangeKind::Created, Origin::Local)
    );
    assert_eq!(all.recv_timeout(t).expect("notes").collection, "notes");
    assert_eq!(
        all.recv_timeout(t).expect("changed").kind,
        ChangeKind::Changed
    );
    assert_eq!(
        contacts.recv_timeout(t).expect("c1").kind,
        ChangeKind::Created
    );
    assert_eq!(
        contacts.recv_timeout(t).expect("c2").kind,
        ChangeKind::Changed
    );
    assert_eq!(contacts.try_recv(), None);
    let e = one.recv_timeout(t).expect("doc");
    assert_eq!((e.kind, e.is_remote()), (ChangeKind::Changed, false));
    // Remote bytes arrive through merge_bytes and are reported as remote.
    let other = Replica::open_in_memory().expect("open");
    let remote = other
        .create("contacts", &json!({"name": "Eve"}))
        .expect("create");
    let bytes = other.save(&remote).expect("save");
    r.merge_bytes(
        &remote,
        "contacts",
        &bytes,
        Origin::Remote("relay".parse().expect("valid peer id")),
    )
    .expect("merge");
    let e = contacts.recv_timeout(t).expect("remote");
    assert_eq!(
        (e.doc, e.kind, e.is_remote()),
        (remote, ChangeKind::Created, true)
    );
}

#[test]
fn a_slow_subscriber_is_told_what_it_missed() {
    let r = Replica::open_in_memory().expect("open");
    let sub = r.subscribe(Filter::All);
    let id = r.create("c", &json!({})).expect("create");
    for i in 0..events::SUBSCRIPTION_CAPACITY + 10 {
        r.put(&id, "n", &json!(i), None).expect("put");
    }
    assert_eq!(sub.try_recv(), Some(Err(RecvError::Lagged(11))));
    assert!(matches!(sub.try_recv(), Some(Ok(_))));
}

#[test]
fn concurrent_writers_share_commits_and_lose_nothing() {
    let (_dir, r) = file_replica();
    let ids: Vec<DocId> = (0..8)
        .map(|_| r.create("c", &json!({"n": 0})).expect("create"))
        .collect();
    std::thread::scope(|s| {
        for id in &ids {
            let r = r.clone();
            s.spawn(move || {
                for i in 1..=20 {
                    r.put(id, "n", &json!(i), None).expect("put");
                }
            });
        }
    });
    for id in &ids {
        assert_eq!(r.get(id).expect("get").value, json!({"n": 20}));
        assert_eq!(r.history(id).expect("history").len(), 21);
    }
}

#[test]
fn typed_records_round_trip() {
    #[derive(Debug, Clone, PartialEq, autosurgeon::Reconcile, autosurgeon::Hydrate)]
    struct Contact {
        name: String,
        tags: Vec<String>,
    }
    let r = Replica::open_in_memory().expect("open");
    let mut c = Contact {
        name: "Ada".into(),
        tags: vec!["math".into()],
    };
    let id = r.create_typed("contacts", &c).expect("create");
    assert_eq!(r.get_typed::<Contact>(&id).expect("get"), c);
    c.tags.push("engines".into());
    r.update_typed(&id, &c, Some("tag")).expect("update");
    assert_eq!(r.get_typed::<Contact>(&id).expect("get"), c);
    assert_eq!(
        r.get(&id).expect("json").value,
        json!({"name": "Ada", "tags": ["math", "engines"]})
    );
    assert!(matches!(
        r.get_typed::<Vec<u8>>(&id),
        Err(Error::Hydrate { .. })
    ));
}

#[test]
fn the_cache_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ReplicaOptions {
        cache_capacity: 16,
        ..ReplicaOptions::default()
    };
    let r = Replica::open_with(dir.path().join("r.db"), options).expect("open");
    let ids: Vec<DocId> = (0..100)
        .map(|i| r.create("c", &json!({"i": i})).expect("create"))
        .collect();
    assert!(r.loaded_documents() <= 16);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(r.get(id).expect("get").value, json!({"i": i}));
    }
    assert!(r.loaded_documents() <= 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handle_runs_off_the_runtime() {
    let (_dir, r) = file_replica();
    let a = r.asynchronous();
    let id = a.create("c", json!({"n": 1})).await.expect("create");
    a.put(id, "n".into(), json!(2)).await.expect("put");
    a.change(id, Some("m".into()), |tx| tx.put(ROOT, "k", "v"))
        .await
        .expect("change");
    assert_eq!(
        a.get(id).await.expect("get").value,
        json!({"n": 2, "k": "v"})
    );
    assert_eq!(a.history(id).await.expect("history").len(), 3);
    a.delete(id).await.expect("delete");
    assert!(a.list("c").await.expect("list").is_empty());
}

#[test]
fn two_writers_on_one_file_see_and_keep_each_others_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let options = ReplicaOptions {
        compact_after_chunks: 2,
        ..ReplicaOptions::default()
    };
    let app = Replica::open_with(&path, options.clone()).expect("app");
    let cli = Replica::open_with(&path, options.clone()).expect("cli");
    let id = app.create("c", &json!({"n": 0})).expect("create");
    app.get(&id).expect("loaded in the app's cache");
    cli.put(&id, "cli", &json!(1), None).expect("cli put");
    // The app's cached copy is stale: reads and writes notice.
    assert_eq!(app.get(&id).expect("get").value["cli"], json!(1));
    cli.put(&id, "cli", &json!(2), None).expect("cli put");
    app.put(&id, "app", &json!(1), None).expect("app put");
    app.put(&id, "app", &json!(2), None)
        .expect("app put compacts");
    cli.put(&id, "cli", &json!(3), None).expect("cli put");
    drop((app, cli));
    let r = Replica::open_with(&path, options).expect("reopen");
    assert_eq!(
        r.get(&id).expect("get").value,
        json!({"n": 0, "cli": 3, "app": 2})
    );
    assert_eq!(r.history(&id).expect("history").len(), 6);
}

#[test]
fn a_write_racing_another_writer_is_merged_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let a = Replica::open(&path).expect("a");
    let b = Replica::open(&path).expect("b");
    let id = a.create("c", &json!({})).expect("create");
    b.get(&id).expect("b loads it");
    // Make the change on A's copy, then let B write before A persists: the
    // store refuses A's stale append, A merges B's change and retries.
    let entry = a.entry(&id).expect("entry");
    let mut cached = entry.lock();
    let state = cached.as_mut().expect("loaded");
    let before = state.doc.get_heads();
    let mut tx = state.doc.transaction();
    tx.put(ROOT, "a", 1).expect("put");
    tx.commit();
    b.put(&id, "b", &json!(1), None).expect("b writes first");
    a.persist_since(&id, &mut cached, &before, Origin::Local)
        .expect("a persists after merging");
    drop(cached);
    let fresh = Replica::open(&path).expect("reopen");
    assert_eq!(fresh.get(&id).expect("get").value, json!({"a": 1, "b": 1}));
}

#[test]
fn replicas_are_send_sync_and_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Replica>();
    assert_send_sync::<AsyncReplica>();
    let a = Replica::open_in_memory().expect("a");
    let b = Replica::open_in_memory().expect("b");
    let id = a.create("c", &json!({"x": 1})).expect("create");
    assert!(
        matches!(b.get(&id), Err(Error::NotFound(_))),
        "replicas are independent"
    );
    let shared = a.clone();
    std::thread::spawn(move || shared.put(&id, "x", &json!(2), None))
        .join()
        .expect("join")
        .expect("put");
    assert_eq!(a.get(&id).expect("get").value, json!({"x": 2}));
}

#[test]
fn covers_answers_ancestry_and_refuses_to_guess_about_unknown_changes() {
    use crate::sync::SyncDocs;
    let r = Replica::open_in_memory().expect("open");
    let id = r.create("c", &json!({"n": 0})).expect("create");
    let first = r.heads(&id).expect("heads");
    r.put(&id, "n", &json!(1), None).expect("put");
    let second = r.heads(&id).expect("heads");
    // Later heads hold the earlier ones; not the other way round.
    assert_eq!(r.covers(&id, &first, &second).expect("covers"), Some(true));
    assert_eq!(r.covers(&id, &second, &second).expect("covers"), Some(true));
    assert_eq!(r.covers(&id, &second, &first).expect("covers"), Some(false));
    // Heads naming a change this replica has not seen: no answer yet.
    let elsewhere = Replica::open_in_memory().expect("other");
    let other = elsewhere.create("c", &json!({"x": 1})).expect("create");
    let unknown = elsewhere.heads(&other).expect("heads");
    assert_eq!(r.covers(&id, &first, &unknown).expect("covers"), None);
    assert_eq!(r.covers(&other, &first, &second).expect("covers"), None);
}

/// Two replicas that changed the same fields without seeing each other.
fn concurrent_edits() -> (Replica, Replica, DocId) {
    let a = Replica::open_in_memory().expect("a");
    let b = Replica::open_in_memory().expect("b");
    let id = a
        .create(
            "c",
            &json!({"email": "old", "address": {"city": "Paris"}, "tags": ["x"]}),
        )
        .expect("create");
    let remote = || Origin::Remote("peer".parse().expect("valid peer id"));
    b.merge_bytes(&id, "c", &a.save(&id).expect("save"), remote())
        .expect("b gets it");
    a.put(&id, "email", &json!("a@example.org"), None)
        .expect("a");
    a.put(&id, "address.city", &json!("Lyon"), None).expect("a");
    a.put(&id, "tags.0", &json!("a"), None).expect("a");
    b.put(&id, "email", &json!("b@example.org"), None)
        .expect("b");
    b.put(&id, "address.city", &json!("Nice"), None).expect("b");
    b.put(&id, "tags.0", &json!("b"), None).expect("b");
    a.merge_bytes(&id, "c", &b.save(&id).expect("save"), remote())
        .expect("merge");
    b.merge_bytes(&id, "c", &a.save(&id).expect("save"), remote())
        .expect("merge");
    (a, b, id)
}

#[test]
fn concurrent_values_are_listed_with_the_change_that_wrote_each() {
    let (a, b, id) = concurrent_edits();
    let conflicts = a.conflicts(&id).expect("conflicts");
    let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["address.city", "email", "tags.0"]);
    let shown = a.get(&id).expect("get").value;
    for c in &conflicts {
        assert_eq!(c.values.len(), 2, "{c:?}");
        let winner: Vec<_> = c.values.iter().filter(|v| v.shown).collect();
        assert_eq!(winner.len(), 1, "exactly one value is the one reads show");
        let path: crate::json::Path = c.path.parse().expect("path");
        assert_eq!(path.lookup(&shown).expect("at path"), &winner[0].value);
        let history: Vec<_> = a
            .history(&id)
            .expect("history")
            .into_iter()
            .map(|h| h.hash)
            .collect();
        for v in &c.values {
            assert!(
                history.contains(&v.change.expect("a change")),
                "names a real change"
            );
        }
    }
    assert_eq!(
        b.conflicts(&id).expect("b"),
        conflicts,
        "the same on every replica"
    );
    // Writing the field again resolves it; the others stay.
    a.put(&id, "email", &json!("ada@example.org"), None)
        .expect("resolve");
    let left: Vec<String> = a
        .conflicts(&id)
        .expect("conflicts")
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(left, ["address.city", "tags.0"]);
    // The projection's count walks the same fields.
    let counted = a
        .read_any(&id, |state| super::conflicts::count(&state.doc))
        .expect("count");
    assert_eq!(counted, 2);
    // As of the old heads the conflict is still there.
    let at = a
        .conflicts_at(&id, &b.heads(&id).expect("heads"))
        .expect("at");
    assert_eq!(at.len(), 3);
}

/// Bytes the guard passes but that make Automerge 0.12 panic (the `guard`
/// fuzz target's regression, its checksums made valid as the target does).
fn automerge_panicking_bytes() -> Vec<u8> {
    let bytes = crate::fuzzing::with_valid_checksums(include_bytes!(
        "../../../fuzz/regressions/guard/automerge-panics-on-unknown-actor"
    ));
    crate::guard::inspect(&bytes, &ReplicaOptions::default().message_budget)
        .expect("the guard passes these bytes");
    bytes
}

#[test]
fn import_and_merge_of_bytes_that_make_automerge_panic_are_errors() {
    let r = Replica::open_in_memory().expect("open");
    let bytes = automerge_panicking_bytes();
    let imported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.import("c", &bytes)))
        .expect("import must not panic");
    assert!(
        matches!(imported, Err(Error::NotAutomerge(_))),
        "{imported:?}"
    );
    let id = DocId::random();
    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.merge_bytes(&id, "c", &bytes, Origin::Local)
    }))
    .expect("merge_bytes must not panic");
    assert!(
        matches!(merged, Err(Error::BadSyncData { doc, .. }) if doc == id),
        "{merged:?}"
    );
    assert!(r.list("c").expect("list").is_empty(), "nothing was stored");
}

#[test]
fn commit_together_commits_at_the_end_and_delivers_events_after() {
    let (dir, r) = file_replica();
    let other = Replica::open(dir.path().join("r.db")).expect("second connection");
    let events = r.subscribe(Filter::Collection("c".into()));
    let ids = r
        .commit_together(|| {
            let ids: Vec<DocId> = (0..3)
                .map(|i| r.create("c", &json!({ "i": i })).expect("held create"))
                .collect();
            r.put(&ids[0], "i", &json!(10), None).expect("held put");
            // Nothing is committed or announced before the end.
            assert!(other.list("c").expect("list").is_empty());
            assert!(events.try_recv().is_none());
            // This thread reads what it wrote.
            assert_eq!(r.get(&ids[0]).expect("get").value, json!({"i": 10}));
            ids
        })
        .expect("commit");
    assert_eq!(other.list("c").expect("list").len(), 3);
    assert_eq!(other.get(&ids[0]).expect("get").value, json!({"i": 10}));
    let kinds: Vec<_> = std::iter::from_fn(|| events.try_recv())
        .map(|e| e.expect("event").kind)
        .collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Created,
            ChangeKind::Created,
            ChangeKind::Created,
            ChangeKind::Changed
        ]
    );
    // Outside, writes commit as they return again.
    r.put(&ids[1], "i", &json!(11), None).expect("put");
    assert_eq!(other.get(&ids[1]).expect("get").value, json!({"i": 11}));
}

#[test]
fn a_failed_commit_together_reports_it_and_drops_what_it_held() {
    let (dir, r) = file_replica();
    let other = Replica::open(dir.path().join("r.db")).expect("second connection");
    let x = r.create("c", &json!({"a": 0})).expect("create");
    other.get(&x).expect("load in the other connection");
    let events = r.subscribe(Filter::Doc(x));
    let outcome = r.commit_together(|| {
        r.put(&x, "a", &json!(1), None).expect("held put");
        // Another writer commits on top of what is stored meanwhile: the
        // held write's base is stale by the end.
        other.put(&x, "b", &json!(2), None).expect("other put");
    });
    assert!(
        matches!(outcome, Err(Error::Store(StoreError::Stale { .. }))),
        "{outcome:?}"
    );
    // The held change is gone from memory too: reads show what is stored.
    assert_eq!(r.get(&x).expect("get").value, json!({"a": 0, "b": 2}));
    let event = events.try_recv().expect("an event").expect("not lagged");
    assert_eq!(event.heads, other.heads(&x).expect("heads"));
    // And the next write goes through.
    r.put(&x, "a", &json!(3), None).expect("put after");
    assert_eq!(other.get(&x).expect("get").value, json!({"a": 3, "b": 2}));
}

#[test]
fn a_panic_inside_commit_together_still_commits_and_stops_holding() {
    let (dir, r) = file_replica();
    let other = Replica::open(dir.path().join("r.db")).expect("second connection");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.commit_together(|| {
            r.create("c", &json!({"before": "the panic"}))
                .expect("held");
            panic!("a bug in the work");
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(other.list("c").expect("list").len(), 1);
    let id = r.create("c", &json!({"after": true})).expect("create");
    assert_eq!(
        other.get(&id).expect("committed at once").value,
        json!({"after": true})
    );
}

/// Changes received from a peer commit without an fsync of their own
/// unless `received_durability` asks for one (the relay's setting); local
/// writes always keep `durability`.
#[test]
fn received_changes_skip_the_fsync_unless_asked_and_local_writes_never_do() {
    use crate::sync::SyncDocs;
    let dir = tempfile::tempdir().expect("tempdir");
    let notes = Collection::new("notes").expect("name");
    let relay = PeerId::new("relay").expect("peer id");
    for (received, fsyncs_per_receipt) in [(Durability::Normal, 0), (Durability::Full, 1)] {
        let options = ReplicaOptions {
            received_durability: received,
            ..ReplicaOptions::default()
        };
        let path = dir.path().join(format!("{received:?}.db"));
        let r = Replica::open_with(&path, options).expect("open");
        let fsynced = |r: &Replica| r.inner.committer.with_store(|s| s.fsynced_commits());

        let before = fsynced(&r);
        let local = r.create("notes", &json!({"n": 1})).expect("create");
        assert_eq!(fsynced(&r), before + 1, "a local write fsyncs");

        let mut doc = automerge::AutoCommit::new();
        doc.put(ROOT, "n", 2).expect("put");
        let (id, data) = (DocId::random(), doc.save());
        let before = fsynced(&r);
        let got = r
            .receive_whole(&id, &notes, &data, &relay)
            .expect("received");
        assert!(got.created);
        assert!(SyncDocs::delete(&r, &local, &notes, &relay).expect("deleted"));
        assert_eq!(
            fsynced(&r) - before,
            2 * fsyncs_per_receipt,
            "received with {received:?}"
        );
        assert_eq!(r.get(&id).expect("get").value, json!({"n": 2}));

        // A run of received changes commits with its sync states (as the
        // driver commits them): the bookkeeping does not bring the fsync
        // back.
        let mut more = automerge::AutoCommit::new();
        more.put(ROOT, "n", 4).expect("put");
        let (other, data) = (DocId::random(), more.save());
        let state = crate::sync::EncodedState {
            doc: other,
            bytes: automerge::sync::State::new().encode(),
        };
        let before = fsynced(&r);
        r.commit_together(|| {
            r.receive_whole(&other, &notes, &data, &relay)
                .expect("received");
            r.save_sync_states(&relay, vec![state.clone()])
                .expect("state");
        })
        .expect("committed");
        assert_eq!(
            fsynced(&r) - before,
            fsyncs_per_receipt,
            "with {received:?}"
        );

        // The next local write carries every commit before it to the disk.
        let before = fsynced(&r);
        r.put(&id, "n", &json!(3), None).expect("put");
        assert_eq!(fsynced(&r), before + 1);
        drop(r);
        let r = Replica::open(&path).expect("reopen");
        assert_eq!(r.get(&id).expect("get").value, json!({"n": 3}));
        assert!(r.meta(&local).expect("meta").deleted);
    }
}
