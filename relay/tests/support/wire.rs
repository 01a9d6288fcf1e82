//! A raw protocol client: frames sent and read directly, to do what no
//! well-behaved replica would. (Each test binary uses a part of it.)
#![allow(dead_code)]

use std::time::Duration;

use accord_engine::sync::{ErrorCode, Frame, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for the relay's next frame.
pub const T: Duration = Duration::from_secs(20);

/// A raw WebSocket to a relay.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a raw WebSocket to `url`.
pub async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// Sends one frame.
pub async fn send(ws: &mut Ws, frame: &Frame) {
    ws.send(Message::Binary(frame.encode().into()))
        .await
        .expect("send");
}

/// The next protocol frame, skipping pings; `None` when the socket closes.
pub async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("frame within timeout")
        {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b).expect("valid frame")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Expects the next frame to be an error with `code` (and some text).
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

/// Says hello as `peer` with no token (open mode) and expects `Welcome`.
pub async fn welcomed(url: &str, peer: &str) -> Ws {
    let mut ws = raw(url).await;
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        peer_id: peer.into(),
        token: String::new(),
    };
    send(&mut ws, &hello).await;
    match next_frame(&mut ws).await {
        Some(Frame::Welcome { .. }) => ws,
        other => panic!("expected welcome, got {other:?}"),
    }
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
