//! The wire protocol: frames exchanged between a replica and a relay.
//!
//! Each WebSocket binary message carries one [`Frame`], encoded by
//! [`crate::codec`], or, on a version-5 connection, several frames back to
//! back ([`Frame::decode_message`], [`Packer`]). `docs/protocol.md` is the specification; this module is
//! its implementation. Two rules keep versions apart: `Hello` is variant 0
//! forever and its first field is the protocol version, so any version can
//! read the version of any other; and a relay refuses a version it does not
//! speak with [`ErrorCode::VERSION`] before anything else happens.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::id::{DocId, Heads};

/// The protocol version this build speaks. Version 2 added `DeleteAck`,
/// the token's expiry in `Welcome`, `Reauth`/`Reauthorized`, and the
/// `storage_unavailable` and `token_expired` codes. Version 3 added
/// collection cursors: `SubscribeSince` and `Listing`, so a reconnecting
/// replica is told only what changed since the last number of the
/// collection's sequence it fully saw. Version 4 added whole documents:
/// `SubscribeWith` lets a replica that holds none of a collection's
/// documents ask for them in their saved form (`Documents`), one message
/// each instead of an exchange of sync messages. Version 5 lets one
/// WebSocket message carry several frames ([`PACKED_SINCE`]), so what a
/// side has to say at one moment costs one message.
pub const PROTOCOL_VERSION: u32 = 5;

/// The first version whose messages may carry several frames back to
/// back; older connections carry exactly one frame per message.
pub const PACKED_SINCE: u32 = 5;

/// The most frames one message may carry; a message with more is
/// `malformed_frame`.
pub const MAX_FRAMES_PER_MESSAGE: usize = 256;

/// The most bytes a sender packs into one message of several frames (a
/// single larger frame still travels alone, within the frame limit). A
/// relay's message limit is never below it.
pub const PACKED_BYTES: usize = 64 * 1024;

/// The most bytes a replica packs into one message before the relay
/// welcomed it. A relay's limit before `Welcome` is never below it (64 KiB
/// by default).
pub const PACKED_BYTES_BEFORE_WELCOME: usize = 16 * 1024;

