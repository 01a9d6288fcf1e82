//! What the sync layer needs from a replica: Automerge sync messages
//! generated and received under each document's lock, changes persisted
//! before the reply that acknowledges them is generated, tombstones, and
//! stored sync states. [`SyncDocs`] is implemented here for [`Replica`];
//! the sans-IO sync core only sees the trait.

use std::collections::HashSet;

use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, ChangeHash};

use super::cache::DocState;
use super::commit::lock;
use super::{ChangeKind, Origin, Replica};
use crate::error::{Error, Result};
use crate::id::DocId;
use crate::store::{now_ms, WriteOp};
use crate::sync::{DocSummary, SyncDocs};

impl SyncDocs for Replica {
    fn summaries(&self, collection: &str) -> Result<Vec<DocSummary>> {
        let metas = self.read_store(|s| s.list(Some(collection), true))?;
        Ok(metas
            .into_iter()
            .map(|m| DocSummary::new(m.id, &m.heads, m.deleted))
            .collect())
    }

    fn local_state(&self, doc: &DocId) -> Result<Option<(String, Vec<ChangeHash>, bool)>> {
        let meta = self.read_store(|s| s.meta(doc))?;
        Ok(meta.map(|m| (m.collection, m.heads, m.deleted)))
    }

    fn heads(&self, doc: &DocId) -> Result<Vec<ChangeHash>> {
        match self.read_any(doc, |s| s.doc.get_heads()) {
            Err(Error::NotFound(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    fn covers(&self, doc: &DocId, heads: &[ChangeHash], of: &[ChangeHash]) -> Result<Option<bool>> {
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

    fn generate(&self, doc: &DocId, state: &mut State) -> Result<Option<Message>> {
        let entry = self.inner.cache.entry(doc);
        let mut slot = lock(&entry);
        match self.refresh(doc, &mut slot) {
            Ok(()) => {}
            Err(Error::NotFound(_)) => return Ok(Automerge::new().generate_sync_message(state)),
            Err(e) => return Err(e),
        }
        Ok(slot
            .as_ref()
            .and_then(|s| s.doc.generate_sync_message(state)))
    }

    fn receive(
        &self,
        doc: &DocId,
        collection: &str,
        state: &mut State,
        message: Message,
        from: &str,
    ) -> Result<bool> {
        super::check_collection(collection)?;
        let entry = self.inner.cache.entry(doc);
        let mut slot = lock(&entry);
        self.refresh_if_stored(doc, &mut slot)?;
        let origin = Origin::Remote(from.to_owned());
        let Some(current) = slot.as_mut() else {
            let mut fresh = Automerge::new();
            fresh
                .receive_sync_message(state, message)
                .map_err(|source| Error::Automerge {
                    doc: *doc,
                    source: Box::new(source),
                })?;
            if fresh.get_heads().is_empty() {
                return Ok(false);
            }
            self.insert_into(*doc, collection, fresh, origin, &mut slot)?;
            return Ok(true);
        };
        same_collection(doc, current, collection)?;
        let before = current.doc.get_heads();
        if let Err(source) = current.doc.receive_sync_message(state, message) {
            *slot = None; // whatever was half-applied is dropped; reload from the store
            return Err(Error::Automerge {
                doc: *doc,
                source: Box::new(source),
            });
        }
        if current.doc.get_heads() == before {
            return Ok(false);
        }
        self.persist_since(doc, &mut slot, &before, origin)?;
        Ok(true)
    }

    fn delete(&self, doc: &DocId, collection: &str, from: &str) -> Result<bool> {
        super::check_collection(collection)?;
        let entry = self.inner.cache.entry(doc);
        let mut slot = lock(&entry);
        self.refresh_if_stored(doc, &mut slot)?;
        if let Some(current) = slot.as_ref() {
            same_collection(doc, current, collection)?;
            if current.deleted {
                return Ok(false);
            }
        }
        let json = match slot.as_ref() {
            Some(current) => self.projection_of(&current.doc),
            None => self.projection_of(&Automerge::new()), // a tombstone before any content
        };
        self.inner.committer.submit(vec![WriteOp::Delete {
            doc: *doc,
            collection: collection.to_owned(),
            at: now_ms(),
            json,
        }])?;
        let heads = match slot.as_mut() {
            Some(current) => {
                current.deleted = true;
                current.doc.get_heads()
            }
            None => Vec::new(), // the next user loads the tombstone row
        };
        drop(slot);
        self.emit(
            *doc,
            collection,
            ChangeKind::Deleted,
            Origin::Remote(from.to_owned()),
            heads,
        );
        Ok(true)
    }

    fn load_sync_state(&self, peer: &str, doc: &DocId) -> Result<Option<State>> {
        let Some(bytes) = self.read_store(|s| s.sync_state(peer, doc))? else {
            return Ok(None);
        };
        // A damaged stored state only costs a fuller resync.
        Ok(State::decode(&bytes).ok())
    }

    fn save_sync_states(&self, peer: &str, states: Vec<(DocId, Vec<u8>)>) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let ops = states
            .into_iter()
            .map(|(doc, state)| WriteOp::SyncState {
                peer: peer.to_owned(),
                doc,
                state,
            })
            .collect();
        Ok(self.inner.committer.submit(ops)?)
    }
}

/// A peer may only touch a document in its own collection.
fn same_collection(doc: &DocId, current: &DocState, collection: &str) -> Result<()> {
    if current.collection == collection {
        return Ok(());
    }
    Err(Error::WrongCollection {
        doc: *doc,
        actual: current.collection.clone(),
        given: collection.to_owned(),
    })
}
