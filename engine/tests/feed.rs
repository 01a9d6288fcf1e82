//! The collection sequence and change feed (`Replica::changes_since`) on
//! real files: a consumer that reads from its cursor after any run of
//! writes sees exactly the records written since, once each, in the order
//! of their latest write, with their latest content and the right kind;
//! numbers only grow, per collection; cursors survive reopening the file;
//! changes that arrive by sync are numbered like local ones.

use std::collections::BTreeMap;

use accord_engine::{ChangeKind, DocId, Replica};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Put(usize, i64),
    Delete(usize),
    Read(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize).prop_map(Op::Create),
        4 => (0..8usize, any::<i64>()).prop_map(|(d, v)| Op::Put(d, v)),
        1 => (0..8usize).prop_map(Op::Delete),
        3 => (0..2usize).prop_map(Op::Read),
        1 => Just(Op::Reopen),
    ]
}

const COLLECTIONS: [&str; 2] = ["contacts", "notes"];

/// What a consumer of one collection knows.
#[derive(Debug, Default)]
struct Consumer {
    cursor: u64,
    /// Records written since the cursor, in order of their latest write,
    /// with what the feed must say about them.
    pending: Vec<(DocId, ChangeKind, i64)>,
    /// Records the consumer has seen.
    seen: Vec<DocId>,
}

impl Consumer {
    fn wrote(&mut self, id: DocId, kind: ChangeKind, value: i64) {
        let created_unseen = !self.seen.contains(&id)
            || self
                .pending
                .iter()
                .any(|(d, k, _)| *d == id && *k == ChangeKind::Created);
        self.pending.retain(|(d, _, _)| *d != id);
        let kind = match kind {
            ChangeKind::Changed if created_unseen => ChangeKind::Created,
            other => other,
        };
        self.pending.push((id, kind, value));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_consumer_sees_every_write_since_its_cursor_once_in_order(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("feed.db");
        let mut replica = Replica::open(&path).expect("open");
        let mut docs: Vec<(DocId, usize, bool)> = Vec::new();
        let mut consumers: [Consumer; 2] = Default::default();
        let mut last_seq = [0u64; 2];
        for op in ops {
            match op {
                Op::Create(c) => {
                    let id = replica.create(COLLECTIONS[c], &json!({"v": 0})).expect("create");
                    docs.push((id, c, false));
                    consumers[c].wrote(id, ChangeKind::Created, 0);
                }
                Op::Put(d, v) if d < docs.len() && !docs[d].2 => {
                    let (id, c, _) = docs[d];
                    replica.put(&id, "v", &json!(v), None).expect("put");
                    consumers[c].wrote(id, ChangeKind::Changed, v);
                }
                Op::Delete(d) if d < docs.len() && !docs[d].2 => {
                    let (id, c, _) = docs[d];
                    let value = replica.get(&id).expect("get").value["v"].as_i64().expect("v");
                    replica.delete(&id).expect("delete");
                    docs[d].2 = true;
                    consumers[c].wrote(id, ChangeKind::Deleted, value);
                }
                Op::Read(c) => {
                    let consumer = &mut consumers[c];
                    let feed = replica.changes_since(COLLECTIONS[c], consumer.cursor, 1000).expect("feed");
                    let got: Vec<(DocId, ChangeKind, i64)> = feed
                        .iter()
                        .map(|e| (e.id, e.kind, e.value.as_ref().and_then(|v| v["v"].as_i64()).expect("content")))
                        .collect();
                    prop_assert_eq!(&got, &consumer.pending);
                    let seqs: Vec<u64> = feed.iter().map(|e| e.seq).collect();
                    prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {:?}", seqs);
                    if let Some(last) = feed.last() {
                        prop_assert!(last.seq > last_seq[c], "numbers only grow");
                        last_seq[c] = last.seq;
                        prop_assert_eq!(replica.collection_seq(COLLECTIONS[c]).expect("seq"), last.seq);
                        consumer.cursor = last.seq;
                    }
                    consumer.seen.extend(consumer.pending.drain(..).map(|(d, _, _)| d));
                }
                Op::Reopen => {
                    drop(replica);
                    replica = Replica::open(&path).expect("reopen");
                }
                Op::Put(..) | Op::Delete(..) => {}
            }
        }
    }
}

#[test]
fn changes_that_arrive_by_sync_are_numbered_like_local_ones() {
    use accord_engine::sync::SyncDocs;
    let a = Replica::open_in_memory().expect("a");
    let b = Replica::open_in_memory().expect("b");
    let id = a
        .create("contacts", &json!({"name": "Ada"}))
        .expect("create");
    // Move the document from a to b through the sync seam, as a relay's
    // hub does: a's messages applied by b until a has nothing to say.
    let collection = accord_engine::Collection::new("contacts").expect("collection");
    let peer = accord_engine::PeerId::new("relay").expect("peer");
    let (mut at_a, mut at_b) = (
        accord_engine::automerge::sync::State::new(),
        accord_engine::automerge::sync::State::new(),
    );
    for _ in 0..10 {
        let to_b = SyncDocs::generate(&a, &id, &collection, &mut at_a).expect("generate");
        let to_a = SyncDocs::generate(&b, &id, &collection, &mut at_b).expect("generate");
        if to_b.is_none() && to_a.is_none() {
            break;
        }
        if let Some(m) = to_b {
            SyncDocs::receive(&b, &id, &collection, &mut at_b, m, &peer).expect("receive");
        }
        if let Some(m) = to_a {
            SyncDocs::receive(&a, &id, &collection, &mut at_a, m, &peer).expect("receive");
        }
    }
    assert_eq!(b.get(&id).expect("synced").value, json!({"name": "Ada"}));
    let mut feed: BTreeMap<u64, DocId> = BTreeMap::new();
    for entry in b.changes_since("contacts", 0, 10).expect("feed") {
        assert_eq!(entry.kind, ChangeKind::Created);
        feed.insert(entry.seq, entry.id);
    }
    assert_eq!(feed.values().copied().collect::<Vec<_>>(), vec![id]);
    let peer = accord_engine::PeerId::new("relay").expect("peer");
    assert!(SyncDocs::delete(&b, &id, &collection, &peer).expect("delete"));
    let cursor = *feed.keys().last().expect("a number");
    let after = b.changes_since("contacts", cursor, 10).expect("feed");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].kind, ChangeKind::Deleted);
    assert_eq!(after[0].value, Some(json!({"name": "Ada"})));
}