/// The oldest version a relay of this build still accepts: a version-2
/// replica never sends `SubscribeSince`, so it gets full listings, as from
/// a version-2 relay. A relay refuses versions outside
/// `OLDEST_ACCEPTED_VERSION..=PROTOCOL_VERSION` with `unsupported_version`
/// before anything else happens, and answers an accepted one in its own
/// version (`Welcome.version` is the replica's).
pub const OLDEST_ACCEPTED_VERSION: u32 = 2;

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Replica → relay, first frame: who is connecting, and with what right.
    Hello {
        /// The replica's protocol version.
        version: u32,
        /// The replica's stable peer id (sync states are kept under it).
        peer_id: String,
        /// The credential; empty when the relay runs in open mode.
        token: String,
    },
    /// Relay → replica, answer to `Hello`.
    Welcome {
        /// The relay's protocol version.
        version: u32,
        /// The relay's stable id (the replica keeps sync states under it).
        relay_id: String,
        /// When the token's grant ends (ms since the Unix epoch), if ever:
        /// the relay closes the connection with `token_expired` then, so a
        /// long-lived replica presents a fresh token (`Reauth`) before.
        expires_at_ms: Option<u64>,
    },
    /// Replica → relay: start receiving these collections.
    Subscribe {
        /// Collection names.
        collections: Vec<String>,
    },
    /// Replica → relay: stop receiving these collections.
    Unsubscribe {
        /// Collection names.
        collections: Vec<String>,
    },
    /// Relay → replica: documents that exist in a subscribed collection.
    /// One subscription may be answered by several `Announce` frames; the
    /// last has `complete` set.
    Announce {
        /// The collection.
        collection: String,
        /// Its documents, with their heads at the relay.
        docs: Vec<DocSummary>,
        /// Whether this is the last frame of the listing.
        complete: bool,
    },
    /// Both ways: one Automerge sync message for one document.
    Sync {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: String,
        /// `automerge::sync::Message::encode()`.
        message: Vec<u8>,
        /// The sender waits for an answer: the receiver must reply, with a
        /// heads-only message if Automerge has nothing to say. (Automerge's
        /// protocol ends with one side silent; this flag tells which.)
        want_reply: bool,
    },
    /// Both ways: the document was deleted (a tombstone; permanent).
    Delete {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: String,
    },
    /// Both ways: something went wrong. Fatal codes are followed by a close.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The document concerned, if any.
        doc: Option<DocId>,
    },
    /// Relay → replica (since version 2): the relay committed the
    /// tombstone of a `Delete` this connection sent (or held it already).
    /// Placed after `Error` so that `Error` keeps its index in every
    /// version.
    DeleteAck {
        /// The document.
        doc: DocId,
    },
    /// Replica → relay: a fresh token for the open connection. The relay
    /// checks it like the one in `Hello`; a refused one closes the
    /// connection with `unauthorized`, an accepted one replaces the
    /// connection's rights from the next frame on. Appended after every
    /// older frame: variant indices never move.
    Reauth {
        /// The new credential.
        token: String,
    },
    /// Relay → replica: the token of a `Reauth` was accepted; subscriptions
    /// it no longer allows to read were dropped (each with a `forbidden`
    /// error before this frame).
    Reauthorized {
        /// When the new grant ends (ms since the Unix epoch), if ever.
        expires_at_ms: Option<u64>,
    },
    /// Relay → replica: a subscription was accepted (or its right changed
    /// after a `Reauth`), before its listing. On a read-only subscription
    /// the replica pulls and keeps its own changes local.
    Subscribed {
        /// The collection.
        collection: String,
        /// Whether the connection may change its documents.
        write: bool,
    },
    /// Relay → replica: a subscription was refused (or dropped after a
    /// `Reauth`); the other collections sync as usual.
    SubscribeRefused {
        /// The collection, as named.
        collection: String,
        /// Why: `forbidden`, `bad_name` or `too_large`.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Either way: a payload for everyone who has a document open
    /// (presence: who is looking at what, cursors), never stored. A
    /// replica sends it for a document of a subscribed collection; the
    /// relay passes it to every other connection that listens to the
    /// document (native subscribers of its collection, automerge-repo
    /// peers that opened it), filling in `sender`, and drops it for a
    /// connection that cannot keep up.
    Ephemeral {
        /// The document.
        doc: DocId,
        /// Its collection.
        collection: String,
        /// Who sent it: the relay sets the sending connection's peer id
        /// (what a replica puts here is ignored).
        sender: String,
        /// The sender's session (one per connection), for telling
        /// duplicates apart.
        session: String,
        /// The sender's counter within its session.
        count: u64,
        /// The payload, opaque to the relay.
        data: Vec<u8>,
    },
    /// Replica → relay (since version 3): like `Subscribe`, and for each
    /// collection the cursor of the last listing this replica fully
    /// synced, if it has one. The relay then lists only the documents
    /// changed after the cursor's number; it lists everything when the
    /// cursor names another relay or a number above its sequence (a
    /// restored database). Every listing this frame asks for starts with
    /// a `Listing` frame.
    SubscribeSince {
        /// Collections, each with its cursor.
        collections: Vec<SubscribeFrom>,
    },
    /// Relay → replica (since version 3, only in answer to
    /// `SubscribeSince`): the `Announce` frames that follow for this
    /// collection, up to the complete one, list the documents changed
    /// after number `since` of its sequence (`None`: every document), and
    /// with them the replica has seen every change up to `seq`.
    Listing {
        /// The collection.
        collection: String,
        /// The number the listing starts after, the cursor's when the
        /// relay honoured it; `None` for a full listing.
        since: Option<u64>,
        /// The collection's sequence number read before the listing's first
        /// page: every change numbered up to it is in the listing or
        /// before `since`. The replica's next cursor.
        seq: u64,
    },
    /// Replica → relay (since version 4): `SubscribeSince` with, per
    /// collection, whether the replica holds none of its documents. For
    /// such a collection the relay may send documents of the listing whole
    /// (`Documents`) instead of announcing them.
    SubscribeWith {
        /// Collections, each with its cursor and whether to send documents
        /// whole.
        collections: Vec<SubscribeRequest>,
    },
    /// Relay → replica (since version 4, only for a listing asked for
    /// `whole`): documents of the listing in their saved form. They count
    /// as announced by the listing, with the heads of `data`; the
    /// listing's other documents (tombstones, and documents too large to
    /// go whole) come in its `Announce` frames as usual.
    Documents {
        /// The collection.
        collection: String,
        /// The documents.
        docs: Vec<WholeDoc>,
    },
}

