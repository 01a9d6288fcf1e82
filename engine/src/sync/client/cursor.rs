//! Collection cursors: a reconnect costs what changed, not what exists.
//!
//! A replica keeps, per collection, a [`SyncCursor`]: the relay's id, a
//! number of that relay's sequence of the collection (every change it
//! numbered up to there is held here) and a number of this replica's own
//! sequence (every local document last written at or below it was held by
//! the relay). On connect the session sends it in `SubscribeSince`; the
//! relay heads the listing with `Listing` saying whether it honoured it:
//!
//! - honoured (`since` is the cursor's number): the listing names only
//!   the documents the relay changed since, and the session offers only
//!   the local documents changed since the cursor's local number;
//! - not honoured (`since` is `None`: another relay, a restored database,
//!   no cursor): everything is listed and compared, as without cursors.
//!
//! Either way the listing's `seq` is where the connection now stands at
//! the relay. The new cursor is saved only once the session is idle and
//! every document of the collection it touched, and every local document
//! written since the old local number, agrees with the relay (same heads,
//! or both deleted): a crash or a dropped connection before that leaves
//! the old cursor, which asks for a superset. The local number saved is
//! the highest one read in that check, so a local write the driver has
//! not fed to the session yet is numbered above it and offered next time.

use std::collections::HashMap;

use super::{ClientOutput, ClientSession, DocSync, Hold};
use crate::error::Result;
use crate::id::{Collection, DocId};
use crate::sync::protocol::{Cursor, SubscribeRequest};
use crate::sync::{DocSummary, NumberedSummary, SyncCursor, SyncDocs};

/// How long after a failed attempt to save a cursor the session tries
/// again (ms): an attempt reads every document written since the last
/// cursor, so it is not repeated on every frame.
pub const CURSOR_RETRY_MS: u64 = 1_000;

/// One connection's progress through one collection's sequence.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    /// The cursor read from storage when the connection opened and sent
    /// in `SubscribeSince`; later, the one last saved.
    cursor: Option<SyncCursor>,
    /// The header of the listing being received.
    header: Option<Header>,
    /// The relay's sequence number this connection has seen every change
    /// up to, once a listing completed.
    relay_seq: Option<u64>,
    /// The local sequence number at or below which the relay holds every
    /// local document, once a listing completed: the honoured cursor's,
    /// 0 after a full listing (which compared every document).
    baseline: Option<u64>,
    /// Whether `relay_seq` moved past the saved cursor.
    due: bool,
    /// Not before this time (ms) is saving tried again.
    retry_at: u64,
}

/// What a `Listing` frame said about the listing it heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// The number the listing starts after (`None`: every document).
    since: Option<u64>,
    /// Where it leaves the connection.
    seq: u64,
}

impl ClientSession {
    /// Reads the stored cursors of the subscribed collections, for the
    /// `SubscribeSince` of a new connection (a failed read only costs a
    /// full listing, and is reported).
    pub(super) fn load_cursors(&mut self, docs: &dyn SyncDocs) {
        self.progress.clear();
        let collections: Vec<Collection> = self.config.collections.iter().cloned().collect();
        for collection in collections {
            match docs.sync_cursor(&collection) {
                Ok(cursor) => {
                    self.progress.entry(collection).or_default().cursor = cursor;
                }
                Err(e) => self.local_failure(None, &e),
            }
        }
    }

    /// The `SubscribeWith` entry of a collection: the furthest point this
    /// side knows, on this connection or from the stored cursor, and
    /// whether its documents may come `whole`.
    pub(super) fn subscribe_request(
        &self,
        collection: &Collection,
        whole: bool,
    ) -> SubscribeRequest {
        let progress = self.progress.get(collection);
        let here = match (&self.relay_id, progress.and_then(|p| p.relay_seq)) {
            (Some(relay), Some(seq)) => Some(Cursor {
                relay_id: relay.to_string(),
                seq,
            }),
            _ => None,
        };
        let stored = progress.and_then(|p| p.cursor.as_ref()).map(|c| Cursor {
            relay_id: c.relay.to_string(),
            seq: c.relay_seq,
        });
        SubscribeRequest {
            collection: collection.to_string(),
            cursor: here.or(stored),
            whole,
        }
    }

