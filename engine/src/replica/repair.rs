//! Damaged documents fetched again from a peer.
//!
//! A document whose chunks fail to load ([`StoreError::Corrupt`]) is
//! remembered as damaged the moment a load fails (`access::current`). From
//! then on the sync layer sees it as this replica holding only what it has
//! fetched again so far (nothing, at first): [`SyncDocs`] reports those
//! heads, generates messages from that copy and applies the peer's
//! messages to it, so the peer sends the whole document. The damaged rows
//! stay in the file, untouched, until the fetched copy holds every change
//! the document's metadata row records (everything this replica ever
//! acknowledged); then one transaction replaces the chunks by a snapshot
//! of it (and appends what the peer had beyond). A copy that never gets
//! there (changes only this replica had) is never stored: the damaged
//! rows are kept and the document stays damaged.
//!
//! Damage is remembered in memory, per open replica; a load that succeeds
//! again (another process repaired the file) forgets it. A replica opened
//! with `ReplicaOptions::refetch_damaged` off (the relay) remembers
//! nothing, so its damaged documents stay errors.
//!
//! [`SyncDocs`]: crate::sync::SyncDocs

use std::collections::HashMap;

use automerge::{Automerge, AutomergeError, ChangeHash};
use parking_lot::Mutex;

use super::{ChangeKind, Origin, Replica};
use crate::error::{Error, Result, StoreError};
use crate::id::{Collection, DocId, Heads};
use crate::store::{ChunkKind, WriteOp};

/// The damaged documents of a replica, each with the copy fetched again
/// so far.
#[derive(Debug, Default)]
pub(crate) struct Repairs {
    /// Fetched copy by document.
    copies: Mutex<HashMap<DocId, Automerge>>,
}

impl Repairs {
    /// Remembers `id` as damaged (keeping a copy already under way).
    pub(crate) fn mark(&self, id: &DocId) {
        self.copies.lock().entry(*id).or_default();
    }

    /// Forgets `id` (it loads again, or was replaced).
    pub(crate) fn forget(&self, id: &DocId) {
        self.copies.lock().remove(id);
    }

    /// The heads of the copy fetched so far, if `id` is damaged.
    pub(crate) fn heads(&self, id: &DocId) -> Option<Heads> {
        self.copies
            .lock()
            .get(id)
            .map(|doc| Heads::new(doc.get_heads()))
    }

    /// Runs `f` on the copy of a damaged document (`None` if it is not
    /// damaged).
    pub(crate) fn with<T>(&self, id: &DocId, f: impl FnOnce(&mut Automerge) -> T) -> Option<T> {
        self.copies.lock().get_mut(id).map(f)
    }

    /// The damaged documents, sorted.
    fn ids(&self) -> Vec<DocId> {
        let mut ids: Vec<DocId> = self.copies.lock().keys().copied().collect();
        ids.sort();
        ids
    }
}

impl Replica {
    /// Whether `error` says a document's stored data does not load and
    /// this replica fetches such documents again (the sync paths then
    /// work on the fetched copy instead of failing).
    pub(crate) fn refetching(&self, error: &Error) -> bool {
        self.inner.options.refetch_damaged
            && matches!(error, Error::Store(StoreError::Corrupt { .. }))
    }

    /// Loads a record exactly as any read would and returns the error if
    /// it does not load. A record whose stored data is damaged is
    /// remembered, so the next sync fetches it again from the relay (see
    /// [`Replica::damaged`]).
    ///
    /// ```
    /// use accord_engine::Replica;
    /// use serde_json::json;
    /// let replica = Replica::open_in_memory()?;
    /// let id = replica.create("contacts", &json!({"name": "Ada"}))?;
    /// replica.verify(&id)?;
    /// assert!(replica.damaged().is_empty());
    /// # Ok::<(), accord_engine::Error>(())
    /// ```
    pub fn verify(&self, id: &DocId) -> Result<()> {
        self.read_any(id, |_| ())
    }

    /// The records found damaged (their stored data failed to load) since
    /// this replica was opened and not repaired since, sorted by id
    /// (always empty with `ReplicaOptions::refetch_damaged` off).
    /// Syncing fetches each of them again from the relay and stores the
    /// relay's copy once it holds every change this replica recorded;
    /// until then the damaged rows stay as they are.
    pub fn damaged(&self) -> Vec<DocId> {
        self.inner.repairs.ids()
    }

