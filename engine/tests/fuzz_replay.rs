//! Replays the committed fuzzing corpus and crashers (`fuzz/corpus/<target>`
//! and `fuzz/regressions/<target>`) through the fuzz entry points, so every
//! bug fuzzing ever found stays fixed. See `fuzz/README.md`.

use std::path::PathBuf;
use std::sync::Mutex;

use accord_engine::fuzzing;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts allocations, for the guard target's heap check.
#[global_allocator]
static HEAP: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Replays run one at a time, so the guard's heap check counts no other
/// replay's allocations.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Bytes allocated while `work` runs: an upper bound of its peak growth.
fn allocated(work: &mut dyn FnMut()) -> u64 {
    let region = Region::new(HEAP);
    work();
    region.change().bytes_allocated as u64
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                let bytes = std::fs::read(&path).expect("readable corpus file");
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (path, bytes) in files {
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{target} panics on {}", path.display());
    }
}

#[test]
fn frame_corpus() {
    replay("frame", fuzzing::frame);
}

#[test]
fn repo_wire_corpus() {
    replay("repo_wire", fuzzing::repo_wire);
}

#[test]
fn repo_session_corpus() {
    replay("repo_session", fuzzing::repo_session);
}

#[test]
fn session_corpus() {
    replay("session", fuzzing::session);
}

#[test]
fn chunks_corpus() {
    replay("chunks", fuzzing::chunks);
}

#[test]
fn guard_corpus() {
    replay("guard", |data| fuzzing::guard(data, &mut allocated));
}

/// Writes the seed corpus (valid frames, a session, real chunks) when
/// `ACCORD_REGENERATE_CORPUS=1`; otherwise does nothing.
#[test]
fn regenerate_seed_corpus() {
    if std::env::var_os("ACCORD_REGENERATE_CORPUS").is_none() {
        return;
    }
    use accord_engine::automerge::sync::{State, SyncDoc};
    use accord_engine::sync::{DocSummary, ErrorCode, Frame, PROTOCOL_VERSION};
    use accord_engine::{DocId, Replica};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::write(root.join(target).join(name), bytes).expect("write seed");
    };
    let replica = Replica::open_in_memory().expect("replica");
    let id = replica
        .create("c", &serde_json::json!({"name": "Ada", "tags": ["x"]}))
        .expect("create");
    replica
        .put(&id, "name", &serde_json::json!("Ada L."), None)
        .expect("put");
    let doc =
        accord_engine::automerge::Automerge::load(&replica.save(&id).expect("save")).expect("load");
    let sync = doc
        .generate_sync_message(&mut State::new())
        .expect("message")
        .encode();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: "p".into(),
        token: "t".into(),
    };
    let frames = [
        ("hello", hello.encode()),
        (
            "subscribe",
            Frame::Subscribe {
                collections: vec!["c".into()],
            }
            .encode(),
        ),
        (
            "sync",
            Frame::Sync {
                doc: id,
                collection: "c".into(),
                message: sync.clone(),
                want_reply: true,
            }
            .encode(),
        ),
        (
            "delete",
            Frame::Delete {
                doc: id,
                collection: "c".into(),
            }
            .encode(),
        ),
        (
            "announce",
            Frame::Announce {
                collection: "c".into(),
                docs: vec![DocSummary {
                    doc: DocId::random(),
                    heads: Default::default(),
                    deleted: false,
                }],
                complete: true,
            }
            .encode(),
        ),
        (
            "error",
            Frame::error(ErrorCode::FORBIDDEN, "no", Some(id)).encode(),
        ),
    ];
    let mut session = Vec::new();
    for (name, bytes) in &frames {
        write("frame", name, bytes);
        if bytes.len() < 256 {
            session.push(bytes.len() as u8);
            session.extend_from_slice(bytes);
        }
    }
    write("session", "hello-subscribe-delete", &session);
    // Version 5: Hello, Subscribe and Delete packed in one message.
    let by_name = |wanted: &str| {
        frames
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, bytes)| bytes.clone())
            .expect("a seed frame")
    };
    let packed = [by_name("hello"), by_name("subscribe"), by_name("delete")].concat();
    write("frame", "packed", &packed);
    let mut one_message = vec![packed.len() as u8];
    one_message.extend_from_slice(&packed);
    write("session", "packed-hello", &one_message);
    let mut snapshot = vec![0u8];
    snapshot.extend(replica.save(&id).expect("save"));
    write("chunks", "snapshot", &snapshot);
    let mut incremental = vec![0x11u8];
    incremental.extend(doc.save_after(&[]));
    write("chunks", "incremental-two-heads-claimed", &incremental);
}