/// One collection of a `SubscribeWith`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The collection.
    pub collection: String,
    /// Where the replica's last fully synced listing of it ended, if
    /// anywhere.
    pub cursor: Option<Cursor>,
    /// The replica holds no document of the collection: the relay may send
    /// the listed documents whole.
    pub whole: bool,
}

/// A document in its saved form, as a `Documents` frame carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WholeDoc {
    /// The document.
    pub doc: DocId,
    /// Automerge chunks: a saved document, possibly followed by further
    /// chunks of changes (what `Automerge::load` reads).
    pub data: Vec<u8>,
}

/// One collection of a `SubscribeSince`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeFrom {
    /// The collection.
    pub collection: String,
    /// Where the replica's last fully synced listing of it ended, if
    /// anywhere.
    pub cursor: Option<Cursor>,
}

impl From<SubscribeFrom> for SubscribeRequest {
    /// A version-3 entry: documents are never sent whole.
    fn from(from: SubscribeFrom) -> SubscribeRequest {
        SubscribeRequest {
            collection: from.collection,
            cursor: from.cursor,
            whole: false,
        }
    }
}

/// A point in a relay database's collection sequence, as a replica keeps
/// it: meaningful only to the relay that issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The id of the relay whose sequence `seq` is a number of (its
    /// `Welcome.relay_id`).
    pub relay_id: String,
    /// The number.
    pub seq: u64,
}

/// A document as a relay announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSummary {
    /// The document.
    pub doc: DocId,
    /// Its heads (on the wire: the sorted 32-byte hashes concatenated).
    pub heads: Heads,
    /// Whether it carries a tombstone.
    pub deleted: bool,
}

/// A machine-readable error code. Unknown codes from newer peers decode
/// fine and print as their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $text:expr, $closes:expr, $final:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// The code's stable name, such as `unsupported_version`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "unknown",
                }
            }

            /// Whether the sender closes the connection after this error.
            /// Unknown codes from newer peers count as closing.
            pub fn closes_connection(self) -> bool {
                match self.0 {
                    $($value => $closes,)*
                    _ => true,
                }
            }

            /// Whether reconnecting cannot help: the same request would be
            /// refused again (bad token, unsupported version), so a client
            /// stops instead of retrying.
            pub fn is_final(self) -> bool {
                match self.0 {
                    $($value => $final,)*
                    _ => false,
                }
            }
        }
    };
}

