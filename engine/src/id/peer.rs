//! Peer ids.

use std::fmt;

/// The longest peer id, in bytes.
pub const MAX_PEER_ID_LEN: usize = 128;

/// A peer's stable id: 1 to 128 bytes of text, chosen by the peer (a
/// replica uses its database's id). Sync states are kept under it on the
/// other side of a connection; changes from a peer are reported with
/// [`crate::Origin::Remote`] naming it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

/// Why a text is not a valid [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer id must be 1-{MAX_PEER_ID_LEN} bytes, got {len}")]
pub struct ParsePeerIdError {
    /// The length given.
    pub len: usize,
}

impl PeerId {
    /// Parses a peer id.
    pub fn new(id: impl Into<String>) -> Result<Self, ParsePeerIdError> {
        let id = id.into();
        if (1..=MAX_PEER_ID_LEN).contains(&id.len()) {
            Ok(PeerId(id))
        } else {
            Err(ParsePeerIdError { len: id.len() })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerId::new(s)
    }
}

impl From<PeerId> for String {
    fn from(p: PeerId) -> String {
        p.0
    }
}

impl AsRef<str> for PeerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PeerId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PeerId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
