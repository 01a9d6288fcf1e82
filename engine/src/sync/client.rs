//! A replica's side of one connection to a relay, without I/O.
//!
//! The driver feeds it [`ClientSession::connected`], every received frame,
//! every local change and a periodic tick, and carries out what it returns.
//! On connect it says hello, subscribes, and compares the relay's announced
//! heads with its own: only documents whose heads differ are synced, at most
//! `max_in_flight` at a time. Local changes are pushed as they happen.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use automerge::sync::{Message, State};
use automerge::ChangeHash;

use super::protocol::{DocSummary, ErrorCode, Frame, PROTOCOL_VERSION};
use super::{awaits_answer, heads_only, note_answer, restart_state, SyncDocs, RETRY_AFTER_MS};
use crate::id::DocId;
use crate::replica::ChangeKind;

/// What a client session is configured with.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This replica's peer id.
    pub peer_id: String,
    /// The credential presented in `Hello`.
    pub token: String,
    /// Collections to subscribe to.
    pub collections: BTreeSet<String>,
    /// How many documents may be mid-exchange at once.
    pub max_in_flight: usize,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOutput {
    /// Send this frame to the relay.
    Send(Frame),
    /// Persist these encoded sync states under the relay's id.
    SaveStates {
        /// The relay's id.
        relay: String,
        /// `(document, State::encode())`.
        states: Vec<(DocId, Vec<u8>)>,
    },
    /// Tell the application.
    Event(SessionEvent),
    /// Close the connection: the relay broke the protocol or refused us.
    Close {
        /// Why.
        code: ErrorCode,
        /// Human-readable reason.
        reason: String,
    },
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The relay accepted the handshake.
    Welcomed {
        /// Its id.
        relay_id: String,
    },
    /// The relay reported an error.
    RelayError {
        /// The code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
        /// The document, if the error concerns one.
        doc: Option<DocId>,
    },
}

/// Counters of one session, for summaries and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sync messages sent.
    pub messages_sent: u64,
    /// Sync messages received.
    pub messages_received: u64,
    /// Bytes of sync messages sent.
    pub bytes_sent: u64,
    /// Bytes of sync messages received.
    pub bytes_received: u64,
    /// Documents that received changes from the relay.
    pub docs_received: u64,
    /// Distinct documents this session sent changes of.
    pub docs_sent: u64,
}

/// Per-document sync progress.
#[derive(Debug)]
struct Slot {
    /// The document's collection.
    collection: String,
    /// Automerge's sync state with the relay.
    state: State,
    /// The shared heads last persisted, to persist only on change.
    saved: Vec<ChangeHash>,
    /// When our last message went out, while awaiting an answer.
    in_flight_since: Option<u64>,
    /// The heads the relay has, as far as we know.
    relay_heads: Option<Vec<ChangeHash>>,
    /// Whether the relay knows the document is deleted.
    relay_deleted: bool,
    /// Whether we sent changes of it this session.
    sent: bool,
    /// Whether our last message asked the relay for changes.
    asked: bool,
    /// Whether the relay refused this document this session.
    refused: bool,
}

/// What a `wait_synced` waits for: the local state of the subscribed
/// collections when it was asked, document by document. A document is done
/// once the relay is known to hold those heads (or later ones built on
/// them) and its tombstone, so writes made after the snapshot never delay
/// it: an app that writes continuously still learns that its earlier
/// writes are safe.
#[derive(Debug, Clone, Default)]
pub struct SyncTarget {
    /// Documents not yet known to be held, with their heads then.
    pending: HashMap<DocId, DocSummary>,
    /// The session epoch last looked at; until it is the current one,
    /// every pending document is looked at, after that only news.
    epoch: Option<u64>,
}

impl SyncTarget {
    /// The local state of the collections `session` subscribes to, now.
    pub fn snapshot(session: &ClientSession, docs: &dyn SyncDocs) -> crate::Result<Self> {
        let mut pending = HashMap::new();
        for collection in session.collections() {
            pending.extend(docs.summaries(collection)?.into_iter().map(|s| (s.doc, s)));
        }
        Ok(SyncTarget {
            pending,
            epoch: None,
        })
    }
}

