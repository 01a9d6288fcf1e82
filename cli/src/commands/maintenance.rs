//! Looking after the file: `compact` and `check`.

use std::io::Write;
use std::process::ExitCode;

use accord_engine::store::Store;
use accord_engine::{DocId, ListOptions, RecordMeta, Replica};
use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::output::{human_size, Tint};

/// Every record, deleted ones included.
fn all_records(replica: &Replica) -> Result<Vec<RecordMeta>> {
    Ok(replica.list_with(&ListOptions {
        collection: None,
        include_deleted: true,
    })?)
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
            "compacted {compacted} of {} records: {} -> {}",
            metas.len(),
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

/// `accord check`: loads every record (deleted ones too) and runs SQLite's
/// integrity check. Exits non-zero if anything is wrong.
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
    let integrity = Store::open_reader(&ctx.db)
        .and_then(|store| store.integrity_check())
        .context("cannot run SQLite's integrity check")?;
    if ctx.out.json {
        check_json(ctx, total, &damaged, &integrity)?;
    } else {
        check_text(ctx, total, &damaged, &integrity)?;
    }
    let problems = damaged.len() + integrity.len();
    let plural = if problems == 1 { "" } else { "s" };
    let summary = format!("check found {problems} problem{plural}");
    complain((problems > 0).then_some(summary).into_iter())
}

fn check_json(ctx: &mut Ctx, total: usize, damaged: &[Damage], integrity: &[String]) -> Result<()> {
    let damaged: Vec<Value> = damaged
        .iter()
        .map(|d| json!({"id": d.meta.id.to_string(), "collection": d.meta.collection, "error": d.error}))
        .collect();
    let ok = damaged.is_empty() && integrity.is_empty();
    let report = json!({"ok": ok, "records": total, "damaged": damaged, "integrity": integrity});
    ctx.out.json_value(&report)?;
    Ok(())
}

fn check_text(ctx: &mut Ctx, total: usize, damaged: &[Damage], integrity: &[String]) -> Result<()> {
    for d in damaged {
        let line = format!(
            "{} {} ({}): {}",
            ctx.out.paint(Tint::Remove, "damaged"),
            ctx.out.paint(Tint::Id, &d.meta.id.to_string()),
            d.meta.collection,
            d.error
        );
        ctx.out.line(&line)?;
    }
    for complaint in integrity {
        let line = format!("{} {complaint}", ctx.out.paint(Tint::Remove, "sqlite:"));
        ctx.out.line(&line)?;
    }
    let sqlite = if integrity.is_empty() {
        "sound"
    } else {
        "NOT sound"
    };
    let summary = format!(
        "checked {total} records: {} damaged; database file {sqlite}",
        damaged.len()
    );
    ctx.out.line(&summary)?;
    Ok(())
}
