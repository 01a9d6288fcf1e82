//! Per-connection limits the relay enforces, without I/O: a message rate
//! (a token bucket on the caller's clock) and a cap on how many distinct
//! documents one connection may sync. Exceeding either is fatal for that
//! connection only.

use std::collections::HashSet;

use super::protocol::ErrorCode;
use crate::id::DocId;

/// The limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most distinct documents one connection may sync.
    pub max_docs: usize,
    /// Sustained frames per second.
    pub rate_per_sec: f64,
    /// Frames that may arrive at once above the sustained rate.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_docs: 100_000,
            rate_per_sec: 5_000.0,
            burst: 20_000.0,
        }
    }
}

impl Limits {
    /// No limits at all (tests, trusted embedding).
    pub fn unlimited() -> Self {
        Limits {
            max_docs: usize::MAX,
            rate_per_sec: f64::INFINITY,
            burst: f64::INFINITY,
        }
    }
}

/// What one connection has used of its limits.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    /// The limits.
    limits: Limits,
    /// Documents synced so far.
    docs: HashSet<DocId>,
    /// Frames that may still arrive now.
    tokens: f64,
    /// When `tokens` was last refilled (ms).
    last_ms: Option<u64>,
}

impl Usage {
    pub(crate) fn new(limits: Limits) -> Self {
        Usage {
            limits,
            docs: HashSet::new(),
            tokens: limits.burst,
            last_ms: None,
        }
    }

    /// Counts one frame arriving at `now_ms`.
    pub(crate) fn frame(&mut self, now_ms: u64) -> Result<(), (ErrorCode, String)> {
        let elapsed = self.last_ms.map_or(0, |t| now_ms.saturating_sub(t));
        self.last_ms = Some(now_ms);
        let refill = elapsed as f64 / 1000.0 * self.limits.rate_per_sec;
        self.tokens = (self.tokens + refill).min(self.limits.burst);
        if self.tokens < 1.0 {
            let text = format!(
                "more than {} frames per second (burst {}); slow down and reconnect",
                self.limits.rate_per_sec, self.limits.burst
            );
            return Err((ErrorCode::RATE_LIMITED, text));
        }
        self.tokens -= 1.0;
        Ok(())
    }

    /// Counts a document this connection syncs.
    pub(crate) fn doc(&mut self, doc: DocId) -> Result<(), (ErrorCode, String)> {
        if self.docs.contains(&doc) {
            return Ok(());
        }
        if self.docs.len() >= self.limits.max_docs {
            let text = format!(
                "this connection already syncs {} documents, the limit",
                self.limits.max_docs
            );
            return Err((ErrorCode::TOO_MANY_DOCUMENTS, text));
        }
        self.docs.insert(doc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let mut u = Usage::new(Limits {
            max_docs: 2,
            rate_per_sec: 10.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            u.frame(0).expect("burst");
        }
        assert_eq!(u.frame(0).map_err(|e| e.0), Err(ErrorCode::RATE_LIMITED));
        u.frame(100).expect("one token after 100 ms at 10/s");
        assert!(u.frame(100).is_err());
        u.frame(10_000).expect("refilled");
    }

    #[test]
    fn documents_are_capped_per_connection() {
        let mut u = Usage::new(Limits {
            max_docs: 2,
            ..Limits::unlimited()
        });
        let (a, b) = (DocId::random(), DocId::random());
        u.doc(a).expect("first");
        u.doc(b).expect("second");
        u.doc(a).expect("same again");
        assert_eq!(
            u.doc(DocId::random()).map_err(|e| e.0),
            Err(ErrorCode::TOO_MANY_DOCUMENTS)
        );
    }
}
