//! `accord-relay`: a WebSocket server that stores every document it relays
//! and forwards changes live between replicas.
//!
//! The relay is the same engine as a replica: it keeps documents in an
//! `accord_engine::Replica` (SQLite, group commit, bounded document cache)
//! and speaks the sync core's sans-IO state machines. What it adds is I/O:
//!
//! # Layout
//!
//! - [`auth`]: signed tokens (HMAC-SHA256) with expiry and per-collection
//!   rights; the relay's `Access` implementation.
//! - [`config`]: settings and their defaults.
//! - [`server`]: the accept loop, connection limit and graceful shutdown;
//!   the only module that spawns connection tasks. [`run`] takes a bound
//!   listener and a shutdown token so tests can drive it.
//! - [`connection`]: one WebSocket: decodes frames, runs a `RelaySession`,
//!   and writes frames from its bounded outbound queue; wakes at the
//!   session's deadline (token expiry).
//! - `gate`: keeps the small handshake message limit until a connection
//!   is welcomed, then lets the connection move to the full limit without
//!   losing a byte.
//! - [`peers`]: the registry of live connections and their subscriptions,
//!   the fan-out seam ("send to the other peers of a collection").
//! - [`limits`]: connections per client address, counted with a permit
//!   per connection that gives its place back on drop.
//! - [`metrics`]: Prometheus metrics and the `/health` endpoint.
//! - [`db_lock`]: the advisory lock on `<db>.lock` that keeps a second
//!   relay off a database file one already serves (used by the binary).
//! - [`open_files`]: raises the open-file limit at start and checks that
//!   `--max-connections` fits in it (used by the binary).
//! - [`http`]: the plain-HTTP door on the main port: the inspector page,
//!   the JSON API under `/v1/` (also served by `accord inspect`), live
//!   change streams, `/health` and `/metrics`; [`http::head`] tells a
//!   WebSocket upgrade from a plain request.
//! - [`presence`]: who sent presence about which document lately, for
//!   the API's "open now by".
//! - [`webhooks`]: one delivery task per configured endpoint, reading the
//!   change feed from the store after a durable cursor; signed batches,
//!   retries, dead letters.
//! - [`cluster`]: running as one node of a cluster: the PostgreSQL store
//!   behind the same `SyncDocs` seam, the NATS bus between nodes, and
//!   catching up from the store on what the bus lost.
//! - [`docs`]: one actor per live document, owning its `DocHub`; actors
//!   stop when idle so memory stays bounded.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod db_lock;
pub mod docs;
pub mod feed_store;
mod gate;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod open_files;
pub mod peers;
pub mod presence;
pub mod server;
pub mod webhooks;

pub use config::Config;
pub use server::{run, Relay};
