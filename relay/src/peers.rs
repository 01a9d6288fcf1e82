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

    /// The collections that have subscribers here.
    pub fn subscribed(&self) -> Vec<Collection> {
        self.inner.lock().subscribers.subscribed()
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
        let Some(message) = encode_for(&handle.wire, frame) else {
            return false;
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

    /// Passes an ephemeral frame about `doc` to everyone who listens to it
    /// but `except`, without waiting: a listener whose queue is full does
    /// not get it (and is not disconnected: presence is worth less than
    /// the sync traffic queued ahead of it). Returns how many got it and
    /// how many did not.
    pub fn forward(
        &self,
        collection: &Collection,
        doc: DocId,
        except: ConnId,
        frame: &Frame,
    ) -> (u64, u64) {
        let handles: Vec<PeerHandle> = {
            let inner = self.inner.lock();
            inner
                .subscribers
                .of_doc(collection, doc)
                .iter()
                .filter(|s| s.conn != except)
                .filter_map(|s| inner.conns.get(&s.conn).cloned())
                .collect()
        };
        let (mut passed, mut dropped) = (0, 0);
        for handle in handles {
            let Some(message) = encode_for(&handle.wire, frame) else {
                continue;
            };
            match handle.tx.try_send(message) {
                Ok(()) => passed += 1,
                Err(_) => dropped += 1,
            }
        }
        (passed, dropped)
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

/// A frame as a connection speaking `wire` receives it (kind, bytes), if
/// it has a counterpart there.
fn encode_for(wire: &Wire, frame: &Frame) -> Option<(&'static str, Vec<u8>)> {
    match wire {
        Wire::Native => Some((frame.kind(), frame.encode())),
        Wire::Repo { relay, client } => {
            outbound(frame, relay, client).map(|message| (message.kind(), message.encode()))
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

    #[test]
    fn presence_skips_a_full_queue_without_disconnecting_and_speaks_each_wire() {
        let peers = Peers::default();
        let c = Collection::new("c").expect("valid");
        let doc = DocId::from_bytes([5; 16]);
        let mut handles = Vec::new();
        for (n, wire) in [
            (1, Wire::Native),
            (2, Wire::Native),
            (
                3,
                Wire::Repo {
                    relay: "relay".into(),
                    client: "tab".into(),
                },
            ),
        ] {
            let (tx, rx) = mpsc::channel(1);
            let kick = CancellationToken::new();
            let peer = PeerId::new(format!("p{n}")).expect("valid");
            let handle = PeerHandle {
                peer: peer.clone(),
                wire,
                state_key: peer,
                tx,
                kick: kick.clone(),
                replaced: CancellationToken::new(),
            };
            peers.add(ConnId(n), handle);
            handles.push((rx, kick));
        }
        peers.subscribe(ConnId(1), &c, true);
        peers.subscribe(ConnId(2), &c, true);
        peers.open(ConnId(3), &c, doc, false);
        let frame = Frame::Ephemeral {
            doc,
            collection: "c".into(),
            sender: "p1".into(),
            session: "s".into(),
            count: 1,
            data: vec![1],
        };
        assert_eq!(
            peers.forward(&c, doc, ConnId(1), &frame),
            (2, 0),
            "not to the sender"
        );
        assert_eq!(
            peers.forward(&c, doc, ConnId(1), &frame),
            (0, 2),
            "queues of one are full"
        );
        assert!(
            handles.iter().all(|(_, kick)| !kick.is_cancelled()),
            "nobody is kicked"
        );
        let (kind, bytes) = handles[2].0.try_recv().expect("the repo peer got it");
        assert_eq!(kind, "ephemeral");
        let message = accord_engine::sync::repo_wire::RepoMessage::decode(&bytes).expect("repo");
        assert!(
            matches!(message, accord_engine::sync::repo_wire::RepoMessage::Ephemeral { target, .. } if target == "tab")
        );
        assert!(handles[0].0.try_recv().is_err(), "the sender got nothing");
    }
}
