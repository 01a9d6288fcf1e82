//! The relay's side of one automerge-repo connection, without I/O.
//!
//! [`RepoSession`] speaks the automerge-repo network protocol "1" (the
//! messages of [`super::repo_wire`]) and decides what the native
//! [`super::RelaySession`] decides for Accord replicas: the handshake
//! (`join` → `peer`, or an `error` and a close), the token and what it
//! grants, limits, and which document hub each sync message goes to.
//! Past the checks, both doors share everything: a document's
//! [`super::DocHub`] syncs automerge-repo peers and native replicas alike,
//! and [`outbound`] translates what a hub sends into this protocol.
//!
//! What differs from the native door:
//!
//! - Peers name documents, not collections. A document the relay holds is
//!   served from its own collection if the token may read it; otherwise
//!   (or if it was deleted, or never existed) a `request` is answered with
//!   `doc-unavailable`, which tells the client nothing about other
//!   collections. A document the relay does not hold yet is created by the
//!   first `sync` that brings content, in the token's one writable
//!   collection or else the relay's default collection.
//! - Requesting or syncing a document opens it for the connection
//!   ([`RepoOutput::Open`]): from then on the connection hears of its
//!   changes, as a native subscriber of the collection does.
//! - A read-only peer's changes are taken out of its messages (counted,
//!   never stored or forwarded) and the rest of each message is applied,
//!   so it keeps receiving everyone else's changes.
//! - Sync states are kept under the peer's storage id (or its peer id when
//!   it has no storage), qualified by the token as for native peers, so a
//!   returning browser resumes without sending its history again.
//! - `ephemeral` messages (presence) for an opened document go to everyone
//!   else who listens to it, as a native `Ephemeral` frame the registry
//!   encodes for each listener's protocol (`RelayOutput::Ephemeral`).
//! - `remote-subscription-change` and `remote-heads-changed` are accepted
//!   and not acted on: the relay answers every sync message (with its
//!   heads when it has nothing else to say), which is how a client learns
//!   that the relay's storage holds its changes.

use std::collections::BTreeMap;

use automerge::sync::{ChunkList, Message};

use super::access::{Access, Grant};
use super::limits::{Limits, Usage};
use super::protocol::{ErrorCode, Frame};
use super::repo_wire::{clip, PeerMetadata, RepoMessage, WireError, PROTOCOL_VERSION};
use super::session::{state_key, subject_prefix, RelayOutput};
use super::{error_code, error_text, SyncDocs};
use crate::id::{Collection, DocId, PeerId};

/// The collection documents created by automerge-repo clients go to when
/// the token does not name exactly one writable collection.
pub const DEFAULT_COLLECTION: &str = "documents";

/// Something the relay runtime must do for one automerge-repo connection.
#[derive(Debug, Clone, PartialEq)]
pub enum RepoOutput {
    /// Send this message.
    Send(RepoMessage),
    /// The connection hears of this document's changes from now on.
    Open {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: Collection,
        /// Whether the connection may change it.
        write: bool,
    },
    /// What a native connection would be asked to do: route a sync
    /// message to its hub, pass presence on, retire old sync states, or
    /// close (for this protocol the runtime sends an `error` message,
    /// [`error_message`], before the WebSocket close).
    Common(RelayOutput),
    /// Something was refused without closing the connection (for the
    /// operator's counters and logs).
    Refused {
        /// The code a native peer would have been sent.
        code: ErrorCode,
        /// What and why.
        reason: String,
    },
}

/// Where a connection is.
#[derive(Debug)]
enum Phase {
    /// Waiting for `join`.
    Joining,
    /// Answered with `peer`.
    Ready {
        /// The client's peer id (every message it sends must carry it).
        client: String,
        /// What its token allows.
        grant: Grant,
        /// The key its sync states are kept under at the relay.
        state_key: PeerId,
    },
    /// Closed by a fatal error; further messages are ignored.
    Closed,
}

