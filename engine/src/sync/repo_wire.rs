//! The automerge-repo network protocol "1": its messages and their CBOR
//! form (the codec of the relay's `/automerge-repo` door).
//!
//! Every message is one CBOR map per binary WebSocket message, with a
//! `type` key naming the kind (`join`, `peer`, `leave`, `request`, `sync`,
//! `doc-unavailable`, `ephemeral`, `error`, `remote-subscription-change`,
//! `remote-heads-changed`); `docs/automerge-repo.md` lists every key. This
//! module only translates bytes and messages: what the relay does with them
//! is sans-IO session code elsewhere.
//!
//! Decoding takes what the JavaScript encoder really sends: integers that
//! arrive as floats (`count`, `timestamp`), `undefined` or `null` for an
//! absent optional field, peer metadata under `peerMetadata` or `metadata`,
//! keys in any order, unknown keys (skipped). Everything is bounded before
//! it is kept: text fields, list lengths and the number of map entries are
//! capped (see the constants), so a message never costs more than a small
//! multiple of its own size. Document ids are parsed here, once.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::id::DocId;

/// The protocol version this codec speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// The longest text field kept (peer ids, storage ids, versions, session
/// ids, heads), in bytes.
pub const MAX_TEXT: usize = 256;

/// The longest `error` message kept, in bytes.
pub const MAX_ERROR_TEXT: usize = 4096;

/// The longest token kept from `peerMetadata`, in bytes.
pub const MAX_TOKEN: usize = 4096;

/// The most items kept in a list (`supportedProtocolVersions`, `add`,
/// `remove`, the heads of one storage id) and the most entries of a map
/// (`newHeads`, the message itself).
pub const MAX_ITEMS: u64 = 64;

/// A peer's description of itself in `join` and `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// The id of the peer's storage, if it keeps one.
    pub storage_id: Option<String>,
    /// Whether the peer will not come back with that storage (a browser
    /// tab without storage, say): its sync state need not be kept.
    pub is_ephemeral: bool,
    /// An access token, for a client that cannot put one in the URL
    /// (Accord's extension; the `?token=` query parameter is the usual
    /// way). Never sent by the relay.
    pub token: Option<String>,
}

/// The heads a storage holds of a document, and when that was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadsAt {
    /// The heads, as the protocol writes them (base64 hashes).
    pub heads: Vec<String>,
    /// Milliseconds since the Unix epoch, on the node that saw them.
    pub timestamp: u64,
}

/// One message of the automerge-repo protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoMessage {
    /// A client opens the conversation.
    Join {
        /// The client's peer id.
        sender: String,
        /// The protocol versions it speaks.
        versions: Vec<String>,
        /// What it says of its storage.
        metadata: Option<PeerMetadata>,
    },
    /// The server's answer to `join`.
    Peer {
        /// The server's peer id.
        sender: String,
        /// The client's peer id.
        target: String,
        /// The version chosen.
        version: String,
        /// What the server says of its storage.
        metadata: Option<PeerMetadata>,
    },
    /// The sender is about to go.
    Leave {
        /// Who.
        sender: String,
    },
    /// The sender asks for a document (the first sync message about it).
    Request {
        /// Who asks.
        sender: String,
        /// Whom.
        target: String,
        /// Which document.
        doc: DocId,
        /// An Automerge sync message.
        data: Vec<u8>,
    },
    /// An Automerge sync message about a document.
    Sync {
        /// Who sends it.
        sender: String,
        /// To whom.
        target: String,
        /// Which document.
        doc: DocId,
        /// An Automerge sync message.
        data: Vec<u8>,
    },
    /// The sender does not have the document and cannot get it.
    DocUnavailable {
        /// Who says so.
        sender: String,
        /// To whom.
        target: String,
        /// Which document.
        doc: DocId,
    },
    /// A message for the peers that have a document open, never stored
    /// (presence, cursors).
    Ephemeral {
        /// Who sends it.
        sender: String,
        /// To whom.
        target: String,
        /// The sender's counter, for dropping duplicates.
        count: u64,
        /// The sender's session.
        session: String,
        /// Which document.
        doc: DocId,
        /// The payload, opaque.
        data: Vec<u8>,
    },
    /// A protocol error; the connection closes after it.
    Error {
        /// What went wrong.
        message: String,
    },
    /// The sender wants to hear about other storages' heads (or no more).
    RemoteSubscriptionChange {
        /// Who.
        sender: String,
        /// To whom.
        target: String,
        /// Storage ids to add.
        add: Vec<String>,
        /// Storage ids to remove.
        remove: Vec<String>,
    },
    /// The heads some storages hold of a document changed.
    RemoteHeadsChanged {
        /// Who says so.
        sender: String,
        /// To whom.
        target: String,
        /// Which document.
        doc: DocId,
        /// Storage id to the heads it holds.
        new_heads: BTreeMap<String, HeadsAt>,
    },
}

