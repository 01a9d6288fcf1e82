//! What the query projection costs per change on a large record: every
//! commit writes the record's whole content as JSON beside its chunk, so a
//! one-key change to a 10 MB record rewrites 10+ MB of JSON. This measures
//! a small change with the projection on and off, for records of several
//! sizes (figures in `docs/performance.md`).
//!
//! `cargo run --release -p accord-engine --example projection_cost`

use std::time::Instant;

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::ROOT;
use accord_engine::{Durability, Replica, ReplicaOptions};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("| record size | projection | median small change | JSON written per change |");
    println!("|---|---|---|---|");
    for mib in [1usize, 10] {
        for projection in [true, false] {
            let dir = tempfile::tempdir()?;
            let options = ReplicaOptions {
                durability: Durability::Normal,
                projection,
                ..ReplicaOptions::default()
            };
            let replica = Replica::open_with(dir.path().join("r.db"), options)?;
            let id = replica.create("c", &json!({}))?;
            // Content in 64 KiB text values: what a notes app might hold.
            for i in 0..mib * 16 {
                let text = accord_engine::testing::noise_text(i as u64, 64 * 1024);
                replica.change(&id, None, |tx| tx.put(ROOT, format!("k{i}"), text))?;
            }
            let mut times = Vec::new();
            for n in 0..15 {
                let started = Instant::now();
                replica.put(&id, "counter", &json!(n), None)?;
                times.push(started.elapsed());
            }
            times.sort();
            let json = replica
                .query("SELECT length(json) FROM records", &[])?
                .rows
                .first()
                .and_then(|r| r.first().cloned());
            println!(
                "| {mib} MiB | {} | {:.1} ms | {} |",
                if projection { "on" } else { "off" },
                times[times.len() / 2].as_secs_f64() * 1000.0,
                match json {
                    Some(accord_engine::SqlValue::Integer(n)) =>
                        format!("{:.1} MiB", n as f64 / 1048576.0),
                    _ => "none".into(),
                }
            );
        }
    }
    Ok(())
}
