//! The write path: every way a document's bytes or tombstone reach the
//! store goes through here, so each rule is written once.
//!
//! - [`Replica::insert_into`]: a document the store has never seen.
//! - [`Replica::persist_since`]: changes made in memory since some heads,
//!   merged with another writer's if the file moved underneath.
//! - [`Replica::absorb`]: content from outside (a peer's sync message, a
//!   file's bytes) applied to a document that may not exist yet.
//! - [`Replica::tombstone`]: a deletion, local or from a peer.
//!
//! Compaction follows appends when a document's chunks piled up.

use automerge::{Automerge, AutomergeError, ChangeHash};

use super::cache::DocState;
use super::commit::Keep;
use super::{ChangeKind, Origin, Replica};
use crate::error::{Error, Result, StoreError};
use crate::id::{Collection, DocId, Heads};
use crate::store::{now_ms, ChunkKind, Durability, WriteOp};

/// Whether [`Replica::tombstone`] may create the document's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfUnknown {
    /// A local deletion: an unknown document is [`Error::NotFound`].
    Refuse,
    /// A peer's deletion may arrive before the document: record it.
    Record,
}

impl Replica {
    /// Stores a new document and puts it in its (locked, empty) cache entry.
    pub(crate) fn insert_into(
        &self,
        id: DocId,
        collection: &Collection,
        mut doc: Automerge,
        origin: Origin,
        cached: &mut Option<DocState>,
    ) -> Result<()> {
        let data = doc.save();
        let heads = Heads::new(doc.get_heads());
        let changes = doc.get_changes_meta(&[]).len() as u64;
        let keep = self.keep_for(&origin);
        self.inner.committer.submit_kept(
            vec![WriteOp::Append {
                doc: id,
                collection: collection.clone(),
                kind: ChunkKind::Snapshot,
                data: data.clone(),
                heads: heads.clone(),
                new_changes: changes,
                base: Heads::empty(),
                content: self.projection_of(&doc),
            }],
            keep,
        )?;
        doc.set_actor(self.inner.actor.clone());
        let mut state = DocState::new(doc, collection.clone(), data.len() as u64);
        state.deleted = cached.as_ref().is_some_and(|s| s.deleted);
        *cached = Some(state);
        self.emit(id, collection, ChangeKind::Created, origin, heads);
        Ok(())
    }

    /// Writes the changes made since `before` and tells subscribers. If
    /// another process wrote the document meanwhile, its changes are merged
    /// in and ours written on top. On any other failure the in-memory copy
    /// is dropped, so it is reloaded from what was committed.
    pub(crate) fn persist_since(
        &self,
        id: &DocId,
        cached: &mut Option<DocState>,
        before: &[ChangeHash],
        origin: Origin,
    ) -> Result<()> {
        let mut base = before.to_vec();
        let mut attempts = 0;
        loop {
            let state = cached.as_mut().ok_or(Error::NotFound(*id))?;
            let op = WriteOp::Append {
                doc: *id,
                collection: state.collection.clone(),
                kind: ChunkKind::Incremental,
                data: state.doc.save_after(&base),
                heads: Heads::new(state.doc.get_heads()),
                new_changes: state.doc.get_changes_meta(&base).len() as u64,
                base: Heads::from(base.as_slice()),
                content: self.projection_of(&state.doc),
            };
            let len = op_len(&op);
            match self
                .inner
                .committer
                .submit_kept(vec![op], self.keep_for(&origin))
            {
                Ok(()) => {
                    state.chunks += 1;
                    state.incremental_bytes += len;
                    break;
                }
                Err(StoreError::Stale { .. }) if attempts < 3 => {
                    attempts += 1;
                    base = self.take_in_stored(id, cached)?;
                }
                Err(e) => {
                    *cached = None;
                    return Err(e.into());
                }
            }
        }
        let state = cached.as_ref().ok_or(Error::NotFound(*id))?;
        let (collection, heads) = (state.collection.clone(), Heads::new(state.doc.get_heads()));
        self.maybe_compact(id, cached);
        self.emit(*id, &collection, ChangeKind::Changed, origin, heads);
        Ok(())
    }

