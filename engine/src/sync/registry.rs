//! Which connection listens to which collection, or to which single
//! document: the relay's fan-out table, as plain data. Native replicas
//! subscribe to collections; automerge-repo peers open documents one at a
//! time (by requesting or syncing them). The relay keeps one table behind
//! a lock beside its connections' queues (`relay/src/peers.rs`); the
//! simulation keeps one directly. A collection or document nobody listens
//! to has no entry, so the table never holds more than the live
//! subscriptions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::id::{Collection, DocId, PeerId};

/// A connection's number, unique within one relay process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {}", self.0)
    }
}

/// A connection subscribed to a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnId,
    /// The peer behind it (its sync states are kept under this id).
    pub peer: PeerId,
    /// Whether it may change the collection's documents (a read-only
    /// subscriber is sent changes but never asked for its own).
    pub write: bool,
}

/// The subscriptions of every connection.
#[derive(Debug, Default, Clone)]
pub struct Subscribers {
    /// Subscribers of each collection that has any.
    by_collection: BTreeMap<Collection, BTreeMap<ConnId, (PeerId, bool)>>,
    /// Collections of each connection that subscribed to any.
    by_conn: BTreeMap<ConnId, BTreeSet<Collection>>,
    /// Listeners of single documents, by (collection, document).
    by_doc: BTreeMap<(Collection, DocId), BTreeMap<ConnId, (PeerId, bool)>>,
    /// Documents each connection opened.
    docs_by_conn: BTreeMap<ConnId, BTreeSet<(Collection, DocId)>>,
}

impl Subscribers {
    /// Records a subscription (or updates its right).
    pub fn subscribe(&mut self, conn: ConnId, peer: &PeerId, collection: &Collection, write: bool) {
        self.by_collection
            .entry(collection.clone())
            .or_default()
            .insert(conn, (peer.clone(), write));
        self.by_conn
            .entry(conn)
            .or_default()
            .insert(collection.clone());
    }

    /// Removes a subscription.
    pub fn unsubscribe(&mut self, conn: ConnId, collection: &Collection) {
        if let Some(subs) = self.by_collection.get_mut(collection) {
            subs.remove(&conn);
            if subs.is_empty() {
                self.by_collection.remove(collection);
            }
        }
        if let Some(collections) = self.by_conn.get_mut(&conn) {
            collections.remove(collection);
            if collections.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// Records that a connection listens to one document of a collection
    /// (or updates its right).
    pub fn open(
        &mut self,
        conn: ConnId,
        peer: &PeerId,
        collection: &Collection,
        doc: DocId,
        write: bool,
    ) {
        let key = (collection.clone(), doc);
        self.by_doc
            .entry(key.clone())
            .or_default()
            .insert(conn, (peer.clone(), write));
        self.docs_by_conn.entry(conn).or_default().insert(key);
    }

    /// Whether `conn` listens to `doc` of `collection` on its own.
    pub fn is_open(&self, conn: ConnId, collection: &Collection, doc: DocId) -> bool {
        self.docs_by_conn
            .get(&conn)
            .is_some_and(|d| d.contains(&(collection.clone(), doc)))
    }

    /// Removes every subscription of a connection (it closed).
    pub fn remove(&mut self, conn: ConnId) {
        for key in self.docs_by_conn.remove(&conn).unwrap_or_default() {
            if let Some(subs) = self.by_doc.get_mut(&key) {
                subs.remove(&conn);
                if subs.is_empty() {
                    self.by_doc.remove(&key);
                }
            }
        }
        for collection in self.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(subs) = self.by_collection.get_mut(&collection) {
                subs.remove(&conn);
                if subs.is_empty() {
                    self.by_collection.remove(&collection);
                }
            }
        }
    }

    /// The subscribers of a collection, in connection order.
    pub fn of(&self, collection: &Collection) -> Vec<Subscriber> {
        self.by_collection
            .get(collection)
            .map(|subs| {
                subs.iter()
                    .map(|(conn, (peer, write))| Subscriber {
                        conn: *conn,
                        peer: peer.clone(),
                        write: *write,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everyone who hears of a document's changes: the subscribers of its
    /// collection and the connections that opened it, each once (a
    /// collection subscription's right wins), in connection order.
    pub fn of_doc(&self, collection: &Collection, doc: DocId) -> Vec<Subscriber> {
        let mut all: BTreeMap<ConnId, (PeerId, bool)> = self
            .by_doc
            .get(&(collection.clone(), doc))
            .cloned()
            .unwrap_or_default();
        if let Some(subs) = self.by_collection.get(collection) {
            all.extend(subs.iter().map(|(c, v)| (*c, v.clone())));
        }
        all.into_iter()
            .map(|(conn, (peer, write))| Subscriber { conn, peer, write })
            .collect()
    }

    /// How many single documents have listeners.
    pub fn open_documents(&self) -> usize {
        self.by_doc.len()
    }

    /// Whether `conn` is subscribed to `collection`.
    pub fn is_subscribed(&self, conn: ConnId, collection: &Collection) -> bool {
        self.by_conn
            .get(&conn)
            .is_some_and(|c| c.contains(collection))
    }

    /// How many collections have subscribers.
    pub fn collections(&self) -> usize {
        self.by_collection.len()
    }

    /// The collections that have subscribers, in order.
    pub fn subscribed(&self) -> Vec<Collection> {
        self.by_collection.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_away_with_their_last_subscriber() {
        let (a, b) = (
            Collection::new("a").expect("valid"),
            Collection::new("b").expect("valid"),
        );
        let peer = PeerId::new("p").expect("valid");
        let mut subs = Subscribers::default();
        subs.subscribe(ConnId(1), &peer, &a, true);
        subs.subscribe(ConnId(2), &peer, &a, false);
        subs.subscribe(ConnId(2), &peer, &b, true);
        assert_eq!(subs.of(&a).len(), 2);
        assert!(subs.of(&a)[0].write && !subs.of(&a)[1].write);
        assert!(subs.is_subscribed(ConnId(2), &b));
        subs.unsubscribe(ConnId(1), &a);
        subs.remove(ConnId(2));
        assert_eq!(subs.collections(), 0, "no key outlives its subscribers");
        assert!(subs.of(&a).is_empty() && !subs.is_subscribed(ConnId(2), &b));
    }

    #[test]
    fn a_document_is_heard_by_its_collection_and_by_who_opened_it() {
        let (a, b) = (
            Collection::new("a").expect("valid"),
            Collection::new("b").expect("valid"),
        );
        let doc = DocId::from_bytes([1; 16]);
        let peer = PeerId::new("p").expect("valid");
        let mut subs = Subscribers::default();
        subs.subscribe(ConnId(1), &peer, &a, true);
        subs.open(ConnId(2), &peer, &a, doc, false);
        subs.open(ConnId(1), &peer, &a, doc, false);
        let heard: Vec<(ConnId, bool)> = subs
            .of_doc(&a, doc)
            .iter()
            .map(|s| (s.conn, s.write))
            .collect();
        assert_eq!(heard, [(ConnId(1), true), (ConnId(2), false)]);
        assert!(
            subs.of_doc(&b, doc).is_empty(),
            "the pair names the document"
        );
        assert!(
            subs.of(&a).len() == 1,
            "opening a document is not a subscription"
        );
        assert!(subs.is_open(ConnId(2), &a, doc) && !subs.is_open(ConnId(2), &b, doc));
        subs.remove(ConnId(2));
        subs.remove(ConnId(1));
        assert_eq!(subs.open_documents() + subs.collections(), 0);
    }
}
