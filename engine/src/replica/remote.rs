//! What the sync layer needs from a replica: Automerge sync messages
//! generated and received under each document's lock, changes persisted
//! before the reply that acknowledges them is generated, tombstones, and
//! stored sync states. [`SyncDocs`] is implemented here for [`Replica`];
//! the sans-IO sync core only sees the trait. Receiving and deleting take
//! the replica's one write path (`write`), the same as local writes and
//! `merge_bytes`.

use std::collections::HashSet;

use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, ChangeHash};

use super::batches::{self, Batch};
use super::write::{same_collection, IfUnknown};
use super::{Origin, Replica};
use crate::error::{Error, Result};
use crate::id::{Collection, DocId, Heads, PeerId};
use crate::store::{StoredCursor, WriteOp};
use crate::sync::{
    DocSummary, EncodedState, LocalState, NumberedSummary, Received, SyncCursor, SyncDocs,
};

impl SyncDocs for Replica {
    fn summaries(&self, collection: &Collection) -> Result<Vec<DocSummary>> {
        let metas = self.read_store(|s| s.list(Some(collection), true))?;
        Ok(metas.into_iter().map(|m| self.summary(m)).collect())
    }

    fn summaries_page(
        &self,
        collection: &Collection,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocSummary>> {
        let metas = self.read_store(|s| s.list_page(collection, after, limit))?;
        Ok(metas.into_iter().map(|m| self.summary(m)).collect())
    }

    fn collection_seq(&self, collection: &Collection) -> Result<u64> {
        Ok(self.read_store(|s| s.collection_seq(collection))?)
    }

    fn summaries_since(
        &self,
        collection: &Collection,
        since: u64,
        limit: usize,
    ) -> Result<Vec<NumberedSummary>> {
        let rows = self.read_store(|s| s.metas_since(collection, since, limit))?;
        Ok(rows
            .into_iter()
            .map(|(seq, meta)| NumberedSummary {
                seq,
                summary: self.summary(meta),
            })
            .collect())
    }

    fn sync_cursor(&self, collection: &Collection) -> Result<Option<SyncCursor>> {
        let Some(stored) = self.read_store(|s| s.sync_cursor(collection))? else {
            return Ok(None);
        };
        // A relay id that no longer parses only costs a full listing.
        Ok(PeerId::new(stored.relay).ok().map(|relay| SyncCursor {
            relay,
            relay_seq: stored.relay_seq,
            local_seq: stored.local_seq,
            write: stored.write,
        }))
    }

    fn save_sync_cursor(&self, collection: &Collection, cursor: &SyncCursor) -> Result<()> {
        let op = WriteOp::SyncCursor {
            collection: collection.to_string(),
            cursor: StoredCursor {
                relay: cursor.relay.to_string(),
                relay_seq: cursor.relay_seq,
                local_seq: cursor.local_seq,
                write: cursor.write,
            },
        };
        Ok(self.inner.committer.submit(vec![op])?)
    }

    fn local_state(&self, doc: &DocId) -> Result<Option<LocalState>> {
        if self.inner.committer.holds(doc) {
            // Written inside this thread's open `commit_together`: the
            // cached document is ahead of the file by what is held.
            let entry = self.inner.cache.entry(doc);
            let mut cached = entry.lock();
            if let Some(state) = self.current(doc, &mut cached)? {
                return Ok(Some(LocalState {
                    heads: Heads::new(state.doc.get_heads()),
                    collection: state.collection.clone(),
                    deleted: state.deleted,
                }));
            }
        }
        let meta = self.read_store(|s| s.meta(doc))?;
        Ok(meta.map(|m| LocalState {
            heads: self.inner.repairs.heads(&m.id).unwrap_or(m.heads),
            collection: m.collection,
            deleted: m.deleted,
        }))
    }

    fn heads(&self, doc: &DocId) -> Result<Heads> {
        match self.read_any(doc, |s| Heads::new(s.doc.get_heads())) {
            Err(Error::NotFound(_)) => Ok(Heads::empty()),
            Err(e) if self.refetching(&e) => Ok(self.inner.repairs.heads(doc).unwrap_or_default()),
            other => other,
        }
    }

    fn covers(&self, doc: &DocId, heads: &Heads, of: &Heads) -> Result<Option<bool>> {
        match self.read_any(doc, |s| covers_in(&s.doc, heads, of)) {
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) if self.refetching(&e) => Ok(self
                .inner
                .repairs
                .with(doc, |copy| covers_in(copy, heads, of))
                .flatten()),
            other => other,
        }
    }

    fn generate(
        &self,
        doc: &DocId,
        collection: &Collection,
        state: &mut State,
    ) -> Result<Option<Message>> {
        let entry = self.inner.cache.entry(doc);
        let mut cached = entry.lock();
        let current = match self.current(doc, &mut cached) {
            Err(e) if self.refetching(&e) => {
                // Sent from what was fetched again, so the peer sends the rest.
                same_collection_as_stored(self, doc, collection)?;
                return Ok(self.generate_repair(doc, state));
            }
            other => other?,
        };
        match current {
            Some(current) => {
                same_collection(doc, current, collection)?;
                let batch = Batch {
                    bytes: self.inner.options.max_sync_message_bytes,
                    ops: self.inner.options.max_sync_message_ops,
                };
                let stored = current.snapshot_bytes + current.incremental_bytes;
                Ok(batches::generate(&current.doc, state, stored, batch))
            }
            None => Ok(Automerge::new().generate_sync_message(state)),
        }
    }

