//! A replica's side of one connection to a relay, without I/O.
//!
//! The driver feeds it [`ClientSession::connected`], every received frame,
//! every local change and a periodic tick, and carries out what it returns.
//! On connect it says hello, subscribes, and compares the relay's announced
//! heads with its own: only documents whose heads differ are synced, at most
//! `max_in_flight` at a time. Local changes are pushed as they happen; if
//! the driver missed some ([`ClientSession::local_changes_missed`]), every
//! local document is compared again. Deletions count as held by the relay
//! only once it acknowledged them (`DeleteAck`).
//!
//! Failures reach the driver as events, never only a log line: a relay's
//! refusal ([`SessionEvent::RelayError`]) and a failure of this replica's
//! own storage ([`SessionEvent::LocalFailure`]). A document the relay could
//! not store (`storage_unavailable`) is offered again after
//! [`super::STORAGE_RETRY_MS`]; one it refused for good (no right, bad
//! data, wrong collection) waits for the next connection.
//!
//! Tokens: the one in [`ClientConfig::token`] goes in every `Hello`;
//! [`ClientSession::reauth`] replaces it and, on an open connection, sends
//! it at once (`Reauth`). The relay's answers (`Welcome`, `Reauthorized`)
//! say when the accepted token expires ([`SessionEvent::Authorized`]);
//! after `token_expired`, [`ClientSession::retries_after`] tells the
//! driver whether a newer token is at hand or retrying is pointless.
//!
//! [`check`] holds what `wait_synced` and `wait_agreed` wait for.

mod check;
mod cursor;
mod early;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use automerge::sync::Message;

pub use check::{CheckOutcome, SyncCheck};
pub use cursor::CURSOR_RETRY_MS;
pub use early::{EARLY_BYTES, EARLY_DOCS};

use super::exchange::{heads_only, Exchange};
use super::protocol::{DocSummary, ErrorCode, Frame, WholeDoc, PROTOCOL_VERSION};
use super::session::MAX_SUBSCRIBE_NAMES;
use super::{error_code, EncodedState, LocalState, SyncDocs, STORAGE_RETRY_MS};
use crate::error::{Error, Result};
use crate::id::{Collection, DocId, Heads, PeerId};

