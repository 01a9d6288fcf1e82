//! What a connection may do: the rights its token grants.
//!
//! The relay decides once, at `Hello`, through an [`Access`]
//! implementation (signed tokens in `accord-relay`, [`OpenAccess`] in
//! open mode); the [`Grant`] it returns is what every later frame of the
//! connection is checked against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::Collection;

/// What a token grants on one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Right {
    /// Read only.
    #[serde(rename = "r")]
    Read,
    /// Read and write.
    #[serde(rename = "rw")]
    ReadWrite,
}

/// What a connection may do, decided once from its `Hello` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Which collections, with which right.
    scope: Scope,
    /// When the grant ends (ms since the Unix epoch), if ever.
    expires_at_ms: Option<u64>,
    /// Who the grant was issued to, as the access check names it (for
    /// tokens, a digest of the token): the relay keeps a connection's sync
    /// states under it, so one token's holder can neither read nor
    /// overwrite the states of another's, nor keep more than a bounded
    /// number of them. `None` (open mode): states are kept under the peer
    /// id alone.
    subject: Option<String>,
}

/// The collections a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every collection, read and write (open mode).
    Everything,
    /// These collections with these rights; nothing else.
    Collections(BTreeMap<Collection, Right>),
}

impl Grant {
    /// Read and write every collection, for ever (open mode).
    pub fn everything() -> Self {
        Grant {
            scope: Scope::Everything,
            expires_at_ms: None,
            subject: None,
        }
    }

    /// Exactly these rights, until `expires_at_ms` (if given).
    pub fn collections(rights: BTreeMap<Collection, Right>, expires_at_ms: Option<u64>) -> Self {
        Grant {
            scope: Scope::Collections(rights),
            expires_at_ms,
            subject: None,
        }
    }

    /// The same grant, issued to `subject` (see [`Grant::subject`]).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Who the grant was issued to, if the access check names it: sync
    /// states are kept per subject and peer.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Whether documents of `collection` may be read.
    pub fn can_read(&self, collection: &str) -> bool {
        match &self.scope {
            Scope::Everything => true,
            Scope::Collections(c) => c.contains_key(collection),
        }
    }

    /// Whether the grant reads every collection, present and future (open
    /// mode): what reading across collections, such as SQL over the
    /// `records` view, needs.
    pub fn reads_everything(&self) -> bool {
        matches!(self.scope, Scope::Everything)
    }

    /// Whether documents of `collection` may be changed.
    pub fn can_write(&self, collection: &str) -> bool {
        match &self.scope {
            Scope::Everything => true,
            Scope::Collections(c) => c.get(collection) == Some(&Right::ReadWrite),
        }
    }

    /// The one collection the grant may write, if it names exactly one
    /// (where a client that names no collection creates its documents).
    pub fn sole_writable(&self) -> Option<&Collection> {
        let Scope::Collections(c) = &self.scope else {
            return None;
        };
        let mut writable = c
            .iter()
            .filter(|(_, right)| **right == Right::ReadWrite)
            .map(|(name, _)| name);
        match (writable.next(), writable.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// When the grant ends (ms since the Unix epoch), if ever.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }
}

/// Checks the token of a `Hello`.
pub trait Access: Send + Sync + std::fmt::Debug {
    /// The rights a token grants at `now_ms` (milliseconds since the Unix
    /// epoch), or why it grants none.
    fn check(&self, token: &str, now_ms: u64) -> Result<Grant, String>;
}

/// Accepts every token with every right: the relay's explicit open mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAccess;

impl Access for OpenAccess {
    fn check(&self, _token: &str, _now_ms: u64) -> Result<Grant, String> {
        Ok(Grant::everything())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_are_per_collection() {
        let c = |n: &str| Collection::new(n).expect("valid");
        let grant = Grant::collections(
            [(c("a"), Right::ReadWrite), (c("b"), Right::Read)].into(),
            Some(5),
        );
        assert!(grant.can_read("a") && grant.can_write("a"));
        assert!(grant.can_read("b") && !grant.can_write("b"));
        assert!(!grant.can_read("c") && !grant.can_write("c"));
        assert_eq!(grant.expires_at_ms(), Some(5));
        assert!(Grant::everything().can_write("anything"));
    }
}
