//! `accord`: inspect and script an Accord replica or relay database.
//!
//! Layout:
//! - `args`: the command line (clap).
//! - `commands`: one module per group of subcommands; `commands::run`
//!   dispatches and opens the database.
//! - `output`: stdout, colours, tables, times, JSON; no `println!`.
//! - `graph`: orders a change DAG newest first and draws it like
//!   `git log --graph`.
//!
//! Exit status: 0 on success (also when the reader of stdout goes away),
//! 1 on an error or when `check` finds damage, 2 on a malformed command line,
//! 3 when `query` stopped at its default row cap.

mod args;
mod commands;
mod graph;
mod output;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes that repeat
/// what is already said (SQLite's errors echo their source in their text).
pub(crate) fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        let tail = part.split_once(": ").map_or(part.as_str(), |(_, t)| t);
        if text.contains(&part) || (!tail.is_empty() && text.contains(tail)) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Whether the error is stdout's reader having gone away, which is how
/// `accord log X | head` ends and no failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_leave_out_repeated_causes() {
        let inner = anyhow::anyhow!("Error code 26: file is not a database");
        let e = inner
            .context("storage error: file is not a database")
            .context("cannot open x.db");
        assert_eq!(
            message(&e),
            "cannot open x.db: storage error: file is not a database"
        );
        let e = anyhow::anyhow!("no such file").context("cannot read a: ");
        assert_eq!(message(&e), "cannot read a: : no such file");
    }
}