/// The relay's side of one automerge-repo connection.
#[derive(Debug)]
pub struct RepoSession {
    /// The relay's peer id, which is also its storage id.
    relay_id: String,
    /// Where new documents go when the token does not say.
    default_collection: Collection,
    /// The token from the connection's URL (`?token=`), if any.
    url_token: Option<String>,
    /// Handshake progress.
    phase: Phase,
    /// Documents the connection opened, with their collections.
    opened: BTreeMap<DocId, Collection>,
    /// What the connection used of its limits.
    usage: Usage,
    /// Outputs of the current call.
    out: Vec<RepoOutput>,
}

impl RepoSession {
    /// A connection that has not joined yet. `relay_id` is the relay's
    /// stable peer id (announced as its peer and storage id);
    /// `url_token` the token of the connection's URL, if it had one.
    pub fn new(
        relay_id: impl Into<String>,
        default_collection: Collection,
        limits: Limits,
        url_token: Option<String>,
    ) -> Self {
        RepoSession {
            relay_id: relay_id.into(),
            default_collection,
            url_token,
            phase: Phase::Joining,
            opened: BTreeMap::new(),
            usage: Usage::new(limits),
            out: Vec::new(),
        }
    }

    /// The client's peer id, once it joined.
    pub fn client(&self) -> Option<&str> {
        match &self.phase {
            Phase::Ready { client, .. } => Some(client),
            _ => None,
        }
    }

    /// The key the relay keeps this connection's sync states under, once
    /// it joined.
    pub fn state_key(&self) -> Option<&PeerId> {
        match &self.phase {
            Phase::Ready { state_key, .. } => Some(state_key),
            _ => None,
        }
    }