    /// Applies content from outside to `id` in `collection`: `apply` gets
    /// the current document (an empty one if the store does not have it)
    /// and merges the content in; what it added is persisted before this
    /// returns. Returns whether the document changed. A document stored in
    /// another collection is refused with [`Error::WrongCollection`], one
    /// that `incoming` more bytes would take past the replica's size limit
    /// with [`Error::TooLarge`], and bytes Automerge refuses leave nothing
    /// behind. Automerge 0.12 panics on some forged inputs (found by
    /// fuzzing): such a panic is caught here and reported as
    /// [`Error::BadSyncData`], and the in-memory copy is reloaded from the
    /// store, so a peer's bytes can never take a document, or the process,
    /// down.
    pub(crate) fn absorb(
        &self,
        id: &DocId,
        collection: &Collection,
        origin: Origin,
        incoming: u64,
        apply: impl FnOnce(&mut Automerge) -> Result<(), AutomergeError>,
    ) -> Result<bool> {
        let entry = self.inner.cache.entry(id);
        let mut cached = entry.lock();
        let automerge_error = |source| Error::Automerge {
            doc: *id,
            source: Box::new(source),
        };
        let stored = match self.current(id, &mut cached) {
            Ok(state) => cached_bytes(state.as_deref()),
            Err(e) if self.refetching(&e) => {
                // The stored data does not load: fetched again from scratch.
                self.within_size(id, 0, incoming)?;
                return self.absorb_repair(id, collection, origin, apply);
            }
            Err(e) => return Err(e),
        };
        self.within_size(id, stored, incoming)?;
        let Some(current) = self.current(id, &mut cached)? else {
            let mut fresh = Automerge::new();
            contained(id, || apply(&mut fresh))?.map_err(automerge_error)?;
            if fresh.get_heads().is_empty() {
                return Ok(false);
            }
            self.insert_into(*id, collection, fresh, origin, &mut cached)?;
            return Ok(true);
        };
        same_collection(id, current, collection)?;
        let before = current.doc.get_heads();
        let applied =
            contained(id, || apply(&mut current.doc)).and_then(|r| r.map_err(automerge_error));
        if let Err(e) = applied {
            *cached = None; // whatever was half-applied is dropped; reload from the store
            return Err(e);
        }
        if current.doc.get_heads() == before {
            return Ok(false);
        }
        self.persist_since(id, &mut cached, &before, origin)?;
        Ok(true)
    }

    /// How a write from `origin` is kept: received changes without their
    /// own fsync unless `ReplicaOptions::received_durability` asks for it.
    fn keep_for(&self, origin: &Origin) -> Keep {
        match (origin, self.inner.options.received_durability) {
            (Origin::Remote(_), Durability::Normal) => Keep::Recoverable,
            _ => Keep::Durable,
        }
    }

