//! One actor per live (collection, document) pair, carrying messages to
//! and from the sync core's [`DocHub`]; every decision is the hub's.
//!
//! Sync messages are routed to their actor through a bounded queue (a full
//! queue makes the sending connection wait, which stops it reading:
//! backpressure instead of buffering). The actor takes everything queued,
//! runs [`DocHub::handle_batch`] on the blocking pool (SQLite work never
//! runs on async workers), and delivers what it returns. It wakes for
//! [`DocHub::tick`] when an answer is overdue, and stops after `doc_idle`
//! without traffic (the replica's bounded cache then lets the document
//! leave memory). Actors are keyed by collection *and* document, so two
//! collections never share one, whatever the frames claim.
//!
//! A panic on the blocking pool ends the actor cleanly: it leaves the
//! table (the next message starts a fresh one from the store), the
//! connections whose messages were lost are told `internal_error` for the
//! document (they offer it again shortly), and `/metrics` counts it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use accord_engine::sync::{ConnId, DocHub, ErrorCode, Frame, HubInput, HubOutput, SyncDocs};
use accord_engine::{Collection, DocId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::peers::Peers;

/// Which hub a message goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubKey {
    /// The collection the frame named (and the sender was checked for).
    pub collection: Collection,
    /// The document.
    pub doc: DocId,
}

/// What reaches a document actor.
#[derive(Debug)]
pub enum ActorInput {
    /// A peer's sync message.
    Sync(HubInput),
    /// The document changed in the store without a peer's message (the
    /// HTTP API wrote it): tell every subscriber.
    StoreChanged,
}

/// The set of document actors.
#[derive(Debug, Clone)]
pub struct DocActors {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Inbox of each running actor.
    actors: Mutex<HashMap<HubKey, mpsc::Sender<ActorInput>>>,
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

    /// Delivers a message to its hub's actor, starting it if needed.
    /// Waits while the actor's queue is full.
    pub async fn route(&self, key: HubKey, input: HubInput) {
        self.deliver(key, ActorInput::Sync(input)).await;
    }

    /// Tells the document's actor (starting one) that the document
    /// changed in the store, so its subscribers hear of it.
    pub async fn store_changed(&self, key: HubKey) {
        self.deliver(key, ActorInput::StoreChanged).await;
    }

    async fn deliver(&self, key: HubKey, mut input: ActorInput) {
        loop {
            let tx = self.sender(&key);
            match tx.send(input).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    // The actor was stopping; forget it and start a new one.
                    input = back;
                    self.inner.forget(&key, &tx);
                }
            }
            if self.inner.shutdown.is_cancelled() {
                return;
            }
        }
    }

    fn sender(&self, key: &HubKey) -> mpsc::Sender<ActorInput> {
        let mut actors = self.inner.actors.lock();
        if let Some(tx) = actors.get(key) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.config.doc_queue);
        actors.insert(key.clone(), tx.clone());
        let hub = DocHub::new(key.doc, key.collection.clone());
        self.inner.metrics.live_documents.inc();
        let actor = Actor {
            shared: Arc::clone(&self.inner),
            key: key.clone(),
            me: tx.clone(),
        };
        self.inner.tracker.spawn(actor.run(hub, rx));
        tx
    }
}

