//! The cluster rows: `accord-relay` nodes (this binary as `bench serve
//! --store ... --bus ...`, one process each) on PostgreSQL and NATS.
//!
//! The services come from `ACCORD_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `ACCORD_TEST_NATS`
//! (default `nats://127.0.0.1:4222`), as for the cluster tests. Each run
//! makes its own schema and drops it.

use std::path::Path;
use std::time::{Duration, Instant};

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::ROOT;
use accord_engine::{DocId, Filter, Replica};
use anyhow::Context;

use crate::accord_side::{k_of, open, options};
use crate::process::ServerProcess;
use crate::run::{capped, poll_until, Settings};
use crate::workloads::{self, W1};

/// Nodes on one store and bus.
pub struct Cluster {
    nodes: Vec<ServerProcess>,
    postgres: String,
    schema: String,
}

impl Cluster {
    /// Starts `n` nodes in a fresh schema.
    pub fn start(n: usize, dir: &Path) -> anyhow::Result<Cluster> {
        let postgres = std::env::var("ACCORD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let nats =
            std::env::var("ACCORD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let schema = format!("accord_bench_{}", rand::random::<u32>());
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let db = dir.join(format!("node{i}.db"));
            let node =
                ServerProcess::start_node(&postgres, &schema, &nats, &db).with_context(|| {
                    format!("cluster node {i} (PostgreSQL at {postgres}, NATS at {nats})")
                })?;
            nodes.push(node);
        }
        Ok(Cluster {
            nodes,
            postgres,
            schema,
        })
    }

    /// Each node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ServerProcess::url).collect()
    }

    /// Stops the nodes and drops the schema; returns the highest peak RSS
    /// of a node, KiB.
    pub async fn stop(self) -> anyhow::Result<u64> {
        let mut peak = 0;
        for node in self.nodes {
            peak = peak.max(tokio::task::spawn_blocking(move || node.stop()).await??);
        }
        let (client, connection) =
            tokio_postgres::connect(&self.postgres, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await?;
        Ok(peak)
    }
}

/// W1 with the `k` clients spread over three nodes (client `i` on node
/// `i % 3`; the writer on node 0). Returns the result and the highest
/// node's peak RSS.
pub async fn w1(k: usize, n: usize, s: Settings) -> anyhow::Result<(W1, u64)> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(3, dir.path())?;
    let result = crate::accord_side::w1_on(&cluster.urls(), dir.path(), k, n, s).await?;
    let peak = cluster.stop().await?;
    Ok((result, peak))
}

