//! The client driver: a replica's background connection to a relay.
//!
//! [`Replica::connect`] spawns a task on the current tokio runtime that owns
//! the WebSocket and a sans-IO [`crate::sync::ClientSession`]. Everything
//! that touches SQLite (the session reading and persisting documents) runs
//! on the blocking pool; the task itself only moves frames. It reconnects
//! with exponential backoff and jitter, except after a refusal that
//! retrying cannot fix (bad token, unsupported version). [`SyncHandle`]
//! exposes the connection state and [`SyncHandle::wait_synced`].
//!
//! A driver may hold several relay URLs, the nodes of one cluster
//! ([`ConnectOptions::fallback_urls`]): after an attempt that failed or a
//! connection that ended, the next attempt goes to the next URL. Nothing
//! in the driver or the session keeps the relay's id from one connection
//! to the next: each `Welcome` names it, and the sync states and cursors
//! of that id are the ones read and saved.
//!
//! Tokens expire. [`SyncHandle::set_token`] hands the driver a fresh one:
//! it goes out at once on the open connection (`Reauth`) and in every
//! later `Hello`. A driver whose token was refused or expired has no way
//! to get another by itself: it stops ([`ConnectionState::Stopped`], the
//! reason in [`SyncStatus::last_error`]) and resumes when `set_token`
//! gives it one.
//!
//! Layout: this module holds the public types (options, state, status,
//! errors), `handle` the app's [`SyncHandle`], `task` the background task,
//! `relays` the list of relay URLs it goes through.
//!
//! Failures reach the app: the relay's refusals, this replica's storage
//! failures during sync, and a panic inside the session (the connection
//! ends, a fresh session reconnects and resyncs) all land in
//! [`SyncStatus::last_error`].

mod handle;
mod relays;
mod task;

use std::time::{Duration, SystemTime};

pub use handle::SyncHandle;

use std::collections::{BTreeMap, BTreeSet};

use crate::id::DocId;
use crate::sync::{ErrorCode, SessionStats};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The token presented in `Hello` (empty for an open relay); replaced
    /// by [`SyncHandle::set_token`].
    pub token: String,
    /// Collections to sync.
    pub collections: Vec<String>,
    /// How many documents may be mid-exchange at once.
    pub max_in_flight: usize,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// More URLs of the same relay cluster, after the one given to
    /// [`crate::Replica::connect`], tried in order: an attempt that fails
    /// (unreachable, refused in a way another attempt may fix) or a
    /// connection that ends sends the next attempt to the next URL, after
    /// the last back to the first, with the usual backoff in between.
    /// Empty by default: every attempt goes to the `connect` URL. The
    /// nodes of one cluster share one relay id, so sync states and
    /// cursors carry over from one to another; a relay with another id
    /// costs a full comparison (nothing is lost: it receives what it
    /// lacks).
    pub fallback_urls: Vec<String>,
    /// Whether to reconnect after the connection drops. Without, each URL
    /// (the `connect` one, then the fallbacks) gets one attempt: the
    /// driver stops once the attempt at the last URL has ended.
    pub reconnect: bool,
    /// Largest accepted message from the relay, in bytes.
    pub max_frame_bytes: usize,
    /// Largest message the relay accepts (its `--max-frame-bytes`): the
    /// driver never sends a larger one. A record holding a single change
    /// larger than this cannot sync and is reported (`too_large`) instead;
    /// longer histories are sent in batches well below it.
    pub relay_max_frame_bytes: usize,
    /// Reconnect when nothing (not even a ping) arrived for this long; the
    /// relay pings every 20 s by default.
    pub idle_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: String::new(),
            collections: Vec::new(),
            max_in_flight: 64,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            fallback_urls: Vec::new(),
            reconnect: true,
            max_frame_bytes: 64 * 1024 * 1024,
            relay_max_frame_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect (or waiting to retry).
    Connecting,
    /// Welcomed by the relay.
    Connected,
    /// Stopped: closed by the app, or refused in a way retrying cannot fix.
    /// After a refused or expired token the driver waits here for
    /// [`SyncHandle::set_token`], and connects again with the new token.
    Stopped,
}

