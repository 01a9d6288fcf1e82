//! What queries cost and what they buy.
//!
//! 1. Local writes of small records, durable (`Durability::Full`, one fsync
//!    per commit) and `Normal`, with the `records` projection kept and
//!    without it (`ReplicaOptions::projection`). One writer; runs alternate
//!    between the two settings and the median of `--rounds` runs is shown.
//! 2. Lookups by a JSON field among `--records` records, with an index on
//!    that path and without one.
//!
//! ```text
//! cargo run --release -p accord-engine --example query_bench -- [--records N]
//!     [--writes N] [--rounds N] [--lookups N] [--dir PATH] [--quick]
//! ```
//!
//! `--quick` is a smoke run (10,000 records, 200 writes). `--profile on|off`
//! only does `--writes` `Normal` writes with the projection on or off, for
//! a profiler (`valgrind --tool=callgrind`). Databases go in a
//! temporary directory under `--dir` (default: the system's), which should
//! be on the disk being measured: fsync on tmpfs costs nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use accord_engine::{DocId, Durability, Replica, ReplicaOptions, SqlValue};
use serde_json::json;

/// Command-line settings.
#[derive(Debug, Clone)]
struct Args {
    /// Records for the lookup part.
    records: usize,
    /// Writes per write run.
    writes: usize,
    /// Runs per setting (median shown).
    rounds: usize,
    /// Lookups timed per query shape.
    lookups: usize,
    /// Where the temporary directory goes.
    dir: Option<PathBuf>,
    /// Only write, with the projection on (`Some(true)`) or off.
    profile: Option<bool>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        records: 100_000,
        writes: 2_000,
        rounds: 5,
        lookups: 1_000,
        dir: None,
        profile: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let text = it.next().ok_or(format!("{name} needs a value"))?;
            text.parse()
                .map_err(|_| format!("{name}: not a number: {text}"))
        };
        match flag.as_str() {
            "--records" => args.records = number("--records")?,
            "--writes" => args.writes = number("--writes")?,
            "--rounds" => args.rounds = number("--rounds")?.max(1),
            "--lookups" => args.lookups = number("--lookups")?.max(1),
            "--dir" => args.dir = Some(it.next().ok_or("--dir needs a path")?.into()),
            "--profile" => match it.next().as_deref() {
                Some("on") => args.profile = Some(true),
                Some("off") => args.profile = Some(false),
                _ => return Err("--profile takes on or off".into()),
            },
            "--quick" => {
                args.records = 10_000;
                args.writes = 200;
                args.rounds = 3;
                args.lookups = 200;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// A small record, like a contact.
fn contact(i: usize) -> serde_json::Value {
    json!({"name": format!("person-{i:06}"), "email": format!("p{i}@example.org"),
           "age": i % 90, "tags": ["friend"]})
}

/// Per-operation latencies of one run, in microseconds, sorted.
#[derive(Debug, Clone)]
struct Run(Vec<f64>);

impl Run {
    fn time(n: usize, mut op: impl FnMut(usize)) -> Run {
        let mut us: Vec<f64> = (0..n)
            .map(|i| {
                let start = Instant::now();
                op(i);
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        us.sort_by(f64::total_cmp);
        Run(us)
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }

    fn pct(&self, p: f64) -> f64 {
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).copied().unwrap_or(0.0)
    }
}

/// The median of each statistic over several runs.
fn median(runs: &[Run], stat: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(stat).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One write run: `writes` puts spread over 100 fresh small records.
fn write_run(
    dir: &Path,
    name: &str,
    durability: Durability,
    projection: bool,
    writes: usize,
) -> Run {
    let path = dir.join(format!("{name}.db"));
    let options = ReplicaOptions {
        durability,
        projection,
        ..ReplicaOptions::default()
    };
    let replica = Replica::open_with(&path, options).expect("open");
    let ids: Vec<DocId> = (0..100)
        .map(|i| replica.create("contacts", &contact(i)).expect("create"))
        .collect();
    let run = Run::time(writes, |i| {
        replica
            .put(&ids[i % ids.len()], "age", &json!(i), None)
            .expect("put");
    });
    drop(replica);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    run
}

/// Write latency with and without the projection, alternating runs.
fn bench_writes(dir: &Path, args: &Args) {
    println!(
        "\nLocal writes of a small record (one put each, one writer), {} per run, median of {} runs",
        args.writes, args.rounds
    );
    println!(
        "{:<10} {:<11} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "durability", "projection", "mean µs", "p50 µs", "p99 µs", "Δ mean", "Δ p50"
    );
    for durability in [Durability::Full, Durability::Normal] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            off.push(write_run(
                dir,
                &format!("off-{round}"),
                durability,
                false,
                args.writes,
            ));
            on.push(write_run(
                dir,
                &format!("on-{round}"),
                durability,
                true,
                args.writes,
            ));
        }
        print_writes(durability, "off", &off, None);
        print_writes(durability, "on", &on, Some(&off));
    }
}

/// One row of the write table; `base` gives the differences.
fn print_writes(durability: Durability, label: &str, runs: &[Run], base: Option<&[Run]>) {
    let p50 = |r: &Run| r.pct(0.5);
    let (mean, median50) = (median(runs, Run::mean), median(runs, p50));
    let delta = |x: f64, stat: &dyn Fn(&Run) -> f64| match base {
        Some(base) => format!("{:+.1}%", (x / median(base, stat) - 1.0) * 100.0),
        None => "-".to_owned(),
    };
    println!(
        "{:<10} {:<11} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>10}",
        format!("{durability:?}"),
        label,
        mean,
        median50,
        median(runs, |r| r.pct(0.99)),
        delta(mean, &Run::mean),
        delta(median50, &p50)
    );
}

/// Fills a replica with `n` contacts from two writer threads (group
/// commit shares their transactions).
fn populate(replica: &Replica, n: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let replica = replica.clone();
            s.spawn(move || {
                for i in (t..n).step_by(2) {
                    replica.create("contacts", &contact(i)).expect("create");
                }
            });
        }
    });
    start.elapsed()
}

