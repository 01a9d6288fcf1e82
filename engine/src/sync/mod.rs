//! The sync core: sans-IO state machines for both ends of a connection.
//!
//! Nothing here imports tokio, rusqlite or a socket type, nor anything from
//! `crate::replica`. Inputs are method calls (a connection opened or closed,
//! a frame received, a local change, a tick with the current time in
//! milliseconds) and outputs are plain data returned to the caller (frames
//! to send, sync states to persist, events). Documents are reached through
//! the [`SyncDocs`] trait, which applies and persists received changes
//! before the reply that acknowledges them is generated; `Replica`
//! implements it, in the replica module.
//!
//! Every decision the relay makes lives here, so the relay's tokio tasks
//! only carry messages and the deterministic simulation
//! (`engine/tests/simulation.rs`) runs exactly the code `accord-relay` runs.
//!
//! - [`protocol`]: the frames and error codes.
//! - [`access`]: what a token grants ([`Grant`], [`Access`]).
//! - [`limits`]: per-connection message rate and document caps.
//! - [`session`]: [`RelaySession`], the relay's side of one connection.
//! - [`hub`]: [`DocHub`], the relay's side of one document: every peer's
//!   sync state, batching, attach and detach, errors.
//! - [`registry`]: [`Subscribers`], which connection listens to which
//!   collection: the relay's fan-out table.
//! - [`client`]: [`ClientSession`], a replica's side of one connection,
//!   and [`SyncCheck`], what `wait_synced` waits for.
//! - `exchange`: the per-(peer, document) bookkeeping both ends share.
//! - [`repo_wire`]: the automerge-repo protocol's messages and their CBOR
//!   form, for the relay's `/automerge-repo` door.
//! - [`repo_session`]: [`RepoSession`], the relay's side of one
//!   automerge-repo connection (its handshake, tokens and checks; past
//!   them, its documents go to the same hubs as native ones).

pub mod access;
pub mod client;
mod exchange;
pub mod hub;
pub mod limits;
pub mod protocol;
pub mod registry;
pub mod repo_session;
pub mod repo_wire;
pub mod session;

use automerge::sync::{Message, State};

use crate::error::{Error, Result, StoreError};
use crate::id::{Collection, DocId, Heads, PeerId};

pub use access::{Access, Grant, OpenAccess, Right};
pub use client::{
    CheckOutcome, ClientConfig, ClientOutput, ClientSession, SessionEvent, SessionStats, SyncCheck,
};
pub use hub::{DocHub, HubInput, HubOutput};
pub use limits::Limits;
pub use protocol::{
    Cursor, DocSummary, ErrorCode, Frame, Packer, SubscribeFrom, SubscribeRequest, WholeDoc,
    MAX_FRAMES_PER_MESSAGE, OLDEST_ACCEPTED_VERSION, PACKED_BYTES, PACKED_BYTES_BEFORE_WELCOME,
    PACKED_SINCE, PROTOCOL_VERSION,
};
pub use registry::{ConnId, Subscriber, Subscribers};
pub use repo_session::{RepoOutput, RepoSession};
pub use session::{Announcing, RelayOutput, RelaySession};

/// How long a sync message may wait for its answer before the exchange is
/// restarted from the shared heads (ms). Over a live WebSocket answers do
/// not get lost; this recovers from peers that drop messages anyway.
pub const RETRY_AFTER_MS: u64 = 10_000;

/// How long a replica waits before offering a document again after the
/// relay could not store it (`storage_unavailable`, ms).
pub const STORAGE_RETRY_MS: u64 = 1_000;

/// What this side knows about a document without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    /// Its collection.
    pub collection: Collection,
    /// Its heads.
    pub heads: Heads,
    /// Whether it carries a tombstone.
    pub deleted: bool,
}

/// One peer's encoded sync state for one document, to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedState {
    /// The document.
    pub doc: DocId,
    /// `automerge::sync::State::encode()`.
    pub bytes: Vec<u8>,
}

/// What merging a document sent whole did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Whether the document changed.
    pub changed: bool,
    /// Whether it was created (this side did not have it).
    pub created: bool,
    /// The heads of what was sent (what the sender holds).
    pub heads: Heads,
}

/// A document with the number of its latest write in its collection's
/// sequence (in the database that read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedSummary {
    /// The number.
    pub seq: u64,
    /// The document.
    pub summary: DocSummary,
}

/// How far a replica has fully synced a collection with a relay: what it
/// keeps between connections to ask only for what changed since.
///
/// Two sequences meet here and must not be confused: `relay_seq` numbers
/// the relay database's writes, `local_seq` this replica's own. The pair
/// says: every change the relay numbered up to `relay_seq` is held here,
/// and every local document last written at or below `local_seq` was held
/// by the relay, when the cursor was saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCursor {
    /// The relay (its `Welcome.relay_id`) whose sequence `relay_seq` is.
    pub relay: PeerId,
    /// A number of the relay's sequence of the collection.
    pub relay_seq: u64,
    /// A number of this replica's own sequence of the collection.
    pub local_seq: u64,
    /// Whether the relay let this replica write the collection on the
    /// connection that saved the cursor: the next connection then sends
    /// the changes made offline in its first message (protocol.md, 7.4).
    pub write: bool,
}

