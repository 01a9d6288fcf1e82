//! Sync messages in bounded batches.
//!
//! Automerge puts everything a peer lacks into one sync message, and for a
//! peer that lacks much of a document it sends the whole document as one
//! chunk. A document whose missing history is larger than a peer accepts in
//! one frame (or than a peer's guard lets through in one message) could
//! then never sync. So messages are kept within a [`Batch`]: at most so
//! many bytes and ops of changes, the changes the peer lacks oldest first.
//! The changes left out are not marked as sent in the sync state, so the
//! next round (after the peer's answer) carries the next batch. Automerge's
//! protocol allows any number of rounds; the peer applies each batch as it
//! arrives.
//!
//! For a document larger than one batch, the whole-document form is
//! switched off for the message (it cannot be cut) and the changes beyond
//! an estimate of one batch are marked as sent while Automerge builds the
//! message, so it never builds more than about a batch; what it built is
//! then trimmed exactly. A single change larger than a batch still goes
//! alone: changes cannot be split (the client refuses to send a frame
//! larger than the relay accepts and reports it as `too_large`).

use std::collections::BTreeSet;

use automerge::sync::{Capability, ChunkList, Message, State, SyncDoc};
use automerge::{Automerge, Change, ChangeHash, ReadDoc};

/// The most one sync message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Bytes of changes.
    pub bytes: usize,
    /// Ops in those changes.
    pub ops: usize,
}

/// The next sync message of `doc` for the peer of `state`, within `batch`.
/// `stored_bytes` is the document's size in the store (to tell whether it
/// may exceed a batch at all).
pub(crate) fn generate(
    doc: &Automerge,
    state: &mut State,
    stored_bytes: u64,
    batch: Batch,
) -> Option<Message> {
    let large = stored_bytes > batch.bytes as u64 || doc.stats().num_ops > batch.ops as u64;
    if !large {
        // No message of a document this small can exceed a batch.
        return doc.generate_sync_message(state);
    }
    let sent_before = state.sent_hashes.clone();
    let had_v2 = state.their_capabilities.as_mut().is_some_and(|caps| {
        let had = caps.contains(&Capability::MessageV2);
        caps.retain(|c| *c != Capability::MessageV2);
        had
    });
    let held_back = hold_back(doc, state, stored_bytes, batch);
    state.sent_hashes.extend(held_back.iter().copied());
    let message = doc.generate_sync_message(state);
    for hash in &held_back {
        state.sent_hashes.remove(hash);
    }
    if had_v2 {
        if let Some(caps) = state.their_capabilities.as_mut() {
            caps.push(Capability::MessageV2);
        }
    }
    Some(trim(doc, state, &sent_before, message?, batch))
}

/// The changes the peer lacks beyond an estimate of one batch (by the
/// document's average change size), not sent yet: Automerge is made to
/// skip them for this message.
fn hold_back(doc: &Automerge, state: &State, stored_bytes: u64, batch: Batch) -> Vec<ChangeHash> {
    let changes = doc.stats().num_changes.max(1);
    let average = (stored_bytes / changes).max(1);
    let keep = (batch.bytes as u64 / average).max(1) as usize;
    lacking(doc, state)
        .into_iter()
        .filter(|h| !state.sent_hashes.contains(h))
        .skip(keep)
        .collect()
}

/// The changes the peer lacks, oldest first: everything outside the
/// history of the heads it stated (as far as this side knows them).
fn lacking(doc: &Automerge, state: &State) -> Vec<ChangeHash> {
    let theirs: Vec<ChangeHash> = state
        .their_heads
        .iter()
        .flatten()
        .filter(|h| doc.get_change_meta_by_hash(h).is_some())
        .copied()
        .collect();
    doc.get_changes_meta(&theirs)
        .into_iter()
        .map(|c| c.hash)
        .collect()
}

/// Cuts a generated message down to `batch`, keeping at least one chunk;
/// what is cut is no longer counted as sent.
fn trim(
    doc: &Automerge,
    state: &mut State,
    sent_before: &BTreeSet<ChangeHash>,
    mut message: Message,
    batch: Batch,
) -> Message {
    let chunks: Vec<&[u8]> = message.changes.iter().collect();
    let (mut bytes, mut ops, mut keep) = (0usize, 0usize, 0usize);
    let mut parsed = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        // A whole-document chunk (or anything that is not one change)
        // cannot be cut: rebuild the message from single changes.
        let Ok(change) = Change::try_from(*chunk) else {
            return rebuild(doc, state, sent_before, message, batch);
        };
        if keep > 0 && (bytes + chunk.len() > batch.bytes || ops + change.len() > batch.ops) {
            parsed.push(change);
            continue;
        }
        bytes += chunk.len();
        ops += change.len();
        keep += 1;
        parsed.push(change);
    }
    if keep == chunks.len() {
        return message;
    }
    for change in &parsed[keep..] {
        state.sent_hashes.remove(&change.hash());
    }
    let kept: Vec<Vec<u8>> = chunks[..keep].iter().map(|c| c.to_vec()).collect();
    message.changes = ChunkList::from(kept);
    message
}

