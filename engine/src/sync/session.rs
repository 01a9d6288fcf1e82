//! The relay's side of one connection, without I/O.
//!
//! [`RelaySession`] is the handshake, subscriptions, announcements, and the
//! checks every document frame passes before it is routed to its
//! document's [`super::DocHub`] (or, for a deletion, applied): subscribed,
//! the document's own collection, the right to read, and the right to
//! write for changes and deletions. A refused frame is answered with an
//! error frame and never reaches a hub or the store.
//!
//! A grant may end: from its expiry on, every frame is refused and the
//! connection closed with `token_expired`, and [`RelaySession::deadline`]
//! tells the runtime when to call [`RelaySession::tick`] so a silent
//! connection is closed on time too. `Reauth` replaces the grant on the
//! open connection (the `auth` part of this module, at its end).

use std::collections::{BTreeSet, HashSet, VecDeque};

use automerge::sync::Message;

use super::access::{Access, Grant};
use super::limits::{Limits, Usage, WHOLE_UNIT_BYTES};
use super::protocol::{
    Cursor, DocSummary, ErrorCode, Frame, SubscribeRequest, WholeDoc, OLDEST_ACCEPTED_VERSION,
    PACKED_SINCE, PROTOCOL_VERSION,
};
use super::{error_code, error_text, SyncDocs};
use crate::guard::GuardError;
use crate::id::{Collection, DocId, PeerId};

/// Something the relay runtime must do for one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOutput {
    /// Send this frame on this connection.
    Send(Frame),
    /// Register the connection as a subscriber of a collection (again, to
    /// update its right after a `Reauth`).
    Subscribed {
        /// The collection.
        collection: Collection,
        /// Whether the connection may write it.
        write: bool,
    },
    /// Remove it.
    Unsubscribed(Collection),
    /// Deliver a sync message to the hub of (collection, document).
    Route {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: Collection,
        /// The decoded message.
        message: Message,
        /// Whether the sender waits for an answer.
        want_reply: bool,
    },
    /// Pass an ephemeral frame (its `sender` filled in) to everyone else
    /// who listens to the document; dropped for a connection that cannot
    /// take it at once, never stored.
    Ephemeral {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: Collection,
        /// The frame to pass on.
        frame: Frame,
    },
    /// Tell every other subscriber of the collection about a deletion.
    Deleted {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: Collection,
    },
    /// Keep the sync states of at most `keep` peers whose keys start with
    /// `prefix` (one subject's), the most recently used, besides `current`:
    /// a token's holder cannot make the relay keep states without bound.
    RetireStates {
        /// The subject's key prefix.
        prefix: String,
        /// How many peers' states to keep.
        keep: usize,
        /// This connection's key, never retired.
        current: PeerId,
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
        peer: PeerId,
        /// What its token allows.
        grant: Grant,
        /// The key its sync states are kept under at the relay.
        state_key: PeerId,
        /// The protocol version the connection speaks (the replica's).
        version: u32,
    },
    /// Closed by a fatal error; further frames are ignored.
    Closed,
}

/// How many documents one `Announce` frame lists.
pub const ANNOUNCE_BATCH: usize = 500;

/// Most collections one `Subscribe` may name.
pub const MAX_SUBSCRIBE_NAMES: usize = 64;

/// The most bytes of saved documents one `Documents` frame carries (a
/// page of a listing stops there; the next page goes on from it).
pub const WHOLE_FRAME_BYTES: usize = 1024 * 1024;

/// The largest saved form a listing sends whole; a larger document is
/// announced and synced by exchange, which sends it in bounded batches.
pub const MAX_WHOLE_DOC_BYTES: usize = 256 * 1024;

