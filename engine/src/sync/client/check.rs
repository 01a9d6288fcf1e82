//! What `wait_synced` and `wait_agreed` wait for, decided by the session.
//!
//! A [`SyncCheck`] snapshots the local state of the subscribed collections
//! when the app asks, document by document. A document is done once the
//! relay is known to hold those heads (or later ones built on them) and
//! its tombstone (acknowledged), so writes made after the snapshot never
//! delay it: an app that writes continuously still learns that its
//! earlier writes are safe. Each [`ClientSession::check`] looks only at the
//! documents the relay told the session about since the last look (all of
//! them the first time, or after a reconnect), so a check costs in
//! proportion to the traffic.
//!
//! Agreement (`wait_agreed`) asks, in addition, that this replica holds
//! what the relay holds: the check re-sends `Subscribe` and compares with
//! the fresh announcements, so it agrees with what the relay holds when
//! asked, not with what it said before.

use std::collections::HashMap;

use super::{ClientOutput, ClientSession};
use crate::error::Result;
use crate::id::{Collection, DocId};
use crate::sync::{DocSummary, NumberedSummary, SyncDocs};

/// A pending `wait_synced` or `wait_agreed`.
#[derive(Debug, Clone, Default)]
pub struct SyncCheck {
    /// Documents not yet known to be held, with their collection and
    /// their state (and local number) then.
    pending: HashMap<DocId, (Collection, NumberedSummary)>,
    /// Per collection, the local number the snapshot was read from: the
    /// documents at or below it were left out as held by the cursor. If
    /// the relay does not honour the cursor, they are read in after all.
    from: HashMap<Collection, u64>,
    /// The connection epoch and baseline moves last looked at; until they
    /// are the current ones, every pending document is looked at, after
    /// that only news.
    epoch: Option<(u64, u64)>,
    /// Whether agreement is asked for.
    agree: bool,
    /// For agreement: the connection and the per-collection counts of
    /// `Subscribe` frames whose announcements it waits for.
    fresh: Option<(u64, HashMap<Collection, u64>)>,
}

/// The answer to a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The relay holds every local change and tombstone of the snapshot
    /// (in read-only collections: this replica pulled what the relay
    /// holds, and what it cannot push is in `unpushed`).
    pub synced: bool,
    /// In addition, this replica holds everything the relay announced.
    pub agreed: bool,
    /// Once synced: records of read-only collections with local changes
    /// (or a local tombstone) the relay does not hold and will not take.
    pub unpushed: Vec<DocId>,
}

impl CheckOutcome {
    /// Whether the check that asked for agreement (or not) is answered.
    pub fn answers(&self, check: &SyncCheck) -> bool {
        self.synced && (self.agreed || !check.agree)
    }
}

impl ClientSession {
    /// Starts a check of the local state now; with `agree`, asks the relay
    /// for fresh announcements (sent with the returned outputs).
    pub fn begin_check(
        &mut self,
        agree: bool,
        docs: &dyn SyncDocs,
    ) -> Result<(SyncCheck, Vec<ClientOutput>)> {
        let mut pending = HashMap::new();
        let mut from = HashMap::new();
        for collection in &self.config.collections {
            let start = self.check_from(collection, docs)?;
            let written = self.local_since(collection, start, docs)?;
            pending.extend(
                written
                    .into_iter()
                    .map(|n| (n.summary.doc, (collection.clone(), n))),
            );
            from.insert(collection.clone(), start);
        }
        let mut check = SyncCheck {
            pending,
            from,
            epoch: None,
            agree,
            fresh: None,
        };
        if agree && self.open {
            let collections: Vec<Collection> = self.config.collections.iter().cloned().collect();
            self.send_subscribe(collections, docs);
            check.fresh = Some((self.epoch, self.subscribes_sent.clone()));
        }
        Ok((check, std::mem::take(&mut self.out)))
    }

    /// How far the relay got with `check`. `local_quiet` says that every
    /// committed local change has been fed to the session (agreement needs
    /// it).
    pub fn check(
        &mut self,
        check: &mut SyncCheck,
        local_quiet: bool,
        docs: &dyn SyncDocs,
    ) -> CheckOutcome {
        let synced = self.reached(check, docs);
        let agreed = synced
            && check.agree
            && local_quiet
            && self.fresh_announced(check)
            && self.agrees(docs).unwrap_or(false);
        let unpushed = if synced {
            self.unpushed(docs).unwrap_or_default()
        } else {
            Vec::new()
        };
        CheckOutcome {
            synced,
            agreed,
            unpushed,
        }
    }

    /// Records of read-only collections whose local changes or tombstone
    /// the relay does not hold.
    pub fn unpushed(&self, docs: &dyn SyncDocs) -> Result<Vec<DocId>> {
        let mut out = Vec::new();
        for collection in &self.read_only {
            for n in self.local_since(collection, self.baseline(collection), docs)? {
                if !self.held_by_cursor(collection, &n) && !self.relay_holds(&n.summary, docs) {
                    out.push(n.summary.doc);
                }
            }
        }
        Ok(out)
    }

    /// Whether the relay now holds everything `check` waits for, dropping
    /// the documents found held from it.
    fn reached(&mut self, check: &mut SyncCheck, docs: &dyn SyncDocs) -> bool {
        let news = std::mem::take(&mut self.relay_news);
        // Collections the relay refused are not waited for.
        check
            .pending
            .retain(|_, (c, _)| !self.skipped.contains_key(c));
        if let Err(e) = self.read_in_unhonoured(check, docs) {
            self.local_failure(None, &e);
            return false;
        }
        let now = (self.epoch, self.baseline_moves);
        if check.epoch == Some(now) {
            for doc in &news {
                if check
                    .pending
                    .get(doc)
                    .is_some_and(|(c, s)| self.settled(c, s, docs))
                {
                    check.pending.remove(doc);
                }
            }
        } else {
            check.epoch = Some(now);
            check.pending.retain(|_, (c, s)| !self.settled(c, s, docs));
        }
        self.all_announced() && check.pending.is_empty()
    }

