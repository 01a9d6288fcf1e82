//! SQL over the records: `query`, `reindex` and `index`.
//!
//! `query` prints rows as `Replica::query_each` hands them over, so no
//! result, however large, is held in memory: a JSON array or JSON Lines
//! row by row, a table a page at a time (each page aligned on its own, at
//! most [`PAGE_ROWS`] rows or [`PAGE_BYTES`] of values). After `--limit`
//! rows (default [`DEFAULT_LIMIT`]) it stops reading, closes the output,
//! and says so on stderr. The engine refuses SQL that would write; this
//! module only turns arguments into parameters and rows into text.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

use accord_engine::{Error, QueryError, SqlValue};
use anyhow::{anyhow, Result};
use comfy_table::Cell;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};

use super::Ctx;
use crate::args::{IndexAction, QueryArgs};
use crate::output::{align_right, count, Output, Tint};

/// Rows printed when `--limit` is not given.
pub const DEFAULT_LIMIT: usize = 10_000;

/// The status when the default cap cut the output short: the data is not
/// all there, and a script that did not ask for a cap must not take it
/// for complete.
const CAPPED: u8 = 3;

/// Most rows in one table page.
const PAGE_ROWS: usize = DEFAULT_LIMIT;

/// Most bytes of values in one table page (a page of large JSON cells
/// ends early).
const PAGE_BYTES: usize = 8 << 20;

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

/// How many rows `query` prints before it stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    /// `--limit` not given: [`DEFAULT_LIMIT`]; reaching it exits [`CAPPED`].
    Default,
    /// `--limit N`, N > 0: asked for, so reaching it is success.
    Given(usize),
    /// `--limit 0`: every row.
    Unlimited,
}

impl Cap {
    fn new(limit: Option<usize>) -> Self {
        match limit {
            None => Cap::Default,
            Some(0) => Cap::Unlimited,
            Some(n) => Cap::Given(n),
        }
    }

    fn rows(self) -> Option<usize> {
        match self {
            Cap::Default => Some(DEFAULT_LIMIT),
            Cap::Given(n) => Some(n),
            Cap::Unlimited => None,
        }
    }

    /// What stderr says when the cap cut the output short.
    fn note(self) -> String {
        let (n, which) = match self {
            Cap::Default => (DEFAULT_LIMIT, "the default cap".to_owned()),
            Cap::Given(n) => (n, format!("--limit {n}")),
            Cap::Unlimited => return String::new(),
        };
        format!(
            "note: stopped after {n} rows ({which}); the query has more: \
             give --limit N to print up to N rows, or --limit 0 for every row"
        )
    }
}

/// `accord query`: runs one read-only statement and prints its rows as
/// they come. Status 0, or [`CAPPED`] when the default cap cut it short.
pub fn query(ctx: &mut Ctx, args: &QueryArgs) -> Result<ExitCode> {
    let params: Vec<SqlValue> = args.params.iter().map(|p| parse_param(p)).collect();
    let cap = Cap::new(args.limit);
    let replica = ctx.replica()?;
    let out = &mut ctx.out;
    let mut printer = Printer::new(out.json, args.json_lines);
    let mut printed = 0;
    let mut capped = false;
    let mut write_error = None;
    let on_row = |columns: &[String], row: Vec<SqlValue>| {
        if cap.rows().is_some_and(|max| printed == max) {
            capped = true;
            return ControlFlow::Break(());
        }
        if let Err(e) = printer.row(out, columns, row) {
            write_error = Some(e);
            return ControlFlow::Break(());
        }
        printed += 1;
        ControlFlow::Continue(())
    };
    let result = match args.timeout {
        0 => replica.query_each(&args.sql, &params, on_row),
        secs => replica.query_each_within(Duration::from_secs(secs), &args.sql, &params, on_row),
    };
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if let Err(e) = result {
        // The rows printed so far stay printed. The query's error is the
        // one to report; a failure to print the rest of the page would
        // only hide it.
        let _ = printer.finish(out, false);
        return Err(explain(e));
    }
    printer.finish(out, true)?;
    if !capped {
        return Ok(ExitCode::SUCCESS);
    }
    out.flush()?;
    writeln!(io::stderr().lock(), "{}", cap.note())?;
    Ok(match cap {
        Cap::Default => ExitCode::from(CAPPED),
        Cap::Given(_) | Cap::Unlimited => ExitCode::SUCCESS,
    })
}

/// A query error, with the way out of a time limit.
fn explain(e: Error) -> anyhow::Error {
    match e {
        Error::Query(QueryError::TimedOut { .. }) => {
            anyhow!("{e} (give --timeout SECONDS for a longer limit, or --timeout 0 for none)")
        }
        other => other.into(),
    }
}

