//! The command line, the sizes each workload runs at (full or `--quick`),
//! and the table rows built from both systems' outcomes.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use accord_engine::Durability;
use clap::{Parser, Subcommand, ValueEnum};

use crate::feed;
use crate::process::{System, Target};
use crate::python;
use crate::run::{repeat, repeat_reference, Outcome, Settings};
use crate::stats::{Better, Figure, Row};
use crate::workloads::{Idle, W1, W2, W3, W5};
use crate::{accord_side, cluster, js_side, samod_side, w0, workloads};

/// Accord against the machine's limits and against samod 0.16.
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct Args {
    /// Internal: run a server for the harness.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Small sizes, one repetition (CI's smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per row; rows show the median [default: 3, quick 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Longest a phase may take before the row reads "> cap" [default: 120, quick 60].
    #[arg(long)]
    pub cap_secs: Option<u64>,
    /// Only these workloads (comma-separated: w0,w1,w2,w3,w4,w5,servers,
    /// feed, cluster, python; `cluster` needs PostgreSQL and NATS (from
    /// ACCORD_TEST_POSTGRES / ACCORD_TEST_NATS, as the cluster tests);
    /// `servers` is the same samod client load on W1–W3 against
    /// accord-relay's /automerge-repo, the JS sync server and samod's
    /// server; `python` runs only when named: the Python package's calls
    /// against the same calls in Rust, which needs a release build of the
    /// package in bindings/python/.venv).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip samod (its rows read n/a).
    #[arg(long)]
    pub no_samod: bool,
    /// Durability of the measured Accord replicas.
    #[arg(long, value_enum, default_value = "full")]
    pub durability: DurabilityArg,
    /// Durability of the changes those replicas receive from the relay
    /// (`ReplicaOptions::received_durability`; never above `--durability`).
    #[arg(long, value_enum, default_value = "normal")]
    pub received_durability: DurabilityArg,
    /// W0: changes per run [default: 2000, quick 200].
    #[arg(long)]
    pub w0_changes: Option<usize>,
    /// W0: leave parts of an Accord write out, to measure what they cost
    /// (comma-separated: projection, numbering); the rows say so.
    #[arg(long, value_delimiter = ',')]
    pub w0_without: Vec<w0::Part>,
    /// W1: client counts K [default: 20,100; quick 5].
    #[arg(long, value_delimiter = ',')]
    pub w1_k: Vec<usize>,
    /// W1: changes N [default: 1000, quick 50].
    #[arg(long)]
    pub w1_n: Option<usize>,
    /// W2: document counts D [default: 1000,10000; quick 50].
    #[arg(long, value_delimiter = ',')]
    pub w2_d: Vec<usize>,
    /// W3: changes per side M [default: 500,1000; quick 20].
    #[arg(long, value_delimiter = ',')]
    pub w3_m: Vec<usize>,
    /// W4: documents stored at the relay [default: 100000, quick 500].
    #[arg(long)]
    pub w4_stored: Option<usize>,
    /// W4: of which live [default: 1000, quick 50].
    #[arg(long)]
    pub w4_live: Option<usize>,
    /// W4: idle connections [default: 1000, quick 50].
    #[arg(long)]
    pub w4_idle: Option<usize>,
    /// W5: records in the collection [default: 100000, quick 500].
    #[arg(long)]
    pub w5_records: Option<usize>,
    /// W5: records changed elsewhere while the replica is away [default: 10].
    #[arg(long)]
    pub w5_changed: Option<usize>,
    /// W4: seconds of idle CPU measurement [default: 10, quick 1].
    #[arg(long)]
    pub idle_window_secs: Option<u64>,
    /// Print the table as Markdown.
    #[arg(long)]
    pub markdown: bool,
}