/// What a client session is configured with.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This replica's peer id.
    pub peer_id: PeerId,
    /// The credential presented in `Hello`.
    pub token: String,
    /// Collections to subscribe to.
    pub collections: BTreeSet<Collection>,
    /// How many documents may be mid-exchange at once.
    pub max_in_flight: usize,
    /// The largest frame the relay accepts: a sync message that would not
    /// fit (one change larger than this) is not sent; the document is
    /// reported as `too_large` instead of being refused again and again.
    pub max_frame_bytes: usize,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOutput {
    /// Send this frame to the relay.
    Send(Frame),
    /// Persist these sync states under the relay's id.
    SaveStates {
        /// The relay's id.
        relay: PeerId,
        /// The states.
        states: Vec<EncodedState>,
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
    /// The relay accepted a token (in `Hello`, or in `Reauth`); comes
    /// before [`SessionEvent::Welcomed`] on a new connection.
    Authorized {
        /// When the token's grant ends (ms since the Unix epoch), if ever;
        /// the relay closes the connection with `token_expired` then.
        expires_at_ms: Option<u64>,
    },
    /// The relay accepted the handshake.
    Welcomed {
        /// Its id.
        relay_id: PeerId,
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
    /// The relay accepted a subscription; on a read-only one this replica
    /// pulls and keeps its own changes local.
    Subscribed {
        /// The collection.
        collection: Collection,
        /// Whether this connection may change its records.
        write: bool,
    },
    /// The relay refused a subscription; the other collections sync.
    CollectionSkipped {
        /// The collection, as configured.
        collection: String,
        /// Why (`forbidden`, `bad_name`, `too_large`).
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// This replica could not read or apply something: its own storage
    /// failed, or the relay sent data it could not apply. The document
    /// is tried again later (storage) or on the next connection (data).
    LocalFailure {
        /// What kind of failure, as a peer would be told.
        code: ErrorCode,
        /// The error.
        message: String,
        /// The document, if the failure concerns one.
        doc: Option<DocId>,
    },
    /// Another peer sent a presence payload for a document of a subscribed
    /// collection (never stored).
    Ephemeral {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: Collection,
        /// The sender's peer id (an Accord replica's, or an automerge-repo
        /// client's `senderId`).
        sender: String,
        /// The payload.
        data: Vec<u8>,
    },
}

/// A committed local change, as the session needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChange {
    /// The content changed (or the record was created).
    Content,
    /// The record was deleted.
    Tombstone,
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
    /// Bytes of sync messages and of documents sent whole received.
    pub bytes_received: u64,
    /// Documents that received changes from the relay.
    pub docs_received: u64,
    /// Distinct documents this session sent changes of.
    pub docs_sent: u64,
    /// Times the driver's change feed overflowed and every local document
    /// was compared with the relay instead.
    pub local_resyncs: u64,
    /// Tombstones the relay acknowledged from this replica.
    pub deletions_sent: u64,
    /// Tombstones from the relay recorded here.
    pub deletions_received: u64,
    /// Records the relay announced that this replica did not have yet.
    pub records_discovered: u64,
    /// Documents the relay sent whole (in their saved form, in a listing
    /// asked for by a replica that held none of the collection).
    pub docs_whole: u64,
}

/// Whether a document may be offered to the relay now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Yes.
    Free,
    /// The relay refused it for this connection (no right, bad data,
    /// another collection): offering it again would be refused again.
    Refused,
    /// The relay could not store it; offer it again at this time.
    RetryAt(u64),
}

/// Per-document sync progress with the relay.
#[derive(Debug)]
struct DocSync {
    /// The document's collection.
    collection: Collection,
    /// The exchange of sync messages.
    exchange: Exchange,
    /// The heads the relay has, as far as we know.
    relay_heads: Option<Heads>,
    /// Whether the relay holds the tombstone (it said so, or acknowledged ours).
    relay_deleted: bool,
    /// Whether our `Delete` awaits its acknowledgement.
    delete_sent: bool,
    /// Whether we sent changes of it this session.
    sent: bool,
    /// Whether it may be offered now.
    hold: Hold,
}

/// The session state machine.
#[derive(Debug)]
pub struct ClientSession {
    /// Configuration.
    config: ClientConfig,
    /// The relay's id once welcomed.
    relay_id: Option<PeerId>,
    /// Collections whose announcement finished.
    announced: BTreeSet<Collection>,
    /// Collections this connection may only read: their local changes
    /// stay local.
    read_only: BTreeSet<Collection>,
    /// Collections this connection asked to receive whole.
    asked_whole: BTreeSet<Collection>,
    /// Collections the relay refused on this connection, with why.
    skipped: BTreeMap<Collection, String>,
    /// Documents seen in announcements not yet finished.
    announcing: HashMap<Collection, HashSet<DocId>>,
    /// Documents whose relay heads or tombstone were learnt since the last
    /// check looked, so a pending check looks at those only.
    relay_news: HashSet<DocId>,
    /// Counts connections: a check made in an earlier one looks at all of
    /// its documents again.
    epoch: u64,
    /// Counts the moves of a baseline (see `cursor`): a check made before
    /// one looks at all of its documents again, as some may be held by
    /// the cursor now.
    baseline_moves: u64,
    /// Per collection, `Subscribe` frames sent on this connection.
    subscribes_sent: HashMap<Collection, u64>,
    /// Per collection, complete announcements received on it.
    announces_done: HashMap<Collection, u64>,
    /// Documents touched on this connection.
    docs: HashMap<DocId, DocSync>,
    /// Documents waiting to start an exchange.
    queue: VecDeque<DocId>,
    /// Members of `queue`, to avoid duplicates.
    queued: HashSet<DocId>,
    /// How many exchanges await an answer.
    in_flight: usize,
    /// Whether `Hello` went out on the current connection (later frames
    /// may follow it at once).
    open: bool,
    /// Tokens sent on this connection (in `Hello`, then in `Reauth`) that
    /// the relay has not answered yet, oldest first: it answers in order.
    unanswered_tokens: VecDeque<String>,
    /// The token the relay accepted last on this connection: the one whose
    /// expiry a `token_expired` reports.
    token_in_force: Option<String>,
    /// Documents whose sync state may have moved since it was persisted
    /// (visiting only these keeps a sync of D documents linear in D).
    touched: HashSet<DocId>,
    /// Counters.
    stats: SessionStats,
    /// This session's id in the ephemeral frames it sends (random), and
    /// how many it sent: receivers tell repeats apart by the pair.
    presence: (String, u64),
    /// Per collection, this connection's progress through the relay's
    /// sequence, and the cursor to save (see `cursor`).
    progress: HashMap<Collection, cursor::Progress>,
    /// Documents whose exchange started before `Welcome` (see `early`),
    /// with the relay whose stored state it resumed.
    early: Vec<(DocId, PeerId)>,
    /// Whether a due cursor waited for the commit of the last call's
    /// writes (see `cursor`).
    cursors_deferred: bool,
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
            read_only: BTreeSet::new(),
            asked_whole: BTreeSet::new(),
            skipped: BTreeMap::new(),
            announcing: HashMap::new(),
            relay_news: HashSet::new(),
            epoch: 0,
            baseline_moves: 0,
            subscribes_sent: HashMap::new(),
            announces_done: HashMap::new(),
            docs: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: 0,
            open: false,
            unanswered_tokens: VecDeque::new(),
            token_in_force: None,
            touched: HashSet::new(),
            stats: SessionStats::default(),
            presence: (DocId::random().to_string(), 0),
            progress: HashMap::new(),
            cursors_deferred: false,
            early: Vec::new(),
            out: Vec::new(),
        }
    }

    /// A presence payload for `doc`, for everyone else who has it open:
    /// the frame to send, or `None` when it cannot go now (not connected,
    /// or the document's collection is not synced on this connection);
    /// presence is not queued, a later one replaces it.
    pub fn ephemeral(
        &mut self,
        doc: DocId,
        data: Vec<u8>,
        docs: &dyn SyncDocs,
    ) -> crate::Result<Option<Frame>> {
        let Some(local) = docs.local_state(&doc)? else {
            return Err(crate::Error::NotFound(doc));
        };
        let collection = local.collection;
        let synced = self.relay_id.is_some()
            && self.config.collections.contains(&collection)
            && !self.skipped.contains_key(&collection);
        if !synced {
            return Ok(None);
        }
        self.presence.1 += 1;
        Ok(Some(Frame::Ephemeral {
            doc,
            collection: collection.to_string(),
            sender: String::new(),
            session: self.presence.0.clone(),
            count: self.presence.1,
            data,
        }))
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
            self.docs.len()
        )
    }

    /// The relay's id, once welcomed.
    pub fn relay_id(&self) -> Option<&PeerId> {
        self.relay_id.as_ref()
    }

    /// The collections this session subscribes to.
    pub fn collections(&self) -> &BTreeSet<Collection> {
        &self.config.collections
    }

    /// Documents waiting for or in the middle of an exchange.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight
    }

    /// A connection opened: say hello, and subscribe at once (the relay
    /// handles frames in order, so the announcements start one round trip
    /// earlier than after `Welcome`).
    ///
    /// Each subscription carries the collection's stored cursor
    /// (`SubscribeWith`), so the relay lists only what changed since; the
    /// documents written since a cursor start their exchanges at once
    /// (see `early`).
    pub fn connected(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<ClientOutput> {
        self.reset();
        self.load_cursors(docs);
        self.unanswered_tokens.push_back(self.config.token.clone());
        self.out.push(ClientOutput::Send(Frame::Hello {
            version: PROTOCOL_VERSION,
            peer_id: self.config.peer_id.to_string(),
            token: self.config.token.clone(),
        }));
        let collections: Vec<Collection> = self.config.collections.iter().cloned().collect();
        self.send_subscribe(collections, docs);
        self.open = true;
        self.start_early(now, docs);
        std::mem::take(&mut self.out)
    }

    /// Sends `Subscribe`, counting it: the relay answers each with one
    /// complete announcement per collection, in order.
    fn send_subscribe(&mut self, collections: Vec<Collection>, docs: &dyn SyncDocs) {
        if collections.is_empty() {
            return;
        }
        for c in &collections {
            *self.subscribes_sent.entry(c.clone()).or_default() += 1;
        }
        // A relay accepts a bounded number of names per frame.
        for names in collections.chunks(MAX_SUBSCRIBE_NAMES) {
            let collections = names
                .iter()
                .map(|c| {
                    // Once per connection: a later subscription (an
                    // agreement check) may pass the documents on their
                    // way, and would have them all sent again.
                    let whole = !self.asked_whole.contains(c) && self.holds_none(c, docs);
                    if whole {
                        self.asked_whole.insert(c.clone());
                    }
                    self.subscribe_request(c, whole)
                })
                .collect();
            self.out
                .push(ClientOutput::Send(Frame::SubscribeWith { collections }));
        }
    }

    /// Whether this replica holds no document of `collection` (not even a
    /// tombstone), so the relay may send its documents whole. A failed
    /// read says no: the documents are then synced one exchange each.
    fn holds_none(&self, collection: &Collection, docs: &dyn SyncDocs) -> bool {
        docs.summaries_page(collection, None, 1)
            .is_ok_and(|page| page.is_empty())
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
        self.read_only.clear();
        self.asked_whole.clear();
        self.skipped.clear();
        self.announcing.clear();
        self.docs.clear();
        self.queue.clear();
        self.queued.clear();
        self.in_flight = 0;
        self.touched.clear();
        self.relay_news.clear();
        self.subscribes_sent.clear();
        self.announces_done.clear();
        self.epoch += 1;
        self.open = false;
        self.unanswered_tokens.clear();
        self.token_in_force = None;
        self.progress.clear();
        self.early.clear();
    }

    /// A fresh token from the app: used by every later `Hello`, and sent at
    /// once in `Reauth` if a connection is open (right behind `Hello` if
    /// the relay has not answered that yet: it handles frames in order).
    pub fn reauth(&mut self, token: String) -> Vec<ClientOutput> {
        self.config.token = token.clone();
        if self.open {
            self.unanswered_tokens.push_back(token.clone());
            self.out.push(ClientOutput::Send(Frame::Reauth { token }));
        }
        std::mem::take(&mut self.out)
    }

    /// Whether reconnecting may help after the relay closed with `code`.
    /// After `token_expired` it does only if the app gave a token newer
    /// than the one that expired (the relay may have closed before it read
    /// our `Reauth`); otherwise codes that are final never retry.
    pub fn retries_after(&self, code: ErrorCode) -> bool {
        if code == ErrorCode::TOKEN_EXPIRED {
            return self.token_in_force.as_deref() != Some(self.config.token.as_str());
        }
        !code.is_final()
    }

    /// The relay answered the oldest token sent on this connection.
    fn on_authorized(&mut self, expires_at_ms: Option<u64>) {
        self.token_in_force = self.unanswered_tokens.pop_front();
        self.out.push(ClientOutput::Event(SessionEvent::Authorized {
            expires_at_ms,
        }));
    }

    /// Adds collections; subscribes at once when connected.
    pub fn subscribe(
        &mut self,
        collections: &[Collection],
        docs: &dyn SyncDocs,
    ) -> Vec<ClientOutput> {
        let new: Vec<Collection> = collections
            .iter()
            .filter(|c| self.config.collections.insert((*c).clone()))
            .cloned()
            .collect();
        if self.open {
            self.send_subscribe(new, docs);
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
            Frame::Welcome {
                version,
                relay_id,
                expires_at_ms,
            } => self.on_welcome(version, relay_id, expires_at_ms),
            Frame::Reauthorized { expires_at_ms } => self.on_authorized(expires_at_ms),
            Frame::Listing {
                collection,
                since,
                seq,
            } => self.on_listing(&collection, since, seq),
            Frame::Announce {
                collection,
                docs: list,
                complete,
            } => self.on_announce(&collection, list, complete, docs),
            Frame::Documents {
                collection,
                docs: list,
            } => self.on_documents(now, &collection, list, docs),
            Frame::Sync {
                doc,
                collection,
                message,
                want_reply,
            } => self.on_sync(now, doc, &collection, &message, want_reply, docs),
            Frame::Delete { doc, collection } => self.on_delete(doc, &collection, docs),
            Frame::DeleteAck { doc } => self.on_delete_ack(doc),
            Frame::Subscribed { collection, write } => self.on_subscribed(&collection, write),
            Frame::SubscribeRefused {
                collection,
                code,
                message,
            } => self.on_subscribe_refused(collection, code, message),
            Frame::Error { code, message, doc } => self.on_error(now, code, message, doc),
            Frame::Ephemeral {
                doc,
                collection,
                sender,
                session,
                data,
                ..
            } => {
                // Held until the app reads it: bounded as at the relay, so
                // a hostile relay cannot fill the app's presence buffer
                // with large frames.
                let max = super::Limits::default().max_ephemeral_bytes;
                let fits = super::limits::check_ephemeral(max, &session, &data).is_ok()
                    && sender.len() <= crate::id::MAX_PEER_ID_LEN.max(super::repo_wire::MAX_TEXT);
                if let (true, Ok(collection)) = (fits, Collection::new(collection)) {
                    self.out.push(ClientOutput::Event(SessionEvent::Ephemeral {
                        doc,
                        collection,
                        sender,
                        data,
                    }));
                }
            }
            other => self.close(
                ErrorCode::MALFORMED,
                format!("unexpected {} frame from relay", other.kind()),
            ),
        }
        self.pump(now, docs);
        self.finish(now, docs)
    }

    /// A local change was committed.
    pub fn local_change(
        &mut self,
        now: u64,
        doc: DocId,
        collection: &Collection,
        change: LocalChange,
        docs: &dyn SyncDocs,
    ) -> Vec<ClientOutput> {
        if self.relay_id.is_none() || !self.announced.contains(collection) {
            return Vec::new(); // the announcement comparison will pick it up
        }
        match change {
            LocalChange::Tombstone => self.send_delete(doc, collection, docs),
            LocalChange::Content => self.enqueue(doc),
        }
        self.pump(now, docs);
        self.finish(now, docs)
    }

    /// The driver could not tell which local changes were committed (its
    /// change feed overflowed): compare every local document of the
    /// announced collections with what the relay is known to hold, and
    /// offer the ones that differ.
    pub fn local_changes_missed(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<ClientOutput> {
        if self.relay_id.is_some() {
            self.stats.local_resyncs += 1;
            let announced: Vec<Collection> = self.announced.iter().cloned().collect();
            for collection in announced {
                // At or below the baseline, the relay holds them all.
                let from = self.baseline(&collection);
                match self.local_since(&collection, from, docs) {
                    Ok(list) => {
                        let list = list.into_iter().map(|n| n.summary).collect();
                        self.offer_changed(&collection, list, docs);
                    }
                    Err(e) => self.local_failure(None, &e),
                }
            }
            self.pump(now, docs);
        }
        self.finish(now, docs)
    }

    /// Offers the documents of `local` the relay is not known to hold.
    fn offer_changed(
        &mut self,
        collection: &Collection,
        local: Vec<DocSummary>,
        docs: &dyn SyncDocs,
    ) {
        for summary in local {
            if self.relay_holds(&summary, docs) {
                continue;
            }
            if summary.deleted {
                self.send_delete(summary.doc, collection, docs);
            } else if self.doc_sync(summary.doc, collection, docs).is_some() {
                self.enqueue(summary.doc);
            }
        }
    }

    /// Time passed: restart stalled exchanges, offer documents whose retry
    /// time came, persist states.
    pub fn tick(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<ClientOutput> {
        let mut stalled = Vec::new();
        let mut due = Vec::new();
        for (id, d) in &self.docs {
            if d.exchange.stalled(now) {
                stalled.push(*id);
            }
            if matches!(d.hold, Hold::RetryAt(t) if t <= now) {
                due.push(*id);
            }
        }
        stalled.sort(); // deterministic order for simulations
        due.sort();
        for id in stalled {
            if let Some(d) = self.docs.get_mut(&id) {
                if d.exchange.restart() {
                    self.in_flight -= 1;
                }
            }
            self.enqueue(id);
        }
        for id in due {
            self.retry(id, docs);
        }
        self.pump(now, docs);
        self.finish(now, docs)
    }

    /// Offers a document again after the relay could not store it.
    fn retry(&mut self, id: DocId, docs: &dyn SyncDocs) {
        let Some(d) = self.docs.get_mut(&id) else {
            return;
        };
        d.hold = Hold::Free;
        let collection = d.collection.clone();
        match docs.local_state(&id) {
            Ok(Some(local)) if local.deleted => self.send_delete(id, &collection, docs),
            Ok(_) => self.enqueue(id),
            Err(e) => self.local_failure(Some(id), &e),
        }
    }

    fn on_welcome(&mut self, version: u32, relay_id: String, expires_at_ms: Option<u64>) {
        if version != PROTOCOL_VERSION {
            return self.close(
                ErrorCode::VERSION,
                format!("relay speaks protocol {version}, we speak {PROTOCOL_VERSION}"),
            );
        }
        match PeerId::new(relay_id) {
            Ok(relay_id) => {
                self.welcomed_by(&relay_id);
                self.relay_id = Some(relay_id.clone());
                self.on_authorized(expires_at_ms);
                self.out
                    .push(ClientOutput::Event(SessionEvent::Welcomed { relay_id }));
            }
            Err(e) => self.close(ErrorCode::MALFORMED, format!("relay id: {e}")),
        }
    }

    /// The subscribed collection a frame names, if it names one.
    fn subscribed(&self, name: &str) -> Option<Collection> {
        self.config.collections.get(name).cloned()
    }

    fn on_announce(
        &mut self,
        name: &str,
        list: Vec<DocSummary>,
        complete: bool,
        docs: &dyn SyncDocs,
    ) {
        let Some(collection) = self.subscribed(name) else {
            return;
        };
        for summary in list {
            // Only ids held here are remembered (to find the local ones
            // the listing did not name): a listing of any length costs
            // this replica no more than its own documents.
            match self.compare(&collection, &summary, docs) {
                Ok(true) => {
                    self.announcing
                        .entry(collection.clone())
                        .or_default()
                        .insert(summary.doc);
                }
                Ok(false) => {}
                Err(e) => self.local_failure(Some(summary.doc), &e),
            }
        }
        if complete {
            *self.announces_done.entry(collection.clone()).or_default() += 1;
            let seen = self.announcing.remove(&collection).unwrap_or_default();
            self.announced.insert(collection.clone());
            // After a listing since the cursor, only the local documents
            // written since its local number can be news to the relay.
            let from = self.listing_completed(&collection);
            match self.local_since(&collection, from, docs) {
                Ok(local) => {
                    let mut unannounced = Vec::new();
                    for summary in local.into_iter().map(|n| n.summary) {
                        if seen.contains(&summary.doc) {
                            self.offer_if_changed(&collection, &summary, docs);
                        } else {
                            unannounced.push(summary);
                        }
                    }
                    self.offer_unannounced(&collection, unannounced, from == 0, docs);
                }
                Err(e) => self.local_failure(None, &e),
            }
        }
    }

    /// Documents of a listing, sent whole: each is merged in (created, as
    /// this replica held none of the collection when it asked), counts as
    /// announced with the heads it came with, and its exchange resumes
    /// from those heads. One that does not apply is reported and synced
    /// by exchange instead (later, if storage failed).
    fn on_documents(&mut self, now: u64, name: &str, list: Vec<WholeDoc>, docs: &dyn SyncDocs) {
        let (Some(collection), Some(relay)) = (self.subscribed(name), self.relay_id.clone()) else {
            return;
        };
        for WholeDoc { doc, data } in list {
            self.stats.bytes_received += data.len() as u64;
            self.announcing
                .entry(collection.clone())
                .or_default()
                .insert(doc);
            self.relay_news.insert(doc);
            let received = docs.receive_whole(&doc, &collection, &data, &relay);
            let Some(d) = self.doc_sync(doc, &collection, docs) else {
                continue;
            };
            match received {
                Ok(received) => {
                    d.relay_heads = Some(received.heads.clone());
                    d.relay_deleted = false;
                    d.exchange.peer_holds(received.heads.as_slice());
                    self.touched.insert(doc);
                    self.stats.docs_whole += 1;
                    self.stats.docs_received += u64::from(received.changed);
                    self.stats.records_discovered += u64::from(received.created);
                    if !received.created {
                        // It was here already: what it holds beyond the
                        // relay's heads is offered.
                        match docs.heads(&doc) {
                            Ok(heads) if heads != received.heads => self.enqueue(doc),
                            Ok(_) => {}
                            Err(e) => self.local_failure(Some(doc), &e),
                        }
                    }
                }
                Err(e) => {
                    self.local_failure(Some(doc), &e);
                    if error_code(&e) == ErrorCode::STORAGE_UNAVAILABLE {
                        self.hold_after_failure(now, doc, &e);
                    } else {
                        self.enqueue(doc);
                    }
                }
            }
        }
    }

    /// Decides what to do about one document the relay announced;
    /// returns whether this replica holds it.
    fn compare(
        &mut self,
        collection: &Collection,
        relay: &DocSummary,
        docs: &dyn SyncDocs,
    ) -> Result<bool> {
        let local = docs.local_state(&relay.doc)?;
        let held = local.is_some();
        self.act_on_announced(collection, relay, local, docs)?;
        Ok(held)
    }

    fn act_on_announced(
        &mut self,
        collection: &Collection,
        relay: &DocSummary,
        local: Option<LocalState>,
        docs: &dyn SyncDocs,
    ) -> Result<()> {
        let Some(d) = self.doc_sync(relay.doc, collection, docs) else {
            return Ok(());
        };
        d.relay_heads = Some(relay.heads.clone());
        d.relay_deleted = relay.deleted;
        self.relay_news.insert(relay.doc);
        match local {
            Some(LocalState { collection: c, .. }) if c != *collection => Ok(()),
            Some(LocalState { deleted, .. }) if relay.deleted => {
                if !deleted && self.apply_remote_delete(relay.doc, collection, docs)? {
                    self.stats.deletions_received += 1;
                }
                Ok(())
            }
            None if relay.deleted => {
                self.apply_remote_delete(relay.doc, collection, docs)?;
                Ok(())
            }
            Some(LocalState { heads, deleted, .. }) => {
                if deleted {
                    self.send_delete(relay.doc, collection, docs);
                }
                if heads != relay.heads {
                    self.enqueue(relay.doc);
                }
                Ok(())
            }
            None => {
                self.stats.records_discovered += 1;
                self.enqueue(relay.doc);
                Ok(())
            }
        }
    }

    /// Records a tombstone from the relay; returns whether it was new.
    fn apply_remote_delete(
        &mut self,
        doc: DocId,
        collection: &Collection,
        docs: &dyn SyncDocs,
    ) -> Result<bool> {
        match &self.relay_id {
            Some(relay) => docs.delete(&doc, collection, relay),
            None => Ok(false),
        }
    }

    /// A listed document as this replica holds it when the listing ends:
    /// a local change made while the listing went out (which
    /// `local_change` leaves to this comparison) is offered if the relay
    /// is not known to hold it, as when the document came whole and was
    /// edited here before the listing's end.
    fn offer_if_changed(
        &mut self,
        collection: &Collection,
        local: &DocSummary,
        docs: &dyn SyncDocs,
    ) {
        let Some(d) = self.docs.get(&local.doc) else {
            return;
        };
        if d.collection != *collection || d.relay_deleted {
            return;
        }
        if local.deleted {
            self.send_delete(local.doc, collection, docs);
        } else if d.relay_heads.as_ref().is_some_and(|h| *h != local.heads) {
            self.enqueue(local.doc);
        }
    }

    /// Offers the relay the local documents it did not announce; `absent`:
    /// the listing was full, so the relay does not have them (after a
    /// listing since a cursor, it may hold an older state).
    fn offer_unannounced(
        &mut self,
        collection: &Collection,
        local: Vec<DocSummary>,
        absent: bool,
        docs: &dyn SyncDocs,
    ) {
        for summary in local {
            let Some(d) = self.doc_sync(summary.doc, collection, docs) else {
                continue;
            };
            if d.relay_heads.is_some() {
                // Known at the relay on this connection already (from an
                // earlier listing, or an exchange): not unannounced. (A
                // repeated `Subscribe` may be answered by an empty
                // complete listing right after the full one.)
                continue;
            }
            if absent {
                d.relay_heads = Some(Heads::empty());
            }
            self.relay_news.insert(summary.doc);
            if summary.deleted {
                self.send_delete(summary.doc, collection, docs);
            } else {
                self.enqueue(summary.doc);
            }
        }
    }

    fn on_sync(
        &mut self,
        now: u64,
        doc: DocId,
        name: &str,
        bytes: &[u8],
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) {
        let Some(collection) = self.subscribed(name) else {
            tracing::debug!(%doc, name, "ignoring sync for an unsubscribed collection");
            return;
        };
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
        if let Err(e) = self.receive(now, doc, &collection, message, want_reply, docs) {
            self.local_failure(Some(doc), &e);
            self.hold_after_failure(now, doc, &e);
        }
    }

    fn receive(
        &mut self,
        now: u64,
        doc: DocId,
        collection: &Collection,
        message: Message,
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) -> Result<()> {
        let Some(relay) = self.relay_id.clone() else {
            return Ok(());
        };
        let Some(d) = self.doc_sync(doc, collection, docs) else {
            return Ok(());
        };
        let was_in_flight = d.exchange.answered(&message);
        let result = d.exchange.receive(docs, &doc, collection, message, &relay);
        if let Some(theirs) = d.exchange.their_heads() {
            d.relay_heads = Some(Heads::from(theirs));
        }
        self.touched.insert(doc);
        self.relay_news.insert(doc);
        if was_in_flight {
            self.in_flight -= 1;
        }
        if result? {
            self.stats.docs_received += 1;
        }
        if !self.send_next(now, doc, docs)? && want_reply {
            let message = heads_only(docs.heads(&doc)?.into_vec()).encode();
            self.count_sent(message.len());
            self.out.push(ClientOutput::Send(Frame::Sync {
                doc,
                collection: collection.to_string(),
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

    fn on_delete(&mut self, doc: DocId, name: &str, docs: &dyn SyncDocs) {
        let Some(collection) = self.subscribed(name) else {
            return;
        };
        match self.apply_remote_delete(doc, &collection, docs) {
            Ok(true) => self.stats.deletions_received += 1,
            Ok(false) => {}
            Err(e) => self.local_failure(Some(doc), &e),
        }
        if let Some(d) = self.doc_sync(doc, &collection, docs) {
            d.relay_deleted = true;
        }
        self.relay_news.insert(doc);
    }

    fn on_delete_ack(&mut self, doc: DocId) {
        if let Some(d) = self.docs.get_mut(&doc) {
            d.relay_deleted = true;
            if std::mem::take(&mut d.delete_sent) {
                self.stats.deletions_sent += 1;
            }
        }
        self.relay_news.insert(doc);
    }

    fn on_subscribed(&mut self, name: &str, write: bool) {
        let Some(collection) = self.subscribed(name) else {
            return;
        };
        if write {
            self.read_only.remove(&collection);
        } else {
            self.read_only.insert(collection.clone());
        }
        self.skipped.remove(&collection);
        self.out.push(ClientOutput::Event(SessionEvent::Subscribed {
            collection,
            write,
        }));
    }

    fn on_subscribe_refused(&mut self, name: String, code: ErrorCode, message: String) {
        if let Some(collection) = self.subscribed(&name) {
            self.skipped.insert(collection, message.clone());
        }
        self.out
            .push(ClientOutput::Event(SessionEvent::CollectionSkipped {
                collection: name,
                code,
                message,
            }));
    }

    /// Whether this connection may only read `collection`.
    pub fn is_read_only(&self, collection: &str) -> bool {
        self.read_only.contains(collection)
    }

    /// The collections the relay refused on this connection, with why.
    pub fn skipped(&self) -> &BTreeMap<Collection, String> {
        &self.skipped
    }

    fn on_error(&mut self, now: u64, code: ErrorCode, message: String, doc: Option<DocId>) {
        if let Some(doc) = doc.filter(|_| code == ErrorCode::FORBIDDEN) {
            if self.offered_before_read_only(doc) {
                // Expected once after the right to write was withdrawn:
                // not an error the app has to see.
                tracing::debug!(%doc, message, "offline changes refused; syncing read-only");
                return;
            }
        }
        self.out.push(ClientOutput::Event(SessionEvent::RelayError {
            code,
            message: message.clone(),
            doc,
        }));
        if code.closes_connection() {
            return self.close(code, message);
        }
        let Some(doc) = doc else { return };
        if code == ErrorCode::NOT_SUBSCRIBED && self.arrived_before_subscription(doc) {
            return;
        }
        let hold = if matches!(code, ErrorCode::STORAGE_UNAVAILABLE | ErrorCode::INTERNAL) {
            Hold::RetryAt(now + STORAGE_RETRY_MS)
        } else {
            Hold::Refused
        };
        self.hold(doc, hold);
    }

    /// A `not_subscribed` for a document of a collection this connection
    /// subscribed to and the relay did not refuse: its frame reached the
    /// relay before the subscription (an early exchange, on a transport
    /// that reorders). The exchange starts over, offered again once the
    /// collection is listed, instead of being held back for the whole
    /// connection (a held document only answers the relay with its heads,
    /// and a relay that needs its changes would ask again and again).
    /// Returns whether that was the case.
    fn arrived_before_subscription(&mut self, doc: DocId) -> bool {
        let Some(d) = self.docs.get(&doc) else {
            return false;
        };
        if self.skipped.contains_key(&d.collection) {
            return false;
        }
        self.start_again(doc);
        true
    }

    /// A `forbidden` for a document of a collection the relay confirmed
    /// read-only on this connection: an early exchange offered changes
    /// made while the replica could still write it (the cursor said so).
    /// The exchange starts over and learns from the relay's first answer
    /// that its changes are not taken, so the document keeps receiving
    /// the relay's changes. Returns whether that was the case.
    fn offered_before_read_only(&mut self, doc: DocId) -> bool {
        let Some(d) = self.docs.get(&doc) else {
            return false;
        };
        if !self.read_only.contains(&d.collection) {
            return false;
        }
        self.start_again(doc);
        true
    }

    /// Restarts `doc`'s exchange from the shared heads, offered again once
    /// its collection is listed.
    fn start_again(&mut self, doc: DocId) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        if d.exchange.restart() {
            self.in_flight -= 1;
        }
        d.relay_heads = None;
        let listed = self.announced.contains(&d.collection);
        if listed {
            self.enqueue(doc);
        }
    }

    /// Stops offering a document until `hold` says otherwise; what was in
    /// flight is forgotten (the relay did not apply it).
    fn hold(&mut self, doc: DocId, hold: Hold) {
        if let Some(d) = self.docs.get_mut(&doc) {
            d.hold = hold;
            d.delete_sent = false;
            if d.exchange.restart() {
                self.in_flight -= 1;
            }
        }
    }

    /// A local failure about `doc`: try again later if storage failed,
    /// on the next connection if the relay's data does not apply.
    fn hold_after_failure(&mut self, now: u64, doc: DocId, error: &Error) {
        let hold = match error_code(error) {
            ErrorCode::STORAGE_UNAVAILABLE => Hold::RetryAt(now + STORAGE_RETRY_MS),
            _ => Hold::Refused,
        };
        self.hold(doc, hold);
    }

    fn local_failure(&mut self, doc: Option<DocId>, error: &Error) {
        tracing::warn!(?doc, %error, "sync could not read or apply a document");
        self.out
            .push(ClientOutput::Event(SessionEvent::LocalFailure {
                code: error_code(error),
                message: error.to_string(),
                doc,
            }));
    }

    fn close(&mut self, code: ErrorCode, reason: String) {
        self.out.push(ClientOutput::Close { code, reason });
    }

    /// Sends a tombstone; the relay counts as holding it once it
    /// acknowledges it.
    fn send_delete(&mut self, doc: DocId, collection: &Collection, docs: &dyn SyncDocs) {
        if self.read_only.contains(collection) {
            return; // stays local; reported as not pushed
        }
        let Some(d) = self.doc_sync(doc, collection, docs) else {
            return;
        };
        if d.relay_deleted || d.delete_sent || d.hold != Hold::Free {
            return;
        }
        d.delete_sent = true;
        self.out.push(ClientOutput::Send(Frame::Delete {
            doc,
            collection: collection.to_string(),
        }));
    }

    fn enqueue(&mut self, doc: DocId) {
        let busy = self
            .docs
            .get(&doc)
            .is_some_and(|d| d.exchange.in_flight() || d.hold != Hold::Free);
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
                self.local_failure(Some(doc), &e);
                self.hold_after_failure(now, doc, &e);
            }
        }
    }

    /// Generates and sends the next message for `doc`, if there is one;
    /// returns whether a message went out.
    fn send_next(&mut self, now: u64, doc: DocId, docs: &dyn SyncDocs) -> Result<bool> {
        let collection = match self.docs.get(&doc) {
            Some(d) => d.collection.clone(),
            None => match docs.local_state(&doc)? {
                Some(local) => local.collection,
                None => return Ok(false),
            },
        };
        let Some(d) = self.doc_sync(doc, &collection, docs) else {
            return Ok(false);
        };
        if d.exchange.in_flight() || d.hold != Hold::Free {
            return Ok(false);
        }
        let Some(outgoing) = d.exchange.generate(docs, &doc, &collection, now)? else {
            return Ok(false);
        };
        let first = !outgoing.message.changes.is_empty() && !std::mem::replace(&mut d.sent, true);
        if outgoing.want_reply {
            self.in_flight += 1;
        }
        let bytes = outgoing.message.encode();
        if bytes.len() > self.config.max_frame_bytes {
            self.hold(doc, Hold::Refused);
            let message = format!(
                "record {doc} holds a change of about {} bytes; the relay accepts {} at most, so it cannot sync",
                bytes.len(),
                self.config.max_frame_bytes
            );
            self.out
                .push(ClientOutput::Event(SessionEvent::LocalFailure {
                    code: ErrorCode::TOO_LARGE,
                    message,
                    doc: Some(doc),
                }));
            return Ok(false);
        }
        self.count_sent(bytes.len());
        self.stats.docs_sent += u64::from(first);
        self.out.push(ClientOutput::Send(Frame::Sync {
            doc,
            collection: collection.to_string(),
            message: bytes,
            want_reply: outgoing.want_reply,
        }));
        Ok(true)
    }

    /// The sync progress of `doc`, loading its persisted sync state on
    /// first use; `None` (reported) if that read fails.
    fn doc_sync(
        &mut self,
        doc: DocId,
        collection: &Collection,
        docs: &dyn SyncDocs,
    ) -> Option<&mut DocSync> {
        if !self.docs.contains_key(&doc) {
            let relay = self.relay_id.clone()?;
            let state = match docs.load_sync_state(&relay, &doc) {
                Ok(state) => state,
                Err(e) => {
                    self.local_failure(Some(doc), &e);
                    return None;
                }
            };
            let fresh = DocSync {
                collection: collection.clone(),
                exchange: Exchange::resume(state),
                relay_heads: None,
                relay_deleted: false,
                delete_sent: false,
                sent: false,
                hold: Hold::Free,
            };
            self.docs.insert(doc, fresh);
        }
        self.docs.get_mut(&doc)
    }

    fn finish(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<ClientOutput> {
        self.save_cursors(now, docs);
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
            if let Some(state) = self
                .docs
                .get_mut(&doc)
                .and_then(|d| d.exchange.take_dirty(doc))
            {
                states.push(state);
            }
        }
        if !states.is_empty() {
            self.out.push(ClientOutput::SaveStates { relay, states });
        }
    }
}
