//! Prometheus metrics and the health endpoint.
//!
//! [`Metrics`] holds every counter the relay keeps; [`serve_http`] answers
//! `GET /metrics` (Prometheus text format) and `GET /health` (JSON) on the
//! operator's address, separate from the WebSocket port.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A label naming a frame kind or an error code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The frame kind (`sync`, `hello`, ...) or error code name.
    pub kind: String,
}

/// Labels of a webhook's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// The webhook's name.
    pub webhook: String,
    /// An outcome (`delivered`, `retried`, `dead_lettered`) or a
    /// collection, by metric.
    pub what: String,
}

/// Every metric of one relay.
#[derive(Debug)]
pub struct Metrics {
    /// The registry they are encoded from.
    registry: Registry,
    /// Welcomed connections open now.
    pub connections: Gauge,
    /// Document actors running now.
    pub live_documents: Gauge,
    /// Frames received, by kind.
    pub frames_in: Family<KindLabel, Counter>,
    /// Frames sent, by kind.
    pub frames_out: Family<KindLabel, Counter>,
    /// Bytes received in frames.
    pub bytes_in: Counter,
    /// Bytes sent in frames.
    pub bytes_out: Counter,
    /// Sync messages that could not be applied.
    pub sync_errors: Counter,
    /// Handshakes and `Reauth`s refused for their token.
    pub auth_failures: Counter,
    /// Error frames sent, by code.
    pub refusals: Family<KindLabel, Counter>,
    /// Document actors stopped for idleness.
    pub evictions: Counter,
    /// Tasks that panicked and were ended cleanly, by task kind
    /// (`document`, `connection`).
    pub panics: Family<KindLabel, Counter>,
    /// Storage operations that failed (the peers concerned were told
    /// `storage_unavailable` and retry).
    pub storage_failures: Counter,
    /// Time spent in storage work per batch or frame (seconds).
    pub store_seconds: Histogram,
    /// Connections over a limit being answered with `too_many_connections`
    /// now (at most `Config::max_refusing_connections`).
    pub refusing_connections: Gauge,
    /// Connections over a limit dropped unanswered because as many were
    /// being refused already.
    pub dropped_connections: Counter,
    /// Round trips to the cluster's PostgreSQL store (seconds).
    pub store_latency_seconds: Histogram,
    /// From another node's publishing of a commit to its arrival here
    /// (seconds, by the two nodes' clocks).
    pub bus_latency_seconds: Histogram,
    /// Commits of the cluster's store this node has not handled yet, at
    /// its last check.
    pub catch_up_lag: Gauge,
    /// Commits this node learned of from the store instead of the bus.
    pub caught_up: Counter,
    /// The cluster's services, for `/health` (`None`: not a cluster node).
    pub cluster: parking_lot::Mutex<Option<Arc<crate::cluster::ClusterHealth>>>,
    /// Ephemeral (presence) messages passed on to a listener.
    pub ephemeral_forwarded: Counter,
    /// Ephemeral messages not passed on because the listener's queue was
    /// full (presence is dropped for a slow peer, never queued).
    pub ephemeral_dropped: Counter,
    /// Plain HTTP requests answered, by status class (`2xx`, `4xx`, ...).
    pub http_requests: Family<KindLabel, Counter>,
    /// Webhook batches by outcome (`delivered`, `retried`: a try that
    /// failed and will be retried, `dead_lettered`).
    pub webhook_batches: Family<WebhookLabel, Counter>,
    /// Sequence numbers a webhook is behind, per collection.
    pub webhook_lags: Family<WebhookLabel, Gauge>,
    /// Time from a change's commit to its delivery (the oldest of each
    /// delivered batch), seconds.
    pub webhook_latency_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("accord_relay"),
            connections: Gauge::default(),
            live_documents: Gauge::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            sync_errors: Counter::default(),
            auth_failures: Counter::default(),
            refusals: Family::default(),
            evictions: Counter::default(),
            panics: Family::default(),
            storage_failures: Counter::default(),
            // 50 µs to ~1.6 s.
            store_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            refusing_connections: Gauge::default(),
            dropped_connections: Counter::default(),
            ephemeral_forwarded: Counter::default(),
            ephemeral_dropped: Counter::default(),
            http_requests: Family::default(),
            webhook_batches: Family::default(),
            webhook_lags: Family::default(),
            // 1 ms to ~9 h.
            webhook_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 25)),
            // 50 µs to ~1.6 s.
            store_latency_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 100 µs to ~3.3 s.
            bus_latency_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            catch_up_lag: Gauge::default(),
            caught_up: Counter::default(),
            cluster: parking_lot::Mutex::new(None),
        };
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "Plain HTTP requests answered, by status class (kind: 2xx, 3xx, 4xx, 5xx)",
            m.http_requests.clone(),
        );
        r.register(
            "webhook_batches",
            "Webhook batches by outcome (what: delivered, retried, dead_lettered)",
            m.webhook_batches.clone(),
        );
        r.register(
            "webhook_lag",
            "Sequence numbers a webhook is behind, per collection (what)",
            m.webhook_lags.clone(),
        );
        r.register(
            "webhook_latency_seconds",
            "Time from a change's commit to its webhook delivery",
            m.webhook_latency_seconds.clone(),
        );
        r.register(
            "store_latency_seconds",
            "Round trips to the cluster's PostgreSQL store",
            m.store_latency_seconds.clone(),
        );
        r.register(
            "bus_latency_seconds",
            "From another node publishing a commit on the bus to its arrival here",
            m.bus_latency_seconds.clone(),
        );
        r.register(
            "catch_up_lag",
            "Commits in the cluster's store this node had not handled at its last check",
            m.catch_up_lag.clone(),
        );
        r.register(
            "caught_up",
            "Commits this node learned of from the store instead of the bus",
            m.caught_up.clone(),
        );
        r.register(
            "connections",
            "Welcomed connections open now",
            m.connections.clone(),
        );
        r.register(
            "live_documents",
            "Document actors in memory now",
            m.live_documents.clone(),
        );
        r.register(
            "frames_received",
            "Frames received, by kind",
            m.frames_in.clone(),
        );
        r.register("frames_sent", "Frames sent, by kind", m.frames_out.clone());
        r.register(
            "received_bytes",
            "Bytes received in frames",
            m.bytes_in.clone(),
        );
        r.register("sent_bytes", "Bytes sent in frames", m.bytes_out.clone());
        r.register(
            "sync_errors",
            "Sync messages that could not be applied",
            m.sync_errors.clone(),
        );
        r.register(
            "auth_failures",
            "Handshakes and Reauths refused for their token",
            m.auth_failures.clone(),
        );
        r.register("refusals", "Error frames sent, by code", m.refusals.clone());
        r.register(
            "evictions",
            "Document actors stopped for idleness",
            m.evictions.clone(),
        );
        r.register(
            "panics",
            "Tasks that panicked and were ended cleanly, by kind",
            m.panics.clone(),
        );
        r.register(
            "storage_failures",
            "Storage operations that failed; peers were told to retry",
            m.storage_failures.clone(),
        );
        r.register(
            "store_seconds",
            "Storage time per batch or frame",
            m.store_seconds.clone(),
        );
        r.register(
            "refusing_connections",
            "Connections over a limit being answered with too_many_connections now",
            m.refusing_connections.clone(),
        );
        r.register(
            "dropped_connections",
            "Connections over a limit dropped unanswered: as many were being refused already",
            m.dropped_connections.clone(),
        );
        r.register(
            "ephemeral_forwarded",
            "Ephemeral (presence) messages passed on to a listener",
            m.ephemeral_forwarded.clone(),
        );
        r.register(
            "ephemeral_dropped",
            "Ephemeral messages dropped because the listener could not take them at once",
            m.ephemeral_dropped.clone(),
        );
        m
    }
}

