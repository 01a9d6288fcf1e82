//! The guard against real Automerge output (its counts must match what
//! Automerge reports) and against forged bytes (bombs must be refused
//! without the guard itself allocating much).

use std::io::Read;

use automerge::sync::{ChunkList, Message, MessageVersion, State, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Automerge, ObjType, ReadDoc, ROOT};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use super::forge::{self, Col};
use super::*;

/// Counts allocations, to show the guard's own peak stays small.
#[global_allocator]
static HEAP: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// A budget that admits everything, to compare counts with Automerge's.
const OPEN: Budget = Budget {
    max_heap_bytes: u64::MAX,
    max_inflated_bytes: u64::MAX,
    max_ops: u64::MAX,
    max_ops_per_change: u64::MAX,
    max_changes: u64::MAX,
    max_actors: u64::MAX,
};

/// Serializes the tests that measure allocations.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bytes allocated while `f` runs (an upper bound of its peak): the least
/// of three runs, since other tests allocate concurrently and the guard is
/// deterministic.
fn allocated(mut f: impl FnMut()) -> usize {
    let _serial = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    (0..3)
        .map(|_| {
            let region = Region::new(HEAP);
            f();
            // Growth by `realloc` is included.
            region.change().bytes_allocated
        })
        .min()
        .unwrap_or(0)
}

/// Three actors editing a map, a list and a text concurrently, merged:
/// puts over concurrent puts (several predecessors), deletions, counters,
/// marks, and enough data that `save()` compresses columns.
fn busy_doc() -> Automerge {
    let mut base = AutoCommit::new().with_actor(ActorId::from(b"base".to_vec()));
    let list = base.put_object(ROOT, "list", ObjType::List).expect("list");
    let text = base.put_object(ROOT, "text", ObjType::Text).expect("text");
    base.put(ROOT, "count", automerge::ScalarValue::counter(0))
        .expect("counter");
    base.commit();
    let mut peers: Vec<AutoCommit> = (0..3u8)
        .map(|i| base.fork().with_actor(ActorId::from(vec![i; 16])))
        .collect();
    for round in 0..40i64 {
        for (i, peer) in peers.iter_mut().enumerate() {
            peer.put(ROOT, format!("key{}", round % 7), round * 10 + i as i64)
                .expect("put");
            peer.insert(&list, 0, format!("item {round} from {i}"))
                .expect("insert");
            peer.splice_text(&text, 0, 0, "typed text ")
                .expect("splice");
            peer.increment(ROOT, "count", 1).expect("increment");
            if round % 3 == 0 && peer.length(&list) > 2 {
                peer.delete(&list, 1).expect("delete");
            }
            peer.commit();
        }
        let (first, rest) = peers.split_at_mut(1);
        for other in rest.iter_mut() {
            first[0].merge(other).expect("merge");
            other.merge(&mut first[0]).expect("merge");
        }
    }
    let mut doc = peers.swap_remove(0);
    let text = doc.get(ROOT, "text").expect("get").map(|(_, id)| id);
    if let Some(text) = text {
        let mark = automerge::marks::Mark::new("bold".into(), true, 0, 5);
        doc.mark(&text, mark, automerge::marks::ExpandMark::Both)
            .expect("mark");
    }
    doc.commit();
    doc.document().clone()
}

/// Checks a document chunk's footprint against what Automerge reports.
fn assert_counts_document(doc: &Automerge, bytes: &[u8]) {
    let found = inspect(bytes, &OPEN).expect("a real document passes");
    assert_eq!(found.chunks, 1);
    assert_eq!(found.changes, doc.get_changes(&[]).len() as u64);
    assert_eq!(found.ops, doc.stats().num_ops);
    assert_eq!(found.actors, doc.stats().num_actors);
}

/// Checks a run of change chunks' footprint against the changes.
fn assert_counts_changes(doc: &Automerge, bytes: &[u8]) {
    let changes = doc.get_changes(&[]);
    let found = inspect(bytes, &OPEN).expect("real changes pass");
    assert_eq!(found.chunks, changes.len() as u64);
    assert_eq!(found.changes, changes.len() as u64);
    let ops: usize = changes.iter().map(|c| c.len()).sum();
    assert_eq!(found.ops, ops as u64);
}

#[test]
fn real_documents_measure_what_automerge_reports() {
    let doc = busy_doc();
    let saved = doc.save();
    assert_counts_document(&doc, &saved);
    assert_counts_document(&doc, &doc.save_nocompress());
    let found = inspect(&saved, &OPEN).expect("passes");
    assert!(
        found.inflated_bytes > saved.len() as u64,
        "save() compressed some columns: {found:?}"
    );
    assert!(found.references > 0);
    assert_eq!(inspect(&[], &OPEN), Ok(Footprint::default()));
}

