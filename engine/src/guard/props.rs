//! Property tests: for documents built from random edits by random actors,
//! the guard counts exactly what Automerge reports; for random damage to
//! their bytes, it answers without panicking.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ObjType, ReadDoc, ScalarValue, ROOT};
use proptest::prelude::*;

use super::*;

/// One random edit.
#[derive(Debug, Clone)]
enum Edit {
    /// Put a number under one of a few keys (overwrites make preds).
    Put(u8, i64),
    /// Insert into the list at a position (modulo its length).
    Insert(u8, i64),
    /// Delete from the list at a position, if any.
    Delete(u8),
    /// Type text at a position (modulo its length).
    Type(u8, String),
    /// Increment the counter.
    Increment(i64),
    /// Commit the pending edits as one change.
    Commit,
    /// Make the next edits on another peer.
    Switch(u8),
    /// Merge every peer into the current one.
    Merge,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..6u8, any::<i64>()).prop_map(|(k, v)| Edit::Put(k, v)),
        (any::<u8>(), any::<i64>()).prop_map(|(p, v)| Edit::Insert(p, v)),
        any::<u8>().prop_map(Edit::Delete),
        (any::<u8>(), "[a-z ]{0,12}").prop_map(|(p, s)| Edit::Type(p, s)),
        (-5..5i64).prop_map(Edit::Increment),
        Just(Edit::Commit),
        (0..3u8).prop_map(Edit::Switch),
        Just(Edit::Merge),
    ]
}

/// Applies `edits` on three peers sharing one base, and merges them all.
fn build(edits: &[Edit]) -> Automerge {
    let mut base = AutoCommit::new().with_actor(ActorId::from(b"base".to_vec()));
    base.put_object(ROOT, "list", ObjType::List).expect("list");
    base.put_object(ROOT, "text", ObjType::Text).expect("text");
    base.put(ROOT, "count", ScalarValue::counter(0))
        .expect("counter");
    base.commit();
    let mut peers: Vec<AutoCommit> = (0..3u8)
        .map(|i| base.fork().with_actor(ActorId::from(vec![i; 8])))
        .collect();
    let mut at = 0;
    for edit in edits {
        match edit {
            Edit::Switch(i) => at = usize::from(*i) % peers.len(),
            Edit::Merge => {
                peers.iter_mut().for_each(|p| {
                    p.commit();
                });
                for i in (0..peers.len()).filter(|&i| i != at) {
                    let mut other = peers[i].clone();
                    peers[at].merge(&mut other).expect("merge");
                }
            }
            other => apply(&mut peers[at], other),
        }
    }
    peers.iter_mut().for_each(|p| {
        p.commit();
    });
    let mut doc = peers.swap_remove(0);
    for mut other in peers {
        doc.merge(&mut other).expect("merge");
    }
    doc.document().clone()
}

/// Applies one edit to `doc`.
fn apply(doc: &mut AutoCommit, edit: &Edit) {
    let list = doc.get(ROOT, "list").ok().flatten().map(|(_, id)| id);
    let text = doc.get(ROOT, "text").ok().flatten().map(|(_, id)| id);
    let (Some(list), Some(text)) = (list, text) else {
        return;
    };
    let len = doc.length(&list);
    let text_len = doc.length(&text);
    let result = match edit {
        Edit::Put(k, v) => doc.put(ROOT, format!("k{k}"), *v),
        Edit::Insert(p, v) => doc.insert(&list, usize::from(*p) % (len + 1), *v),
        Edit::Delete(p) if len > 0 => doc.delete(&list, usize::from(*p) % len),
        Edit::Type(p, s) => doc
            .splice_text(&text, usize::from(*p) % (text_len + 1), 0, s)
            .map(|_| ()),
        Edit::Increment(by) => doc.increment(ROOT, "count", *by),
        Edit::Commit => {
            doc.commit();
            Ok(())
        }
        _ => Ok(()),
    };
    result.expect("edit");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_guard_counts_what_automerge_reports(
        edits in proptest::collection::vec(edit(), 0..120),
    ) {
        let doc = build(&edits);
        let open = Budget {
            max_heap_bytes: u64::MAX,
    max_inflated_bytes: u64::MAX,
            max_ops: u64::MAX,
            max_ops_per_change: u64::MAX,
            max_changes: u64::MAX,
            max_actors: u64::MAX,
                };
        let changes = doc.get_changes(&[]);
        for saved in [doc.save(), doc.save_nocompress()] {
            let found = inspect(&saved, &open).expect("a real document passes");
            prop_assert_eq!(found.changes, changes.len() as u64);
            prop_assert_eq!(found.ops, doc.stats().num_ops);
            prop_assert_eq!(found.actors, doc.stats().num_actors);
            prop_assert!(inspect(&saved, &Budget::default()).is_ok());
        }
        let found = inspect(&doc.save_after(&[]), &open).expect("real changes pass");
        prop_assert_eq!(found.changes, changes.len() as u64);
        prop_assert_eq!(found.ops, changes.iter().map(|c| c.len() as u64).sum::<u64>());
    }

    #[test]
    fn damaged_bytes_never_panic(
        edits in proptest::collection::vec(edit(), 0..60),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        incremental in any::<bool>(),
    ) {
        let doc = build(&edits);
        let mut bytes = if incremental { doc.save_after(&[]) } else { doc.save() };
        prop_assume!(!bytes.is_empty());
        for (at, byte) in &damage {
            let at = at.index(bytes.len());
            bytes[at] = *byte;
        }
        let _ = inspect(&bytes, &Budget::default());
        let _ = inspect(&bytes[..cut.index(bytes.len())], &Budget::default());
    }
}
