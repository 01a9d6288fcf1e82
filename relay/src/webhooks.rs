//! Webhooks: each configured endpoint receives its collections' change
//! feed as signed JSON batches, durably, in order, with retries and dead
//! letters (`docs/change-feed.md#webhooks`).
//!
//! The outbox is the collection sequence itself: every commit and
//! tombstone takes its number in the transaction that writes it, so a
//! change committed before a crash is in the feed after it. Each endpoint
//! keeps a durable cursor per collection (`Replica::feed_cursor`), moved
//! only after the endpoint answered 2xx: a crash between a delivery and
//! the cursor's commit delivers that batch again (at least once; each
//! event carries an idempotency key to deduplicate by). A batch that
//! cannot be delivered is kept as a dead letter and the cursor moves past
//! it in one commit, so it neither gets lost nor holds up what follows.
//!
//! One task per endpoint, reading from the store: a slow or dead endpoint
//! holds nothing in memory and never slows sync or other endpoints; how
//! far behind it is shows in `accord_relay_webhook_lag`.
//!
//! The store is a [`FeedStore`]: the relay's replica, or on a cluster
//! node the PostgreSQL store, where cursors and dead letters are shared by
//! every node. There every node runs the task, but only the one holding
//! the webhook's lease delivers (`cluster::feed`); when that node stops
//! or loses PostgreSQL, another takes the lease within a second or so and
//! goes on from the stored cursor (at least once, as after a crash).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use accord_engine::{DeadLetter, FeedEntry};
use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::feed_store::{Delivering, FeedStore, LEASE_CHECK};
use crate::http::client::{Connection, Target};
use crate::metrics::Metrics;

/// The header carrying a delivery's signature: `t=<unix seconds>,v1=<hex
/// HMAC-SHA256 of "<t>.<body>" with the webhook's secret>`.
pub const SIGNATURE_HEADER: &str = "x-accord-signature";

/// The most bytes of an endpoint's answer read (it is only logged).
const ANSWER_LIMIT: usize = 64 * 1024;

/// One configured endpoint.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Its name: the consumer its cursors and dead letters are kept under.
    pub name: String,
    /// Where batches are POSTed.
    pub url: String,
    /// Parsed `url`.
    target: Target,
    /// The collections it receives.
    pub collections: Vec<String>,
    /// The signing secret.
    secret: Secret,
    /// Tries per batch before it becomes a dead letter.
    pub max_attempts: u32,
    /// Most events per batch.
    pub batch: usize,
    /// The first retry's delay; each next one doubles, up to `retry_max`.
    pub retry_base: Duration,
    /// The longest delay between tries.
    pub retry_max: Duration,
    /// How long one delivery may take.
    pub timeout: Duration,
}

/// A signing secret, kept out of `Debug` output (and so out of logs).
#[derive(Clone, PartialEq, Eq)]
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The file's form: `[[webhook]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    webhook: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    url: String,
    collections: Vec<String>,
    secret: Option<String>,
    secret_file: Option<String>,
    max_attempts: Option<u32>,
    batch: Option<usize>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    timeout: Option<String>,
}

/// Reads a webhook configuration file (TOML, `[[webhook]]` tables; see
/// `docs/change-feed.md`). Every mistake is named with the webhook it is
/// in; relative `secret_file` paths are relative to the file.
pub fn load(path: &Path) -> Result<Vec<Webhook>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read webhook file {}", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("bad webhook file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut names = BTreeSet::new();
    let mut hooks = Vec::new();
    for entry in file.webhook {
        let name = entry.name.clone();
        let hook = webhook(entry, base).with_context(|| format!("webhook '{name}'"))?;
        if !names.insert(hook.name.clone()) {
            bail!("two webhooks are called '{}'", hook.name);
        }
        hooks.push(hook);
    }
    Ok(hooks)
}

