//! Moving records in and out: `export` and `import` of Automerge binaries,
//! and `import --jsonl`, many records from JSON Lines.

use std::io::Read;
use std::path::Path;

use accord_engine::{DocId, Error};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::output::progress_bar;

/// Rows to import before a progress bar is worth showing.
const PROGRESS_THRESHOLD: usize = 1000;

/// `accord export`: the whole document in Automerge's binary format, to a
/// file or to stdout (but not to a terminal).
pub fn export(ctx: &mut Ctx, id: &DocId, output: Option<&Path>, force: bool) -> Result<()> {
    let to_stdout = output.is_none_or(|p| p == Path::new("-"));
    if to_stdout && ctx.out.is_terminal() {
        bail!("refusing to write binary data to a terminal; give -o FILE or redirect stdout");
    }
    if let Some(path) = output.filter(|_| !to_stdout) {
        refuse_overwrite(path, force)?;
    }
    let bytes = ctx.replica()?.save(id)?;
    match output {
        Some(path) if !to_stdout => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        _ => ctx.out.bytes(&bytes)?,
    }
    Ok(())
}

/// `accord import`: a new record from an Automerge document; prints its id.
pub fn import(ctx: &mut Ctx, file: &Path, collection: &str) -> Result<()> {
    accord_engine::replica::check_collection(collection)?;
    let bytes = read_input(file)?;
    if bytes.is_empty() {
        bail!("{} is empty, not an Automerge document", file.display());
    }
    let id = ctx
        .replica()?
        .import(collection, &bytes)
        .map_err(|e| match e {
            Error::NotAutomerge(source) => {
                anyhow!("{} is not an Automerge document: {source}", file.display())
            }
            Error::Guard(accord_engine::guard::GuardError::Invalid { reason }) => {
                anyhow!("{} is not an Automerge document: {reason}", file.display())
            }
            Error::Guard(too_large) => {
                anyhow!("{} is too large to import: {too_large}", file.display())
            }
            other => other.into(),
        })?;
    super::print_new_id(ctx, &id, collection)
}

/// The bytes of a file, or of stdin for `-`.
fn read_input(file: &Path) -> Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// Refuses to replace an existing file unless `--force` was given (the
/// rule `export -o` and `backup` share).
pub fn refuse_overwrite(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; give another file name, or --force to overwrite it",
            path.display()
        );
    }
    Ok(())
}

/// `accord import --jsonl`: one new record per non-blank line. Every line
/// is checked before anything is written, so a bad line (its number
/// named) writes nothing; then the records are written `batch` to a
/// transaction. Prints how many were imported, or with `--json` their ids.
pub fn import_jsonl(ctx: &mut Ctx, file: &Path, collection: &str, batch: u64) -> Result<()> {
    accord_engine::replica::check_collection(collection)?;
    let name = shown_name(file);
    let bytes = read_input(file)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        anyhow!("{name} line {line}: not UTF-8 text")
    })?;
    let rows: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, line))
        .collect();
    for (number, line) in &rows {
        parse_row(&name, *number, line)?;
    }
    let ids = write_rows(ctx, collection, &name, &rows, batch)?;
    if ctx.out.json {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let shown = json!({"collection": collection, "imported": ids.len(), "ids": ids});
        ctx.out.json_value(&shown)?;
    } else {
        let plural = if ids.len() == 1 { "" } else { "s" };
        let line = format!("imported {} record{plural} into {collection}", ids.len());
        ctx.out.line(&line)?;
    }
    Ok(())
}

/// Writes the (checked) rows, `batch` per transaction, with a progress bar
/// on a terminal; returns the new ids in line order.
fn write_rows(
    ctx: &mut Ctx,
    collection: &str,
    name: &str,
    rows: &[(usize, &str)],
    batch: u64,
) -> Result<Vec<DocId>> {
    let replica = ctx.replica()?;
    let bar = progress_bar("{spinner} importing {pos}/{len} records {wide_bar} {elapsed}");
    if let Some(bar) = bar.as_ref().filter(|_| rows.len() >= PROGRESS_THRESHOLD) {
        bar.set_length(rows.len() as u64);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let size = usize::try_from(batch).unwrap_or(usize::MAX);
    for chunk in rows.chunks(size) {
        let values = chunk
            .iter()
            .map(|(number, line)| parse_row(name, *number, line))
            .collect::<Result<Vec<Value>>>()?;
        let first = chunk.first().map_or(0, |(n, _)| *n);
        let created = replica.create_many(collection, &values).with_context(|| {
            format!(
                "cannot import {name} from line {first} on ({} records committed before, \
                 the lines before it; the rest were not written)",
                ids.len()
            )
        })?;
        ids.extend(created);
        if let Some(bar) = &bar {
            bar.set_position(ids.len() as u64);
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok(ids)
}

/// One line as a record's content: a JSON object, or an error naming the
/// line.
fn parse_row(name: &str, number: usize, line: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| anyhow!("{name} line {number}: not valid JSON: {e}"))?;
    let kind = match &value {
        Value::Object(_) => return Ok(value),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    bail!("{name} line {number}: a record must be a JSON object, found {kind}")
}

/// How errors name the input.
fn shown_name(file: &Path) -> String {
    if file == Path::new("-") {
        "stdin".to_owned()
    } else {
        file.display().to_string()
    }
}
