//! Per-connection limits the relay enforces, without I/O: a message rate
//! (a token bucket on the caller's clock), a cap on how many distinct
//! documents one connection may sync, a cap on its subscriptions, and a
//! budget of announced documents (a second token bucket: announcing is the
//! work a cheap `Subscribe` asks for, so it is paced, not refused).
//! Exceeding the rate or the document cap is fatal for that connection
//! only.

use std::collections::HashSet;

use super::protocol::ErrorCode;
use crate::id::DocId;

/// The bytes of a document sent whole that count as one announced
/// document in the announcement budget: a listing of whole documents
/// reads and sends far more than one of heads, and a cheap `Subscribe`
/// must not buy more of it than the budget allows.
pub const WHOLE_UNIT_BYTES: usize = 1024;

/// The limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most distinct documents one connection may sync.
    pub max_docs: usize,
    /// Sustained frames per second.
    pub rate_per_sec: f64,
    /// Frames that may arrive at once above the sustained rate.
    pub burst: f64,
    /// Most collections one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Most peers (devices) whose sync states the relay keeps per token
    /// subject; the least recently used beyond it are dropped (they only
    /// cost a fuller exchange).
    pub max_peers_per_subject: usize,
    /// Documents per second the relay announces to one connection,
    /// sustained; a listing beyond the budget waits for it. A document
    /// sent whole counts as one per started KiB of its saved form (see
    /// [`WHOLE_UNIT_BYTES`]), so the budget bounds bytes as well.
    pub announce_per_sec: f64,
    /// Documents that may be announced at once above the sustained rate
    /// (a first sync of a large collection).
    pub announce_burst: f64,
    /// Largest ephemeral (presence) payload passed on, in bytes.
    pub max_ephemeral_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_docs: 100_000,
            rate_per_sec: 5_000.0,
            burst: 20_000.0,
            max_subscriptions: 1_024,
            max_peers_per_subject: 64,
            announce_per_sec: 50_000.0,
            announce_burst: 500_000.0,
            max_ephemeral_bytes: 16 * 1024,
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
            max_subscriptions: usize::MAX,
            max_peers_per_subject: usize::MAX,
            announce_per_sec: f64::INFINITY,
            announce_burst: f64::INFINITY,
            max_ephemeral_bytes: usize::MAX,
        }
    }
}

/// The longest session id an ephemeral frame may carry, in bytes (what the
/// automerge-repo codec keeps of any text field).
pub const MAX_EPHEMERAL_SESSION: usize = super::repo_wire::MAX_TEXT;

/// Whether an ephemeral frame fits: its payload at most `max_bytes`, its
/// session id at most [`MAX_EPHEMERAL_SESSION`]. Both are passed on to
/// every listener, so both are bounded before anything is.
pub(crate) fn check_ephemeral(
    max_bytes: usize,
    session: &str,
    data: &[u8],
) -> Result<(), (ErrorCode, String)> {
    let (bytes, id) = (data.len(), session.len());
    if bytes > max_bytes {
        let text =
            format!("an ephemeral payload may be at most {max_bytes} bytes; this one is {bytes}");
        return Err((ErrorCode::TOO_LARGE, text));
    }
    if id > MAX_EPHEMERAL_SESSION {
        let text = format!(
            "an ephemeral session id may be at most {MAX_EPHEMERAL_SESSION} bytes; this one is {id}"
        );
        return Err((ErrorCode::TOO_LARGE, text));
    }
    Ok(())
}

/// What one connection has used of its limits.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    /// The limits.
    limits: Limits,
    /// Documents synced so far.
    docs: HashSet<DocId>,
    /// Frames that may arrive.
    frames: Bucket,
    /// Documents that may be announced.
    announced: Bucket,
}

/// A token bucket on the caller's clock.
#[derive(Debug, Clone)]
struct Bucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens held now.
    tokens: f64,
    /// When `tokens` was last refilled (ms).
    last_ms: Option<u64>,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last_ms: None,
        }
    }

    /// The tokens available at `now_ms`.
    fn refill(&mut self, now_ms: u64) -> f64 {
        let elapsed = self.last_ms.map_or(0, |t| now_ms.saturating_sub(t));
        self.last_ms = Some(now_ms);
        self.tokens = (self.tokens + elapsed as f64 / 1000.0 * self.rate).min(self.burst);
        self.tokens
    }

    /// When at least one token will be available (ms), if it ever will.
    fn ready_at(&self, now_ms: u64) -> Option<u64> {
        if self.tokens >= 1.0 {
            return Some(now_ms);
        }
        if self.rate <= 0.0 {
            return None;
        }
        let wait = ((1.0 - self.tokens) / self.rate * 1000.0).ceil();
        Some(now_ms.saturating_add(wait as u64))
    }
}

impl Usage {
    pub(crate) fn new(limits: Limits) -> Self {
        Usage {
            limits,
            docs: HashSet::new(),
            frames: Bucket::new(limits.rate_per_sec, limits.burst),
            announced: Bucket::new(limits.announce_per_sec, limits.announce_burst),
        }
    }

    /// The limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts one frame arriving at `now_ms`.
    pub(crate) fn frame(&mut self, now_ms: u64) -> Result<(), (ErrorCode, String)> {
        if self.frames.refill(now_ms) < 1.0 {
            let text = format!(
                "more than {} frames per second (burst {}); slow down and reconnect",
                self.limits.rate_per_sec, self.limits.burst
            );
            return Err((ErrorCode::RATE_LIMITED, text));
        }
        self.frames.tokens -= 1.0;
        Ok(())
    }

    /// How many documents may be announced at `now_ms` (up to `want`);
    /// when none may, the time at which one may.
    pub(crate) fn announce_allowance(&mut self, now_ms: u64, want: usize) -> Result<usize, u64> {
        let available = self.announced.refill(now_ms);
        if available < 1.0 {
            return Err(self.announced.ready_at(now_ms).unwrap_or(u64::MAX));
        }
        Ok(want.min(available as usize))
    }

    /// Counts documents announced.
    pub(crate) fn announced(&mut self, docs: usize) {
        self.announced.tokens -= docs as f64;
    }

    /// Counts a document this connection syncs.
    /// Checks the size of an ephemeral payload and its session id.
    pub(crate) fn ephemeral(&self, session: &str, data: &[u8]) -> Result<(), (ErrorCode, String)> {
        check_ephemeral(self.limits.max_ephemeral_bytes, session, data)
    }

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
    fn announcing_is_paced_not_refused() {
        let mut u = Usage::new(Limits {
            announce_per_sec: 1_000.0,
            announce_burst: 500.0,
            ..Limits::unlimited()
        });
        assert_eq!(u.announce_allowance(0, 800), Ok(500));
        u.announced(500);
        assert_eq!(u.announce_allowance(0, 10), Err(1), "one token after 1 ms");
        assert_eq!(u.announce_allowance(100, 800), Ok(100));
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let mut u = Usage::new(Limits {
            max_docs: 2,
            rate_per_sec: 10.0,
            burst: 3.0,
            ..Limits::unlimited()
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