fn webhook(entry: Entry, base: &Path) -> Result<Webhook> {
    if entry.name.is_empty()
        || entry.name.len() > 64
        || !entry
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("a name is 1 to 64 of A-Z a-z 0-9 - _");
    }
    let target = Target::parse(&entry.url)?;
    if entry.url.starts_with("ws") {
        bail!("url must be http:// or https://");
    }
    if entry.collections.is_empty() {
        bail!("collections is empty");
    }
    for c in &entry.collections {
        accord_engine::replica::check_collection(c)?;
    }
    let secret = match (entry.secret, entry.secret_file) {
        (Some(s), None) => s.into_bytes(),
        (None, Some(file)) => {
            let path = base.join(file);
            let mut bytes = std::fs::read(&path)
                .with_context(|| format!("cannot read secret_file {}", path.display()))?;
            while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                bytes.pop();
            }
            bytes
        }
        _ => bail!("give exactly one of secret or secret_file"),
    };
    if secret.len() < 16 {
        bail!("the secret must be at least 16 bytes");
    }
    let duration = |text: Option<String>, default: Duration, what: &str| -> Result<Duration> {
        match text {
            None => Ok(default),
            Some(t) => humantime::parse_duration(&t).with_context(|| format!("bad {what} '{t}'")),
        }
    };
    let hook = Webhook {
        name: entry.name,
        url: entry.url,
        target,
        collections: entry.collections,
        secret: Secret(secret),
        max_attempts: entry.max_attempts.unwrap_or(10).max(1),
        batch: entry.batch.unwrap_or(100).clamp(1, 1000),
        retry_base: duration(entry.retry_base, Duration::from_secs(1), "retry_base")?,
        retry_max: duration(entry.retry_max, Duration::from_secs(300), "retry_max")?,
        timeout: duration(entry.timeout, Duration::from_secs(10), "timeout")?,
    };
    Ok(hook)
}

/// A batch's `Idempotency-Key`: the same for every try and replay of it.
pub fn batch_key(webhook: &str, collection: &str, first_seq: u64, last_seq: u64) -> String {
    format!("{webhook}:{collection}:{first_seq}-{last_seq}")
}

/// The signature header's value for `body` at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Starts one delivery task per webhook, tracked by `tracker`, stopping
/// when `shutdown` is cancelled.
pub fn start(
    hooks: &[Webhook],
    store: &FeedStore,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for hook in hooks {
        let worker = Worker {
            connection: tokio::sync::Mutex::new(Connection::new(hook.target.clone())),
            hook: hook.clone(),
            store: store.clone(),
            metrics: Arc::clone(metrics),
            shutdown: shutdown.clone(),
        };
        tracing::info!(webhook = hook.name, url = hook.url, collections = ?hook.collections, "webhook");
        tracker.spawn(worker.run());
    }
}

/// What became of a batch.
#[derive(Debug)]
enum Outcome {
    /// The endpoint took it.
    Delivered,
    /// It is a dead letter now.
    GivenUp,
    /// The relay is stopping.
    Stopped,
    /// This node lost the webhook's lease: another node goes on from the
    /// stored cursor.
    LeaseLost,
}

/// One endpoint's delivery task.
struct Worker {
    /// The kept-alive connection to the endpoint.
    connection: tokio::sync::Mutex<Connection>,
    hook: Webhook,
    store: FeedStore,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(self) {
        loop {
            let Some(delivering) = self.store.lease(&self.hook.name, &self.shutdown).await else {
                return;
            };
            if self.deliver(&delivering).await {
                return;
            }
            tracing::warn!(
                webhook = self.hook.name,
                "this node lost the webhook's lease"
            );
        }
    }