impl Shared {
    /// Removes an actor's entry if it is still `tx`'s.
    fn forget(&self, key: &HubKey, tx: &mpsc::Sender<ActorInput>) {
        let mut actors = self.actors.lock();
        if actors.get(key).is_some_and(|t| t.same_channel(tx)) {
            actors.remove(key);
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// One running actor.
struct Actor {
    /// Relay-wide state.
    shared: Arc<Shared>,
    /// Its hub's key.
    key: HubKey,
    /// Its own inbox's sender, to recognise its entry in the table.
    me: mpsc::Sender<ActorInput>,
}

/// How a hub comes back from the blocking pool.
enum Ran {
    /// It handled the work.
    Done(DocHub, HubOutput),
    /// It panicked and is gone; these connections lost messages.
    Panicked(BTreeSet<ConnId>),
}

impl Actor {
    async fn run(self, hub: DocHub, mut rx: mpsc::Receiver<ActorInput>) {
        let mut hub = Some(hub);
        while let Some(current) = hub.take() {
            let deadline = current.next_deadline();
            let wake = deadline.map(|d| self.at(d));
            let batch = tokio::select! {
                input = rx.recv() => input.map(|first| Self::take_batch(first, &mut rx)),
                () = sleep_until(wake), if wake.is_some() => Some(Vec::new()),
                () = tokio::time::sleep(self.shared.config.doc_idle) => None,
                () = self.shared.shutdown.cancelled() => None,
            };
            let Some(batch) = batch else {
                hub = Some(current);
                break;
            };
            hub = self.process(current, batch).await;
        }
        // Stop taking new work, then finish what was already queued.
        self.shared.forget(&self.key, &self.me);
        rx.close();
        let mut rest = Vec::new();
        while let Ok(input) = rx.try_recv() {
            rest.push(input);
        }
        if let Some(current) = hub.take() {
            hub = if rest.is_empty() {
                Some(current)
            } else {
                self.process(current, rest).await
            };
        } else {
            self.lost(senders(&rest));
        }
        if let Some(current) = hub {
            let shared = Arc::clone(&self.shared);
            let closed = tokio::task::spawn_blocking(move || current.close(shared.store.as_ref()));
            if let Ok(out) = closed.await {
                self.deliver(out);
            }
        }
        self.shared.metrics.live_documents.dec();
        if !self.shared.shutdown.is_cancelled() {
            self.shared.metrics.evictions.inc();
        }
    }

    /// The first input and whatever else is queued, up to a bound.
    fn take_batch(first: ActorInput, rx: &mut mpsc::Receiver<ActorInput>) -> Vec<ActorInput> {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        batch
    }

    /// Runs one batch (or a tick, if empty) on the blocking pool and
    /// delivers its output; `None` if the hub panicked.
    async fn process(&self, hub: DocHub, batch: Vec<ActorInput>) -> Option<DocHub> {
        match self.run_blocking(hub, batch).await {
            Ran::Done(hub, out) => {
                self.deliver(out);
                Some(hub)
            }
            Ran::Panicked(conns) => {
                self.lost(conns);
                None
            }
        }
    }

    async fn run_blocking(&self, mut hub: DocHub, batch: Vec<ActorInput>) -> Ran {
        let senders = senders(&batch);
        let shared = Arc::clone(&self.shared);
        let (collection, doc) = (self.key.collection.clone(), self.key.doc);
        let joined = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let subscribers = shared.peers.listeners(&collection, doc);
            let now = shared.now();
            let out = if batch.is_empty() {
                hub.tick(now, &subscribers, shared.store.as_ref())
            } else {
                let mut messages = Vec::with_capacity(batch.len());
                for input in batch {
                    match input {
                        ActorInput::Sync(message) => messages.push(message),
                        ActorInput::StoreChanged => hub.store_changed(),
                    }
                }
                let mut out = hub.handle_batch(now, messages, &subscribers, shared.store.as_ref());
                // A connection that subscribed while the batch ran may
                // have read its listing before the change committed: the
                // subscribers as they are now hear of it too.
                if out.changed {
                    let now_listening = shared.peers.listeners(&collection, doc);
                    if now_listening
                        .iter()
                        .any(|s| !subscribers.iter().any(|b| b.conn == s.conn))
                    {
                        hub.store_changed();
                        let more = hub.handle_batch(
                            now,
                            Vec::new(),
                            &now_listening,
                            shared.store.as_ref(),
                        );
                        out.frames.extend(more.frames);
                        out.failures.extend(more.failures);
                    }
                }
                out
            };
            shared.metrics.store_time(started.elapsed());
            (hub, out)
        })
        .await;
        match joined {
            Ok((hub, out)) => Ran::Done(hub, out),
            Err(e) => {
                tracing::error!(doc = %self.key.doc, error = %e, "document actor panicked; stopping it");
                self.shared.metrics.panicked("document");
                Ran::Panicked(senders)
            }
        }
    }

    /// Sends a hub's frames and counts its failures.
    fn deliver(&self, out: HubOutput) {
        for failure in &out.failures {
            if failure.code == ErrorCode::STORAGE_UNAVAILABLE {
                self.shared.metrics.storage_failures.inc();
            } else {
                self.shared.metrics.sync_errors.inc();
            }
            tracing::warn!(doc = %self.key.doc, code = %failure.code, error = failure.error, "sync failure");
        }
        for (conn, frame) in out.frames {
            self.shared.peers.send(conn, &frame);
        }
    }

    /// Tells connections whose messages a panic lost to offer the
    /// document again.
    fn lost(&self, conns: BTreeSet<ConnId>) {
        let text = "the relay failed while handling this document; offer it again";
        let frame = Frame::error(ErrorCode::INTERNAL, text, Some(self.key.doc));
        for conn in conns {
            self.shared.peers.send(conn, &frame);
        }
    }

    /// The tokio instant of a sync-core time.
    fn at(&self, ms: u64) -> TokioInstant {
        let offset = std::time::Duration::from_millis(ms);
        TokioInstant::from_std(self.shared.started + offset)
    }
}

/// The connections whose messages are in `inputs`.
fn senders(inputs: &[ActorInput]) -> BTreeSet<ConnId> {
    inputs
        .iter()
        .filter_map(|i| match i {
            ActorInput::Sync(message) => Some(message.conn),
            ActorInput::StoreChanged => None,
        })
        .collect()
}

async fn sleep_until(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
