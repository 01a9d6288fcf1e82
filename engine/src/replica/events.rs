//! Change notifications.
//!
//! Every committed change, local or remote, is offered to each subscriber
//! whose filter matches. Each subscriber has a bounded queue; a subscriber
//! that falls behind is not allowed to slow writers down, so events that do
//! not fit are counted, and its next receive reports how many it missed
//! ([`RecvError::Lagged`]) before delivering newer events. It never misses
//! events silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use crate::id::{Collection, DocId, Heads, PeerId};

/// How many events a subscriber may have waiting.
pub const SUBSCRIPTION_CAPACITY: usize = 4096;

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// This replica's own API.
    Local,
    /// A peer (the relay), named by its peer id.
    Remote(PeerId),
}

/// What happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It was created here or first arrived here.
    Created,
    /// Its content changed.
    Changed,
    /// It was deleted.
    Deleted,
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The record.
    pub doc: DocId,
    /// Its collection.
    pub collection: Collection,
    /// What happened.
    pub kind: ChangeKind,
    /// Who did it.
    pub origin: Origin,
    /// The record's heads after the change.
    pub heads: Heads,
}

impl ChangeEvent {
    /// Whether the change came from a peer.
    pub fn is_remote(&self) -> bool {
        matches!(self.origin, Origin::Remote(_))
    }
}

/// Which changes a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every change.
    All,
    /// Changes to records of one collection.
    Collection(String),
    /// Changes to one record.
    Doc(DocId),
}

impl Filter {
    fn matches(&self, e: &ChangeEvent) -> bool {
        match self {
            Filter::All => true,
            Filter::Collection(c) => e.collection == *c,
            Filter::Doc(d) => *d == e.doc,
        }
    }
}

/// Why no event was received.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecvError {
    /// The subscriber fell behind and this many events were not queued.
    /// Receiving again continues with newer events.
    #[error("subscriber fell behind; {0} events were missed")]
    Lagged(u64),
    /// Nothing arrived within the timeout.
    #[error("no event within the timeout")]
    Timeout,
    /// The replica was dropped.
    #[error("the replica is closed")]
    Closed,
}

#[derive(Debug)]
struct Subscriber {
    filter: Filter,
    tx: flume::Sender<ChangeEvent>,
    missed: Arc<AtomicU64>,
}

/// The subscribers of one replica.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Listeners {
    pub(crate) fn subscribe(&self, filter: Filter) -> Subscription {
        let (tx, rx) = flume::bounded(SUBSCRIPTION_CAPACITY);
        let missed = Arc::new(AtomicU64::new(0));
        self.subscribers.lock().push(Subscriber {
            filter,
            tx,
            missed: Arc::clone(&missed),
        });
        Subscription { rx, missed }
    }

    pub(crate) fn emit(&self, event: ChangeEvent) {
        let mut subs = self.subscribers.lock();
        subs.retain(|s| {
            if !s.filter.matches(&event) {
                return !s.tx.is_disconnected();
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(flume::TrySendError::Full(_)) => {
                    s.missed.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(flume::TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

/// A stream of change events; drop it to unsubscribe.
#[derive(Debug)]
pub struct Subscription {
    rx: flume::Receiver<ChangeEvent>,
    missed: Arc<AtomicU64>,
}

impl Subscription {
    fn lagged(&self) -> Result<(), RecvError> {
        match self.missed.swap(0, Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(RecvError::Lagged(n)),
        }
    }

    /// Waits for the next event, blocking the thread.
    pub fn recv(&self) -> Result<ChangeEvent, RecvError> {
        self.lagged()?;
        self.rx.recv().map_err(|_| RecvError::Closed)
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<ChangeEvent, RecvError> {
        self.lagged()?;
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            flume::RecvTimeoutError::Timeout => RecvError::Timeout,
            flume::RecvTimeoutError::Disconnected => RecvError::Closed,
        })
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Result<ChangeEvent, RecvError>> {
        if let Err(e) = self.lagged() {
            return Some(Err(e));
        }
        self.rx.try_recv().ok().map(Ok)
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty() && self.missed.load(Ordering::Relaxed) == 0
    }

    /// Waits for the next event without blocking the async runtime.
    pub async fn recv_async(&self) -> Result<ChangeEvent, RecvError> {
        self.lagged()?;
        self.rx.recv_async().await.map_err(|_| RecvError::Closed)
    }
}
