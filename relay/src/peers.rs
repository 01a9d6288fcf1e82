//! The registry of live connections.
//!
//! Each connection registers a handle: its peer id, a bounded queue of
//! outgoing frames and a token that disconnects it. Sending never waits: a
//! connection whose queue is full cannot keep up, so it is disconnected
//! with `too_slow` (it resyncs when it reconnects) rather than buffered
//! without bound or silently skipped. This module is also the fan-out seam
//! a relay cluster would extend to reach peers on other nodes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use accord_engine::sync::Frame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a connection is reached.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    /// The peer id from its `Hello`.
    pub name: String,
    /// Its outgoing frames: kind (for metrics) and encoded bytes.
    pub tx: mpsc::Sender<(&'static str, Vec<u8>)>,
    /// Cancelling it disconnects the peer.
    pub kick: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    /// Welcomed connections by number.
    conns: HashMap<u64, PeerHandle>,
    /// Subscribers of each collection.
    by_collection: HashMap<String, BTreeSet<u64>>,
}

/// The registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    inner: Arc<Mutex<Inner>>,
}

impl Peers {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a welcomed connection.
    pub fn add(&self, conn: u64, handle: PeerHandle) {
        self.lock().conns.insert(conn, handle);
    }

    /// Forgets a connection and its subscriptions.
    pub fn remove(&self, conn: u64) {
        let mut inner = self.lock();
        inner.conns.remove(&conn);
        for subs in inner.by_collection.values_mut() {
            subs.remove(&conn);
        }
    }

    /// Records a subscription.
    pub fn subscribe(&self, conn: u64, collection: &str) {
        self.lock()
            .by_collection
            .entry(collection.to_owned())
            .or_default()
            .insert(conn);
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, conn: u64, collection: &str) {
        if let Some(subs) = self.lock().by_collection.get_mut(collection) {
            subs.remove(&conn);
        }
    }

    /// The subscribers of a collection with their peer ids.
    pub fn subscribers(&self, collection: &str) -> Vec<(u64, String)> {
        let inner = self.lock();
        let Some(subs) = inner.by_collection.get(collection) else {
            return Vec::new();
        };
        subs.iter()
            .filter_map(|c| inner.conns.get(c).map(|h| (*c, h.name.clone())))
            .collect()
    }

    /// Whether a connection is registered and subscribed to `collection`.
    pub fn is_subscribed(&self, conn: u64, collection: &str) -> bool {
        let inner = self.lock();
        inner.conns.contains_key(&conn)
            && inner
                .by_collection
                .get(collection)
                .is_some_and(|s| s.contains(&conn))
    }

    /// Whether a connection is still registered.
    pub fn is_live(&self, conn: u64) -> bool {
        self.lock().conns.contains_key(&conn)
    }

    /// Every registered connection with its peer id.
    pub fn connections(&self) -> Vec<(u64, String)> {
        self.lock()
            .conns
            .iter()
            .map(|(c, h)| (*c, h.name.clone()))
            .collect()
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a frame for a connection without waiting. A full queue
    /// disconnects the peer; returns whether the frame was queued.
    pub fn send(&self, conn: u64, frame: &Frame) -> bool {
        let Some(handle) = self.lock().conns.get(&conn).cloned() else {
            return false;
        };
        match handle.tx.try_send((frame.kind(), frame.encode())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    conn,
                    peer = handle.name,
                    "peer cannot keep up; disconnecting it"
                );
                handle.kick.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a frame to every subscriber of `collection` but `except`.
    pub fn broadcast(&self, collection: &str, except: u64, frame: &Frame) {
        for (conn, _) in self.subscribers(collection) {
            if conn != except {
                self.send(conn, frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_disconnects_the_peer_instead_of_buffering() {
        let peers = Peers::default();
        let (tx, mut rx) = mpsc::channel(2);
        let kick = CancellationToken::new();
        peers.add(
            7,
            PeerHandle {
                name: "slow".into(),
                tx,
                kick: kick.clone(),
            },
        );
        peers.subscribe(7, "c");
        let frame = Frame::Subscribe {
            collections: vec![],
        };
        assert!(peers.send(7, &frame) && peers.send(7, &frame));
        assert!(!kick.is_cancelled());
        assert!(!peers.send(7, &frame), "the third frame does not fit");
        assert!(kick.is_cancelled(), "the peer is told to go");
        assert_eq!(rx.try_recv().map(|(kind, _)| kind).ok(), Some("subscribe"));
        assert_eq!(peers.subscribers("c"), vec![(7, "slow".to_owned())]);
        peers.remove(7);
        assert!(peers.subscribers("c").is_empty() && !peers.send(7, &frame));
    }
}