    /// Refuses content that would take a document past the size limit.
    fn within_size(&self, id: &DocId, stored: u64, incoming: u64) -> Result<()> {
        let Some(limit) = self.inner.options.max_document_bytes else {
            return Ok(());
        };
        if incoming == 0 {
            return Ok(()); // a message without changes never grows anything
        }
        let size = stored.saturating_add(incoming);
        if size > limit {
            return Err(Error::TooLarge {
                doc: *id,
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Sets a document's tombstone; returns whether it was not deleted yet.
    /// `collection`, if given, must be the document's own.
    pub(crate) fn tombstone(
        &self,
        id: &DocId,
        collection: Option<&Collection>,
        origin: Origin,
        if_unknown: IfUnknown,
    ) -> Result<bool> {
        let entry = self.inner.cache.entry(id);
        let mut cached = entry.lock();
        let (collection, content) = match self.current(id, &mut cached)? {
            Some(current) => {
                if let Some(given) = collection {
                    same_collection(id, current, given)?;
                }
                if current.deleted {
                    return Ok(false);
                }
                (current.collection.clone(), self.projection_of(&current.doc))
            }
            None => match (collection, if_unknown) {
                // A tombstone before any content.
                (Some(c), IfUnknown::Record) => (c.clone(), self.projection_of(&Automerge::new())),
                _ => return Err(Error::NotFound(*id)),
            },
        };
        self.inner.committer.submit_kept(
            vec![WriteOp::Delete {
                doc: *id,
                collection: collection.clone(),
                at: now_ms(),
                content,
            }],
            self.keep_for(&origin),
        )?;
        let heads = match cached.as_mut() {
            Some(current) => {
                current.deleted = true;
                Heads::new(current.doc.get_heads())
            }
            None => Heads::empty(), // the next user loads the tombstone row
        };
        drop(cached);
        self.emit(*id, &collection, ChangeKind::Deleted, origin, heads);
        Ok(true)
    }

    /// Reloads a document another process wrote, merges the in-memory
    /// copy (with its unwritten changes) into it, and returns the stored
    /// heads the unwritten changes now go on top of.
    fn take_in_stored(&self, id: &DocId, cached: &mut Option<DocState>) -> Result<Vec<ChangeHash>> {
        let stored = self
            .read_store(|s| s.load(id))?
            .ok_or(Error::NotFound(*id))?;
        let mut fresh = DocState::load(stored, &self.inner.actor)?;
        let base = fresh.doc.get_heads();
        if let Some(mine) = cached.as_mut() {
            fresh
                .doc
                .merge(&mut mine.doc)
                .map_err(|source| Error::Automerge {
                    doc: *id,
                    source: Box::new(source),
                })?;
        }
        tracing::debug!(doc = %id, "document changed by another writer; merged and retrying");
        *cached = Some(fresh);
        Ok(base)
    }

    /// Rewrites a document's chunks as one snapshot when they piled up.
    /// A failure is logged, not returned: the chunks stay valid.
    fn maybe_compact(&self, id: &DocId, cached: &mut Option<DocState>) {
        let Some(state) = cached.as_mut() else { return };
        if !state.wants_compaction(self.inner.options.compact_after_chunks) {
            return;
        }
        match self.compact_state(id, state) {
            Ok(()) => {}
            Err(StoreError::Stale { .. }) => *cached = None, // another writer; reload next time
            Err(e) => {
                tracing::warn!(doc = %id, error = %e, "compaction failed; chunks kept as they are")
            }
        }
    }

    /// Replaces a document's chunks by one snapshot of `state`.
    pub(crate) fn compact_state(&self, id: &DocId, state: &mut DocState) -> Result<(), StoreError> {
        let snapshot = state.doc.save();
        let size = snapshot.len() as u64;
        let heads = Heads::new(state.doc.get_heads());
        self.inner.committer.submit(vec![WriteOp::Compact {
            doc: *id,
            snapshot,
            heads,
        }])?;
        state.chunks = 0;
        state.incremental_bytes = 0;
        state.snapshot_bytes = size;
        Ok(())
    }
}

/// A peer may only touch a document in its own collection.
pub(crate) fn same_collection(doc: &DocId, current: &DocState, given: &Collection) -> Result<()> {
    if current.collection == *given {
        return Ok(());
    }
    Err(Error::WrongCollection {
        doc: *doc,
        actual: current.collection.clone(),
        given: given.clone(),
    })
}

/// Runs Automerge on a peer's bytes, turning a panic into an error naming
/// the document (the caller drops what was half-applied).
pub(super) fn contained<T>(id: &DocId, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = super::panic_message(panic.as_ref());
        Error::BadSyncData {
            doc: *id,
            reason: format!("Automerge failed on these bytes: {what}"),
        }
    })
}

/// The bytes a cached document's chunks take in the store.
fn cached_bytes(state: Option<&DocState>) -> u64 {
    state.map_or(0, |s| s.snapshot_bytes + s.incremental_bytes)
}

fn op_len(op: &WriteOp) -> u64 {
    match op {
        WriteOp::Append { data, .. } => data.len() as u64,
        _ => 0,
    }
}
