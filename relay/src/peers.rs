//! The registry of live connections.
//!
//! Each connection registers a handle: its peer id, the protocol it speaks
//! ([`Wire`]), a bounded queue of outgoing messages and a token that
//! disconnects it. Which connection listens to which collection (native
//! replicas) or document (automerge-repo peers) is the sync core's
//! [`Subscribers`] table, kept here behind the same lock. Frames are
//! encoded for each connection's own protocol as they are queued, so a
//! document's hub never needs to know who speaks what. Sending never waits: a connection whose
//! queue is full cannot keep up, so it is disconnected with `too_slow` (it
//! resyncs when it reconnects) rather than buffered without bound or
//! silently skipped. This module is also the fan-out seam a relay cluster
//! would extend to reach peers on other nodes.

use std::collections::HashMap;
use std::sync::Arc;

use accord_engine::sync::repo_session::outbound;
use accord_engine::sync::{ConnId, Frame, Subscriber, Subscribers};
use accord_engine::{Collection, DocId, PeerId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The protocol a connection speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Accord's own frames.
    Native,
    /// The automerge-repo protocol, between the relay and this client.
    Repo {
        /// The relay's peer id.
        relay: String,
        /// The client's peer id.
        client: String,
    },
}

/// How a connection is reached.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    /// The peer id from its `Hello` (for automerge-repo peers, derived
    /// from its `join`).
    pub peer: PeerId,
    /// The protocol it speaks.
    pub wire: Wire,
    /// The key its sync states are kept under (the peer id qualified by
    /// its token): what document hubs know it by.
    pub state_key: PeerId,
    /// Its outgoing frames: kind (for metrics) and encoded bytes.
    pub tx: mpsc::Sender<(&'static str, Vec<u8>)>,
    /// Cancelling it disconnects the peer.
    pub kick: CancellationToken,
    /// Cancelled when another connection joins as the same automerge-repo
    /// peer: that one replaces this one.
    pub replaced: CancellationToken,
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
    /// Registers a welcomed connection. An automerge-repo peer that joins
    /// again (same peer id, same token and storage) replaces its earlier
    /// connection, which is told to go, as the JS sync server does.
    pub fn add(&self, conn: ConnId, handle: PeerHandle) {
        let mut inner = self.inner.lock();
        if matches!(handle.wire, Wire::Repo { .. }) {
            for old in inner.conns.values() {
                if old.wire == handle.wire && old.state_key == handle.state_key {
                    old.replaced.cancel();
                }
            }
        }
        inner.conns.insert(conn, handle);
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

    /// Records that a registered connection listens to one document.
    pub fn open(&self, conn: ConnId, collection: &Collection, doc: DocId, write: bool) {
        let mut inner = self.inner.lock();
        let Some(key) = inner.conns.get(&conn).map(|h| h.state_key.clone()) else {
            return;
        };
        inner.subscribers.open(conn, &key, collection, doc, write);
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, conn: ConnId, collection: &Collection) {
        self.inner.lock().subscribers.unsubscribe(conn, collection);
    }

    /// The subscribers of a collection with their peer ids.
    pub fn subscribers(&self, collection: &Collection) -> Vec<Subscriber> {
        self.inner.lock().subscribers.of(collection)
    }

    /// Everyone who hears of a document's changes: its collection's
    /// subscribers and the connections that opened it.
    pub fn listeners(&self, collection: &Collection, doc: DocId) -> Vec<Subscriber> {
        self.inner.lock().subscribers.of_doc(collection, doc)
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

    /// Queues a frame for a connection without waiting, in the
    /// connection's protocol (a frame with no counterpart in it is
    /// skipped). A full queue disconnects the peer; returns whether the
    /// frame was queued.
    pub fn send(&self, conn: ConnId, frame: &Frame) -> bool {
        let Some(handle) = self.inner.lock().conns.get(&conn).cloned() else {
            return false;
        };
        let message = match &handle.wire {
            Wire::Native => (frame.kind(), frame.encode()),
            Wire::Repo { relay, client } => match outbound(frame, relay, client) {
                Some(message) => (message.kind(), message.encode()),
                None => return false,
            },
        };
        match handle.tx.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%conn, peer = %handle.peer, "peer cannot keep up; disconnecting it");
                handle.kick.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a frame about `doc` to everyone who listens to it but
    /// `except`.
    pub fn broadcast(&self, collection: &Collection, doc: DocId, except: ConnId, frame: &Frame) {
        for s in self.listeners(collection, doc) {
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
                wire: Wire::Native,
                state_key: peer.clone(),
                tx,
                kick: kick.clone(),
                replaced: CancellationToken::new(),
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
