//! A raw protocol client for tests: speak frames to a relay directly, to
//! send what no well-behaved replica would (the engine's hidden `testing`
//! module, shared with the relay's tests), plus what only these tests use.

pub use accord_engine::testing::*;

/// A sync message carrying the whole of `doc`, as a peer that has nothing
/// would receive it.
pub fn full_sync(mut doc: accord_engine::automerge::Automerge) -> Vec<u8> {
    use accord_engine::automerge::sync::{State, SyncDoc};
    use accord_engine::automerge::Automerge;
    let mut ours = State::new();
    let mut theirs = State::new();
    // Run the exchange an empty peer would have until the doc is offered.
    let mut to_full = Automerge::new()
        .generate_sync_message(&mut theirs)
        .expect("hello from empty");
    loop {
        doc.receive_sync_message(&mut ours, to_full)
            .expect("receive");
        let offer = doc.generate_sync_message(&mut ours).expect("offer");
        if !offer.changes.is_empty() {
            return offer.encode();
        }
        let mut scratch = Automerge::new();
        scratch
            .receive_sync_message(&mut theirs, offer)
            .expect("receive offer");
        to_full = scratch.generate_sync_message(&mut theirs).expect("reply");
    }
}
