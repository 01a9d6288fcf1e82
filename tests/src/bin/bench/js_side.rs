//! The JavaScript client's side of the three-server comparison: the stock
//! automerge-repo 2.5.6 client (`tests/js/bench/load.mjs`, run by Node)
//! doing W1–W3 against one server. Each workload is one Node process that
//! prints one JSON line of figures (see `tests/js/bench/README.md`); W2's
//! cold syncs go through the same counting proxy as samod's, and the
//! server is restarted between them here.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::process::{ServerProcess, Target};
use crate::proxy::Proxy;
use crate::run::{CapExceeded, Settings};
use crate::workloads::{W1, W2, W3};

/// The load script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js/bench/load.mjs");

/// Runs one `load.mjs` subcommand against `url` and returns its figures;
/// a phase over the cap is [`CapExceeded`].
fn load(args: &[String], url: &str, dir: &Path, cap: Duration) -> anyhow::Result<Value> {
    let output = Command::new("node")
        .arg(SCRIPT)
        .args(args)
        .args(["--url", url, "--cap-secs"])
        .arg(cap.as_secs_f64().to_string())
        .arg("--dir")
        .arg(dir)
        .output()
        .context("cannot run node (the JS client load needs Node 20+ and `npm ci` in tests/js)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "load.mjs {args:?} failed ({}): {}",
            output.status,
            tail.join(" / ")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("load.mjs printed nothing")?;
    let figures: Value = serde_json::from_str(line).context("load.mjs printed no JSON")?;
    if let Some(phase) = figures.get("over_cap").and_then(Value::as_str) {
        return Err(CapExceeded(phase_name(phase)).into());
    }
    Ok(figures)
}

/// The static name of a phase `load.mjs` reports as over the cap.
fn phase_name(phase: &str) -> &'static str {
    const PHASES: [&str; 8] = [
        "JS connect",
        "JS upload",
        "W1 open",
        "W1 fan-out",
        "W2 upload",
        "W2 cold sync",
        "W3 share",
        "W3 merge",
    ];
    PHASES
        .into_iter()
        .find(|p| *p == phase)
        .unwrap_or("a JS phase")
}

fn number(figures: &Value, key: &str) -> anyhow::Result<f64> {
    figures
        .get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("load.mjs gave no '{key}' in {figures}"))
}

/// Runs `load` on the blocking pool (a proxy may be serving meanwhile).
async fn run(args: Vec<String>, url: String, dir: &Path, s: Settings) -> anyhow::Result<Value> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || load(&args, &url, &dir, s.cap)).await?
}

/// W1 (see `accord_side::w1`) with K JS clients against `target`.
pub async fn w1(k: usize, n: usize, target: Target, s: Settings) -> anyhow::Result<(W1, u64)> {
    let dir = tempfile::tempdir()?;
    let server = target.start(&dir.path().join("server"))?;
    let args = vec![
        "w1".into(),
        "--k".into(),
        k.to_string(),
        "--n".into(),
        n.to_string(),
    ];
    let cpu = server.cpu_secs()?;
    let figures = run(args, server.url(), dir.path(), s).await?;
    let w1 = W1 {
        total_s: number(&figures, "total_s")?,
        last_latency_ms: number(&figures, "last_latency_ms")?,
        server_cpu_s: Some(server.cpu_secs()? - cpu),
    };
    let peak = tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok((w1, peak))
}

/// W2 (see `accord_side::w2`): one JS client uploads D documents, then
/// fresh JS clients find them all, before and after a server restart.
pub async fn w2(
    d: usize,
    reps: usize,
    target: Target,
    s: Settings,
) -> anyhow::Result<(Vec<W2>, u64)> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("server");
    let mut server = target.start(&store)?;
    let upload = vec!["w2-upload".into(), "--d".into(), d.to_string()];
    let uploaded = run(upload, server.url(), dir.path(), s).await?;
    let saved = number(&uploaded, "saved_bytes")? as u64;
    let ids_file = dir.path().join("ids.json");
    std::fs::write(&ids_file, uploaded.to_string())?;
    let sync = vec![
        "w2-sync".to_owned(),
        "--ids-file".to_owned(),
        ids_file.display().to_string(),
    ];
    let mut runs = Vec::with_capacity(reps);
    let mut peak = 0;
    for _ in 0..reps {
        let warm = fresh_sync(&server, sync.clone(), dir.path(), s).await?;
        peak = peak.max(tokio::task::spawn_blocking(move || server.stop()).await??);
        server = target.start(&store)?;
        let cold = fresh_sync(&server, sync.clone(), dir.path(), s).await?;
        runs.push(W2::new(warm, cold, saved));
    }
    peak = peak.max(tokio::task::spawn_blocking(move || server.stop()).await??);
    Ok((runs, peak))
}

/// A fresh JS client finds every W2 document through a counting proxy:
/// seconds and bytes on the wire.
async fn fresh_sync(
    server: &ServerProcess,
    args: Vec<String>,
    dir: &Path,
    s: Settings,
) -> anyhow::Result<(f64, u64)> {
    let proxy = Proxy::start(server.addr).await?;
    let figures = run(args, server.through(&proxy.url()), dir, s).await?;
    Ok((number(&figures, "cold_s")?, proxy.totals().bytes))
}

/// W3 (see `accord_side::w3`) with two JS clients. Messages and bytes are
/// the clients' own counts after reconnecting (WebSocket payloads);
/// round trips are not counted for them.
pub async fn w3(m: usize, target: Target, s: Settings) -> anyhow::Result<(W3, u64)> {
    let dir = tempfile::tempdir()?;
    let server = target.start(&dir.path().join("server"))?;
    let args = vec!["w3".into(), "--m".into(), m.to_string()];
    let figures = run(args, server.url(), dir.path(), s).await?;
    let w3 = W3 {
        time_s: number(&figures, "time_s")?,
        round_trips: f64::NAN,
        messages: number(&figures, "messages")?,
        bytes_ratio: number(&figures, "bytes")? / number(&figures, "missing_bytes")?.max(1.0),
    };
    let peak = tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok((w3, peak))
}
