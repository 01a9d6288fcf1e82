//! Looking after the file: `compact` and `check`.

use std::io::Write;
use std::path::Path;
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
    /// The record.
    id: DocId,
    /// Its collection.
    collection: String,
    /// What failed.
    error: String,
}

/// What `check` found.
#[derive(Debug, Default)]
struct Findings {
    /// How many records were checked.
    total: usize,
    /// Records that do not load.
    damaged: Vec<Damage>,
    /// Projection rows that disagree with their record.
    projection: Vec<ProjectionIssue>,
    /// SQLite's complaints (`PRAGMA integrity_check`).
    integrity: Vec<String>,
    /// Steps that failed as a whole: the database does not open, the
    /// records cannot be listed, the projection cannot be compared.
    errors: Vec<String>,
}

impl Findings {
    fn problems(&self) -> usize {
        self.damaged.len() + self.projection.len() + self.integrity.len() + self.errors.len()
    }
}

/// `accord check`: runs SQLite's integrity check, loads every record
/// (deleted ones too), and compares the query projection with the records.
/// Each step reports what it can and the next one still runs, so a damaged
/// file is described as fully as it can be. Exits non-zero if anything is
/// wrong.
pub fn check(ctx: &mut Ctx) -> Result<ExitCode> {
    if !ctx.db.exists() {
        ctx.replica()?; // the usual "does not exist" error
    }
    let mut findings = Findings {
        integrity: integrity(&ctx.db),
        ..Findings::default()
    };
    match ctx.replica() {
        Ok(replica) => check_records(&ctx.db, &replica, &mut findings),
        Err(e) => findings.errors.push(crate::message(&e)),
    }
    if ctx.out.json {
        check_json(ctx, &findings)?;
    } else {
        check_text(ctx, &findings)?;
    }
    let problems = findings.problems();
    let plural = if problems == 1 { "" } else { "s" };
    let summary = format!(
        "check of {} found {problems} problem{plural}{}",
        ctx.db.display(),
        repair_hint(&findings)
    );
    complain((problems > 0).then_some(summary).into_iter())
}

/// Where to read on, for damage `reindex` does not repair.
fn repair_hint(findings: &Findings) -> &'static str {
    if findings.damaged.is_empty() && findings.integrity.is_empty() && findings.errors.is_empty() {
        ""
    } else {
        " (to repair: sync damaged records from the relay, or re-sync into a fresh file; \
         see \"Repairing a damaged database\" in docs/operations.md)"
    }
}

/// SQLite's `PRAGMA integrity_check` on its own read-only connection, so
/// it runs even when the database does not open as a replica; a failure
/// to run it is reported as its one line.
fn integrity(db: &Path) -> Vec<String> {
    Store::open_reader(db)
        .and_then(|store| store.integrity_check())
        .unwrap_or_else(|e| vec![format!("cannot run PRAGMA integrity_check: {e}")])
}

/// Loads every record and compares the projection, noting what fails.
fn check_records(db: &Path, replica: &Replica, findings: &mut Findings) {
    let records: Vec<(DocId, String)> = match all_records(replica) {
        Ok(metas) => metas
            .into_iter()
            .map(|m| (m.id, m.collection.to_string()))
            .collect(),
        Err(e) => {
            findings
                .errors
                .push(format!("cannot list the records: {}", crate::message(&e)));
            // The (collection, id) index may still name them.
            match Store::open_reader(db).and_then(|s| s.ids_from_index()) {
                Ok(ids) => ids,
                Err(e) => {
                    let text = format!("cannot name the records from the index either: {e}");
                    findings.errors.push(text);
                    Vec::new()
                }
            }
        }
    };
    findings.total = records.len();
    findings.damaged = records
        .into_iter()
        .filter_map(|(id, collection)| {
            let error = replica.verify(&id).err()?.to_string();
            Some(Damage {
                id,
                collection,
                error,
            })
        })
        .collect();
    match replica.check_projection() {
        Ok(issues) => findings.projection = issues,
        Err(e) => findings.errors.push(format!(
            "cannot compare the query projection with the records: {e}"
        )),
    }
}

fn check_json(ctx: &mut Ctx, findings: &Findings) -> Result<()> {
    let damaged: Vec<Value> = findings
        .damaged
        .iter()
        .map(|d| json!({"id": d.id.to_string(), "collection": d.collection, "error": d.error}))
        .collect();
    let projection: Vec<Value> = findings
        .projection
        .iter()
        .map(|p| json!({"id": p.id.to_string(), "collection": p.collection, "problem": p.problem.to_string()}))
        .collect();
    let report = json!({"ok": findings.problems() == 0, "file": ctx.db.display().to_string(),
        "records": findings.total, "damaged": damaged, "projection": projection,
        "integrity": findings.integrity, "errors": findings.errors});
    ctx.out.json_value(&report)?;
    Ok(())
}

fn check_text(ctx: &mut Ctx, findings: &Findings) -> Result<()> {
    for error in &findings.errors {
        let line = format!("{} {error}", ctx.out.paint(Tint::Remove, "failed:"));
        ctx.out.line(&line)?;
    }
    for d in &findings.damaged {
        let line = format!(
            "{} {} ({}): {}",
            ctx.out.paint(Tint::Remove, "damaged"),
            ctx.out.paint(Tint::Id, &d.id.to_string()),
            d.collection,
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
        0 if findings.errors.is_empty() => "projection matches".to_owned(),
        0 => "projection not fully checked".to_owned(),
        n => format!(
            "{} wrong (run `accord reindex`)",
            count(n as u64, "projection row")
        ),
    };
    let summary = format!(
        "checked {} in {}: {} damaged; {projection}; database file {sqlite}",
        count(findings.total as u64, "record"),
        ctx.db.display(),
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
