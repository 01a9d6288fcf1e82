//! Relay settings. Every limit has a documented default (see
//! `docs/operations.md`); the binary maps flags and environment variables
//! onto [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use accord_engine::sync::{Access, Limits, OpenAccess};
use accord_engine::{Collection, ReplicaOptions};

/// The address the relay listens on when none is given: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// The database file the relay uses when none is given.
pub const DEFAULT_DB: &str = "accord-relay.db";

/// Where a separate `/health` and `/metrics` listener is bound when
/// nothing else is given: nowhere, since the main port serves both; a
/// fixed second port would keep a second relay on the machine from
/// starting.
pub const DEFAULT_METRICS_LISTEN: &str = "off";

/// The largest message before `Welcome`: room for a `Hello` with a long
/// token (a token naming many collections) and a `Subscribe` behind it.
pub const DEFAULT_MAX_HANDSHAKE_FRAME_BYTES: usize = 64 * 1024;

/// How many connections over a limit are answered at once by default:
/// well inside the open-file margin the binary keeps beyond
/// `max_connections`.
pub const DEFAULT_MAX_REFUSING_CONNECTIONS: usize = 32;

/// Everything the relay can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The SQLite file holding every document.
    pub db: PathBuf,
    /// The largest WebSocket message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// The largest WebSocket message accepted before the connection is
    /// welcomed (its `Hello`, and anything sent with it), in bytes; never
    /// more than `max_frame_bytes`. Keeps a peer that has not authenticated
    /// from making the relay reserve `max_frame_bytes` of memory.
    pub max_handshake_frame_bytes: usize,
    /// How many connections may be open at once.
    pub max_connections: usize,
    /// How many connections over a limit may be answered at once (an
    /// upgrade, `too_many_connections`, a close); beyond that they are
    /// dropped at once, so a flood cannot pile up refusal tasks.
    pub max_refusing_connections: usize,
    /// How many connections one client (an IPv4 address, an IPv6 /64) may
    /// have open at once, so one client cannot take every connection;
    /// loopback is not counted, 0 turns the limit off (see `limits`).
    pub max_connections_per_ip: usize,
    /// Frames queued for one connection before it counts as too slow and is
    /// disconnected.
    pub outbound_queue: usize,
    /// Messages queued for one document actor before senders wait.
    pub doc_queue: usize,
    /// How long a document actor lives without traffic.
    pub doc_idle: Duration,
    /// How many documents the relay's store keeps loaded in memory (live
    /// documents beyond this are reloaded from SQLite when touched).
    pub cache_docs: usize,
    /// The largest document the relay stores, in bytes: changes that would
    /// take a document past it are refused with `too_large` (the client
    /// stops offering it).
    pub max_document_bytes: u64,
    /// How long a new connection may take to say hello.
    pub handshake_timeout: Duration,
    /// How often the relay pings each connection.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is
    /// closed with `timeout`.
    pub idle_timeout: Duration,
    /// Per-connection message rate and document cap.
    pub limits: Limits,
    /// Who may do what: [`OpenAccess`] (open mode) or signed tokens.
    pub access: Arc<dyn Access>,
    /// Where documents first created by automerge-repo clients are stored
    /// when their token does not grant writing exactly one collection.
    pub automerge_repo_collection: Collection,
    /// Endpoints that receive collections' change feeds (`--webhooks`).
    pub webhooks: Vec<crate::webhooks::Webhook>,
    /// Run as a cluster node on a shared PostgreSQL store (and NATS bus)
    /// instead of the embedded SQLite file (`--store`, `--bus`).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7420))),
            db: PathBuf::from(DEFAULT_DB),
            max_frame_bytes: 16 * 1024 * 1024,
            max_handshake_frame_bytes: DEFAULT_MAX_HANDSHAKE_FRAME_BYTES,
            max_connections: 10_000,
            max_refusing_connections: DEFAULT_MAX_REFUSING_CONNECTIONS,
            max_connections_per_ip: crate::limits::DEFAULT_MAX_PER_IP,
            outbound_queue: 1024,
            doc_queue: 256,
            doc_idle: Duration::from_secs(30),
            cache_docs: ReplicaOptions::default().cache_capacity,
            max_document_bytes: 256 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            limits: Limits::default(),
            access: Arc::new(OpenAccess),
            automerge_repo_collection: Collection::new(
                accord_engine::sync::repo_session::DEFAULT_COLLECTION,
            )
            .expect("the default collection name is valid"),
            webhooks: Vec::new(),
            cluster: None,
        }
    }
}

impl Config {
    /// The message limit until a connection is welcomed.
    pub fn handshake_frame_limit(&self) -> usize {
        self.max_handshake_frame_bytes.min(self.max_frame_bytes)
    }
}
