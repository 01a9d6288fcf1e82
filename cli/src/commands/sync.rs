//! `accord sync`: connect to a relay, sync until both sides agree, print a
//! summary. The only command that starts an async runtime. Given several
//! relay URLs (the nodes of a cluster), it tries each once, in order,
//! until one syncs: the driver's failover, without its reconnecting.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use accord_engine::{
    ConnectOptions, DocId, Error, ListOptions, Replica, StoreError, SyncError, SyncStatus,
};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde_json::json;
use tokio::sync::watch;

use super::Ctx;
use crate::args::RelayArgs;
use crate::output::{count, human_size, progress_bar};

/// Documents to move before a progress bar is worth showing.
const PROGRESS_THRESHOLD: u64 = 50;

/// The exit status of a `--strict` sync that left something out.
const PARTIAL: u8 = 4;

/// `accord sync`: the collections named with `--collection`, or else every
/// collection the database holds records of. Collections the token does
/// not cover are skipped and reported; on read-only access local changes
/// stay local and are reported. `--strict` makes either exit with 4.
pub fn sync(
    ctx: &mut Ctx,
    relay: RelayArgs,
    named: Vec<String>,
    timeout: u64,
    strict: bool,
) -> Result<ExitCode> {
    let Some((primary, fallbacks)) = relay.relay.split_first() else {
        bail!("no relay URL given (--relay, ACCORD_RELAY)");
    };
    for url in &relay.relay {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            bail!("bad relay URL '{url}': expected ws://HOST:PORT or wss://HOST:PORT");
        }
    }
    for c in &named {
        accord_engine::replica::check_collection(c)?;
    }
    if named.is_empty() && !ctx.db.exists() {
        bail!(
            "database {} does not exist, and without --collection there is nothing to fetch \
             into it: check the path (--db, ACCORD_DB), or name the collections to fetch \
             into a new file with --collection C",
            ctx.db.display()
        );
    }
    let replica = ctx.replica()?;
    let collections: BTreeSet<String> = if named.is_empty() {
        replica.collections()?.into_iter().map(|(c, _)| c).collect()
    } else {
        named.into_iter().collect()
    };
    if collections.is_empty() {
        bail!("nothing to sync: the database has no records; name collections with --collection C");
    }
    let damaged = find_damaged(&replica, &collections)?;
    // Without reconnecting, each URL gets one attempt, in order.
    let options = ConnectOptions {
        token: relay.token,
        collections: collections.iter().cloned().collect(),
        fallback_urls: fallbacks.to_vec(),
        reconnect: false,
        ..ConnectOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let limit = Duration::from_secs(timeout);
    let status = runtime.block_on(async {
        let mut handle = replica.connect(primary, options);
        let progress = Progress::new();
        let watch = handle.watch();
        let outcome = tokio::select! {
            r = handle.wait_agreed(limit) => r,
            () = progress.follow(watch) => unreachable_follow(),
        };
        progress.finish();
        let status = handle.status();
        handle.close().await;
        match outcome {
            Ok(()) => Ok(status),
            Err(e) => Err((e, status.relay_url)),
        }
    });
    let status = status.map_err(|(e, url)| explain(e, &url, &relay.relay, timeout))?;
    // The relay that synced: one of the cluster's URLs.
    let relay = status.relay_url.as_str();
    if collections.iter().all(|c| status.skipped.contains_key(c)) {
        let reasons: Vec<String> = status
            .skipped
            .iter()
            .map(|(c, why)| format!("{c}: {why}"))
            .collect();
        bail!(
            "relay {relay} refused every collection ({})",
            reasons.join("; ")
        );
    }
    let still = replica.damaged();
    let repaired: Vec<DocId> = damaged
        .iter()
        .filter(|id| !still.contains(id))
        .copied()
        .collect();
    summary(ctx, relay, &collections, &status, (&repaired, &still))?;
    if !still.is_empty() {
        ctx.out.flush()?; // the summary stays on stdout above the error
        let ids: Vec<String> = still.iter().map(ToString::to_string).collect();
        bail!(
            "{} still damaged after syncing with {relay}: {} (the relay's copy lacks changes only \
             this database recorded; they are kept as they are). See \"Repairing a damaged \
             database\" in docs/operations.md",
            count(still.len() as u64, "record"),
            ids.join(" ")
        );
    }
    let partial = !status.skipped.is_empty() || !status.unpushed.is_empty();
    Ok(if strict && partial {
        ExitCode::from(PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads every record of the collections to sync, so that records whose
/// stored data is damaged are known to the replica, which then fetches
/// them again from the relay (a damaged record's metadata still claims
/// the relay's heads, so nothing else would). Returns them. Damage SQLite
/// reports below the records (a malformed file) refuses the sync.
fn find_damaged(replica: &Replica, collections: &BTreeSet<String>) -> Result<Vec<DocId>> {
    for collection in collections {
        for meta in replica.list_with(&ListOptions {
            collection: Some(collection.clone()),
            include_deleted: true,
        })? {
            match replica.verify(&meta.id) {
                Ok(()) | Err(Error::Store(StoreError::Corrupt { .. })) => {}
                Err(e) => bail!(
                    "cannot sync: record {} does not load ({e}); run `accord check` and see \
                     \"Repairing a damaged database\" in docs/operations.md",
                    meta.id
                ),
            }
        }
    }
    Ok(replica.damaged())
}

fn unreachable_follow() -> Result<(), SyncError> {
    Err(SyncError::Stopped)
}

/// Turns a sync failure into the message the user sees: it names the
/// relay it concerns (`relay`, the last one tried, unless the error names
/// its own), and every URL given when there were several.
fn explain(e: SyncError, relay: &str, all: &[String], timeout: u64) -> anyhow::Error {
    let error = match e {
        SyncError::Unreachable { url, reason } => {
            anyhow::anyhow!("cannot reach relay {url}: {reason}")
        }
        SyncError::Refused { url, code, message } => {
            anyhow::anyhow!("relay {url} refused: {message} ({})", code.name())
        }
        SyncError::Timeout(_) => {
            anyhow::anyhow!("not in sync with {relay} after {timeout} s (raise --timeout)")
        }
        other => anyhow::anyhow!("sync with {relay} failed: {other}"),
    };
    if all.len() > 1 {
        error.context(format!(
            "no relay synced (relays given: {})",
            all.join(", ")
        ))
    } else {
        error
    }
}

fn summary(
    ctx: &mut Ctx,
    relay: &str,
    collections: &BTreeSet<String>,
    status: &SyncStatus,
    (repaired, damaged): (&[DocId], &[DocId]),
) -> Result<()> {
    let ids = |list: &[DocId]| -> Vec<String> { list.iter().map(ToString::to_string).collect() };
    let s = status.stats;
    let synced: Vec<&str> = collections
        .iter()
        .map(String::as_str)
        .filter(|c| !status.skipped.contains_key(*c))
        .collect();
    if ctx.out.json {
        let unpushed: Vec<String> = status.unpushed.iter().map(ToString::to_string).collect();
        let value = json!({
            "relay": relay,
            "collections": synced,
            "skipped": status.skipped,
            "read_only": status.read_only,
            "unpushed": unpushed,
            "docs_sent": s.docs_sent,
            "docs_received": s.docs_received,
            "records_discovered": s.records_discovered,
            "docs_whole": s.docs_whole,
            "deletions_sent": s.deletions_sent,
            "deletions_received": s.deletions_received,
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "messages_sent": s.messages_sent,
            "messages_received": s.messages_received,
            "repaired": ids(repaired),
            "damaged": ids(damaged),
        });
        ctx.out.json_value(&value)?;
        return Ok(());
    }
    let mut line = format!(
        "in sync with {relay} ({}): sent {} ({}), received {} ({})",
        synced.join(", "),
        count(s.docs_sent, "document"),
        human_size(s.bytes_sent),
        count(s.docs_received, "document"),
        human_size(s.bytes_received)
    );
    if s.records_discovered > 0 {
        line += &format!(", {} new here", count(s.records_discovered, "record"));
    }
    if s.deletions_sent + s.deletions_received > 0 {
        line += &format!(
            ", deletions: {} sent, {} received",
            s.deletions_sent, s.deletions_received
        );
    }
    ctx.out.line(&line)?;
    if !repaired.is_empty() {
        ctx.out.line(&format!(
            "repaired {} damaged here with the relay's copy: {}",
            count(repaired.len() as u64, "record"),
            ids(repaired).join(" ")
        ))?;
    }
    for (collection, reason) in &status.skipped {
        ctx.out.line(&format!("skipped {collection}: {reason}"))?;
    }
    if !status.unpushed.is_empty() {
        let ids: Vec<String> = status.unpushed.iter().map(ToString::to_string).collect();
        ctx.out.line(&format!(
            "read-only access: {} with local changes not pushed (kept here): {}",
            count(status.unpushed.len() as u64, "record"),
            ids.join(" ")
        ))?;
    }
    Ok(())
}

/// A progress bar on a terminal, once enough documents move.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        let bar = progress_bar("{spinner} syncing {pos}/{len} documents {wide_bar} {elapsed}");
        Progress { bar }
    }

    /// Updates the bar from the handle's status until cancelled by the
    /// caller's `select!`; never returns on its own.
    async fn follow(&self, status: watch::Receiver<SyncStatus>) {
        loop {
            if let Some(bar) = &self.bar {
                let s = status.borrow().clone();
                let moved = s.stats.docs_sent + s.stats.docs_received;
                let total = moved + s.pending as u64;
                if total >= PROGRESS_THRESHOLD && bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                bar.set_length(total);
                bar.set_position(moved);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
