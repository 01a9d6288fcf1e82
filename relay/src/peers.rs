//! The registry of live connections.
//!
//! Each connection registers a handle: its peer id, a bounded queue of
//! outgoing frames and a token that disconnects it. Which connection
//! listens to which collection is the sync core's [`Subscribers`] table,
//! kept here behind the same lock. Sending never waits: a connection whose
//! queue is full cannot keep up, so it is disconnected with `too_slow` (it
//! resyncs when it reconnects) rather than buffered without bound or
//! silently skipped. This module is also the fan-out seam a relay cluster
//! would extend to reach peers on other nodes.

use std::collections::HashMap;
use std::sync::Arc;

use accord_engine::sync::{ConnId, Frame, Subscriber, Subscribers};
use accord_engine::{Collection, PeerId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a connection is reached.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    /// The peer id from its `Hello`.
    pub peer: PeerId,
    /// The key its sync states are kept under (the peer id qualified by
    /// its token): what document hubs know it by.
    pub state_key: PeerId,
    /// Its outgoing frames: kind (for metrics) and encoded bytes.
    pub tx: mpsc::Sender<(&'static str, Vec<u8>)>,
    /// Cancelling it disconnects the peer.
    pub kick: CancellationToken,
}

#[derive(Debug, Default)]
struct Inner {
    /// Welcomed connections.
    conns: HashMap<ConnId, PeerHandle>,
    /// Their subscriptions.
    subscribers: Subscribers,
}

/// The registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    inner: Arc<Mutex<Inner>>,
}

impl Peers {
    /// Registers a welcomed connection.
    pub fn add(&self, conn: ConnId, handle: PeerHandle) {
        self.inner.lock().conns.insert(conn, handle);
    }

    /// Forgets a connection and its subscriptions.
    pub fn remove(&self, conn: ConnId) {
        let mut inner = self.inner.lock();
        inner.conns.remove(&conn);
        inner.subscribers.remove(conn);
    }

    /// Records a subscription of a registered connection, with its right
    /// (recorded again when a `Reauth` changes it).
    pub fn subscribe(&self, conn: ConnId, collection: &Collection, write: bool) {
        let mut inner = self.inner.lock();
        let Some(key) = inner.conns.get(&conn).map(|h| h.state_key.clone()) else {
            return;
        };
        inner.subscribers.subscribe(conn, &key, collection, write);
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, conn: ConnId, collection: &Collection) {
        self.inner.lock().subscribers.unsubscribe(conn, collection);
    }

    /// The subscribers of a collection with their peer ids.
    pub fn subscribers(&self, collection: &Collection) -> Vec<Subscriber> {
        self.inner.lock().subscribers.of(collection)
    }

    /// How many collections have subscribers (the table's size).
    pub fn subscribed_collections(&self) -> usize {
        self.inner.lock().subscribers.collections()
    }

    /// Whether a connection is still registered.
    pub fn is_live(&self, conn: ConnId) -> bool {
        self.inner.lock().conns.contains_key(&conn)
    }

    /// Every registered connection with its peer id.
    pub fn connections(&self) -> Vec<(ConnId, PeerId)> {
        let inner = self.inner.lock();
        inner
            .conns
            .iter()
            .map(|(c, h)| (*c, h.peer.clone()))
            .collect()
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a frame for a connection without waiting. A full queue
    /// disconnects the peer; returns whether the frame was queued.
    pub fn send(&self, conn: ConnId, frame: &Frame) -> bool {
        let Some(handle) = self.inner.lock().conns.get(&conn).cloned() else {
            return false;
        };
        match handle.tx.try_send((frame.kind(), frame.encode())) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%conn, peer = %handle.peer, "peer cannot keep up; disconnecting it");
                handle.kick.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a frame to every subscriber of `collection` but `except`.
    pub fn broadcast(&self, collection: &Collection, except: ConnId, frame: &Frame) {
        for s in self.subscribers(collection) {
            if s.conn != except {
                self.send(s.conn, frame);
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
        let peer = PeerId::new("slow").expect("valid");
        let conn = ConnId(7);
        peers.add(
            conn,
            PeerHandle {
                peer: peer.clone(),
                state_key: peer.clone(),
                tx,
                kick: kick.clone(),
            },
        );
        let c = Collection::new("c").expect("valid");
        peers.subscribe(conn, &c, true);
        let frame = Frame::Subscribe {
            collections: vec![],
        };
        assert!(peers.send(conn, &frame) && peers.send(conn, &frame));
        assert!(!kick.is_cancelled());
        assert!(!peers.send(conn, &frame), "the third frame does not fit");
        assert!(kick.is_cancelled(), "the peer is told to go");
        assert_eq!(rx.try_recv().map(|(kind, _)| kind).ok(), Some("subscribe"));
        assert_eq!(
            peers.subscribers(&c),
            vec![Subscriber {
                conn,
                peer,
                write: true
            }]
        );
        peers.remove(conn);
        assert!(peers.subscribers(&c).is_empty() && !peers.send(conn, &frame));
        assert_eq!(peers.subscribed_collections(), 0, "no key is left behind");
    }
}
