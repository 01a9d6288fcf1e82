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
use crate::store::WriteOp;
use crate::sync::{DocSummary, EncodedState, LocalState, SyncDocs};

impl SyncDocs for Replica {
    fn summaries(&self, collection: &Collection) -> Result<Vec<DocSummary>> {
        let metas = self.read_store(|s| s.list(Some(collection), true))?;
        Ok(metas.into_iter().map(summary).collect())
    }

    fn summaries_page(
        &self,
        collection: &Collection,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocSummary>> {
        let metas = self.read_store(|s| s.list_page(collection, after, limit))?;
        Ok(metas.into_iter().map(summary).collect())
    }

    fn local_state(&self, doc: &DocId) -> Result<Option<LocalState>> {
        let meta = self.read_store(|s| s.meta(doc))?;
        Ok(meta.map(|m| LocalState {
            collection: m.collection,
            heads: m.heads,
            deleted: m.deleted,
        }))
    }

    fn heads(&self, doc: &DocId) -> Result<Heads> {
        match self.read_any(doc, |s| Heads::new(s.doc.get_heads())) {
            Err(Error::NotFound(_)) => Ok(Heads::empty()),
            other => other,
        }
    }

    fn covers(&self, doc: &DocId, heads: &Heads, of: &Heads) -> Result<Option<bool>> {
        let covered = self.read_any(doc, |s| {
            let known = |h: &ChangeHash| s.doc.get_change_meta_by_hash(h).is_some();
            if !of.iter().all(known) {
                return None;
            }
            // The changes outside the history of `of`.
            let newer: HashSet<ChangeHash> = s
                .doc
                .get_changes_meta(of)
                .into_iter()
                .map(|c| c.hash)
                .collect();
            Some(heads.iter().all(|h| known(h) && !newer.contains(h)))
        });
        match covered {
            Err(Error::NotFound(_)) => Ok(None),
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
        match self.current(doc, &mut cached)? {
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

/// What a listing tells a peer about a document.
fn summary(meta: crate::store::DocMeta) -> DocSummary {
    DocSummary {
        doc: meta.id,
        heads: meta.heads,
        deleted: meta.deleted,
    }
}
