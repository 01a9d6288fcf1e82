//! One (peer, document) exchange: Automerge's sync state plus what this
//! side adds to it. Both ends keep one per document they sync with each
//! peer: the client per document with its relay, the relay's hub per peer
//! attached to a document.
//!
//! Automerge's sync protocol ends with one side silent, so each message
//! says whether its sender waits for an answer (`want_reply`); an answer
//! that never comes is given up on after [`RETRY_AFTER_MS`] and the
//! exchange restarts from the shared heads, as after a reconnect.

use automerge::sync::{BloomFilter, Capability, ChunkList, Have, Message, MessageVersion, State};
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

/// Messages generated during one pass over a document's peers, by the
/// state each peer's exchange was in: Automerge's message depends only on
/// the document and that state, so a peer in the same state as one before
/// it (a reader keeping up, like every other reader) takes the same message
/// and the same next state without generating and encoding it again.
/// Valid while the document does not change: make one per pass.
#[derive(Debug, Default)]
pub(crate) struct Generated {
    /// (state before, state after, what was generated).
    seen: Vec<(State, State, Option<Encoded>)>,
}

/// A generated message: its gist and its encoding.
type Encoded = (Gist, Vec<u8>);

/// What deciding whether a message awaits an answer looks at.
#[derive(Debug, Clone)]
struct Gist {
    /// It asks for changes.
    asks: bool,
    /// It brings changes.
    brings: bool,
    /// The heads it states.
    heads: Vec<ChangeHash>,
}

impl Gist {
    fn of(message: &Message) -> Gist {
        Gist {
            asks: !message.need.is_empty(),
            brings: !message.changes.is_empty(),
            heads: message.heads.clone(),
        }
    }
}

/// How many distinct states one pass remembers (peers in the same state
/// are what makes it pay; a long tail of distinct ones does not).
const GENERATED_STATES: usize = 8;

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

    /// For an exchange resumed from a persisted state with a peer that
    /// takes our changes: acts as if the peer had just said it holds
    /// exactly the shared heads and nothing else, so the first message
    /// brings every change made since, instead of waiting a round trip
    /// for the peer's own summary. Changes the peer has after all cost
    /// only their bytes; its answer corrects the state either way. The
    /// peer is taken to read version-2 sync messages (every Accord relay
    /// does), so that many changes travel as one compressed document, as
    /// they would once the peer had said so.
    pub(crate) fn offer_changes_at_once(&mut self) {
        let shared = self.state.shared_heads.clone();
        self.state.their_capabilities = Some(vec![Capability::MessageV1, Capability::MessageV2]);
        self.state.their_heads = Some(shared.clone());
        self.state.their_need = Some(Vec::new());
        self.state.their_have = Some(vec![Have {
            last_sync: shared,
            bloom: BloomFilter::default(),
        }]);
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

    /// [`Exchange::generate`], with the message encoded, through `pass`:
    /// taken from it when an earlier peer of the pass was in this state,
    /// recorded in it (when `more` peers follow) otherwise.
    pub(crate) fn generate_encoded(
        &mut self,
        docs: &dyn SyncDocs,
        doc: &DocId,
        collection: &Collection,
        now: u64,
        pass: &mut Generated,
        more: bool,
    ) -> Result<Option<(bool, Vec<u8>)>> {
        let known = pass
            .seen
            .iter()
            .find(|(before, _, _)| *before == self.state);
        let generated = match known {
            Some((_, after, generated)) => {
                self.state = after.clone();
                generated.clone()
            }
            None => {
                let remember = more && pass.seen.len() < GENERATED_STATES;
                let before = remember.then(|| self.state.clone());
                let generated = docs
                    .generate(doc, collection, &mut self.state)?
                    .map(|message| (Gist::of(&message), message.encode()));
                if let Some(before) = before {
                    pass.seen
                        .push((before, self.state.clone(), generated.clone()));
                }
                generated
            }
        };
        Ok(generated.map(|(gist, bytes)| (self.record(&gist, now), bytes)))
    }

    /// Records a message going out: it waits for an answer unless it is
    /// the silent end of the protocol.
    pub(crate) fn sent(&mut self, message: Message, now: u64) -> Outgoing {
        let want_reply = self.record(&Gist::of(&message), now);
        Outgoing {
            message,
            want_reply,
        }
    }

    /// [`Exchange::sent`] for a message known by its gist; returns whether
    /// it waits for an answer.
    fn record(&mut self, message: &Gist, now: u64) -> bool {
        self.asked = message.asks;
        let want_reply = self.awaits_answer(message);
        if want_reply {
            self.in_flight_since.get_or_insert(now);
        }
        want_reply
    }

    /// Whether the peer will answer `message`. A message that brings no
    /// changes, needs nothing, and states heads the peer already has gets
    /// no reply, so it must not hold an in-flight place or be retried.
    fn awaits_answer(&self, message: &Gist) -> bool {
        let asks_nothing = !message.brings && !message.asks;
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
        !(asks_nothing && peer_has_our_heads)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Replica;

    /// What `generate` gives an exchange resumed from `state`, encoded,
    /// and the state it leaves.
    fn alone(
        replica: &Replica,
        doc: &DocId,
        collection: &Collection,
        state: Option<State>,
    ) -> ((bool, Vec<u8>), State) {
        let mut exchange = Exchange::resume(state);
        let out = exchange
            .generate(replica, doc, collection, 0)
            .expect("generate")
            .expect("a message");
        (
            (out.want_reply, out.message.encode()),
            exchange.state.clone(),
        )
    }

    #[test]
    fn peers_in_the_same_state_share_one_generated_message() {
        let relay = Replica::open_in_memory().expect("replica");
        let collection = Collection::new("notes").expect("collection");
        let doc = relay
            .create("notes", &serde_json::json!({"n": 1}))
            .expect("create");
        let (expected, after) = alone(&relay, &doc, &collection, None);

        let mut pass = Generated::default();
        let mut peers: Vec<Exchange> = (0..3).map(|_| Exchange::resume(None)).collect();
        for (i, peer) in peers.iter_mut().enumerate() {
            let out = peer
                .generate_encoded(&relay, &doc, &collection, 0, &mut pass, i < 2)
                .expect("generate")
                .expect("a message");
            assert_eq!(out, expected, "peer {i}");
            assert_eq!(peer.state, after, "peer {i}");
            assert!(peer.in_flight(), "peer {i} waits for its answer");
        }
        assert_eq!(pass.seen.len(), 1, "generated once for three peers");

        // A peer in another state (it holds the document) gets its own.
        let mut holds = State::new();
        holds.shared_heads = relay.heads(&doc).expect("heads").into_vec();
        let (expected, after) = alone(&relay, &doc, &collection, Some(holds.clone()));
        let mut other = Exchange::resume(Some(holds));
        let out = other
            .generate_encoded(&relay, &doc, &collection, 0, &mut pass, false)
            .expect("generate")
            .expect("a message");
        assert_eq!((out, other.state), (expected, after));
        assert_eq!(pass.seen.len(), 1, "the last peer's state is not kept");
    }
}
