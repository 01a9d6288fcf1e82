//! What the database holds, from metadata (and, for `ls`, a preview from
//! the query projection): `ls`, `collections`, `info`, `heads`.

use std::collections::{BTreeMap, HashMap};

use accord_engine::json::Path as JsonPath;
use accord_engine::{DocId, ListOptions, RecordMeta, Replica, SqlValue};
use anyhow::Result;
use serde_json::{json, Value};

use super::{heads_text, Ctx};
use crate::output::{align_right, count, human_size, json_time_ms, Tint};

/// How many characters of a preview `ls` shows.
const PREVIEW_CHARS: usize = 40;

/// `accord ls`: the records, one row each, with a preview of the content:
/// the field at `show`, or else the first text field.
pub fn ls(
    ctx: &mut Ctx,
    collection: Option<String>,
    deleted: bool,
    show: Option<&JsonPath>,
) -> Result<()> {
    if let Some(name) = &collection {
        accord_engine::replica::check_collection(name)?;
    }
    let replica = ctx.replica()?;
    let metas = replica.list_with(&ListOptions {
        collection: collection.clone(),
        include_deleted: deleted,
    })?;
    let previews = previews(&replica, collection.as_deref(), show)?;
    let preview = |id: &DocId| previews.get(&id.to_string()).cloned().unwrap_or_default();
    if ctx.out.json {
        let rows: Vec<Value> = metas
            .iter()
            .map(|m| {
                let mut row = meta_json(m);
                row["preview"] = preview(&m.id).into();
                row
            })
            .collect();
        ctx.out.json_value(&rows)?;
        return Ok(());
    }
    let mut headers = vec!["ID", "COLLECTION", "CHANGES", "UPDATED", "SIZE"];
    if deleted {
        headers.push("DELETED");
    }
    headers.push("PREVIEW");
    let mut table = ctx.out.new_table(&headers);
    for meta in &metas {
        let mut row = vec![
            Tint::Id.cell(meta.id),
            comfy_table::Cell::new(&meta.collection),
            comfy_table::Cell::new(meta.change_count),
            Tint::Dim.cell(ctx.out.time_ms(meta.updated_at)),
            comfy_table::Cell::new(human_size(meta.size_bytes)),
        ];
        if deleted {
            row.push(deleted_cell(ctx, meta));
        }
        row.push(comfy_table::Cell::new(clip(&preview(&meta.id))));
        table.add_row(row);
    }
    align_right(&mut table, &[2, 4]);
    ctx.out.table(&table)?;
    Ok(())
}

/// Each record's preview text by printed id, read from the query
/// projection in one statement (a record without a row has none).
fn previews(
    replica: &Replica,
    collection: Option<&str>,
    show: Option<&JsonPath>,
) -> Result<HashMap<String, String>> {
    let rows = replica.query(
        "SELECT id, json FROM records WHERE ?1 IS NULL OR collection = ?1",
        &[collection.map_or(SqlValue::Null, |c| c.into())],
    )?;
    let mut out = HashMap::with_capacity(rows.rows.len());
    for row in &rows.rows {
        let (Some(id), Some(text)) = (row[0].as_str(), row[1].as_str()) else {
            continue;
        };
        let Ok(content) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let picked = match show {
            Some(path) => path.lookup(&content).ok(),
            None => first_text(&content),
        };
        if let Some(value) = picked {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(id.to_owned(), text);
        }
    }
    Ok(out)
}

/// The default preview: `name` or `title` if the record has one as text,
/// else its first top-level text field (keys in order).
fn first_text(content: &Value) -> Option<&Value> {
    let fields = content.as_object()?;
    ["name", "title"]
        .iter()
        .filter_map(|k| fields.get(*k))
        .chain(fields.values())
        .find(|v| v.is_string())
}

