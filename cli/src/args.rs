//! The command line: global options and one variant per subcommand.
//!
//! Arguments that are malformed on their own (an id that is not an id, a
//! value that is not JSON, a path with an empty segment) are rejected here,
//! by clap, with exit status 2; everything that needs the database to
//! judge is an error of the command (status 1).

use std::path::PathBuf;

use accord_engine::json::Path as JsonPath;
use accord_engine::DocId;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect and script an Accord replica or relay database.
#[derive(Debug, Parser)]
#[command(
    name = "accord",
    version,
    about,
    propagate_version = true,
    after_help = "Exit status: 0 on success, 1 on an error (or damage found by `check`), \
                  2 on a malformed command line, 3 when `query` stopped at its default \
                  row cap. See docs/cli.md."
)]
pub struct Cli {
    /// The database file.
    #[arg(
        long,
        global = true,
        env = "ACCORD_DB",
        default_value = "accord.db",
        value_name = "FILE"
    )]
    pub db: PathBuf,

    /// Print stable, machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Show times in UTC instead of the local time zone.
    #[arg(long, global = true)]
    pub utc: bool,

    /// When to colour the output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a record and print its id.
    New {
        /// The collection it belongs to, such as `contacts`.
        collection: String,
        /// Its content: a JSON object.
        #[arg(long, value_parser = parse_json, value_name = "JSON")]
        data: Option<serde_json::Value>,
        /// A message for the change.
        #[arg(short, long, value_name = "MSG")]
        message: Option<String>,
    },
    /// Set the value at a path (dot-separated keys, numeric list indices).
    Put {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
        /// Where, such as `address.lines.0`. `""` is the whole record: the
        /// value must then be an object, whose keys are set one by one
        /// (keys it does not name stay).
        #[arg(value_parser = parse_path, value_name = "FIELD")]
        path: JsonPath,
        /// The value, as JSON (a string needs its quotes: '"Ada"').
        #[arg(value_parser = parse_json, value_name = "JSON")]
        value: serde_json::Value,
        /// A message for the change.
        #[arg(short, long, value_name = "MSG")]
        message: Option<String>,
    },
    /// Remove the key or list element at a path.
    Unset {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
        /// What to remove, such as `address.lines.0`.
        #[arg(value_parser = parse_path, value_name = "FIELD")]
        path: JsonPath,
        /// A message for the change.
        #[arg(short, long, value_name = "MSG")]
        message: Option<String>,
    },
    /// Print a record, or the value at a path, as JSON.
    Get {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
        /// Only the value at this path, such as `address.city`.
        #[arg(value_parser = parse_path, value_name = "FIELD")]
        path: Option<JsonPath>,
        /// As of these heads (comma-separated full or short change hashes).
        #[arg(long, value_name = "HEADS")]
        at: Option<String>,
        /// Instead of the content, list the fields holding concurrent
        /// values, each value with the change that wrote it.
        #[arg(long, conflicts_with = "path")]
        conflicts: bool,
    },
    /// Delete a record (a tombstone that replicates; history stays readable).
    Rm {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
    },
    /// List records: id, collection, changes, last change, size.
    Ls {
        /// Only this collection.
        collection: Option<String>,
        /// Include deleted records.
        #[arg(long)]
        deleted: bool,
        /// The field to preview, a dot path such as `name` or
        /// `address.city` (default: the first text field of each record).
        #[arg(long, value_name = "FIELD", value_parser = parse_path)]
        show: Option<JsonPath>,
    },
    /// List collections with their number of records.
    Collections,
    /// Show what the database knows about one record.
    Info {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
    },
    /// Print a record's current heads, comma-separated (the form `--at` takes).
    Heads {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
    },
    /// Show a record's history, newest first.
    Log {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
        /// Draw the change graph, with branches and merges.
        #[arg(long)]
        graph: bool,
        /// Show at most N changes.
        #[arg(short = 'n', long = "max-count", value_name = "N")]
        max_count: Option<usize>,
    },
    /// Show what changed between two points of a record's history.
    Diff {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
        /// The earlier point: heads, comma-separated (`""` is the empty record).
        #[arg(value_name = "HEADS_A")]
        from: String,
        /// The later point (default: now).
        #[arg(value_name = "HEADS_B")]
        to: Option<String>,
    },
    /// Write a record as an Automerge binary document.
    Export {
        /// The record.
        #[arg(value_parser = parse_id)]
        id: DocId,
        /// Write to this file instead of stdout (refused if it exists,
        /// unless `--force`).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite the output file if it exists.
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Import an Automerge binary document as a new record and print its
    /// id; with --jsonl, one new record per line of a JSON Lines file.
    ///
    /// With --jsonl every line must be a JSON object (blank lines are
    /// skipped). All lines are checked before anything is written: a bad
    /// line fails the import, naming its number, and writes nothing. The
    /// records are then written in transactions of --batch rows.
    Import {
        /// The file (`-` reads stdin).
        file: PathBuf,
        /// The collection the new records join.
        #[arg(long, short)]
        collection: String,
        /// Read JSON Lines (one JSON object per line, one record each)
        /// instead of an Automerge document.
        #[arg(long)]
        jsonl: bool,
        /// With --jsonl: records per SQLite transaction.
        #[arg(long, value_name = "N", default_value_t = 1000, requires = "jsonl",
              value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
    },
    /// Run one read-only SQL statement over the `records` view and print
    /// the rows as they come (see docs/queries.md).
    ///
    /// The view has the columns id, collection, deleted, created_at,
    /// updated_at and json (the record's content); SQLite's JSON functions
    /// work on json. SQL that would write is refused.
    ///
    /// At most 10000 rows are printed unless --limit says otherwise; when
    /// the default cap cuts the output short, the status is 3.
    Query(QueryArgs),
    /// Manage indexes on a JSON path of one collection's records.
    Index {
        /// What to do.
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Rebuild the query projection from the documents.
    Reindex,
    /// Rewrite every record stored as several chunks into one snapshot.
    Compact,
    /// Verify that every record loads, that the query projection matches
    /// the documents, and that the file is sound.
    Check,
    /// Copy the database to a new file with SQLite's online backup (safe
    /// while an app or the relay keeps writing).
    Backup {
        /// The file to create (refused if it exists, unless `--force`).
        #[arg(value_name = "FILE")]
        dest: std::path::PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a collection's change feed from a relay: every record changed
    /// after a cursor, once each, in commit order (see docs/change-feed.md).
    Feed {
        #[command(flatten)]
        relay: RelayArgs,
        /// The collection to follow.
        #[arg(long, value_name = "C")]
        collection: String,
        /// Start after this cursor (from an earlier event; default: from
        /// the beginning).
        #[arg(long, value_name = "CURSOR", default_value_t = 0)]
        since: u64,
        /// Keep printing changes as they happen, until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Show a relay's webhooks (how far each has delivered) and their dead
    /// letters; replay or drop a dead letter.
    Webhooks {
        #[command(flatten)]
        relay: RelayArgs,
        /// Deliver this dead letter again now: WEBHOOK/ID.
        #[arg(long, value_name = "WEBHOOK/ID", conflicts_with = "drop")]
        replay: Option<String>,
        /// Forget this dead letter: WEBHOOK/ID.
        #[arg(long, value_name = "WEBHOOK/ID")]
        drop: Option<String>,
    },
    /// Serve the inspector page and the read-only HTTP API over this
    /// database, and print its URL (see docs/inspector.md).
    Inspect {
        /// Where to listen; port 0 (the default) lets the OS choose.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Sync with a relay until both sides agree, then print a summary.
    ///
    /// Syncs the collections named with `--collection`, or else every
    /// collection this database has records in.
    Sync {
        #[command(flatten)]
        relay: RelayArgs,
        /// Sync only this collection (repeatable); without it, every
        /// collection the database holds records of. Naming one lets sync
        /// create the database to fetch into.
        #[arg(long = "collection", value_name = "C")]
        collections: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
        /// Exit with status 4 when a collection was refused or local
        /// changes could not be pushed (read-only access).
        #[arg(long)]
        strict: bool,
    },
}

/// Where a relay is and the token to present, for the commands that talk
/// to one (`sync`, `feed`, `webhooks`).
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The relay's URL, such as ws://127.0.0.1:7420 (`feed` and `webhooks`
    /// also take http:// and https://: the same port). Repeatable, or
    /// comma-separated, for the nodes of a relay cluster: `sync`, `feed`
    /// and `webhooks` try them in order, moving on when one is
    /// unreachable (or, for what only reads, fails) or its connection
    /// ends.
    #[arg(
        long,
        value_name = "URL",
        env = "ACCORD_RELAY",
        value_delimiter = ',',
        required = true
    )]
    pub relay: Vec<String>,
    /// The token to present (for a relay that requires one; a webhook is
    /// shown only to a token that reads every collection it receives).
    #[arg(
        long,
        value_name = "T",
        env = "ACCORD_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
}

/// `accord index` subcommands.
#[derive(Debug, Subcommand)]
pub enum IndexAction {
    /// Create an index (nothing happens if it exists) and print its name.
    Create {
        /// The collection whose records it covers.
        collection: String,
        /// The JSON path, such as '$.name' or '$.address.city'.
        #[arg(value_name = "JSON_PATH")]
        path: String,
    },
    /// Drop an index.
    Drop {
        /// The collection.
        collection: String,
        /// The JSON path.
        #[arg(value_name = "JSON_PATH")]
        path: String,
    },
    /// List the indexes.
    Ls,
}

/// `accord query`'s arguments.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL statement, such as
    /// "SELECT id, json FROM records WHERE collection = 'contacts'".
    pub sql: String,
    /// A value for the next positional parameter (`?`, `?1`, ...);
    /// repeatable. JSON scalars keep their type (42, 2.5, true, null,
    /// '"42"'); anything else is text.
    #[arg(
        long = "param",
        short = 'p',
        value_name = "V",
        allow_hyphen_values = true
    )]
    pub params: Vec<String>,
    /// Print at most N rows, then stop reading and say so on stderr
    /// [default: 10000; 0: every row].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Stop the query once it has spent SECONDS inside SQLite (time spent
    /// printing does not count); 0: no limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
    /// Print JSON Lines: one compact object per row and line (implies
    /// --json).
    #[arg(long)]
    pub json_lines: bool,
}

impl Command {
    /// Whether the command may create the database when it is missing.
    pub fn creates_database(&self) -> bool {
        match self {
            Command::New { .. } | Command::Import { .. } => true,
            // Only a sync that names what to fetch may start a new file;
            // without names it would have nothing to ask for.
            Command::Sync { collections, .. } => !collections.is_empty(),
            _ => false,
        }
    }
}

fn parse_id(text: &str) -> Result<DocId, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_path(text: &str) -> Result<JsonPath, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| {
        let hint = if text.trim_start().starts_with(['{', '[', '"']) {
            ""
        } else {
            " (a string needs JSON quotes, such as '\"Ada\"')"
        };
        format!("not valid JSON: {e}{hint}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_errors_hint_at_quotes() {
        let err = parse_json("Ada").err().unwrap_or_default();
        assert!(err.contains("JSON quotes"), "{err}");
        assert!(parse_json("{\"a\": 1}").is_ok());
    }
}