const LOOKUP: &str = "SELECT id, json FROM records \
                      WHERE collection = 'contacts' AND json_extract(json, '$.name') = ?1";

fn lookups(replica: &Replica, n: usize, records: usize) -> Run {
    Run::time(n, |i| {
        let name = format!("person-{:06}", (i * 7919) % records);
        let rows = replica
            .query(LOOKUP, &[SqlValue::from(name)])
            .expect("query");
        assert_eq!(rows.len(), 1, "each name is there once");
    })
}

/// What the lookup part measured.
#[derive(Debug)]
struct Lookups {
    /// How long filling the database took.
    filled: Duration,
    /// How long `create_index` took.
    indexing: Duration,
    /// Lookups with the index.
    indexed: Run,
    /// Lookups without it.
    scans: Run,
    /// The plan of the lookup with the index.
    plan: String,
    /// How long `reindex` took, and over how many records.
    reindex: (Duration, usize),
}

fn measure_lookups(dir: &Path, args: &Args) -> Lookups {
    let options = ReplicaOptions {
        durability: Durability::Normal,
        ..ReplicaOptions::default()
    };
    let replica = Replica::open_with(dir.join("lookup.db"), options).expect("open");
    let filled = populate(&replica, args.records);
    let start = Instant::now();
    replica.create_index("contacts", "$.name").expect("index");
    let indexing = start.elapsed();
    let indexed = lookups(&replica, args.lookups, args.records);
    let plan = replica
        .query(&format!("EXPLAIN QUERY PLAN {LOOKUP}"), &["x".into()])
        .expect("plan");
    let plan: Vec<&str> = plan.values("detail").filter_map(SqlValue::as_str).collect();
    let plan = plan.join("; ");
    replica.drop_index("contacts", "$.name").expect("drop");
    let scans = lookups(&replica, (args.lookups / 50).max(5), args.records);
    let start = Instant::now();
    let report = replica.reindex().expect("reindex");
    Lookups {
        filled,
        indexing,
        indexed,
        scans,
        plan,
        reindex: (start.elapsed(), report.records),
    }
}

fn bench_lookups(dir: &Path, args: &Args) {
    let m = measure_lookups(dir, args);
    println!(
        "\nLookup by a JSON field among {} records (filled in {:.1} s)",
        args.records,
        m.filled.as_secs_f64()
    );
    println!(
        "{:<28} {:>8} {:>10} {:>10} {:>10}",
        "query", "runs", "mean ms", "p50 ms", "p99 ms"
    );
    for (label, run) in [
        ("with index on $.name", &m.indexed),
        ("without index (scan)", &m.scans),
    ] {
        println!(
            "{:<28} {:>8} {:>10.3} {:>10.3} {:>10.3}",
            label,
            run.0.len(),
            run.mean() / 1e3,
            run.pct(0.5) / 1e3,
            run.pct(0.99) / 1e3
        );
    }
    println!("plan with the index: {}", m.plan);
    println!("create_index took {:.0} ms", m.indexing.as_secs_f64() * 1e3);
    let (took, records) = m.reindex;
    println!(
        "reindex of {records} records took {:.2} s ({:.0} records/s)",
        took.as_secs_f64(),
        records as f64 / took.as_secs_f64()
    );
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("query_bench: {e}");
            std::process::exit(2);
        }
    };
    let root = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&root).expect("temporary directory");
    if let Some(projection) = args.profile {
        let run = write_run(
            dir.path(),
            "profile",
            Durability::Normal,
            projection,
            args.writes,
        );
        println!("{} writes, mean {:.1} µs", run.0.len(), run.mean());
        return;
    }
    println!(
        "query_bench: {args:?}; databases in {}",
        dir.path().display()
    );
    bench_writes(dir.path(), &args);
    bench_lookups(dir.path(), &args);
}
