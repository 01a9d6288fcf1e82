//! Reaching a document: the cache entry, made current against the file.
//!
//! Every operation on one document locks its cache entry and calls
//! [`Replica::current`], which loads the document if it is not in memory
//! and reloads it if another process changed it in the file since. That
//! check is what lets two processes write one file; it is skipped while
//! the writer connection has seen no other connection commit (see
//! `store::Store::foreign_commits`), so a process that is its file's only
//! writer pays nothing for it.

use super::cache::{DocState, Entry};
use super::Replica;
use crate::error::{Error, Result};
use crate::id::DocId;
use crate::store::Store;

impl Replica {
    /// Runs a read against the store.
    pub(crate) fn read_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        match &self.inner.reader {
            Some(reader) => f(&reader.lock()),
            None => self.inner.committer.with_store(f),
        }
    }

    /// The cache entry of `id`, holding the current document, or
    /// [`Error::NotFound`] if the store does not have it.
    pub(crate) fn entry(&self, id: &DocId) -> Result<Entry> {
        let entry = self.inner.cache.entry(id);
        let found = {
            let mut cached = entry.lock();
            self.current(id, &mut cached).map(|s| s.is_some())
        };
        match found {
            Ok(true) => Ok(entry),
            Ok(false) => {
                self.inner.cache.forget(id);
                Err(Error::NotFound(*id))
            }
            Err(e) => {
                self.inner.cache.forget(id);
                Err(e)
            }
        }
    }

    /// Makes a locked entry current: loads the document if the entry is
    /// empty, and reloads it if the file says another process changed it.
    /// `None` if the store does not have the document.
    pub(crate) fn current<'a>(
        &self,
        id: &DocId,
        cached: &'a mut Option<DocState>,
    ) -> Result<Option<&'a mut DocState>> {
        let epoch = self.inner.committer.foreign_epoch();
        if let Some(state) = cached.as_ref() {
            // A document this thread holds a write of (inside
            // `commit_together`) is ahead of the file by that write; if
            // another process wrote it meanwhile, the held write fails as
            // stale when committed.
            if state.checked_epoch != epoch
                && !self.inner.committer.holds(id)
                && !self.still_stored(id, state)?
            {
                *cached = None;
            }
        }
        if cached.is_none() {
            let Some(stored) = self.read_store(|s| s.load(id))? else {
                return Ok(None);
            };
            let loaded = DocState::load(stored, &self.inner.actor);
            if self.inner.options.refetch_damaged {
                super::repair::note_load(&self.inner.repairs, id, &loaded);
            }
            *cached = Some(loaded?);
        }
        if let Some(state) = cached.as_mut() {
            state.checked_epoch = epoch;
        }
        Ok(cached.as_mut())
    }

    /// Whether the file still holds what the cached state holds.
    fn still_stored(&self, id: &DocId, state: &DocState) -> Result<bool> {
        let meta = self.read_store(|s| s.meta(id))?;
        Ok(meta.is_some_and(|m| m.deleted == state.deleted && m.heads == state.doc.get_heads()))
    }

    /// The current document of a locked entry, or [`Error::NotFound`].
    pub(crate) fn stored<'a>(
        &self,
        id: &DocId,
        cached: &'a mut Option<DocState>,
    ) -> Result<&'a mut DocState> {
        self.current(id, cached)?.ok_or(Error::NotFound(*id))
    }
}