    /// Delivers while `delivering` holds; true once the relay stops.
    async fn deliver(&self, delivering: &Delivering) -> bool {
        let mut changes = self.store.watch(&self.hook.collections);
        let mut check = tokio::time::interval(LEASE_CHECK);
        while delivering.held() {
            // What was heard so far is covered by the reads below.
            changes.clear();
            let mut delivered_any = false;
            for collection in &self.hook.collections {
                match self.deliver_next(collection, delivering).await {
                    Ok(Some(Outcome::Stopped)) => return true,
                    Ok(Some(Outcome::LeaseLost)) => return false,
                    Ok(Some(_)) => delivered_any = true,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(webhook = self.hook.name, error = %format!("{e:#}"), "webhook storage failed; retrying");
                        if self.pause(self.hook.retry_base).await {
                            return true;
                        }
                    }
                }
            }
            if delivered_any {
                continue;
            }
            // Sleep until a change in one of its collections (a lagged
            // subscription may have missed one: look again), checking
            // now and then that the lease still holds.
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return true,
                    changed = changes.changed() => match changed {
                        true => break,
                        false => return true,
                    },
                    _ = check.tick() => if !delivering.held() {
                        break;
                    },
                }
            }
        }
        false
    }

    /// Delivers the next batch of `collection`, if there is one, trying
    /// only while `delivering` holds.
    async fn deliver_next(
        &self,
        collection: &str,
        delivering: &Delivering,
    ) -> Result<Option<Outcome>> {
        let (cursor, entries, last) = self.read(collection).await?;
        self.metrics
            .webhook_lag(&self.hook.name, collection)
            .set(last.saturating_sub(cursor) as i64);
        if entries.is_empty() {
            return Ok(None);
        }
        let first_seq = entries[0].seq;
        let last_seq = entries[entries.len() - 1].seq;
        let oldest = entries.iter().map(|e| e.updated_at).min().unwrap_or(0);
        let body = self.body(collection, &entries).to_string();
        let key = batch_key(&self.hook.name, collection, first_seq, last_seq);
        let mut attempts = 0;
        loop {
            // A node that lost the lease stops retrying: the next holder
            // delivers this batch, and two must not deliver at once.
            if !delivering.held() {
                return Ok(Some(Outcome::LeaseLost));
            }
            attempts += 1;
            let error = match self.post(&body, &key).await {
                Ok(status) if status.is_success() => {
                    self.commit_cursor(collection, last_seq).await?;
                    self.metrics.webhook_delivered(&self.hook.name, oldest);
                    self.metrics
                        .webhook_lag(&self.hook.name, collection)
                        .set(last.saturating_sub(last_seq) as i64);
                    return Ok(Some(Outcome::Delivered));
                }
                Ok(status) => {
                    let error = format!("HTTP {status}");
                    let retryable = status.is_server_error()
                        || status == hyper::StatusCode::REQUEST_TIMEOUT
                        || status == hyper::StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        return self
                            .give_up(collection, first_seq, last_seq, body, attempts, error)
                            .await;
                    }
                    error
                }
                Err(e) => format!("{e:#}"),
            };
            self.metrics
                .webhook_outcome(&self.hook.name, "retried")
                .inc();
            tracing::debug!(webhook = self.hook.name, attempts, error, "delivery failed");
            if attempts >= self.hook.max_attempts {
                return self
                    .give_up(collection, first_seq, last_seq, body, attempts, error)
                    .await;
            }
            if self.pause(self.backoff(attempts)).await {
                return Ok(Some(Outcome::Stopped));
            }
        }
    }

    /// The cursor, the batch after it and the collection's last number.
    async fn read(&self, collection: &str) -> Result<(u64, Vec<FeedEntry>, u64)> {
        let cursor = self.store.feed_cursor(&self.hook.name, collection).await?;
        let entries = self
            .store
            .changes_since(collection, cursor, self.hook.batch)
            .await?;
        let last = self.store.last_seq(collection).await?;
        Ok((cursor, entries, last))
    }

    async fn commit_cursor(&self, collection: &str, cursor: u64) -> Result<()> {
        Ok(self
            .store
            .set_feed_cursor(&self.hook.name, collection, cursor)
            .await?)
    }

    async fn give_up(
        &self,
        collection: &str,
        first_seq: u64,
        last_seq: u64,
        body: String,
        attempts: u32,
        error: String,
    ) -> Result<Option<Outcome>> {
        tracing::warn!(
            webhook = self.hook.name,
            collection,
            first_seq,
            last_seq,
            attempts,
            error,
            "webhook batch given up: kept as a dead letter"
        );
        let letter = DeadLetter {
            id: 0,
            consumer: self.hook.name.clone(),
            collection: collection.to_owned(),
            first_seq,
            last_seq,
            body,
            attempts,
            error,
            failed_at: 0,
        };
        self.store.give_up(letter).await?;
        self.metrics
            .webhook_outcome(&self.hook.name, "dead_lettered")
            .inc();
        Ok(Some(Outcome::GivenUp))
    }

    /// The batch as the endpoint receives it.
    fn body(&self, collection: &str, entries: &[FeedEntry]) -> Value {
        let events: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut event = crate::http::feed_event(collection, e);
                event["idempotency_key"] = format!("{collection}:{}", e.seq).into();
                event
            })
            .collect();
        json!({ "webhook": self.hook.name, "collection": collection, "events": events })
    }

    /// One delivery try on the kept-alive connection; the endpoint's
    /// status.
    async fn post(&self, body: &str, key: &str) -> Result<hyper::StatusCode> {
        let request = signed(&self.hook, body, key)?;
        let mut connection = self.connection.lock().await;
        let (status, _) = connection
            .fetch(request, ANSWER_LIMIT, self.hook.timeout)
            .await?;
        Ok(status)
    }

    /// Exponential backoff with full jitter, capped.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .hook
            .retry_base
            .saturating_mul(1 << attempts.saturating_sub(1).min(20))
            .min(self.hook.retry_max);
        let ms = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Waits `delay`; true if the relay stops meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => true,
            () = tokio::time::sleep(delay) => false,
        }
    }
}