/// Why syncing failed or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The relay could not be reached or the connection broke.
    #[error("cannot reach relay {url}: {reason}")]
    Unreachable {
        /// The relay URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The relay refused or reported an error.
    #[error("relay {url} refused: {message} [{code}]")]
    Refused {
        /// The URL of the relay that refused.
        url: String,
        /// The relay's error code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// This replica could not read or apply something while syncing (its
    /// own storage failed, or the relay sent data it could not apply).
    #[error("sync failed locally: {message} [{code}]")]
    Local {
        /// What kind of failure.
        code: ErrorCode,
        /// The error.
        message: String,
    },
    /// A collection name given to `connect` is not valid.
    #[error(transparent)]
    BadCollection(#[from] crate::id::ParseCollectionError),
    /// The sync session failed internally (a bug); the connection was
    /// restarted with a fresh session.
    #[error("sync session failed: {0}")]
    Internal(String),
    /// The wait timed out.
    #[error("not synced within {0:?}")]
    Timeout(Duration),
    /// The driver stopped.
    #[error("sync stopped")]
    Stopped,
}

/// A presence payload another peer sent for a record (who is looking at
/// which contact, a cursor): passed on by the relay, never stored. See
/// [`SyncHandle::broadcast`] and [`SyncHandle::presence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The record.
    pub doc: DocId,
    /// Its collection.
    pub collection: crate::id::Collection,
    /// Who sent it: an Accord replica's peer id, or an automerge-repo
    /// client's peer id.
    pub sender: String,
    /// The payload, as sent.
    pub data: Vec<u8>,
}

/// How many presence payloads wait for a slow reader of
/// [`SyncHandle::presence`] before it misses some (and is told how many).
pub const PRESENCE_BUFFER: usize = 256;

/// A snapshot of the driver's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// The connection state.
    pub state: ConnectionState,
    /// The URL of the open connection's relay, or of the attempt under
    /// way or last made: the `connect` URL or one of
    /// [`ConnectOptions::fallback_urls`]. A relay's error in `last_error`
    /// or `refused` names its own URL, as it may come from an earlier
    /// attempt at another.
    pub relay_url: String,
    /// Whether the relay holds every local change of the subscribed
    /// collections made before the last check.
    pub synced: bool,
    /// Whether, in addition, this replica holds everything the relay
    /// holds in those collections (as of the last check).
    pub agreed: bool,
    /// The last check request this status answers.
    pub checked: u64,
    /// Documents waiting for or in the middle of an exchange.
    pub pending: usize,
    /// Counters of the current connection.
    pub stats: SessionStats,
    /// How many times the relay welcomed us.
    pub connects: u64,
    /// The most recent error, if any.
    pub last_error: Option<SyncError>,
    /// A refusal of this connection's rights (`forbidden`): waiting for
    /// sync fails with it instead of timing out.
    pub refused: Option<SyncError>,
    /// When the token the relay accepted last expires, if it said so (an
    /// open relay's grant never does). The relay closes the connection
    /// with `token_expired` at that time: call [`SyncHandle::set_token`]
    /// with a fresh token before. A token given by `set_token` counts
    /// once the relay accepted it.
    pub token_expires: Option<SystemTime>,
    /// Collections the relay refused on the current connection (no right
    /// to read them, a bad name), with its reason: the others sync, and
    /// waiting for sync does not wait for these.
    pub skipped: BTreeMap<String, String>,
    /// Collections the current connection may only read: they are pulled,
    /// and local changes to them stay local (see `unpushed`).
    pub read_only: BTreeSet<String>,
    /// As of the last answered check: records of read-only collections
    /// with local changes or a tombstone the relay does not hold. They
    /// stay in this replica (and sync if a later connection may write).
    pub unpushed: Vec<DocId>,
}

impl SyncStatus {
    fn initial(url: &str) -> Self {
        SyncStatus {
            state: ConnectionState::Connecting,
            relay_url: url.to_owned(),
            synced: false,
            agreed: false,
            checked: 0,
            pending: 0,
            stats: SessionStats::default(),
            connects: 0,
            last_error: None,
            refused: None,
            token_expires: None,
            skipped: BTreeMap::new(),
            read_only: BTreeSet::new(),
            unpushed: Vec::new(),
        }
    }
}
