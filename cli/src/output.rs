//! Everything that reaches stdout: the writer, colours, times, sizes, tables
//! and JSON.
//!
//! Data goes through [`Output`], never `println!`: Rust ignores SIGPIPE, so
//! `println!` panics when the reader of a pipe goes away (`accord log X |
//! head`). A write error surfaces as an `io::Error` of kind `BrokenPipe`,
//! and `main` turns that into a quiet exit with status 0.

use std::io::{self, IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Local, Utc};
use comfy_table::{presets, Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};

use crate::args::ColorChoice;

/// The colours of the human output, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tint {
    /// Change hashes.
    Hash,
    /// Record ids.
    Id,
    /// Actors.
    Actor,
    /// Secondary information: times, counts.
    Dim,
    /// Additions.
    Add,
    /// Removals and problems.
    Remove,
    /// Table headers.
    Header,
}

impl Tint {
    fn style(self) -> Style {
        match self {
            Tint::Hash => AnsiColor::Yellow.on_default(),
            Tint::Id => AnsiColor::Cyan.on_default(),
            Tint::Actor => AnsiColor::Magenta.on_default(),
            Tint::Dim => Style::new().dimmed(),
            Tint::Add => AnsiColor::Green.on_default(),
            Tint::Remove => AnsiColor::Red.on_default(),
            Tint::Header => Style::new().bold(),
        }
    }

    /// A table cell in this colour (shown only if the table is styled).
    pub fn cell(self, text: impl ToString) -> Cell {
        let cell = Cell::new(text);
        match self {
            Tint::Hash => cell.fg(Color::Yellow),
            Tint::Id => cell.fg(Color::Cyan),
            Tint::Actor => cell.fg(Color::Magenta),
            Tint::Dim => cell.add_attribute(Attribute::Dim),
            Tint::Add => cell.fg(Color::Green),
            Tint::Remove => cell.fg(Color::Red),
            Tint::Header => cell.add_attribute(Attribute::Bold),
        }
    }
}

/// Where a command writes its data, and how it presents it.
#[derive(Debug)]
pub struct Output {
    /// Buffered stdout; flushed by [`Output::finish`].
    out: io::BufWriter<io::Stdout>,
    /// Whether to emit ANSI colours.
    color: bool,
    /// Whether to show times in UTC rather than local time.
    utc: bool,
    /// Whether the user asked for JSON.
    pub json: bool,
}

impl Output {
    /// Output on stdout with the user's choices.
    pub fn new(choice: ColorChoice, utc: bool, json: bool) -> Self {
        let stdout = io::stdout();
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                stdout.is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
            }
        };
        Output {
            out: io::BufWriter::new(stdout),
            color,
            utc,
            json,
        }
    }

    /// Whether stdout is a terminal.
    pub fn is_terminal(&self) -> bool {
        self.out.get_ref().is_terminal()
    }

    /// Writes raw bytes.
    pub fn bytes(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)
    }

    /// Writes one line.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// Writes a value as pretty JSON and a newline.
    pub fn json_value<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// Writes a table (no output at all when it has no rows).
    pub fn table(&mut self, table: &Table) -> io::Result<()> {
        if table.row_count() == 0 {
            return Ok(());
        }
        for line in table.lines() {
            self.line(line.trim_end())?;
        }
        Ok(())
    }

    /// Writes out what is buffered, before saying something on stderr.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes what is buffered.
    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// `text` in a colour, if colour is on.
    pub fn paint(&self, tint: Tint, text: &str) -> String {
        let style = tint.style();
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// A time given in seconds since the Unix epoch (0: unknown).
    pub fn time_secs(&self, secs: i64) -> String {
        self.time_ms(secs.saturating_mul(1000))
    }

    /// A time given in milliseconds since the Unix epoch (0: unknown).
    pub fn time_ms(&self, ms: i64) -> String {
        let Some(at) = (ms != 0)
            .then(|| DateTime::from_timestamp_millis(ms))
            .flatten()
        else {
            return "-".to_owned();
        };
        if self.utc {
            at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        } else {
            // The offset says which zone: the same file read on two
            // machines must not show two unexplained times.
            at.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string()
        }
    }

    /// An empty table with these headers, laid out for this output.
    pub fn new_table(&self, headers: &[&str]) -> Table {
        let mut table = Table::new();
        table
            .load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.iter().map(|h| Tint::Header.cell(h)));
        if self.color {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        if let Some(first) = table.column_mut(0) {
            first.set_padding((0, 1));
        }
        table
    }
}

/// Right-aligns the given columns of a table (numbers).
pub fn align_right(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A time in milliseconds as RFC 3339 in UTC for JSON (`null` if unknown).
pub fn json_time_ms(ms: i64) -> serde_json::Value {
    match (ms != 0).then(|| DateTime::<Utc>::from_timestamp_millis(ms)) {
        Some(Some(at)) => at.format("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
        _ => serde_json::Value::Null,
    }
}

/// A time in seconds as RFC 3339 in UTC for JSON (`null` if unknown).
pub fn json_time_secs(secs: i64) -> serde_json::Value {
    json_time_ms(secs.saturating_mul(1000))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 record`, `2 records`: a count with its noun in the right number
/// (nouns whose plural is `+s`).
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A progress bar on stderr with the given indicatif template, created
/// hidden, or `None` when stderr is not a terminal (pipes and logs get no
/// bar). Callers show it with `set_draw_target` once it is worth showing.
pub fn progress_bar(template: &str) -> Option<indicatif::ProgressBar> {
    io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::hidden();
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    })
}

/// The first `n` characters of a hex string (hashes, actors).
pub fn short(hex: &str, n: usize) -> &str {
    hex.get(..n).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn json_times_are_rfc3339_utc() {
        assert_eq!(json_time_secs(0), serde_json::Value::Null);
        assert_eq!(json_time_secs(86_400), "1970-01-02T00:00:00Z");
        assert_eq!(json_time_ms(1_500), "1970-01-01T00:00:01Z");
    }
}
