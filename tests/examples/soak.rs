//! Soak: mixed load against an in-process relay for a number of minutes,
//! sampling this process's RSS and open file descriptors, which must stay
//! flat. Not part of CI:
//!
//! ```sh
//! cargo run --release -p accord-tests --example soak -- [minutes] [replicas] [cache] [deletes]
//! ```
//!
//! `cache` (default 1,024, the library's default) is how many documents each
//! replica and the relay keep loaded. With a small cache the caches fill in
//! seconds, so what grows after that is not cache fill. `deletes` (default
//! 2) is the percentage of operations that delete a record; tombstones are
//! permanent, so with deletes the number of stored documents keeps growing.
//!
//! Each replica keeps editing records of a shared collection and its own,
//! creating and deleting some (at most 50 live records per collection),
//! and drops and re-opens its connection now and then. Every ten seconds a line reports RSS, the live Rust heap
//! (allocated and not freed; SQLite's own memory is not in it), file
//! descriptors, the relay's live documents and connections, and writes so
//! far. For a heap profile (slower; writes `dhat-heap.json` at exit):
//!
//! ```sh
//! cargo run --release -p accord-tests --example soak --features dhat-heap -- 8 20 16
//! ```

#[cfg(not(feature = "dhat-heap"))]
use std::alloc::System;
use std::time::{Duration, Instant};

#[cfg(not(feature = "dhat-heap"))]
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use accord_engine::{ConnectOptions, Replica, ReplicaOptions};
use accord_relay::Config;
use accord_tests::TestRelay;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Counts the Rust heap (SQLite's own allocations are not counted: they are
/// bounded by its page caches), so a leak shows apart from RSS, which also
/// holds freed memory the allocator keeps.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// With `--features dhat-heap`: dhat records every allocation and writes
/// `dhat-heap.json` at exit (what was live at the peak and, after every
/// replica and the relay shut down, what was never freed).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static HEAP: dhat::Alloc = dhat::Alloc;

/// Bytes allocated and not yet freed.
#[cfg(not(feature = "dhat-heap"))]
fn live_heap_kib() -> u64 {
    let stats = HEAP.stats();
    (stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
        / 1024) as u64
}

/// Bytes allocated and not yet freed.
#[cfg(feature = "dhat-heap")]
fn live_heap_kib() -> u64 {
    (dhat::HeapStats::get().curr_bytes / 1024) as u64
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Records a collection grows to; past this, creates give way to edits
/// and deletions, so what the run measures is the same data being worked
/// on, not a database that keeps growing.
const RECORDS_PER_COLLECTION: usize = 50;

/// One line of the report.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: u64,
    rss_kib: u64,
    heap_kib: u64,
    fds: usize,
    live_documents: i64,
    connections: usize,
    writes: u64,
}

impl Sample {
    const HEADER: [&'static str; 7] = [
        "secs", "rss KiB", "heap KiB", "fds", "live", "conns", "writes",
    ];

    fn print(&self) {
        println!(
            "{:>6} {:>10} {:>10} {:>6} {:>6} {:>6} {:>9}",
            self.secs,
            self.rss_kib,
            self.heap_kib,
            self.fds,
            self.live_documents,
            self.connections,
            self.writes
        );
    }
}

fn options(i: usize) -> ConnectOptions {
    ConnectOptions {
        collections: vec!["shared".into(), format!("own-{i}")],
        ..ConnectOptions::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    let mut args = std::env::args().skip(1);
    let minutes: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let cache_capacity: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(ReplicaOptions::default().cache_capacity);
    let deletes: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(Config {
        db: dir.path().join("relay.db"),
        cache_docs: cache_capacity,
        ..Config::default()
    })
    .await?;
    let mut replicas = Vec::new();
    for i in 0..count {
        let store = ReplicaOptions {
            cache_capacity,
            ..ReplicaOptions::default()
        };
        let replica = Replica::open_with(dir.path().join(format!("r{i}.db")), store)?;
        let handle = replica.connect(&relay.url, options(i));
        replicas.push((replica, Some(handle)));
    }
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_sample = started;
    let mut writes = 0u64;
    let mut samples: Vec<Sample> = Vec::new();
    let [a, b, c, d, e, f, g] = Sample::HEADER;
    println!("{a:>6} {b:>10} {c:>10} {d:>6} {e:>6} {f:>6} {g:>9}");
    while Instant::now() < end {
        let i = rng.random_range(0..count);
        let (replica, handle) = &mut replicas[i];
        let collection = if rng.random_bool(0.5) {
            "shared".to_owned()
        } else {
            format!("own-{i}")
        };
        let docs = replica.list(&collection)?;
        match rng.random_range(0..100) {
            // Steady state: records come and go, their number stays put.
            0..=9 if docs.len() < RECORDS_PER_COLLECTION => {
                replica.create(&collection, &json!({"by": i, "n": 0}))?;
            }
            n if (10..10 + deletes).contains(&n) && !docs.is_empty() => {
                // Another replica may have deleted it meanwhile.
                let _ = replica.delete(&docs[rng.random_range(0..docs.len())].id);
            }
            99 => {
                // Drop the connection and come back.
                if let Some(h) = handle.take() {
                    h.close().await;
                }
                *handle = Some(replica.connect(&relay.url, options(i)));
            }
            _ if !docs.is_empty() => {
                let id = docs[rng.random_range(0..docs.len())].id;
                match replica.put(
                    &id,
                    &format!("k{}", rng.random_range(0..8)),
                    &json!(writes),
                    None,
                ) {
                    Ok(()) | Err(accord_engine::Error::Deleted(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
        writes += 1;
        if writes.is_multiple_of(50) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if Instant::now() >= next_sample {
            let sample = Sample {
                secs: started.elapsed().as_secs(),
                rss_kib: rss_kib(),
                heap_kib: live_heap_kib(),
                fds: open_fds(),
                live_documents: relay.relay.live_documents(),
                connections: relay.relay.connections(),
                writes,
            };
            sample.print();
            samples.push(sample);
            next_sample += Duration::from_secs(10);
        }
    }
    let (first, second) = samples.split_at(samples.len() / 2);
    let max = |half: &[Sample], f: fn(&Sample) -> u64| half.iter().map(f).max().unwrap_or(0);
    for (what, f) in [
        ("RSS KiB", (|s| s.rss_kib) as fn(&Sample) -> u64),
        ("heap KiB", |s| s.heap_kib),
        ("fds", |s| s.fds as u64),
    ] {
        println!(
            "max {what}: first half {}, second half {}",
            max(first, f),
            max(second, f)
        );
    }
    for (_, handle) in replicas {
        if let Some(h) = handle {
            h.close().await;
        }
    }
    relay.stop().await?;
    Ok(())
}
