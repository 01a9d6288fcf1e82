//! A cursor over untrusted bytes. Every read is bounds-checked and fails
//! with [`GuardError::Invalid`] naming what was being read; nothing here
//! allocates.

use super::GuardError;

/// The longest LEB128 encoding of a 64-bit number.
const MAX_LEB_BYTES: usize = 10;

/// Reads from the front of a byte slice.
#[derive(Debug, Clone)]
pub(super) struct Reader<'a> {
    /// The bytes not yet read.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `bytes`.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// Whether everything has been read.
    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The bytes not yet read, without consuming them.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Takes the next `n` bytes.
    pub(super) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GuardError> {
        let n = usize::try_from(n).map_err(|_| truncated(what))?;
        if n > self.rest.len() {
            return Err(truncated(what));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// Takes the next byte.
    pub(super) fn byte(&mut self, what: &str) -> Result<u8, GuardError> {
        let (&first, rest) = self.rest.split_first().ok_or_else(|| truncated(what))?;
        self.rest = rest;
        Ok(first)
    }

    /// Reads an unsigned LEB128 number that fits in 64 bits.
    pub(super) fn uleb(&mut self, what: &str) -> Result<u64, GuardError> {
        let mut value = 0u64;
        for index in 0..MAX_LEB_BYTES {
            let byte = self.byte(what)?;
            let bits = u64::from(byte & 0x7f);
            if index == MAX_LEB_BYTES - 1 && bits > 1 {
                return Err(GuardError::invalid(format!(
                    "{what}: LEB128 overflows 64 bits"
                )));
            }
            value |= bits << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(GuardError::invalid(format!(
            "{what}: LEB128 longer than 10 bytes"
        )))
    }

    /// Reads a signed LEB128 number that fits in 64 bits.
    pub(super) fn sleb(&mut self, what: &str) -> Result<i64, GuardError> {
        let mut value = 0i64;
        for index in 0..MAX_LEB_BYTES {
            let byte = self.byte(what)?;
            let shift = 7 * index;
            if index == MAX_LEB_BYTES - 1 && byte != 0 && byte != 0x7f {
                return Err(GuardError::invalid(format!(
                    "{what}: LEB128 overflows 64 bits"
                )));
            }
            value |= i64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if shift + 7 < 64 && byte & 0x40 != 0 {
                    value |= -1i64 << (shift + 7);
                }
                return Ok(value);
            }
        }
        Err(GuardError::invalid(format!(
            "{what}: LEB128 longer than 10 bytes"
        )))
    }

    /// Reads an unsigned LEB128 number that must fit in 32 bits.
    pub(super) fn uleb32(&mut self, what: &str) -> Result<u32, GuardError> {
        let value = self.uleb(what)?;
        u32::try_from(value)
            .map_err(|_| GuardError::invalid(format!("{what}: {value} does not fit in 32 bits")))
    }

    /// Reads a LEB128 length followed by that many bytes.
    pub(super) fn length_prefixed(&mut self, what: &str) -> Result<&'a [u8], GuardError> {
        let len = self.uleb(what)?;
        self.take(len, what)
    }
}

/// The error for input that ends in the middle of `what`.
fn truncated(what: &str) -> GuardError {
    GuardError::invalid(format!("{what}: the input ends early"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_round_trips_the_edges() {
        for value in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut bytes = Vec::new();
            let mut rest = value;
            loop {
                let byte = (rest & 0x7f) as u8;
                rest >>= 7;
                if rest == 0 {
                    bytes.push(byte);
                    break;
                }
                bytes.push(byte | 0x80);
            }
            assert_eq!(Reader::new(&bytes).uleb("n").ok(), Some(value));
        }
        for (bytes, value) in [
            (&[0x7f][..], -1i64),
            (&[0x3f][..], 63),
            (&[0x40][..], -64),
            (&[0x80, 0x7f][..], -128),
            (
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f][..],
                i64::MIN,
            ),
        ] {
            assert_eq!(Reader::new(bytes).sleb("n").ok(), Some(value));
        }
    }

    #[test]
    fn overlong_and_truncated_numbers_are_invalid() {
        let eleven = [0x80u8; 11];
        assert!(Reader::new(&eleven).uleb("n").is_err());
        assert!(Reader::new(&eleven).sleb("n").is_err());
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&too_big).uleb("n").is_err());
        assert!(Reader::new(&[0x80]).uleb("n").is_err());
        assert!(Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x10])
            .uleb32("n")
            .is_err());
        assert!(Reader::new(&[3, 1, 2]).length_prefixed("s").is_err());
        assert!(Reader::new(&[1]).take(u64::MAX, "s").is_err());
    }
}
