//! Heads: the set of changes a document's history ends in.

use std::fmt;

use automerge::ChangeHash;

/// A document's heads: the hashes of the changes no other change depends
/// on, kept sorted and without duplicates so two `Heads` compare equal
/// exactly when they name the same set.
///
/// One byte encoding serves the store's `heads` column and the wire's
/// announcements: the 32-byte hashes concatenated in sorted order
/// ([`Heads::to_bytes`]).
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Heads(Vec<ChangeHash>);

impl Heads {
    /// Heads from hashes in any order.
    pub fn new(mut hashes: Vec<ChangeHash>) -> Self {
        hashes.sort_unstable();
        hashes.dedup();
        Heads(hashes)
    }

    /// No heads: an empty (or unknown) document.
    pub fn empty() -> Self {
        Heads(Vec::new())
    }

    /// The hashes, sorted.
    pub fn as_slice(&self) -> &[ChangeHash] {
        &self.0
    }

    /// The hashes, sorted.
    pub fn into_vec(self) -> Vec<ChangeHash> {
        self.0
    }

    /// Whether every hash of `other` is among these.
    pub fn contains_all(&self, other: &Heads) -> bool {
        other.0.iter().all(|h| self.0.binary_search(h).is_ok())
    }

    /// The sorted hashes concatenated (32 bytes each).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|h| h.0).collect()
    }

    /// The inverse of [`Heads::to_bytes`]; `None` unless the length is a
    /// multiple of 32. Accepts any order (and sorts).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) {
            return None;
        }
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| ChangeHash::try_from(c).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Heads::new(hashes))
    }
}

impl From<Vec<ChangeHash>> for Heads {
    fn from(hashes: Vec<ChangeHash>) -> Self {
        Heads::new(hashes)
    }
}

impl From<&[ChangeHash]> for Heads {
    fn from(hashes: &[ChangeHash]) -> Self {
        Heads::new(hashes.to_vec())
    }
}

impl From<Heads> for Vec<ChangeHash> {
    fn from(heads: Heads) -> Self {
        heads.0
    }
}

impl std::ops::Deref for Heads {
    type Target = [ChangeHash];

    fn deref(&self) -> &[ChangeHash] {
        &self.0
    }
}

impl PartialEq<Vec<ChangeHash>> for Heads {
    fn eq(&self, other: &Vec<ChangeHash>) -> bool {
        *self == Heads::from(other.as_slice())
    }
}

impl<'a> IntoIterator for &'a Heads {
    type Item = &'a ChangeHash;
    type IntoIter = std::slice::Iter<'a, ChangeHash>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Heads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|h| h.to_string()[..12].to_owned()))
            .finish()
    }
}

impl serde::Serialize for Heads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_seq(self.0.iter().map(ChangeHash::to_string))
        } else {
            s.serialize_bytes(&self.to_bytes())
        }
    }
}

impl<'de> serde::Deserialize<'de> for Heads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let texts = Vec::<String>::deserialize(d)?;
            let hashes = texts
                .iter()
                .map(|t| t.parse::<ChangeHash>().map_err(D::Error::custom))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Heads::new(hashes))
        } else {
            let bytes = <Vec<u8>>::deserialize(d)?;
            Heads::from_bytes(&bytes)
                .ok_or_else(|| D::Error::custom("heads are not a multiple of 32 bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_and_bytes_round_trip() {
        let (a, b) = (ChangeHash([1; 32]), ChangeHash([2; 32]));
        let heads = Heads::new(vec![b, a, b]);
        assert_eq!(heads, Heads::new(vec![a, b]));
        assert_eq!(heads.len(), 2);
        assert_eq!(Heads::from_bytes(&heads.to_bytes()), Some(heads.clone()));
        assert_eq!(Heads::from_bytes(&[0; 33]), None);
        assert!(heads.contains_all(&Heads::new(vec![b])));
        assert!(!Heads::new(vec![a]).contains_all(&heads));
    }
}
