//! Capped DEFLATE inflation.
//!
//! Automerge inflates compressed change chunks and compressed document
//! columns with `flate2::bufread::DeflateDecoder` and `read_to_end`, which
//! stops at the end of the DEFLATE stream (ignoring anything after it) and
//! grows its buffer without bound. [`inflate`] runs the same decoder over
//! the same bytes, so it sees exactly the output Automerge would see, but
//! stops as soon as the output passes the caller's limit, and never lets
//! the buffer's capacity exceed that limit by more than [`STEP`].

use std::io::Read;

use flate2::bufread::DeflateDecoder;

use super::GuardError;

/// How much is inflated at a time; also the most the output buffer may be
/// allocated beyond the limit.
pub(super) const STEP: usize = 64 * 1024;

/// Inflates the raw DEFLATE stream `compressed`, refusing to produce more
/// than `limit` bytes. `what` names the data in errors.
pub(super) fn inflate(compressed: &[u8], limit: u64, what: &str) -> Result<Vec<u8>, GuardError> {
    let mut decoder = DeflateDecoder::new(compressed);
    let mut out: Vec<u8> = Vec::new();
    let mut step = [0u8; 8 * 1024];
    loop {
        let n = decoder
            .read(&mut step)
            .map_err(|e| GuardError::invalid(format!("{what}: bad DEFLATE data: {e}")))?;
        if n == 0 {
            return Ok(out);
        }
        let total = out.len().saturating_add(n);
        if u64::try_from(total).map_or(true, |total| total > limit) {
            return Err(GuardError::TooLarge {
                what: "inflated bytes",
                limit,
                found: u64::try_from(total).unwrap_or(u64::MAX),
            });
        }
        reserve_within(&mut out, n, limit);
        out.extend_from_slice(step.get(..n).unwrap_or_default());
    }
}

/// Makes room for `more` bytes in `out`, growing geometrically (so the
/// copying stays linear) but never past `limit` + [`STEP`].
fn reserve_within(out: &mut Vec<u8>, more: usize, limit: u64) {
    if out.capacity() - out.len() >= more {
        return;
    }
    let ceiling = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_add(STEP);
    let wanted = out.capacity().saturating_mul(2).max(STEP).min(ceiling);
    let needed = out.len().saturating_add(more);
    out.reserve_exact(wanted.max(needed) - out.len());
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::DeflateEncoder;
    use flate2::Compression;

    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).expect("deflate");
        encoder.finish().expect("deflate")
    }

    #[test]
    fn inflates_what_fits_and_ignores_what_follows_the_stream() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut compressed = deflate(&data);
        compressed.extend_from_slice(b"trailing bytes Automerge ignores too");
        let out = inflate(&compressed, data.len() as u64, "test").expect("fits");
        assert_eq!(out, data);
        assert!(out.capacity() <= data.len() + STEP);
    }

    #[test]
    fn stops_at_the_limit() {
        let compressed = deflate(&vec![0u8; 10 * 1024 * 1024]);
        match inflate(&compressed, 1024 * 1024, "test") {
            Err(GuardError::TooLarge { limit, found, .. }) => {
                assert_eq!(limit, 1024 * 1024);
                assert!(found > limit && found <= limit + STEP as u64);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_invalid_or_empty_never_a_panic() {
        for bytes in [&[][..], &[0xff; 64][..], &[0x00, 0x05, 0x00][..]] {
            let _ = inflate(bytes, 1024, "test");
        }
        assert!(inflate(&[0xff; 64], 1024, "test").is_err());
    }
}
