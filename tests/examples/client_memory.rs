//! Memory per idle client connection: one replica opens N connections to
//! an in-process relay, waits until each has synced, and reports how much
//! the live Rust heap and the process's RSS grew per connection (both ends
//! are in this process: the relay's side is the ~26 KiB per connection of
//! W4, the rest is the client driver's). Not part of CI:
//!
//! ```sh
//! cargo run --release -p accord-tests --example client_memory -- [connections]
//! ```

use std::alloc::System;
use std::time::Duration;

use accord_engine::{ConnectOptions, Replica};
use accord_tests::TestRelay;
use serde_json::json;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed.
fn live_heap() -> i64 {
    let stats = HEAP.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start(&dir.path().join("relay.db")).await?;
    let replica = Replica::open(dir.path().join("client.db"))?;
    replica.create("c", &json!({"name": "Ada"}))?;
    let options = || ConnectOptions {
        collections: vec!["c".into()],
        ..ConnectOptions::default()
    };
    // One connection first, so what is paid once (runtime, caches) is paid.
    let mut first = replica.connect(&relay.url, options());
    first.wait_synced(Duration::from_secs(30)).await?;
    let (heap_before, rss_before) = (live_heap(), rss_kib());
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let mut handle = replica.connect(&relay.url, options());
        handle.wait_synced(Duration::from_secs(30)).await?;
        handles.push(handle);
    }
    let (heap_after, rss_after) = (live_heap(), rss_kib());
    println!(
        "{n} idle connections (client and relay ends): live heap {:.1} KiB, RSS {:.1} KiB per connection",
        (heap_after - heap_before) as f64 / 1024.0 / n as f64,
        (rss_after - rss_before) as f64 / n as f64,
    );
    for handle in handles {
        handle.close().await;
    }
    first.close().await;
    Ok(())
}
