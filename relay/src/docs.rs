//! One actor per live document.
//!
//! Sync messages for a document are routed to its actor through a bounded
//! queue (a full queue makes the sending connection wait, which stops it
//! reading: backpressure instead of buffering). The actor takes everything
//! queued, applies it to its `DocHub` on the blocking pool (SQLite work
//! never runs on async workers), and flushes once: a burst of changes
//! becomes one message per peer. An actor that sees no traffic for
//! `doc_idle` stops; the replica's bounded cache then lets the document
//! leave memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accord_engine::automerge::sync::Message;
use accord_engine::sync::{DocHub, ErrorCode, Frame, SyncDocs};
use accord_engine::DocId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peers::Peers;

/// A sync message on its way to a document actor.
#[derive(Debug)]
pub struct DocInput {
    /// The sending connection.
    pub conn: u64,
    /// Its peer id.
    pub peer: String,
    /// The message.
    pub message: Message,
    /// Whether the sender waits for an answer.
    pub want_reply: bool,
}

/// The set of document actors.
#[derive(Debug, Clone)]
pub struct DocActors {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Inbox of each running actor.
    actors: Mutex<HashMap<DocId, mpsc::Sender<DocInput>>>,
    /// Where documents live: the storage seam (the engine's `Replica` on
    /// SQLite today; a shared database for a cluster later).
    store: Arc<dyn SyncDocs + Send + Sync>,
    /// Who to send to.
    peers: Peers,
    /// Limits and timeouts.
    config: Config,
    /// Actor tasks, awaited on shutdown.
    tracker: TaskTracker,
    /// Stops every actor.
    shutdown: CancellationToken,
    /// The relay's clock origin.
    started: Instant,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl DocActors {
    /// An empty set of actors.
    pub fn new(
        store: Arc<dyn SyncDocs + Send + Sync>,
        peers: Peers,
        config: Config,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        DocActors {
            inner: Arc::new(Shared {
                actors: Mutex::new(HashMap::new()),
                store,
                peers,
                config,
                tracker,
                shutdown,
                started: Instant::now(),
                metrics,
            }),
        }
    }

    /// Waits until every actor has stopped (after shutdown was cancelled).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Delivers a message to the document's actor, starting it if needed.
    /// Waits while the actor's queue is full.
    pub async fn route(&self, doc: DocId, collection: &str, mut input: DocInput) {
        loop {
            let tx = self.sender(doc, collection);
            match tx.send(input).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    // The actor was stopping; forget it and start a new one.
                    input = back;
                    let mut actors = self.inner.lock_actors();
                    if actors.get(&doc).is_some_and(|t| t.same_channel(&tx)) {
                        actors.remove(&doc);
                    }
                }
            }
            if self.inner.shutdown.is_cancelled() {
                return;
            }
        }
    }

    fn sender(&self, doc: DocId, collection: &str) -> mpsc::Sender<DocInput> {
        let mut actors = self.inner.lock_actors();
        if let Some(tx) = actors.get(&doc) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.config.doc_queue);
        actors.insert(doc, tx.clone());
        let shared = Arc::clone(&self.inner);
        let hub = DocHub::new(doc, collection);
        shared.metrics.live_documents.inc();
        self.inner
            .tracker
            .spawn(run_actor(shared, hub, rx, tx.clone()));
        tx
    }
}

impl Shared {
    fn lock_actors(&self) -> std::sync::MutexGuard<'_, HashMap<DocId, mpsc::Sender<DocInput>>> {
        self.actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

async fn run_actor(
    shared: Arc<Shared>,
    hub: DocHub,
    mut rx: mpsc::Receiver<DocInput>,
    me: mpsc::Sender<DocInput>,
) {
    let doc = hub.doc();
    let mut hub = Some(hub);
    loop {
        let first = tokio::select! {
            input = rx.recv() => input,
            () = tokio::time::sleep(shared.config.doc_idle) => None,
            () = shared.shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        hub = process(&shared, hub, batch).await;
    }
    // Stop taking new work, then finish what was already queued.
    {
        let mut actors = shared.lock_actors();
        if actors.get(&doc).is_some_and(|t| t.same_channel(&me)) {
            actors.remove(&doc);
        }
    }
    drop(me);
    rx.close();
    let mut rest = Vec::new();
    while let Ok(input) = rx.try_recv() {
        rest.push(input);
    }
    if !rest.is_empty() {
        hub = process(&shared, hub, rest).await;
    }
    if let Some(hub) = hub {
        let shared2 = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || detach_all(&shared2, hub)).await;
    }
    shared.metrics.live_documents.dec();
    if !shared.shutdown.is_cancelled() {
        shared.metrics.evictions.inc();
    }
}

/// Applies a batch on the blocking pool and hands the hub back.
async fn process(
    shared: &Arc<Shared>,
    hub: Option<DocHub>,
    batch: Vec<DocInput>,
) -> Option<DocHub> {
    let mut hub = hub?;
    let shared2 = Arc::clone(shared);
    let result = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        apply_batch(&shared2, &mut hub, batch);
        shared2.metrics.store_time(started.elapsed());
        hub
    })
    .await;
    match result {
        Ok(hub) => Some(hub),
        Err(e) => {
            tracing::error!(error = %e, "document actor task failed");
            None
        }
    }
}

fn apply_batch(shared: &Shared, hub: &mut DocHub, batch: Vec<DocInput>) {
    let replica: &dyn SyncDocs = shared.store.as_ref();
    let mut changed = false;
    for DocInput {
        conn,
        peer,
        message,
        want_reply,
    } in batch
    {
        match hub.receive(conn, &peer, message, want_reply, replica) {
            Ok(c) => changed |= c,
            Err(e) => {
                shared.metrics.sync_errors.inc();
                tracing::warn!(doc = %hub.doc(), peer, error = %e, "refused a sync message");
                let frame = Frame::error(ErrorCode::BAD_DOCUMENT, e.to_string(), Some(hub.doc()));
                shared.peers.send(conn, &frame);
            }
        }
    }
    let mut gone = Vec::new();
    for conn in hub.attached() {
        if !shared.peers.is_subscribed(conn, hub.collection()) {
            gone.extend(hub.detach(conn));
        }
    }
    if changed {
        for (conn, name) in shared.peers.subscribers(hub.collection()) {
            hub.attach(conn, &name, replica);
        }
    }
    for (conn, frame) in hub.flush(shared.now(), replica) {
        shared.peers.send(conn, &frame);
    }
    let mut states: Vec<(String, DocId, Vec<u8>)> = hub.dirty_states();
    states.extend(
        gone.into_iter()
            .map(|(name, state)| (name, hub.doc(), state)),
    );
    save_states(shared, states);
}

fn detach_all(shared: &Shared, mut hub: DocHub) {
    let mut states = hub.dirty_states();
    for conn in hub.attached() {
        if let Some((name, state)) = hub.detach(conn) {
            states.push((name, hub.doc(), state));
        }
    }
    save_states(shared, states);
}

fn save_states(shared: &Shared, states: Vec<(String, DocId, Vec<u8>)>) {
    let mut by_peer: HashMap<String, Vec<(DocId, Vec<u8>)>> = HashMap::new();
    for (peer, doc, state) in states {
        by_peer.entry(peer).or_default().push((doc, state));
    }
    for (peer, states) in by_peer {
        if let Err(e) = shared.store.save_sync_states(&peer, states) {
            tracing::warn!(peer, error = %e, "could not persist sync states");
        }
    }
}
