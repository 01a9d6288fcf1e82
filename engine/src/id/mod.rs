//! The bottom layer: the values every other layer names things with.
//!
//! A [`DocId`] is 16 random bytes printed as bs58check, the format the wider
//! Automerge ecosystem (automerge-repo, samod) uses, so an id copied from one
//! tool is valid in another. `automerge:<id>` URLs are accepted wherever an id
//! is parsed, and [`DocId::url`] prints one. A [`Collection`] is a valid
//! collection name, [`Heads`] a document's sorted heads, and a [`PeerId`] a
//! peer's stable id: each is parsed once where text or bytes enter, so the
//! store, the sync core and the replica take them without checking again.

mod collection;
mod heads;
mod peer;

use std::fmt;
use std::str::FromStr;

pub use collection::{Collection, ParseCollectionError, MAX_COLLECTION_LEN};
pub use heads::Heads;
pub use peer::{ParsePeerIdError, PeerId, MAX_PEER_ID_LEN};

/// The URL scheme of the Automerge ecosystem's document URLs.
const URL_PREFIX: &str = "automerge:";

/// The identity of one record (one Automerge document).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId([u8; 16]);

/// Why a string is not a valid [`DocId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseDocIdError {
    /// The text is not base58 with a valid 4-byte checksum.
    #[error("'{input}' is not a valid record id: {reason}")]
    Encoding {
        /// What was given.
        input: String,
        /// What the decoder objected to.
        reason: String,
    },
    /// The checksum was fine but the payload is not 16 bytes.
    #[error("'{input}' is not a valid record id: it holds {len} bytes, expected 16")]
    Length {
        /// What was given.
        input: String,
        /// How many bytes it decoded to.
        len: usize,
    },
}

impl DocId {
    /// A fresh random id.
    pub fn random() -> Self {
        DocId(rand::random())
    }

    /// The id made of exactly these bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        DocId(bytes)
    }

    /// The id from a byte slice, if it has exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(DocId)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The `automerge:<id>` URL of this document.
    pub fn url(&self) -> String {
        format!("{URL_PREFIX}{self}")
    }
}

/// The first `len` hex digits of SHA-256 of `bytes`: a short stable
/// digest for keys (not a secret).
pub fn digest_hex(bytes: &[u8], len: usize) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let mut hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(len);
    hex
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl FromStr for DocId {
    type Err = ParseDocIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let text = trimmed.strip_prefix(URL_PREFIX).unwrap_or(trimmed);
        let bytes = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(|e| ParseDocIdError::Encoding {
                input: s.to_owned(),
                reason: match e {
                    bs58::decode::Error::InvalidCharacter { character, .. } => {
                        format!("'{character}' is not a base58 character")
                    }
                    bs58::decode::Error::NonAsciiCharacter { .. } => {
                        "it holds a character that is not base58".to_owned()
                    }
                    bs58::decode::Error::InvalidChecksum { .. } => {
                        "its checksum does not match (a typo, or a truncated id?)".to_owned()
                    }
                    bs58::decode::Error::NoChecksum => "it is too short".to_owned(),
                    other => other.to_string(),
                },
            })?;
        DocId::from_slice(&bytes).ok_or(ParseDocIdError::Length {
            input: s.to_owned(),
            len: bytes.len(),
        })
    }
}

impl serde::Serialize for DocId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for DocId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            let bytes: serde_bytes_array::Bytes16 = serde::Deserialize::deserialize(d)?;
            Ok(DocId(bytes.0))
        }
    }
}

/// Serde helper so a `DocId` is encoded as a length-prefixed byte string in
/// binary formats, without pulling in `serde_bytes`.
mod serde_bytes_array {
    use serde::de::{Error, Visitor};
    use std::fmt;

    pub(super) struct Bytes16(pub [u8; 16]);

    impl<'de> serde::Deserialize<'de> for Bytes16 {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes16;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("16 bytes of document id")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes16, E> {
                    v.try_into()
                        .map(Bytes16)
                        .map_err(|_| E::invalid_length(v.len(), &self))
                }
                fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes16, E> {
                    self.visit_bytes(v)
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes16, E> {
                    self.visit_bytes(&v)
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip_and_url() {
        let id = DocId::random();
        assert_eq!(id.to_string().parse::<DocId>(), Ok(id));
        assert_eq!(id.url().parse::<DocId>(), Ok(id));
        assert!(id.url().starts_with("automerge:"));
    }

    #[test]
    fn matches_automerge_repo_encoding() {
        // bs58check of 16 zero bytes, as automerge-repo's `stringifyAutomergeUrl` prints it.
        let id = DocId::from_bytes([0; 16]);
        let text = id.to_string();
        let decoded = bs58::decode(&text).with_check(None).into_vec();
        assert_eq!(decoded.as_deref(), Ok(&[0u8; 16][..]));
    }

    #[test]
    fn rejects_bad_checksum_and_length() {
        let id = DocId::random().to_string();
        let mut broken = id.clone().into_bytes();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == b'2' { b'3' } else { b'2' };
        let broken = String::from_utf8(broken).expect("ascii");
        assert!(matches!(
            broken.parse::<DocId>(),
            Err(ParseDocIdError::Encoding { .. })
        ));
        let short = bs58::encode(&[1u8; 8]).with_check().into_string();
        assert!(matches!(
            short.parse::<DocId>(),
            Err(ParseDocIdError::Length { len: 8, .. })
        ));
        assert!("not an id!".parse::<DocId>().is_err());
    }
}