    /// The next sync message towards a peer for a damaged document: from
    /// the copy fetched so far.
    pub(crate) fn generate_repair(
        &self,
        id: &DocId,
        state: &mut automerge::sync::State,
    ) -> Option<automerge::sync::Message> {
        use automerge::sync::{State, SyncDoc};
        self.inner
            .repairs
            .with(id, |copy| {
                // A stored sync state claims heads shared with the peer that
                // the copy does not have (the damaged document had them):
                // start over, so the peer sends from the beginning.
                if !state
                    .shared_heads
                    .iter()
                    .all(|h| copy.get_change_meta_by_hash(h).is_some())
                {
                    *state = State::new();
                }
                copy.generate_sync_message(state)
            })
            .flatten()
    }

    /// Applies a peer's content to the copy of a damaged document (whose
    /// cache entry the caller holds locked, empty), and stores the copy
    /// once it holds every change the metadata row records. Returns
    /// whether the copy changed.
    pub(crate) fn absorb_repair(
        &self,
        id: &DocId,
        collection: &Collection,
        origin: Origin,
        apply: impl FnOnce(&mut Automerge) -> Result<(), AutomergeError>,
    ) -> Result<bool> {
        let automerge_error = |source| Error::Automerge {
            doc: *id,
            source: Box::new(source),
        };
        let meta = self.meta(id)?;
        if meta.collection != *collection {
            return Err(Error::WrongCollection {
                doc: *id,
                actual: meta.collection,
                given: collection.clone(),
            });
        }
        let applied = self.inner.repairs.with(id, |copy| {
            let before = copy.get_heads();
            let result = super::write::contained(id, || apply(copy))
                .and_then(|r| r.map_err(automerge_error));
            if result.is_err() {
                *copy = Automerge::new(); // whatever was half-applied is dropped
            }
            result.map(|()| copy.get_heads() != before)
        });
        let changed = match applied {
            Some(result) => result?,
            None => return Ok(false), // repaired meanwhile; the peer resends
        };
        if changed {
            self.store_repair(id, &meta.heads, collection, origin)?;
        }
        Ok(changed)
    }

    /// Replaces the damaged chunks by the fetched copy if it holds every
    /// change of `recorded` (the metadata row's heads); otherwise waits
    /// for more. The caller holds the document's cache entry locked.
    fn store_repair(
        &self,
        id: &DocId,
        recorded: &Heads,
        collection: &Collection,
        origin: Origin,
    ) -> Result<()> {
        let prepared = self.inner.repairs.with(id, |copy| {
            let complete = recorded
                .iter()
                .all(|h| copy.get_change_meta_by_hash(h).is_some());
            if !complete {
                return Ok(None);
            }
            let ops = self.replacement(id, copy, recorded, collection)?;
            Ok::<_, Error>(Some((ops, Heads::new(copy.get_heads()))))
        });
        let Some((ops, heads)) = prepared.transpose()?.flatten() else {
            return Ok(());
        };
        self.inner.committer.submit(ops)?;
        self.inner.repairs.forget(id);
        tracing::info!(doc = %id, "damaged document replaced by the copy fetched from a peer");
        if heads != *recorded {
            self.emit(*id, collection, ChangeKind::Changed, origin, heads);
        }
        Ok(())
    }

    /// The writes that replace a document's chunks by `copy`: a snapshot
    /// at the recorded heads (compaction's own write, checked against
    /// them), then what the copy has beyond them.
    fn replacement(
        &self,
        id: &DocId,
        copy: &Automerge,
        recorded: &Heads,
        collection: &Collection,
    ) -> Result<Vec<WriteOp>> {
        let at: Vec<ChangeHash> = recorded.iter().copied().collect();
        let automerge_error = |source| Error::Automerge {
            doc: *id,
            source: Box::new(source),
        };
        let snapshot = if copy.get_heads() == at {
            copy.save()
        } else {
            copy.fork_at(&at).map_err(automerge_error)?.save()
        };
        let mut ops = vec![WriteOp::Compact {
            doc: *id,
            snapshot,
            heads: recorded.clone(),
        }];
        if copy.get_heads() != at {
            ops.push(WriteOp::Append {
                doc: *id,
                collection: collection.clone(),
                kind: ChunkKind::Incremental,
                data: copy.save_after(&at),
                heads: Heads::new(copy.get_heads()),
                new_changes: copy.get_changes_meta(&at).len() as u64,
                base: recorded.clone(),
                content: self.projection_of(copy),
            });
        }
        Ok(ops)
    }
}

/// What a load of `id` says about damage: a load that fails on the
/// stored data marks the document damaged, one that succeeds clears it.
pub(crate) fn note_load<T>(repairs: &Repairs, id: &DocId, loaded: &Result<T, StoreError>) {
    match loaded {
        Ok(_) => repairs.forget(id),
        Err(StoreError::Corrupt { .. }) => repairs.mark(id),
        Err(_) => {}
    }
}
