//! Exchanges started right behind `Hello`, before the relay answered.
//!
//! A replica that reconnects with local changes made since its cursor
//! would otherwise wait one round trip for `Welcome` and the listing
//! before its first `Sync`. Those documents were synced with the relay
//! before (the cursor says so) and have a stored sync state under the
//! relay the cursor names, so their first message can go at once: the
//! relay handles a connection's frames in order, and answers it with the
//! listing (protocol.md, section 6). Automerge sends changes only once it
//! learnt what the peer has, which would cost another round trip; the
//! stored state says what the relay held at the end of the last sync, so
//! where the cursor says the relay let this replica write the collection,
//! the first message brings the changes made since
//! ([`Exchange::offer_changes_at_once`]). Otherwise it carries only heads
//! and a summary, which needs no right to write. At most [`EARLY_BYTES`]
//! go before `Welcome`; a message with changes that does not fit is sent
//! without them.
//!
//! If the right to write was withdrawn since, the relay confirms the
//! subscription read-only before it refuses the changes, and the refusal
//! restarts the exchange read-only (`on_error`).
//!
//! If `Welcome` names another relay than the cursor did, the early
//! exchanges are forgotten: their states belong to the other relay. The
//! relay's answers are then handled as the start of fresh exchanges, which
//! Automerge's protocol allows from any state.

use super::{ClientSession, DocSync, Hold};
use crate::id::{Collection, DocId, PeerId};
use crate::sync::exchange::Exchange;
use crate::sync::SyncDocs;

/// The most bytes of early `Sync` frames' messages sent before `Welcome`
/// (the relay accepts 64 KiB before the handshake completes).
pub const EARLY_BYTES: usize = 32 * 1024;

/// The most documents looked at for an early start, over all collections:
/// `Hello` waits for them (each costs a read of its sync state and a
/// message), so a replica that wrote thousands of records offline does not
/// delay its connection; the rest are offered after the listing.
pub const EARLY_DOCS: usize = 64;

/// How an early exchange starts.
#[derive(Debug, Clone, Copy)]
struct Start<'a> {
    /// The relay whose stored state it resumes from (the cursor's).
    relay: &'a PeerId,
    /// Whether its first message brings the changes made since.
    eager: bool,
}

impl ClientSession {
    /// Starts the exchanges of documents written since their collection's
    /// stored cursor that have a stored sync state under its relay.
    pub(super) fn start_early(&mut self, now: u64, docs: &dyn SyncDocs) {
        let mut budget = EARLY_BYTES;
        let mut looked_at = 0;
        let collections: Vec<Collection> = self.config.collections.iter().cloned().collect();
        for collection in collections {
            let Some(cursor) = self.cursor(&collection).cloned() else {
                continue;
            };
            let left = EARLY_DOCS - looked_at;
            let Ok(written) = docs.summaries_since(&collection, cursor.local_seq, left) else {
                continue; // the listing finds them
            };
            looked_at += written.len();
            for numbered in written {
                if numbered.summary.deleted {
                    continue;
                }
                let doc = numbered.summary.doc;
                let start = Start {
                    relay: &cursor.relay,
                    eager: cursor.write,
                };
                if !self.start_one(now, doc, &collection, start, &mut budget, docs) {
                    return;
                }
            }
            if looked_at >= EARLY_DOCS {
                return;
            }
        }
    }

    /// Sends the first message of `doc`'s exchange if it has a stored
    /// state and fits in `budget`; returns whether to go on.
    fn start_one(
        &mut self,
        now: u64,
        doc: DocId,
        collection: &Collection,
        start: Start<'_>,
        budget: &mut usize,
        docs: &dyn SyncDocs,
    ) -> bool {
        let Ok(Some(state)) = docs.load_sync_state(start.relay, &doc) else {
            return true;
        };
        let first = |eager: bool| {
            let mut exchange = Exchange::resume(Some(state.clone()));
            if eager {
                exchange.offer_changes_at_once();
            }
            match exchange.generate(docs, &doc, collection, now) {
                Ok(Some(outgoing)) => {
                    let message = outgoing.message.encode();
                    Some((exchange, outgoing.want_reply, message))
                }
                _ => None,
            }
        };
        let mut generated = first(start.eager);
        if start.eager
            && generated
                .as_ref()
                .is_some_and(|(_, _, m)| m.len() > *budget)
        {
            generated = first(false);
        }
        let Some((exchange, want_reply, message)) = generated else {
            return true;
        };
        if message.len() > *budget {
            return false;
        }
        *budget -= message.len();
        if want_reply {
            self.in_flight += 1;
        }
        self.docs.insert(
            doc,
            DocSync {
                collection: collection.clone(),
                exchange,
                relay_heads: None,
                relay_deleted: false,
                delete_sent: false,
                sent: false,
                hold: Hold::Free,
            },
        );
        self.early.push((doc, start.relay.clone()));
        self.count_sent(message.len());
        self.out
            .push(super::ClientOutput::Send(crate::sync::Frame::Sync {
                doc,
                collection: collection.to_string(),
                message,
                want_reply,
            }));
        true
    }

    /// `Welcome` named `relay`: early exchanges started with another
    /// relay's states are forgotten.
    pub(super) fn welcomed_by(&mut self, relay: &PeerId) {
        for (doc, started_with) in std::mem::take(&mut self.early) {
            if started_with == *relay {
                continue;
            }
            if let Some(d) = self.docs.remove(&doc) {
                if d.exchange.in_flight() {
                    self.in_flight -= 1;
                }
            }
        }
    }
}
