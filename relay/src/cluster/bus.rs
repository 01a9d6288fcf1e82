//! The node task: publishes this node's commits on NATS, applies the
//! other nodes' commits, and catches up from PostgreSQL on what the bus
//! lost ([`super::catch_up`]).
//!
//! Core NATS, not JetStream: the bus only carries latency (PostgreSQL
//! holds every commit and its sequence number, which is exactly what a
//! node needs to catch up), so a persisted stream would store every
//! commit a second time and add a disk write to each one's path without
//! telling a node anything the store cannot. Core NATS delivers in order
//! per publisher, at most once; a lost message is found by its missing
//! sequence number.

use std::sync::Arc;
use std::time::Duration;

use accord_engine::sync::{ConnId, Frame, NumberedSummary, SyncDocs};
use accord_engine::{Collection, DocId};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::catch_up::Tracker;
use super::store::PgStore;
use super::{ClusterHealth, Committed};
use crate::docs::{DocActors, HubKey};
use crate::metrics::Metrics;
use crate::peers::Peers;

/// How often a node looks for numbers still missing (two looks in a row
/// make it read the store).
pub const GAP_CHECK: Duration = Duration::from_millis(250);

/// How often a node checks that PostgreSQL answers, for `/health`.
pub const STORE_PROBE: Duration = Duration::from_secs(1);

/// Rows read per page when catching up.
const PAGE: usize = 1000;

/// What the node task works with.
#[derive(Debug)]
pub struct Node {
    /// This node's id on the bus (its own messages come back; they are
    /// skipped).
    pub id: String,
    /// The subject commits are published on.
    pub subject: String,
    /// The subject presence (ephemeral) frames travel on between nodes.
    pub ephemeral_subject: String,
    /// The shared store.
    pub store: Arc<PgStore>,
    /// Document actors, to poke.
    pub docs: DocActors,
    /// Connections, to send tombstones to.
    pub peers: Peers,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Reachability for `/health`.
    pub health: Arc<ClusterHealth>,
    /// How often to check the store for missed commits.
    pub catch_up_interval: Duration,
}

/// Connects to NATS, retrying in the background if it is down at start
/// (a node serves without the bus; it only learns of other nodes'
/// commits later, from the store). `reconnected` is notified each time
/// the connection comes back.
pub async fn connect(
    url: &str,
    health: Arc<ClusterHealth>,
    reconnected: Arc<Notify>,
) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name("accord-relay")
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let (health, reconnected) = (Arc::clone(&health), Arc::clone(&reconnected));
            async move {
                let set = |up: bool| {
                    if let Some(bus) = &health.bus {
                        bus.set(up);
                    }
                };
                match event {
                    async_nats::Event::Connected => {
                        set(true);
                        reconnected.notify_one();
                    }
                    async_nats::Event::Disconnected => set(false),
                    async_nats::Event::SlowConsumer(_) => {
                        // Messages were dropped: look in the store now.
                        reconnected.notify_one();
                    }
                    _ => {}
                }
            }
        });
    Ok(options.connect(url).await?)
}