/// The session state machine.
#[derive(Debug)]
pub struct ClientSession {
    /// Configuration.
    config: ClientConfig,
    /// The relay's id once welcomed.
    relay_id: Option<String>,
    /// Collections whose announcement finished.
    announced: BTreeSet<String>,
    /// Documents seen in announcements not yet finished.
    announcing: HashMap<String, HashSet<DocId>>,
    /// Documents whose relay heads or tombstone were learnt since the last
    /// [`ClientSession::reached`], so a pending check looks at those only.
    relay_news: HashSet<DocId>,
    /// Counts resets: a check made in an earlier connection looks at all
    /// of its documents again.
    epoch: u64,
    /// Per collection, `Subscribe` frames sent on this connection.
    subscribes_sent: HashMap<String, u64>,
    /// Per collection, complete announcements received on it.
    announces_done: HashMap<String, u64>,
    /// The connection (epoch) and counts of announcements an agreement
    /// check waits for.
    fresh_after: Option<(u64, HashMap<String, u64>)>,
    /// Documents touched this session.
    slots: HashMap<DocId, Slot>,
    /// Documents waiting to start an exchange.
    queue: VecDeque<DocId>,
    /// Members of `queue`, to avoid duplicates.
    queued: HashSet<DocId>,
    /// How many slots have `in_flight_since` set.
    in_flight: usize,
    /// Whether `Hello` went out on the current connection (later frames
    /// may follow it at once).
    open: bool,
    /// Documents whose sync state may have moved since it was persisted
    /// (visiting only these keeps a sync of D documents linear in D).
    touched: HashSet<DocId>,
    /// Counters.
    stats: SessionStats,
    /// Outputs of the current call.
    out: Vec<ClientOutput>,
}