#[test]
fn real_change_chunks_measure_what_automerge_reports() {
    let doc = busy_doc();
    assert_counts_changes(&doc, &doc.save_after(&[]));
    let compressed: Vec<u8> = doc
        .get_changes(&[])
        .into_iter()
        .flat_map(|mut c| c.bytes().into_owned())
        .collect();
    assert!(
        compressed.len() < doc.save_after(&[]).len(),
        "some were compressed"
    );
    assert_counts_changes(&doc, &compressed);
    let mut both = doc.save();
    both.extend(doc.save_after(&[]));
    let found = inspect(&both, &OPEN).expect("passes");
    assert_eq!(found.chunks, 1 + doc.get_changes(&[]).len() as u64);
}

#[test]
fn sync_messages_measure_their_chunks() {
    let doc = busy_doc();
    let mut state = State::new();
    let message = doc.generate_sync_message(&mut state).expect("a message");
    let message = Message::decode(&message.encode()).expect("decodes");
    inspect_message(&message, &OPEN).expect("the first message passes");
    let mut empty = Automerge::new();
    let mut theirs = State::new();
    empty
        .receive_sync_message(&mut theirs, message)
        .expect("received");
    let reply = empty.generate_sync_message(&mut theirs).expect("a reply");
    doc.clone()
        .receive_sync_message(&mut state, reply)
        .expect("received");
    let message = doc.generate_sync_message(&mut state).expect("changes");
    let found = inspect_message(&message, &OPEN).expect("passes");
    assert_eq!(found.changes, doc.get_changes(&[]).len() as u64);
    // A chunk split across list entries is one chunk once joined, as
    // Automerge joins them.
    let bytes = doc.save_after(&[]);
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let split = Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![a.to_vec(), b.to_vec()]),
        flags: None,
        version: MessageVersion::V1,
    };
    assert_eq!(inspect_message(&split, &OPEN), inspect(&bytes, &OPEN));
}

#[test]
fn the_bomb_is_a_valid_deflate_stream() {
    let bomb = forge::zeros_bomb(3 * 1024 * 1024 + 5);
    let mut out = Vec::new();
    flate2::bufread::DeflateDecoder::new(&bomb[..])
        .read_to_end(&mut out)
        .expect("inflates");
    assert_eq!(out.len(), 3 * 1024 * 1024 + 5);
    assert!(out.iter().all(|&b| b == 0));
}

#[test]
fn a_compressed_change_inflating_to_a_gibibyte_is_refused_cheaply() {
    let bomb = forge::chunk(2, &forge::zeros_bomb(1 << 30));
    let budget = Budget {
        max_inflated_bytes: 4 << 20,
        ..Budget::default()
    };
    let mut result = None;
    let used = allocated(|| result = Some(inspect(&bomb, &budget)));
    assert!(
        matches!(
            result,
            Some(Err(GuardError::TooLarge {
                what: "inflated bytes",
                ..
            }))
        ),
        "{result:?}"
    );
    assert!(
        used < (4 << 20) + (1 << 20),
        "the guard allocated {used} bytes"
    );
}

#[test]
fn a_compressed_document_column_inflating_to_a_gibibyte_is_refused_cheaply() {
    let bomb = forge::zeros_bomb(1 << 30);
    let doc = forge::document(&[b"actor"], &[], &[Col::deflated(0x21, &bomb)]);
    let budget = Budget {
        max_inflated_bytes: 4 << 20,
        ..Budget::default()
    };
    let mut result = None;
    let used = allocated(|| result = Some(inspect(&doc, &budget)));
    assert!(
        matches!(
            result,
            Some(Err(GuardError::TooLarge {
                what: "inflated bytes",
                ..
            }))
        ),
        "{result:?}"
    );
    assert!(
        used < (4 << 20) + (1 << 20),
        "the guard allocated {used} bytes"
    );
}

/// Asserts `bytes` are refused by the default budget for too many `what`,
/// and returns how many were found.
fn refused_for(bytes: &[u8], what: &str) -> u64 {
    match inspect(bytes, &Budget::default()) {
        Err(GuardError::TooLarge { what: w, found, .. }) if w == what => found,
        other => panic!("expected too many {what}, got {other:?}"),
    }
}

