//! What the sans-IO session tests share: a relay session welcomed on a
//! store, and every frame it sends until it owes no listing.

use accord_engine::sync::{Announcing, Frame, OpenAccess, RelayOutput, RelaySession};
use accord_engine::Replica;

/// A relay session named `relay`, welcomed in protocol `version`.
pub fn welcomed(store: &Replica, version: u32) -> (RelaySession, Vec<RelayOutput>) {
    let mut session = RelaySession::new("relay");
    let hello = Frame::Hello {
        version,
        peer_id: "peer".into(),
        token: String::new(),
    };
    let out = session.handle_frame(hello, 0, &OpenAccess, store);
    (session, out)
}

/// The frames among `out`, then every page of the listings owed.
pub fn drain(session: &mut RelaySession, store: &Replica, mut out: Vec<RelayOutput>) -> Vec<Frame> {
    loop {
        match session.next_announcement(0, store) {
            Announcing::Page(page) => out.extend(page),
            Announcing::Idle => break,
            Announcing::NotBefore(_) => panic!("unlimited sessions are never paced"),
        }
    }
    out.into_iter()
        .filter_map(|o| match o {
            RelayOutput::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}
