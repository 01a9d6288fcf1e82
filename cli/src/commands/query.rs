//! SQL over the records: `query`, `reindex` and `index`.
//!
//! `query` prints what `Replica::query` returns: an aligned table with the
//! result's own column names, or with `--json` an array of objects keyed by
//! column (in column order). The engine refuses SQL that would write; this
//! module only turns arguments into parameters and rows into text.

use std::io::Write;
use std::process::ExitCode;

use accord_engine::{QueryRows, SqlValue};
use anyhow::Result;
use comfy_table::Cell;
use serde_json::{json, Value};

use super::Ctx;
use crate::args::IndexAction;
use crate::output::{align_right, Tint};

/// A `--param` as an SQL value: a JSON scalar keeps its type (`42`,
/// `2.5`, `true` as 1, `null`, `"quoted text"`); anything else is text.
pub fn parse_param(text: &str) -> SqlValue {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
            SqlValue::from(&value)
        }
        _ => SqlValue::Text(text.to_owned()),
    }
}

/// `accord query`: runs one read-only statement and prints its rows.
pub fn query(ctx: &mut Ctx, sql: &str, params: &[String]) -> Result<()> {
    let params: Vec<SqlValue> = params.iter().map(|p| parse_param(p)).collect();
    let rows = ctx.replica()?.query(sql, &params)?;
    if ctx.out.json {
        ctx.out.json_value(&rows)?;
        return Ok(());
    }
    let headers: Vec<&str> = rows.columns.iter().map(String::as_str).collect();
    let mut table = ctx.out.new_table(&headers);
    for row in &rows.rows {
        table.add_row(row.iter().map(cell));
    }
    align_right(&mut table, &numeric_columns(&rows));
    ctx.out.table(&table)?;
    Ok(())
}

/// One value as a table cell: `NULL` dimmed, bytes as an SQL blob literal.
fn cell(value: &SqlValue) -> Cell {
    match value {
        SqlValue::Null => Tint::Dim.cell("NULL"),
        SqlValue::Integer(i) => Cell::new(i),
        SqlValue::Real(f) => Cell::new(f),
        SqlValue::Text(t) => Cell::new(t),
        SqlValue::Blob(b) => {
            let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
            Cell::new(format!("x'{hex}'"))
        }
    }
}

/// Columns whose values are all numbers (or NULL), to right-align.
fn numeric_columns(rows: &QueryRows) -> Vec<usize> {
    (0..rows.columns.len())
        .filter(|&i| {
            rows.rows.iter().all(|row| {
                matches!(
                    row.get(i),
                    Some(SqlValue::Integer(_) | SqlValue::Real(_) | SqlValue::Null)
                )
            })
        })
        .collect()
}

/// `accord reindex`: rebuilds every projection row from the documents.
/// Records that do not load are reported and make the status 1.
pub fn reindex(ctx: &mut Ctx) -> Result<ExitCode> {
    let report = ctx.replica()?.reindex()?;
    if ctx.out.json {
        let unreadable: Vec<Value> = report
            .unreadable
            .iter()
            .map(|(id, e)| json!({"id": id.to_string(), "error": e}))
            .collect();
        ctx.out.json_value(
            &json!({"records": report.records, "repaired": report.repaired,
            "removed": report.removed, "unreadable": unreadable}),
        )?;
    } else {
        let text = format!(
            "reindexed {} records: {} rows repaired, {} removed",
            report.records, report.repaired, report.removed
        );
        ctx.out.line(&text)?;
    }
    let mut stderr = std::io::stderr().lock();
    for (id, e) in &report.unreadable {
        let _ = writeln!(stderr, "error: cannot read {id}; its row holds NULL: {e}");
    }
    Ok(if report.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `accord index create|drop|ls`.
pub fn index(ctx: &mut Ctx, action: IndexAction) -> Result<()> {
    let replica = ctx.replica()?;
    match action {
        IndexAction::Create { collection, path } => {
            let index = replica.create_index(&collection, &path)?;
            if ctx.out.json {
                // Through `Value`, so the keys come out sorted like every
                // other command's.
                ctx.out.json_value(&serde_json::to_value(&index)?)?;
            } else {
                ctx.out.line(&index.name)?;
            }
        }
        IndexAction::Drop { collection, path } => {
            if !replica.drop_index(&collection, &path)? {
                anyhow::bail!("no index on {path} in {collection}");
            }
        }
        IndexAction::Ls => {
            let indexes = replica.indexes()?;
            if ctx.out.json {
                ctx.out.json_value(&serde_json::to_value(&indexes)?)?;
                return Ok(());
            }
            let mut table = ctx.out.new_table(&["COLLECTION", "PATH", "NAME"]);
            for i in &indexes {
                table.add_row(vec![
                    Cell::new(&i.collection),
                    Cell::new(&i.path),
                    Tint::Dim.cell(&i.name),
                ]);
            }
            ctx.out.table(&table)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_keep_json_scalar_types_and_default_to_text() {
        assert_eq!(parse_param("42"), SqlValue::Integer(42));
        assert_eq!(parse_param("2.5"), SqlValue::Real(2.5));
        assert_eq!(parse_param("true"), SqlValue::Integer(1));
        assert_eq!(parse_param("null"), SqlValue::Null);
        assert_eq!(parse_param("\"42\""), SqlValue::Text("42".into()));
        assert_eq!(parse_param("Ada"), SqlValue::Text("Ada".into()));
        assert_eq!(parse_param("[1, 2]"), SqlValue::Text("[1, 2]".into()));
        assert_eq!(parse_param(""), SqlValue::Text(String::new()));
    }
}