impl Node {
    /// Runs until `shutdown`: publishes `committed`, applies what `bus`
    /// brings, catches up.
    pub async fn run(
        self,
        bus: Option<async_nats::Client>,
        mut committed: mpsc::Receiver<Committed>,
        mut ephemeral: mpsc::Receiver<Frame>,
        reconnected: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut tracker = match self.blocking(|s| s.collection_seqs()).await {
            Ok(seqs) => Tracker::starting_at(seqs),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's sequences; starting from none");
                Tracker::default()
            }
        };
        let mut messages = match &bus {
            Some(client) => match client.subscribe(self.subject.clone()).await {
                Ok(subscriber) => Some(subscriber),
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe to the bus; catching up from the store only");
                    None
                }
            },
            None => None,
        };
        let mut presence = match &bus {
            Some(client) => client.subscribe(self.ephemeral_subject.clone()).await.ok(),
            None => None,
        };
        let mut gaps = tokio::time::interval(GAP_CHECK);
        let mut check = tokio::time::interval(self.catch_up_interval);
        let mut probe = tokio::time::interval(STORE_PROBE);
        for timer in [&mut gaps, &mut check, &mut probe] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                commit = committed.recv() => {
                    // The store holds the sender as long as the relay runs.
                    let Some(commit) = commit else { break };
                    tracker.heard(&commit.collection, commit.seq);
                    if let Some(client) = &bus {
                        let payload = commit.encode(&self.id);
                        if let Err(e) = client.publish(self.subject.clone(), payload.into()).await {
                            tracing::debug!(error = %e, "cannot publish a commit; other nodes catch up");
                        }
                    }
                }
                Some(frame) = ephemeral.recv() => {
                    if let Some(client) = &bus {
                        let payload = presence_message(&self.id, &frame);
                        let _ = client.publish(self.ephemeral_subject.clone(), payload.into()).await;
                    }
                }
                message = next(&mut presence) => match message {
                    Some(message) => self.on_presence(&message.payload),
                    None => presence = None,
                },
                message = next(&mut messages) => match message {
                    Some(message) => self.on_message(&message.payload, &mut tracker).await,
                    None => {
                        tracing::warn!("the bus subscription ended; catching up from the store only");
                        messages = None;
                    }
                },
                _ = gaps.tick() => {
                    for (collection, from) in tracker.gaps() {
                        self.catch_up(&mut tracker, collection, from, 0).await;
                    }
                }
                _ = check.tick() => self.check_all(&mut tracker).await,
                () = reconnected.notified() => self.check_all(&mut tracker).await,
                _ = probe.tick() => {
                    let up = self.blocking(|s| s.ping()).await.is_ok();
                    self.health.store.set(up);
                }
            }
        }
    }

    async fn on_message(&self, payload: &[u8], tracker: &mut Tracker) {
        let (commit, node, sent_ms) = match Committed::decode(payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a bus message that is not a commit");
                return;
            }
        };
        if node == self.id {
            return;
        }
        let took = (accord_engine::store::now_ms() - sent_ms).max(0) as f64 / 1000.0;
        self.metrics.bus_latency_seconds.observe(took);
        if !tracker.heard(&commit.collection, commit.seq) {
            tracing::debug!(doc = %commit.doc, seq = commit.seq, "bus: already handled");
            return;
        }
        tracing::debug!(doc = %commit.doc, seq = commit.seq, from = node, "bus: commit of another node");
        if commit.changes.is_empty() {
            self.store.mark_changed(&commit.doc);
        } else {
            self.store.apply_committed(&commit);
        }
        self.poke(commit.collection, commit.doc, commit.deleted)
            .await;
    }

    /// Another node's presence frame: passed to this node's listeners of
    /// the document, never stored.
    fn on_presence(&self, payload: &[u8]) {
        let Some((node, bytes)) = split_presence(payload) else {
            return;
        };
        if node == self.id.as_bytes() {
            return;
        }
        let Ok(frame @ Frame::Ephemeral { .. }) = Frame::decode(bytes) else {
            tracing::debug!("ignoring a presence message that is not an ephemeral frame");
            return;
        };
        let Frame::Ephemeral {
            doc, collection, ..
        } = &frame
        else {
            return;
        };
        let Ok(collection) = collection.parse::<Collection>() else {
            return;
        };
        let (passed, dropped) = self.peers.forward(&collection, *doc, ConnId(0), &frame);
        self.metrics.ephemeral_forwarded.inc_by(passed);
        self.metrics.ephemeral_dropped.inc_by(dropped);
    }

    /// Tells this node's peers of another node's commit.
    async fn poke(&self, collection: Collection, doc: DocId, deleted: bool) {
        self.store.note_changed(&collection);
        if deleted {
            let frame = Frame::Delete {
                doc,
                collection: collection.to_string(),
            };
            self.peers.broadcast(&collection, doc, ConnId(0), &frame);
            return;
        }
        if self.peers.listeners(&collection, doc).is_empty() {
            tracing::debug!(%doc, "no one here listens");
            return;
        }
        self.docs.store_changed(HubKey { collection, doc }).await;
    }

    /// Reads every collection's sequence and catches up where behind.
    async fn check_all(&self, tracker: &mut Tracker) {
        let seqs = match self.blocking(|s| s.collection_seqs()).await {
            Ok(seqs) => seqs,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the store's sequences");
                return;
            }
        };
        for (collection, from) in tracker.behind(&seqs) {
            let upto = seqs
                .iter()
                .find(|(c, _)| *c == collection)
                .map_or(0, |(_, s)| *s);
            self.catch_up(tracker, collection, from, upto).await;
        }
        self.metrics.catch_up_lag.set(tracker.lag(&seqs) as i64);
    }

    /// Reads what `collection` wrote after `from` and hands on what was
    /// not heard of; `upto`: the sequence as read before (0: read it).
    async fn catch_up(&self, tracker: &mut Tracker, collection: Collection, from: u64, upto: u64) {
        let mut from = from;
        loop {
            let c = collection.clone();
            let read = self
                .blocking(
                    move |s| -> accord_engine::Result<(u64, Vec<NumberedSummary>)> {
                        let upto = if upto == 0 {
                            s.collection_seq(&c)?
                        } else {
                            upto
                        };
                        Ok((upto, s.summaries_since(&c, from, PAGE)?))
                    },
                )
                .await;
            let (upto, rows) = match read {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(error = %e, %collection, "cannot catch up yet");
                    return;
                }
            };
            let complete = rows.len() < PAGE;
            let unheard = tracker.read(&collection, rows, complete, upto);
            self.metrics.caught_up.inc_by(unheard.len() as u64);
            for row in unheard {
                tracing::debug!(doc = %row.summary.doc, seq = row.seq, %collection, "caught up from the store");
                let summary = row.summary;
                self.store.mark_changed(&summary.doc);
                self.poke(collection.clone(), summary.doc, summary.deleted)
                    .await;
            }
            if complete {
                return;
            }
            from = tracker.watermark(&collection);
        }
    }

    /// Runs store work on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PgStore) -> accord_engine::Result<T> + Send + 'static,
    ) -> accord_engine::Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .unwrap_or_else(|e| {
                Err(accord_engine::Error::Store(
                    accord_engine::StoreError::Backend(format!("store task failed: {e}")),
                ))
            })
    }
}

/// A presence message on the bus: the sending node's id, a newline, the
/// frame as the native protocol encodes it.
fn presence_message(node: &str, frame: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(node.len() + 1 + 64);
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&frame.encode());
    out
}

/// The sending node and the frame bytes of a presence message.
fn split_presence(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = payload.iter().position(|b| *b == b'\n')?;
    Some((&payload[..at], &payload[at + 1..]))
}

async fn next(messages: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match messages {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}