codes! {
    // name = number, stable name, closes the connection, final
    /// The frame could not be decoded.
    MALFORMED = 1, "malformed_frame", true, false;
    /// The peer speaks a protocol version this side does not.
    VERSION = 2, "unsupported_version", true, true;
    /// A frame other than `Hello` arrived before the handshake.
    NOT_HANDSHAKEN = 3, "handshake_required", true, false;
    /// The token is missing, malformed, badly signed or expired.
    UNAUTHORIZED = 4, "unauthorized", true, true;
    /// The token does not grant this right on this collection.
    FORBIDDEN = 5, "forbidden", false, false;
    /// A document frame for a collection the connection did not subscribe to.
    NOT_SUBSCRIBED = 6, "not_subscribed", false, false;
    /// The document exists in another collection.
    WRONG_COLLECTION = 7, "wrong_collection", false, false;
    /// The sync message or its changes are not valid Automerge data.
    BAD_DOCUMENT = 8, "bad_document", false, false;
    /// A frame exceeded the maximum frame size.
    FRAME_TOO_LARGE = 9, "frame_too_large", true, false;
    /// The connection sent messages faster than allowed.
    RATE_LIMITED = 10, "rate_limited", true, false;
    /// The connection touched more documents than allowed.
    TOO_MANY_DOCUMENTS = 11, "too_many_documents", true, false;
    /// The relay is at its connection limit.
    TOO_MANY_CONNECTIONS = 12, "too_many_connections", true, false;
    /// The connection could not keep up and was dropped; reconnect to resync.
    TOO_SLOW = 13, "too_slow", true, false;
    /// The relay is shutting down.
    SHUTTING_DOWN = 14, "shutting_down", true, false;
    /// A name (collection, peer id) is invalid.
    BAD_NAME = 15, "bad_name", false, false;
    /// The relay failed internally (a bug, not the peer's data); the frame
    /// was not applied. Retrying later may succeed.
    INTERNAL = 16, "internal_error", false, false;
    /// The handshake or the connection went silent for too long.
    TIMEOUT = 17, "timeout", true, false;
    /// The relay could not read or write its storage (a full disk, a
    /// locked or damaged database); the frame was not applied. Nothing is
    /// wrong with the peer's data: it retries later.
    STORAGE_UNAVAILABLE = 18, "storage_unavailable", false, false;
    /// A frame asks for more than a budget allows (too many names in one
    /// `Subscribe`, too many subscriptions, a document or message larger
    /// than the relay accepts); it was not applied.
    TOO_LARGE = 19, "too_large", false, false;
    /// The connection's token expired while it was open. Not final: the
    /// same connection would be refused again with the same token, but a
    /// fresh one (in `Hello` or `Reauth`) is welcome.
    TOKEN_EXPIRED = 20, "token_expired", true, false;
    /// Another connection joined as the same automerge-repo peer (same
    /// peer id, token and storage) and replaced this one.
    REPLACED = 21, "replaced", true, false;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Parses a frame from the wire.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::decode(bytes, "frame")
    }

    /// Parses the first frame of `bytes`; returns it and its length.
    pub fn decode_first(bytes: &[u8]) -> Result<(Self, usize), codec::DecodeError> {
        codec::decode_first(bytes, "frame")
    }

    /// Parses the frames of one message of a version-5 connection: one or
    /// more back to back, at most [`MAX_FRAMES_PER_MESSAGE`].
    pub fn decode_message(bytes: &[u8]) -> Result<Vec<Self>, codec::DecodeError> {
        Ok(Frame::decode_message_sized(bytes)?
            .into_iter()
            .map(|(frame, _)| frame)
            .collect())
    }

    /// [`Frame::decode_message`], with each frame's length.
    pub fn decode_message_sized(bytes: &[u8]) -> Result<Vec<(Self, usize)>, codec::DecodeError> {
        let mut frames = Vec::new();
        let mut rest = bytes;
        loop {
            if frames.len() == MAX_FRAMES_PER_MESSAGE {
                return Err(codec::DecodeError {
                    what: "message",
                    reason: format!("more than {MAX_FRAMES_PER_MESSAGE} frames in one message"),
                });
            }
            let (frame, used) = Frame::decode_first(rest)?;
            frames.push((frame, used));
            rest = &rest[used..];
            if rest.is_empty() {
                return Ok(frames);
            }
        }
    }

    /// The protocol version of a `Hello`, read from its first bytes only:
    /// works on the `Hello` of any version, even one whose other fields
    /// this build cannot decode. `None` if the bytes are not a `Hello`.
    pub fn hello_version(bytes: &[u8]) -> Option<u32> {
        match codec::decode_prefix::<(u32, u32)>(bytes, "hello prefix") {
            Ok((0, version)) => Some(version),
            _ => None,
        }
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, doc: Option<DocId>) -> Self {
        Frame::Error {
            code,
            message: message.into(),
            doc,
        }
    }

    /// A short name of the frame's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Subscribe { .. } => "subscribe",
            Frame::Unsubscribe { .. } => "unsubscribe",
            Frame::Announce { .. } => "announce",
            Frame::Sync { .. } => "sync",
            Frame::Delete { .. } => "delete",
            Frame::DeleteAck { .. } => "delete_ack",
            Frame::Error { .. } => "error",
            Frame::Reauth { .. } => "reauth",
            Frame::Reauthorized { .. } => "reauthorized",
            Frame::Subscribed { .. } => "subscribed",
            Frame::SubscribeRefused { .. } => "subscribe_refused",
            Frame::Ephemeral { .. } => "ephemeral",
            Frame::SubscribeSince { .. } => "subscribe_since",
            Frame::Listing { .. } => "listing",
            Frame::SubscribeWith { .. } => "subscribe_with",
            Frame::Documents { .. } => "documents",
        }
    }
}