/// Why bytes are not a message this codec accepts; the text names the
/// field and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad automerge-repo message: {0}")]
pub struct WireError(pub String);

impl From<minicbor::decode::Error> for WireError {
    fn from(e: minicbor::decode::Error) -> Self {
        WireError(format!("not CBOR of the expected shape: {e}"))
    }
}

/// The fields of a message as read, before they are checked per type.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    sender: Option<String>,
    target: Option<String>,
    doc: Option<String>,
    data: Option<Vec<u8>>,
    versions: Option<Vec<String>>,
    selected: Option<String>,
    metadata: Option<PeerMetadata>,
    count: Option<u64>,
    session: Option<String>,
    message: Option<String>,
    add: Option<Vec<String>>,
    remove: Option<Vec<String>>,
    new_heads: Option<BTreeMap<String, HeadsAt>>,
}

impl RepoMessage {
    /// Reads one message.
    pub fn decode(bytes: &[u8]) -> Result<RepoMessage, WireError> {
        let mut d = Decoder::new(bytes);
        let entries = map_len(&mut d, "the message")?;
        let mut f = Fields::default();
        for _ in 0..entries {
            let key = d.str()?;
            if absent(&mut d)? {
                continue;
            }
            match key {
                "type" => f.kind = Some(text(&mut d, "type", MAX_TEXT)?),
                "senderId" => f.sender = Some(text(&mut d, "senderId", MAX_TEXT)?),
                "targetId" => f.target = Some(text(&mut d, "targetId", MAX_TEXT)?),
                "documentId" => f.doc = Some(text(&mut d, "documentId", MAX_TEXT)?),
                "data" => f.data = Some(d.bytes()?.to_vec()),
                "supportedProtocolVersions" => {
                    f.versions = Some(texts(&mut d, "supportedProtocolVersions")?);
                }
                "selectedProtocolVersion" => {
                    f.selected = Some(text(&mut d, "selectedProtocolVersion", MAX_TEXT)?);
                }
                "peerMetadata" | "metadata" => f.metadata = Some(metadata(&mut d)?),
                "count" => f.count = Some(whole(&mut d, "count")?),
                "sessionId" => f.session = Some(text(&mut d, "sessionId", MAX_TEXT)?),
                "message" => f.message = Some(text(&mut d, "message", MAX_ERROR_TEXT)?),
                "add" => f.add = Some(texts(&mut d, "add")?),
                "remove" => f.remove = Some(texts(&mut d, "remove")?),
                "newHeads" => f.new_heads = Some(new_heads(&mut d)?),
                _ => d.skip()?,
            }
        }
        if d.position() != bytes.len() {
            return Err(WireError(format!(
                "{} bytes after the message",
                bytes.len() - d.position()
            )));
        }
        f.into_message()
    }

