//! The relay's plain-HTTP door: the inspector page at `/`, the JSON API
//! under `/v1/` (`docs/http-api.md`), `/health` and `/metrics`, on the
//! main port beside the WebSocket doors.
//!
//! The connection task reads each new connection's request head
//! ([`head::read_head`]); a WebSocket upgrade goes on to a sync session, and
//! anything else is served here by hyper with an axum [`Router`]
//! ([`serve_connection`]). The API reads and writes through the same
//! [`Replica`] the relay stores documents in, checks the same tokens with
//! the same [`Access`] as sync connections, and after a write tells the
//! document's hub, so connected peers hear of it as of a peer's change.
//! `accord inspect` serves the same router over a local file, read-only
//! and without a relay ([`Api::local`]). A cluster node serves only the
//! change feed and the webhooks, kept in its PostgreSQL store, `/v1/info`,
//! `/health` and `/metrics` ([`Api::relay`] over a cluster's store); both read through
//! [`FeedStore`], whichever store is beneath.
//!
//! Layout: [`head`] tells upgrades from requests; `error` maps failures to
//! codes and statuses; `records` serves collections, records, history,
//! diffs and writes; `query` the SQL endpoint; `events` the live stream
//! (server-sent events); `feed` a collection's change feed (cursors from
//! the collection's sequence); `webhooks` the webhooks' state and dead
//! letters; `client` the HTTP client of `accord feed` and webhooks;
//! `assets` the embedded page.

mod assets;
pub mod client;
mod error;
mod events;
mod feed;
pub mod head;
mod query;
mod records;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use accord_engine::sync::{Access, Grant, OpenAccess};
use accord_engine::{Collection, DocId, Replica};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};
pub use feed::entry_json as feed_event;

use crate::docs::{DocActors, HubKey};
use crate::feed_store::FeedStore;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::presence::Presence;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a request head may take to arrive on a kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Most live streams (`/v1/events`) open at once; more are refused with
/// `503`. Each holds a connection and a change subscription.
pub const MAX_STREAMS: usize = 256;

/// What serves the API, and what it reaches.
#[derive(Debug, Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where records are read and written.
    replica: Replica,
    /// Who may do what (the relay's token check, or open).
    access: Arc<dyn Access>,
    /// What `/v1/info` calls the server.
    server: &'static str,
    /// `accord inspect`: every write is refused.
    read_only: bool,
    /// The running relay's hubs, fan-out and presence, if this is a relay.
    relay: Option<RelayLinks>,
    /// Cancelled when the server stops: live streams end.
    shutdown: CancellationToken,
    /// Places for live streams.
    streams: Arc<Semaphore>,
    /// Where the change feed and webhooks read: the replica, or a cluster
    /// node's PostgreSQL store (the replica is then an empty stand-in, and
    /// only the feed, webhooks and `/v1/info` are served).
    feed: FeedStore,
}

/// What the API reaches in a running relay.
#[derive(Debug, Clone)]
pub struct RelayLinks {
    /// Document actors: told after a write.
    pub docs: DocActors,
    /// Live connections: told of deletions.
    pub peers: Peers,
    /// Who has which document open.
    pub presence: Arc<Presence>,
    /// Served at `/health` and `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The webhooks, for `/v1/webhooks`.
    pub webhooks: Vec<crate::webhooks::Webhook>,
}

impl Api {
    /// The API of a running relay. `feed` is where the change feed and
    /// webhooks read: the relay's replica, or on a cluster node its
    /// PostgreSQL store (`replica` is then an empty stand-in, never read,
    /// and only the feed, the webhooks, `/v1/info`, `/health` and
    /// `/metrics` are served; every other path answers
    /// `501 not_on_cluster`).
    pub fn relay(
        replica: Replica,
        feed: FeedStore,
        access: Arc<dyn Access>,
        links: RelayLinks,
        shutdown: CancellationToken,
    ) -> Self {
        Self::build(
            replica,
            feed,
            access,
            "accord-relay",
            false,
            Some(links),
            shutdown,
        )
    }

    /// The read-only API over a local replica file (`accord inspect`): no
    /// token, no writes, no presence.
    pub fn local(replica: Replica, shutdown: CancellationToken) -> Self {
        let access: Arc<dyn Access> = Arc::new(OpenAccess);
        let feed = FeedStore::Replica(replica.clone());
        Self::build(
            replica,
            feed,
            access,
            "accord inspect",
            true,
            None,
            shutdown,
        )
    }

    fn build(
        replica: Replica,
        feed: FeedStore,
        access: Arc<dyn Access>,
        server: &'static str,
        read_only: bool,
        relay: Option<RelayLinks>,
        shutdown: CancellationToken,
    ) -> Self {
        Api {
            inner: Arc::new(Inner {
                replica,
                access,
                server,
                read_only,
                relay,
                shutdown,
                streams: Arc::new(Semaphore::new(MAX_STREAMS)),
                feed,
            }),
        }
    }

