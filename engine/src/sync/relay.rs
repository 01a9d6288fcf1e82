//! The relay's side of the protocol, without I/O.
//!
//! [`RelaySession`] is one connection: the handshake, subscriptions,
//! announcements, and the checks every document frame passes before it is
//! routed. [`DocHub`] is one document: the sync state of every peer attached
//! to it, so that a burst of incoming changes is answered with one message
//! per peer covering all of them (the caller feeds every pending message to
//! [`DocHub::receive`] and then calls [`DocHub::flush`] once).

use std::collections::{BTreeSet, HashMap};

use automerge::sync::{Message, State};
use automerge::ChangeHash;

use super::limits::{Limits, Usage};
use super::protocol::{DocSummary, ErrorCode, Frame, PROTOCOL_VERSION};
use super::{awaits_answer, heads_only, note_answer, restart_state, SyncDocs, RETRY_AFTER_MS};
use crate::id::DocId;

/// What a connection may do, decided once from its `Hello` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Read and write every collection (open mode).
    Everything,
    /// Per-collection rights: `true` means read-write, `false` read-only.
    Collections(HashMap<String, bool>),
}

impl Grant {
    /// Whether documents of `collection` may be read.
    pub fn can_read(&self, collection: &str) -> bool {
        match self {
            Grant::Everything => true,
            Grant::Collections(c) => c.contains_key(collection),
        }
    }

    /// Whether documents of `collection` may be changed.
    pub fn can_write(&self, collection: &str) -> bool {
        match self {
            Grant::Everything => true,
            Grant::Collections(c) => c.get(collection).copied().unwrap_or(false),
        }
    }
}

/// Checks the token of a `Hello`.
pub trait Access: Send + Sync + std::fmt::Debug {
    /// The rights a token grants at `now_ms` (milliseconds since the Unix
    /// epoch), or why it grants none.
    fn check(&self, token: &str, now_ms: u64) -> Result<Grant, String>;
}

/// Accepts every token with every right: the relay's explicit open mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAccess;

impl Access for OpenAccess {
    fn check(&self, _token: &str, _now_ms: u64) -> Result<Grant, String> {
        Ok(Grant::Everything)
    }
}

/// Something the relay runtime must do for one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOutput {
    /// Send this frame on this connection.
    Send(Frame),
    /// Register the connection as a subscriber of a collection.
    Subscribed(String),
    /// Remove it.
    Unsubscribed(String),
    /// Deliver a sync message to the document's hub.
    Route {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: String,
        /// The decoded message.
        message: Message,
        /// Whether the sender waits for an answer.
        want_reply: bool,
    },
    /// Tell every other subscriber of the collection about a deletion.
    Deleted {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: String,
    },
    /// Close the connection (after sending what precedes this).
    Close {
        /// Why.
        code: ErrorCode,
        /// Explanation.
        reason: String,
    },
}

/// Where a relay connection is.
#[derive(Debug)]
enum Phase {
    /// Waiting for `Hello`.
    Handshake,
    /// Welcomed.
    Ready {
        /// The peer's id.
        peer_id: String,
        /// What its token allows.
        grant: Grant,
    },
    /// Closed by a fatal error; further frames are ignored.
    Closed,
}

/// How many documents one `Announce` frame lists.
pub const ANNOUNCE_BATCH: usize = 500;

/// The relay's side of one connection.
#[derive(Debug)]
pub struct RelaySession {
    /// The relay's id, sent in `Welcome`.
    relay_id: String,
    /// Handshake progress.
    phase: Phase,
    /// Subscribed collections.
    subscriptions: BTreeSet<String>,
    /// What the connection used of its limits.
    usage: Usage,
    /// Outputs of the current call.
    out: Vec<RelayOutput>,
}

impl RelaySession {
    /// A connection that has not said hello yet.
    pub fn new(relay_id: impl Into<String>) -> Self {
        Self::with_limits(relay_id, Limits::unlimited())
    }

    /// A connection held to `limits`.
    pub fn with_limits(relay_id: impl Into<String>, limits: Limits) -> Self {
        RelaySession {
            relay_id: relay_id.into(),
            phase: Phase::Handshake,
            subscriptions: BTreeSet::new(),
            usage: Usage::new(limits),
            out: Vec::new(),
        }
    }

    /// Refuses the frame if it breaks a limit; `false` if it was refused.
    fn within(&mut self, check: Result<(), (ErrorCode, String)>, doc: Option<DocId>) -> bool {
        match check {
            Ok(()) => true,
            Err((code, text)) => {
                self.fail(code, text, doc);
                false
            }
        }
    }