    fn receive(
        &self,
        doc: &DocId,
        collection: &Collection,
        state: &mut State,
        message: Message,
        from: &PeerId,
    ) -> Result<bool> {
        // Measured before Automerge inflates anything: every door into the
        // store (the relay's protocols, a replica's driver) passes here.
        crate::guard::inspect_message(&message, &self.inner.options.message_budget)?;
        let incoming: usize = message.changes.iter().map(<[u8]>::len).sum();
        self.absorb(
            doc,
            collection,
            Origin::Remote(from.clone()),
            incoming as u64,
            |d| d.receive_sync_message(state, message),
        )
    }

    fn saved_form(&self, doc: &DocId, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        if self.inner.repairs.heads(doc).is_some() {
            return Ok(None); // damaged: announced, and synced from what was fetched again
        }
        let chunks = self.read_store(|s| match s.meta(doc)? {
            // The row's size is its chunks' bytes: a large document is
            // not read only to be announced after all.
            Some(meta) if !meta.deleted && meta.size_bytes <= max_bytes as u64 => {
                s.chunks(doc).map(Some)
            }
            _ => Ok(None),
        })?;
        let Some(chunks) = chunks.filter(|c| c.iter().all(|c| c.kind.is_some())) else {
            return Ok(None);
        };
        // A snapshot followed by chunks of changes is what `Automerge::load`
        // reads: the stored bytes go as they are, never decoded here.
        Ok(Some(chunks.into_iter().flat_map(|c| c.data).collect()))
    }

    fn receive_whole(
        &self,
        doc: &DocId,
        collection: &Collection,
        data: &[u8],
        from: &PeerId,
    ) -> Result<Received> {
        crate::guard::inspect(data, &self.inner.options.message_budget)?;
        let loaded = super::write::contained(doc, || Automerge::load(data))?.map_err(|source| {
            Error::Automerge {
                doc: *doc,
                source: Box::new(source),
            }
        })?;
        let heads = Heads::new(loaded.get_heads());
        let mut loaded = Some(loaded);
        let mut created = false;
        let changed = self.absorb(
            doc,
            collection,
            Origin::Remote(from.clone()),
            data.len() as u64,
            |current| {
                let Some(mut whole) = loaded.take() else {
                    return Ok(());
                };
                if current.get_heads().is_empty() {
                    created = true;
                    *current = whole;
                    Ok(())
                } else {
                    current.merge(&mut whole).map(|_| ())
                }
            },
        )?;
        Ok(Received {
            changed,
            created: created && changed,
            heads,
        })
    }

    fn delete(&self, doc: &DocId, collection: &Collection, from: &PeerId) -> Result<bool> {
        self.tombstone(
            doc,
            Some(collection),
            Origin::Remote(from.clone()),
            IfUnknown::Record,
        )
    }

    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Result<Option<State>> {
        let Some(bytes) = self.read_store(|s| s.sync_state(peer.as_str(), doc))? else {
            return Ok(None);
        };
        // A damaged stored state only costs a fuller resync.
        Ok(State::decode(&bytes).ok())
    }

    fn retire_sync_states(&self, prefix: &str, keep: usize, current: &PeerId) -> Result<()> {
        let op = WriteOp::RetireSyncStates {
            prefix: prefix.to_owned(),
            keep,
            current: current.to_string(),
        };
        Ok(self.inner.committer.submit(vec![op])?)
    }

    fn numbering_held(&self) -> bool {
        self.inner.committer.holds_numbered()
    }

    fn commit_together(&self, work: &mut dyn FnMut()) -> Result<()> {
        Replica::commit_together(self, work)
    }

    fn save_sync_states(&self, peer: &PeerId, states: Vec<EncodedState>) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let ops = states
            .into_iter()
            .map(|s| WriteOp::SyncState {
                peer: peer.to_string(),
                doc: s.doc,
                state: s.bytes,
            })
            .collect();
        Ok(self.inner.committer.submit(ops)?)
    }
}

impl Replica {
    /// What a listing tells a peer about a document: for a damaged one,
    /// the heads of what was fetched again so far.
    fn summary(&self, meta: crate::store::DocMeta) -> DocSummary {
        DocSummary {
            heads: self.inner.repairs.heads(&meta.id).unwrap_or(meta.heads),
            doc: meta.id,
            deleted: meta.deleted,
        }
    }
}

/// Whether the history of `doc` up to `of` contains every change in
/// `heads`; `None` while `of` names changes `doc` does not have.
pub(super) fn covers_in(doc: &Automerge, heads: &Heads, of: &Heads) -> Option<bool> {
    let known = |h: &ChangeHash| doc.get_change_meta_by_hash(h).is_some();
    if !of.iter().all(known) {
        return None;
    }
    // The changes outside the history of `of`.
    let newer: HashSet<ChangeHash> = doc
        .get_changes_meta(of)
        .into_iter()
        .map(|c| c.hash)
        .collect();
    Some(heads.iter().all(|h| known(h) && !newer.contains(h)))
}

/// A damaged document's content never reaches a peer that named another
/// collection either (its metadata row still reads).
fn same_collection_as_stored(replica: &Replica, doc: &DocId, given: &Collection) -> Result<()> {
    let stored = replica.meta(doc)?.collection;
    if stored == *given {
        return Ok(());
    }
    Err(Error::WrongCollection {
        doc: *doc,
        actual: stored,
        given: given.clone(),
    })
}