/// A delivery of `body` to `hook`, signed now.
fn signed(hook: &Webhook, body: &str, key: &str) -> Result<hyper::Request<Full<Bytes>>> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(hook
        .target
        .request("POST", &hook.target.path)
        .header("content-type", "application/json")
        .header(
            SIGNATURE_HEADER,
            signature(&hook.secret.0, t, body.as_bytes()),
        )
        .header("x-accord-webhook", &hook.name)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_owned())))?)
}

/// POSTs `body` to `hook` on a connection of its own (a replay), signed;
/// returns the endpoint's status.
pub async fn post(hook: &Webhook, body: &str, key: &str) -> Result<hyper::StatusCode> {
    let request = signed(hook, body, key)?;
    let (status, _) =
        crate::http::client::fetch(&hook.target, request, ANSWER_LIMIT, hook.timeout).await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_file_is_read_and_every_mistake_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret"), "a secret that is long enough\n")
            .expect("secret");
        let file = dir.path().join("hooks.toml");
        std::fs::write(
            &file,
            r#"
            [[webhook]]
            name = "search"
            url = "https://example.com/hooks/accord"
            collections = ["contacts", "notes"]
            secret_file = "secret"
            max_attempts = 3
            retry_base = "50ms"
            "#,
        )
        .expect("write");
        let hooks = load(&file).expect("load");
        assert_eq!(hooks[0].name, "search");
        assert_eq!(hooks[0].collections, ["contacts", "notes"]);
        assert_eq!(hooks[0].secret.0, b"a secret that is long enough");
        assert!(
            !format!("{hooks:?}").contains("long enough"),
            "secrets stay out of logs"
        );
        assert_eq!(hooks[0].retry_base, Duration::from_millis(50));
        assert_eq!(hooks[0].target.path, "/hooks/accord");

        for (bad, says) in [
            ("name = \"a b\"\nurl = \"http://x\"\ncollections = [\"c\"]\nsecret = \"0123456789abcdef\"", "name"),
            ("name = \"a\"\nurl = \"ftp://x\"\ncollections = [\"c\"]\nsecret = \"0123456789abcdef\"", "URL"),
            ("name = \"a\"\nurl = \"http://x\"\ncollections = []\nsecret = \"0123456789abcdef\"", "collections"),
            ("name = \"a\"\nurl = \"http://x\"\ncollections = [\"c\"]\nsecret = \"short\"", "16 bytes"),
            ("name = \"a\"\nurl = \"http://x\"\ncollections = [\"c\"]", "secret"),
            ("name = \"a\"\nurl = \"http://x\"\ncollections = [\"c\"]\nsecret = \"0123456789abcdef\"\nretries = 3", "unknown field"),
        ] {
            std::fs::write(&file, format!("[[webhook]]\n{bad}\n")).expect("write");
            let error = format!("{:#}", load(&file).expect_err(bad));
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_over_time_and_body() {
        let signed = signature(b"0123456789abcdef", 1_700_000_000, b"{}");
        assert!(signed.starts_with("t=1700000000,v1="), "{signed}");
        assert_eq!(signed.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(
            signed,
            signature(b"0123456789abcdef", 1_700_000_000, b"{ }")
        );
        assert_ne!(signed, signature(b"0123456789abcdef", 1_700_000_001, b"{}"));
    }
}
