//! Entry points for fuzzing: the cargo-fuzz targets in `fuzz/` call these,
//! and `engine/tests/fuzz_replay.rs` runs them over the committed corpus
//! and crashers in every test run. Each takes arbitrary bytes and must
//! neither panic nor hang; a panic is the bug report.

use automerge::ActorId;

use crate::id::{Collection, DocId};
use crate::replica::Replica;
use crate::store::{ChunkKind, DocMeta, StoredChunk, StoredDoc};
use crate::sync::{Frame, OpenAccess, RelaySession};

/// The frame decoder: anything that decodes re-encodes to the same frame,
/// and the frames of a packed (version-5) message re-encode, back to back,
/// to a message that decodes to the same frames.
pub fn frame(data: &[u8]) {
    if let Ok(frame) = Frame::decode(data) {
        let again = Frame::decode(&frame.encode());
        assert_eq!(again.ok(), Some(frame), "a decoded frame must round-trip");
    }
    if let Ok(frames) = Frame::decode_message(data) {
        assert!(!frames.is_empty() && frames.len() <= crate::sync::MAX_FRAMES_PER_MESSAGE);
        let packed: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let again = Frame::decode_message(&packed);
        assert_eq!(again.ok(), Some(frames), "a packed message must round-trip");
    }
    let _ = Frame::hello_version(data);
}

/// The automerge-repo message decoder (the `/automerge-repo` door's
/// codec): bounded, and anything it decodes re-encodes to bytes that decode
/// to the same message.
pub fn repo_wire(data: &[u8]) {
    use crate::sync::repo_wire::RepoMessage;
    if let Ok(message) = RepoMessage::decode(data) {
        let again = RepoMessage::decode(&message.encode());
        assert_eq!(
            again.ok(),
            Some(message),
            "a decoded message must round-trip"
        );
    }
}

/// The relay's handshake and session state machine, fed a sequence of
/// frames: `data` is split into messages at each length byte. Automerge
/// panics the session catches (see `uncaught`) are not failures.
pub fn session(data: &[u8]) {
    let Ok(replica) = Replica::open_in_memory() else {
        return;
    };
    let mut session = RelaySession::new("fuzz-relay");
    uncaught(|| {
        for (now, message) in messages(data).enumerate() {
            let _ = session.handle_bytes(message, now as u64, &OpenAccess, &replica);
        }
    });
}

/// The relay's `/automerge-repo` door, fed a sequence of messages (split
/// as for [`session`]): its [`RepoSession`](crate::sync::RepoSession), and
/// the document hubs its routes reach, on one store, as the relay wires
/// them. Nothing may be said after the session closed the connection, and
/// every route must name a document the connection opened first.
pub fn repo_session(data: &[u8]) {
    use std::collections::BTreeMap;

    use crate::sync::repo_session::DEFAULT_COLLECTION;
    use crate::sync::{
        ConnId, DocHub, HubInput, Limits, RelayOutput, RepoOutput, RepoSession, Subscribers,
    };

    let Ok(replica) = Replica::open_in_memory() else {
        return;
    };
    let Ok(default) = Collection::new(DEFAULT_COLLECTION) else {
        return;
    };
    let conn = ConnId(1);
    let mut session = RepoSession::new("fuzz-relay", default, Limits::default(), None);
    let mut listeners = Subscribers::default();
    let mut hubs: BTreeMap<(Collection, DocId), DocHub> = BTreeMap::new();
    uncaught(|| {
        let mut closed = false;
        for (now, message) in messages(data).enumerate() {
            let now = now as u64;
            let out = session.handle_bytes(message, now, &OpenAccess, &replica);
            assert!(!closed || out.is_empty(), "nothing after a close: {out:?}");
            for output in out {
                match output {
                    RepoOutput::Common(RelayOutput::Close { .. }) => closed = true,
                    RepoOutput::Open {
                        doc,
                        collection,
                        write,
                    } => {
                        if let Some(peer) = session.state_key() {
                            listeners.open(conn, peer, &collection, doc, write);
                        }
                    }
                    RepoOutput::Common(RelayOutput::Route {
                        doc,
                        collection,
                        message,
                        want_reply,
                    }) => {
                        assert!(listeners.is_open(conn, &collection, doc), "opened first");
                        let Some(peer) = session.state_key().cloned() else {
                            continue;
                        };
                        let input = HubInput {
                            conn,
                            peer,
                            write: session.can_write(&collection),
                            message,
                            want_reply,
                        };
                        let subscribers = listeners.of_doc(&collection, doc);
                        let hub = hubs
                            .entry((collection.clone(), doc))
                            .or_insert_with(|| DocHub::new(doc, collection));
                        let _ = hub.handle_batch(now, vec![input], &subscribers, &replica);
                    }
                    _ => {}
                }
            }
        }
    });
}

