//! Replays the committed fuzzing corpus and crashers (`fuzz/corpus/<target>`
//! and `fuzz/regressions/<target>`) through the fuzz entry points, so every
//! bug fuzzing ever found stays fixed. See `fuzz/README.md`.

use std::path::PathBuf;

use accord_engine::fuzzing;

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
fn session_corpus() {
    replay("session", fuzzing::session);
}

#[test]
fn chunks_corpus() {
    replay("chunks", fuzzing::chunks);
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
    let mut snapshot = vec![0u8];
    snapshot.extend(replica.save(&id).expect("save"));
    write("chunks", "snapshot", &snapshot);
    let mut incremental = vec![0x11u8];
    incremental.extend(doc.save_after(&[]));
    write("chunks", "incremental-two-heads-claimed", &incremental);
}
