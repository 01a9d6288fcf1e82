//! The subcommands, and what they share: opening the database and reading
//! ids and heads.
//!
//! - `records`: `new`, `put`, `unset`, `get`, `rm`.
//! - `listing`: `ls`, `collections`, `info`, `heads`.
//! - `history`: `log`, `diff`.
//! - `transfer`: `export`, `import` (Automerge files and JSON Lines).
//! - `maintenance`: `compact`, `check`.
//! - `query`: `query`, `index`, `reindex` (SQL over the records).
//! - `sync`: `sync`, which needs an async runtime.
//! - `feed`: a relay's change feed and webhooks over HTTP (`feed`,
//!   `webhooks`).
//! - `inspect`: the inspector page and read-only HTTP API over the file.

mod feed;
mod history;
mod inspect;
mod listing;
mod maintenance;
mod query;
mod records;
mod sync;
mod transfer;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use accord_engine::automerge::ChangeHash;
use accord_engine::{DocId, Error, Replica, ReplicaOptions, StoreError};
use anyhow::{anyhow, Context, Result};

use crate::args::{Cli, Command};
use crate::output::Output;

/// What every command works with.
#[derive(Debug)]
pub struct Ctx {
    /// The database file.
    pub db: PathBuf,
    /// Whether this command may create the database.
    create: bool,
    /// The database, once a command asked for it.
    replica: Option<Replica>,
    /// Where the data goes.
    pub out: Output,
}

impl Ctx {
    /// The database, opened on first use, so a command can reject its
    /// arguments before a database is created.
    pub fn replica(&mut self) -> Result<Replica> {
        if let Some(replica) = &self.replica {
            return Ok(replica.clone());
        }
        let replica = open(&self.db, self.create)?;
        self.replica = Some(replica.clone());
        Ok(replica)
    }
}

/// Runs the command line and returns the exit status to end with.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let mut ctx = Ctx {
        create: cli.command.creates_database(),
        db: cli.db,
        replica: None,
        out: Output::new(cli.color, cli.utc, cli.json),
    };
    let code = dispatch(&mut ctx, cli.command)?;
    ctx.out.finish()?;
    Ok(code)
}

fn dispatch(ctx: &mut Ctx, command: Command) -> Result<ExitCode> {
    match command {
        Command::New {
            collection,
            data,
            message,
        } => records::new(ctx, &collection, data, message.as_deref())?,
        Command::Put {
            id,
            path,
            value,
            message,
        } => records::put(ctx, &id, &path, &value, message.as_deref())?,
        Command::Unset { id, path, message } => {
            records::unset(ctx, &id, &path, message.as_deref())?
        }
        Command::Get {
            id,
            at,
            conflicts: true,
            ..
        } => records::conflicts(ctx, &id, at.as_deref())?,
        Command::Get { id, path, at, .. } => records::get(ctx, &id, path.as_ref(), at.as_deref())?,
        Command::Rm { id } => records::rm(ctx, &id)?,
        Command::Ls {
            show,
            collection,
            deleted,
        } => listing::ls(ctx, collection, deleted, show.as_ref())?,
        Command::Collections => listing::collections(ctx)?,
        Command::Info { id } => listing::info(ctx, &id)?,
        Command::Heads { id } => listing::heads(ctx, &id)?,
        Command::Log {
            id,
            graph,
            max_count,
        } => history::log(ctx, &id, graph, max_count)?,
        Command::Diff { id, from, to } => history::diff(ctx, &id, &from, to.as_deref())?,
        Command::Export { id, output, force } => {
            transfer::export(ctx, &id, output.as_deref(), force)?
        }
        Command::Import {
            file,
            collection,
            jsonl: false,
            ..
        } => transfer::import(ctx, &file, &collection)?,
        Command::Import {
            file,
            collection,
            jsonl: true,
            batch,
        } => transfer::import_jsonl(ctx, &file, &collection, batch)?,
        Command::Query(args) => return query::query(ctx, &args),
        Command::Index { action } => query::index(ctx, action)?,
        Command::Reindex => return query::reindex(ctx),
        Command::Compact => return maintenance::compact(ctx),
        Command::Check => return maintenance::check(ctx),
        Command::Backup { dest, force } => maintenance::backup(ctx, &dest, force)?,
        Command::Sync {
            relay,
            collections,
            timeout,
            strict,
        } => return sync::sync(ctx, relay, collections, timeout, strict),
        Command::Feed {
            relay,
            collection,
            since,
            follow,
        } => return feed::feed(ctx, &relay, &collection, since, follow),
        Command::Webhooks {
            relay,
            replay,
            drop,
        } => feed::webhooks(ctx, &relay, replay.as_deref(), drop.as_deref())?,
        Command::Inspect { listen } => inspect::inspect(ctx, listen)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the database. Only commands that write a new record may create
/// it; every other command fails on a missing file.
fn open(db: &Path, create: bool) -> Result<Replica> {
    let options = ReplicaOptions {
        must_exist: !create,
        ..ReplicaOptions::default()
    };
    Replica::open_with(db, options).map_err(|e| match e {
        Error::Store(StoreError::Missing(_)) => anyhow!(
            "database {} does not exist (give --db PATH or set ACCORD_DB; \
             `accord new` and `accord import` create one)",
            db.display()
        ),
        other => anyhow::Error::new(other).context(format!("cannot open {}", db.display())),
    })
}

/// Resolves comma-separated full or short change hashes of a record.
pub fn resolve_heads(replica: &Replica, id: &DocId, text: &str) -> Result<accord_engine::Heads> {
    // A missing record is reported as such, not as heads that do not resolve.
    replica.meta(id)?;
    replica
        .resolve_heads(id, text)
        .with_context(|| format!("cannot resolve heads '{text}'"))
}

/// Prints a new record's id alone (or, with `--json`, its id, URL and
/// collection): what `new` and `import` print.
pub fn print_new_id(ctx: &mut Ctx, id: &DocId, collection: &str) -> Result<()> {
    if ctx.out.json {
        let shown =
            serde_json::json!({"id": id.to_string(), "url": id.url(), "collection": collection});
        ctx.out.json_value(&shown)?;
    } else {
        ctx.out.line(&id.to_string())?;
    }
    Ok(())
}

/// Heads as the comma-separated hex the `--at` option takes.
pub fn heads_text(heads: &[ChangeHash]) -> String {
    heads
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