    /// The relay's peer id in this protocol.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    fn grant(&self) -> Option<&Grant> {
        match &self.phase {
            Phase::Ready { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// Whether the connection may write `collection`.
    pub fn can_write(&self, collection: &str) -> bool {
        self.grant().is_some_and(|g| g.can_write(collection))
    }

    /// When the session next needs [`RepoSession::tick`]: the end of its
    /// grant, if it has one (ms since the Unix epoch).
    pub fn deadline(&self) -> Option<u64> {
        self.grant().and_then(Grant::expires_at_ms)
    }

    /// Time passed: once the grant has ended, closes the connection with
    /// `token_expired`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<RepoOutput> {
        self.expired(now_ms);
        std::mem::take(&mut self.out)
    }

    /// Raw bytes arrived (one binary WebSocket message): decodes and
    /// handles them. Bytes that are not a message close the connection
    /// with an `error` naming what was wrong.
    pub fn handle_bytes(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
    ) -> Vec<RepoOutput> {
        self.handle_received(RepoMessage::decode(bytes), now_ms, access, docs)
    }

    /// What the runtime decoded from one WebSocket message: counted against
    /// the rate limit, then handled (an undecodable one closes the
    /// connection, naming what was wrong).
    pub fn handle_received(
        &mut self,
        received: Result<RepoMessage, WireError>,
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
    ) -> Vec<RepoOutput> {
        match received {
            Ok(message) => self.handle_message(message, now_ms, access, docs),
            Err(e) => {
                if self.admit(now_ms) {
                    self.fail(ErrorCode::MALFORMED, e.to_string());
                }
                std::mem::take(&mut self.out)
            }
        }
    }

    /// Whether a message may be handled: the connection is open, its
    /// grant has not ended and it is within its rate (otherwise it is
    /// closed).
    fn admit(&mut self, now_ms: u64) -> bool {
        if matches!(self.phase, Phase::Closed) || self.expired(now_ms) {
            return false;
        }
        match self.usage.frame(now_ms) {
            Ok(()) => true,
            Err((code, text)) => {
                self.fail(code, text);
                false
            }
        }
    }

    /// A decoded message arrived (counted against the rate limit).
    pub fn handle_message(
        &mut self,
        message: RepoMessage,
        now_ms: u64,
        access: &dyn Access,
        docs: &dyn SyncDocs,
    ) -> Vec<RepoOutput> {
        if !self.admit(now_ms) {
            return std::mem::take(&mut self.out);
        }
        match (&self.phase, message) {
            (Phase::Closed, _) => {}
            (
                Phase::Joining,
                RepoMessage::Join {
                    sender,
                    versions,
                    metadata,
                },
            ) => self.on_join(sender, &versions, metadata, now_ms, access),
            (Phase::Joining, other) => {
                let text = format!("expected join, got {}", other.kind());
                self.fail(ErrorCode::NOT_HANDSHAKEN, text);
            }
            (Phase::Ready { .. }, RepoMessage::Join { .. }) => {
                self.fail(ErrorCode::MALFORMED, "join sent twice".into())
            }
            (
                Phase::Ready { .. },
                RepoMessage::Request {
                    sender,
                    target,
                    doc,
                    data,
                },
            ) => self.on_sync(&sender, &target, doc, &data, true, docs),
            (
                Phase::Ready { .. },
                RepoMessage::Sync {
                    sender,
                    target,
                    doc,
                    data,
                },
            ) => self.on_sync(&sender, &target, doc, &data, false, docs),
            (
                Phase::Ready { .. },
                RepoMessage::Ephemeral {
                    sender,
                    count,
                    session,
                    doc,
                    data,
                    ..
                },
            ) => self.on_ephemeral(&sender, doc, session, count, data),
            (Phase::Ready { .. }, RepoMessage::Error { message }) => {
                tracing::debug!(message, "automerge-repo peer reported an error");
            }
            (Phase::Ready { .. }, RepoMessage::Peer { .. }) => {
                self.fail(ErrorCode::MALFORMED, "only the relay sends peer".into())
            }
            (Phase::Ready { .. }, other) => {
                // leave, doc-unavailable, ephemeral, remote-subscription-change,
                // remote-heads-changed: from this peer only, and nothing the
                // relay acts on yet besides checking who sent it.
                if let Some(sender) = sender_of(&other) {
                    self.is_client(sender);
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Closes the connection if `code` closes connections (the runtime
    /// sends the `error` that says why, see [`RepoOutput::Common`]);
    /// otherwise only counts the refusal.
    fn fail(&mut self, code: ErrorCode, reason: String) {
        if !code.closes_connection() {
            self.out.push(RepoOutput::Refused { code, reason });
            return;
        }
        self.phase = Phase::Closed;
        self.out
            .push(RepoOutput::Common(RelayOutput::Close { code, reason }));
    }

    fn on_join(
        &mut self,
        sender: String,
        versions: &[String],
        metadata: Option<PeerMetadata>,
        now_ms: u64,
        access: &dyn Access,
    ) {
        if !versions.iter().any(|v| v == PROTOCOL_VERSION) {
            let text = format!(
                "protocol versions {versions:?} are not supported; this relay speaks \"{PROTOCOL_VERSION}\""
            );
            return self.fail(ErrorCode::VERSION, text);
        }
        if sender.is_empty() {
            return self.fail(ErrorCode::MALFORMED, "join: empty senderId".into());
        }
        let metadata = metadata.unwrap_or_default();
        let token = metadata
            .token
            .as_deref()
            .or(self.url_token.as_deref())
            .unwrap_or("");
        let grant = match access.check(token, now_ms) {
            Ok(grant) => grant,
            Err(reason) => return self.fail(ErrorCode::UNAUTHORIZED, reason),
        };
        // A peer with a storage it comes back with resumes by that storage;
        // one without, by its peer id. Hashed: the texts are the peer's.
        let resumes_as = match (&metadata.storage_id, metadata.is_ephemeral) {
            (Some(storage), false) => format!("storage:{storage}"),
            _ => format!("peer:{sender}"),
        };
        let digest = crate::id::digest_hex(resumes_as.as_bytes(), 16);
        let Ok(peer) = PeerId::new(format!("repo-{digest}")) else {
            return self.fail(ErrorCode::INTERNAL, "no key for the peer".into());
        };
        let state_key = state_key(grant.subject(), &peer);
        if let Some(subject) = grant.subject() {
            self.out.push(RepoOutput::Common(RelayOutput::RetireStates {
                prefix: subject_prefix(subject),
                keep: self.usage.limits().max_peers_per_subject,
                current: state_key.clone(),
            }));
        }
        self.out.push(RepoOutput::Send(RepoMessage::Peer {
            sender: self.relay_id.clone(),
            target: sender.clone(),
            version: PROTOCOL_VERSION.into(),
            metadata: Some(PeerMetadata {
                storage_id: Some(self.relay_id.clone()),
                is_ephemeral: false,
                token: None,
            }),
        }));
        self.phase = Phase::Ready {
            client: sender,
            grant,
            state_key,
        };
    }

    /// Whether `sender` is this connection's peer; closes it if not.
    fn is_client(&mut self, sender: &str) -> bool {
        if self.client() == Some(sender) {
            return true;
        }
        let text = format!(
            "senderId '{}' is not the peer that joined on this connection",
            clip(sender)
        );
        self.fail(ErrorCode::MALFORMED, text);
        false
    }

    fn unavailable(&mut self, doc: DocId) {
        if let Some(client) = self.client().map(str::to_owned) {
            self.out.push(RepoOutput::Send(RepoMessage::DocUnavailable {
                sender: self.relay_id.clone(),
                target: client,
                doc,
            }));
        }
    }

    /// A `request` (`asks`) or `sync` for a document.
    fn on_sync(
        &mut self,
        sender: &str,
        target: &str,
        doc: DocId,
        data: &[u8],
        asks: bool,
        docs: &dyn SyncDocs,
    ) {
        if !self.is_client(sender) {
            return;
        }
        if target != self.relay_id {
            let text = format!(
                "targetId '{}' is not this relay ('{}'); peers are not forwarded",
                clip(target),
                self.relay_id
            );
            return self.fail(ErrorCode::MALFORMED, text);
        }
        let mut message = match Message::decode(data) {
            Ok(message) => message,
            Err(e) => {
                let text = format!("invalid sync message for {doc}: {e}");
                return self.fail_doc(ErrorCode::BAD_DOCUMENT, text);
            }
        };
        let Some(grant) = self.grant() else {
            return;
        };
        let collection = match docs.local_state(&doc) {
            Ok(Some(local)) if local.deleted || !grant.can_read(&local.collection) => {
                return self.unavailable(doc);
            }
            Ok(Some(local)) => local.collection,
            Ok(None) if asks => return self.unavailable(doc),
            Ok(None) => {
                let collection = grant
                    .sole_writable()
                    .unwrap_or(&self.default_collection)
                    .clone();
                if !grant.can_write(&collection) {
                    return self.unavailable(doc);
                }
                collection
            }
            Err(e) => return self.fail_doc(error_code(&e), error_text(&e)),
        };
        let write = self.can_write(&collection);
        if !write && !message.changes.is_empty() {
            let text = format!(
                "read-only access to collection '{collection}': changes to {doc} not stored"
            );
            self.out.push(RepoOutput::Refused {
                code: ErrorCode::FORBIDDEN,
                reason: text,
            });
            message.changes = ChunkList::empty();
        }
        // The registry hears of a document once, not with every message
        // (again only if the document turned out to live elsewhere than
        // first thought: created meanwhile by someone else).
        if self.opened.get(&doc) != Some(&collection) {
            if let Err((code, text)) = self.usage.doc(doc) {
                return self.fail(code, text);
            }
            self.opened.insert(doc, collection.clone());
            self.out.push(RepoOutput::Open {
                doc,
                collection: collection.clone(),
                write,
            });
        }
        self.out.push(RepoOutput::Common(RelayOutput::Route {
            doc,
            collection,
            message,
            want_reply: true,
        }));
    }

    /// Passes a presence message on to the document's other listeners:
    /// only for a document this connection opened (so it may read it),
    /// within the size limit; otherwise it is dropped and counted.
    ///
    /// automerge-repo clients pass on every ephemeral message they receive
    /// to their other peers, the relay included, unchanged (its `senderId`
    /// another peer's): the relay already gave the original to every
    /// listener, so such a copy is dropped here, which also keeps presence
    /// from circling.
    fn on_ephemeral(
        &mut self,
        sender: &str,
        doc: DocId,
        session: String,
        count: u64,
        data: Vec<u8>,
    ) {
        if self.client() != Some(sender) {
            return;
        }
        if let Err((code, reason)) = self.usage.ephemeral(&session, &data) {
            return self.out.push(RepoOutput::Refused { code, reason });
        }
        let Some(collection) = self.opened.get(&doc).cloned() else {
            let reason =
                format!("ephemeral message for {doc}, which this connection has not opened");
            return self.out.push(RepoOutput::Refused {
                code: ErrorCode::NOT_SUBSCRIBED,
                reason,
            });
        };
        let frame = Frame::Ephemeral {
            doc,
            collection: collection.to_string(),
            sender: sender.to_owned(),
            session,
            count,
            data,
        };
        self.out.push(RepoOutput::Common(RelayOutput::Ephemeral {
            doc,
            collection,
            frame,
        }));
    }

    /// A refusal about one document: the peer hears it as an `error`
    /// (which its client logs) and the connection stays open.
    fn fail_doc(&mut self, code: ErrorCode, reason: String) {
        self.out
            .push(RepoOutput::Send(error_message(code, &reason)));
        self.out.push(RepoOutput::Refused { code, reason });
    }

    /// From the grant's end on, closes the connection with
    /// `token_expired`. Returns whether it did.
    fn expired(&mut self, now_ms: u64) -> bool {
        let Some(end) = self.deadline() else {
            return false;
        };
        if now_ms < end {
            return false;
        }
        let text = format!(
            "the connection's token expired {} s ago; connect again with a fresh token",
            (now_ms - end) / 1000
        );
        self.fail(ErrorCode::TOKEN_EXPIRED, text);
        true
    }
}

/// The `error` message naming `code` (its stable name first) and why: sent
/// before the relay closes a connection, and for a refusal about one
/// document.
pub fn error_message(code: ErrorCode, reason: &str) -> RepoMessage {
    RepoMessage::Error {
        message: format!("{}: {reason}", code.name()),
    }
}

/// What a document hub (or the relay) sends, in this protocol, from the
/// relay `relay` to the client `client`; `None` for what has no
/// counterpart here. A sync message stays a `sync`; a deletion, or a
/// refusal that means "not for you" (no right, another collection), is
/// `doc-unavailable`; other refusals about a document are an `error`
/// naming the code and the document, and the connection stays open.
pub fn outbound(frame: &Frame, relay: &str, client: &str) -> Option<RepoMessage> {
    let (sender, target) = (relay.to_owned(), client.to_owned());
    match frame {
        Frame::Sync { doc, message, .. } => Some(RepoMessage::Sync {
            sender,
            target,
            doc: *doc,
            data: message.clone(),
        }),
        Frame::Ephemeral {
            doc,
            sender,
            session,
            count,
            data,
            ..
        } => Some(RepoMessage::Ephemeral {
            sender: sender.clone(),
            target,
            count: *count,
            session: session.clone(),
            doc: *doc,
            data: data.clone(),
        }),
        Frame::Delete { doc, .. } => Some(RepoMessage::DocUnavailable {
            sender,
            target,
            doc: *doc,
        }),
        Frame::Error {
            code,
            doc: Some(doc),
            ..
        } if matches!(
            *code,
            ErrorCode::FORBIDDEN | ErrorCode::WRONG_COLLECTION | ErrorCode::NOT_SUBSCRIBED
        ) =>
        {
            Some(RepoMessage::DocUnavailable {
                sender,
                target,
                doc: *doc,
            })
        }
        Frame::Error { code, message, doc } => Some(match doc {
            Some(doc) => error_message(*code, &format!("document {doc}: {message}")),
            None => error_message(*code, message),
        }),
        _ => None,
    }
}

/// The `senderId` of a message that has one.
fn sender_of(message: &RepoMessage) -> Option<&str> {
    match message {
        RepoMessage::Join { sender, .. }
        | RepoMessage::Peer { sender, .. }
        | RepoMessage::Leave { sender }
        | RepoMessage::Request { sender, .. }
        | RepoMessage::Sync { sender, .. }
        | RepoMessage::DocUnavailable { sender, .. }
        | RepoMessage::Ephemeral { sender, .. }
        | RepoMessage::RemoteSubscriptionChange { sender, .. }
        | RepoMessage::RemoteHeadsChanged { sender, .. } => Some(sender),
        RepoMessage::Error { .. } => None,
    }
}

#[cfg(test)]
mod tests;
