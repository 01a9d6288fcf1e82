//! One (peer, document) exchange: Automerge's sync state plus what this
//! side adds to it. Both ends keep one per document they sync with each
//! peer: the client per document with its relay, the relay's hub per peer
//! attached to a document.
//!
//! Automerge's sync protocol ends with one side silent, so each message
//! says whether its sender waits for an answer (`want_reply`); an answer
//! that never comes is given up on after [`RETRY_AFTER_MS`] and the
//! exchange restarts from the shared heads, as after a reconnect.

use automerge::sync::{ChunkList, Message, MessageVersion, State};
use automerge::ChangeHash;

use super::{EncodedState, SyncDocs, RETRY_AFTER_MS};
use crate::error::Result;
use crate::id::{Collection, DocId};

/// The state of one exchange.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// Automerge's sync state with the peer.
    state: State,
    /// The shared heads last persisted, to persist only on change.
    saved: Vec<ChangeHash>,
    /// When our last message went out, while it awaits an answer.
    in_flight_since: Option<u64>,
    /// Whether our last message asked the peer for changes.
    asked: bool,
}

/// A message generated for the peer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The message.
    pub message: Message,
    /// Whether the peer will answer it (so we wait).
    pub want_reply: bool,
}

impl Exchange {
    /// An exchange resuming from a persisted state, if any.
    pub(crate) fn resume(state: Option<State>) -> Self {
        let state = state.unwrap_or_default();
        Exchange {
            saved: state.shared_heads.clone(),
            state,
            in_flight_since: None,
            asked: false,
        }
    }

    /// Marks the peer as one whose changes are not accepted: Automerge then
    /// never asks it for changes nor applies any, and flags its messages
    /// read-only, so the peer stops offering its own changes.
    pub(crate) fn set_read_only(&mut self, read_only: bool) {
        self.state.read_only = read_only;
    }

    /// Whether our last message still awaits its answer.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight_since.is_some()
    }

    /// Whether the answer to our last message is overdue at `now`.
    pub(crate) fn stalled(&self, now: u64) -> bool {
        self.in_flight_since
            .is_some_and(|t| now.saturating_sub(t) >= RETRY_AFTER_MS)
    }

    /// When the answer to our last message becomes overdue.
    pub(crate) fn deadline(&self) -> Option<u64> {
        self.in_flight_since
            .map(|t| t.saturating_add(RETRY_AFTER_MS))
    }

    /// The heads the peer told us it has, if it did.
    pub(crate) fn their_heads(&self) -> Option<&[ChangeHash]> {
        self.state.their_heads.as_deref()
    }

    /// The peer sent the document whole, with `heads`: unless a message of
    /// ours awaits its answer, the exchange resumes from those heads as
    /// shared (persisted like any shared heads that moved), as if a sync
    /// had just ended there.
    pub(crate) fn peer_holds(&mut self, heads: &[ChangeHash]) {
        if self.in_flight() {
            return;
        }
        let mut state = State::new();
        state.read_only = self.state.read_only;
        state.shared_heads = heads.to_vec();
        self.state = state;
        self.asked = false;
    }

    /// Forgets everything but the shared heads (as a restart would) and
    /// stops waiting; returns whether a message was in flight.
    pub(crate) fn restart(&mut self) -> bool {
        let read_only = self.state.read_only;
        self.state = State::decode(&self.state.encode()).unwrap_or_default();
        self.state.read_only = read_only;
        self.in_flight_since.take().is_some()
    }

    /// A message from the peer arrived; returns whether one of ours was in
    /// flight (this answers it). If our last message asked for changes
    /// and this answer brings none, the peer believes it sent them already
    /// (its `sent_hashes` outlived a lost message), so our next message
    /// carries Automerge's sync-reset flag; without it the two sides can
    /// exchange the same need and the same empty answer forever.
    pub(crate) fn answered(&mut self, incoming: &Message) -> bool {
        if self.asked && incoming.changes.is_empty() {
            self.state.needs_reset = true;
        }
        self.asked = false;
        self.in_flight_since.take().is_some()
    }

    /// Applies a message from the peer through `docs`. A failure leaves
    /// the exchange restarted from the shared heads.
    pub(crate) fn receive(
        &mut self,
        docs: &dyn SyncDocs,
        doc: &DocId,
        collection: &Collection,
        message: Message,
        from: &crate::id::PeerId,
    ) -> Result<bool> {
        let result = docs.receive(doc, collection, &mut self.state, message, from);
        if result.is_err() {
            self.restart();
        }
        result
    }

    /// The next message for the peer, if Automerge has one (none while a
    /// message is in flight: Automerge holds it back anyway).
    pub(crate) fn generate(
        &mut self,
        docs: &dyn SyncDocs,
        doc: &DocId,
        collection: &Collection,
        now: u64,
    ) -> Result<Option<Outgoing>> {
        let Some(message) = docs.generate(doc, collection, &mut self.state)? else {
            return Ok(None);
        };
        Ok(Some(self.sent(message, now)))
    }

    /// Records a message going out: it waits for an answer unless it is
    /// the silent end of the protocol.
    pub(crate) fn sent(&mut self, message: Message, now: u64) -> Outgoing {
        self.asked = !message.need.is_empty();
        let want_reply = self.awaits_answer(&message);
        if want_reply {
            self.in_flight_since.get_or_insert(now);
        }
        Outgoing {
            message,
            want_reply,
        }
    }

    /// Whether the peer will answer `message`. A message that brings no
    /// changes, needs nothing, and states heads the peer already has gets
    /// no reply, so it must not hold an in-flight place or be retried.
    fn awaits_answer(&self, message: &Message) -> bool {
        let asks_nothing = message.changes.is_empty() && message.need.is_empty();
        if asks_nothing && self.state.is_peer_read_only() {
            // A read-only peer takes none of our changes, so it may never
            // hold our heads: a message that only states them is not
            // answered (else the two would trade heads for ever).
            return false;
        }
        let peer_has_our_heads = self.state.their_heads.as_ref().is_some_and(|theirs| {
            let mut theirs = theirs.clone();
            let mut ours = message.heads.clone();
            theirs.sort();
            ours.sort();
            theirs == ours
        });
        !(message.changes.is_empty() && message.need.is_empty() && peer_has_our_heads)
    }

    /// The state to persist if the shared heads moved since last saved.
    pub(crate) fn take_dirty(&mut self, doc: DocId) -> Option<EncodedState> {
        if self.state.shared_heads == self.saved {
            return None;
        }
        self.saved = self.state.shared_heads.clone();
        Some(EncodedState {
            doc,
            bytes: self.state.encode(),
        })
    }
}

/// A message that only states our heads: the answer owed to a peer that
/// wants a reply when Automerge has nothing to send. It asks for nothing and
/// claims no `have`, so the receiver sends nothing back unless it really
/// lacks something.
pub(crate) fn heads_only(heads: Vec<ChangeHash>) -> Message {
    Message {
        heads,
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::empty(),
        flags: None,
        version: MessageVersion::V1,
    }
}