/// Subcommands (internal).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a server until standard input closes (used by the harness).
    #[command(hide = true)]
    Serve {
        /// Which server.
        #[arg(long, value_enum)]
        system: System,
        /// Its database file (Accord) or storage directory (samod).
        #[arg(long)]
        db: PathBuf,
        /// Accord as a cluster node on this PostgreSQL store.
        #[arg(long)]
        store: Option<String>,
        /// The store's schema.
        #[arg(long, default_value = "accord")]
        store_schema: String,
        /// The cluster's NATS bus.
        #[arg(long)]
        bus: Option<String>,
    },
}

/// `--durability`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DurabilityArg {
    /// `synchronous = FULL` (the default of the engine).
    Full,
    /// `synchronous = NORMAL`.
    Normal,
}

impl From<DurabilityArg> for Durability {
    fn from(arg: DurabilityArg) -> Durability {
        match arg {
            DurabilityArg::Full => Durability::Full,
            DurabilityArg::Normal => Durability::Normal,
        }
    }
}

/// What one run of the harness does.
#[derive(Debug)]
pub struct Plan {
    settings: Settings,
    reps: usize,
    only: Vec<String>,
    samod: bool,
    w0_changes: usize,
    w0_without: w0::Without,
    w1_k: Vec<usize>,
    w1_n: usize,
    w2_d: Vec<usize>,
    w3_m: Vec<usize>,
    w4: (usize, usize, usize),
    /// W5: records, and how many change while the replica is away.
    w5: (usize, usize),
    idle_window: Duration,
    /// Records of the feed workloads (read, push with a webhook).
    feed_records: usize,
    /// Webhook latency: changes per second, for how many seconds.
    feed_rate: (usize, usize),
}

fn or_list(given: &[usize], quick: bool, q: &[usize], full: &[usize]) -> Vec<usize> {
    match (given.is_empty(), quick) {
        (false, _) => given.to_vec(),
        (true, true) => q.to_vec(),
        (true, false) => full.to_vec(),
    }
}

impl Plan {
    /// Sizes from the flags, the quick or full defaults filling the rest.
    pub fn from_args(a: &Args) -> anyhow::Result<Plan> {
        let q = a.quick;
        let pick =
            |v: Option<usize>, quick: usize, full: usize| v.unwrap_or(if q { quick } else { full });
        let plan = Plan {
            settings: Settings {
                cap: Duration::from_secs(a.cap_secs.unwrap_or(if q { 60 } else { 120 })),
                durability: a.durability.into(),
                received: a.received_durability.into(),
            },
            reps: pick(a.reps, 1, 3).max(1),
            only: a.only.iter().map(|w| w.to_lowercase()).collect(),
            samod: !a.no_samod,
            w0_changes: pick(a.w0_changes, 200, 2000).max(8),
            w0_without: w0::Without::of(&a.w0_without),
            w1_k: or_list(&a.w1_k, q, &[5], &[20, 100]),
            w1_n: pick(a.w1_n, 50, 1000).max(1),
            w2_d: or_list(&a.w2_d, q, &[50], &[1000, 10_000]),
            w3_m: or_list(&a.w3_m, q, &[20], &[500, 1000]),
            w4: (
                pick(a.w4_stored, 500, 100_000),
                pick(a.w4_live, 50, 1000),
                pick(a.w4_idle, 50, 1000),
            ),
            w5: (
                pick(a.w5_records, 500, 100_000).max(1),
                a.w5_changed.unwrap_or(10),
            ),
            idle_window: Duration::from_secs(a.idle_window_secs.unwrap_or(if q { 1 } else { 10 })),
            feed_records: pick(None, 500, 10_000),
            feed_rate: (100, pick(None, 1, 5)),
        };
        anyhow::ensure!(
            plan.w5.1 <= plan.w5.0,
            "W5 cannot change more records than exist"
        );
        anyhow::ensure!(plan.w1_k.iter().all(|&k| k >= 2), "W1 needs K >= 2");
        anyhow::ensure!(plan.w4.1 <= plan.w4.0, "W4 live must not exceed stored");
        Ok(plan)
    }

