//! The pieces of a replica's document handling that another store needs
//! to behave exactly as a replica does when it implements
//! [`SyncDocs`](crate::sync::SyncDocs) itself: the relay's PostgreSQL
//! store uses them, so a cluster node answers peers with the same batches,
//! projects the same JSON and answers `covers` the same way as the
//! SQLite relay.

use automerge::sync::{Message, State};
use automerge::Automerge;

use crate::id::Heads;

/// The next sync message of `doc` for the peer of `state`, holding at
/// most `max_bytes` bytes and `max_ops` ops of changes (oldest first; the
/// rest goes in later rounds), as [`Replica`](crate::Replica) generates
/// it. `stored_bytes` is the document's stored size.
pub fn generate_within(
    doc: &Automerge,
    state: &mut State,
    stored_bytes: u64,
    max_bytes: usize,
    max_ops: usize,
) -> Option<Message> {
    let batch = super::batches::Batch {
        bytes: max_bytes,
        ops: max_ops,
    };
    super::batches::generate(doc, state, stored_bytes, batch)
}

/// The JSON text a replica's `records` projection holds for `doc`, and
/// how many conflicting values it has.
pub fn projection(doc: &Automerge) -> (String, i64) {
    let projected = super::query::project_content(doc);
    (projected.json, projected.conflicts)
}

/// Whether the history of `doc` up to `of` contains every change in
/// `heads`; `None` while `of` names changes `doc` does not have (see
/// [`SyncDocs::covers`](crate::sync::SyncDocs::covers)).
pub fn covers(doc: &Automerge, heads: &Heads, of: &Heads) -> Option<bool> {
    super::remote::covers_in(doc, heads, of)
}
