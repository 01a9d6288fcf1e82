//! Reading and writing one record: `new`, `put`, `unset`, `get`, `rm`.

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{ObjId, ObjType, Prop, ReadDoc, Value, ROOT};
use accord_engine::json::Path as JsonPath;
use accord_engine::{DocId, PathError};
use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{resolve_heads, Ctx};
use crate::output::{short, Tint};

/// `accord new`: creates a record and prints its id alone.
pub fn new(
    ctx: &mut Ctx,
    collection: &str,
    data: Option<serde_json::Value>,
    message: Option<&str>,
) -> Result<()> {
    let content = data.unwrap_or_else(|| json!({}));
    if !content.is_object() {
        bail!("--data must be a JSON object, such as '{{\"name\": \"Ada\"}}'");
    }
    accord_engine::replica::check_collection(collection)?;
    let id = ctx
        .replica()?
        .create_with(collection, message, |tx| JsonPath::root().set(tx, &content))
        .context("cannot create the record")?;
    super::print_new_id(ctx, &id, collection)
}

/// `accord put`: sets the value at a path, in one change.
pub fn put(
    ctx: &mut Ctx,
    id: &DocId,
    path: &JsonPath,
    value: &serde_json::Value,
    message: Option<&str>,
) -> Result<()> {
    ctx.replica()?
        .change(id, message, |tx| path.set(tx, value))
        .map_err(unwrap_aborted)
        .with_context(|| format!("cannot set '{path}' of {id}"))
}

/// `accord unset`: removes the key or list element at a path, in one change.
pub fn unset(ctx: &mut Ctx, id: &DocId, path: &JsonPath, message: Option<&str>) -> Result<()> {
    if path.parts().is_empty() {
        bail!("give a path: `unset` removes a part of a record (`accord rm` deletes a record)");
    }
    ctx.replica()?
        .change(id, message, |tx| {
            let (obj, prop) = locate(tx, path)?;
            tx.delete(&obj, prop)
                .map_err(|e| PathError::Automerge(e.to_string()))
        })
        .map_err(unwrap_aborted)
        .with_context(|| format!("cannot unset '{path}' of {id}"))
}

/// The object holding the last segment of a non-empty path, and that
/// segment as a key or index; fails unless something is there.
fn locate(tx: &impl ReadDoc, path: &JsonPath) -> Result<(ObjId, Prop), PathError> {
    let mut obj = ROOT;
    let parts = path.parts();
    for (depth, part) in parts.iter().enumerate() {
        let prefix = || parts[..=depth].join(".");
        let prop = match tx.object_type(&obj) {
            Ok(ObjType::List | ObjType::Text) => match part.parse::<usize>() {
                Ok(i) => Prop::Seq(i),
                Err(_) => {
                    let (path, at) = (path.to_string(), prefix());
                    return Err(PathError::NotAnIndex { path, at });
                }
            },
            _ => Prop::Map(part.clone()),
        };
        let value = tx.get(&obj, prop.clone()).ok().flatten();
        let Some((value, id)) = value else {
            let (path, at) = (path.to_string(), prefix());
            return Err(PathError::NotFound { path, at });
        };
        if depth + 1 == parts.len() {
            return Ok((obj, prop));
        }
        if !matches!(
            value,
            Value::Object(ObjType::Map | ObjType::Table | ObjType::List)
        ) {
            let (path, at) = (path.to_string(), prefix());
            return Err(PathError::NotAContainer { path, at });
        }
        obj = id;
    }
    Err(PathError::Syntax {
        path: path.to_string(),
    })
}

/// `accord get`: prints the record, or the value at a path, as JSON, now
/// or as of the given heads.
pub fn get(ctx: &mut Ctx, id: &DocId, path: Option<&JsonPath>, at: Option<&str>) -> Result<()> {
    let replica = ctx.replica()?;
    let record = match at {
        None => replica.get(id)?,
        Some(text) => {
            let heads = resolve_heads(&replica, id, text)?;
            replica.get_at(id, &heads)?
        }
    };
    let value = match path {
        Some(path) => path.lookup(&record.value)?,
        None => &record.value,
    };
    ctx.out.json_value(value)?;
    Ok(())
}

/// `accord get --conflicts`: the fields holding concurrent values, each
/// value with the change that wrote it (with `--json`:
/// `[{"path", "values": [{"value", "change", "actor", "shown"}]}]`).
pub fn conflicts(ctx: &mut Ctx, id: &DocId, at: Option<&str>) -> Result<()> {
    let replica = ctx.replica()?;
    let conflicts = match at {
        None => replica.conflicts(id)?,
        Some(text) => {
            let heads = resolve_heads(&replica, id, text)?;
            replica.conflicts_at(id, &heads)?
        }
    };
    if ctx.out.json {
        return Ok(ctx.out.json_value(&conflicts)?);
    }
    if conflicts.is_empty() {
        return Ok(ctx.out.line("no conflicts")?);
    }
    for conflict in &conflicts {
        ctx.out.line(&conflict.path)?;
        for v in &conflict.values {
            let change = v.change.map(|h| h.to_string()).unwrap_or_default();
            let shown = if v.shown { "  (shown)" } else { "" };
            let change = ctx.out.paint(Tint::Hash, short(&change, 8));
            ctx.out.line(&format!("  {change}  {}{shown}", v.value))?;
        }
    }
    Ok(())
}

/// `accord rm`: sets the record's tombstone.
pub fn rm(ctx: &mut Ctx, id: &DocId) -> Result<()> {
    ctx.replica()?.delete(id)?;
    Ok(())
}

/// A path error inside `change` arrives wrapped as "change aborted"; the
/// path error alone says it better.
fn unwrap_aborted(e: accord_engine::Error) -> anyhow::Error {
    match e {
        accord_engine::Error::Aborted { source, .. } => anyhow::anyhow!(source),
        other => other.into(),
    }
}
