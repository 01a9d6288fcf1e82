//! The relay's side of one document: every peer's sync state and the
//! policy that decides what each of them is sent.
//!
//! A hub belongs to one (collection, document) pair: two collections never
//! share one, so a frame naming the wrong collection can never make a
//! document's content flow to a peer that was not granted it. The relay
//! runs each hub in an actor that only carries messages; the simulation
//! calls the same methods. Per batch of incoming messages
//! ([`DocHub::handle_batch`]):
//!
//! 1. each message is applied (and persisted, by [`SyncDocs::receive`])
//!    for its peer, attaching the peer first; a message that fails is
//!    answered with an error frame whose code says whose fault it was
//!    ([`super::error_code`]: bad data, wrong collection, or
//!    `storage_unavailable`, which the peer retries later);
//! 2. peers no longer subscribed to the collection are detached;
//! 3. if the document changed, every subscriber is attached, so it hears
//!    of the change;
//! 4. every attached peer gets at most one message covering all of it
//!    (Automerge's in-flight rule holds further ones until it answers), a
//!    heads-only answer if it asked for one and Automerge has nothing, and
//!    exchanges whose answer is overdue restart from the shared heads;
//!    peers whose exchanges are in the same state (readers keeping up)
//!    share one generated and encoded message ([`super::exchange`]'s
//!    `Generated`);
//! 5. sync states whose shared heads moved are persisted.

use std::collections::BTreeMap;

use automerge::sync::Message;

use super::exchange::{heads_only, Exchange, Generated};
use super::protocol::{ErrorCode, Frame};
use super::registry::{ConnId, Subscriber};
use super::{error_code, error_text, EncodedState, SyncDocs};
use crate::error::Error;
use crate::id::{Collection, DocId, PeerId};

/// A sync message on its way into a hub.
#[derive(Debug)]
pub struct HubInput {
    /// The sending connection.
    pub conn: ConnId,
    /// The peer behind it.
    pub peer: PeerId,
    /// Whether it may change the document (a read-only peer's changes are
    /// never applied, and it is told so).
    pub write: bool,
    /// The decoded message.
    pub message: Message,
    /// Whether the sender waits for an answer.
    pub want_reply: bool,
}

/// What a hub asks its runtime to do, and what happened.
#[derive(Debug, Default)]
pub struct HubOutput {
    /// Frames to send, in order.
    pub frames: Vec<(ConnId, Frame)>,
    /// Whether the document changed.
    pub changed: bool,
    /// Failures, for the operator's logs and counters (the peers
    /// concerned were sent an error frame already).
    pub failures: Vec<HubFailure>,
}

/// Something that went wrong in a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFailure {
    /// The connection concerned, if one is.
    pub conn: Option<ConnId>,
    /// The code it was (or would be) told.
    pub code: ErrorCode,
    /// The full error, for logs.
    pub error: String,
}

/// One peer attached to a hub.
#[derive(Debug)]
struct HubPeer {
    /// The peer's id (its sync states are persisted under it).
    peer: PeerId,
    /// The exchange with it.
    exchange: Exchange,
    /// Whether it waits for an answer to its last message.
    owes_reply: bool,
}

/// One document at the relay and every peer syncing it.
#[derive(Debug)]
pub struct DocHub {
    /// The document.
    doc: DocId,
    /// Its collection.
    collection: Collection,
    /// Attached peers by connection.
    peers: BTreeMap<ConnId, HubPeer>,
    /// States of detached peers not persisted yet.
    leaving: Vec<(PeerId, EncodedState)>,
    /// The document changed in the store without a peer's message (a
    /// write through the relay's HTTP API): the next batch tells every
    /// subscriber, as for a change a peer sent.
    changed_in_store: bool,
}

impl DocHub {
    /// A hub with no peers.
    pub fn new(doc: DocId, collection: Collection) -> Self {
        DocHub {
            doc,
            collection,
            peers: BTreeMap::new(),
            leaving: Vec::new(),
            changed_in_store: false,
        }
    }

    /// The document.
    pub fn doc(&self) -> DocId {
        self.doc
    }

    /// Its collection.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// Whether connection `conn` is attached.
    pub fn is_attached(&self, conn: ConnId) -> bool {
        self.peers.contains_key(&conn)
    }

    /// How many peers are attached.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// When the hub next needs [`DocHub::tick`]: the earliest time an
    /// answer becomes overdue.
    pub fn next_deadline(&self) -> Option<u64> {
        self.peers
            .values()
            .filter_map(|p| p.exchange.deadline())
            .min()
    }

    /// Applies a batch of messages and answers every attached peer (the
    /// policy in the module documentation). `subscribers` are the
    /// collection's subscribers now.
    pub fn handle_batch(
        &mut self,
        now: u64,
        inputs: Vec<HubInput>,
        subscribers: &[Subscriber],
        docs: &dyn SyncDocs,
    ) -> HubOutput {
        let mut out = HubOutput {
            changed: std::mem::take(&mut self.changed_in_store),
            ..HubOutput::default()
        };
        for input in inputs {
            self.receive(input, docs, &mut out);
        }
        self.detach_unsubscribed(subscribers);
        if out.changed {
            for s in subscribers {
                self.attach(s.conn, &s.peer, s.write, docs, &mut out);
            }
        }
        self.flush(now, docs, &mut out);
        self.save_states(docs, &mut out);
        out
    }

