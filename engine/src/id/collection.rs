//! Collection names, parsed once where text enters.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// The longest collection name, in bytes.
pub const MAX_COLLECTION_LEN: usize = 128;

/// A valid collection name: 1 to 128 characters of `[A-Za-z0-9_.\-/]`.
///
/// Every record belongs to one collection. Text becomes a `Collection` at
/// the edges (the app API, the wire, the command line) and nowhere else, so
/// code below those edges never sees an invalid name; the store relies on
/// it when it puts a name into index DDL.
///
/// ```
/// use accord_engine::Collection;
/// let contacts: Collection = "contacts".parse()?;
/// assert_eq!(contacts, "contacts");
/// assert!("two words".parse::<Collection>().is_err());
/// # Ok::<(), accord_engine::id::ParseCollectionError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Collection(String);

/// Why a name is not a valid [`Collection`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad collection name '{name}': use 1-128 characters of letters, digits, '_', '-', '.', '/'"
)]
pub struct ParseCollectionError {
    /// The name as given.
    pub name: String,
}

impl Collection {
    /// Parses a collection name.
    pub fn new(name: impl Into<String>) -> Result<Self, ParseCollectionError> {
        let name = name.into();
        let ok = (1..=MAX_COLLECTION_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
        if ok {
            Ok(Collection(name))
        } else {
            Err(ParseCollectionError { name })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Collection {
    type Err = ParseCollectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Collection::new(s)
    }
}

impl TryFrom<String> for Collection {
    type Error = ParseCollectionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Collection::new(s)
    }
}

impl TryFrom<&str> for Collection {
    type Error = ParseCollectionError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Collection::new(s)
    }
}

impl From<Collection> for String {
    fn from(c: Collection) -> String {
        c.0
    }
}

impl std::ops::Deref for Collection {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Collection {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Collection {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Collection {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Collection {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Collection {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for Collection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Collection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Collection::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_once() {
        for good in ["contacts", "a", "team/notes-2.v1_x", &"x".repeat(128)] {
            assert_eq!(Collection::new(good).map(String::from), Ok(good.to_owned()));
        }
        for bad in ["", "two words", "quote'", "ü", &"x".repeat(129)] {
            assert!(Collection::new(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn compares_and_looks_up_as_text() {
        let c = Collection::new("contacts").expect("valid");
        assert_eq!(c, "contacts");
        let set: std::collections::BTreeSet<Collection> = [c.clone()].into();
        assert!(set.contains("contacts"));
        assert_eq!(format!("{c} {c:?}"), "contacts \"contacts\"");
    }
}