/// Packs encoded frames into the messages of a version-5 connection: as
/// many as fit in its byte budget, up to [`MAX_FRAMES_PER_MESSAGE`]; a
/// frame larger than the budget travels alone.
#[derive(Debug)]
pub struct Packer {
    /// The message so far.
    bytes: Vec<u8>,
    /// Frames in it.
    frames: usize,
    /// The byte budget of one message.
    budget: usize,
}

impl Packer {
    /// An empty packer with a byte budget per message.
    pub fn new(budget: usize) -> Self {
        Packer {
            bytes: Vec::new(),
            frames: 0,
            budget,
        }
    }

    /// Adds an encoded frame. Returns the message packed so far when the
    /// frame does not fit beside it: send that one first.
    pub fn push(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let full = self.frames > 0
            && (self.bytes.len() + frame.len() > self.budget
                || self.frames == MAX_FRAMES_PER_MESSAGE);
        let ready = if full { self.take() } else { None };
        self.bytes.extend_from_slice(frame);
        self.frames += 1;
        ready
    }

    /// The message packed so far, if any, leaving the packer empty.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.frames == 0 {
            return None;
        }
        self.frames = 0;
        Some(std::mem::take(&mut self.bytes))
    }

    /// Whether nothing is packed.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                peer_id: "p".into(),
                token: "t".into(),
            },
            Frame::Announce {
                collection: "c".into(),
                docs: vec![DocSummary {
                    doc: DocId::random(),
                    heads: Heads::new(vec![automerge::ChangeHash([7; 32])]),
                    deleted: false,
                }],
                complete: true,
            },
            Frame::Sync {
                doc: DocId::random(),
                collection: "c".into(),
                message: vec![1, 2, 3],
                want_reply: true,
            },
            Frame::DeleteAck {
                doc: DocId::random(),
            },
            Frame::error(ErrorCode::FORBIDDEN, "no", None),
            Frame::Welcome {
                version: PROTOCOL_VERSION,
                relay_id: "r".into(),
                expires_at_ms: Some(1_700_000_000_000),
            },
            Frame::Reauth {
                token: "fresh".into(),
            },
            Frame::Reauthorized {
                expires_at_ms: None,
            },
            Frame::Subscribed {
                collection: "c".into(),
                write: false,
            },
            Frame::SubscribeRefused {
                collection: "c".into(),
                code: ErrorCode::FORBIDDEN,
                message: "no".into(),
            },
            Frame::SubscribeSince {
                collections: vec![
                    SubscribeFrom {
                        collection: "c".into(),
                        cursor: Some(Cursor {
                            relay_id: "r".into(),
                            seq: 42,
                        }),
                    },
                    SubscribeFrom {
                        collection: "d".into(),
                        cursor: None,
                    },
                ],
            },
            Frame::Listing {
                collection: "c".into(),
                since: Some(42),
                seq: 50,
            },
            Frame::SubscribeWith {
                collections: vec![SubscribeRequest {
                    collection: "c".into(),
                    cursor: None,
                    whole: true,
                }],
            },
            Frame::Documents {
                collection: "c".into(),
                docs: vec![WholeDoc {
                    doc: DocId::random(),
                    data: vec![0x85, 0x6f],
                }],
            },
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()).ok(), Some(f));
        }
    }

    #[test]
    fn a_message_carries_frames_back_to_back_and_refuses_too_many() {
        let frames = [
            Frame::Subscribe {
                collections: vec!["c".into()],
            },
            Frame::error(ErrorCode::FORBIDDEN, "no", Some(DocId::random())),
            Frame::DeleteAck {
                doc: DocId::random(),
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        assert_eq!(Frame::decode_message(&bytes).expect("three"), frames);
        // One frame is a message too; a strict decode still refuses more.
        assert_eq!(
            Frame::decode_message(&frames[0].encode()).expect("one"),
            frames[..1]
        );
        assert!(Frame::decode(&bytes).is_err());
        // A truncated last frame, an empty message, garbage after a frame.
        assert!(Frame::decode_message(&bytes[..bytes.len() - 1]).is_err());
        assert!(Frame::decode_message(&[]).is_err());
        let mut garbage = frames[0].encode();
        garbage.push(0xff);
        assert!(Frame::decode_message(&garbage).is_err());
        // At most MAX_FRAMES_PER_MESSAGE frames.
        let ack = frames[2].encode();
        let most = ack.repeat(MAX_FRAMES_PER_MESSAGE);
        assert_eq!(
            Frame::decode_message(&most).expect("at the limit").len(),
            MAX_FRAMES_PER_MESSAGE
        );
        let err = Frame::decode_message(&ack.repeat(MAX_FRAMES_PER_MESSAGE + 1))
            .expect_err("one too many");
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn the_packer_fills_messages_to_the_budget_and_sends_big_frames_alone() {
        let mut packer = Packer::new(10);
        assert!(packer.take().is_none(), "nothing packed, nothing to send");
        assert!(packer.push(&[1; 4]).is_none());
        assert!(packer.push(&[2; 6]).is_none(), "exactly the budget fits");
        assert_eq!(
            packer.push(&[3; 20]),
            Some([[1; 4].as_slice(), &[2; 6]].concat())
        );
        // The big frame is alone; the next one starts a new message.
        assert_eq!(packer.push(&[4; 1]), Some(vec![3; 20]));
        assert!(!packer.is_empty());
        assert_eq!(packer.take(), Some(vec![4]));
        assert!(packer.is_empty());
        // The frame count is bounded too.
        let mut packer = Packer::new(usize::MAX);
        let mut sent = Vec::new();
        for _ in 0..MAX_FRAMES_PER_MESSAGE + 1 {
            sent.extend(packer.push(&[7]));
        }
        assert_eq!(sent, vec![vec![7; MAX_FRAMES_PER_MESSAGE]]);
        assert_eq!(packer.take(), Some(vec![7]));
    }

    #[test]
    fn hello_keeps_its_version_first() {
        // Variant 0, then the version as a varint: a future relay can always
        // read these two bytes, whatever else changed.
        let bytes = Frame::Hello {
            version: PROTOCOL_VERSION,
            peer_id: String::new(),
            token: String::new(),
        }
        .encode();
        assert_eq!(&bytes[..2], &[0, PROTOCOL_VERSION as u8]);
    }

    #[test]
    fn the_version_of_a_future_hello_is_readable() {
        let mut bytes = Frame::Hello {
            version: 7,
            peer_id: "p".into(),
            token: String::new(),
        }
        .encode();
        bytes.extend_from_slice(&[0xff; 5]); // fields this version does not know
        assert!(Frame::decode(&bytes).is_err());
        assert_eq!(Frame::hello_version(&bytes), Some(7));
        assert_eq!(
            Frame::hello_version(
                &Frame::Subscribe {
                    collections: vec![]
                }
                .encode()
            ),
            None
        );
    }

    #[test]
    fn error_keeps_its_variant_index_across_versions() {
        // A relay refuses a future or past version with an `Error` frame
        // the other side must be able to read: variant 7, always.
        let bytes = Frame::error(ErrorCode::VERSION, "", None).encode();
        assert_eq!(bytes[0], 7);
    }

    #[test]
    fn new_frames_are_appended_after_every_older_one() {
        // Older frames keep their indices; the two reauthentication frames
        // come last.
        let reauth = Frame::Reauth {
            token: String::new(),
        };
        assert_eq!(reauth.encode(), vec![9, 0]);
        let reauthorized = Frame::Reauthorized {
            expires_at_ms: Some(1),
        };
        assert_eq!(reauthorized.encode(), vec![10, 1, 1]);
        assert!(Frame::decode(&[11]).is_err(), "no index after Reauthorized");
        // The worked example of docs/protocol.md, section 3.
        let welcome = Frame::Welcome {
            version: 4,
            relay_id: "r".into(),
            expires_at_ms: Some(1_700_000_000_000),
        };
        let expected = [
            1, 4, 1, b'r', 1, 0xfd, 0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0,
        ];
        assert_eq!(welcome.encode(), expected);
    }

    #[test]
    fn cursor_frames_come_after_every_version_2_frame() {
        // Version 2 ended with `Ephemeral` (13); a version-2 peer never
        // sees the version-3 frames, and they never move older indices.
        let subscribe = Frame::SubscribeSince {
            collections: vec![SubscribeFrom {
                collection: "c".into(),
                cursor: Some(Cursor {
                    relay_id: "r".into(),
                    seq: 5,
                }),
            }],
        };
        assert_eq!(subscribe.encode(), vec![14, 1, 1, b'c', 1, 1, b'r', 5]);
        let listing = Frame::Listing {
            collection: "c".into(),
            since: None,
            seq: 7,
        };
        assert_eq!(listing.encode(), vec![15, 1, b'c', 0, 7]);
    }

    #[test]
    fn whole_document_frames_come_after_every_version_3_frame() {
        let subscribe = Frame::SubscribeWith {
            collections: vec![SubscribeRequest {
                collection: "c".into(),
                cursor: None,
                whole: true,
            }],
        };
        assert_eq!(subscribe.encode(), vec![16, 1, 1, b'c', 0, 1]);
        let doc = DocId::from_bytes([9; 16]);
        let documents = Frame::Documents {
            collection: "c".into(),
            docs: vec![WholeDoc {
                doc,
                data: vec![1, 2],
            }],
        };
        let bytes = documents.encode();
        assert_eq!(&bytes[..4], &[17, 1, b'c', 1]);
        assert_eq!(&bytes[bytes.len() - 3..], &[2, 1, 2]);
    }

    #[test]
    fn token_expired_closes_but_is_not_final() {
        assert_eq!(ErrorCode::TOKEN_EXPIRED.0, 20);
        assert_eq!(ErrorCode::TOKEN_EXPIRED.name(), "token_expired");
        assert!(ErrorCode::TOKEN_EXPIRED.closes_connection());
        assert!(!ErrorCode::TOKEN_EXPIRED.is_final());
    }

    #[test]
    fn garbage_and_unknown_codes() {
        assert!(Frame::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Frame::decode(&[]).is_err());
        assert_eq!(ErrorCode(999).name(), "unknown");
        assert!(ErrorCode(999).closes_connection());
        assert!(!ErrorCode::FORBIDDEN.closes_connection());
        assert!(!ErrorCode::STORAGE_UNAVAILABLE.closes_connection());
        assert!(ErrorCode::UNAUTHORIZED.is_final() && !ErrorCode::TOO_SLOW.is_final());
        assert_eq!(ErrorCode::VERSION.to_string(), "unsupported_version (2)");
    }
}