    /// A `Listing` frame: remembered until its listing completes.
    pub(super) fn on_listing(&mut self, name: &str, since: Option<u64>, seq: u64) {
        if let Some(collection) = self.subscribed(name) {
            self.progress.entry(collection).or_default().header = Some(Header { since, seq });
        }
    }

    /// A listing of `collection` completed: where the connection stands
    /// now, and the local number from which local documents must be
    /// offered (those at or below it are held by the relay).
    pub(super) fn listing_completed(&mut self, collection: &Collection) -> u64 {
        let relay = self.relay_id.clone();
        let progress = self.progress.entry(collection.clone()).or_default();
        let header = progress.header.take();
        let seen = progress.relay_seq;
        let stored = progress
            .cursor
            .as_ref()
            .filter(|c| Some(&c.relay) == relay.as_ref())
            .map(|c| (c.relay_seq, c.local_seq));
        // Whether a listing since `since` continues from what this side
        // has seen (a full listing always does).
        let continues = |since: Option<u64>| match (since, seen, stored) {
            (None, _, _) => true,
            (Some(since), Some(seen), _) => since <= seen,
            (Some(since), None, Some((relay_seq, _))) => since <= relay_seq,
            (Some(_), None, None) => false,
        };
        let from = match header {
            Some(Header {
                since: since @ Some(_),
                ..
            }) if continues(since) => progress
                .baseline
                .or(stored.map(|(_, local_seq)| local_seq))
                .unwrap_or(0),
            // A full listing, one without a header (a version-2 answer),
            // or one that does not continue from what this side knows:
            // every local document is compared.
            _ => 0,
        };
        progress.baseline = Some(from.min(progress.baseline.unwrap_or(u64::MAX)));
        self.baseline_moves += 1;
        if let Some(header) = header.filter(|h| continues(h.since)) {
            progress.relay_seq = Some(header.seq.max(seen.unwrap_or(0)));
            progress.due = true;
        }
        from
    }

    /// Where a check of the local state starts reading `collection`: the
    /// baseline once known, else (optimistically) the stored cursor's
    /// local number; a check corrects itself if the relay does not honour
    /// the cursor (see `check`).
    pub(super) fn check_from(&self, collection: &Collection, docs: &dyn SyncDocs) -> Result<u64> {
        match self.progress.get(collection) {
            Some(p) => Ok(match (p.baseline, &p.cursor) {
                (Some(b), _) => b,
                (None, Some(c)) => c.local_seq,
                (None, None) => 0,
            }),
            // Not connected yet: the cursor the connection will send.
            None => Ok(docs.sync_cursor(collection)?.map_or(0, |c| c.local_seq)),
        }
    }

    /// Whether a listing of `collection` completed on this connection, so
    /// its baseline is known.
    pub(super) fn baseline_known(&self, collection: &Collection) -> bool {
        self.progress
            .get(collection)
            .is_some_and(|p| p.baseline.is_some())
    }

    /// The local number at or below which the relay is known to hold
    /// every local document of `collection` on this connection (0 before
    /// its first listing completed: nothing is known).
    pub(super) fn baseline(&self, collection: &Collection) -> u64 {
        self.progress
            .get(collection)
            .and_then(|p| p.baseline)
            .unwrap_or(0)
    }

    /// The local documents of `collection` written above local number
    /// `from`, with their numbers (`from` 0: all of them).
    pub(super) fn local_since(
        &self,
        collection: &Collection,
        from: u64,
        docs: &dyn SyncDocs,
    ) -> Result<Vec<NumberedSummary>> {
        docs.summaries_since(collection, from, usize::MAX)
    }

    /// Whether the relay is known to hold `local` by the cursor alone: it
    /// was written at or below the baseline and nothing on this connection
    /// said otherwise.
    pub(super) fn held_by_cursor(&self, collection: &Collection, local: &NumberedSummary) -> bool {
        let baseline = self.baseline(collection);
        baseline > 0 && local.seq <= baseline && !self.docs.contains_key(&local.summary.doc)
    }

