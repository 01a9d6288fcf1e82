//! Which connection listens to which collection: the relay's fan-out
//! table, as plain data. The relay keeps one behind a lock beside its
//! connections' queues (`relay/src/peers.rs`); the simulation keeps one
//! directly. A collection nobody listens to has no entry, so the table
//! never holds more than the live subscriptions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::id::{Collection, PeerId};

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

    /// Removes every subscription of a connection (it closed).
    pub fn remove(&mut self, conn: ConnId) {
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
}