#[test]
fn columns_claiming_a_trillion_rows_are_refused() {
    let trillion = forge::run(1_000_000_000_000, 1);
    let change = forge::change(&[Col::plain(0x42, &trillion)]);
    let found = refused_for(&change, "operations in one change");
    assert_eq!(found, 1_000_000_000_000);
    let doc = forge::document(&[b"a"], &[], &[Col::plain(0x21, &trillion)]);
    refused_for(&doc, "operations");
    // 2^63 nulls in a document's change table; 2^63 `false` flags.
    let nulls = [0u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    let changes = forge::document(&[b"a"], &[Col::plain(0x01, &nulls)], &[]);
    refused_for(&changes, "changes");
    let flags = forge::change(&[Col::plain(0x34, &nulls[1..])]);
    refused_for(&flags, "operations in one change");
}

#[test]
fn references_claimed_by_a_group_count_are_refused() {
    // One op claiming a trillion predecessors, without a single one.
    let preds = forge::change(&[
        Col::plain(0x42, &forge::run(1, 1)),
        Col::plain(0x70, &forge::run(1, 1_000_000_000_000)),
    ]);
    refused_for(&preds, "estimated Automerge heap bytes");
}

/// With valid checksums, automerge 0.12 panics on both tables
/// (`change_graph.rs:1007` and `:993`).
#[test]
fn forged_change_tables_that_crash_automerge_are_refused() {
    let two = forge::run(2, 0);
    let dep_outside = forge::document(
        &[b"a"],
        &[
            Col::plain(0x01, &two),
            Col::plain(0x03, &forge::run(2, 1)),
            Col::plain(0x13, &forge::run(2, 1)),
            Col::plain(0x40, &forge::literals(&[0, 1])),
            Col::plain(0x43, &forge::run(1, 7)),
            Col::plain(0x56, &two),
        ],
        &[],
    );
    let err = inspect(&dep_outside, &OPEN).expect_err("refused");
    assert!(err.to_string().contains("outside the table"), "{err}");
    let longer_deps = forge::document(
        &[b"a"],
        &[
            Col::plain(0x01, &two),
            Col::plain(0x03, &forge::run(2, 1)),
            Col::plain(0x13, &forge::run(2, 1)),
            Col::plain(0x40, &forge::run(3, 0)),
            Col::plain(0x56, &two),
        ],
        &[],
    );
    assert!(matches!(
        inspect(&longer_deps, &OPEN),
        Err(GuardError::Invalid { .. })
    ));
}

#[test]
fn bloom_filters_that_allocate_per_probe_are_refused() {
    let mut message = Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::empty(),
        flags: None,
        version: MessageVersion::V1,
    };
    let probes = [1u8, 10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
    let no_bits = [1u8, 0, 7];
    for (bytes, tag) in [(&probes[..], "probes"), (&no_bits[..], "bits")] {
        let bloom = automerge::sync::BloomFilter::try_from(bytes).expect("parses");
        message.have = vec![automerge::sync::Have {
            last_sync: Vec::new(),
            bloom,
        }];
        let err = inspect_message(&message, &OPEN).expect_err(tag);
        assert!(
            err.to_string().contains(tag) || err.to_string().contains("bloom"),
            "{err}"
        );
    }
    message.have = vec![automerge::sync::Have::default(); 5];
    assert!(inspect_message(&message, &OPEN).is_err());
}

#[test]
fn truncations_and_garbage_are_refused_never_a_panic() {
    let doc = busy_doc();
    let mut bytes = doc.save();
    bytes.extend(doc.save_after(&[]).iter().take(3000));
    for end in 0..bytes.len() {
        match inspect(&bytes[..end], &Budget::default()) {
            Ok(_) | Err(GuardError::Invalid { .. }) | Err(GuardError::TooLarge { .. }) => {}
        }
    }
    for len in 0..2000usize {
        let garbage = crate::testing::noise(len as u64, len % 300);
        let mut chunk = forge::MAGIC.to_vec();
        chunk.extend(&garbage);
        assert!(inspect(&garbage, &Budget::default()).is_err() || garbage.is_empty());
        let _ = inspect(&chunk, &Budget::default());
    }
}

#[test]
fn a_change_whose_first_op_ends_a_mark_is_refused() {
    // Found by fuzzing: automerge 0.12 with debug assertions aborts on it.
    let forged = crate::fuzzing::with_valid_checksums(include_bytes!(
        "../../../fuzz/regressions/guard/change-whose-first-op-ends-a-mark-aborts-automerge"
    ));
    match inspect(&forged, &OPEN) {
        Err(GuardError::Invalid { reason }) => assert!(reason.contains("ends a mark"), "{reason}"),
        other => panic!("expected the change to be refused, got {other:?}"),
    }
    // Real marks, begun and ended in the document's first change, pass.
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "text", ObjType::Text).expect("text");
    doc.splice_text(&text, 0, 0, "hello world").expect("splice");
    let bold = automerge::marks::Mark::new("bold".into(), true, 0, 5);
    doc.mark(&text, bold, automerge::marks::ExpandMark::After)
        .expect("mark");
    doc.commit();
    doc.unmark(&text, "bold", 1, 3, automerge::marks::ExpandMark::None)
        .expect("unmark");
    doc.commit();
    let doc = doc.document().clone();
    inspect(&doc.save_after(&[]), &OPEN).expect("real changes pass");
    inspect(&doc.save(), &OPEN).expect("the real document passes");
}
