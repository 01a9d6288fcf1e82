//! The one place that knows bincode.
//!
//! Every binary encoding of a serde type in Accord (the wire frames) goes
//! through [`encode`] and [`decode`], so the format can be swapped for another
//! without touching any other module. The configuration is bincode 2's
//! `standard()` (little-endian, variable-length integers) with a 64 MiB cap on
//! what one decode may allocate, so a hostile length prefix cannot exhaust
//! memory.

use serde::{de::DeserializeOwned, Serialize};

/// The most one decode may allocate, whatever a length prefix claims.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Why bytes could not be decoded into the expected type.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct DecodeError {
    /// Which type was expected.
    pub what: &'static str,
    /// What the decoder objected to.
    pub reason: String,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a value. Serde types made of plain data never fail to encode.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Frames are plain structs and enums of integers, strings and bytes;
    // bincode only fails on sequences of unknown length, which serde derive
    // never produces, and on the allocation limit, which applies to decoding.
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

/// Decodes a value, refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let (value, used) = decode_first(bytes, what)?;
    if used != bytes.len() {
        return Err(DecodeError {
            what,
            reason: format!("{} trailing bytes after the value", bytes.len() - used),
        });
    }
    Ok(value)
}

/// Decodes a value from the start of `bytes`; returns it and how many bytes
/// it took (for messages that carry several values back to back).
pub fn decode_first<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<(T, usize), DecodeError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|e| DecodeError {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a value from the start of `bytes`, ignoring what follows (for
/// reading a fixed prefix, such as a frame's variant and version, of a
/// message whose rest this build may not understand).
pub fn decode_prefix<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    decode_first(bytes, what).map(|(value, _)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Sample {
        A { name: String, data: Vec<u8> },
        B(u64),
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let v = Sample::A {
            name: "x".into(),
            data: vec![1, 2, 3],
        };
        let bytes = encode(&v);
        assert_eq!(decode::<Sample>(&bytes, "sample").ok(), Some(v));
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<Sample>(&long, "sample").is_err());
        assert!(decode::<Sample>(&[9, 9, 9], "sample").is_err());
        assert!(decode::<Sample>(&bytes[..bytes.len() - 1], "sample").is_err());
    }

    #[test]
    fn huge_declared_length_is_refused_without_allocating() {
        // Variant 0, then a string length claiming ~2^62 bytes.
        let bytes = [0u8, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x40];
        let err = decode::<Sample>(&bytes, "sample").expect_err("must refuse");
        assert!(err.to_string().contains("sample"));
    }
}
