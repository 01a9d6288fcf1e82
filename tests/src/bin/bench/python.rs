//! The Python package against the engine it wraps (`--only python`, never
//! in the default run: it needs `bindings/python/.venv` with a release
//! build of the package, `maturin develop --release`).
//!
//! The same calls on both sides, on a file replica with the store's
//! default durability: `put` of one field of one record (each durable when
//! it returns), 1,000 `create`s, and an indexed query returning ten rows of
//! those 1,000 records (median latency). Python's side is
//! `bindings/python/bench/bench.py`; its figures over Rust's show what the
//! binding costs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use accord_engine::{Replica, SqlValue};
use anyhow::{bail, Context};
use serde_json::json;

/// Contacts created and queried (as in bench.py).
const RECORDS: usize = 1000;
const QUERY: &str = "SELECT id, json_extract(json, '$.name') AS name FROM records \
                     WHERE collection = 'contacts' AND json_extract(json, '$.city') = ?";

/// One side's figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Durable single-field writes per second.
    pub put_per_s: f64,
    /// Durable creates per second.
    pub create_per_s: f64,
    /// Median query latency, in milliseconds.
    pub query_ms: f64,
}

/// The calls in Rust.
pub fn rust(writes: usize, queries: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let replica = Replica::open(dir.path().join("bench.db"))?;
    let record = replica.create("bench", &json!({"k": -1}))?;
    let started = Instant::now();
    for i in 0..writes {
        replica.put(&record, "k", &json!(i), None)?;
    }
    let put_per_s = writes as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for i in 0..RECORDS {
        replica.create(
            "contacts",
            &json!({"name": format!("contact {i}"), "city": format!("city {}", i % 100), "n": i}),
        )?;
    }
    let create_per_s = RECORDS as f64 / started.elapsed().as_secs_f64();

    replica.create_index("contacts", "$.city")?;
    let mut latencies = Vec::with_capacity(queries);
    for q in 0..queries {
        let started = Instant::now();
        let rows = replica.query(QUERY, &[SqlValue::Text(format!("city {}", q % 100))])?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if rows.rows.is_empty() {
            bail!("the query found nothing");
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Figures {
        put_per_s,
        create_per_s,
        query_ms: latencies[latencies.len() / 2],
    })
}

/// The same calls from Python, by `bench.py` under the venv's interpreter
/// (or `ACCORD_BENCH_PYTHON`).
pub fn python(writes: usize, queries: usize) -> anyhow::Result<Figures> {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/python");
    let interpreter = std::env::var_os("ACCORD_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| package.join(".venv/bin/python"));
    let output = Command::new(&interpreter)
        .arg(package.join("bench/bench.py"))
        .args([
            "--writes",
            &writes.to_string(),
            "--queries",
            &queries.to_string(),
        ])
        .output()
        .with_context(|| {
            format!(
                "cannot run {}: make the venv and build the package with \
                 `maturin develop --release` in bindings/python (docs/python.md)",
                interpreter.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "bench.py failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "bench.py printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let get = |key: &str| {
        figures[key]
            .as_f64()
            .with_context(|| format!("no {key} in bench.py's {figures}"))
    };
    Ok(Figures {
        put_per_s: get("put_per_s")?,
        create_per_s: get("create_per_s")?,
        query_ms: get("query_ms")?,
    })
}