    /// One line saying what will run.
    pub fn describe(&self) -> String {
        format!(
            "bench: reps={} cap={}s durability={:?} received={:?} W0 changes={} W1 K={:?} N={} W2 D={:?} W3 M={:?} W4 stored={} live={} idle={} window={}s W5 records={} changed={}{}",
            self.reps,
            self.settings.cap.as_secs(),
            self.settings.durability,
            self.settings.received,
            self.w0_changes,
            self.w1_k,
            self.w1_n,
            self.w2_d,
            self.w3_m,
            self.w4.0,
            self.w4.1,
            self.w4.2,
            self.idle_window.as_secs(),
            self.w5.0,
            self.w5.1,
            if self.samod { "" } else { " (samod skipped)" },
        )
    }

    fn wants(&self, w: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == w)
    }

    /// Runs every selected workload; returns the rows. Each workload's
    /// rows are also printed to standard error as soon as they are known.
    pub fn run(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut peaks = Vec::new();
        type Step = fn(&Plan, &mut Vec<Row>, &mut Vec<Row>);
        let steps: [(&str, Step); 10] = [
            ("w0", |p, r, _| p.w0(r)),
            ("w1", Plan::w1),
            ("w2", Plan::w2),
            ("w3", Plan::w3),
            ("servers", Plan::servers),
            ("w4", |p, r, _| p.w4(r)),
            ("feed", |p, r, _| p.feed(r)),
            ("w5", |p, r, _| p.w5(r)),
            ("cluster", |p, r, _| p.cluster(r)),
            ("python", |p, r, _| p.python(r)),
        ];
        for (name, step) in steps {
            let named = self.only.iter().any(|o| o == name);
            if !self.wants(name) || (name == "python" && !named) {
                continue;
            }
            if name == "w4" {
                rows.append(&mut peaks);
            }
            let (rows_before, peaks_before) = (rows.len(), peaks.len());
            step(self, &mut rows, &mut peaks);
            let mut done = rows[rows_before..].to_vec();
            done.extend_from_slice(&peaks[peaks_before..]);
            eprintln!("{}", crate::stats::table(&done, false));
        }
        rows.append(&mut peaks);
        rows
    }

    /// Runs `f` on samod unless samod is skipped.
    fn samod<T, F, Fut>(&self, label: &str, reps: usize, f: F) -> Outcome<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        if self.samod {
            repeat_reference(&format!("samod {label}"), reps, self.settings, f)
        } else {
            Outcome::Done(Vec::new())
        }
    }

    fn accord<T, F, Fut>(&self, label: &str, reps: usize, f: F) -> Outcome<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        repeat(&format!("Accord {label}"), reps, self.settings, f)
    }

    fn w0(&self, rows: &mut Vec<Row>) {
        let (n, d, without) = (self.w0_changes, self.settings.durability, self.w0_without);
        for writers in [1, 8] {
            let label = format!(
                "W0 {writers} writer{}{}",
                if writers == 1 { "" } else { "s" },
                without.label()
            );
            let ours = self.accord(&label, self.reps, move || async move {
                w0::accord(writers, n, d, without)
            });
            let bare = repeat(
                &format!("bare loop {label}"),
                self.reps,
                self.settings,
                || async move { w0::bare(writers, n, d) },
            );
            rows.push(Row {
                workload: label,
                metric: "durable changes/s".into(),
                unit: "/s",
                better: Better::Higher,
                accord: ours.figure(|v| *v),
                reference: bare.figure(|v| *v),
                reference_name: "bare Automerge+SQLite loop",
            });
        }
    }

    /// The change feed and webhooks (see `feed`).
    fn feed(&self, rows: &mut Vec<Row>) {
        let (n, s) = (self.feed_records, self.settings);
        let read = self.accord("feed read", self.reps, move || feed::feed_read(n, s));
        rows.push(Row {
            workload: format!("feed read {n} records"),
            metric: "events/s".into(),
            unit: "/s",
            better: Better::Higher,
            accord: read.figure(|v| v.0),
            reference: read.figure(|v| v.1),
            reference_name: "Replica::changes_since in-process",
        });
        let (rate, secs) = self.feed_rate;
        let latency = self.accord("webhook latency", self.reps, move || {
            feed::webhook_latency(rate, secs, s)
        });
        rows.push(Row {
            workload: format!("webhook at {rate} changes/s"),
            metric: "latency p50 / p99".into(),
            unit: "ms",
            better: Better::Lower,
            accord: latency.figure(|v| v.0),
            reference: latency.figure(|v| v.1),
            reference_name: "(the p99)",
        });
        let with = self.accord("push with a webhook", self.reps, move || {
            feed::push(n, true, s)
        });
        let without = self.accord("push without a webhook", self.reps, move || {
            feed::push(n, false, s)
        });
        rows.push(Row {
            workload: format!("push {n} records, webhook attached"),
            metric: "time to synced".into(),
            unit: "s",
            better: Better::Lower,
            accord: with.figure(|v| *v),
            reference: without.figure(|v| *v),
            reference_name: "the same without a webhook",
        });
    }

    /// Three relay nodes on PostgreSQL and NATS (see `cluster`), each
    /// against one SQLite relay or one node.
    fn cluster(&self, rows: &mut Vec<Row>) {
        let (n, s, quick) = (self.w1_n, self.settings, self.w1_n < 1000);
        for &k in &self.w1_k {
            let label = format!("cluster W1 K={k} N={n}, 3 nodes");
            let ours = self.accord(&label, self.reps, move || cluster::w1(k, n, s));
            let one = self.accord("W1 on one SQLite relay", self.reps, move || {
                accord_side::w1(k, n, s)
            });
            for (metric, unit, f) in [
                ("total_s", "s", (|r: &W1| r.total_s) as fn(&W1) -> f64),
                ("last_latency_ms", "ms", |r: &W1| r.last_latency_ms),
            ] {
                rows.push(Row {
                    workload: label.clone(),
                    metric: metric.into(),
                    unit,
                    better: Better::Lower,
                    accord: ours.figure(|r| f(&r.0)),
                    reference: one.figure(|r| f(&r.0)),
                    reference_name: "one SQLite relay",
                });
            }
        }
        let (rate, secs) = (100, if quick { 1 } else { 5 });
        let latency = self.accord("cluster cross-node latency", self.reps, move || {
            cluster::latency(rate, secs, s)
        });
        rows.push(Row {
            workload: format!("cluster, node 0 to 1 and 2, {rate} changes/s"),
            metric: "latency p50 / p99".into(),
            unit: "ms",
            better: Better::Lower,
            accord: latency.figure(|v| v.0),
            reference: latency.figure(|v| v.1),
            reference_name: "(the p99)",
        });
        for &d in &self.w2_d {
            let label = format!("cluster W2 D={d}, from PostgreSQL");
            let ours = self.accord(&label, self.reps, move || cluster::w2(d, s));
            let one = self.accord("W2 on one SQLite relay", 1, move || {
                accord_side::w2(d, 1, s)
            });
            rows.push(Row {
                workload: label.clone(),
                metric: "cold sync s".into(),
                unit: "s",
                better: Better::Lower,
                accord: ours.figure(|v| v.0),
                reference: inner(&one, |r| r.warm_s),
                reference_name: "one SQLite relay",
            });
            rows.push(Row {
                workload: label,
                metric: "wire ÷ saved bytes".into(),
                unit: "×",
                better: Better::Lower,
                accord: ours.figure(|v| v.1),
                reference: inner(&one, |r| r.warm_bytes_ratio),
                reference_name: "one SQLite relay",
            });
        }
        let (writers, changes) = if quick { (3, 50) } else { (6, 500) };
        let three = self.accord("cluster throughput, 3 nodes", self.reps, move || {
            cluster::throughput(3, writers, changes, s)
        });
        let single = self.accord("cluster throughput, 1 node", self.reps, move || {
            cluster::throughput(1, writers, changes, s)
        });
        rows.push(Row {
            workload: format!("cluster, {writers} writers x {changes} changes"),
            metric: "durable changes/s".into(),
            unit: "/s",
            better: Better::Higher,
            accord: three.figure(|v| *v),
            reference: single.figure(|v| *v),
            reference_name: "the same through one node",
        });
    }

    /// The Python package's calls against the same calls in Rust.
    fn python(&self, rows: &mut Vec<Row>) {
        let (writes, queries) = (self.w0_changes, 500);
        let py = repeat("Python", self.reps, self.settings, move || async move {
            python::python(writes, queries)
        });
        let rust = repeat("Rust", self.reps, self.settings, move || async move {
            python::rust(writes, queries)
        });
        type Metric = fn(&python::Figures) -> f64;
        let metrics: [(&str, &str, &'static str, Better, Metric); 3] = [
            (
                "single put",
                "durable writes/s",
                "/s",
                Better::Higher,
                |f| f.put_per_s,
            ),
            ("create", "durable creates/s", "/s", Better::Higher, |f| {
                f.create_per_s
            }),
            ("query", "median latency", "ms", Better::Lower, |f| {
                f.query_ms
            }),
        ];
        for (what, metric, unit, better, f) in metrics {
            rows.push(Row {
                workload: format!("Python {what}"),
                metric: metric.into(),
                unit,
                better,
                accord: py.figure(f),
                reference: rust.figure(f),
                reference_name: "the same calls in Rust",
            });
        }
    }

    fn w1(&self, rows: &mut Vec<Row>, peaks: &mut Vec<Row>) {
        let (n, s) = (self.w1_n, self.settings);
        for &k in &self.w1_k {
            let label = format!("W1 K={k} N={n}");
            let ours = self.accord(&label, self.reps, move || accord_side::w1(k, n, s));
            let theirs = self.samod(&label, self.reps, move || {
                samod_side::w1(k, n, Target::Samod, s)
            });
            let pair = |f: fn(&W1) -> f64| {
                (
                    ours.figure(|r| f(&r.0)),
                    self.samod_figure(&theirs, |r| f(&r.0)),
                )
            };
            rows.push(row(
                &label,
                "total_s",
                "s",
                Better::Lower,
                pair(|r| r.total_s),
            ));
            rows.push(row(
                &label,
                "last_latency_ms",
                "ms",
                Better::Lower,
                pair(|r| r.last_latency_ms),
            ));
            peaks.push(row(
                &format!("W4 during {label}"),
                "relay CPU s",
                "s",
                Better::Lower,
                pair(|r| r.server_cpu_s.unwrap_or(f64::NAN)),
            ));
            peaks.push(peak_row(&label, &ours, &theirs, self));
        }
    }

    fn w2(&self, rows: &mut Vec<Row>, peaks: &mut Vec<Row>) {
        let (reps, s) = (self.reps, self.settings);
        for &d in &self.w2_d {
            let label = format!("W2 D={d}");
            let ours = self.accord(&label, 1, move || accord_side::w2(d, reps, s));
            let theirs = self.samod(&label, 1, move || samod_side::w2(d, reps, Target::Samod, s));
            let pair = |f: fn(&W2) -> f64| (inner(&ours, f), self.samod_or(inner(&theirs, f)));
            rows.push(row(
                &label,
                "cold sync s",
                "s",
                Better::Lower,
                pair(|r| r.warm_s),
            ));
            rows.push(row(
                &label,
                "wire ÷ saved bytes",
                "×",
                Better::Lower,
                pair(|r| r.warm_bytes_ratio),
            ));
            rows.push(row(
                &label,
                "after restart s",
                "s",
                Better::Lower,
                pair(|r| r.restarted_s),
            ));
            rows.push(row(
                &label,
                "after restart wire ÷ saved",
                "×",
                Better::Lower,
                pair(|r| r.restarted_bytes_ratio),
            ));
            let floor = repeat(&format!("floor {label}"), reps, s, move || async move {
                workloads::w2_floor(d)
            });
            rows.push(Row {
                workload: label.clone(),
                metric: "cold sync s vs the machine".into(),
                unit: "s",
                better: Better::Lower,
                accord: inner(&ours, |r| r.warm_s),
                reference: floor.figure(|v| *v),
                reference_name: "in-memory Automerge sync",
            });
            peaks.push(peak_row(&label, &ours, &theirs, self));
        }
    }

    fn w3(&self, rows: &mut Vec<Row>, peaks: &mut Vec<Row>) {
        let s = self.settings;
        for &m in &self.w3_m {
            let label = format!("W3 M={m}");
            let ours = self.accord(&label, self.reps, move || accord_side::w3(m, s));
            let theirs = self.samod(&label, self.reps, move || {
                samod_side::w3(m, Target::Samod, s)
            });
            let pair = |f: fn(&W3) -> f64| {
                (
                    ours.figure(|r| f(&r.0)),
                    self.samod_figure(&theirs, |r| f(&r.0)),
                )
            };
            rows.push(row(
                &label,
                "time to identical heads",
                "s",
                Better::Lower,
                pair(|r| r.time_s),
            ));
            rows.push(row(
                &label,
                "round trips",
                "",
                Better::Lower,
                pair(|r| r.round_trips),
            ));
            rows.push(row(
                &label,
                "messages",
                "",
                Better::Lower,
                pair(|r| r.messages),
            ));
            rows.push(row(
                &label,
                "wire ÷ missing changes",
                "×",
                Better::Lower,
                pair(|r| r.bytes_ratio),
            ));
            peaks.push(peak_row(&label, &ours, &theirs, self));
        }
    }

    /// The same client load against three servers of the automerge-repo
    /// protocol, driven by samod repos and then by the stock JS client:
    /// accord-relay's door in the Accord column, the JS sync server and
    /// samod's server as references, one row each.
    fn servers(&self, rows: &mut Vec<Row>, peaks: &mut Vec<Row>) {
        if !self.samod {
            return;
        }
        for client in [Client::Samod, Client::Js] {
            self.servers_with(client, rows, peaks);
        }
    }

    fn servers_with(&self, client: Client, rows: &mut Vec<Row>, peaks: &mut Vec<Row>) {
        let (n, reps, s) = (self.w1_n, self.reps, self.settings);
        let others = [Target::JsServer, Target::Samod];
        let run = |t: Target, label: &str, reps: usize| format!("{} {label} ×{reps}", t.name());
        let who = client.name();
        for &k in &self.w1_k {
            let label = format!("{who} W1 K={k} N={n}");
            let w1 = |t: Target| {
                repeat_on(t, &run(t, &label, reps), reps, s, move || {
                    client.w1(k, n, t, s)
                })
            };
            let ours = w1(Target::AccordRelay);
            for t in others {
                let theirs = w1(t);
                let f = |m: fn(&W1) -> f64| (ours.figure(|r| m(&r.0)), theirs.figure(|r| m(&r.0)));
                rows.push(versus(
                    &label,
                    "total_s",
                    "s",
                    Better::Lower,
                    f(|r| r.total_s),
                    t,
                ));
                let latency = f(|r| r.last_latency_ms);
                rows.push(versus(
                    &label,
                    "last_latency_ms",
                    "ms",
                    Better::Lower,
                    latency,
                    t,
                ));
                let cpu = f(|r| r.server_cpu_s.unwrap_or(f64::NAN));
                peaks.push(versus(&label, "server CPU s", "s", Better::Lower, cpu, t));
                let rss = (ours.figure(peak_mib), theirs.figure(peak_mib));
                peaks.push(versus(
                    &label,
                    "server peak RSS",
                    "MiB",
                    Better::Lower,
                    rss,
                    t,
                ));
            }
        }
        for &d in &self.w2_d {
            let label = format!("{who} W2 D={d}");
            let w2 = |t: Target| {
                repeat_on(t, &run(t, &label, 1), 1, s, move || {
                    client.w2(d, reps, t, s)
                })
            };
            let ours = w2(Target::AccordRelay);
            for t in others {
                let theirs = w2(t);
                let f = |m: fn(&W2) -> f64| (inner(&ours, m), inner(&theirs, m));
                rows.push(versus(
                    &label,
                    "cold sync s",
                    "s",
                    Better::Lower,
                    f(|r| r.warm_s),
                    t,
                ));
                let restarted = f(|r| r.restarted_s);
                rows.push(versus(
                    &label,
                    "after restart s",
                    "s",
                    Better::Lower,
                    restarted,
                    t,
                ));
                let rss = (ours.figure(peak_mib), theirs.figure(peak_mib));
                peaks.push(versus(
                    &label,
                    "server peak RSS",
                    "MiB",
                    Better::Lower,
                    rss,
                    t,
                ));
            }
        }
        for &m in &self.w3_m {
            let label = format!("{who} W3 M={m}");
            let w3 = |t: Target| {
                repeat_on(t, &run(t, &label, reps), reps, s, move || {
                    client.w3(m, t, s)
                })
            };
            let ours = w3(Target::AccordRelay);
            for t in others {
                let theirs = w3(t);
                let f = |m: fn(&W3) -> f64| (ours.figure(|r| m(&r.0)), theirs.figure(|r| m(&r.0)));
                let time = f(|r| r.time_s);
                rows.push(versus(
                    &label,
                    "time to identical heads",
                    "s",
                    Better::Lower,
                    time,
                    t,
                ));
                rows.push(versus(
                    &label,
                    "messages",
                    "",
                    Better::Lower,
                    f(|r| r.messages),
                    t,
                ));
                let rss = (ours.figure(peak_mib), theirs.figure(peak_mib));
                peaks.push(versus(
                    &label,
                    "server peak RSS",
                    "MiB",
                    Better::Lower,
                    rss,
                    t,
                ));
            }
        }
    }

    fn w4(&self, rows: &mut Vec<Row>) {
        let ((stored, live, conns), window, s) = (self.w4, self.idle_window, self.settings);
        let label = format!("W4 {stored} stored, {live} live");
        let ours = self.accord(&label, self.reps, move || {
            accord_side::w4_stored(stored, live, s)
        });
        let theirs = self.samod(&label, self.reps, move || {
            samod_side::w4_stored(stored, live, s)
        });
        let pair = (ours.figure(|v| *v), self.samod_figure(&theirs, |v| *v));
        rows.push(row(&label, "relay RSS", "MiB", Better::Lower, pair));
        let label = format!("W4 {conns} idle connections");
        let ours = self.accord(&label, self.reps, move || {
            accord_side::w4_idle(conns, window, s)
        });
        let theirs = self.samod(&label, self.reps, move || {
            samod_side::w4_idle(conns, window, s)
        });
        let pair = |f: fn(&Idle) -> f64| (ours.figure(f), self.samod_figure(&theirs, f));
        rows.push(row(
            &label,
            "RSS per connection",
            "KiB",
            Better::Lower,
            pair(|i| i.kib_per_conn),
        ));
        rows.push(row(
            &label,
            "CPU per connection",
            "µs/s",
            Better::Lower,
            pair(|i| i.cpu_us_per_conn_s),
        ));
    }

    /// W5: reconnect cost with collection cursors. samod has no
    /// collections to resume, so the reference column reads n/a.
    fn w5(&self, rows: &mut Vec<Row>) {
        let ((n, changed), s) = (self.w5, self.settings);
        let label = format!("W5 {n} records, {changed} changed");
        let ours = self.accord(&label, self.reps, move || accord_side::w5(n, changed, s));
        type Metric = (&'static str, &'static str, fn(&W5) -> f64);
        let metrics: [Metric; 5] = [
            ("first sync to agreed", "s", |r| r.first_s),
            ("first sync wire", "KB", |r| r.first_bytes as f64 / 1000.0),
            ("reconnect to agreed", "s", |r| r.reconnect_s),
            ("reconnect wire", "KB", |r| {
                r.reconnect_bytes as f64 / 1000.0
            }),
            ("relay RSS per idle subscriber", "KiB", |r| {
                r.idle_kib_per_conn
            }),
        ];
        for (metric, unit, f) in metrics {
            rows.push(Row {
                reference_name: "(no equivalent)",
                ..row(
                    &label,
                    metric,
                    unit,
                    Better::Lower,
                    (ours.figure(f), Figure::NotApplicable),
                )
            });
        }
    }

    fn samod_figure<T>(&self, o: &Outcome<T>, f: impl Fn(&T) -> f64) -> Figure {
        self.samod_or(o.figure(f))
    }

    fn samod_or(&self, figure: Figure) -> Figure {
        if self.samod {
            figure
        } else {
            Figure::NotApplicable
        }
    }
}