/// How rows reach stdout.
#[derive(Debug)]
enum Printer {
    /// `--json`: one pretty array, its elements printed as rows come.
    JsonArray {
        /// Elements printed so far.
        rows: usize,
    },
    /// `--json-lines`: one compact object per row and line.
    JsonLines,
    /// A table, laid out a page at a time.
    Table(Page),
}

impl Printer {
    fn new(json: bool, json_lines: bool) -> Self {
        match (json_lines, json) {
            (true, _) => Printer::JsonLines,
            (false, true) => Printer::JsonArray { rows: 0 },
            (false, false) => Printer::Table(Page::default()),
        }
    }

    fn row(&mut self, out: &mut Output, columns: &[String], row: Vec<SqlValue>) -> io::Result<()> {
        let object = RowObject { columns, row: &row };
        match self {
            Printer::JsonLines => out.line(&serde_json::to_string(&object)?),
            Printer::JsonArray { rows } => {
                // `serde_json`'s pretty array, one element at a time.
                let text = serde_json::to_string_pretty(&object)?;
                out.bytes(if *rows == 0 { b"[\n" } else { b",\n" })?;
                *rows += 1;
                let mut lines = text.lines();
                if let Some(first) = lines.next() {
                    out.bytes(format!("  {first}").as_bytes())?;
                }
                for line in lines {
                    out.bytes(format!("\n  {line}").as_bytes())?;
                }
                Ok(())
            }
            Printer::Table(page) => {
                page.push(columns, row);
                if page.is_full() {
                    page.print(out)?;
                }
                Ok(())
            }
        }
    }

    /// Ends the output: closes the JSON array if `complete` (an array cut
    /// short by an error stays open, so nobody takes it for the result),
    /// prints the last table page.
    fn finish(&mut self, out: &mut Output, complete: bool) -> io::Result<()> {
        match self {
            Printer::JsonLines => Ok(()),
            Printer::JsonArray { rows: 0 } if complete => out.line("[]"),
            Printer::JsonArray { rows: 0 } => Ok(()),
            Printer::JsonArray { .. } if complete => out.bytes(b"\n]\n"),
            Printer::JsonArray { .. } => out.bytes(b"\n"),
            Printer::Table(page) => page.print(out),
        }
    }
}

/// One row as a JSON object keyed by column name, in column order (the
/// shape of one element of `QueryRows`' serde form).
struct RowObject<'a> {
    columns: &'a [String],
    row: &'a [SqlValue],
}

impl Serialize for RowObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.columns.len()))?;
        for (column, value) in self.columns.iter().zip(self.row) {
            map.serialize_entry(column, value)?;
        }
        map.end()
    }
}

/// Table rows waiting to be laid out together.
#[derive(Debug, Default)]
struct Page {
    /// The result's column names (known with the first row).
    columns: Vec<String>,
    /// The rows of this page.
    rows: Vec<Vec<SqlValue>>,
    /// Bytes of values in `rows`, roughly.
    bytes: usize,
    /// Whether a page was printed already (only the first has a header).
    continued: bool,
}

impl Page {
    fn push(&mut self, columns: &[String], row: Vec<SqlValue>) {
        if self.columns.is_empty() {
            self.columns = columns.to_vec();
        }
        self.bytes += row.iter().map(size).sum::<usize>();
        self.rows.push(row);
    }

    fn is_full(&self) -> bool {
        self.rows.len() >= PAGE_ROWS || self.bytes >= PAGE_BYTES
    }

    /// Prints the page (nothing if it is empty) and starts the next.
    fn print(&mut self, out: &mut Output) -> io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let headers: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        let mut table = out.new_table(&headers);
        for row in &self.rows {
            table.add_row(row.iter().map(cell));
        }
        align_right(&mut table, &numeric_columns(self.columns.len(), &self.rows));
        // A later page is aligned on its own and printed without the
        // header line (the first line of the layout).
        let skip = usize::from(self.continued);
        for line in table.lines().skip(skip) {
            out.line(line.trim_end())?;
        }
        self.rows.clear();
        self.bytes = 0;
        self.continued = true;
        Ok(())
    }
}

/// Roughly how many bytes a value takes in a page.
fn size(value: &SqlValue) -> usize {
    match value {
        SqlValue::Text(t) => t.len(),
        SqlValue::Blob(b) => 2 * b.len(),
        SqlValue::Null | SqlValue::Integer(_) | SqlValue::Real(_) => 8,
    }
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
fn numeric_columns(columns: usize, rows: &[Vec<SqlValue>]) -> Vec<usize> {
    (0..columns)
        .filter(|&i| {
            rows.iter().all(|row| {
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
            "reindexed {}: {} repaired, {} removed",
            count(report.records as u64, "record"),
            count(report.repaired as u64, "row"),
            report.removed
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
