//! Loaded documents.
//!
//! A replica keeps recently used documents in memory, each behind its own
//! mutex: writers of one document serialise, writers of different documents
//! run in parallel (and share transactions through group commit). The cache
//! is bounded; when it grows past its capacity the least recently used
//! entries that nobody holds are dropped. An entry someone holds is never
//! dropped, so two copies of one document never exist at once (two copies
//! would hand out the same change sequence number twice).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use automerge::{ActorId, Automerge};

use crate::error::StoreError;
use crate::id::{Collection, DocId, Heads};
use crate::store::{ChunkKind, StoredChunk, StoredDoc};

/// A document in memory, with what the write path needs to know about how
/// it is stored.
#[derive(Debug)]
pub(crate) struct DocState {
    /// The document.
    pub doc: Automerge,
    /// Its collection.
    pub collection: Collection,
    /// Whether it carries a tombstone.
    pub deleted: bool,
    /// The committer's foreign-write epoch when this state was last known
    /// to match the file (see `access`).
    pub checked_epoch: u64,
    /// Chunks stored since the last snapshot (drives compaction).
    pub chunks: u64,
    /// Bytes stored since the last snapshot.
    pub incremental_bytes: u64,
    /// Size of the last snapshot.
    pub snapshot_bytes: u64,
}

/// A cache entry: `None` until loaded, and again after a failed write (the
/// next user reloads from the store).
pub(crate) type Entry = Arc<Mutex<Option<DocState>>>;

/// Entries with the logical time each was last used.
#[derive(Debug, Default)]
struct Entries {
    /// Entry and last use of each loaded document.
    entries: HashMap<DocId, (Entry, u64)>,
    /// The logical clock of uses.
    clock: u64,
}

/// The bounded map of loaded documents.
#[derive(Debug)]
pub(crate) struct Cache {
    /// The entries.
    map: Mutex<Entries>,
    /// How many entries to keep.
    capacity: usize,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            map: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
        }
    }

    /// The entry for `id`, created empty if absent.
    pub(crate) fn entry(&self, id: &DocId) -> Entry {
        let mut guard = self.map.lock();
        let Entries {
            entries: map,
            clock,
        } = &mut *guard;
        *clock += 1;
        let now = *clock;
        if let Some((entry, used)) = map.get_mut(id) {
            *used = now;
            return Arc::clone(entry);
        }
        let entry = Entry::default();
        map.insert(*id, (Arc::clone(&entry), now));
        if map.len() > self.capacity {
            evict(map, self.capacity * 3 / 4);
        }
        entry
    }

    /// Forgets an entry (after a failed load) if nobody else holds it.
    pub(crate) fn forget(&self, id: &DocId) {
        let mut guard = self.map.lock();
        // Two holders: the map and the caller that failed to load it.
        if guard
            .entries
            .get(id)
            .is_some_and(|(e, _)| Arc::strong_count(e) <= 2)
        {
            guard.entries.remove(id);
        }
    }

    /// How many documents are in memory.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().entries.len()
    }
}

/// Drops least recently used, unheld entries until at most `target` remain.
fn evict(map: &mut HashMap<DocId, (Entry, u64)>, target: usize) {
    let mut idle: Vec<(u64, DocId)> = map
        .iter()
        .filter(|(_, (e, _))| Arc::strong_count(e) == 1)
        .map(|(id, (_, used))| (*used, *id))
        .collect();
    idle.sort_unstable();
    let excess = map.len().saturating_sub(target);
    for (_, id) in idle.into_iter().take(excess) {
        map.remove(&id);
    }
}

impl DocState {
    /// Rebuilds a document from its chunks, checking that the result has
    /// the heads the metadata promises.
    pub(crate) fn load(stored: StoredDoc, actor: &ActorId) -> Result<Self, StoreError> {
        let StoredDoc { meta, chunks } = stored;
        let corrupt = |reason: String| StoreError::Corrupt {
            doc: meta.id,
            reason,
        };
        let mut doc = Automerge::new();
        let mut state = DocState::new(Automerge::new(), meta.collection.clone(), 0);
        state.deleted = meta.deleted;
        for StoredChunk { seq, kind, data } in &chunks {
            let Some(kind) = kind else {
                return Err(corrupt(format!("chunk {seq} has an unknown kind")));
            };
            // Automerge 0.12 decodes a bundle chunk before checking its
            // checksum (a damaged one made it panic or take gigabytes,
            // found by fuzzing): Accord never stores one, so the headers
            // are checked first. A panic on anything else is caught and
            // is one more way a chunk can be damaged.
            crate::guard::check_stored_chunks(data)
                .map_err(|e| corrupt(format!("chunk {seq}: {e}")))?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.load_incremental(data)))
                .map_err(|panic| {
                    let what = super::panic_message(panic.as_ref());
                    corrupt(format!("chunk {seq}: Automerge failed on it: {what}"))
                })?
                .map_err(|e| corrupt(format!("chunk {seq}: {e}")))?;
            match kind {
                ChunkKind::Snapshot => state.snapshot_bytes = data.len() as u64,
                ChunkKind::Incremental => {
                    state.chunks += 1;
                    state.incremental_bytes += data.len() as u64;
                }
            }
        }
        let heads = Heads::new(doc.get_heads());
        if heads != meta.heads {
            let short = |hs: &[automerge::ChangeHash]| -> Vec<String> {
                hs.iter().map(|h| h.to_string()[..12].to_owned()).collect()
            };
            let missing = automerge::ReadDoc::get_missing_deps(&doc, &[]).len();
            return Err(corrupt(format!(
                "its chunks load to heads {:?} but the metadata records {:?} ({missing} changes wait for missing dependencies)",
                short(&heads),
                short(&meta.heads)
            )));
        }
        doc.set_actor(actor.clone());
        state.doc = doc;
        Ok(state)
    }

    /// A document not stored in chunks yet (or only as a tombstone row).
    pub(crate) fn new(doc: Automerge, collection: Collection, snapshot_bytes: u64) -> Self {
        DocState {
            doc,
            collection,
            deleted: false,
            checked_epoch: 0,
            chunks: 0,
            incremental_bytes: 0,
            snapshot_bytes,
        }
    }

    /// Whether the stored chunks are worth rewriting as one snapshot.
    pub(crate) fn wants_compaction(&self, max_chunks: u64) -> bool {
        self.chunks >= max_chunks
            || (self.chunks > 1 && self.incremental_bytes > self.snapshot_bytes.max(4096))
    }
}
