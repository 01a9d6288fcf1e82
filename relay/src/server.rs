//! The accept loop and graceful shutdown.
//!
//! [`run`] takes a bound listener and a cancellation token (the binary
//! cancels it on SIGINT/SIGTERM; tests cancel it directly). It stops
//! accepting when cancelled, tells every connection to close, lets document
//! actors persist their sync states, and returns once every task ended.
//!
//! Connections over a limit are answered with `too_many_connections` by a
//! short task with the handshake's small message limit; at most
//! `Config::max_refusing_connections` such tasks exist at once, and
//! connections beyond are dropped unanswered (counted in
//! `accord_relay_dropped_connections_total`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accord_engine::sync::{Access, ConnId, ErrorCode, Frame, SyncDocs};
use accord_engine::{Replica, ReplicaOptions};
use anyhow::Context;
use futures_util::SinkExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::docs::DocActors;
use crate::feed_store::FeedStore;
use crate::http::{Api, RelayLinks};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::presence::Presence;

/// State shared by every task of one relay.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// The relay's documents, reached only through the storage seam.
    pub store: Store,
    /// The same storage as the engine's replica, for inspection.
    replica: Replica,
    /// The relay's stable id (its database's peer id).
    pub relay_id: String,
    /// Who may do what.
    pub access: Arc<dyn Access>,
    /// Live connections.
    pub peers: Peers,
    /// Counters for the operator.
    pub metrics: Arc<Metrics>,
    /// Document actors.
    pub docs: DocActors,
    /// Cancelled to shut down.
    pub shutdown: CancellationToken,
    /// Who sent presence about which document lately.
    pub presence: Arc<Presence>,
    /// What plain HTTP requests on the main port are served by.
    pub http: axum::Router,
    /// On a cluster node: presence frames for the other nodes (dropped
    /// when the queue is full; presence is worth less than sync).
    pub ephemeral_out: Option<tokio::sync::mpsc::Sender<accord_engine::sync::Frame>>,
    /// Clock origin for the sync core.
    started: Instant,
}

impl Shared {
    /// Wall-clock milliseconds since the Unix epoch: token expiry is
    /// wall-clock time, and the sync core only needs a clock that moves.
    pub fn now_ms(&self) -> u64 {
        accord_engine::store::now_ms().max(0) as u64
    }

    /// How long the relay has been running.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// A handle on a running relay's state, for tests and embedding.
#[derive(Debug, Clone)]
pub struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    /// The replica holding the relay's documents (on a cluster node, an
    /// empty in-memory one: its documents are in PostgreSQL).
    pub fn replica(&self) -> &Replica {
        &self.shared.replica
    }

    /// How many connections are welcomed now.
    pub fn connections(&self) -> usize {
        self.shared.peers.len()
    }

    /// How many document actors are running.
    pub fn live_documents(&self) -> i64 {
        self.shared.metrics.live_documents.get()
    }

    /// The registry of live connections (the fan-out seam).
    pub fn peers(&self) -> &Peers {
        &self.shared.peers
    }

    /// The id the relay announces in `Welcome` (on a cluster node, the
    /// cluster's).
    pub fn relay_id(&self) -> &str {
        &self.shared.relay_id
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }
}

/// Opens the relay's database and serves `listener` until `shutdown` is
/// cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let relay = start(config, shutdown.clone()).await?;
    serve(listener, relay, shutdown).await
}

/// Opens the database and builds the shared state: the embedded SQLite
/// file, or with [`Config::cluster`] the shared PostgreSQL store and bus.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Relay> {
    if config.cluster.is_some() {
        return start_cluster(config, shutdown).await;
    }
    start_with(config, shutdown, |replica| Arc::new(replica)).await
}

