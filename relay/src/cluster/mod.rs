//! Running as one node of a cluster: the shared PostgreSQL store
//! ([`store::PgStore`], behind the same `SyncDocs` seam as SQLite) and the
//! NATS bus ([`bus`]) that carries each node's commits to the others.
//!
//! PostgreSQL is the source of truth; the bus only carries latency. A node
//! publishes every commit (document, collection, heads, sequence number
//! and, when small, the change bytes) on `accord.<cluster id>.commits`;
//! the others mark their cached copy stale (or apply the bytes) and poke
//! the document's hub so their own peers hear of it. Each node tracks, per
//! collection, the sequence numbers it has seen; a number missing for
//! longer than a short grace, a bus reconnect, or a periodic check of the
//! collections its peers subscribe to makes it read what it missed from
//! PostgreSQL ([`catch_up`]).
//!
//! Every node announces the cluster's id (kept in the store, made at the
//! first migration) as its relay id, so a replica's persisted sync
//! states and collection cursors stay valid when it moves to another
//! node.

pub mod bus;
pub mod catch_up;
pub mod feed;
pub mod schema;
pub mod store;

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accord_engine::{Collection, DocId, Heads};
use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// Where a cluster node's shared services are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The PostgreSQL store, `postgres://USER@HOST[:PORT]/DB[?...]`.
    pub store: String,
    /// The schema that holds the store's tables (default `accord`).
    pub schema: String,
    /// The NATS bus, `nats://HOST:PORT`; `None`: no bus (a single node on
    /// PostgreSQL, or nodes that only catch up from the store).
    pub bus: Option<String>,
    /// Connections in the store's pool.
    pub pool_size: usize,
    /// How often a node checks the store for commits it did not hear of
    /// on the bus (the longest a node stays behind after a lost message
    /// in a collection no one writes to again).
    pub catch_up_interval: Duration,
}

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "accord";

impl ClusterConfig {
    /// A configuration for `store` with defaults for the rest.
    pub fn new(store: impl Into<String>) -> Self {
        ClusterConfig {
            store: store.into(),
            schema: DEFAULT_SCHEMA.into(),
            bus: None,
            pool_size: 16,
            catch_up_interval: Duration::from_secs(2),
        }
    }
}

/// One commit as the bus carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The document.
    pub doc: DocId,
    /// Its collection.
    pub collection: Collection,
    /// Its heads after the commit.
    pub heads: Heads,
    /// Whether this commit is the document's tombstone.
    pub deleted: bool,
    /// The commit's number in the collection's sequence.
    pub seq: u64,
    /// The number of the first change row it appended.
    pub first_no: i64,
    /// The number of the last change row the document has after it.
    pub changes_upto: i64,
    /// The document's stored size after it.
    pub bytes: u64,
    /// The changes it appended, if they were small enough to carry.
    pub changes: Vec<Vec<u8>>,
}

/// The bus's JSON form of a [`Committed`], with the sender and when it
/// was sent.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    node: String,
    sent_ms: i64,
    doc: String,
    collection: String,
    heads: Vec<String>,
    deleted: bool,
    seq: u64,
    first_no: i64,
    changes_upto: i64,
    bytes: u64,
    #[serde(default)]
    changes: Vec<String>,
}

