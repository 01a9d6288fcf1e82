//! Support for the workspace's tests (hidden from the docs): a raw
//! protocol client that sends what no well-behaved replica would, and
//! helpers the tests of several crates share. Not part of the API.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::sync::{ErrorCode, Frame, PROTOCOL_VERSION};

/// How long a test waits for the relay's next frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// The WebSocket under a [`Ws`].
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket to a relay (it derefs to the socket), holding the
/// frames of a message that carried several until they are read.
#[derive(Debug)]
pub struct Ws {
    socket: Socket,
    unread: std::collections::VecDeque<Frame>,
}

impl std::ops::Deref for Ws {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.socket
    }
}

impl std::ops::DerefMut for Ws {
    fn deref_mut(&mut self) -> &mut Socket {
        &mut self.socket
    }
}

/// Opens a raw WebSocket to `url`.
pub async fn raw(url: &str) -> Ws {
    let socket = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0;
    Ws {
        socket,
        unread: Default::default(),
    }
}

/// Sends one frame.
pub async fn send(ws: &mut Ws, frame: &Frame) {
    send_bytes(ws, frame.encode()).await;
}

/// Sends arbitrary bytes as one binary message.
pub async fn send_bytes(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::Binary(bytes.into())).await.expect("send");
}

/// The next protocol frame, skipping pings; `None` once the socket closes.
/// A message carrying several frames (version 5) is read one frame at a
/// time.
pub async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    if let Some(frame) = ws.unread.pop_front() {
        return Some(frame);
    }
    loop {
        match tokio::time::timeout(FRAME_WAIT, ws.socket.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Binary(b))) => {
                let frames = Frame::decode_message(&b).expect("valid frames");
                ws.unread.extend(frames);
                return ws.unread.pop_front();
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The next error frame's code and text, skipping other frames.
pub async fn next_error(ws: &mut Ws) -> (ErrorCode, String) {
    loop {
        match next_frame(ws).await {
            Some(Frame::Error { code, message, .. }) => return (code, message),
            Some(_) => {}
            None => panic!("closed without an error frame"),
        }
    }
}

/// Expects the very next frame to be an error with `code` (and some text).
pub async fn expect_error(ws: &mut Ws, code: ErrorCode) {
    match next_frame(ws).await {
        Some(Frame::Error {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "error message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// Says hello with `token` as `peer`; returns the relay's answer.
pub async fn hello(ws: &mut Ws, peer: &str, token: &str) -> Option<Frame> {
    let frame = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: peer.into(),
        token: token.to_owned(),
    };
    send(ws, &frame).await;
    next_frame(ws).await
}

/// A raw connection welcomed as `peer` with `token` (empty in open mode).
pub async fn welcomed(url: &str, peer: &str, token: &str) -> Ws {
    let mut ws = raw(url).await;
    match hello(&mut ws, peer, token).await {
        Some(Frame::Welcome { .. }) => ws,
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Subscribes to `names` (no answer is awaited).
pub async fn subscribe(ws: &mut Ws, names: &[&str]) {
    let collections = names.iter().map(|n| (*n).to_owned()).collect();
    send(ws, &Frame::Subscribe { collections }).await;
}

/// Subscribes to `names` and reads up to each complete announcement (only
/// the relay's confirmations and announcements may arrive meanwhile).
pub async fn subscribed(ws: &mut Ws, names: &[&str]) {
    subscribe(ws, names).await;
    let mut complete = 0;
    while complete < names.len() {
        match next_frame(ws).await {
            Some(Frame::Announce { complete: true, .. }) => complete += 1,
            Some(Frame::Announce { .. } | Frame::Subscribed { .. }) => {}
            other => panic!("expected announcements, got {other:?}"),
        }
    }
}

/// An Automerge sync message from an empty document.
pub fn empty_sync() -> Vec<u8> {
    use automerge::sync::{State, SyncDoc};
    automerge::Automerge::new()
        .generate_sync_message(&mut State::new())
        .expect("a first message")
        .encode()
}

/// The peak resident set of a process, from `/proc/<pid>/status` (VmHWM).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// `len` bytes of noise from `seed` (xorshift): data compression cannot
/// shrink, so sizes in tests are real sizes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `len` hex digits of noise (text compresses to about half).
pub fn noise_text(seed: u64, len: usize) -> String {
    noise(seed, len)
        .into_iter()
        .map(|b| char::from(b"0123456789abcdef"[usize::from(b & 15)]))
        .collect()
}

/// Writes a backward-compatibility fixture: folds `db`'s WAL into the main
/// file (the writer must be closed) and copies it to `fixture`, one file
/// with no `-wal` or `-shm` beside it.
pub fn write_fixture(db: &std::path::Path, fixture: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).expect("sqlite");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    })
    .expect("checkpoint");
    drop(conn);
    for suffix in ["-wal", "-shm"] {
        let side = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        assert!(!side.exists(), "{} left behind", side.display());
    }
    std::fs::create_dir_all(fixture.parent().expect("parent")).expect("mkdir");
    std::fs::copy(db, fixture).expect("write fixture");
    eprintln!("wrote {}", fixture.display());
}