/// The documents a sync session works on.
pub trait SyncDocs: std::fmt::Debug {
    /// Every document of a collection (deleted ones included), with heads.
    fn summaries(&self, collection: &Collection) -> Result<Vec<DocSummary>>;
    /// At most `limit` documents of a collection (deleted ones included)
    /// whose ids come after `after`, in id order: one page of a listing.
    fn summaries_page(
        &self,
        collection: &Collection,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocSummary>>;
    /// The last number the collection's sequence gave out (0: none yet).
    fn collection_seq(&self, collection: &Collection) -> Result<u64>;
    /// At most `limit` documents of a collection whose latest write is
    /// numbered above `since` in its sequence, in number order (deleted
    /// ones included; `since` 0: every document).
    fn summaries_since(
        &self,
        collection: &Collection,
        since: u64,
        limit: usize,
    ) -> Result<Vec<NumberedSummary>>;
    /// The cursor this side keeps for a collection (a replica keeps one,
    /// for the relay it last fully synced it with).
    fn sync_cursor(&self, collection: &Collection) -> Result<Option<SyncCursor>>;
    /// Replaces a collection's cursor; committed with the writes it is
    /// made inside of (`commit_together`), never before them.
    fn save_sync_cursor(&self, collection: &Collection, cursor: &SyncCursor) -> Result<()>;
    /// A document's collection, heads and tombstone, if it is known.
    fn local_state(&self, doc: &DocId) -> Result<Option<LocalState>>;
    /// The document's current heads (empty if unknown).
    fn heads(&self, doc: &DocId) -> Result<Heads>;
    /// Whether the history up to `of` contains every change in `heads`;
    /// `None` while `of` names changes this side does not have yet (or the
    /// document is unknown), so the question cannot be answered.
    fn covers(&self, doc: &DocId, heads: &Heads, of: &Heads) -> Result<Option<bool>>;
    /// Generates the next sync message for a peer (for an unknown
    /// document, as an empty one). A document stored in another collection
    /// is refused with [`Error::WrongCollection`]: its content never
    /// reaches a peer that named the wrong collection.
    fn generate(
        &self,
        doc: &DocId,
        collection: &Collection,
        state: &mut State,
    ) -> Result<Option<Message>>;
    /// Applies a sync message and persists any new changes before
    /// returning; creates the document in `collection` if it was unknown
    /// and the message brought content. Returns whether anything changed.
    fn receive(
        &self,
        doc: &DocId,
        collection: &Collection,
        state: &mut State,
        message: Message,
        from: &PeerId,
    ) -> Result<bool>;
    /// A document's saved form, for sending it whole: its stored chunks
    /// concatenated (what `Automerge::load` reads), or `None` when it
    /// cannot go whole (unknown, deleted, damaged, stored in more than
    /// `max_bytes`, or a store that does not keep documents that way); the
    /// listing then announces it instead. A document over `max_bytes` is
    /// not read.
    fn saved_form(&self, doc: &DocId, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        let _ = (doc, max_bytes);
        Ok(None)
    }
    /// Merges a document sent whole (`data`, checked like any bytes from
    /// outside) into `doc`, creating it in `collection` if it is unknown,
    /// and persists it before returning.
    fn receive_whole(
        &self,
        doc: &DocId,
        collection: &Collection,
        data: &[u8],
        from: &PeerId,
    ) -> Result<Received>;
    /// Records a tombstone; returns whether the document was not deleted yet.
    fn delete(&self, doc: &DocId, collection: &Collection, from: &PeerId) -> Result<bool>;
    /// The stored sync state of a peer for a document.
    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Result<Option<State>>;
    /// Persists sync states of a peer.
    fn save_sync_states(&self, peer: &PeerId, states: Vec<EncodedState>) -> Result<()>;
    /// Runs `work` with every write it makes held for one commit at the
    /// end, and fails if that commit does (then nothing derived inside may
    /// be sent: the caller starts over). Stores without such batching run
    /// `work` and commit as they go.
    fn commit_together(&self, work: &mut dyn FnMut()) -> Result<()> {
        work();
        Ok(())
    }
    /// Whether writes held for the commit at the end of the current
    /// [`SyncDocs::commit_together`] will number documents in a
    /// collection's sequence: a local number read now would not cover
    /// them, so no cursor is saved until they are committed.
    fn numbering_held(&self) -> bool {
        false
    }
    /// Drops the sync states of the peers whose keys start with `prefix`,
    /// all but the `keep` most recently updated and `current`.
    fn retire_sync_states(&self, prefix: &str, keep: usize, current: &PeerId) -> Result<()>;
}

/// The error code that tells a peer why its frame about a document failed
/// on this side. Storage failures are [`ErrorCode::STORAGE_UNAVAILABLE`]:
/// nothing is wrong with the peer's data, and it should try again later.
pub fn error_code(error: &Error) -> ErrorCode {
    match error {
        Error::WrongCollection { .. } => ErrorCode::WRONG_COLLECTION,
        Error::TooLarge { .. } => ErrorCode::TOO_LARGE,
        Error::Guard(e) => session::guard_code(e),
        Error::BadCollection(_) => ErrorCode::BAD_NAME,
        Error::Automerge { .. } | Error::NotAutomerge(_) | Error::BadSyncData { .. } => {
            ErrorCode::BAD_DOCUMENT
        }
        Error::Store(StoreError::Corrupt { .. }) => ErrorCode::STORAGE_UNAVAILABLE,
        Error::Store(_) | Error::Closed => ErrorCode::STORAGE_UNAVAILABLE,
        _ => ErrorCode::INTERNAL,
    }
}

/// The text sent with [`error_code`]: a storage failure's details stay in
/// this side's logs; the peer learns only that storing failed.
pub fn error_text(error: &Error) -> String {
    match error_code(error) {
        ErrorCode::STORAGE_UNAVAILABLE => "the relay could not store this; try again later".into(),
        _ => error.to_string(),
    }
}