fn row(label: &str, metric: &str, unit: &'static str, better: Better, f: (Figure, Figure)) -> Row {
    Row {
        workload: label.to_owned(),
        metric: metric.to_owned(),
        unit,
        better,
        accord: f.0,
        reference: f.1,
        reference_name: "samod 0.16",
    }
}

/// The automerge-repo client a three-server row is measured with.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// samod 0.16 repos, in the harness's process.
    Samod,
    /// The stock JS client (automerge-repo 2.5.6), in Node processes.
    Js,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Samod => "samod clients",
            Client::Js => "JS clients",
        }
    }

    async fn w1(self, k: usize, n: usize, t: Target, s: Settings) -> anyhow::Result<(W1, u64)> {
        match self {
            Client::Samod => samod_side::w1(k, n, t, s).await,
            Client::Js => js_side::w1(k, n, t, s).await,
        }
    }

    async fn w2(
        self,
        d: usize,
        reps: usize,
        t: Target,
        s: Settings,
    ) -> anyhow::Result<(Vec<W2>, u64)> {
        match self {
            Client::Samod => samod_side::w2(d, reps, t, s).await,
            Client::Js => js_side::w2(d, reps, t, s).await,
        }
    }

    async fn w3(self, m: usize, t: Target, s: Settings) -> anyhow::Result<(W3, u64)> {
        match self {
            Client::Samod => samod_side::w3(m, t, s).await,
            Client::Js => js_side::w3(m, t, s).await,
        }
    }
}

