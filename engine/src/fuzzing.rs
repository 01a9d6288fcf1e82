//! Entry points for fuzzing: the cargo-fuzz targets in `fuzz/` call these,
//! and `engine/tests/fuzz_replay.rs` runs them over the committed corpus
//! and crashers in every test run. Each takes arbitrary bytes and must
//! neither panic nor hang; a panic is the bug report.

use automerge::ActorId;

use crate::id::{Collection, DocId};
use crate::replica::Replica;
use crate::store::{ChunkKind, DocMeta, StoredChunk, StoredDoc};
use crate::sync::{Frame, OpenAccess, RelaySession};

/// The frame decoder: anything that decodes re-encodes to the same frame.
pub fn frame(data: &[u8]) {
    if let Ok(frame) = Frame::decode(data) {
        let again = Frame::decode(&frame.encode());
        assert_eq!(again.ok(), Some(frame), "a decoded frame must round-trip");
    }
    let _ = Frame::hello_version(data);
}

/// The relay's handshake and session state machine, fed a sequence of
/// frames: `data` is split into messages at each length byte.
pub fn session(data: &[u8]) {
    let Ok(replica) = Replica::open_in_memory() else {
        return;
    };
    let mut session = RelaySession::new("fuzz-relay");
    for (now, message) in messages(data).enumerate() {
        let _ = session.handle_bytes(message, now as u64, &OpenAccess, &replica);
    }
}

/// Loading stored chunks: the first byte picks the chunk kind and how many
/// heads the metadata claims; the rest is the chunk. Loading must fail with
/// an error naming the document, or succeed, and never panic.
pub fn chunks(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let heads = (0..usize::from(first >> 4) % 3)
        .map(|i| automerge::ChangeHash([i as u8; 32]))
        .collect::<Vec<_>>()
        .into();
    let meta = DocMeta {
        id: DocId::from_bytes([7; 16]),
        collection: Collection::new("fuzz").unwrap_or_else(|_| unreachable!("a valid name")),
        deleted: false,
        deleted_at: None,
        heads,
        change_count: 0,
        size_bytes: rest.len() as u64,
        chunk_count: 1,
        created_at: 0,
        updated_at: 0,
    };
    let stored = StoredDoc {
        meta,
        chunks: vec![StoredChunk {
            seq: 1,
            kind: ChunkKind::from_code(first & 1),
            data: rest.to_vec(),
        }],
    };
    if let Err(e) = crate::replica::load_stored(stored, &ActorId::from(vec![1u8; 16])) {
        assert!(
            e.to_string()
                .contains(&DocId::from_bytes([7; 16]).to_string()),
            "the error names the document: {e}"
        );
    }
}

/// Splits `data` into messages, each prefixed by its length (one byte).
fn messages(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = data.split_first()?;
        let take = usize::from(len).min(rest.len());
        let (message, tail) = rest.split_at(take);
        data = tail;
        Some(message)
    })
}
