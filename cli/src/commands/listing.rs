//! What the database holds, from metadata alone: `ls`, `collections`,
//! `info`, `heads`.

use std::collections::BTreeMap;

use accord_engine::{DocId, ListOptions, RecordMeta};
use anyhow::Result;
use serde_json::{json, Value};

use super::{heads_text, Ctx};
use crate::output::{align_right, human_size, json_time_ms, Tint};

/// `accord ls`: the records, one row each.
pub fn ls(ctx: &mut Ctx, collection: Option<String>, deleted: bool) -> Result<()> {
    if let Some(name) = &collection {
        accord_engine::replica::check_collection(name)?;
    }
    let metas = ctx.replica()?.list_with(&ListOptions {
        collection,
        include_deleted: deleted,
    })?;
    if ctx.out.json {
        let rows: Vec<Value> = metas.iter().map(meta_json).collect();
        ctx.out.json_value(&rows)?;
        return Ok(());
    }
    let mut headers = vec!["ID", "COLLECTION", "CHANGES", "UPDATED", "SIZE"];
    if deleted {
        headers.push("DELETED");
    }
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
        table.add_row(row);
    }
    align_right(&mut table, &[2, 4]);
    ctx.out.table(&table)?;
    Ok(())
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
                "{} in {} chunks",
                human_size(meta.size_bytes),
                meta.chunk_count
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