/// A listing of one collection owed to the connection: announced one page
/// at a time, so it costs one page of memory whatever the collection's size.
#[derive(Debug)]
struct Listing {
    /// The collection.
    collection: Collection,
    /// The cursor the replica asked to resume from (`SubscribeSince`).
    cursor: Option<Cursor>,
    /// Whether a `Listing` frame heads it (it was asked for by
    /// `SubscribeSince`; a version-2 `Subscribe` gets none).
    framed: bool,
    /// Whether its documents may go whole (`Documents`): the replica said
    /// it holds none of the collection.
    whole: bool,
    /// Whether it goes on from a listing of the same collection that was
    /// under way when it was asked for (its cursor is that listing's
    /// number): if that one fails, this one lists everything instead.
    follows: bool,
    /// Where the listing stands, once its first page went out (a later
    /// `Subscribe` then needs a listing of its own, which sees what
    /// changed meanwhile).
    started: Option<Started>,
    /// `Subscribe`s of the same collection that arrived before this
    /// listing started: each is answered by this listing (which is newer
    /// than all of them) plus one empty complete frame, so a client that
    /// counts complete announcements per `Subscribe` still counts right.
    repeats: u32,
}

/// A listing under way.
#[derive(Debug, Clone, Copy)]
struct Started {
    /// The number it starts after (`None`: every document).
    since: Option<u64>,
    /// The collection's sequence number read before the first page.
    seq: u64,
    /// The last thing announced.
    after: Position,
}

/// The last document a listing announced.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// A full listing goes in id order.
    Id(Option<DocId>),
    /// A listing since a number goes in sequence order.
    Seq(u64),
}

/// What [`RelaySession::next_announcement`] has to say.
#[derive(Debug, Clone, PartialEq)]
pub enum Announcing {
    /// Send these outputs, then ask again.
    Page(Vec<RelayOutput>),
    /// The connection's announcement budget is spent: ask again at this
    /// time (ms).
    NotBefore(u64),
    /// Nothing is owed.
    Idle,
}

/// The relay's side of one connection.
#[derive(Debug)]
pub struct RelaySession {
    /// The relay's id, sent in `Welcome`.
    relay_id: String,
    /// Handshake progress.
    phase: Phase,
    /// Subscribed collections.
    subscriptions: BTreeSet<Collection>,
    /// Listings owed, oldest first.
    listings: VecDeque<Listing>,
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
            listings: VecDeque::new(),
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

    /// The key the relay keeps this connection's sync states under, once
    /// welcomed: the peer id, qualified by the grant's subject when the
    /// access check names one (so states are bound to the token).
    pub fn state_key(&self) -> Option<&PeerId> {
        match &self.phase {
            Phase::Ready { state_key, .. } => Some(state_key),
            _ => None,
        }
    }

