//! Looking after the file: `compact` and `check`.

use std::io::Write;
use std::process::ExitCode;

use accord_engine::store::Store;
use accord_engine::{DocId, ListOptions, ProjectionIssue, RecordMeta, Replica};
use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::output::{count, human_size, Tint};

/// Every record, deleted ones included.
fn all_records(replica: &Replica) -> Result<Vec<RecordMeta>> {
    Ok(replica.list_with(&ListOptions::everything())?)
}

fn total_size(metas: &[RecordMeta]) -> u64 {
    metas.iter().map(|m| m.size_bytes).sum()
}

/// `accord compact`: rewrites every record stored as several chunks into
/// one snapshot. A record that fails is reported and the others go on.
pub fn compact(ctx: &mut Ctx) -> Result<ExitCode> {
    let replica = ctx.replica()?;
    let metas = all_records(&replica)?;
    let before = total_size(&metas);
    let mut compacted = 0usize;
    let mut failed: Vec<(DocId, String)> = Vec::new();
    for meta in metas.iter().filter(|m| m.chunk_count > 1) {
        match replica.compact(&meta.id) {
            Ok(()) => compacted += 1,
            Err(e) => failed.push((meta.id, e.to_string())),
        }
    }
    let after = total_size(&all_records(&replica)?);
    if ctx.out.json {
        let failed: Vec<Value> = failed
            .iter()
            .map(|(id, e)| json!({"id": id.to_string(), "error": e}))
            .collect();
        let report = json!({"records": metas.len(), "compacted": compacted,
            "size_before": before, "size_after": after, "failed": failed});
        ctx.out.json_value(&report)?;
    } else {
        let text = format!(
            "compacted {compacted} of {}: {} -> {}",
            count(metas.len() as u64, "record"),
            human_size(before),
            human_size(after)
        );
        ctx.out.line(&text)?;
    }
    complain(
        failed
            .iter()
            .map(|(id, e)| format!("cannot compact {id}: {e}")),
    )
}

/// Writes each problem to stderr; the exit status says whether there were any.
fn complain(problems: impl Iterator<Item = String>) -> Result<ExitCode> {
    let mut stderr = std::io::stderr().lock();
    let mut any = false;
    for problem in problems {
        any = true;
        let _ = writeln!(stderr, "error: {problem}");
    }
    Ok(if any {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A record that does not load.
#[derive(Debug)]
struct Damage {
    /// Its metadata row (which still reads).
    meta: RecordMeta,
    /// What failed.
    error: String,
}

/// What `check` found.
#[derive(Debug)]
struct Findings {
    /// How many records were checked.
    total: usize,
    /// Records that do not load.
    damaged: Vec<Damage>,
    /// Projection rows that disagree with their record.
    projection: Vec<ProjectionIssue>,
    /// SQLite's complaints.
    integrity: Vec<String>,
}

impl Findings {
    fn problems(&self) -> usize {
        self.damaged.len() + self.projection.len() + self.integrity.len()
    }
}

/// `accord check`: loads every record (deleted ones too), compares the
/// query projection with the records, and runs SQLite's integrity check.
/// Exits non-zero if anything is wrong.
pub fn check(ctx: &mut Ctx) -> Result<ExitCode> {
    let replica = ctx.replica()?;
    let metas = all_records(&replica)?;
    let total = metas.len();
    let damaged: Vec<Damage> = metas
        .into_iter()
        .filter_map(|meta| {
            let error = replica.history(&meta.id).err()?.to_string();
            Some(Damage { meta, error })
        })
        .collect();
    let projection = replica
        .check_projection()
        .context("cannot compare the query projection with the records")?;
    let integrity = Store::open_reader(&ctx.db)
        .and_then(|store| store.integrity_check())
        .context("cannot run SQLite's integrity check")?;
    let findings = Findings {
        total,
        damaged,
        projection,
        integrity,
    };
    if ctx.out.json {
        check_json(ctx, &findings)?;
    } else {
        check_text(ctx, &findings)?;
    }
    let problems = findings.problems();
    let plural = if problems == 1 { "" } else { "s" };
    let summary = format!("check found {problems} problem{plural}");
    complain((problems > 0).then_some(summary).into_iter())
}

fn check_json(ctx: &mut Ctx, findings: &Findings) -> Result<()> {
    let damaged: Vec<Value> = findings
        .damaged
        .iter()
        .map(|d| json!({"id": d.meta.id.to_string(), "collection": d.meta.collection, "error": d.error}))
        .collect();
    let projection: Vec<Value> = findings
        .projection
        .iter()
        .map(|p| json!({"id": p.id.to_string(), "collection": p.collection, "problem": p.problem.to_string()}))
        .collect();
    let report = json!({"ok": findings.problems() == 0, "records": findings.total,
        "damaged": damaged, "projection": projection, "integrity": findings.integrity});
    ctx.out.json_value(&report)?;
    Ok(())
}

fn check_text(ctx: &mut Ctx, findings: &Findings) -> Result<()> {
    for d in &findings.damaged {
        let line = format!(
            "{} {} ({}): {}",
            ctx.out.paint(Tint::Remove, "damaged"),
            ctx.out.paint(Tint::Id, &d.meta.id.to_string()),
            d.meta.collection,
            d.error
        );
        ctx.out.line(&line)?;
    }
    for p in &findings.projection {
        let line = format!(
            "{} {} ({}): {}",
            ctx.out.paint(Tint::Remove, "projection"),
            ctx.out.paint(Tint::Id, &p.id.to_string()),
            p.collection,
            p.problem
        );
        ctx.out.line(&line)?;
    }
    for complaint in &findings.integrity {
        let line = format!("{} {complaint}", ctx.out.paint(Tint::Remove, "sqlite:"));
        ctx.out.line(&line)?;
    }
    let sqlite = if findings.integrity.is_empty() {
        "sound"
    } else {
        "NOT sound"
    };
    let projection = match findings.projection.len() {
        0 => "projection matches".to_owned(),
        n => format!(
            "{} wrong (run `accord reindex`)",
            count(n as u64, "projection row")
        ),
    };
    let summary = format!(
        "checked {}: {} damaged; {projection}; database file {sqlite}",
        count(findings.total as u64, "record"),
        findings.damaged.len()
    );
    ctx.out.line(&summary)?;
    Ok(())
}

/// `accord backup`: a consistent copy of the database in a new file.
pub fn backup(ctx: &mut Ctx, dest: &std::path::Path, force: bool) -> Result<()> {
    super::transfer::refuse_overwrite(dest, force)?;
    let replica = ctx.replica()?;
    if replica.path().is_some_and(|own| same_file(own, dest)) {
        anyhow::bail!(
            "{} is the database itself; give another file name",
            dest.display()
        );
    }
    if dest.exists() {
        // The old file's journal must go too, or SQLite would replay it
        // into the copy.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", dest.display()));
            if file.exists() {
                std::fs::remove_file(&file)
                    .with_context(|| format!("cannot replace {}", file.display()))?;
            }
        }
    }
    replica
        .backup_to(dest)
        .with_context(|| format!("cannot back up to {}", dest.display()))?;
    if ctx.out.json {
        ctx.out
            .json_value(&serde_json::json!({"backup": dest.display().to_string()}))?;
    } else {
        ctx.out.line(&format!("backed up to {}", dest.display()))?;
    }
    Ok(())
}

/// Whether two paths name the same existing file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
