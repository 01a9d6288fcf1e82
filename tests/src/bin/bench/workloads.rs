//! What both systems share: the documents each workload uses, the results
//! each one reports, and the measurements taken of a server process.

use std::time::{Duration, Instant};

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ROOT};

use crate::process::ServerProcess;
use crate::proxy::Totals;

/// W1's figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct W1 {
    /// First change until every client has seen the last value.
    pub total_s: f64,
    /// Last change committed until every client has seen it.
    pub last_latency_ms: f64,
    /// CPU seconds (user + system) the server process spent on the whole
    /// run: connecting the clients, opening the document, the fan-out.
    /// Measured in the comparison of three servers, where the clients'
    /// own work can set the wall-clock pace.
    pub server_cpu_s: Option<f64>,
}

/// The W1 result from the writer's start and end and the latest sighting.
pub fn w1_result(started: Instant, last: Instant, seen: Instant) -> W1 {
    W1 {
        total_s: seen.duration_since(started).as_secs_f64(),
        last_latency_ms: seen.saturating_duration_since(last).as_secs_f64() * 1e3,
        server_cpu_s: None,
    }
}

/// Joins watcher threads; the latest instant, or an error if one timed out.
pub fn join_latest(
    watchers: Vec<std::thread::JoinHandle<Option<Instant>>>,
) -> anyhow::Result<Instant> {
    let mut latest: Option<Instant> = None;
    for w in watchers {
        let seen = w
            .join()
            .map_err(|_| anyhow::anyhow!("watcher panicked"))?
            .ok_or(crate::run::CapExceeded("W1 fan-out"))?;
        latest = Some(latest.map_or(seen, |l| l.max(seen)));
    }
    latest.ok_or_else(|| anyhow::anyhow!("no watchers"))
}

/// W2's figures of one repetition.
#[derive(Debug, Clone, Copy)]
pub struct W2 {
    /// Cold sync from a running relay.
    pub warm_s: f64,
    /// Bytes on the wire ÷ saved sizes, from a running relay.
    pub warm_bytes_ratio: f64,
    /// Cold sync right after a relay restart.
    pub restarted_s: f64,
    /// Bytes on the wire ÷ saved sizes, after the restart.
    pub restarted_bytes_ratio: f64,
}

impl W2 {
    /// From (seconds, wire bytes) of both syncs and the saved sizes.
    pub fn new(warm: (f64, u64), cold: (f64, u64), saved: u64) -> W2 {
        W2 {
            warm_s: warm.0,
            warm_bytes_ratio: warm.1 as f64 / saved as f64,
            restarted_s: cold.0,
            restarted_bytes_ratio: cold.1 as f64 / saved as f64,
        }
    }
}

/// W3's figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct W3 {
    /// Reconnect until identical heads.
    pub time_s: f64,
    /// Round trips of the connection that needed most.
    pub round_trips: f64,
    /// WebSocket messages, both connections, both ways.
    pub messages: f64,
    /// Bytes on the wire ÷ the missing changes' saved size.
    pub bytes_ratio: f64,
}

impl W3 {
    /// From the reconnect instant, the convergence instant, the proxy's
    /// totals and the missing changes' size.
    pub fn new(started: Instant, done: Instant, totals: Totals, missing: u64) -> W3 {
        W3 {
            time_s: done.duration_since(started).as_secs_f64(),
            round_trips: totals.max_round_trips as f64,
            messages: totals.messages as f64,
            bytes_ratio: totals.bytes as f64 / missing.max(1) as f64,
        }
    }
}

/// W5's figures: a replica's first sync of a collection, and its
/// reconnect after a few records changed elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct W5 {
    /// First sync: seconds to agreed.
    pub first_s: f64,
    /// First sync: bytes on the wire, both ways.
    pub first_bytes: u64,
    /// Reconnect: seconds from connecting to agreed.
    pub reconnect_s: f64,
    /// Reconnect: bytes on the wire, both ways.
    pub reconnect_bytes: u64,
    /// The relay's resident memory per idle connection subscribed to the
    /// collection, after a full listing of it, KiB.
    pub idle_kib_per_conn: f64,
}

/// W4's idle-connection figures.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Resident memory added per connection, KiB.
    pub kib_per_conn: f64,
    /// CPU time per connection per second of wall time, microseconds.
    pub cpu_us_per_conn_s: f64,
}

/// Document `i` of W2: ten changes, each setting one field.
pub fn ten_change_doc(i: usize) -> Automerge {
    let mut doc = Automerge::new();
    for j in 0..10 {
        let mut tx = doc.transaction();
        // Infallible on a fresh root map.
        let _ = tx.put(
            ROOT,
            format!("field{j}"),
            format!("document {i}, value {j}"),
        );
        tx.commit();
    }
    doc
}

/// W2's machine limit: `d` documents of 10 changes each synced into
/// empty documents by Automerge's sync protocol in memory, every message
/// encoded and decoded as on the wire, with no network and no disk.
/// Returns seconds.
pub fn w2_floor(d: usize) -> anyhow::Result<f64> {
    use accord_engine::automerge::sync::{Message, State, SyncDoc};
    let mut sources: Vec<Automerge> = (0..d).map(ten_change_doc).collect();
    let started = Instant::now();
    for source in &mut sources {
        let mut target = Automerge::new();
        let (mut ours, mut theirs) = (State::new(), State::new());
        loop {
            let mut moved = false;
            if let Some(m) = source.generate_sync_message(&mut ours) {
                target.receive_sync_message(&mut theirs, Message::decode(&m.encode())?)?;
                moved = true;
            }
            if let Some(m) = target.generate_sync_message(&mut theirs) {
                source.receive_sync_message(&mut ours, Message::decode(&m.encode())?)?;
                moved = true;
            }
            if !moved {
                break;
            }
        }
        anyhow::ensure!(target.get_heads() == source.get_heads(), "did not converge");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Document `i` of W4: one change.
pub fn small_doc(i: usize) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let _ = tx.put(ROOT, "n", i as i64);
    tx.commit();
    doc
}

/// The server's RSS once it has been idle for a moment, in KiB.
pub async fn settled_rss(server: &ServerProcess) -> anyhow::Result<u64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.rss_kib()
}

/// Memory per connection (against `before`) and CPU per connection per
/// second over `window`, with `conns` connections open and idle.
pub async fn measure_idle(
    server: &ServerProcess,
    before_kib: u64,
    conns: usize,
    window: Duration,
) -> anyhow::Result<Idle> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = server.rss_kib()?;
    let cpu0 = server.cpu_secs()?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = server.cpu_secs()? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    Ok(Idle {
        kib_per_conn: after_kib.saturating_sub(before_kib) as f64 / conns as f64,
        cpu_us_per_conn_s: cpu / wall / conns as f64 * 1e6,
    })
}
