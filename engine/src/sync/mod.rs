//! The sync core: sans-IO state machines for both ends of a connection.
//!
//! Nothing here imports tokio, rusqlite or a socket type. Inputs are method
//! calls (a connection opened or closed, a frame received, a local change,
//! a tick with the current time in milliseconds) and outputs are plain data
//! returned to the caller (frames to send, sync states to persist, events).
//! Documents are reached through the [`SyncDocs`] trait, which applies and
//! persists received changes before the reply that acknowledges them is
//! generated; `Replica` implements it, in the replica module.
//!
//! - [`protocol`]: the frames and error codes.
//! - [`client`]: [`ClientSession`], a replica's side of one connection.
//! - [`limits`]: per-connection message rate and document caps.
//! - [`relay`]: [`RelaySession`], the relay's side of one connection, and
//!   [`DocHub`], the relay's per-document fan-out to every peer.

pub mod client;
pub mod limits;
pub mod protocol;
pub mod relay;

use automerge::sync::{ChunkList, Message, MessageVersion, State};
use automerge::ChangeHash;

use crate::error::Result;
use crate::id::DocId;

pub use client::{
    ClientConfig, ClientOutput, ClientSession, SessionEvent, SessionStats, SyncTarget,
};
pub use limits::Limits;
pub use protocol::{DocSummary, ErrorCode, Frame, PROTOCOL_VERSION};
pub use relay::{Access, DocHub, Grant, OpenAccess, RelayOutput, RelaySession};

/// How long a sync message may wait for its answer before the exchange is
/// restarted from the shared heads (ms). Over a live WebSocket answers do
/// not get lost; this recovers from peers that drop messages anyway.
pub const RETRY_AFTER_MS: u64 = 10_000;

/// The documents a sync session works on.
pub trait SyncDocs: std::fmt::Debug {
    /// Every document of a collection (deleted ones included), with heads.
    fn summaries(&self, collection: &str) -> Result<Vec<DocSummary>>;
    /// A document's collection, heads and tombstone, if it is known.
    fn local_state(&self, doc: &DocId) -> Result<Option<(String, Vec<ChangeHash>, bool)>>;
    /// The document's current heads (empty if unknown).
    fn heads(&self, doc: &DocId) -> Result<Vec<ChangeHash>>;
    /// Whether the history up to `of` contains every change in `heads`;
    /// `None` while `of` names changes this side does not have yet (or the
    /// document is unknown), so the question cannot be answered.
    fn covers(&self, doc: &DocId, heads: &[ChangeHash], of: &[ChangeHash]) -> Result<Option<bool>>;
    /// Generates the next sync message for a peer (for an unknown document,
    /// as an empty one).
    fn generate(&self, doc: &DocId, state: &mut State) -> Result<Option<Message>>;
    /// Applies a sync message and persists any new changes before
    /// returning; creates the document in `collection` if it was unknown
    /// and the message brought content. Returns whether anything changed.
    fn receive(
        &self,
        doc: &DocId,
        collection: &str,
        state: &mut State,
        message: Message,
        from: &str,
    ) -> Result<bool>;
    /// Records a tombstone; returns whether the document was not deleted yet.
    fn delete(&self, doc: &DocId, collection: &str, from: &str) -> Result<bool>;
    /// The stored sync state of a peer for a document.
    fn load_sync_state(&self, peer: &str, doc: &DocId) -> Result<Option<State>>;
    /// Persists sync states (encoded) of a peer.
    fn save_sync_states(&self, peer: &str, states: Vec<(DocId, Vec<u8>)>) -> Result<()>;
}

/// The state to resume from after a lost message or a reconnect: only the
/// shared heads survive, as they would after a restart.
pub(crate) fn restart_state(state: &State) -> State {
    State::decode(&state.encode()).unwrap_or_default()
}

/// Whether the peer will answer `message`. Automerge's protocol ends with
/// one side falling silent: a message that brings no changes, needs
/// nothing, and states heads the peer already has gets no reply, so it must
/// not hold an in-flight slot or be retried.
pub(crate) fn awaits_answer(state: &State, message: &Message) -> bool {
    let peer_has_our_heads = state.their_heads.as_ref().is_some_and(|theirs| {
        let mut theirs = theirs.clone();
        let mut ours = message.heads.clone();
        theirs.sort();
        ours.sort();
        theirs == ours
    });
    !(message.changes.is_empty() && message.need.is_empty() && peer_has_our_heads)
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

/// Called with each received message: if our last message asked for
/// changes (`need`) and this answer brings none, the peer believes it sent
/// them already (its `sent_hashes` outlived a lost message), so the next
/// message we generate carries Automerge's sync-reset flag, which makes the
/// peer forget what it thinks it sent. Without this the two sides can
/// exchange the same need and the same empty answer forever.
pub(crate) fn note_answer(state: &mut State, asked: &mut bool, incoming: &Message) {
    if *asked && incoming.changes.is_empty() {
        state.needs_reset = true;
    }
    *asked = false;
}