impl ClientSession {
    /// A session that has not connected yet.
    pub fn new(config: ClientConfig) -> Self {
        ClientSession {
            config,
            relay_id: None,
            announced: BTreeSet::new(),
            announcing: HashMap::new(),
            slots: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: 0,
            relay_news: HashSet::new(),
            epoch: 0,
            subscribes_sent: HashMap::new(),
            announces_done: HashMap::new(),
            fresh_after: None,
            touched: HashSet::new(),
            open: false,
            stats: SessionStats::default(),
            out: Vec::new(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// A one-line account of what the session is waiting for, for logs.
    pub fn describe(&self) -> String {
        format!(
            "relay={:?} announced={:?} queued={} in_flight={} docs={}",
            self.relay_id,
            self.announced,
            self.queue.len(),
            self.in_flight,
            self.slots.len()
        )
    }

    /// Documents of `local` the relay is not known to hold.
    pub fn missing_at_relay(&self, local: &[DocSummary]) -> Vec<DocId> {
        local
            .iter()
            .filter(|s| !self.relay_has(s))
            .map(|s| s.doc)
            .collect()
    }

    /// The relay's id, once welcomed.
    pub fn relay_id(&self) -> Option<&str> {
        self.relay_id.as_deref()
    }

    /// The collections this session subscribes to.
    pub fn collections(&self) -> &BTreeSet<String> {
        &self.config.collections
    }

    /// A connection opened: say hello.
    pub fn connected(&mut self) -> Vec<ClientOutput> {
        self.reset();
        self.out.push(ClientOutput::Send(Frame::Hello {
            version: PROTOCOL_VERSION,
            peer_id: self.config.peer_id.clone(),
            token: self.config.token.clone(),
        }));
        // Pipelined behind Hello: the relay handles frames in order, so the
        // announcements start one round trip earlier than after Welcome.
        let collections: Vec<String> = self.config.collections.iter().cloned().collect();
        self.send_subscribe(collections);
        self.open = true;
        std::mem::take(&mut self.out)
    }

    /// Sends `Subscribe`, counting it: the relay answers each with one
    /// complete announcement per collection, in order.
    fn send_subscribe(&mut self, collections: Vec<String>) {
        if collections.is_empty() {
            return;
        }
        for c in &collections {
            *self.subscribes_sent.entry(c.clone()).or_default() += 1;
        }
        self.out
            .push(ClientOutput::Send(Frame::Subscribe { collections }));
    }

    /// Asks the relay to announce the subscribed collections again: an
    /// agreement check that waits for these answers compares with what the
    /// relay holds now, not with what it said earlier. Not connected, the
    /// next connection's own announcements serve.
    pub fn request_fresh_announcements(&mut self) -> Vec<ClientOutput> {
        if self.open {
            let collections: Vec<String> = self.config.collections.iter().cloned().collect();
            self.send_subscribe(collections);
            self.fresh_after = Some((self.epoch, self.subscribes_sent.clone()));
        } else {
            self.fresh_after = None;
        }
        std::mem::take(&mut self.out)
    }

    /// Whether the announcements asked for by the last
    /// [`ClientSession::request_fresh_announcements`] have all arrived.
    pub fn fresh_announced(&self) -> bool {
        match &self.fresh_after {
            // Reconnected since: that connection's announcements are newer.
            Some((epoch, wanted)) if *epoch == self.epoch => wanted
                .iter()
                .all(|(c, n)| self.announces_done.get(c).is_some_and(|done| done >= n)),
            _ => true,
        }
    }

    /// The connection closed: persist what was learnt and forget the rest.
    pub fn disconnected(&mut self) -> Vec<ClientOutput> {
        self.save_states();
        self.reset();
        std::mem::take(&mut self.out)
    }

    fn reset(&mut self) {
        self.relay_id = None;
        self.announced.clear();
        self.announcing.clear();
        self.slots.clear();
        self.queue.clear();
        self.queued.clear();
        self.in_flight = 0;
        self.touched.clear();
        self.relay_news.clear();
        self.subscribes_sent.clear();
        self.announces_done.clear();
        self.epoch += 1;
        self.open = false;
    }

    /// Adds collections; subscribes at once when connected.
    pub fn subscribe(&mut self, collections: &[String]) -> Vec<ClientOutput> {
        let new: Vec<String> = collections
            .iter()
            .filter(|c| self.config.collections.insert((*c).clone()))
            .cloned()
            .collect();
        if self.open {
            self.send_subscribe(new);
        }
        std::mem::take(&mut self.out)
    }

    /// A frame arrived from the relay.
    pub fn handle_frame(
        &mut self,
        now: u64,
        frame: Frame,
        docs: &dyn SyncDocs,
    ) -> Vec<ClientOutput> {
        match frame {
            Frame::Welcome { version, relay_id } => self.on_welcome(version, relay_id),
            Frame::Announce {
                collection,
                docs: list,
                complete,
            } => self.on_announce(&collection, list, complete, docs),
            Frame::Sync {
                doc,
                collection,
                message,
                want_reply,
            } => self.on_sync(now, doc, &collection, &message, want_reply, docs),
            Frame::Delete { doc, collection } => self.on_delete(doc, &collection, docs),
            Frame::Error { code, message, doc } => self.on_error(code, message, doc),
            other => self.close(
                ErrorCode::MALFORMED,
                format!("unexpected {} frame from relay", other.kind()),
            ),
        }
        self.pump(now, docs);
        self.finish()
    }

    /// A local change was committed.
    pub fn local_change(
        &mut self,
        now: u64,
        doc: DocId,
        collection: &str,
        kind: ChangeKind,
        docs: &dyn SyncDocs,
    ) -> Vec<ClientOutput> {
        if self.relay_id.is_none() || !self.announced.contains(collection) {
            return Vec::new(); // the announcement comparison will pick it up
        }
        if kind == ChangeKind::Deleted {
            self.send_delete(doc, collection, docs);
        } else {
            self.enqueue(doc);
        }
        self.pump(now, docs);
        self.finish()
    }

    /// Time passed: restart stalled exchanges, persist states.
    pub fn tick(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<ClientOutput> {
        let mut stalled: Vec<DocId> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.in_flight_since
                    .is_some_and(|t| now.saturating_sub(t) >= RETRY_AFTER_MS)
            })
            .map(|(id, _)| *id)
            .collect();
        stalled.sort(); // deterministic order for simulations
        for id in stalled {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.state = restart_state(&slot.state);
                slot.in_flight_since = None;
                self.in_flight -= 1;
            }
            self.enqueue(id);
        }
        self.pump(now, docs);
        self.finish()
    }

    /// Whether the relay holds every local change and tombstone of the
    /// subscribed collections, as far as this session has learnt.
    pub fn is_synced(&self, docs: &dyn SyncDocs) -> crate::Result<bool> {
        if self.relay_id.is_none() || !self.queue.is_empty() || self.in_flight > 0 {
            return Ok(false);
        }
        for collection in &self.config.collections {
            if !self.announced.contains(collection) {
                return Ok(false);
            }
            for summary in docs.summaries(collection)? {
                if !self.relay_has(&summary) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Whether the relay now holds everything in `target`, dropping the
    /// documents found held from it. Looks only at documents the relay
    /// told us about since the last call (all of them the first time, or
    /// after a reconnect), so a check costs in proportion to the traffic.
    pub fn reached(&mut self, target: &mut SyncTarget, docs: &dyn SyncDocs) -> bool {
        let news = std::mem::take(&mut self.relay_news);
        if target.epoch == Some(self.epoch) {
            for doc in &news {
                if target
                    .pending
                    .get(doc)
                    .is_some_and(|s| self.relay_holds(s, docs))
                {
                    target.pending.remove(doc);
                }
            }
        } else {
            target.epoch = Some(self.epoch);
            target.pending.retain(|_, s| !self.relay_holds(s, docs));
        }
        self.relay_id.is_some()
            && self
                .config
                .collections
                .iter()
                .all(|c| self.announced.contains(c))
            && target.pending.is_empty()
    }

    /// Whether the relay is known to hold `summary`: its tombstone, or heads
    /// equal to or descending from its heads.
    fn relay_holds(&self, summary: &DocSummary, docs: &dyn SyncDocs) -> bool {
        if self.relay_has(summary) {
            return true;
        }
        if summary.deleted {
            return false;
        }
        let Some(theirs) = self
            .slots
            .get(&summary.doc)
            .and_then(|s| s.relay_heads.as_deref())
        else {
            return false;
        };
        let ours = summary.heads().unwrap_or_default();
        // `None`: their heads name changes still on their way to us; the
        // message bringing them is news again.
        !theirs.is_empty() && docs.covers(&summary.doc, &ours, theirs).ok().flatten() == Some(true)
    }

    /// Whether the relay and this replica hold the same heads for every
    /// document either is known to have. With [`ClientSession::is_synced`]
    /// (the relay has all of ours), equal heads mean equal content.
    pub fn agrees(&self, docs: &dyn SyncDocs) -> crate::Result<bool> {
        if !self.is_synced(docs)? {
            return Ok(false);
        }
        for (doc, slot) in &self.slots {
            let Some(theirs) = slot.relay_heads.as_deref() else {
                continue;
            };
            if slot.relay_deleted || theirs.is_empty() {
                continue;
            }
            let mut ours = docs
                .local_state(doc)?
                .map(|(_, heads, _)| heads)
                .unwrap_or_default();
            let mut theirs = theirs.to_vec();
            ours.sort();
            theirs.sort();
            if ours != theirs {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Documents waiting for or in the middle of an exchange.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight
    }

    fn relay_has(&self, local: &DocSummary) -> bool {
        let Some(slot) = self.slots.get(&local.doc) else {
            return false;
        };
        if local.deleted && !slot.relay_deleted {
            return false;
        }
        let ours = local.heads().unwrap_or_default();
        let theirs = slot.relay_heads.as_deref().unwrap_or_default();
        ours.iter().all(|h| theirs.contains(h)) || (local.deleted && slot.relay_deleted)
    }

    fn on_welcome(&mut self, version: u32, relay_id: String) {
        if version != PROTOCOL_VERSION {
            return self.close(
                ErrorCode::VERSION,
                format!("relay speaks protocol {version}, we speak {PROTOCOL_VERSION}"),
            );
        }
        self.relay_id = Some(relay_id.clone());
        self.out
            .push(ClientOutput::Event(SessionEvent::Welcomed { relay_id }));
    }

    fn on_announce(
        &mut self,
        collection: &str,
        list: Vec<DocSummary>,
        complete: bool,
        docs: &dyn SyncDocs,
    ) {
        if !self.config.collections.contains(collection) {
            return;
        }
        for summary in list {
            self.announcing
                .entry(collection.to_owned())
                .or_default()
                .insert(summary.doc);
            if let Err(e) = self.compare(collection, &summary, docs) {
                tracing::warn!(doc = %summary.doc, error = %e, "cannot compare announced document");
            }
        }
        if complete {
            *self
                .announces_done
                .entry(collection.to_owned())
                .or_default() += 1;
            let seen = self.announcing.remove(collection).unwrap_or_default();
            self.announced.insert(collection.to_owned());
            if let Err(e) = self.offer_unannounced(collection, &seen, docs) {
                tracing::warn!(collection, error = %e, "cannot list local documents");
            }
        }
    }

    /// Decides what to do about one document the relay announced.
    fn compare(
        &mut self,
        collection: &str,
        relay: &DocSummary,
        docs: &dyn SyncDocs,
    ) -> crate::Result<()> {
        let local = docs.local_state(&relay.doc)?;
        let slot = self.slot(relay.doc, collection, docs)?;
        slot.relay_heads = relay.heads();
        slot.relay_deleted = relay.deleted;
        let relay_heads = slot.relay_heads.clone().unwrap_or_default();
        self.relay_news.insert(relay.doc);
        match local {
            Some((local_collection, _, _)) if local_collection != collection => Ok(()),
            Some((_, _, local_deleted)) if relay.deleted => {
                if !local_deleted {
                    docs.delete(
                        &relay.doc,
                        collection,
                        self.relay_id.as_deref().unwrap_or_default(),
                    )?;
                }
                Ok(())
            }
            None if relay.deleted => {
                docs.delete(
                    &relay.doc,
                    collection,
                    self.relay_id.as_deref().unwrap_or_default(),
                )?;
                Ok(())
            }
            Some((_, mut heads, local_deleted)) => {
                heads.sort();
                if local_deleted {
                    self.send_delete(relay.doc, collection, docs);
                }
                if heads != relay_heads {
                    self.enqueue(relay.doc);
                }
                Ok(())
            }
            None => {
                self.enqueue(relay.doc);
                Ok(())
            }
        }
    }

    /// Offers the relay the local documents it did not announce.
    fn offer_unannounced(
        &mut self,
        collection: &str,
        seen: &HashSet<DocId>,
        docs: &dyn SyncDocs,
    ) -> crate::Result<()> {
        for local in docs.summaries(collection)? {
            if seen.contains(&local.doc) {
                continue;
            }
            self.slot(local.doc, collection, docs)?.relay_heads = Some(Vec::new());
            self.relay_news.insert(local.doc);
            if local.deleted {
                self.send_delete(local.doc, collection, docs);
            } else {
                self.enqueue(local.doc);
            }
        }
        Ok(())
    }

    fn on_sync(
        &mut self,
        now: u64,
        doc: DocId,
        collection: &str,
        bytes: &[u8],
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) {
        if !self.config.collections.contains(collection) {
            tracing::debug!(%doc, collection, "ignoring sync for an unsubscribed collection");
            return;
        }
        let message = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                return self.close(
                    ErrorCode::BAD_DOCUMENT,
                    format!("relay sent an invalid sync message for {doc}: {e}"),
                )
            }
        };
        self.stats.messages_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        if let Err(e) = self.receive(now, doc, collection, message, want_reply, docs) {
            tracing::warn!(%doc, error = %e, "could not apply sync message from relay");
        }
    }

    fn receive(
        &mut self,
        now: u64,
        doc: DocId,
        collection: &str,
        message: Message,
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) -> crate::Result<()> {
        let relay = self.relay_id.clone().unwrap_or_default();
        let slot = self.slot(doc, collection, docs)?;
        let was_in_flight = slot.in_flight_since.take().is_some();
        note_answer(&mut slot.state, &mut slot.asked, &message);
        let result = docs.receive(&doc, collection, &mut slot.state, message, &relay);
        slot.relay_heads = slot.state.their_heads.clone().or(slot.relay_heads.take());
        self.touched.insert(doc);
        self.relay_news.insert(doc);
        if was_in_flight {
            self.in_flight -= 1;
        }
        if result? {
            self.stats.docs_received += 1;
        }
        if !self.send_next(now, doc, docs)? && want_reply {
            let message = heads_only(docs.heads(&doc)?).encode();
            self.count_sent(message.len());
            let collection = collection.to_owned();
            self.out.push(ClientOutput::Send(Frame::Sync {
                doc,
                collection,
                message,
                want_reply: false,
            }));
        }
        Ok(())
    }

    fn count_sent(&mut self, bytes: usize) {
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes as u64;
    }

    fn on_delete(&mut self, doc: DocId, collection: &str, docs: &dyn SyncDocs) {
        if !self.config.collections.contains(collection) {
            return;
        }
        let relay = self.relay_id.clone().unwrap_or_default();
        if let Err(e) = docs.delete(&doc, collection, &relay) {
            tracing::warn!(%doc, error = %e, "could not apply deletion from relay");
        }
        match self.slot(doc, collection, docs) {
            Ok(slot) => slot.relay_deleted = true,
            Err(e) => tracing::warn!(%doc, error = %e, "could not load sync state"),
        }
        self.relay_news.insert(doc);
    }

    fn on_error(&mut self, code: ErrorCode, message: String, doc: Option<DocId>) {
        self.out.push(ClientOutput::Event(SessionEvent::RelayError {
            code,
            message: message.clone(),
            doc,
        }));
        if code.is_fatal() {
            return self.close(code, message);
        }
        // A refused document is settled for this session: retrying would
        // be refused again (read-only access, a foreign id, bad data).
        if let Some(slot) = doc.and_then(|d| self.slots.get_mut(&d)) {
            slot.refused = true;
            if slot.in_flight_since.take().is_some() {
                self.in_flight -= 1;
            }
        }
    }

    fn close(&mut self, code: ErrorCode, reason: String) {
        self.out.push(ClientOutput::Close { code, reason });
    }

    /// Sends a tombstone and remembers that the relay has it, creating the
    /// document's slot if no exchange started yet (a record created and
    /// deleted before it was ever sent).
    fn send_delete(&mut self, doc: DocId, collection: &str, docs: &dyn SyncDocs) {
        self.out.push(ClientOutput::Send(Frame::Delete {
            doc,
            collection: collection.to_owned(),
        }));
        match self.slot(doc, collection, docs) {
            Ok(slot) => slot.relay_deleted = true,
            Err(e) => tracing::warn!(%doc, error = %e, "could not load sync state"),
        }
        self.relay_news.insert(doc);
    }

    fn enqueue(&mut self, doc: DocId) {
        let busy = self
            .slots
            .get(&doc)
            .is_some_and(|s| s.in_flight_since.is_some() || s.refused);
        if !busy && self.queued.insert(doc) {
            self.queue.push_back(doc);
        }
    }

    /// Starts queued exchanges while there is room.
    fn pump(&mut self, now: u64, docs: &dyn SyncDocs) {
        while self.in_flight < self.config.max_in_flight.max(1) {
            let Some(doc) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&doc);
            if let Err(e) = self.send_next(now, doc, docs) {
                tracing::warn!(%doc, error = %e, "could not generate sync message");
            }
        }
    }

    /// Generates and sends the next message for `doc`, if there is one;
    /// returns whether a message went out.
    fn send_next(&mut self, now: u64, doc: DocId, docs: &dyn SyncDocs) -> crate::Result<bool> {
        let collection = match self.slots.get(&doc) {
            Some(s) => s.collection.clone(),
            None => match docs.local_state(&doc)? {
                Some((c, _, _)) => c,
                None => return Ok(false),
            },
        };
        let slot = self.slot(doc, &collection, docs)?;
        if slot.in_flight_since.is_some() {
            return Ok(false);
        }
        let Some(message) = docs.generate(&doc, &mut slot.state)? else {
            return Ok(false);
        };
        let first = !message.changes.is_empty() && !std::mem::replace(&mut slot.sent, true);
        let want_reply = awaits_answer(&slot.state, &message);
        slot.asked = !message.need.is_empty();
        if want_reply {
            slot.in_flight_since = Some(now);
            self.in_flight += 1;
        }
        let bytes = message.encode();
        self.count_sent(bytes.len());
        self.stats.docs_sent += u64::from(first);
        self.out.push(ClientOutput::Send(Frame::Sync {
            doc,
            collection,
            message: bytes,
            want_reply,
        }));
        Ok(true)
    }

    /// The slot of `doc`, loading its persisted sync state on first use.
    fn slot(
        &mut self,
        doc: DocId,
        collection: &str,
        docs: &dyn SyncDocs,
    ) -> crate::Result<&mut Slot> {
        let relay = self.relay_id.as_deref().unwrap_or_default();
        match self.slots.entry(doc) {
            Entry::Occupied(slot) => Ok(slot.into_mut()),
            Entry::Vacant(vacant) => {
                let state = docs.load_sync_state(relay, &doc)?.unwrap_or_default();
                Ok(vacant.insert(Slot {
                    collection: collection.to_owned(),
                    saved: state.shared_heads.clone(),
                    state,
                    in_flight_since: None,
                    relay_heads: None,
                    relay_deleted: false,
                    sent: false,
                    asked: false,
                    refused: false,
                }))
            }
        }
    }

    fn finish(&mut self) -> Vec<ClientOutput> {
        self.save_states();
        std::mem::take(&mut self.out)
    }

    /// Emits the sync states whose shared heads moved since last saved.
    fn save_states(&mut self) {
        let Some(relay) = self.relay_id.clone() else {
            return;
        };
        let mut states = Vec::new();
        for doc in self.touched.drain() {
            let Some(slot) = self.slots.get_mut(&doc) else {
                continue;
            };
            if slot.state.shared_heads != slot.saved {
                slot.saved = slot.state.shared_heads.clone();
                states.push((doc, slot.state.encode()));
            }
        }
        if !states.is_empty() {
            self.out.push(ClientOutput::SaveStates { relay, states });
        }
    }
}