    /// Saves the cursors that moved, for the collections whose every
    /// document agrees with the relay; runs when nothing is in flight.
    /// Not while documents written in this call await their commit (as
    /// when a listing's documents came whole with its end): their local
    /// numbers are not known yet, so the next call tries.
    pub(super) fn save_cursors(&mut self, now: u64, docs: &dyn SyncDocs) {
        self.cursors_deferred = false;
        if self.relay_id.is_none() || !self.queue.is_empty() || self.in_flight > 0 {
            return;
        }
        if docs.numbering_held() {
            self.cursors_deferred = self.progress.values().any(|p| p.due);
            return;
        }
        let due: Vec<Collection> = self
            .progress
            .iter()
            .filter(|(_, p)| p.due && p.retry_at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for collection in due {
            match self.try_save(&collection, docs) {
                Ok(true) => {}
                Ok(false) => {
                    if let Some(p) = self.progress.get_mut(&collection) {
                        p.retry_at = now + CURSOR_RETRY_MS;
                    }
                }
                Err(e) => {
                    self.local_failure(None, &e);
                    if let Some(p) = self.progress.get_mut(&collection) {
                        p.retry_at = now + CURSOR_RETRY_MS;
                    }
                }
            }
        }
    }

    /// Saves the cursor of `collection` if everything agrees; returns
    /// whether it did.
    fn try_save(&mut self, collection: &Collection, docs: &dyn SyncDocs) -> Result<bool> {
        let Some(relay) = self.relay_id.clone() else {
            return Ok(false);
        };
        let Some(progress) = self.progress.get(collection) else {
            return Ok(false);
        };
        let (Some(relay_seq), Some(baseline)) = (progress.relay_seq, progress.baseline) else {
            return Ok(false);
        };
        // Every local document written since the baseline, as the file
        // holds it now; the highest number read becomes the new baseline.
        let written = self.local_since(collection, baseline, docs)?;
        let mut local_seq = baseline;
        let mut states: HashMap<DocId, DocSummary> = HashMap::with_capacity(written.len());
        for numbered in written {
            local_seq = local_seq.max(numbered.seq);
            states.insert(numbered.summary.doc, numbered.summary);
        }
        if !states.keys().all(|doc| self.docs.contains_key(doc)) {
            return Ok(false); // written, and not yet offered on this connection
        }
        for (doc, d) in &self.docs {
            if d.collection != *collection {
                continue;
            }
            let local = match states.get(doc) {
                Some(state) => state.clone(),
                None => match docs.local_state(doc)? {
                    Some(l) => DocSummary {
                        doc: *doc,
                        heads: l.heads,
                        deleted: l.deleted,
                    },
                    None => DocSummary {
                        doc: *doc,
                        heads: Default::default(),
                        deleted: false,
                    },
                },
            };
            if !agreed(d, &local) {
                return Ok(false);
            }
        }
        let cursor = SyncCursor {
            relay,
            relay_seq,
            local_seq,
            write: !self.read_only.contains(collection),
        };
        docs.save_sync_cursor(collection, &cursor)?;
        if let Some(p) = self.progress.get_mut(collection) {
            p.baseline = Some(local_seq);
            p.cursor = Some(cursor);
            p.due = false;
        }
        self.baseline_moves += 1;
        Ok(true)
    }

    /// Whether the last call could not save a cursor that is due because
    /// its writes awaited their commit: once they are committed, the
    /// driver calls [`ClientSession::save_deferred_cursors`] (before it
    /// tells the app anything), so a cursor is not left unsaved by an app
    /// that closes the connection as soon as it agrees.
    pub fn cursors_deferred(&self) -> bool {
        self.cursors_deferred
    }

    /// Saves the cursors the last call deferred (see
    /// [`ClientSession::cursors_deferred`]), with the states that moved.
    pub fn save_deferred_cursors(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<ClientOutput> {
        self.finish(now, docs)
    }

    /// The cursor this session last read or saved for `collection`.
    pub fn cursor(&self, collection: &Collection) -> Option<&SyncCursor> {
        self.progress
            .get(collection)
            .and_then(|p| p.cursor.as_ref())
    }
}

/// Whether this replica and the relay hold the same thing of a document,
/// with nothing under way: same heads, or both deleted.
fn agreed(d: &DocSync, local: &DocSummary) -> bool {
    if d.hold != Hold::Free || d.delete_sent || d.exchange.in_flight() {
        return false;
    }
    if local.deleted || d.relay_deleted {
        return local.deleted && d.relay_deleted;
    }
    d.relay_heads.as_ref() == Some(&local.heads)
}