/// A row of the three-server comparison: accord-relay's door against
/// `reference`.
fn versus(
    label: &str,
    metric: &str,
    unit: &'static str,
    better: Better,
    f: (Figure, Figure),
    reference: Target,
) -> Row {
    Row {
        reference_name: reference.name(),
        ..row(label, metric, unit, better, f)
    }
}

/// A run's server peak RSS (its second half, KiB) in MiB.
fn peak_mib<T>(r: &(T, u64)) -> f64 {
    r.1 as f64 / 1024.0
}

/// The relay's peak RSS during a W1–W3 run.
fn peak_row<T>(label: &str, ours: &Outcome<(T, u64)>, theirs: &Outcome<(T, u64)>, p: &Plan) -> Row {
    let mib = |r: &(T, u64)| r.1 as f64 / 1024.0;
    row(
        &format!("W4 during {label}"),
        "relay peak RSS",
        "MiB",
        Better::Lower,
        (ours.figure(mib), p.samod_figure(theirs, mib)),
    )
}

/// The median over the repetitions a W2 run made inside itself.
fn inner(o: &Outcome<(Vec<W2>, u64)>, f: fn(&W2) -> f64) -> Figure {
    match o {
        Outcome::Done(runs) => {
            Figure::median(runs.iter().flat_map(|r| r.0.iter().map(f)).collect())
        }
        Outcome::OverCap(cap, phase) => Figure::OverCap(*cap, phase),
        Outcome::Failed => Figure::Failed,
    }
}

/// The machine, for the header above the table.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "machine: {cores} cores, {cpu}; arguments: {}",
        args.join(" ")
    )
}

/// [`repeat`] against accord-relay, [`repeat_reference`] against a
/// reference server.
fn repeat_on<T, F, Fut>(target: Target, label: &str, reps: usize, s: Settings, run: F) -> Outcome<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    match target {
        Target::AccordRelay => repeat(label, reps, s, run),
        Target::JsServer | Target::Samod => repeat_reference(label, reps, s, run),
    }
}