impl Committed {
    /// The bus message for this commit, sent by `node`.
    pub fn encode(&self, node: &str) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let wire = Wire {
            node: node.to_owned(),
            sent_ms: accord_engine::store::now_ms(),
            doc: self.doc.to_string(),
            collection: self.collection.to_string(),
            heads: self.heads.iter().map(|h| h.to_string()).collect(),
            deleted: self.deleted,
            seq: self.seq,
            first_no: self.first_no,
            changes_upto: self.changes_upto,
            bytes: self.bytes,
            changes: self.changes.iter().map(|c| b64.encode(c)).collect(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// A bus message: the commit, the node that sent it and when.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<(Committed, String, i64)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let wire: Wire = serde_json::from_slice(bytes).context("not a commit message")?;
        let heads = wire
            .heads
            .iter()
            .map(|h| accord_engine::automerge::ChangeHash::from_str(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("bad heads: {e}"))?;
        let changes = wire
            .changes
            .iter()
            .map(|c| b64.decode(c))
            .collect::<Result<Vec<_>, _>>()
            .context("bad change bytes")?;
        let commit = Committed {
            doc: wire.doc.parse().context("bad document id")?,
            collection: wire.collection.parse().context("bad collection")?,
            heads: Heads::new(heads),
            deleted: wire.deleted,
            seq: wire.seq,
            first_no: wire.first_no,
            changes_upto: wire.changes_upto,
            bytes: wire.bytes,
            changes,
        };
        Ok((commit, wire.node, wire.sent_ms))
    }
}

/// Whether a shared service answers: unknown until first checked.
#[derive(Debug, Default)]
pub struct Reachability(AtomicU8);

impl Reachability {
    /// Notes the outcome of a check.
    pub fn set(&self, up: bool) {
        self.0.store(if up { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// `Some(up)` once checked.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// What `/health` reports of a cluster node's services.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    /// PostgreSQL answers.
    pub store: Reachability,
    /// NATS is connected (`None`: no bus configured).
    pub bus: Option<Reachability>,
}

/// Opens the store's pool, runs migrations and returns the pool and the
/// cluster's id.
pub async fn open_store(
    config: &ClusterConfig,
) -> anyhow::Result<(deadpool_postgres::Pool, String)> {
    anyhow::ensure!(
        schema::valid_schema_name(&config.schema),
        "bad store schema name {:?}: use lowercase letters, digits and _, starting with a letter or _",
        config.schema
    );
    let mut pg = tokio_postgres::Config::from_str(&config.store)
        .with_context(|| format!("bad --store URL {}", redact(&config.store)))?;
    // Every pooled connection works in the cluster's schema and gives up
    // on a statement that hangs (a store cut off mid-request).
    pg.options(format!(
        "-c search_path={} -c statement_timeout=10000 -c lock_timeout=10000",
        config.schema
    ));
    pg.connect_timeout(Duration::from_secs(5));
    pg.keepalives_idle(Duration::from_secs(10));
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("cannot build the PostgreSQL pool")?;
    let mut client = pool.get().await.with_context(|| {
        format!(
            "cannot reach the PostgreSQL store at {}",
            redact(&config.store)
        )
    })?;
    let cluster = schema::migrate(&mut client, &config.schema)
        .await
        .context("cannot migrate the PostgreSQL store")?;
    Ok((pool, cluster))
}

/// A store URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Records store round trips in `metrics`.
pub fn store_latency(metrics: &Arc<Metrics>) -> Arc<dyn Fn(Duration) + Send + Sync> {
    let metrics = Arc::clone(metrics);
    Arc::new(move |took: Duration| metrics.store_latency_seconds.observe(took.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_survives_the_bus_encoding() {
        let mut doc = accord_engine::automerge::AutoCommit::new();
        use accord_engine::automerge::transaction::Transactable;
        doc.put(accord_engine::automerge::ROOT, "a", 1)
            .expect("put");
        let change = doc
            .get_last_local_change()
            .expect("change")
            .raw_bytes()
            .to_vec();
        let commit = Committed {
            doc: DocId::random(),
            collection: "notes".parse().expect("valid"),
            heads: Heads::new(doc.get_heads()),
            deleted: false,
            seq: 7,
            first_no: 3,
            changes_upto: 3,
            bytes: 99,
            changes: vec![change],
        };
        let (back, node, sent) = Committed::decode(&commit.encode("n1")).expect("decodes");
        assert_eq!(back, commit);
        assert_eq!(node, "n1");
        assert!(sent > 0);
        assert!(Committed::decode(b"{\"node\":1}").is_err());
    }

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
    }
}