    /// Every route: the page, the API, and (for a relay) `/health` and
    /// `/metrics`; on a cluster node, only what it serves.
    pub fn router(&self) -> Router {
        if matches!(self.inner.feed, FeedStore::Cluster(_)) {
            return self.cluster_router();
        }
        let api = Router::new()
            .route("/v1/info", get(records::info))
            .route("/v1/collections", get(records::collections))
            .route(
                "/v1/collections/{collection}/records",
                get(records::list).post(records::create),
            )
            .route(
                "/v1/records/{id}",
                get(records::get)
                    .patch(records::set)
                    .delete(records::delete),
            )
            .route("/v1/records/{id}/history", get(records::history))
            .route("/v1/records/{id}/diff", get(records::diff))
            .route("/v1/records/{id}/presence", get(records::presence))
            .route("/v1/query", post(query::run))
            .route("/v1/events", get(events::stream));
        let api = Self::feed_routes(api)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone());
        let router = assets::routes()
            .merge(self.ops())
            .merge(api)
            .fallback(records::no_route)
            .method_not_allowed_fallback(records::wrong_method);
        self.counted(router)
    }

    /// A cluster node's routes: the change feed, the webhooks,
    /// `/v1/info`, `/health` and `/metrics`; every other path answers
    /// `501 not_on_cluster` (the rest of the API and the inspector read a
    /// SQLite replica).
    fn cluster_router(&self) -> Router {
        async fn not_served() -> ApiError {
            ApiError::new(
                axum::http::StatusCode::NOT_IMPLEMENTED,
                "not_on_cluster",
                "a cluster node serves only the change feed and the webhooks of the HTTP API, \
                 and no inspector yet; read the records view in the PostgreSQL store \
                 (docs/operations.md, Running a cluster)",
            )
        }
        let api = Self::feed_routes(Router::new().route("/v1/info", get(records::info)))
            .with_state(self.clone());
        let router = self
            .ops()
            .merge(api)
            .fallback(not_served)
            .method_not_allowed_fallback(records::wrong_method);
        self.counted(router)
    }

    /// `router` with the change feed's and the webhooks' routes, which a
    /// cluster node serves too.
    fn feed_routes(router: Router<Api>) -> Router<Api> {
        router
            .route("/v1/collections/{collection}/changes", get(feed::changes))
            .route("/v1/webhooks", get(webhooks::list))
            .route(
                "/v1/webhooks/{name}/dead-letters",
                get(webhooks::dead_letters),
            )
            .route(
                "/v1/webhooks/{name}/dead-letters/{id}",
                axum::routing::delete(webhooks::drop_letter),
            )
            .route(
                "/v1/webhooks/{name}/dead-letters/{id}/replay",
                post(webhooks::replay),
            )
    }

    /// `/health` and `/metrics`, for a relay.
    fn ops(&self) -> Router {
        match &self.inner.relay {
            Some(links) => crate::metrics::routes(Arc::clone(&links.metrics)),
            None => Router::new(),
        }
    }

    /// `router`, counting each answered request in a relay's metrics.
    fn counted(&self, router: Router) -> Router {
        match &self.inner.relay {
            Some(links) => router.layer(axum::middleware::from_fn_with_state(
                Arc::clone(&links.metrics),
                count_request,
            )),
            None => router,
        }
    }

    /// The caller's rights, from its `Authorization: Bearer` header (an
    /// absent header is the empty token, which only open access accepts).
    fn grant(&self, headers: &HeaderMap) -> ApiResult<Grant> {
        let token = match headers.get(header::AUTHORIZATION) {
            None => "",
            Some(value) => {
                let text = value.to_str().unwrap_or_default().trim();
                let Some(token) = text
                    .strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
                else {
                    return Err(ApiError::unauthorized(
                        "the Authorization header must be 'Bearer <token>'",
                    ));
                };
                token.trim()
            }
        };
        let now = accord_engine::store::now_ms().max(0) as u64;
        self.inner.access.check(token, now).map_err(|why| {
            if token.is_empty() {
                ApiError::unauthorized(format!(
                    "a token is required (Authorization: Bearer <token>): {why}"
                ))
            } else {
                ApiError::unauthorized(format!("token refused: {why}"))
            }
        })
    }

    /// Whether a request without a token is let in.
    fn open(&self) -> bool {
        let now = accord_engine::store::now_ms().max(0) as u64;
        self.inner.access.check("", now).is_ok()
    }

    /// The relay's webhooks (none for `accord inspect`).
    fn webhooks(&self) -> &[crate::webhooks::Webhook] {
        self.inner
            .relay
            .as_ref()
            .map_or(&[], |links| links.webhooks.as_slice())
    }

    /// Runs `work` on the replica on the blocking pool.
    async fn blocking<T, F>(&self, work: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Replica) -> ApiResult<T> + Send + 'static,
    {
        let api = self.clone();
        tokio::task::spawn_blocking(move || work(&api.inner.replica))
            .await
            .map_err(|e| ApiError::internal(format!("the request's work failed: {e}")))?
    }

    /// Refuses writes where there may be none.
    fn writable(&self, grant: &Grant, collection: &str) -> ApiResult<()> {
        if self.inner.read_only {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "read_only",
                "this server is read-only (accord inspect): write through a replica or a relay",
            ));
        }
        if !grant.can_write(collection) {
            return Err(ApiError::forbidden(format!(
                "the token does not grant writing collection '{collection}'"
            )));
        }
        Ok(())
    }

    /// After a write: the document's hub tells its subscribers.
    async fn changed(&self, collection: Collection, doc: DocId) {
        if let Some(links) = &self.inner.relay {
            links.docs.store_changed(HubKey { collection, doc }).await;
        }
    }

    /// After a deletion: everyone listening to the document is told, as
    /// when a peer deletes one.
    fn deleted(&self, collection: &Collection, doc: DocId) {
        if let Some(links) = &self.inner.relay {
            let frame = accord_engine::sync::Frame::Delete {
                doc,
                collection: collection.to_string(),
            };
            links
                .peers
                .broadcast(collection, doc, accord_engine::sync::ConnId(0), &frame);
        }
    }
}

/// Counts each answered request by its status class, for `/metrics`.
async fn count_request(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics.http_request(class);
    response
}

/// Serves HTTP on one connection (whose first request head `io` replays)
/// until the client closes it or `shutdown` is cancelled.
pub async fn serve_connection<S>(io: S, router: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