impl Metrics {
    /// Counts a frame received.
    pub fn received(&self, kind: &str, bytes: usize) {
        self.frames_in
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
        self.bytes_in.inc_by(bytes as u64);
    }

    /// Counts a frame sent.
    pub fn sent(&self, kind: &str, bytes: usize) {
        self.frames_out
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
        self.bytes_out.inc_by(bytes as u64);
    }

    /// Counts an error frame sent.
    pub fn refused(&self, code: &str) {
        self.refusals
            .get_or_create(&KindLabel {
                kind: code.to_owned(),
            })
            .inc();
    }

    /// Counts a task that panicked and was ended cleanly.
    pub fn panicked(&self, task: &str) {
        self.panics
            .get_or_create(&KindLabel {
                kind: task.to_owned(),
            })
            .inc();
    }

    /// Records storage time.
    pub fn store_time(&self, took: Duration) {
        self.store_seconds.observe(took.as_secs_f64());
    }

    /// Counts an answered HTTP request of status class `class`.
    pub fn http_request(&self, class: &str) {
        self.http_requests
            .get_or_create(&KindLabel {
                kind: class.to_owned(),
            })
            .inc();
    }

    /// The counter of a webhook's batches with `outcome`.
    pub fn webhook_outcome(&self, webhook: &str, outcome: &str) -> Counter {
        self.webhook_batches
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_owned(),
                what: outcome.to_owned(),
            })
            .clone()
    }

    /// The gauge of how far `webhook` is behind in `collection`.
    pub fn webhook_lag(&self, webhook: &str, collection: &str) -> Gauge {
        self.webhook_lags
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_owned(),
                what: collection.to_owned(),
            })
            .clone()
    }

    /// A batch was delivered; its oldest change was committed at
    /// `oldest_ms` (ms since the epoch).
    pub fn webhook_delivered(&self, webhook: &str, oldest_ms: i64) {
        self.webhook_outcome(webhook, "delivered").inc();
        let now = accord_engine::store::now_ms();
        self.webhook_latency_seconds
            .observe((now - oldest_ms).max(0) as f64 / 1000.0);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/health` and `/metrics` until `shutdown` is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, routes(metrics))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// `/health` and `/metrics`, for the main port's HTTP door and the
/// separate listener alike.
pub fn routes(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .with_state(metrics)
}

/// `/health`: 200 `ok` when the relay can serve. A cluster node also
/// reports its store and bus: 503 `not_ready` while PostgreSQL does not
/// answer (it cannot acknowledge anything), 200 with a warning while only
/// the bus is down (it serves; other nodes' changes reach it late).
async fn health(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let mut body = serde_json::json!({
        "status": "ok",
        "connections": m.connections.get(),
        "live_documents": m.live_documents.get(),
    });
    let mut status = StatusCode::OK;
    let cluster = m.cluster.lock().clone();
    if let Some(cluster) = cluster {
        let word = |up: Option<bool>| match up {
            Some(true) => "up",
            Some(false) => "down",
            None => "unknown",
        };
        let store = cluster.store.get();
        body["store"] = word(store).into();
        let mut warnings = Vec::new();
        if store != Some(true) {
            status = StatusCode::SERVICE_UNAVAILABLE;
            body["status"] = "not_ready".into();
            warnings.push("the PostgreSQL store does not answer: changes are not acknowledged");
        }
        if let Some(bus) = &cluster.bus {
            body["bus"] = word(bus.get()).into();
            if bus.get() != Some(true) {
                warnings.push(
                    "the NATS bus is down: other nodes' changes arrive by catch-up from the store",
                );
            }
        }
        body["catch_up_lag"] = m.catch_up_lag.get().into();
        body["warnings"] = warnings.into();
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn prometheus(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        m.encode(),
    )
}