/// Loading stored chunks: the first byte picks the chunk kind (its two low
/// bits: a snapshot, an incremental chunk, or a code this build does not
/// know), whether the chunk's checksums are made valid first (bit 2, so
/// that damage behind the checksum is reached too), and how many heads the
/// metadata claims; the rest is the chunk. Loading must fail with an error
/// naming the document, or succeed, and never panic: a panic inside
/// Automerge must be caught by the engine.
pub fn chunks(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let rest = if first & 4 != 0 {
        with_valid_checksums(rest)
    } else {
        rest.to_vec()
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
            kind: ChunkKind::from_code(first & 3),
            data: rest,
        }],
    };
    let loaded = uncaught(|| crate::replica::load_stored(stored, &ActorId::from(vec![1u8; 16])));
    if let Err(e) = loaded {
        assert!(
            e.to_string()
                .contains(&DocId::from_bytes([7; 16]).to_string()),
            "the error names the document: {e}"
        );
    }
}

/// Runs engine code that must catch every panic of its own (Automerge's,
/// which the engine contains) and returns what it returned; a panic that
/// escapes is raised again as this target's failure. The panic hook is set
/// aside meanwhile, because libFuzzer's aborts the process at any panic,
/// even one the engine goes on to catch; caught panics are announced on
/// stderr.
fn uncaught<T>(work: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("panicked (the engine must catch this): {info}");
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    std::panic::set_hook(hook);
    match outcome {
        Ok(value) => value,
        Err(panic) => panic!(
            "a panic escaped the engine: {}",
            crate::replica::panic_message(panic.as_ref())
        ),
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

/// The budget of the `guard` target: small, so a passing input loads fast.
pub const GUARD_BUDGET: crate::guard::Budget = crate::guard::Budget {
    max_heap_bytes: 32 * 1024 * 1024,
    max_inflated_bytes: 4 * 1024 * 1024,
    max_ops: 20_000,
    max_ops_per_change: 10_000,
    max_changes: 5_000,
    max_actors: 256,
};

/// The guard (`crate::guard`): measuring must never panic, and whatever it
/// passes must load within what it promised. `data` is tried both as
/// chunks (`inspect`, then `load_incremental` into a fresh document) and
/// as a sync message (`inspect_message`, then `receive_sync_message` and a
/// reply, which consults the message's bloom filters). Whatever passes
/// must load within the guard's heap estimate for it, and build no more
/// changes or ops than the guard counted.
///
/// `measure` runs the work it is given and returns the bytes allocated
/// meanwhile: the peak growth of the heap, or an upper bound of it such as
/// the total allocated. The caller supplies it because counting
/// allocations takes an allocator, and this crate forbids unsafe code.
pub fn guard(data: &[u8], measure: &mut dyn FnMut(&mut dyn FnMut()) -> u64) {
    if let Ok(found) = crate::guard::inspect(data, &GUARD_BUDGET) {
        let data = with_valid_checksums(data);
        let again = crate::guard::inspect(&data, &GUARD_BUDGET);
        assert_eq!(again.ok(), Some(found), "checksums changed the verdict");
        let mut doc = automerge::Automerge::new();
        let mut panicked = false;
        let used = measure(&mut || {
            panicked = automerge_panics(|| {
                let _ = doc.load_incremental(&data);
            });
        });
        let bound = found.heap_estimate();
        assert!(used <= bound, "loading {found:?} used {used} bytes");
        if !panicked {
            let stats = automerge::ReadDoc::stats(&doc);
            assert!(stats.num_changes <= found.changes, "{stats:?} vs {found:?}");
            assert!(stats.num_ops <= found.ops, "{stats:?} vs {found:?}");
        }
    }
    let Ok(mut message) = automerge::sync::Message::decode(data) else {
        return;
    };
    if let Ok(found) = crate::guard::inspect_message(&message, &GUARD_BUDGET) {
        use automerge::sync::SyncDoc;
        if !message.changes.is_empty() {
            let chunks: Vec<u8> = message.changes.iter().flatten().copied().collect();
            message.changes = vec![with_valid_checksums(&chunks)].into();
        }
        let mut doc = automerge::Automerge::new();
        let mut state = automerge::sync::State::new();
        let mut message = Some(message);
        let used = measure(&mut || {
            let Some(message) = message.take() else {
                return;
            };
            automerge_panics(|| {
                if doc.receive_sync_message(&mut state, message).is_ok() {
                    let _ = doc.generate_sync_message(&mut state);
                }
            });
        });
        let bound = found.heap_estimate();
        assert!(used <= bound, "receiving {found:?} used {used} bytes");
    }
}

/// Runs Automerge's `work` and tells whether it panicked. automerge 0.12
/// panics on some well-formed but inconsistent input (a change naming an
/// actor the document does not know, at `op_set2/change/batch.rs:1121`),
/// which no size check can tell from valid input without the document:
/// callers of Automerge must catch that themselves. The panic is announced
/// on stderr, not raised, so fuzzing goes on looking for the guard's own
/// failures; the panic hook is set aside meanwhile because libFuzzer's
/// aborts the process.
fn automerge_panics(work: impl FnOnce()) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("automerge panicked (its bug, not the guard's): {info}");
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    std::panic::set_hook(hook);
    outcome.is_err()
}

/// `data` with every chunk's checksum made valid, so that Automerge goes
/// on to build what a forged chunk describes instead of stopping at its
/// checksum (a fuzzer cannot forge SHA-256). Chunks are copied as they
/// are from the first one whose header does not parse.
pub(crate) fn with_valid_checksums(data: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = data.to_vec();
    let mut at = 0;
    while let Some((kind, body)) = chunk_at(data, at) {
        let hash = match kind {
            2 => {
                let mut inflated = Vec::new();
                let mut decoder = flate2::bufread::DeflateDecoder::new(&data[body.clone()]);
                if std::io::Read::read_to_end(&mut decoder, &mut inflated).is_err() {
                    break;
                }
                Sha256::new()
                    .chain_update(chunk_prefix(1, inflated.len()))
                    .chain_update(&inflated)
                    .finalize()
            }
            _ => Sha256::new()
                .chain_update(chunk_prefix(kind, body.len()))
                .chain_update(&data[body.clone()])
                .finalize(),
        };
        out[at + 4..at + 8].copy_from_slice(&hash[..4]);
        at = body.end;
    }
    out
}

/// The type and body range of the chunk starting at `at`, if its header
/// parses and its body is all there.
fn chunk_at(data: &[u8], at: usize) -> Option<(u8, std::ops::Range<usize>)> {
    let header = data.get(at..)?;
    if header.get(..4)? != [0x85, 0x6f, 0x4a, 0x83] {
        return None;
    }
    let kind = *header.get(8)?;
    let (mut len, mut shift, mut pos) = (0usize, 0u32, 9);
    loop {
        let byte = *header.get(pos)?;
        len |= usize::from(byte & 0x7f).checked_shl(shift)?;
        pos += 1;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let start = at + pos;
    let end = start.checked_add(len)?;
    (end <= data.len()).then_some((kind, start..end))
}

/// The bytes a chunk's hash covers before its body: type and length.
fn chunk_prefix(kind: u8, len: usize) -> Vec<u8> {
    let mut prefix = vec![kind];
    let mut len = len as u64;
    while len >= 0x80 {
        prefix.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    prefix.push(len as u8);
    prefix
}

/// An encoded sync message whose one change chunk is a DEFLATE bomb that
/// inflates to `inflated` bytes of zeros (about 1 KiB sent per MiB
/// inflated): what the guard must refuse before Automerge sees it. For
/// tests that send it to a real relay or client.
pub fn bomb_sync_message(inflated: u64) -> Vec<u8> {
    use automerge::sync::{ChunkList, Message, MessageVersion};
    let chunk = bomb_chunk(inflated);
    Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![chunk]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

/// A compressed change chunk (what a saved file may hold) that inflates to
/// `inflated` bytes of zeros.
pub fn bomb_chunk(inflated: u64) -> Vec<u8> {
    crate::guard::forge::chunk(2, &crate::guard::forge::zeros_bomb(inflated))
}
