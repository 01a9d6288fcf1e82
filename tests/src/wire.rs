//! A raw protocol client for tests: speak frames to a relay directly, to
//! send what no well-behaved replica would.

use std::time::Duration;

use accord_engine::sync::{ErrorCode, Frame, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for the relay's next frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

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
    send_bytes(ws, frame.encode()).await;
}

/// Sends arbitrary bytes as one binary message.
pub async fn send_bytes(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::Binary(bytes.into())).await.expect("send");
}

/// The next protocol frame, skipping pings; `None` once the socket closes.
pub async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    loop {
        match tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b).expect("a valid frame")),
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

/// An Automerge sync message from an empty document.
pub fn empty_sync() -> Vec<u8> {
    use accord_engine::automerge::sync::{State, SyncDoc};
    let doc = accord_engine::automerge::Automerge::new();
    doc.generate_sync_message(&mut State::new())
        .expect("a first message")
        .encode()
}

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