/// Replaces a message's chunks by the changes the peer lacks, oldest
/// first, up to `batch` (for a message Automerge built as one document).
fn rebuild(
    doc: &Automerge,
    state: &mut State,
    sent_before: &BTreeSet<ChangeHash>,
    mut message: Message,
    batch: Batch,
) -> Message {
    let total: usize = message.changes.iter().map(<[u8]>::len).sum();
    if total <= batch.bytes {
        return message;
    }
    let wanted: BTreeSet<ChangeHash> = lacking(doc, state)
        .into_iter()
        .filter(|h| !sent_before.contains(h))
        .collect();
    let (mut chosen, mut hashes, mut bytes, mut ops) = (Vec::new(), Vec::new(), 0, 0);
    for change in doc.get_changes(&[]) {
        let hash = change.hash();
        if !wanted.contains(&hash) {
            continue;
        }
        let raw = change.raw_bytes();
        if !chosen.is_empty() && (bytes + raw.len() > batch.bytes || ops + change.len() > batch.ops)
        {
            break;
        }
        bytes += raw.len();
        ops += change.len();
        chosen.push(raw.to_vec());
        hashes.push(hash);
    }
    state.sent_hashes = sent_before.clone();
    state.sent_hashes.extend(hashes);
    message.changes = ChunkList::from(chosen);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ScalarValue, ROOT};

    /// A document of `changes` changes, each putting `bytes` of noise
    /// (which compression cannot shrink).
    fn big_doc(changes: usize, bytes: usize) -> Automerge {
        let mut doc = Automerge::new();
        for i in 0..changes {
            let mut tx = doc.transaction();
            let value = crate::testing::noise(i as u64, bytes);
            tx.put(ROOT, format!("k{i}"), ScalarValue::Bytes(value))
                .expect("put");
            tx.commit();
        }
        doc
    }

    /// Runs the protocol between `from` and an empty peer, every message of
    /// `from` within `batch`; returns the copy, the largest message's change
    /// bytes and the number of messages from `from` that carried changes.
    fn sync_in_batches(from: &Automerge, batch: Batch) -> (Automerge, usize, usize) {
        let stored = from.save().len() as u64;
        let mut to = Automerge::new();
        let mut from = from.clone();
        let (mut s_from, mut s_to) = (State::new(), State::new());
        let (mut largest, mut rounds) = (0, 0);
        for _ in 0..400 {
            let a = generate(&from, &mut s_from, stored, batch);
            let b = to.generate_sync_message(&mut s_to);
            if a.is_none() && b.is_none() {
                return (to, largest, rounds);
            }
            if let Some(m) = a {
                largest = largest.max(m.changes.iter().map(<[u8]>::len).sum());
                rounds += usize::from(!m.changes.is_empty());
                to.receive_sync_message(&mut s_to, m).expect("to receives");
            }
            if let Some(m) = b {
                from.receive_sync_message(&mut s_from, m)
                    .expect("from receives");
            }
        }
        panic!("sync did not settle");
    }

    #[test]
    fn a_large_history_goes_in_batches_and_arrives_whole() {
        let doc = big_doc(40, 20_000);
        let batch = Batch {
            bytes: 100_000,
            ops: usize::MAX,
        };
        let (copy, largest, rounds) = sync_in_batches(&doc, batch);
        assert_eq!(copy.get_heads(), doc.get_heads(), "everything arrived");
        assert!(largest <= 100_000, "largest batch {largest}");
        assert!(rounds >= 8, "several rounds: {rounds}");
    }

    #[test]
    fn batches_are_bounded_by_ops_too() {
        let mut doc = Automerge::new();
        for i in 0..30 {
            let mut tx = doc.transaction();
            for j in 0..50 {
                tx.put(ROOT, format!("k{i}_{j}"), j as i64).expect("put");
            }
            tx.commit();
        }
        let batch = Batch {
            bytes: usize::MAX,
            ops: 200,
        };
        let (copy, _, rounds) = sync_in_batches(&doc, batch);
        assert_eq!(copy.get_heads(), doc.get_heads());
        assert!(rounds >= 8, "1,500 ops in batches of at most 200: {rounds}");
    }

    #[test]
    fn a_small_history_goes_at_once() {
        let doc = big_doc(3, 100);
        let batch = Batch {
            bytes: 100_000,
            ops: 100_000,
        };
        let (copy, _, rounds) = sync_in_batches(&doc, batch);
        assert_eq!(copy.get_heads(), doc.get_heads());
        assert!(rounds <= 2, "not cut into batches: {rounds}");
    }
}