/// A preview cut to one short line.
fn clip(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= PREVIEW_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(PREVIEW_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn deleted_cell(ctx: &Ctx, meta: &RecordMeta) -> comfy_table::Cell {
    match (meta.deleted, meta.deleted_at) {
        (false, _) => comfy_table::Cell::new(""),
        (true, Some(at)) => Tint::Remove.cell(ctx.out.time_ms(at)),
        (true, None) => Tint::Remove.cell("yes"),
    }
}

/// A record's metadata as the JSON of `ls` and `info`.
fn meta_json(meta: &RecordMeta) -> Value {
    json!({
        "id": meta.id.to_string(),
        "url": meta.id.url(),
        "collection": meta.collection,
        "changes": meta.change_count,
        "heads": meta.heads.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "size": meta.size_bytes,
        "chunks": meta.chunk_count,
        "created_at": json_time_ms(meta.created_at),
        "updated_at": json_time_ms(meta.updated_at),
        "deleted": meta.deleted,
        "deleted_at": meta.deleted_at.map_or(Value::Null, json_time_ms),
    })
}

/// Per-collection totals, from a listing that includes deleted records.
#[derive(Debug, Default)]
struct Totals {
    /// Live records.
    records: u64,
    /// Records with a tombstone.
    deleted: u64,
    /// Bytes stored for all of them.
    size: u64,
}

/// `accord collections`: each collection with its number of records.
pub fn collections(ctx: &mut Ctx) -> Result<()> {
    let metas = ctx.replica()?.list_with(&ListOptions::everything())?;
    let mut totals: BTreeMap<&str, Totals> = BTreeMap::new();
    for meta in &metas {
        let t = totals.entry(&meta.collection).or_default();
        if meta.deleted {
            t.deleted += 1;
        } else {
            t.records += 1;
        }
        t.size += meta.size_bytes;
    }
    if ctx.out.json {
        let rows: Vec<Value> = totals
            .iter()
            .map(|(name, t)| json!({"collection": name, "records": t.records, "deleted": t.deleted, "size": t.size}))
            .collect();
        ctx.out.json_value(&rows)?;
        return Ok(());
    }
    let mut table = ctx
        .out
        .new_table(&["COLLECTION", "RECORDS", "DELETED", "SIZE"]);
    for (name, t) in &totals {
        table.add_row(vec![
            name.to_string(),
            t.records.to_string(),
            t.deleted.to_string(),
            human_size(t.size),
        ]);
    }
    align_right(&mut table, &[1, 2, 3]);
    ctx.out.table(&table)?;
    Ok(())
}

/// `accord info`: one record's metadata, as `key: value` lines.
pub fn info(ctx: &mut Ctx, id: &DocId) -> Result<()> {
    let meta = ctx.replica()?.meta(id)?;
    if ctx.out.json {
        ctx.out.json_value(&meta_json(&meta))?;
        return Ok(());
    }
    let out = &ctx.out;
    let deleted = match (meta.deleted, meta.deleted_at) {
        (false, _) => "no".to_owned(),
        (true, Some(at)) => out.paint(Tint::Remove, &format!("yes, {}", out.time_ms(at))),
        (true, None) => out.paint(Tint::Remove, "yes"),
    };
    let lines = [
        ("id", out.paint(Tint::Id, &meta.id.to_string())),
        ("url", meta.id.url()),
        ("collection", meta.collection.to_string()),
        ("changes", meta.change_count.to_string()),
        ("heads", heads_text(&meta.heads)),
        (
            "size",
            format!(
                "{} in {}",
                human_size(meta.size_bytes),
                count(meta.chunk_count, "chunk")
            ),
        ),
        ("created", out.time_ms(meta.created_at)),
        ("updated", out.time_ms(meta.updated_at)),
        ("deleted", deleted),
    ];
    for (key, value) in lines {
        let key = format!("{key}:");
        ctx.out.line(&format!("{key:<12}{value}"))?;
    }
    Ok(())
}

/// `accord heads`: the current heads, comma-separated on one line.
pub fn heads(ctx: &mut Ctx, id: &DocId) -> Result<()> {
    let heads = ctx.replica()?.heads(id)?;
    if ctx.out.json {
        let hex: Vec<String> = heads.iter().map(ToString::to_string).collect();
        ctx.out.json_value(&hex)?;
    } else {
        ctx.out.line(&heads_text(&heads))?;
    }
    Ok(())
}