    /// Writes the message as the JavaScript implementation does (a definite
    /// map, integers as integers, optional fields left out when absent).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // Writing into a Vec cannot fail.
        let _ = write(&mut e, self);
        e.into_writer()
    }

    /// A `request` (when `request`; the first message about a document the
    /// sender wants) or a `sync` carrying the Automerge sync message `data`.
    pub fn about_doc(
        request: bool,
        sender: String,
        target: String,
        doc: DocId,
        data: Vec<u8>,
    ) -> RepoMessage {
        if request {
            RepoMessage::Request {
                sender,
                target,
                doc,
                data,
            }
        } else {
            RepoMessage::Sync {
                sender,
                target,
                doc,
                data,
            }
        }
    }

    /// The message's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            RepoMessage::Join { .. } => "join",
            RepoMessage::Peer { .. } => "peer",
            RepoMessage::Leave { .. } => "leave",
            RepoMessage::Request { .. } => "request",
            RepoMessage::Sync { .. } => "sync",
            RepoMessage::DocUnavailable { .. } => "doc-unavailable",
            RepoMessage::Ephemeral { .. } => "ephemeral",
            RepoMessage::Error { .. } => "error",
            RepoMessage::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            RepoMessage::RemoteHeadsChanged { .. } => "remote-heads-changed",
        }
    }
}

impl Fields {
    fn into_message(self) -> Result<RepoMessage, WireError> {
        let kind = self.kind.clone().ok_or_else(|| missing("type"))?;
        Ok(match kind.as_str() {
            "join" => RepoMessage::Join {
                sender: need(self.sender, "senderId")?,
                versions: need(self.versions, "supportedProtocolVersions")?,
                metadata: self.metadata,
            },
            "peer" => RepoMessage::Peer {
                sender: need(self.sender, "senderId")?,
                target: need(self.target, "targetId")?,
                version: need(self.selected, "selectedProtocolVersion")?,
                metadata: self.metadata,
            },
            "leave" => RepoMessage::Leave {
                sender: need(self.sender, "senderId")?,
            },
            "request" | "sync" => RepoMessage::about_doc(
                kind == "request",
                need(self.sender, "senderId")?,
                need(self.target, "targetId")?,
                doc_id(self.doc)?,
                need(self.data, "data")?,
            ),
            "doc-unavailable" => RepoMessage::DocUnavailable {
                sender: need(self.sender, "senderId")?,
                target: need(self.target, "targetId")?,
                doc: doc_id(self.doc)?,
            },
            "ephemeral" => RepoMessage::Ephemeral {
                sender: need(self.sender, "senderId")?,
                target: need(self.target, "targetId")?,
                count: need(self.count, "count")?,
                session: need(self.session, "sessionId")?,
                doc: doc_id(self.doc)?,
                data: need(self.data, "data")?,
            },
            "error" => RepoMessage::Error {
                message: need(self.message, "message")?,
            },
            "remote-subscription-change" => RepoMessage::RemoteSubscriptionChange {
                sender: need(self.sender, "senderId")?,
                target: need(self.target, "targetId")?,
                add: self.add.unwrap_or_default(),
                remove: self.remove.unwrap_or_default(),
            },
            "remote-heads-changed" => RepoMessage::RemoteHeadsChanged {
                sender: need(self.sender, "senderId")?,
                target: need(self.target, "targetId")?,
                doc: doc_id(self.doc)?,
                new_heads: need(self.new_heads, "newHeads")?,
            },
            other => return Err(WireError(format!("unknown message type '{}'", clip(other)))),
        })
    }
}

fn missing(field: &str) -> WireError {
    WireError(format!("no '{field}'"))
}

fn need<T>(value: Option<T>, field: &str) -> Result<T, WireError> {
    value.ok_or_else(|| missing(field))
}

fn doc_id(text: Option<String>) -> Result<DocId, WireError> {
    let text = need(text, "documentId")?;
    text.parse()
        .map_err(|e| WireError(format!("documentId: {e}")))
}

