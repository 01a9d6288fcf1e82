//! Who has a document open now, as the relay sees it: the peers that sent
//! presence (ephemeral frames) about it lately. The relay forwards
//! presence without storing it; this table only remembers who sent some,
//! and when, so the HTTP API and the inspector can say "open now by".
//!
//! Bounded: a connection is remembered for at most
//! [`DOCS_PER_CONNECTION`] documents (its oldest is forgotten first), an
//! entry older than [`FRESH`] counts for nothing and is dropped when next
//! seen, and a closed connection's entries go with it.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use accord_engine::sync::ConnId;
use accord_engine::DocId;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// How long a presence message counts.
pub const FRESH: Duration = Duration::from_secs(30);

/// Most documents remembered per connection.
pub const DOCS_PER_CONNECTION: usize = 64;

/// One peer with a document open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    /// The peer's id, as the sender of its presence.
    pub peer: String,
    /// When its latest presence about the document arrived.
    pub seen: SystemTime,
}

/// One sighting.
#[derive(Debug, Clone)]
struct Seen {
    /// The connection it came by (one peer may have several).
    conn: ConnId,
    /// The peer's id.
    peer: String,
    /// When, for freshness.
    at: Instant,
    /// When, for people.
    wall: SystemTime,
}

/// The table.
#[derive(Debug)]
pub struct Presence {
    /// Sightings per document.
    inner: Mutex<Table>,
    /// Documents whose presence changed, for live views.
    changes: broadcast::Sender<DocId>,
}

#[derive(Debug, Default)]
struct Table {
    /// Sightings per document, newest last.
    docs: HashMap<DocId, Vec<Seen>>,
    /// Documents per connection, oldest first (to forget them on close).
    conns: HashMap<ConnId, Vec<DocId>>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            inner: Mutex::new(Table::default()),
            changes: broadcast::channel(256).0,
        }
    }
}

impl Presence {
    /// `peer` sent presence about `doc` over `conn`, now.
    pub fn saw(&self, doc: DocId, conn: ConnId, peer: &str) {
        let now = Instant::now();
        {
            let mut table = self.inner.lock();
            let docs = table.conns.entry(conn).or_default();
            docs.retain(|d| *d != doc);
            docs.push(doc);
            let forgotten = if docs.len() > DOCS_PER_CONNECTION {
                Some(docs.remove(0))
            } else {
                None
            };
            if let Some(old) = forgotten {
                table.drop_conn_from(old, conn);
            }
            let seen = table.docs.entry(doc).or_default();
            seen.retain(|s| s.conn != conn && now.duration_since(s.at) < FRESH);
            seen.push(Seen {
                conn,
                peer: peer.to_owned(),
                at: now,
                wall: SystemTime::now(),
            });
        }
        let _ = self.changes.send(doc);
    }

    /// The connection closed: it has nothing open any more.
    pub fn gone(&self, conn: ConnId) {
        let docs = {
            let mut table = self.inner.lock();
            let docs = table.conns.remove(&conn).unwrap_or_default();
            for doc in &docs {
                table.drop_conn_from(*doc, conn);
            }
            docs
        };
        for doc in docs {
            let _ = self.changes.send(doc);
        }
    }

    /// Who has `doc` open now, newest first, one entry per peer.
    pub fn of(&self, doc: DocId) -> Vec<Present> {
        let now = Instant::now();
        let table = self.inner.lock();
        let Some(seen) = table.docs.get(&doc) else {
            return Vec::new();
        };
        let mut present: Vec<Present> = Vec::new();
        for s in seen.iter().rev() {
            if now.duration_since(s.at) < FRESH && !present.iter().any(|p| p.peer == s.peer) {
                present.push(Present {
                    peer: s.peer.clone(),
                    seen: s.wall,
                });
            }
        }
        present
    }

    /// Documents whose presence changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<DocId> {
        self.changes.subscribe()
    }
}

impl Table {
    fn drop_conn_from(&mut self, doc: DocId, conn: ConnId) {
        if let Some(seen) = self.docs.get_mut(&doc) {
            seen.retain(|s| s.conn != conn);
            if seen.is_empty() {
                self.docs.remove(&doc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_present_until_its_connection_closes() {
        let presence = Presence::default();
        let doc = DocId::random();
        presence.saw(doc, ConnId(1), "ada");
        presence.saw(doc, ConnId(2), "bob");
        presence.saw(doc, ConnId(1), "ada");
        let peers: Vec<String> = presence.of(doc).into_iter().map(|p| p.peer).collect();
        assert_eq!(peers, ["ada", "bob"]);
        presence.gone(ConnId(1));
        let peers: Vec<String> = presence.of(doc).into_iter().map(|p| p.peer).collect();
        assert_eq!(peers, ["bob"]);
    }

    #[test]
    fn a_connection_is_remembered_for_a_bounded_number_of_documents() {
        let presence = Presence::default();
        let docs: Vec<DocId> = (0..DOCS_PER_CONNECTION + 1)
            .map(|_| DocId::random())
            .collect();
        for doc in &docs {
            presence.saw(*doc, ConnId(7), "ada");
        }
        assert!(presence.of(docs[0]).is_empty(), "the oldest is forgotten");
        assert_eq!(presence.of(docs[DOCS_PER_CONNECTION]).len(), 1);
        assert_eq!(presence.inner.lock().docs.len(), DOCS_PER_CONNECTION);
    }
}