    /// Reads into `check` the documents it left out as held by a cursor
    /// the relay did not honour (its listing completed with a lower
    /// baseline): up to the snapshot's number, they are waited for too.
    fn read_in_unhonoured(&self, check: &mut SyncCheck, docs: &dyn SyncDocs) -> Result<()> {
        for (collection, from) in check.from.iter_mut() {
            if !self.baseline_known(collection) || self.baseline(collection) >= *from {
                continue;
            }
            let upto = *from;
            for n in self.local_since(collection, self.baseline(collection), docs)? {
                if n.seq <= upto {
                    check
                        .pending
                        .entry(n.summary.doc)
                        .or_insert_with(|| (collection.clone(), n));
                }
            }
            *from = self.baseline(collection);
        }
        Ok(())
    }

    fn all_announced(&self) -> bool {
        self.relay_id.is_some()
            && self
                .config
                .collections
                .iter()
                .all(|c| self.announced.contains(c) || self.skipped.contains_key(c))
    }

    /// Whether nothing more can happen for `local` on this connection: the
    /// relay holds it, or (read-only collection) this replica pulled what
    /// the relay holds and keeps the rest local.
    fn settled(
        &self,
        collection: &Collection,
        local: &NumberedSummary,
        docs: &dyn SyncDocs,
    ) -> bool {
        if self.held_by_cursor(collection, local) {
            return true;
        }
        let local = &local.summary;
        if self.relay_holds(local, docs) {
            return true;
        }
        if !self.read_only.contains(collection) {
            return false;
        }
        let Some(d) = self.docs.get(&local.doc) else {
            return false;
        };
        if d.relay_deleted {
            return true;
        }
        match &d.relay_heads {
            None => false,
            Some(theirs) if theirs.is_empty() => true, // the relay lacks it: stays local
            Some(theirs) => self.pulled(&local.doc, theirs, docs),
        }
    }

    /// Whether this replica's history holds `theirs` now.
    fn pulled(&self, doc: &DocId, theirs: &crate::id::Heads, docs: &dyn SyncDocs) -> bool {
        let Ok(Some(now)) = docs.local_state(doc) else {
            return false;
        };
        now.heads.contains_all(theirs)
            || docs.covers(doc, theirs, &now.heads).ok().flatten() == Some(true)
    }

    /// Whether the announcements an agreement check asked for arrived.
    fn fresh_announced(&self, check: &SyncCheck) -> bool {
        match &check.fresh {
            // Reconnected since: that connection's announcements are newer.
            Some((epoch, wanted)) if *epoch == self.epoch => wanted.iter().all(|(c, n)| {
                self.skipped.contains_key(c)
                    || self.announces_done.get(c).is_some_and(|done| done >= n)
            }),
            _ => true,
        }
    }

    /// Whether the relay holds every local change and tombstone of the
    /// subscribed collections, as far as this session has learnt.
    pub fn is_synced(&self, docs: &dyn SyncDocs) -> Result<bool> {
        if !self.all_announced() || !self.queue.is_empty() || self.in_flight > 0 {
            return Ok(false);
        }
        for collection in &self.config.collections {
            if self.skipped.contains_key(collection) {
                continue;
            }
            for n in self.local_since(collection, self.baseline(collection), docs)? {
                if !self.settled(collection, &n, docs) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Documents of `local` the relay is not known to hold (for logs).
    pub fn missing_at_relay(&self, local: &[DocSummary], docs: &dyn SyncDocs) -> Vec<DocId> {
        local
            .iter()
            .filter(|s| !self.relay_holds(s, docs))
            .map(|s| s.doc)
            .collect()
    }

    /// Whether the relay is known to hold `local`: its tombstone (a
    /// tombstone settles a record: the content of a deleted record is not
    /// synced further, so changes made to it concurrently with the
    /// deletion count as held once the relay holds the tombstone), or heads
    /// equal to or descending from its heads.
    pub(super) fn relay_holds(&self, local: &DocSummary, docs: &dyn SyncDocs) -> bool {
        let Some(d) = self.docs.get(&local.doc) else {
            return false;
        };
        if local.deleted || d.relay_deleted {
            return d.relay_deleted;
        }
        let Some(theirs) = &d.relay_heads else {
            return false;
        };
        if theirs.contains_all(&local.heads) {
            return true;
        }
        // `None`: their heads name changes still on their way to us; the
        // message bringing them is news again.
        !theirs.is_empty()
            && docs.covers(&local.doc, &local.heads, theirs).ok().flatten() == Some(true)
    }

    /// Whether the relay and this replica hold the same heads for every
    /// document either is known to have. With the relay holding all of
    /// ours, equal heads mean equal content.
    fn agrees(&self, docs: &dyn SyncDocs) -> Result<bool> {
        if !self.is_synced(docs)? {
            return Ok(false);
        }
        for (doc, d) in &self.docs {
            let Some(theirs) = &d.relay_heads else {
                continue;
            };
            if d.relay_deleted || theirs.is_empty() {
                continue;
            }
            if self.read_only.contains(&d.collection) {
                // Local changes stay local: agreeing means holding theirs.
                if !self.pulled(doc, theirs, docs) {
                    return Ok(false);
                }
                continue;
            }
            let ours = docs.local_state(doc)?.map(|l| l.heads).unwrap_or_default();
            if ours != *theirs {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