/// At most 40 characters of peer-supplied text, for an error message.
pub(crate) fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Consumes `undefined` or `null` and says so: the field is absent.
fn absent(d: &mut Decoder<'_>) -> Result<bool, WireError> {
    match d.datatype()? {
        Type::Undefined => d.undefined()?,
        Type::Null => d.null()?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// A definite map's number of entries, at most [`MAX_ITEMS`].
fn map_len(d: &mut Decoder<'_>, what: &str) -> Result<u64, WireError> {
    bounded(d.map()?, what, "an indefinite-length map", "entries")
}

/// A definite array's length, at most [`MAX_ITEMS`].
fn array_len(d: &mut Decoder<'_>, what: &str) -> Result<u64, WireError> {
    bounded(
        d.array()?,
        &format!("'{what}'"),
        "an indefinite-length list",
        "items",
    )
}

/// A declared length, refused when indefinite or above [`MAX_ITEMS`].
fn bounded(len: Option<u64>, what: &str, indefinite: &str, unit: &str) -> Result<u64, WireError> {
    let len = len.ok_or_else(|| WireError(format!("{what} is {indefinite}")))?;
    if len > MAX_ITEMS {
        return Err(WireError(format!(
            "{what} has {len} {unit}, more than {MAX_ITEMS}"
        )));
    }
    Ok(len)
}

fn text(d: &mut Decoder<'_>, field: &str, max: usize) -> Result<String, WireError> {
    if d.datatype()? != Type::String {
        return Err(WireError(format!(
            "'{field}' is {}, not text",
            d.datatype()?
        )));
    }
    let s = d.str()?;
    if s.len() > max {
        return Err(WireError(format!(
            "'{field}' is {} bytes, more than {max}",
            s.len()
        )));
    }
    Ok(s.to_owned())
}

fn texts(d: &mut Decoder<'_>, field: &str) -> Result<Vec<String>, WireError> {
    let len = array_len(d, field)?;
    (0..len).map(|_| text(d, field, MAX_TEXT)).collect()
}

/// A non-negative whole number, written as an integer or (as JavaScript
/// may) as a float.
fn whole(d: &mut Decoder<'_>, field: &str) -> Result<u64, WireError> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0; // 2^53 - 1
    let float = match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => return Ok(d.u64()?),
        Type::F32 => f64::from(d.f32()?),
        Type::F64 => d.f64()?,
        other => return Err(WireError(format!("'{field}' is {other}, not a number"))),
    };
    if float.fract() != 0.0 || !(0.0..=MAX_SAFE).contains(&float) {
        return Err(WireError(format!(
            "'{field}' is {float}, not a whole number from 0 to 2^53-1"
        )));
    }
    Ok(float as u64)
}

fn metadata(d: &mut Decoder<'_>) -> Result<PeerMetadata, WireError> {
    let entries = map_len(d, "peerMetadata")?;
    let mut meta = PeerMetadata::default();
    for _ in 0..entries {
        let key = d.str()?;
        if absent(d)? {
            continue;
        }
        match key {
            "storageId" => meta.storage_id = Some(text(d, "storageId", MAX_TEXT)?),
            "isEphemeral" => meta.is_ephemeral = d.bool()?,
            "token" => meta.token = Some(text(d, "token", MAX_TOKEN)?),
            _ => d.skip()?,
        }
    }
    Ok(meta)
}

fn new_heads(d: &mut Decoder<'_>) -> Result<BTreeMap<String, HeadsAt>, WireError> {
    let entries = map_len(d, "newHeads")?;
    let mut out = BTreeMap::new();
    for _ in 0..entries {
        let storage = text(d, "newHeads", MAX_TEXT)?;
        let fields = map_len(d, "newHeads entry")?;
        let (mut heads, mut timestamp) = (None, None);
        for _ in 0..fields {
            let key = d.str()?;
            match key {
                "heads" => heads = Some(texts(d, "heads")?),
                "timestamp" => timestamp = Some(whole(d, "timestamp")?),
                _ => d.skip()?,
            }
        }
        out.insert(
            storage,
            HeadsAt {
                heads: need(heads, "heads")?,
                timestamp: need(timestamp, "timestamp")?,
            },
        );
    }
    Ok(out)
}

type Written = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn write(e: &mut Encoder<Vec<u8>>, message: &RepoMessage) -> Written {
    let kind = message.kind();
    match message {
        RepoMessage::Join {
            sender,
            versions,
            metadata,
        } => {
            e.map(3 + u64::from(metadata.is_some()))?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("supportedProtocolVersions")?;
            write_texts(e, versions)?;
            if let Some(meta) = metadata {
                e.str("peerMetadata")?;
                write_metadata(e, meta)?;
            }
        }
        RepoMessage::Peer {
            sender,
            target,
            version,
            metadata,
        } => {
            e.map(4 + u64::from(metadata.is_some()))?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("targetId")?.str(target)?;
            e.str("selectedProtocolVersion")?.str(version)?;
            if let Some(meta) = metadata {
                e.str("peerMetadata")?;
                write_metadata(e, meta)?;
            }
        }
        RepoMessage::Leave { sender } => {
            e.map(2)?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
        }
        RepoMessage::Request {
            sender,
            target,
            doc,
            data,
        }
        | RepoMessage::Sync {
            sender,
            target,
            doc,
            data,
        } => {
            e.map(5)?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("targetId")?.str(target)?;
            e.str("documentId")?.str(&doc.to_string())?;
            e.str("data")?.bytes(data)?;
        }
        RepoMessage::DocUnavailable {
            sender,
            target,
            doc,
        } => {
            e.map(4)?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("targetId")?.str(target)?;
            e.str("documentId")?.str(&doc.to_string())?;
        }
        RepoMessage::Ephemeral {
            sender,
            target,
            count,
            session,
            doc,
            data,
        } => {
            e.map(7)?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("targetId")?.str(target)?;
            e.str("count")?.u64(*count)?;
            e.str("sessionId")?.str(session)?;
            e.str("documentId")?.str(&doc.to_string())?;
            e.str("data")?.bytes(data)?;
        }
        RepoMessage::Error { message } => {
            e.map(2)?;
            e.str("type")?.str(kind)?;
            e.str("message")?.str(message)?;
        }
        RepoMessage::RemoteSubscriptionChange {
            sender,
            target,
            add,
            remove,
        } => {
            e.map(5)?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("targetId")?.str(target)?;
            e.str("add")?;
            write_texts(e, add)?;
            e.str("remove")?;
            write_texts(e, remove)?;
        }
        RepoMessage::RemoteHeadsChanged {
            sender,
            target,
            doc,
            new_heads,
        } => {
            e.map(5)?;
            e.str("type")?.str(kind)?;
            e.str("senderId")?.str(sender)?;
            e.str("targetId")?.str(target)?;
            e.str("documentId")?.str(&doc.to_string())?;
            e.str("newHeads")?.map(new_heads.len() as u64)?;
            for (storage, at) in new_heads {
                e.str(storage)?.map(2)?;
                e.str("heads")?;
                write_texts(e, &at.heads)?;
                e.str("timestamp")?.u64(at.timestamp)?;
            }
        }
    }
    Ok(())
}

fn write_texts(e: &mut Encoder<Vec<u8>>, items: &[String]) -> Written {
    e.array(items.len() as u64)?;
    for item in items {
        e.str(item)?;
    }
    Ok(())
}

fn write_metadata(e: &mut Encoder<Vec<u8>>, meta: &PeerMetadata) -> Written {
    e.map(1 + u64::from(meta.storage_id.is_some()) + u64::from(meta.token.is_some()))?;
    if let Some(storage) = &meta.storage_id {
        e.str("storageId")?.str(storage)?;
    }
    e.str("isEphemeral")?.bool(meta.is_ephemeral)?;
    if let Some(token) = &meta.token {
        e.str("token")?.str(token)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
