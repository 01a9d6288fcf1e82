//! The benchmark harness: Accord against this machine's limits and against
//! samod 0.16 (the Rust automerge-repo), side by side, in one run.
//!
//! ```sh
//! cargo run --release -p accord-tests --bin bench            # the full run
//! cargo run -p accord-tests --bin bench -- --quick           # CI's smoke run
//! ```
//!
//! It prints one row per workload and metric: Accord's figure, the
//! reference's, and their ratio, each a median over `--reps` repetitions.
//! It asserts nothing about speed; it exits non-zero only when a run
//! failed outright (a row reading `failed`), so CI notices a broken
//! harness; a reference system's failed run is tried once more first
//! (`run::repeat_reference`). `docs/performance.md` explains the workloads
//! and the results.
//!
//! # Layout
//!
//! - `w0`: local durable writes against a bare Automerge + SQLite loop.
//! - `accord_side`, `samod_side`: W1–W4 on each system (and W5, a
//!   reconnect resuming from collection cursors, on Accord); `js_side`: the
//!   stock JS client's W1–W3 (Node) for the three-server comparison.
//! - `workloads`: the documents and result types both sides share.
//! - `process`, `serve`: servers in child processes (this binary, run as
//!   `bench serve`), and their RSS and CPU from `/proc`.
//! - `proxy`: a counting loopback proxy (bytes, messages, round trips).
//! - `cluster`: three `accord-relay` nodes on PostgreSQL and NATS (W1
//!   spread over them, cross-node latency, W2 from the PostgreSQL store,
//!   durable changes/s through one node and three).
//! - `feed`: the change feed over HTTP and webhooks (latency, and sync
//!   with a webhook attached).
//! - `python`: the Python package's calls against the same calls in Rust
//!   (`--only python`).
//! - `run`: repetitions, each in a fresh runtime, under a time cap.
//! - `stats`: medians and the table.

mod accord_side;
mod cluster;
mod feed;
mod js_side;
mod plan;
mod process;
mod proxy;
mod python;
mod run;
mod samod_side;
mod serve;
mod stats;
mod w0;
mod workloads;

use clap::Parser;

use plan::{Args, Command};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Serve {
        system,
        db,
        store,
        store_schema,
        bus,
    }) = args.command
    {
        let cluster = store.map(|store| {
            let mut config = accord_relay::cluster::ClusterConfig::new(store);
            config.schema = store_schema;
            config.bus = bus;
            config
        });
        return serve::serve(system, db, cluster);
    }
    let plan = plan::Plan::from_args(&args)?;
    eprintln!("{}", plan.describe());
    let rows = plan.run();
    println!("{}", plan::machine());
    println!("{}", stats::table(&rows, args.markdown));
    // Times are never judged, but a run that failed (not one that hit the
    // cap) means the harness is broken: CI should say so.
    let failed = rows
        .iter()
        .filter(|r| [&r.accord, &r.reference].contains(&&stats::Figure::Failed))
        .count();
    if failed > 0 {
        // Printed last and without a backtrace (CI sets RUST_BACKTRACE),
        // so the end of a log names what failed.
        eprintln!("{failed} rows failed:");
        for failure in run::failures() {
            eprintln!("  {failure}");
        }
        std::process::exit(1);
    }
    Ok(())
}