/// Writes the guard target's seeds (a saved document with compressed
/// columns, change chunks plain and compressed, a sync message and its
/// chunks, a DEFLATE bomb) when `ACCORD_REGENERATE_CORPUS=1`.
#[test]
fn regenerate_guard_seed_corpus() {
    if std::env::var_os("ACCORD_REGENERATE_CORPUS").is_none() {
        return;
    }
    use std::io::Write;

    use accord_engine::automerge::sync::{State, SyncDoc};
    use accord_engine::automerge::transaction::Transactable;
    use accord_engine::automerge::{AutoCommit, ObjType, ROOT};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/guard");
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(root.join(name), bytes).expect("write seed");
    };
    let mut doc = AutoCommit::new();
    let list = doc.put_object(ROOT, "list", ObjType::List).expect("list");
    for i in 0..60i64 {
        doc.put(ROOT, format!("k{}", i % 5), i).expect("put");
        let item = format!("item {i}, long enough that save() deflates this column");
        doc.insert(&list, 0, item).expect("insert");
        if i % 6 == 0 {
            doc.commit();
        }
    }
    doc.commit();
    let doc = doc.document().clone();
    write("document", &doc.save());
    write("save-after", &doc.save_after(&[]));
    let compressed: Vec<u8> = doc
        .get_changes(&[])
        .into_iter()
        .flat_map(|mut c| c.bytes().into_owned())
        .collect();
    write("compressed-changes", &compressed);
    // The first message only announces heads; the reply asks for changes.
    let (mut ours, mut theirs) = (State::new(), State::new());
    let mut empty = accord_engine::automerge::Automerge::new();
    let hello = doc.generate_sync_message(&mut ours).expect("message");
    empty
        .receive_sync_message(&mut theirs, hello)
        .expect("receive");
    let reply = empty.generate_sync_message(&mut theirs).expect("reply");
    let mut doc = doc;
    doc.receive_sync_message(&mut ours, reply).expect("receive");
    let message = doc.generate_sync_message(&mut ours).expect("changes");
    let chunks: Vec<u8> = message.changes.iter().flatten().copied().collect();
    write("sync-message-chunks", &chunks);
    write("sync-message", &message.encode());
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..8 {
        encoder.write_all(&[0u8; 1024 * 1024]).expect("deflate");
    }
    let bomb = encoder.finish().expect("deflate");
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    let mut len = bomb.len();
    while len >= 0x80 {
        chunk.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    chunk.push(len as u8);
    chunk.extend(bomb);
    write("compressed-change-inflating-to-8-mib", &chunk);
}

/// Writes the `repo_session` target's seeds (a join, then a document
/// created, requested, deleted, garbage and a stranger's message) when
/// `ACCORD_REGENERATE_CORPUS=1`.
#[test]
fn regenerate_repo_session_seed_corpus() {
    if std::env::var_os("ACCORD_REGENERATE_CORPUS").is_none() {
        return;
    }
    use accord_engine::automerge::sync::{ChunkList, Message, MessageVersion};
    use accord_engine::automerge::transaction::Transactable;
    use accord_engine::automerge::{AutoCommit, ROOT};
    use accord_engine::sync::repo_wire::{PeerMetadata, RepoMessage};
    use accord_engine::DocId;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/repo_session");
    std::fs::create_dir_all(&root).expect("folder");
    let seed = |name: &str, messages: &[Vec<u8>]| {
        let mut bytes = Vec::new();
        for m in messages {
            let len = u8::try_from(m.len()).expect("a seed message fits a length byte");
            bytes.push(len);
            bytes.extend_from_slice(m);
        }
        std::fs::write(root.join(name), bytes).expect("write seed");
    };
    let join = RepoMessage::Join {
        sender: "c".into(),
        versions: vec!["1".into()],
        metadata: Some(PeerMetadata {
            storage_id: Some("s".into()),
            is_ephemeral: false,
            token: None,
        }),
    }
    .encode();
    let doc_id = DocId::from_bytes([3; 16]);
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "t", "x").expect("put");
    let change = doc
        .get_last_local_change()
        .expect("change")
        .raw_bytes()
        .to_vec();
    let with_change = Message {
        heads: doc.get_heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(vec![change]),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode();
    let empty = Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::empty(),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode();
    let to_relay = |request: bool, data: Vec<u8>, sender: &str| {
        let (sender, target) = (sender.to_owned(), "fuzz-relay".to_owned());
        RepoMessage::about_doc(request, sender, target, doc_id, data).encode()
    };
    seed("join", std::slice::from_ref(&join));
    seed(
        "create-then-request",
        &[
            join.clone(),
            to_relay(false, with_change, "c"),
            to_relay(true, empty.clone(), "c"),
        ],
    );
    seed(
        "request-unknown",
        &[join.clone(), to_relay(true, empty.clone(), "c")],
    );
    seed(
        "stranger",
        &[join.clone(), to_relay(false, empty, "someone")],
    );
    seed("garbage-after-join", &[join, b"\xa1\x64type\x07".to_vec()]);
}