    /// The peer id, once welcomed.
    pub fn peer_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Ready { peer_id, .. } => Some(peer_id),
            _ => None,
        }
    }

    /// Whether the connection subscribed to `collection`.
    pub fn is_subscribed(&self, collection: &str) -> bool {
        self.subscriptions.contains(collection)
    }

    /// The subscribed collections.
    pub fn subscriptions(&self) -> &BTreeSet<String> {
        &self.subscriptions
    }

    /// Whether the connection may write `collection`.
    pub fn can_write(&self, collection: &str) -> bool {
        matches!(&self.phase, Phase::Ready { grant, .. } if grant.can_write(collection))
    }

    /// Raw bytes arrived: decode them and handle the frame. Undecodable
    /// bytes close the connection with [`ErrorCode::MALFORMED`].
    pub fn handle_bytes(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
    ) -> Vec<RelayOutput> {
        let counted = self.usage.frame(now_ms);
        if !matches!(self.phase, Phase::Closed) && !self.within(counted, None) {
            return std::mem::take(&mut self.out);
        }
        match Frame::decode(bytes) {
            Ok(frame) => self.handle_frame(frame, now_ms, access, docs),
            Err(e) => {
                match (&self.phase, Frame::hello_version(bytes)) {
                    (Phase::Handshake, Some(v)) if v != PROTOCOL_VERSION => self.fail(
                        ErrorCode::VERSION,
                        format!("protocol version {v} is not supported; this relay speaks {PROTOCOL_VERSION}"),
                        None,
                    ),
                    _ => self.fail(ErrorCode::MALFORMED, e.to_string(), None),
                }
                std::mem::take(&mut self.out)
            }
        }
    }

    /// A frame arrived from the peer.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
    ) -> Vec<RelayOutput> {
        match (&self.phase, frame) {
            (Phase::Closed, _) => {}
            (
                Phase::Handshake,
                Frame::Hello {
                    version,
                    peer_id,
                    token,
                },
            ) => self.on_hello(version, peer_id, &token, now_ms, access),
            (Phase::Handshake, other) => {
                self.fail(
                    ErrorCode::NOT_HANDSHAKEN,
                    format!("expected hello, got {}", other.kind()),
                    None,
                );
            }
            (Phase::Ready { .. }, Frame::Subscribe { collections }) => {
                self.on_subscribe(collections, docs)
            }
            (Phase::Ready { .. }, Frame::Unsubscribe { collections }) => {
                for c in collections {
                    if self.subscriptions.remove(&c) {
                        self.out.push(RelayOutput::Unsubscribed(c));
                    }
                }
            }
            (
                Phase::Ready { .. },
                Frame::Sync {
                    doc,
                    collection,
                    message,
                    want_reply,
                },
            ) => self.on_sync(doc, collection, &message, want_reply, docs),
            (Phase::Ready { .. }, Frame::Delete { doc, collection }) => {
                self.on_delete(doc, collection, docs)
            }
            (Phase::Ready { .. }, Frame::Error { code, message, doc }) => {
                tracing::debug!(%code, message, ?doc, "peer reported an error");
            }
            (Phase::Ready { .. }, other) => {
                self.fail(
                    ErrorCode::MALFORMED,
                    format!("unexpected {} frame from a replica", other.kind()),
                    None,
                );
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Refuses with a fatal error and closes, or reports a non-fatal one.
    pub fn fail(&mut self, code: ErrorCode, message: String, doc: Option<DocId>) {
        self.out
            .push(RelayOutput::Send(Frame::error(code, message.clone(), doc)));
        if code.is_fatal() {
            self.phase = Phase::Closed;
            self.out.push(RelayOutput::Close {
                code,
                reason: message,
            });
        }
    }

    fn on_hello(
        &mut self,
        version: u32,
        peer_id: String,
        token: &str,
        now_ms: u64,
        access: &dyn Access,
    ) {
        if version != PROTOCOL_VERSION {
            let text = format!(
                "protocol version {version} is not supported; this relay speaks {PROTOCOL_VERSION}"
            );
            return self.fail(ErrorCode::VERSION, text, None);
        }
        if peer_id.is_empty() || peer_id.len() > 128 {
            return self.fail(
                ErrorCode::MALFORMED,
                "peer id must be 1-128 bytes".into(),
                None,
            );
        }
        match access.check(token, now_ms) {
            Ok(grant) => {
                self.phase = Phase::Ready { peer_id, grant };
                self.out.push(RelayOutput::Send(Frame::Welcome {
                    version: PROTOCOL_VERSION,
                    relay_id: self.relay_id.clone(),
                }));
            }
            Err(reason) => self.fail(ErrorCode::UNAUTHORIZED, reason, None),
        }
    }

    fn grant(&self) -> Option<&Grant> {
        match &self.phase {
            Phase::Ready { grant, .. } => Some(grant),
            _ => None,
        }
    }

    fn on_subscribe(&mut self, collections: Vec<String>, docs: &dyn SyncDocs) {
        for collection in collections {
            if crate::replica::check_collection(&collection).is_err() {
                self.fail(
                    ErrorCode::BAD_NAME,
                    format!("'{collection}' is not a valid collection name"),
                    None,
                );
                continue;
            }
            if !self.grant().is_some_and(|g| g.can_read(&collection)) {
                self.fail(
                    ErrorCode::FORBIDDEN,
                    format!("no right to read collection '{collection}'"),
                    None,
                );
                continue;
            }
            if self.subscriptions.insert(collection.clone()) {
                self.out.push(RelayOutput::Subscribed(collection.clone()));
            }
            self.announce(&collection, docs);
        }
    }

    /// Lists a collection's documents in batches.
    fn announce(&mut self, collection: &str, docs: &dyn SyncDocs) {
        let list = match docs.summaries(collection) {
            Ok(list) => list,
            Err(e) => {
                return self.fail(
                    ErrorCode::INTERNAL,
                    format!("cannot list '{collection}': {e}"),
                    None,
                )
            }
        };
        let mut batches: Vec<Vec<DocSummary>> =
            list.chunks(ANNOUNCE_BATCH).map(<[_]>::to_vec).collect();
        if batches.is_empty() {
            batches.push(Vec::new());
        }
        let last = batches.len() - 1;
        for (i, docs) in batches.into_iter().enumerate() {
            self.out.push(RelayOutput::Send(Frame::Announce {
                collection: collection.to_owned(),
                docs,
                complete: i == last,
            }));
        }
    }

    /// Checks that a document frame may be applied: subscribed, the right
    /// collection, and the right to write if `write`.
    fn admit(&mut self, doc: DocId, collection: &str, write: bool, docs: &dyn SyncDocs) -> bool {
        if !self.subscriptions.contains(collection) {
            self.fail(
                ErrorCode::NOT_SUBSCRIBED,
                format!("not subscribed to collection '{collection}'"),
                Some(doc),
            );
            return false;
        }
        match docs.local_state(&doc) {
            Ok(Some((actual, _, _))) if actual != collection => {
                // A document lives in exactly one collection. This tells the
                // holder of an id that it exists elsewhere, nothing more: no
                // content, heads or collection name (ids are 128 random
                // bits, so they cannot be guessed).
                self.fail(
                    ErrorCode::WRONG_COLLECTION,
                    format!("document {doc} is not in collection '{collection}'"),
                    Some(doc),
                );
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                self.fail(ErrorCode::INTERNAL, e.to_string(), Some(doc));
                return false;
            }
        }
        if write && !self.can_write(collection) {
            self.fail(
                ErrorCode::FORBIDDEN,
                format!("read-only access to collection '{collection}'"),
                Some(doc),
            );
            return false;
        }
        true
    }

    fn on_sync(
        &mut self,
        doc: DocId,
        collection: String,
        bytes: &[u8],
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) {
        if !self.admit(doc, &collection, false, docs) {
            return;
        }
        let counted = self.usage.doc(doc);
        if !self.within(counted, Some(doc)) {
            return;
        }
        match Message::decode(bytes) {
            Ok(message) => {
                if !message.changes.is_empty() && !self.can_write(&collection) {
                    let text =
                        format!("read-only access to collection '{collection}': changes refused");
                    return self.fail(ErrorCode::FORBIDDEN, text, Some(doc));
                }
                self.out.push(RelayOutput::Route {
                    doc,
                    collection,
                    message,
                    want_reply,
                });
            }
            Err(e) => self.fail(
                ErrorCode::BAD_DOCUMENT,
                format!("invalid sync message for {doc}: {e}"),
                Some(doc),
            ),
        }
    }

    fn on_delete(&mut self, doc: DocId, collection: String, docs: &dyn SyncDocs) {
        if !self.admit(doc, &collection, true, docs) {
            return;
        }
        let counted = self.usage.doc(doc);
        if !self.within(counted, Some(doc)) {
            return;
        }
        let peer = self.peer_id().unwrap_or_default().to_owned();
        match docs.delete(&doc, &collection, &peer) {
            Ok(true) => self.out.push(RelayOutput::Deleted { doc, collection }),
            Ok(false) => {}
            Err(e) => self.fail(ErrorCode::INTERNAL, e.to_string(), Some(doc)),
        }
    }
}

/// One peer attached to a document hub.
#[derive(Debug)]
struct HubPeer {
    /// The peer's id (sync states are persisted under it).
    name: String,
    /// Automerge's sync state with this peer.
    state: State,
    /// Shared heads last persisted.
    saved: Vec<ChangeHash>,
    /// When the last message to it went out, while unanswered.
    in_flight_since: Option<u64>,
    /// Whether it waits for an answer to its last message.
    owes_reply: bool,
    /// Whether our last message asked it for changes.
    asked: bool,
}

/// One document at the relay and every peer syncing it.
#[derive(Debug)]
pub struct DocHub {
    /// The document.
    doc: DocId,
    /// Its collection.
    collection: String,
    /// Attached peers by connection number.
    peers: HashMap<u64, HubPeer>,
}

impl DocHub {
    /// A hub with no peers.
    pub fn new(doc: DocId, collection: impl Into<String>) -> Self {
        DocHub {
            doc,
            collection: collection.into(),
            peers: HashMap::new(),
        }
    }

    /// The document.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// Its collection.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// Whether connection `conn` is attached.
    pub fn is_attached(&self, conn: u64) -> bool {
        self.peers.contains_key(&conn)
    }

    /// The attached connections.
    pub fn attached(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// How many peers are attached.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Attaches a connection, resuming from its persisted state if any.
    pub fn attach(&mut self, conn: u64, name: &str, docs: &dyn SyncDocs) {
        if self.peers.contains_key(&conn) {
            return;
        }
        let state = docs
            .load_sync_state(name, &self.doc)
            .ok()
            .flatten()
            .unwrap_or_default();
        let saved = state.shared_heads.clone();
        let peer = HubPeer {
            name: name.to_owned(),
            state,
            saved,
            in_flight_since: None,
            owes_reply: false,
            asked: false,
        };
        self.peers.insert(conn, peer);
    }

    /// Detaches a connection; returns its state to persist, if it moved.
    pub fn detach(&mut self, conn: u64) -> Option<(String, Vec<u8>)> {
        let peer = self.peers.remove(&conn)?;
        (peer.state.shared_heads != peer.saved).then(|| (peer.name, peer.state.encode()))
    }

    /// Applies a message from `conn` (attached first if needed). Changes
    /// are persisted before this returns. Returns whether the document
    /// changed.
    pub fn receive(
        &mut self,
        conn: u64,
        name: &str,
        message: Message,
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) -> crate::Result<bool> {
        self.attach(conn, name, docs);
        let Some(peer) = self.peers.get_mut(&conn) else {
            return Ok(false);
        };
        peer.in_flight_since = None;
        peer.owes_reply |= want_reply;
        note_answer(&mut peer.state, &mut peer.asked, &message);
        let result = docs.receive(&self.doc, &self.collection, &mut peer.state, message, name);
        if result.is_err() {
            peer.state = restart_state(&peer.state);
        }
        result
    }

    /// Generates the next message for every attached peer: one message per
    /// peer, covering everything that arrived since the last flush.
    pub fn flush(&mut self, now: u64, docs: &dyn SyncDocs) -> Vec<(u64, Frame)> {
        let mut frames = Vec::new();
        let mut heads = None;
        for (conn, peer) in &mut self.peers {
            if now.saturating_sub(peer.in_flight_since.unwrap_or(now)) >= RETRY_AFTER_MS {
                peer.state = restart_state(&peer.state);
                peer.in_flight_since = None;
            }
            let message = match docs.generate(&self.doc, &mut peer.state) {
                Ok(Some(message)) => message,
                Ok(None) if peer.owes_reply => {
                    let ours = match &heads {
                        Some(h) => h,
                        None => heads.insert(docs.heads(&self.doc).unwrap_or_default()),
                    };
                    heads_only(ours.clone())
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(doc = %self.doc, error = %e, "cannot generate sync message");
                    continue;
                }
            };
            peer.owes_reply = false;
            peer.asked = !message.need.is_empty();
            let want_reply = awaits_answer(&peer.state, &message);
            if want_reply {
                peer.in_flight_since.get_or_insert(now);
            }
            let frame = Frame::Sync {
                doc: self.doc,
                collection: self.collection.clone(),
                message: message.encode(),
                want_reply,
            };
            frames.push((*conn, frame));
        }
        frames
    }

    /// Sync states whose shared heads moved since last persisted, grouped
    /// by peer name.
    pub fn dirty_states(&mut self) -> Vec<(String, DocId, Vec<u8>)> {
        let mut out = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.state.shared_heads != peer.saved {
                peer.saved = peer.state.shared_heads.clone();
                out.push((peer.name.clone(), self.doc, peer.state.encode()));
            }
        }
        out
    }

    /// Whether any attached peer is waiting for an answer older than the
    /// retry interval (the caller should flush).
    pub fn has_stalled(&self, now: u64) -> bool {
        self.peers.values().any(|p| {
            p.in_flight_since
                .is_some_and(|t| now.saturating_sub(t) >= RETRY_AFTER_MS)
        })
    }
}