    /// The peer's id, once welcomed.
    pub fn peer(&self) -> Option<&PeerId> {
        match &self.phase {
            Phase::Ready { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// Whether the connection subscribed to `collection`.
    pub fn is_subscribed(&self, collection: &str) -> bool {
        self.subscriptions.contains(collection)
    }

    /// The subscribed collections.
    pub fn subscriptions(&self) -> &BTreeSet<Collection> {
        &self.subscriptions
    }

    /// Whether the connection may write `collection`.
    pub fn can_write(&self, collection: &str) -> bool {
        self.grant().is_some_and(|g| g.can_write(collection))
    }

    fn grant(&self) -> Option<&Grant> {
        match &self.phase {
            Phase::Ready { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// Whether the connection was welcomed in a version whose messages
    /// may carry several frames ([`PACKED_SINCE`]): the relay then packs
    /// what it sends at one moment into one message.
    pub fn packs(&self) -> bool {
        matches!(self.phase, Phase::Ready { version, .. } if version >= PACKED_SINCE)
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
        self.handle_message(bytes, now_ms, access, docs, &mut |_, _| {})
    }

    /// [`RelaySession::handle_bytes`] for one WebSocket message, which on a
    /// version-5 connection (and in the `Hello` message of one) may carry
    /// several frames, handled in order; `seen` is told each frame's kind
    /// and size (`"undecodable"` for bytes that are no frame). On older
    /// connections a message is exactly one frame.
    pub fn handle_message(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
        seen: &mut dyn FnMut(&'static str, usize),
    ) -> Vec<RelayOutput> {
        let packed = match self.phase {
            Phase::Handshake => Frame::hello_version(bytes).is_some_and(|v| v >= PACKED_SINCE),
            _ => self.packs(),
        };
        // A message is decoded whole before any of it is acted on: one
        // that is not entirely valid is refused entirely.
        let decoded = match packed {
            true => Frame::decode_message_sized(bytes),
            false => Frame::decode(bytes).map(|frame| vec![(frame, bytes.len())]),
        };
        let frames = match decoded {
            Ok(frames) => frames,
            Err(e) => {
                seen("undecodable", bytes.len());
                if self.expired(now_ms) {
                    return std::mem::take(&mut self.out);
                }
                match (&self.phase, Frame::hello_version(bytes)) {
                    (Phase::Handshake, Some(v)) if !accepted(v) => {
                        self.fail(ErrorCode::VERSION, unsupported(v), None)
                    }
                    _ => self.fail(ErrorCode::MALFORMED, e.to_string(), None),
                }
                return std::mem::take(&mut self.out);
            }
        };
        let mut out = Vec::new();
        for (frame, size) in frames {
            seen(frame.kind(), size);
            if self.expired(now_ms) {
                break;
            }
            let counted = self.usage.frame(now_ms);
            if !matches!(self.phase, Phase::Closed) && !self.within(counted, None) {
                break;
            }
            out.extend(self.handle_frame(frame, now_ms, access, docs));
            if matches!(self.phase, Phase::Closed) {
                break;
            }
        }
        out.append(&mut self.out);
        out
    }

    /// A frame arrived from the peer.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
    ) -> Vec<RelayOutput> {
        if self.expired(now_ms) {
            return std::mem::take(&mut self.out);
        }
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
                let text = format!("expected hello, got {}", other.kind());
                self.fail(ErrorCode::NOT_HANDSHAKEN, text, None);
            }
            (Phase::Ready { .. }, Frame::Subscribe { collections }) => {
                let from = collections
                    .into_iter()
                    .map(|collection| SubscribeRequest {
                        collection,
                        cursor: None,
                        whole: false,
                    })
                    .collect();
                self.on_subscribe(from, false)
            }
            (Phase::Ready { .. }, Frame::SubscribeSince { collections }) => {
                let from = collections
                    .into_iter()
                    .map(SubscribeRequest::from)
                    .collect();
                self.on_subscribe(from, true)
            }
            (Phase::Ready { .. }, Frame::SubscribeWith { collections }) => {
                self.on_subscribe(collections, true)
            }
            (Phase::Ready { .. }, Frame::Unsubscribe { collections }) => {
                self.on_unsubscribe(collections)
            }
            (
                Phase::Ready { .. },
                Frame::Sync {
                    doc,
                    collection,
                    message,
                    want_reply,
                },
            ) => self.on_sync(doc, &collection, &message, want_reply, docs),
            (Phase::Ready { .. }, Frame::Delete { doc, collection }) => {
                self.on_delete(doc, &collection, docs)
            }
            (
                Phase::Ready { .. },
                Frame::Ephemeral {
                    doc,
                    collection,
                    session,
                    count,
                    data,
                    ..
                },
            ) => self.on_ephemeral(doc, &collection, session, count, data, docs),
            (Phase::Ready { .. }, Frame::Reauth { token }) => {
                self.on_reauth(&token, now_ms, access)
            }
            (Phase::Ready { .. }, Frame::Error { code, message, doc }) => {
                tracing::debug!(%code, message, ?doc, "peer reported an error");
            }
            (Phase::Ready { .. }, other) => {
                let text = format!("unexpected {} frame from a replica", other.kind());
                self.fail(ErrorCode::MALFORMED, text, None);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Refuses with an error, closing if its code closes connections.
    pub fn fail(&mut self, code: ErrorCode, message: String, doc: Option<DocId>) {
        self.out
            .push(RelayOutput::Send(Frame::error(code, message.clone(), doc)));
        if code.closes_connection() {
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
        if !accepted(version) {
            return self.fail(ErrorCode::VERSION, unsupported(version), None);
        }
        let peer = match PeerId::new(peer_id) {
            Ok(peer) => peer,
            Err(e) => return self.fail(ErrorCode::MALFORMED, e.to_string(), None),
        };
        match access.check(token, now_ms) {
            Ok(grant) => {
                let expires_at_ms = grant.expires_at_ms();
                let state_key = state_key(grant.subject(), &peer);
                if let Some(subject) = grant.subject() {
                    self.out.push(RelayOutput::RetireStates {
                        prefix: subject_prefix(subject),
                        keep: self.usage.limits().max_peers_per_subject,
                        current: state_key.clone(),
                    });
                }
                self.phase = Phase::Ready {
                    peer,
                    grant,
                    state_key,
                    version,
                };
                self.out.push(RelayOutput::Send(Frame::Welcome {
                    // A version-2 replica is answered in its version: every
                    // frame it may receive is one it knows.
                    version,
                    relay_id: self.relay_id.clone(),
                    expires_at_ms,
                }));
            }
            Err(reason) => self.fail(ErrorCode::UNAUTHORIZED, reason, None),
        }
    }

    /// A collection name from the wire, or a `bad_name` refusal.
    fn collection(&mut self, name: &str, doc: Option<DocId>) -> Option<Collection> {
        match Collection::new(name) {
            Ok(c) => Some(c),
            Err(e) => {
                self.fail(ErrorCode::BAD_NAME, e.to_string(), doc);
                None
            }
        }
    }

    /// Subscribes to each name once (repeats within a frame count once),
    /// and owes each a listing; the listings are sent by
    /// [`RelaySession::next_announcement`], paced by the connection's
    /// announcement budget.
    /// `framed`: the listings are headed by `Listing` frames (asked for by
    /// `SubscribeSince`).
    fn on_subscribe(&mut self, names: Vec<SubscribeRequest>, framed: bool) {
        if names.len() > MAX_SUBSCRIBE_NAMES {
            let text = format!(
                "a Subscribe may name at most {MAX_SUBSCRIBE_NAMES} collections; this one names {}",
                names.len()
            );
            return self.fail(ErrorCode::TOO_LARGE, text, None);
        }
        let mut seen = HashSet::new();
        for from in names {
            if seen.insert(from.collection.clone()) {
                self.subscribe_one(from, framed);
            }
        }
    }

    /// Subscribes to one collection, or says why not (the others go on).
    fn subscribe_one(&mut self, from: SubscribeRequest, framed: bool) {
        let SubscribeRequest {
            collection: name,
            cursor,
            whole,
        } = from;
        let collection = match Collection::new(name.as_str()) {
            Ok(c) => c,
            Err(e) => return self.refuse_subscription(name, ErrorCode::BAD_NAME, e.to_string()),
        };
        if !self.grant().is_some_and(|g| g.can_read(&collection)) {
            let text = format!("no right to read collection '{collection}'");
            return self.refuse_subscription(name, ErrorCode::FORBIDDEN, text);
        }
        if !self.subscriptions.contains(&collection) {
            let max = self.usage.limits().max_subscriptions;
            if self.subscriptions.len() >= max {
                let text = format!("a connection may subscribe to at most {max} collections");
                return self.refuse_subscription(name, ErrorCode::TOO_LARGE, text);
            }
            self.subscriptions.insert(collection.clone());
        }
        self.confirm_subscription(&collection);
        // A cursor another relay issued means nothing here.
        let cursor = cursor.filter(|c| c.relay_id == self.relay_id);
        self.owe_listing(collection, cursor, framed, whole);
    }

    /// Registers a subscription with its right and tells the peer.
    fn confirm_subscription(&mut self, collection: &Collection) {
        let write = self.can_write(collection);
        self.out.push(RelayOutput::Subscribed {
            collection: collection.clone(),
            write,
        });
        self.out.push(RelayOutput::Send(Frame::Subscribed {
            collection: collection.to_string(),
            write,
        }));
    }

    /// Tells the peer a collection was not subscribed to, and why.
    fn refuse_subscription(&mut self, name: String, code: ErrorCode, message: String) {
        self.out.push(RelayOutput::Send(Frame::SubscribeRefused {
            collection: name,
            code,
            message,
        }));
    }

    /// Owes a listing of `collection`; one not started yet answers this
    /// request too (from the older of the two cursors: it then covers
    /// what both asked for). A request that arrives while a listing of
    /// the collection is under way (a replica's agreement check right
    /// after connecting) goes on from that listing's number: the replica
    /// gets that one whole, so this one need only add what changed since,
    /// instead of listing the collection a second time.
    fn owe_listing(
        &mut self,
        collection: Collection,
        cursor: Option<Cursor>,
        framed: bool,
        whole: bool,
    ) {
        let waiting = self
            .listings
            .iter_mut()
            .find(|l| l.collection == collection && l.started.is_none());
        if let Some(listing) = waiting {
            listing.repeats += 1;
            listing.framed |= framed;
            listing.cursor = match (listing.cursor.take(), cursor) {
                (Some(a), Some(b)) => Some(if a.seq <= b.seq { a } else { b }),
                _ => None,
            };
            return;
        }
        let under_way = self
            .listings
            .iter()
            .filter(|l| l.collection == collection)
            .find_map(|l| l.started.map(|s| s.seq));
        let (cursor, follows) = match under_way {
            // Only a `Listing` header tells the replica where a listing
            // starts; a version-2 `Subscribe` always gets everything.
            Some(seq) if framed && cursor.as_ref().is_none_or(|c| c.seq < seq) => (
                Some(Cursor {
                    relay_id: self.relay_id.clone(),
                    seq,
                }),
                true,
            ),
            _ => (cursor, false),
        };
        self.listings.push_back(Listing {
            collection,
            cursor,
            framed,
            whole,
            follows,
            started: None,
            repeats: 0,
        });
    }

    /// A listing of `collection` failed: one that was to go on from it
    /// lists everything instead.
    fn listing_failed(&mut self, collection: &Collection) {
        for listing in self.listings.iter_mut() {
            if listing.collection == *collection && listing.follows {
                listing.cursor = None;
                listing.follows = false;
            }
        }
    }

    fn on_unsubscribe(&mut self, names: Vec<String>) {
        for name in names {
            if let Some(c) = self.subscriptions.take(name.as_str()) {
                self.listings.retain(|l| l.collection != c);
                self.out.push(RelayOutput::Unsubscribed(c));
            }
        }
    }

    /// Whether listings are owed.
    pub fn announcing(&self) -> bool {
        !self.listings.is_empty()
    }

    /// The next page of the oldest listing owed, within the connection's
    /// announcement budget. The caller sends it and asks again (when the
    /// connection has room), so a listing of any size costs one page of
    /// memory and proceeds at the pace the peer reads.
    ///
    /// A listing's first page reads the collection's sequence number
    /// before any document: whatever changes while the listing goes out is
    /// numbered above it, so a replica resuming from that number misses
    /// nothing. A listing since a cursor goes in sequence order (a document
    /// changed meanwhile moves ahead and is announced again, never
    /// skipped); a full one in id order.
    pub fn next_announcement(&mut self, now_ms: u64, docs: &dyn SyncDocs) -> Announcing {
        let Some(listing) = self.listings.front_mut() else {
            return Announcing::Idle;
        };
        let allowed = match self.usage.announce_allowance(now_ms, ANNOUNCE_BATCH) {
            Ok(n) => n,
            Err(at) => return Announcing::NotBefore(at),
        };
        let read = start(listing, docs).and_then(|started| {
            let page: Vec<(Position, DocSummary)> = match started.after {
                Position::Id(after) => docs
                    .summaries_page(&listing.collection, after.as_ref(), allowed)?
                    .into_iter()
                    .map(|s| (Position::Id(Some(s.doc)), s))
                    .collect(),
                Position::Seq(after) => docs
                    .summaries_since(&listing.collection, after, allowed)?
                    .into_iter()
                    .map(|n| (Position::Seq(n.seq), n.summary))
                    .collect(),
            };
            let full = page.len() >= allowed;
            let split = if listing.whole {
                split_whole(page, docs)?
            } else {
                Split {
                    last: page.last().map(|(p, _)| *p),
                    announced: page.into_iter().map(|(_, s)| s).collect(),
                    whole: Vec::new(),
                    cut: false,
                }
            };
            Ok((started, split, full))
        });
        let (started, split, full) = match read {
            Ok(read) => read,
            Err(e) => {
                if let Some(failed) = self.listings.pop_front() {
                    self.listing_failed(&failed.collection);
                }
                self.fail(error_code(&e), error_text(&e), None);
                return Announcing::Page(std::mem::take(&mut self.out));
            }
        };
        let collection = listing.collection.to_string();
        if listing.framed && listing.started.is_none() {
            self.out
                .push(RelayOutput::Send(listing_frame(&collection, started)));
        }
        let whole_units: usize = split
            .whole
            .iter()
            .map(|w| w.data.len().div_ceil(WHOLE_UNIT_BYTES))
            .sum();
        self.usage
            .announced((split.announced.len() + whole_units).max(1));
        let after = split.last.unwrap_or(started.after);
        listing.started = Some(Started { after, ..started });
        let complete = !full && !split.cut;
        if !split.whole.is_empty() {
            self.out.push(RelayOutput::Send(Frame::Documents {
                collection: collection.clone(),
                docs: split.whole,
            }));
        }
        if complete || !split.announced.is_empty() {
            self.out.push(RelayOutput::Send(Frame::Announce {
                collection: collection.clone(),
                docs: split.announced,
                complete,
            }));
        }
        if complete {
            let (repeats, framed) = (listing.repeats, listing.framed);
            self.listings.pop_front();
            self.answer_repeats(&collection, repeats, framed.then_some(started.seq));
        }
        Announcing::Page(std::mem::take(&mut self.out))
    }

    /// Answers the `Subscribe`s a listing also answered: one empty complete
    /// frame each, headed (for `SubscribeSince`) by an empty `Listing`
    /// from the listing's number to itself.
    fn answer_repeats(&mut self, collection: &str, repeats: u32, seq: Option<u64>) {
        for _ in 0..repeats {
            if let Some(seq) = seq {
                self.out.push(RelayOutput::Send(Frame::Listing {
                    collection: collection.to_owned(),
                    since: Some(seq),
                    seq,
                }));
            }
            self.out.push(RelayOutput::Send(Frame::Announce {
                collection: collection.to_owned(),
                docs: Vec::<DocSummary>::new(),
                complete: true,
            }));
        }
    }

    /// Checks that a document frame may be applied: a valid collection,
    /// subscribed, the document's own, and the right to write if `write`.
    fn admit(
        &mut self,
        doc: DocId,
        name: &str,
        write: bool,
        docs: &dyn SyncDocs,
    ) -> Option<Collection> {
        let collection = self.collection(name, Some(doc))?;
        if !self.subscriptions.contains(&collection) {
            let text = format!("not subscribed to collection '{collection}'");
            self.fail(ErrorCode::NOT_SUBSCRIBED, text, Some(doc));
            return None;
        }
        match docs.local_state(&doc) {
            Ok(Some(local)) if local.collection != collection => {
                // A document lives in exactly one collection. This tells the
                // holder of an id that it exists elsewhere, nothing more: no
                // content, heads or collection name.
                let text = format!("document {doc} is not in collection '{collection}'");
                self.fail(ErrorCode::WRONG_COLLECTION, text, Some(doc));
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                self.fail(error_code(&e), error_text(&e), Some(doc));
                return None;
            }
        }
        if write && !self.can_write(&collection) {
            let text = format!("read-only access to collection '{collection}'");
            self.fail(ErrorCode::FORBIDDEN, text, Some(doc));
            return None;
        }
        let counted = self.usage.doc(doc);
        self.within(counted, Some(doc)).then_some(collection)
    }

    fn on_sync(
        &mut self,
        doc: DocId,
        name: &str,
        bytes: &[u8],
        want_reply: bool,
        docs: &dyn SyncDocs,
    ) {
        let Some(collection) = self.admit(doc, name, false, docs) else {
            return;
        };
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

    /// Passes a presence payload on: for a document of a subscribed
    /// collection (its own), within the size limit; reading is enough.
    fn on_ephemeral(
        &mut self,
        doc: DocId,
        name: &str,
        session: String,
        count: u64,
        data: Vec<u8>,
        docs: &dyn SyncDocs,
    ) {
        if let Err((code, text)) = self.usage.ephemeral(&session, &data) {
            return self.fail(code, text, Some(doc));
        }
        let Some(collection) = self.admit(doc, name, false, docs) else {
            return;
        };
        let Some(sender) = self.peer().map(|p| p.as_str().to_owned()) else {
            return;
        };
        let frame = Frame::Ephemeral {
            doc,
            collection: collection.to_string(),
            sender,
            session,
            count,
            data,
        };
        self.out.push(RelayOutput::Ephemeral {
            doc,
            collection,
            frame,
        });
    }

    /// Applies a deletion and acknowledges it once stored (also when the
    /// document was deleted already: the relay holds the tombstone).
    fn on_delete(&mut self, doc: DocId, name: &str, docs: &dyn SyncDocs) {
        let Some(collection) = self.admit(doc, name, true, docs) else {
            return;
        };
        let Some(peer) = self.peer().cloned() else {
            return;
        };
        match docs.delete(&doc, &collection, &peer) {
            Ok(newly) => {
                self.out.push(RelayOutput::Send(Frame::DeleteAck { doc }));
                if newly {
                    self.out.push(RelayOutput::Deleted { doc, collection });
                }
            }
            Err(e) => self.fail(error_code(&e), error_text(&e), Some(doc)),
        }
    }
}

// Grants that end, and grants replaced on the open connection.
impl RelaySession {
    /// When the session next needs [`RelaySession::tick`], in the clock of
    /// `now_ms` (ms since the Unix epoch): the end of the connection's
    /// grant, if it has one. The runtime wakes then even if the peer stays
    /// silent.
    pub fn deadline(&self) -> Option<u64> {
        self.grant().and_then(Grant::expires_at_ms)
    }

    /// Time passed: once the grant has ended, closes the connection with
    /// [`ErrorCode::TOKEN_EXPIRED`]. Nothing happens before that.
    pub fn tick(&mut self, now_ms: u64) -> Vec<RelayOutput> {
        self.expired(now_ms);
        std::mem::take(&mut self.out)
    }

    /// From the grant's end on, refuses everything: closes the connection
    /// with `token_expired`. Returns whether it did.
    fn expired(&mut self, now_ms: u64) -> bool {
        let Some(end) = self.deadline() else {
            return false;
        };
        if now_ms < end {
            return false;
        }
        let text = format!(
            "the connection's token expired {} s ago; connect again with a fresh token \
             (or send Reauth with one before the current one expires)",
            (now_ms - end) / 1000
        );
        self.fail(ErrorCode::TOKEN_EXPIRED, text, None);
        true
    }

    /// A fresh token on the open connection: checked like the one of
    /// `Hello`. Refused, it closes the connection with `unauthorized`;
    /// accepted, it replaces the grant (writes are checked against it from
    /// the next frame on) and drops the subscriptions it cannot read, each
    /// with a non-fatal `forbidden` naming the collection.
    fn on_reauth(&mut self, token: &str, now_ms: u64, access: &dyn Access) {
        let grant = match access.check(token, now_ms) {
            Ok(grant) => grant,
            Err(reason) => {
                return self.fail(ErrorCode::UNAUTHORIZED, format!("reauth: {reason}"), None)
            }
        };
        let unreadable: Vec<Collection> = self
            .subscriptions
            .iter()
            .filter(|c| !grant.can_read(c))
            .cloned()
            .collect();
        for collection in unreadable {
            self.subscriptions.remove(&collection);
            self.listings.retain(|l| l.collection != collection);
            self.out.push(RelayOutput::Unsubscribed(collection.clone()));
            let text = format!(
                "the new token grants no right to read collection '{collection}'; unsubscribed"
            );
            self.refuse_subscription(collection.to_string(), ErrorCode::FORBIDDEN, text);
        }
        let expires_at_ms = grant.expires_at_ms();
        if let Phase::Ready { grant: current, .. } = &mut self.phase {
            *current = grant;
        }
        // Rights may have changed on what stays subscribed.
        let kept: Vec<Collection> = self.subscriptions.iter().cloned().collect();
        for collection in &kept {
            self.confirm_subscription(collection);
        }
        self.out
            .push(RelayOutput::Send(Frame::Reauthorized { expires_at_ms }));
    }
}

/// The sync-state key of `peer` under `subject`: `<subject>/<digest of
/// the peer id>` (bounded length, grouped by subject), or the peer id
/// itself without a subject.
pub(super) fn state_key(subject: Option<&str>, peer: &PeerId) -> PeerId {
    let Some(subject) = subject else {
        return peer.clone();
    };
    let digest = crate::id::digest_hex(peer.as_str().as_bytes(), 16);
    let key = format!("{}{digest}", subject_prefix(subject));
    PeerId::new(key).unwrap_or_else(|_| peer.clone())
}

/// The prefix of every sync-state key under `subject` (at most 48 bytes
/// of it are used).
pub(super) fn subject_prefix(subject: &str) -> String {
    let short: String = subject.chars().take(48).collect();
    format!("{short}/")
}

/// Where a listing stands: as it was, or, before its first page, from the
/// collection's sequence number read now and the cursor if it still holds
/// (a number above the sequence means the database is not the one that
/// issued it, such as a restored copy: everything is listed then).
fn start(listing: &Listing, docs: &dyn SyncDocs) -> crate::Result<Started> {
    if let Some(started) = listing.started {
        return Ok(started);
    }
    let seq = docs.collection_seq(&listing.collection)?;
    let since = listing.cursor.as_ref().map(|c| c.seq).filter(|s| *s <= seq);
    let after = match since {
        Some(since) => Position::Seq(since),
        None => Position::Id(None),
    };
    Ok(Started { since, seq, after })
}

/// One page of a listing, sorted into what goes whole and what is
/// announced.
struct Split {
    /// Documents announced (tombstones, and those that cannot go whole).
    announced: Vec<DocSummary>,
    /// Documents sent whole.
    whole: Vec<WholeDoc>,
    /// Where the page ends (`None`: it is empty).
    last: Option<Position>,
    /// Whether the page was cut short at [`WHOLE_FRAME_BYTES`]: the
    /// listing goes on from `last`.
    cut: bool,
}

/// Sends the live documents of a page whole, as far as their saved forms
/// fit in one `Documents` frame; the page ends at the first that does not.
fn split_whole(page: Vec<(Position, DocSummary)>, docs: &dyn SyncDocs) -> crate::Result<Split> {
    let mut split = Split {
        announced: Vec::new(),
        whole: Vec::new(),
        last: None,
        cut: false,
    };
    let mut bytes = 0usize;
    for (position, summary) in page {
        let saved = match summary.deleted {
            true => None,
            false => docs
                .saved_form(&summary.doc, MAX_WHOLE_DOC_BYTES)?
                .filter(|data| data.len() <= MAX_WHOLE_DOC_BYTES),
        };
        match saved {
            Some(data) => {
                if bytes + data.len() > WHOLE_FRAME_BYTES && !split.whole.is_empty() {
                    split.cut = true;
                    break;
                }
                bytes += data.len();
                split.whole.push(WholeDoc {
                    doc: summary.doc,
                    data,
                });
            }
            None => split.announced.push(summary),
        }
        split.last = Some(position);
    }
    Ok(split)
}

/// The `Listing` frame that heads a listing.
fn listing_frame(collection: &str, started: Started) -> Frame {
    Frame::Listing {
        collection: collection.to_owned(),
        since: started.since,
        seq: started.seq,
    }
}

/// Whether this relay speaks protocol `version`.
fn accepted(version: u32) -> bool {
    (OLDEST_ACCEPTED_VERSION..=PROTOCOL_VERSION).contains(&version)
}

fn unsupported(version: u32) -> String {
    format!(
        "protocol version {version} is not supported; this relay speaks {OLDEST_ACCEPTED_VERSION} to {PROTOCOL_VERSION}"
    )
}

/// The code a peer is told when the guard refuses its bytes.
pub(crate) fn guard_code(error: &GuardError) -> ErrorCode {
    match error {
        GuardError::TooLarge { .. } => ErrorCode::TOO_LARGE,
        _ => ErrorCode::BAD_DOCUMENT,
    }
}
