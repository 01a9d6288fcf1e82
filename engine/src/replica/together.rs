//! Many writes, one commit: [`Replica::commit_together`].
//!
//! The sync driver applies a run of frames from the relay (a cold sync is
//! hundreds of documents, each a write of its own) inside one
//! `commit_together`, so the run costs one SQLite commit instead of one
//! per document. Inside, this thread's writes return once queued (see
//! `commit`'s holding), and their change events wait; at the end
//! everything is committed, then the events go out. The driver sends
//! nothing it generated inside before that commit succeeded, so an
//! acknowledgement never leaves ahead of what it acknowledges.

use super::events::ChangeEvent;
use super::{ChangeKind, Replica};
use crate::error::{Error, Result};

/// Ends a `commit_together` however its work ends (a panic included, so
/// the thread never stays holding).
struct Holding<'a> {
    replica: &'a Replica,
    finished: bool,
}

impl Holding<'_> {
    /// Commits what was held and delivers its events; on failure drops the
    /// cached state of every document it touched (it may be ahead of the
    /// store) and tells subscribers of those documents to look again.
    fn finish(&mut self) -> Result<()> {
        self.finished = true;
        let listeners = &self.replica.inner.listeners;
        match self.replica.inner.committer.release() {
            Ok(events) => {
                events.into_iter().for_each(|e| listeners.emit(e));
                Ok(())
            }
            Err(not) => {
                for doc in &not.docs {
                    *self.replica.inner.cache.entry(doc).lock() = None;
                }
                for e in not.events {
                    if !not.failed.contains(&e.doc) {
                        listeners.emit(e);
                    } else if let Ok(heads) = self.replica.heads(&e.doc) {
                        // Part of what it said may be stored: one event
                        // with what is, so readers look again.
                        listeners.emit(ChangeEvent {
                            kind: ChangeKind::Changed,
                            heads,
                            ..e
                        });
                    }
                }
                Err(Error::Store(not.error))
            }
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish();
        }
    }
}

impl Replica {
    /// Runs `work`, committing every write this thread makes to this
    /// replica meanwhile in one SQLite commit at the end (several, if
    /// other threads' commits take some of them first). Inside, writes
    /// return once queued and their change events wait for the commit.
    /// Returns `work`'s value once everything is committed, or the first
    /// failure: then the cached state of every document written inside is
    /// dropped (reloaded from the store on next use), and the caller must
    /// treat everything it derived inside as unsaved. A call inside
    /// another joins the outer one.
    pub(crate) fn commit_together<T>(&self, work: impl FnOnce() -> T) -> Result<T> {
        if !self.inner.committer.hold() {
            return Ok(work());
        }
        let mut holding = Holding {
            replica: self,
            finished: false,
        };
        let value = work();
        holding.finish()?;
        Ok(value)
    }

    /// Delivers `event` now, or after the commit if this thread is inside
    /// [`Replica::commit_together`].
    pub(super) fn deliver(&self, event: ChangeEvent) {
        if let Some(event) = self.inner.committer.hold_event(event) {
            self.inner.listeners.emit(event);
        }
    }
}