/// Starts a cluster node: the PostgreSQL store behind the storage seam,
/// the cluster's id as the relay id, and the node task that carries
/// commits over the bus and catches up from the store.
async fn start_cluster(config: Config, shutdown: CancellationToken) -> anyhow::Result<Relay> {
    use crate::cluster::{self, bus, store::PgStore, store::StoreLimits, ClusterHealth};
    let Some(cluster) = config.cluster.clone() else {
        anyhow::bail!("not a cluster configuration");
    };
    let (pool, cluster_id) = cluster::open_store(&cluster).await?;
    tracing::info!(store = %cluster::redact(&cluster.store), schema = cluster.schema, cluster = cluster_id, "PostgreSQL store open");
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(ClusterHealth {
        store: Default::default(),
        bus: cluster.bus.as_ref().map(|_| Default::default()),
    });
    health.store.set(true);
    *metrics.cluster.lock() = Some(Arc::clone(&health));
    let defaults = ReplicaOptions::default();
    let limits = StoreLimits {
        max_document_bytes: config.max_document_bytes,
        max_sync_message_bytes: defaults.max_sync_message_bytes,
        max_sync_message_ops: defaults.max_sync_message_ops,
        message_budget: defaults.message_budget,
        cache_docs: config.cache_docs,
        compact_after: 256,
    };
    let (committed_tx, committed_rx) = tokio::sync::mpsc::channel(4096);
    let (ephemeral_tx, ephemeral_rx) = tokio::sync::mpsc::channel(1024);
    let pg = Arc::new(PgStore::new(
        pool,
        tokio::runtime::Handle::current(),
        limits,
        committed_tx,
        cluster::store_latency(&metrics),
    ));
    let store: Store = pg.clone();
    let peers = Peers::default();
    let tracker = TaskTracker::new();
    let docs = DocActors::new(
        Arc::clone(&store),
        peers.clone(),
        config.clone(),
        tracker.clone(),
        shutdown.clone(),
        Arc::clone(&metrics),
    );
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let bus_client = match &cluster.bus {
        Some(url) => Some(
            bus::connect(url, Arc::clone(&health), Arc::clone(&reconnected))
                .await
                .with_context(|| format!("bad --bus {url}"))?,
        ),
        None => None,
    };
    let node = bus::Node {
        id: accord_engine::DocId::random().to_string(),
        subject: format!("accord.{cluster_id}.commits"),
        ephemeral_subject: format!("accord.{cluster_id}.ephemeral"),
        store: Arc::clone(&pg),
        docs: docs.clone(),
        peers: peers.clone(),
        metrics: Arc::clone(&metrics),
        health,
        catch_up_interval: cluster.catch_up_interval,
    };
    tracker.spawn(flush_sync_states(
        Arc::clone(&node.store),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    tracker.spawn(node.run(
        bus_client,
        committed_rx,
        ephemeral_rx,
        reconnected,
        shutdown.clone(),
    ));
    // Kept for `Relay::replica`; the node's documents are in PostgreSQL.
    let replica = tokio::task::spawn_blocking(Replica::open_in_memory).await??;
    let feed = FeedStore::Cluster(pg);
    crate::webhooks::start(&config.webhooks, &feed, &metrics, &tracker, &shutdown);
    let (http, presence) = http_door(&config, &replica, feed, &docs, &peers, &metrics, &shutdown);
    let shared = Shared {
        relay_id: cluster_id,
        access: Arc::clone(&config.access),
        http,
        config,
        store,
        replica,
        metrics,
        peers,
        docs,
        shutdown,
        presence,
        ephemeral_out: cluster.bus.is_some().then_some(ephemeral_tx),
        started: Instant::now(),
    };
    Ok(Relay {
        shared: Arc::new(shared),
    })
}

/// The plain-HTTP door over `feed` (see [`Api::relay`]), the same for a
/// single relay and a cluster node, and the presence table it shares with
/// the sync connections.
fn http_door(
    config: &Config,
    replica: &Replica,
    feed: FeedStore,
    docs: &DocActors,
    peers: &Peers,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> (axum::Router, Arc<Presence>) {
    let presence = Arc::new(Presence::default());
    let links = RelayLinks {
        docs: docs.clone(),
        peers: peers.clone(),
        presence: Arc::clone(&presence),
        metrics: Arc::clone(metrics),
        webhooks: config.webhooks.clone(),
    };
    let api = Api::relay(
        replica.clone(),
        feed,
        Arc::clone(&config.access),
        links,
        shutdown.clone(),
    );
    (api.router(), presence)
}

/// The storage seam as the relay reaches it.
pub type Store = Arc<dyn SyncDocs + Send + Sync>;

/// Like [`start`], with a layer around the storage seam: `store` receives
/// the relay's replica and returns what the relay syncs through (the
/// replica itself, or something wrapping it: a cluster's shared store, a
/// test's fault injection).
pub async fn start_with(
    config: Config,
    shutdown: CancellationToken,
    store: impl FnOnce(Replica) -> Store,
) -> anyhow::Result<Relay> {
    let db = config.db.clone();
    let options = ReplicaOptions {
        cache_capacity: config.cache_docs,
        max_document_bytes: Some(config.max_document_bytes),
        // The relay answers peers from what it has stored, never from a
        // damaged document's copy being fetched (an answer acknowledges).
        refetch_damaged: false,
        // An answer to a peer acknowledges its changes as stored: they
        // reach the disk before it goes.
        received_durability: accord_engine::Durability::Full,
        ..ReplicaOptions::default()
    };
    let replica = tokio::task::spawn_blocking(move || Replica::open_with(&db, options))
        .await?
        .with_context(|| format!("cannot open relay database {}", config.db.display()))?;
    let peers = Peers::default();
    let tracker = TaskTracker::new();
    let metrics = Arc::new(Metrics::default());
    let store = store(replica.clone());
    let feed = FeedStore::Replica(replica.clone());
    crate::webhooks::start(&config.webhooks, &feed, &metrics, &tracker, &shutdown);
    let docs = DocActors::new(
        Arc::clone(&store),
        peers.clone(),
        config.clone(),
        tracker,
        shutdown.clone(),
        Arc::clone(&metrics),
    );
    let (http, presence) = http_door(&config, &replica, feed, &docs, &peers, &metrics, &shutdown);
    let shared = Shared {
        relay_id: replica.peer_id().to_string(),
        access: Arc::clone(&config.access),
        config,
        store,
        replica,
        metrics,
        peers,
        docs,
        shutdown,
        presence,
        http,
        ephemeral_out: None,
        started: Instant::now(),
    };
    Ok(Relay {
        shared: Arc::new(shared),
    })
}

/// Writes a cluster node's saved sync states every
/// [`STATES_FLUSH`](crate::cluster::store::STATES_FLUSH), and a last time
/// once the document actors have stopped (they save states as they
/// close).
async fn flush_sync_states(
    store: Arc<crate::cluster::store::PgStore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::time::sleep(crate::cluster::store::STATES_FLUSH).await;
        let done = shutdown.is_cancelled() && metrics.live_documents.get() == 0;
        let store = Arc::clone(&store);
        let flushed = tokio::task::spawn_blocking(move || store.flush_sync_states()).await;
        if let Ok(Err(e)) = flushed {
            tracing::debug!(error = %e, "cannot write sync states yet");
        }
        if done {
            return;
        }
    }
}

/// The accept loop.
pub async fn serve(
    listener: TcpListener,
    relay: Relay,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = relay.shared;
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let refusing = Arc::new(Semaphore::new(shared.config.max_refusing_connections));
    let per_ip = crate::limits::ConnectionsPerIp::new(shared.config.max_connections_per_ip);
    let tasks = TaskTracker::new();
    let next_conn = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let _ = stream.set_nodelay(true);
        let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
        let ip_permit = match per_ip.try_acquire(addr.ip()) {
            Ok(ip_permit) => ip_permit,
            Err(refused) => {
                if let Some(permit) = refusal_permit(&refusing, &shared) {
                    tasks.spawn(refuse(
                        stream,
                        Arc::clone(&shared),
                        refused.to_string(),
                        permit,
                    ));
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            let text = format!(
                "the relay is at its limit of {} connections",
                shared.config.max_connections
            );
            if let Some(permit) = refusal_permit(&refusing, &shared) {
                tasks.spawn(refuse(stream, Arc::clone(&shared), text, permit));
            }
            continue;
        };
        tracing::debug!(%conn, %addr, "accepted connection");
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            // Held for the connection's life: dropping it gives the
            // client's place back.
            let _ip_permit = ip_permit;
            crate::connection::serve(stream, conn, shared, permit).await
        });
    }
    tracing::info!("shutting down: closing connections");
    tasks.close();
    tasks.wait().await;
    // Connections are gone; document actors see the same token, persist
    // their sync states and stop.
    shared.docs.wait().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// A place among the connections being refused, or `None` (counted) if
/// they are all taken: the connection is then dropped unanswered.
fn refusal_permit(refusing: &Arc<Semaphore>, shared: &Shared) -> Option<OwnedSemaphorePermit> {
    match Arc::clone(refusing).try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => {
            shared.metrics.dropped_connections.inc();
            None
        }
    }
}

/// Answers a connection over a limit with an error frame saying which
/// (`text`) and closes it. `permit` is its place among the connections
/// being refused, held until it is done.
async fn refuse(
    stream: TcpStream,
    shared: Arc<Shared>,
    text: String,
    permit: OwnedSemaphorePermit,
) {
    let _refusing = Refusing::new(&shared.metrics, permit);
    // The handshake's small limits: a refused peer gets no large buffers.
    let config = crate::connection::ws_config(shared.config.handshake_frame_limit());
    let accept = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    let Ok(Ok(mut ws)) = tokio::time::timeout(shared.config.handshake_timeout, accept).await else {
        return;
    };
    shared
        .metrics
        .refused(ErrorCode::TOO_MANY_CONNECTIONS.name());
    let frame = Frame::error(ErrorCode::TOO_MANY_CONNECTIONS, text, None);
    let close = CloseFrame {
        code: CloseCode::Policy,
        reason: ErrorCode::TOO_MANY_CONNECTIONS.name().into(),
    };
    let goodbye = async {
        ws.send(Message::Binary(frame.encode().into())).await?;
        ws.close(Some(close)).await?;
        crate::connection::linger(&mut ws, false).await;
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
}

/// One connection being refused: counted in the `refusing_connections`
/// gauge, its place given back when dropped.
struct Refusing {
    /// The gauge to decrement.
    gauge: prometheus_client::metrics::gauge::Gauge,
    /// The place among the connections being refused.
    _permit: OwnedSemaphorePermit,
}

impl Refusing {
    fn new(metrics: &Metrics, permit: OwnedSemaphorePermit) -> Self {
        metrics.refusing_connections.inc();
        Refusing {
            gauge: metrics.refusing_connections.clone(),
            _permit: permit,
        }
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
