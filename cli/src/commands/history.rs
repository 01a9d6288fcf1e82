//! A record's history: `log` (optionally as a graph) and `diff`.

use std::collections::HashMap;

use accord_engine::automerge::ChangeHash;
use accord_engine::Conflict;
use accord_engine::{describe_patch, ChangeInfo, DocId};
use anyhow::Result;
use serde_json::{json, Value};

use super::{resolve_heads, Ctx};
use crate::graph::{newest_first, Graph, Node};
use crate::output::{align_right, json_time_secs, short, Output, Tint};
use accord_engine::patch_json;

/// `accord log`: the history, newest first.
pub fn log(ctx: &mut Ctx, id: &DocId, graph: bool, max: Option<usize>) -> Result<()> {
    let replica = ctx.replica()?;
    let history = replica.history(id)?;
    let here = replica.device();
    let nodes: Vec<Node> = history
        .iter()
        .map(|c| Node {
            hash: c.hash,
            deps: c.deps.clone(),
            time: c.time,
        })
        .collect();
    let mut order = newest_first(&nodes);
    order.truncate(max.unwrap_or(usize::MAX));
    if ctx.out.json {
        let rows: Vec<Value> = order
            .iter()
            .map(|&i| change_json(&history[i], &here))
            .collect();
        ctx.out.json_value(&rows)?;
    } else if graph {
        log_graph(&mut ctx.out, &history, &order, &here)?;
    } else {
        log_table(&mut ctx.out, &history, &order, &here)?;
    }
    Ok(())
}

/// One change as the JSON of `log`.
fn change_json(change: &ChangeInfo, here: &str) -> Value {
    json!({
        "hash": change.hash.to_string(),
        "actor": change.actor,
        "device": change.device,
        "this_device": change.device == here,
        "seq": change.seq,
        "time": json_time_secs(change.time),
        "message": change.message,
        "deps": change.deps.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ops": change.ops,
    })
}

/// The first line of a change's message (empty if it has none).
fn summary(change: &ChangeInfo) -> &str {
    change
        .message
        .as_deref()
        .and_then(|m| m.lines().next())
        .unwrap_or("")
}

/// The device column of `log`: the device's first 8 hex digits, and `*`
/// for changes made on this database.
fn device_cell(change: &ChangeInfo, here: &str) -> String {
    let mark = if change.device == here { "*" } else { " " };
    format!("{}{mark}", short(&change.device, 8))
}

fn log_table(out: &mut Output, history: &[ChangeInfo], order: &[usize], here: &str) -> Result<()> {
    let mut table = out.new_table(&["HASH", "DEVICE", "SEQ", "TIME", "OPS", "MESSAGE"]);
    for &i in order {
        let c = &history[i];
        table.add_row(vec![
            Tint::Hash.cell(short(&c.hash.to_string(), 8)),
            Tint::Actor.cell(device_cell(c, here)),
            comfy_table::Cell::new(c.seq),
            Tint::Dim.cell(out.time_secs(c.time)),
            comfy_table::Cell::new(c.ops),
            comfy_table::Cell::new(summary(c)),
        ]);
    }
    align_right(&mut table, &[2, 4]);
    out.table(&table)?;
    Ok(())
}

/// A line of the graph: the drawing, and the change it shows if any.
type GraphLine = (String, Option<usize>);

fn log_graph(out: &mut Output, history: &[ChangeInfo], order: &[usize], here: &str) -> Result<()> {
    let lines = graph_lines(history, order);
    let width = lines
        .iter()
        .map(|(g, _)| g.chars().count())
        .max()
        .unwrap_or(0);
    let seq_width = digits(order.iter().map(|&i| history[i].seq));
    let ops_width = digits(order.iter().map(|&i| history[i].ops));
    for (drawing, change) in lines {
        let Some(i) = change else {
            out.line(&drawing)?;
            continue;
        };
        let c = &history[i];
        let text = format!(
            "{drawing:<width$}  {}  {}  {:>seq_width$}  {}  {:>ops_width$} {:<3}  {}",
            out.paint(Tint::Hash, short(&c.hash.to_string(), 8)),
            out.paint(Tint::Actor, &device_cell(c, here)),
            c.seq,
            out.paint(Tint::Dim, &out.time_secs(c.time)),
            c.ops,
            if c.ops == 1 { "op" } else { "ops" },
            summary(c),
        );
        out.line(text.trim_end())?;
    }
    Ok(())
}

/// Lays out the changes in `order`; connectors after the last shown
/// change are left out.
fn graph_lines(history: &[ChangeInfo], order: &[usize]) -> Vec<GraphLine> {
    let rank: HashMap<ChangeHash, usize> = order
        .iter()
        .enumerate()
        .map(|(r, &i)| (history[i].hash, r))
        .collect();
    let mut graph = Graph::new();
    let mut lines = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        let mut deps = history[i].deps.clone();
        deps.sort_by_key(|d| rank.get(d).copied().unwrap_or(usize::MAX));
        let rows = graph.place(history[i].hash, &deps);
        lines.push((rows.node, Some(i)));
        if n + 1 < order.len() {
            lines.extend(rows.connectors.into_iter().map(|r| (r, None)));
        }
    }
    lines
}

fn digits(values: impl Iterator<Item = u64>) -> usize {
    values.map(|v| v.to_string().len()).max().unwrap_or(1)
}

/// `accord diff`: the patches from `from` to `to` (default: now).
pub fn diff(ctx: &mut Ctx, id: &DocId, from: &str, to: Option<&str>) -> Result<()> {
    let replica = ctx.replica()?;
    let before = resolve_heads(&replica, id, from)?;
    let after = match to {
        Some(text) => resolve_heads(&replica, id, text)?,
        None => replica.heads(id)?,
    };
    let patches = replica.diff(id, &before, &after)?;
    // The values behind a conflict, as of the later heads.
    let conflicts = replica.conflicts_at(id, &after)?;
    let mut rows: Vec<Value> = patches.iter().map(patch_json).collect();
    for row in &mut rows {
        if let Some(conflict) = conflict_of(row, &conflicts) {
            row["values"] = serde_json::to_value(&conflict.values)?;
        }
    }
    if ctx.out.json {
        ctx.out.json_value(&rows)?;
        return Ok(());
    }
    for (patch, row) in patches.iter().zip(&rows) {
        let text = describe_patch(patch);
        let tint = if text.starts_with("delete") {
            Tint::Remove
        } else if text.starts_with("conflict") {
            Tint::Hash
        } else {
            Tint::Add
        };
        let painted = ctx.out.paint(tint, &text);
        ctx.out.line(&painted)?;
        for v in conflict_of(row, &conflicts).map_or(&[][..], |c| &c.values) {
            let change = v.change.map(|h| h.to_string()).unwrap_or_default();
            let shown = if v.shown { ", shown" } else { "" };
            let change = short(&change, 8);
            ctx.out
                .line(&format!("    {} (change {change}{shown})", v.value))?;
        }
    }
    Ok(())
}

/// The conflict a patch row (as [`patch_json`] gives it) reports, if any.
fn conflict_of<'c>(row: &Value, conflicts: &'c [Conflict]) -> Option<&'c Conflict> {
    let conflicted = row["conflict"] == json!(true) || row["action"] == json!("conflict");
    if !conflicted {
        return None;
    }
    let path: Vec<String> = row["path"]
        .as_array()?
        .iter()
        .map(|p| match p {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let path = path.join(".");
    conflicts.iter().find(|c| c.path == path)
}