/// When `replica` first saw each value `0..=target` of `k` (a value
/// skipped over counts as seen with the next one), or `None` past the
/// deadline.
fn sightings(
    replica: &Replica,
    id: &DocId,
    target: i64,
    events: &accord_engine::Subscription,
    deadline: Instant,
) -> Option<Vec<Instant>> {
    let mut seen = Vec::with_capacity(target as usize + 1);
    loop {
        if let Some(k) = k_of(replica, id) {
            let now = Instant::now();
            while (seen.len() as i64) <= k.min(target) {
                seen.push(now);
            }
            if k >= target {
                return Some(seen);
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match events.recv_timeout(left) {
            Ok(_) | Err(accord_engine::RecvError::Lagged(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Cross-node latency: a writer on node 0 changes one record `rate` times
/// a second for `secs` seconds; observers on nodes 1 and 2 note when each
/// value arrives. Returns the p50 and p99 of arrival minus commit, ms.
pub async fn latency(rate: usize, secs: usize, s: Settings) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(3, dir.path())?;
    let urls = cluster.urls();
    let replicas: Vec<Replica> = (0..3)
        .map(|i| open(dir.path(), &format!("l{i}"), s))
        .collect::<Result<_, _>>()?;
    let mut handles = Vec::new();
    for (r, url) in replicas.iter().zip(&urls) {
        let mut handle = r.connect(url, options("lat"));
        handle.wait_synced(s.cap).await.context("wait_synced")?;
        handles.push(handle);
    }
    let writer = replicas[0].clone();
    let id = writer.create_with("lat", None, |tx| tx.put(ROOT, "k", -1i64))?;
    poll_until(s.cap, "latency open", || {
        replicas[1..].iter().all(|r| k_of(r, &id).is_some())
    })
    .await?;
    let n = rate * secs;
    let deadline = Instant::now() + s.cap;
    let observers: Vec<_> = replicas[1..]
        .iter()
        .map(|r| {
            let (r, target) = (r.clone(), n as i64 - 1);
            let events = r.subscribe(Filter::Doc(id));
            std::thread::spawn(move || sightings(&r, &id, target, &events, deadline))
        })
        .collect();
    let committed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Instant>> {
        let start = Instant::now();
        let mut at = Vec::with_capacity(n);
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            writer.change(&id, None, |tx| tx.put(ROOT, "k", i as i64))?;
            at.push(Instant::now());
        }
        Ok(at)
    })
    .await??;
    let mut samples = Vec::new();
    for observer in observers {
        let seen = tokio::task::spawn_blocking(move || observer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("observer panicked"))?
            .ok_or(crate::run::CapExceeded("cross-node latency"))?;
        for (commit, arrival) in committed.iter().zip(&seen) {
            samples.push(arrival.saturating_duration_since(*commit).as_secs_f64() * 1e3);
        }
    }
    for h in handles {
        h.close().await;
    }
    cluster.stop().await?;
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// W2 served by the PostgreSQL store: `d` documents of ten changes
/// uploaded through node 0, then a fresh replica syncs the collection
/// from node 1 through a counting proxy. Returns seconds and wire bytes
/// ÷ saved size.
pub async fn w2(d: usize, s: Settings) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(2, dir.path())?;
    let urls = cluster.urls();
    let source = open(dir.path(), "source", s.unmeasured())?;
    let mut saved = 0u64;
    for i in 0..d {
        let bytes = workloads::ten_change_doc(i).save();
        saved += bytes.len() as u64;
        source.import("w2", &bytes)?;
    }
    let mut upload = source.connect(&urls[0], options("w2"));
    capped(s.cap, "cluster W2 upload", async {
        upload.wait_synced(s.cap).await.context("wait_synced")
    })
    .await?;
    upload.close().await;
    let (secs, bytes) =
        crate::accord_side::fresh_sync(dir.path(), "fresh", cluster.nodes[1].addr, d, s).await?;
    cluster.stop().await?;
    Ok((secs, bytes as f64 / saved as f64))
}

/// Durable changes per second through `nodes` nodes: `writers` replicas
/// (spread over the nodes) each make `changes` changes to a record of its
/// own; the clock stops when the relays hold every one.
pub async fn throughput(
    nodes: usize,
    writers: usize,
    changes: usize,
    s: Settings,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(nodes, dir.path())?;
    let urls = cluster.urls();
    let mut clients = Vec::with_capacity(writers);
    for w in 0..writers {
        let replica = open(dir.path(), &format!("t{w}"), s)?;
        let id = replica.create_with("tp", None, |tx| tx.put(ROOT, "k", -1i64))?;
        let mut handle = replica.connect(&urls[w % urls.len()], options("tp"));
        handle.wait_synced(s.cap).await.context("wait_synced")?;
        clients.push((replica, id, handle));
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(replica, id, mut handle)| {
            tokio::spawn(async move {
                let r = replica.clone();
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    for i in 0..changes {
                        r.change(&id, None, |tx| tx.put(ROOT, "k", i as i64))?;
                    }
                    Ok(())
                })
                .await??;
                handle.wait_synced(s.cap).await.context("wait_synced")?;
                handle.close().await;
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        capped(s.cap, "cluster throughput", async { task.await? }).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    cluster.stop().await?;
    Ok((writers * changes) as f64 / secs)
}