    /// The document changed in the store by a write that no peer sent (the
    /// relay's own API): the next [`DocHub::handle_batch`], with or
    /// without messages, offers the change to every subscriber.
    pub fn store_changed(&mut self) {
        self.changed_in_store = true;
    }

    /// Time passed: restarts exchanges whose answer is overdue.
    pub fn tick(&mut self, now: u64, subscribers: &[Subscriber], docs: &dyn SyncDocs) -> HubOutput {
        if self.peers.values().any(|p| p.exchange.stalled(now)) {
            return self.handle_batch(now, Vec::new(), subscribers, docs);
        }
        HubOutput::default()
    }

    /// The hub stops (idle, or the relay shuts down): persists every
    /// peer's state that moved.
    pub fn close(mut self, docs: &dyn SyncDocs) -> HubOutput {
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            self.detach(conn);
        }
        let mut out = HubOutput::default();
        self.save_states(docs, &mut out);
        out
    }

    /// Attaches a connection, resuming from its persisted state if any.
    fn attach(
        &mut self,
        conn: ConnId,
        peer: &PeerId,
        write: bool,
        docs: &dyn SyncDocs,
        out: &mut HubOutput,
    ) {
        if let Some(attached) = self.peers.get_mut(&conn) {
            attached.exchange.set_read_only(!write);
            return;
        }
        let state = match docs.load_sync_state(peer, &self.doc) {
            Ok(state) => state,
            Err(e) => {
                // Only costs the peer a fuller exchange.
                out.failures.push(self.failure(Some(conn), &e));
                None
            }
        };
        let mut exchange = Exchange::resume(state);
        exchange.set_read_only(!write);
        let attached = HubPeer {
            peer: peer.clone(),
            exchange,
            owes_reply: false,
        };
        self.peers.insert(conn, attached);
    }

    /// Detaches a connection, keeping its state to persist.
    fn detach(&mut self, conn: ConnId) {
        if let Some(mut gone) = self.peers.remove(&conn) {
            if let Some(state) = gone.exchange.take_dirty(self.doc) {
                self.leaving.push((gone.peer, state));
            }
        }
    }

    fn detach_unsubscribed(&mut self, subscribers: &[Subscriber]) {
        let gone: Vec<ConnId> = self
            .peers
            .keys()
            .filter(|conn| !subscribers.iter().any(|s| s.conn == **conn))
            .copied()
            .collect();
        for conn in gone {
            self.detach(conn);
        }
    }

    fn receive(&mut self, input: HubInput, docs: &dyn SyncDocs, out: &mut HubOutput) {
        let HubInput {
            conn,
            peer,
            write,
            message,
            want_reply,
        } = input;
        self.attach(conn, &peer, write, docs, out);
        let Some(attached) = self.peers.get_mut(&conn) else {
            return;
        };
        attached.owes_reply |= want_reply;
        attached.exchange.answered(&message);
        let received = attached
            .exchange
            .receive(docs, &self.doc, &self.collection, message, &peer);
        match received {
            Ok(changed) => out.changed |= changed,
            Err(e) => self.refuse(conn, &e, out),
        }
    }

    /// Tells a peer its message or our answer failed; a peer that named
    /// the wrong collection is detached (nothing here is for it).
    fn refuse(&mut self, conn: ConnId, error: &Error, out: &mut HubOutput) {
        let failure = self.failure(Some(conn), error);
        let frame = Frame::error(failure.code, error_text(error), Some(self.doc));
        out.frames.push((conn, frame));
        if failure.code == ErrorCode::WRONG_COLLECTION {
            self.peers.remove(&conn);
        }
        out.failures.push(failure);
    }

    fn failure(&self, conn: Option<ConnId>, error: &Error) -> HubFailure {
        HubFailure {
            conn,
            code: error_code(error),
            error: error.to_string(),
        }
    }

    /// Generates the next message for every attached peer.
    fn flush(&mut self, now: u64, docs: &dyn SyncDocs, out: &mut HubOutput) {
        let mut failed = Vec::new();
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        let mut pass = Generated::default();
        for (i, &conn) in conns.iter().enumerate() {
            let more = i + 1 < conns.len();
            match self.next_message(conn, now, docs, &mut pass, more) {
                Ok(Some(frame)) => out.frames.push((conn, frame)),
                Ok(None) => {}
                Err(e) => failed.push((conn, e)),
            }
        }
        for (conn, e) in failed {
            self.refuse(conn, &e, out);
        }
    }

    /// The next frame for one attached peer, if it is owed one (`pass`:
    /// the messages this flush generated so far, `more`: whether other
    /// peers follow).
    fn next_message(
        &mut self,
        conn: ConnId,
        now: u64,
        docs: &dyn SyncDocs,
        pass: &mut Generated,
        more: bool,
    ) -> crate::Result<Option<Frame>> {
        let (doc, collection) = (self.doc, &self.collection);
        let Some(peer) = self.peers.get_mut(&conn) else {
            return Ok(None);
        };
        if peer.exchange.stalled(now) {
            peer.exchange.restart();
        }
        let generated = peer
            .exchange
            .generate_encoded(docs, &doc, collection, now, pass, more)?;
        let (want_reply, message) = match generated {
            Some(generated) => generated,
            None if peer.owes_reply => {
                let heads = docs.heads(&doc)?;
                let outgoing = peer.exchange.sent(heads_only(heads.into_vec()), now);
                (outgoing.want_reply, outgoing.message.encode())
            }
            None => return Ok(None),
        };
        peer.owes_reply = false;
        Ok(Some(Frame::Sync {
            doc,
            collection: collection.to_string(),
            message,
            want_reply,
        }))
    }

    /// Persists the states that moved, grouped by peer.
    fn save_states(&mut self, docs: &dyn SyncDocs, out: &mut HubOutput) {
        let mut by_peer: BTreeMap<PeerId, Vec<EncodedState>> = BTreeMap::new();
        for (peer, state) in self.leaving.drain(..) {
            by_peer.entry(peer).or_default().push(state);
        }
        for attached in self.peers.values_mut() {
            if let Some(state) = attached.exchange.take_dirty(self.doc) {
                by_peer
                    .entry(attached.peer.clone())
                    .or_default()
                    .push(state);
            }
        }
        for (peer, states) in by_peer {
            if let Err(e) = docs.save_sync_states(&peer, states) {
                // Losing a sync state costs a fuller exchange, not data.
                out.failures.push(self.failure(None, &e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Replica;

    #[test]
    fn a_change_made_in_the_store_is_offered_to_every_subscriber() {
        let relay = Replica::open_in_memory().expect("replica");
        let collection = Collection::new("contacts").expect("collection");
        let doc = relay
            .create("contacts", &serde_json::json!({"name": "Ada"}))
            .expect("create");
        let mut hub = DocHub::new(doc, collection);
        let subscribers = [Subscriber {
            conn: ConnId(7),
            peer: PeerId::new("phone").expect("peer id"),
            write: true,
        }];
        let quiet = hub.handle_batch(0, Vec::new(), &subscribers, &relay);
        assert!(quiet.frames.is_empty(), "nothing happened yet");
        hub.store_changed();
        let out = hub.handle_batch(1, Vec::new(), &subscribers, &relay);
        assert!(out.changed);
        assert!(
            matches!(out.frames.as_slice(), [(ConnId(7), Frame::Sync { doc: d, .. })] if *d == doc),
            "the subscriber is offered the document: {:?}",
            out.frames
        );
        let again = hub.handle_batch(2, Vec::new(), &subscribers, &relay);
        assert!(!again.changed, "told once");
    }

    #[test]
    fn every_reader_whose_shared_heads_moved_has_its_state_saved_after_the_batch() {
        use automerge::sync::{State, SyncDoc};
        use automerge::Automerge;
        let relay = Replica::open_in_memory().expect("replica");
        let collection = Collection::new("contacts").expect("collection");
        let doc = relay
            .create("contacts", &serde_json::json!({"name": "Ada"}))
            .expect("create");
        let readers: Vec<Subscriber> = (1..=3)
            .map(|i| Subscriber {
                conn: ConnId(i),
                peer: PeerId::new(format!("reader-{i}")).expect("peer id"),
                write: true,
            })
            .collect();
        let mut hub = DocHub::new(doc, collection);
        // Each reader asks from nothing; the hub's answers bring the
        // document; each reader's acknowledgement moves its shared heads.
        let mut copies: Vec<(Automerge, State)> = readers
            .iter()
            .map(|_| (Automerge::new(), State::new()))
            .collect();
        let ask = |copies: &mut Vec<(Automerge, State)>| -> Vec<HubInput> {
            readers
                .iter()
                .zip(copies.iter_mut())
                .filter_map(|(r, (copy, state))| {
                    let message = copy.generate_sync_message(state)?;
                    Some(HubInput {
                        conn: r.conn,
                        peer: r.peer.clone(),
                        write: true,
                        message,
                        want_reply: true,
                    })
                })
                .collect()
        };
        for round in 0..4 {
            let inputs = ask(&mut copies);
            let out = hub.handle_batch(round, inputs, &readers, &relay);
            assert!(out.failures.is_empty(), "{:?}", out.failures);
            for (conn, frame) in out.frames {
                let Frame::Sync { message, .. } = frame else {
                    continue;
                };
                let message = automerge::sync::Message::decode(&message).expect("message");
                let (copy, state) = &mut copies[conn.0 as usize - 1];
                copy.receive_sync_message(state, message).expect("apply");
            }
        }
        let heads = relay.heads(&doc).expect("heads").to_vec();
        for r in &readers {
            let saved = relay
                .load_sync_state(&r.peer, &doc)
                .expect("read")
                .unwrap_or_else(|| panic!("{} has a saved state", r.peer));
            assert_eq!(saved.shared_heads, heads, "{}", r.peer);
        }
    }
}
