//! W0, local durable writes: changes per second through `Replica::change`,
//! each acknowledged after its commit, against the machine's limit — a
//! bare loop doing the same Automerge commit plus one SQLite transaction
//! holding the change's incremental bytes, with the store's pragmas (WAL,
//! `synchronous` as the replica's durability).

use std::path::Path;
use std::time::Instant;

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ROOT};
use accord_engine::{DocId, Durability, Replica, ReplicaOptions};
use anyhow::Context;
use rusqlite::{params, Connection, TransactionBehavior};

/// Parts of an Accord write W0 leaves out, to measure what each costs
/// (`--w0-without`): never a configuration to run an app with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Without {
    /// The query projection (`ReplicaOptions::projection` off).
    pub projection: bool,
    /// The collection sequence (its two triggers dropped from the file).
    pub numbering: bool,
}

/// One part `--w0-without` can name (clap checks the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The query projection.
    Projection,
    /// The collection sequence.
    Numbering,
}

impl Without {
    /// From `--w0-without` values.
    pub fn of(parts: &[Part]) -> Without {
        Without {
            projection: parts.contains(&Part::Projection),
            numbering: parts.contains(&Part::Numbering),
        }
    }

    /// What a row's label says, if anything is left out.
    pub fn label(&self) -> String {
        let parts: Vec<&str> = [
            (self.projection, "projection"),
            (self.numbering, "numbering"),
        ]
        .iter()
        .filter(|(off, _)| *off)
        .map(|(_, name)| *name)
        .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" without {}", parts.join(", "))
        }
    }
}

/// Changes per second of `writers` threads, each changing its own record,
/// `changes` changes in all, through one Accord replica.
pub fn accord(
    writers: usize,
    changes: usize,
    durability: Durability,
    without: Without,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("w0.db");
    let replica = Replica::open_with(
        &path,
        ReplicaOptions {
            durability,
            projection: !without.projection,
            ..ReplicaOptions::default()
        },
    )?;
    if without.numbering {
        // The replica's connection sees the schema change on its next
        // statement (SQLite re-prepares on a schema change).
        Connection::open(&path)?.execute_batch(
            "DROP TRIGGER docs_numbered_on_insert; DROP TRIGGER docs_numbered_on_update;",
        )?;
    }
    let ids: Vec<DocId> = (0..writers)
        .map(|_| replica.create_with("w0", None, |tx| tx.put(ROOT, "k", -1i64)))
        .collect::<Result<_, _>>()?;
    let per_writer = changes / writers;
    per_second(writers, per_writer, |w| {
        let id = &ids[w];
        for i in 0..per_writer {
            replica.change(id, None, |tx| tx.put(ROOT, "k", i as i64))?;
        }
        Ok(())
    })
}

/// Runs `write(w)` on one thread per writer and returns the changes per
/// second, `per_writer` changes each.
fn per_second(
    writers: usize,
    per_writer: usize,
    write: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let write = &write;
                s.spawn(move || write(w))
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().map_err(|_| anyhow::anyhow!("writer panicked"))?)
    })?;
    Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64())
}

/// Changes per second of the bare loop: `writers` threads, each with its
/// own connection and document, one transaction per change.
pub fn bare(writers: usize, changes: usize, durability: Durability) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bare.db");
    open(&path, durability)?.execute_batch(
        "CREATE TABLE chunks (doc INTEGER NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
         PRIMARY KEY (doc, seq))",
    )?;
    let per_writer = changes / writers;
    per_second(writers, per_writer, |w| {
        bare_writer(&path, w as i64, per_writer, durability)
    })
}

fn open(path: &Path, durability: Durability) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        _ => "FULL",
    };
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))?;
    Ok(conn)
}

fn bare_writer(path: &Path, doc_key: i64, changes: usize, d: Durability) -> anyhow::Result<()> {
    let mut conn = open(path, d)?;
    let mut doc = Automerge::new();
    for i in 0..changes {
        let before = doc.get_heads();
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", i as i64)?;
        tx.commit();
        let bytes = doc.save_after(&before);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO chunks (doc, seq, data) VALUES (?1, ?2, ?3)",
            params![doc_key, i as i64, bytes],
        )
        .context("insert")?;
        tx.commit()?;
    }
    Ok(())
}
