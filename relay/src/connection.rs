//! One WebSocket connection.
//!
//! The task reads frames, hands each to the connection's `RelaySession` on
//! the blocking pool (the session reads SQLite), and carries out what it
//! returns: replies, subscriptions, routing to document actors, deletion
//! fan-out. Frames from document actors arrive through the connection's
//! bounded outbound queue. Bad input closes this connection only, after an
//! error frame that names the problem.

use std::sync::Arc;
use std::time::Instant;

use accord_engine::sync::{ErrorCode, Frame, RelayOutput, RelaySession};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::docs::DocInput;
use crate::peers::PeerHandle;
use crate::server::Shared;

type Ws = WebSocketStream<TcpStream>;

/// Why the connection ends.
enum End {
    /// The peer closed or vanished.
    Peer,
    /// We close with this error code and text.
    Error(ErrorCode, String),
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(stream: TcpStream, conn: u64, shared: Arc<Shared>) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(shared.config.max_frame_bytes))
        .max_frame_size(Some(shared.config.max_frame_bytes));
    let accept = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    let ws = match tokio::time::timeout(shared.config.handshake_timeout, accept).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::debug!(conn, error = %e, "websocket handshake failed"),
        Err(_) => return tracing::debug!(conn, "websocket handshake timed out"),
    };
    let (tx, rx) = mpsc::channel(shared.config.outbound_queue);
    let kick = shared.shutdown.child_token();
    let mut c = Connection {
        conn,
        shared,
        ws,
        session: Some(RelaySession::new(String::new())),
        tx,
        kick,
        registered: false,
    };
    c.session = Some(RelaySession::new(c.shared.relay_id.clone()));
    let end = c.run(rx).await;
    c.finish(end).await;
}

/// The state of one connection task.
struct Connection {
    /// The connection's number.
    conn: u64,
    /// Relay-wide state.
    shared: Arc<Shared>,
    /// The socket.
    ws: Ws,
    /// The protocol state; `None` only while on the blocking pool.
    session: Option<RelaySession>,
    /// The sending side of our outbound queue, handed to the registry.
    tx: mpsc::Sender<Vec<u8>>,
    /// Cancelled to disconnect us (too slow, or shutdown).
    kick: CancellationToken,
    /// Whether we are in the peer registry.
    registered: bool,
}

impl Connection {
    async fn run(&mut self, mut rx: mpsc::Receiver<Vec<u8>>) -> End {
        let deadline = Instant::now() + self.shared.config.handshake_timeout;
        loop {
            let handshake_left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                biased;
                () = self.kick.cancelled() => {
                    return if self.shared.shutdown.is_cancelled() {
                        End::Error(ErrorCode::SHUTTING_DOWN, "the relay is shutting down".into())
                    } else {
                        End::Error(ErrorCode::TOO_SLOW, "the connection could not keep up; reconnect to resync".into())
                    };
                }
                () = tokio::time::sleep(handshake_left), if !self.registered => {
                    return End::Error(ErrorCode::TIMEOUT, "no hello within the handshake timeout".into());
                }
                Some(bytes) = rx.recv() => {
                    if self.ws.send(Message::Binary(bytes.into())).await.is_err() {
                        return End::Peer;
                    }
                }
                msg = self.ws.next() => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Option<End> {
        match msg {
            None | Some(Ok(Message::Close(_))) => Some(End::Peer),
            Some(Ok(Message::Binary(bytes))) => self.on_frame(bytes.to_vec()).await,
            Some(Ok(Message::Text(_))) => Some(End::Error(
                ErrorCode::MALFORMED,
                "text messages are not part of the protocol; send binary frames".into(),
            )),
            Some(Ok(_)) => None, // ping/pong are answered by tungstenite
            Some(Err(WsError::Capacity(e))) => Some(End::Error(
                ErrorCode::FRAME_TOO_LARGE,
                format!(
                    "{e}; the limit is {} bytes",
                    self.shared.config.max_frame_bytes
                ),
            )),
            Some(Err(WsError::Protocol(e))) => Some(End::Error(
                ErrorCode::MALFORMED,
                format!("websocket protocol error: {e}"),
            )),
            Some(Err(e)) => {
                tracing::debug!(conn = self.conn, error = %e, "connection failed");
                Some(End::Peer)
            }
        }
    }

    /// Runs one frame through the session and carries out the outputs.
    async fn on_frame(&mut self, bytes: Vec<u8>) -> Option<End> {
        let mut session = self.session.take()?;
        let shared = Arc::clone(&self.shared);
        let now = shared.now_ms();
        let joined = tokio::task::spawn_blocking(move || {
            let out =
                session.handle_bytes(&bytes, now, shared.access.as_ref(), shared.store.as_ref());
            (session, out)
        })
        .await;
        let Ok((session, outputs)) = joined else {
            return Some(End::Error(ErrorCode::INTERNAL, "internal error".into()));
        };
        self.session = Some(session);
        for output in outputs {
            if let Some(end) = self.carry_out(output).await {
                return Some(end);
            }
        }
        None
    }

    async fn carry_out(&mut self, output: RelayOutput) -> Option<End> {
        match output {
            RelayOutput::Send(frame) => {
                if matches!(frame, Frame::Welcome { .. }) {
                    self.register();
                }
                if let Frame::Error { code, .. } = &frame {
                    if code.is_fatal() {
                        return None; // sent by `finish` together with the close
                    }
                }
                if self
                    .ws
                    .send(Message::Binary(frame.encode().into()))
                    .await
                    .is_err()
                {
                    return Some(End::Peer);
                }
            }
            RelayOutput::Subscribed(c) => self.shared.peers.subscribe(self.conn, &c),
            RelayOutput::Unsubscribed(c) => self.shared.peers.unsubscribe(self.conn, &c),
            RelayOutput::Route {
                doc,
                collection,
                message,
                want_reply,
            } => {
                let peer = self.peer_name();
                let input = DocInput {
                    conn: self.conn,
                    peer,
                    message,
                    want_reply,
                };
                self.shared.docs.route(doc, &collection, input).await;
            }
            RelayOutput::Deleted { doc, collection } => {
                let frame = Frame::Delete {
                    doc,
                    collection: collection.clone(),
                };
                self.shared.peers.broadcast(&collection, self.conn, &frame);
            }
            RelayOutput::Close { code, reason } => return Some(End::Error(code, reason)),
        }
        None
    }

    fn peer_name(&self) -> String {
        self.session
            .as_ref()
            .and_then(|s| s.peer_id())
            .unwrap_or_default()
            .to_owned()
    }

    fn register(&mut self) {
        let handle = PeerHandle {
            name: self.peer_name(),
            tx: self.tx.clone(),
            kick: self.kick.clone(),
        };
        self.shared.peers.add(self.conn, handle);
        self.registered = true;
    }

    /// Unregisters, sends the error frame if any, and closes the socket.
    async fn finish(mut self, end: End) {
        self.shared.peers.remove(self.conn);
        if let End::Error(code, reason) = end {
            tracing::info!(conn = self.conn, %code, reason, "closing connection");
            let frame = Frame::error(code, reason.clone(), None);
            let _ = self.ws.send(Message::Binary(frame.encode().into())).await;
            let close = CloseFrame {
                code: CloseCode::Policy,
                reason: code.name().into(),
            };
            let _ = self.ws.close(Some(close)).await;
        } else {
            let _ = self.ws.close(None).await;
        }
    }
}
