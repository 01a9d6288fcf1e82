//! One WebSocket connection, by either door: the native protocol at `/`
//! (a `RelaySession`) or the automerge-repo protocol at `/automerge-repo`
//! (a `RepoSession`, the token in `?token=`). The path is read during the
//! WebSocket upgrade; any other path is answered with HTTP 404.
//!
//! The task reads messages, hands each to the connection's session on the
//! blocking pool (the session reads SQLite), and carries out what it
//! returns: replies, subscriptions, routing to document actors, deletion
//! fan-out. Both doors route to the same document actors. Frames from document actors arrive through the connection's
//! bounded outbound queue. On a version-5 native connection what the task
//! writes is packed: frames go out together, in one WebSocket message, when
//! nothing else is ready to be handled (or the message is full). The task
//! pings the peer and closes a connection that stays silent. Bad input closes this connection only, after an
//! error frame that names the problem.
//!
//! Until the session welcomes the peer, messages are held to the small
//! handshake limit (see `gate` for how the limit is raised afterwards).
//! The task also wakes at the session's deadline (a token's expiry) and
//! carries out what `RelaySession::tick` decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accord_engine::sync::repo_session::error_message;
use accord_engine::sync::repo_wire::RepoMessage;
use accord_engine::sync::{
    Announcing, ConnId, ErrorCode, Frame, HubInput, Packer, RelayOutput, RelaySession, RepoOutput,
    RepoSession, PACKED_BYTES, PACKED_SINCE,
};
use accord_engine::{Collection, DocId, PeerId};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::docs::HubKey;
use crate::gate::Gate;
use crate::http::head::{read_head, Prefixed, Wants};
use crate::peers::{PeerHandle, Wire};
use crate::server::Shared;

type Ws = WebSocketStream<Gate<Prefixed<TcpStream>>>;

/// Why the connection ends.
enum End {
    /// The peer closed or vanished.
    Peer,
    /// We close with this error code and text.
    Error(ErrorCode, String),
}

/// Serves one accepted TCP connection until it closes. `permit` counts it
/// against the connection limit until it is closed from our side.
pub async fn serve(
    stream: TcpStream,
    conn: ConnId,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let Some(stream) = websocket_or_http(stream, conn, &shared).await else {
        return; // plain HTTP was served, or the head was bad
    };
    let limit = shared.config.handshake_frame_limit();
    let mut door = Door::Native;
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let accept = tokio_tungstenite::accept_hdr_async_with_config(
        Gate::new(stream),
        |request: &Request, response: Response| route(request, response, &mut door),
        Some(ws_config(limit)),
    );
    let ws = match tokio::time::timeout(shared.config.handshake_timeout, accept).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::debug!(%conn, error = %e, "websocket handshake failed"),
        Err(_) => return tracing::debug!(%conn, "websocket handshake timed out"),
    };
    let (tx, rx) = mpsc::channel(shared.config.outbound_queue);
    let kick = shared.shutdown.child_token();
    let (relay_id, limits) = (shared.relay_id.clone(), shared.config.limits);
    let session = match door {
        Door::Native => Session::Native(RelaySession::with_limits(relay_id, limits)),
        Door::Repo { token } => Session::Repo(RepoSession::new(
            relay_id,
            shared.config.automerge_repo_collection.clone(),
            limits,
            token,
        )),
    };
    let mut c = Connection {
        conn,
        shared,
        ws,
        session: Some(session),
        tx,
        kick,
        replaced: CancellationToken::new(),
        registered: false,
        announce_not_before: None,
        permit: Some(permit),
        packs: false,
        packer: Packer::new(PACKED_BYTES),
        unreadable: false,
    };
    let end = c.run(rx).await;
    c.finish(end).await;
}

/// Reads the connection's first request head: a WebSocket upgrade is
/// returned to go on with; plain HTTP is served here (the connection's
/// place against the limit held meanwhile) and `None` returned, as for a
/// head that is bad (answered with 400 or 431) or does not come in time.
async fn websocket_or_http(
    stream: TcpStream,
    conn: ConnId,
    shared: &Shared,
) -> Option<Prefixed<TcpStream>> {
    let head = tokio::time::timeout(shared.config.handshake_timeout, read_head(stream)).await;
    match head {
        Ok(Ok((Wants::WebSocket, stream))) => Some(stream),
        Ok(Ok((Wants::Http, stream))) => {
            let shutdown = shared.shutdown.clone();
            crate::http::serve_connection(stream, shared.http.clone(), shutdown).await;
            None
        }
        Ok(Err((error, mut stream))) => {
            tracing::debug!(%conn, %error, "bad request head");
            if let Some(response) = error.response() {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            None
        }
        Err(_) => {
            tracing::debug!(%conn, "request head timed out");
            None
        }
    }
}

/// The protocol a connection asked for by its URL's path.
#[derive(Debug)]
enum Door {
    /// `/`: Accord's native protocol.
    Native,
    /// `/automerge-repo`: the automerge-repo protocol, with the URL's
    /// `token` query parameter if it had one.
    Repo {
        /// The token.
        token: Option<String>,
    },
}

/// The doors a WebSocket upgrade may knock on: the native protocol at `/`
/// and the automerge-repo protocol at `/automerge-repo` (a query string is
/// allowed; `token=` carries an automerge-repo client's token). Any other
/// path is answered with HTTP 404 naming the path, so a client with a
/// wrong URL hears why instead of speaking the wrong protocol or hanging.
#[allow(clippy::result_large_err)] // the signature tungstenite asks for
fn route(
    request: &Request,
    response: Response,
    door: &mut Door,
) -> Result<Response, ErrorResponse> {
    match request.uri().path() {
        "/" => Ok(response),
        "/automerge-repo" => {
            let token = request.uri().query().and_then(token_parameter);
            *door = Door::Repo { token };
            Ok(response)
        }
        other => {
            let text = format!(
                "no WebSocket endpoint at '{}': accord-relay serves its protocol at '/' and \
                 the automerge-repo protocol at '/automerge-repo'\n",
                other.chars().take(200).collect::<String>()
            );
            let mut refusal = ErrorResponse::new(Some(text));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    }
}

/// The value of the `token` parameter of a query string, percent-decoded.
fn token_parameter(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
}

/// The protocol state of a connection, by the door it came in.
#[derive(Debug)]
enum Session {
    /// Accord's native protocol.
    Native(RelaySession),
    /// The automerge-repo protocol.
    Repo(RepoSession),
}

/// What a session asks the connection to do.
enum Out {
    /// A native session's output.
    Native(RelayOutput),
    /// An automerge-repo session's output.
    Repo(RepoOutput),
}

impl Session {
    fn state_key(&self) -> Option<&PeerId> {
        match self {
            Session::Native(s) => s.state_key(),
            Session::Repo(s) => s.state_key(),
        }
    }

    fn can_write(&self, collection: &str) -> bool {
        match self {
            Session::Native(s) => s.can_write(collection),
            Session::Repo(s) => s.can_write(collection),
        }
    }

    fn deadline(&self) -> Option<u64> {
        match self {
            Session::Native(s) => s.deadline(),
            Session::Repo(s) => s.deadline(),
        }
    }

    fn tick(&mut self, now_ms: u64) -> Vec<Out> {
        match self {
            Session::Native(s) => s.tick(now_ms).into_iter().map(Out::Native).collect(),
            Session::Repo(s) => s.tick(now_ms).into_iter().map(Out::Repo).collect(),
        }
    }

    fn announcing(&self) -> bool {
        matches!(self, Session::Native(s) if s.announcing())
    }

    fn is_repo(&self) -> bool {
        matches!(self, Session::Repo(_))
    }
}

/// A WebSocket's settings with messages limited to `max_bytes`. Small
/// buffers: tungstenite's 128 KiB defaults made up most of an idle
/// connection's memory; frames are mostly small and written one at a time.
pub(crate) fn ws_config(max_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_bytes))
        .max_frame_size(Some(max_bytes))
}

/// The state of one connection task.
struct Connection {
    /// The connection's number.
    conn: ConnId,
    /// Its place under the connection limit, given back on closing (before
    /// waiting for the peer's side of the close).
    permit: Option<OwnedSemaphorePermit>,
    /// Relay-wide state.
    shared: Arc<Shared>,
    /// The socket.
    ws: Ws,
    /// The protocol state; `None` only while on the blocking pool.
    session: Option<Session>,
    /// The sending side of our outbound queue, handed to the registry.
    tx: mpsc::Sender<(&'static str, Vec<u8>)>,
    /// Cancelled to disconnect us (too slow, or shutdown).
    kick: CancellationToken,
    /// Cancelled when a new connection of the same automerge-repo peer
    /// replaces this one.
    replaced: CancellationToken,
    /// Whether we are in the peer registry.
    registered: bool,
    /// The announcement budget is spent until then.
    announce_not_before: Option<TokioInstant>,
    /// Whether the connection packs frames into messages (a native
    /// connection welcomed in version 5 or later).
    packs: bool,
    /// Frames written and not sent yet: they go out together when nothing
    /// else is ready to be handled, or when the message is full.
    packer: Packer,
    /// Whether tungstenite gave up on the byte stream (a frame over the
    /// limit, bytes that are no WebSocket): the rest is dropped unread.
    unreadable: bool,
}

impl Connection {
    async fn run(&mut self, mut rx: mpsc::Receiver<(&'static str, Vec<u8>)>) -> End {
        let config = &self.shared.config;
        let handshake_deadline = TokioInstant::now() + config.handshake_timeout;
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.reset();
        let mut heard = TokioInstant::now();
        loop {
            let idle_deadline = heard + self.shared.config.idle_timeout;
            let announce_at = self.announce_at();
            let session_deadline = self.session_deadline();
            tokio::select! {
                biased;
                () = self.kick.cancelled() => return self.kicked(),
                () = self.replaced.cancelled() => {
                    let text = "the same peer joined on another connection".to_owned();
                    return End::Error(ErrorCode::REPLACED, text);
                }
                () = sleep_until_some(session_deadline), if session_deadline.is_some() => {
                    if let Some(end) = self.on_tick().await {
                        return end;
                    }
                }
                () = tokio::time::sleep_until(handshake_deadline), if !self.registered => {
                    return End::Error(ErrorCode::TIMEOUT, "no hello within the handshake timeout".into());
                }
                () = tokio::time::sleep_until(idle_deadline) => {
                    let text = format!("nothing received for {:?}", self.shared.config.idle_timeout);
                    return End::Error(ErrorCode::TIMEOUT, text);
                }
                _ = ping.tick() => {
                    if self.ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return End::Peer;
                    }
                }
                Some((kind, bytes)) = rx.recv() => {
                    if let Some(end) = self.write(kind, bytes).await {
                        return end;
                    }
                }
                msg = self.ws.next() => {
                    heard = TokioInstant::now();
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
                // Listings go out when nothing else is waiting, one page at
                // a time, at the pace the peer reads.
                () = sleep_until_some(announce_at), if announce_at.is_some() => {
                    if let Some(end) = self.announce().await {
                        return end;
                    }
                }
                // Nothing else is ready: what was packed goes out.
                () = std::future::ready(()), if !self.packer.is_empty() => {
                    if let Some(end) = self.flush().await {
                        return end;
                    }
                }
            }
        }
    }

    /// When the next page of an owed listing may go out, if one is owed.
    fn announce_at(&self) -> Option<TokioInstant> {
        let session = self.session.as_ref()?;
        session
            .announcing()
            .then(|| self.announce_not_before.unwrap_or_else(TokioInstant::now))
    }

    /// Sends the next page of an owed listing, or notes when it may go.
    async fn announce(&mut self) -> Option<End> {
        let shared = Arc::clone(&self.shared);
        let now = shared.now_ms();
        let next = self
            .with_session(move |s| match s {
                Session::Native(s) => s.next_announcement(now, shared.store.as_ref()),
                Session::Repo(_) => Announcing::Idle,
            })
            .await;
        match next {
            Ok(Announcing::Page(outputs)) => {
                self.announce_not_before = None;
                for output in outputs {
                    if let Some(end) = self.carry_out(Out::Native(output)).await {
                        return Some(end);
                    }
                }
                None
            }
            Ok(Announcing::NotBefore(at)) => {
                let wait = std::time::Duration::from_millis(at.saturating_sub(now));
                self.announce_not_before = Some(TokioInstant::now() + wait);
                None
            }
            Ok(Announcing::Idle) => None,
            Err(end) => Some(end),
        }
    }

    /// Runs `f` with the session on the blocking pool (the session reads
    /// SQLite). A panic there ends this connection cleanly: the session
    /// is gone with it; the peer reconnects and resyncs.
    async fn with_session<T, F>(&mut self, f: F) -> Result<T, End>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session) -> T + Send + 'static,
    {
        let internal = |text: &str| End::Error(ErrorCode::INTERNAL, text.to_owned());
        let Some(mut session) = self.session.take() else {
            return Err(internal("the connection lost its session"));
        };
        let joined = tokio::task::spawn_blocking(move || {
            let value = f(&mut session);
            (session, value)
        })
        .await;
        match joined {
            Ok((session, value)) => {
                self.session = Some(session);
                Ok(value)
            }
            Err(e) => {
                tracing::error!(conn = %self.conn, error = %e, "connection session panicked");
                self.shared.metrics.panicked("connection");
                Err(internal(
                    "the relay failed while handling a frame; reconnect",
                ))
            }
        }
    }

    fn kicked(&self) -> End {
        if self.shared.shutdown.is_cancelled() {
            End::Error(
                ErrorCode::SHUTTING_DOWN,
                "the relay is shutting down".into(),
            )
        } else {
            End::Error(
                ErrorCode::TOO_SLOW,
                "the connection could not keep up; reconnect to resync".into(),
            )
        }
    }

    /// Writes one frame: at once, or, on a connection that packs, into
    /// the message being packed. A peer that stops reading blocks the
    /// write; the registry then finds our queue full and cancels `kick`,
    /// which ends the write here so the connection can be closed.
    async fn write(&mut self, kind: &'static str, bytes: Vec<u8>) -> Option<End> {
        self.shared.metrics.sent(kind, bytes.len());
        if !self.packs {
            return self.send_message(bytes).await;
        }
        match self.packer.push(&bytes) {
            Some(full) => self.send_message(full).await,
            None => None,
        }
    }

    /// Sends what was packed, if anything.
    async fn flush(&mut self) -> Option<End> {
        match self.packer.take() {
            Some(message) => self.send_message(message).await,
            None => None,
        }
    }

    /// Sends one WebSocket message (see [`Connection::write`]).
    async fn send_message(&mut self, bytes: Vec<u8>) -> Option<End> {
        tokio::select! {
            sent = self.ws.send(Message::Binary(bytes.into())) => sent.err().map(|_| End::Peer),
            () = self.kick.cancelled() => Some(self.kicked()),
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Option<End> {
        let limit = self.ws.get_config().max_message_size.unwrap_or(usize::MAX);
        match msg {
            None | Some(Ok(Message::Close(_))) => Some(End::Peer),
            Some(Ok(Message::Binary(bytes))) => self.on_frame(bytes.to_vec()).await,
            Some(Ok(Message::Text(_))) => Some(End::Error(
                ErrorCode::MALFORMED,
                "text messages are not part of the protocol; send binary frames".into(),
            )),
            Some(Ok(_)) => None, // pings are answered by tungstenite; pongs only count as heard
            Some(Err(WsError::Capacity(e))) => {
                self.unreadable = true;
                Some(End::Error(
                    ErrorCode::FRAME_TOO_LARGE,
                    match self.registered {
                        true => format!("{e}; the limit is {limit} bytes"),
                        false => format!("{e}; the limit before Welcome is {limit} bytes"),
                    },
                ))
            }
            Some(Err(WsError::Protocol(e))) => {
                self.unreadable = true;
                Some(End::Error(
                    ErrorCode::MALFORMED,
                    format!("websocket protocol error: {e}"),
                ))
            }
            Some(Err(e)) => {
                tracing::debug!(conn = %self.conn, error = %e, "connection failed");
                Some(End::Peer)
            }
        }
    }

    /// Runs one frame through the session and carries out the outputs.
    async fn on_frame(&mut self, bytes: Vec<u8>) -> Option<End> {
        let shared = Arc::clone(&self.shared);
        let now = shared.now_ms();
        let handled = self
            .with_session(move |session| {
                let started = Instant::now();
                let (access, store) = (shared.access.as_ref(), shared.store.as_ref());
                let out: Vec<Out> = match session {
                    Session::Native(session) => {
                        let metrics = &shared.metrics;
                        let out =
                            session.handle_message(&bytes, now, access, store, &mut |k, n| {
                                metrics.received(k, n)
                            });
                        out.into_iter().map(Out::Native).collect()
                    }
                    Session::Repo(session) => {
                        let message = RepoMessage::decode(&bytes);
                        let kind = message.as_ref().map_or("undecodable", RepoMessage::kind);
                        shared.metrics.received(kind, bytes.len());
                        let out = session.handle_received(message, now, access, store);
                        out.into_iter().map(Out::Repo).collect()
                    }
                };
                shared.metrics.store_time(started.elapsed());
                out
            })
            .await;
        let outputs = match handled {
            Ok(outputs) => outputs,
            Err(end) => return Some(end),
        };
        for output in outputs {
            if let Some(end) = self.carry_out(output).await {
                return Some(end);
            }
        }
        None
    }

    async fn carry_out(&mut self, output: Out) -> Option<End> {
        match output {
            Out::Native(output) => self.carry_out_native(output).await,
            Out::Repo(output) => self.carry_out_repo(output).await,
        }
    }

    async fn carry_out_repo(&mut self, output: RepoOutput) -> Option<End> {
        match output {
            RepoOutput::Send(message) => {
                let joined = matches!(message, RepoMessage::Peer { .. });
                if joined {
                    self.register();
                }
                let end = self.write(message.kind(), message.encode()).await;
                if joined && end.is_none() {
                    self.raise_limits().await;
                }
                return end;
            }
            RepoOutput::Open {
                doc,
                collection,
                write,
            } => self.shared.peers.open(self.conn, &collection, doc, write),
            RepoOutput::Common(output) => return self.carry_out_native(output).await,
            RepoOutput::Refused { code, reason } => {
                tracing::debug!(conn = %self.conn, %code, reason, "refused");
                self.shared.metrics.refused(code.name());
            }
        }
        None
    }

    /// Passes a presence frame on to the document's other listeners,
    /// counting what slow ones missed.
    fn forward(&self, collection: &Collection, doc: DocId, frame: &Frame) {
        if let Frame::Ephemeral { sender, .. } = frame {
            self.shared.presence.saw(doc, self.conn, sender);
        }
        let (passed, dropped) = self.shared.peers.forward(collection, doc, self.conn, frame);
        self.shared.metrics.ephemeral_forwarded.inc_by(passed);
        self.shared.metrics.ephemeral_dropped.inc_by(dropped);
        // A cluster node passes it to the other nodes' listeners too.
        if let Some(out) = &self.shared.ephemeral_out {
            if out.try_send(frame.clone()).is_err() {
                self.shared.metrics.ephemeral_dropped.inc();
            }
        }
    }

    /// Hands a sync message to its document's actor.
    async fn route_to_hub(
        &mut self,
        doc: DocId,
        collection: Collection,
        message: accord_engine::automerge::sync::Message,
        want_reply: bool,
    ) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let Some(peer) = session.state_key().cloned() else {
            return;
        };
        let input = HubInput {
            conn: self.conn,
            peer,
            write: session.can_write(&collection),
            message,
            want_reply,
        };
        self.shared
            .docs
            .route(HubKey { collection, doc }, input)
            .await;
    }

    async fn carry_out_native(&mut self, output: RelayOutput) -> Option<End> {
        match output {
            RelayOutput::Send(frame) => return self.send(frame).await,
            RelayOutput::Subscribed { collection, write } => {
                self.shared.peers.subscribe(self.conn, &collection, write)
            }
            RelayOutput::Unsubscribed(c) => self.shared.peers.unsubscribe(self.conn, &c),
            RelayOutput::Route {
                doc,
                collection,
                message,
                want_reply,
            } => {
                self.route_to_hub(doc, collection, message, want_reply)
                    .await
            }
            RelayOutput::Ephemeral {
                doc,
                collection,
                frame,
            } => self.forward(&collection, doc, &frame),
            RelayOutput::Deleted { doc, collection } => {
                let frame = Frame::Delete {
                    doc,
                    collection: collection.to_string(),
                };
                self.shared
                    .peers
                    .broadcast(&collection, doc, self.conn, &frame);
            }
            RelayOutput::RetireStates {
                prefix,
                keep,
                current,
            } => self.retire_states(prefix, keep, current).await,
            RelayOutput::Close { code, reason } => return Some(End::Error(code, reason)),
        }
        None
    }

    async fn send(&mut self, frame: Frame) -> Option<End> {
        let welcome = matches!(frame, Frame::Welcome { .. });
        match &frame {
            Frame::Welcome { version, .. } => {
                self.register();
                // The `Welcome` is packed with what follows it; the socket
                // has sent nothing else yet, so moving it (below) is safe.
                self.packs = *version >= PACKED_SINCE;
            }
            Frame::Error { code, .. } if code.closes_connection() => {
                return None; // sent by `finish`, together with the close
            }
            Frame::Error { code, .. } => self.shared.metrics.refused(code.name()),
            _ => {}
        }
        let end = self.write(frame.kind(), frame.encode()).await;
        if welcome && end.is_none() {
            self.raise_limits().await;
        }
        end
    }

    /// Welcomed: from the next message on, the full frame limit. The
    /// WebSocket's limits are fixed at its creation, so the socket moves to
    /// a new one; nothing is lost, since the gate handed the old one no
    /// byte past the `Hello` (and the `Welcome` was flushed).
    async fn raise_limits(&mut self) {
        let gate = self.ws.get_mut().take();
        let config = ws_config(self.shared.config.max_frame_bytes);
        self.ws = WebSocketStream::from_raw_socket(gate, Role::Server, Some(config)).await;
    }

    /// When the session next needs a tick, on the runtime's clock.
    fn session_deadline(&self) -> Option<TokioInstant> {
        let deadline_ms = self.session.as_ref()?.deadline()?;
        let wait = deadline_ms.saturating_sub(self.shared.now_ms());
        Some(TokioInstant::now() + Duration::from_millis(wait))
    }

    /// The session's deadline came: carry out what it decides (a token's
    /// expiry closes the connection).
    async fn on_tick(&mut self) -> Option<End> {
        let now = self.shared.now_ms();
        let outputs = self.session.as_mut()?.tick(now);
        for output in outputs {
            if let Some(end) = self.carry_out(output).await {
                return Some(end);
            }
        }
        None
    }

    /// Drops the sync states of a token's least recently used peers
    /// beyond the bound. Failing only leaves them for the next time; it is
    /// counted for the operator.
    async fn retire_states(&self, prefix: String, keep: usize, current: PeerId) {
        let shared = Arc::clone(&self.shared);
        let retired = tokio::task::spawn_blocking(move || {
            shared.store.retire_sync_states(&prefix, keep, &current)
        })
        .await;
        if !matches!(retired, Ok(Ok(()))) {
            tracing::warn!(conn = %self.conn, "could not retire old sync states");
            self.shared.metrics.storage_failures.inc();
        }
    }

    fn register(&mut self) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let (peer, wire) = match session {
            Session::Native(s) => (s.peer().cloned(), Wire::Native),
            Session::Repo(s) => {
                let Some(client) = s.client() else {
                    return;
                };
                let wire = Wire::Repo {
                    relay: s.relay_id().to_owned(),
                    client: client.to_owned(),
                };
                (s.state_key().cloned(), wire)
            }
        };
        let (Some(peer), Some(state_key)) = (peer, session.state_key().cloned()) else {
            return;
        };
        let handle = PeerHandle {
            peer,
            wire,
            state_key,
            tx: self.tx.clone(),
            kick: self.kick.clone(),
            replaced: self.replaced.clone(),
        };
        self.shared.peers.add(self.conn, handle);
        self.shared.metrics.connections.inc();
        self.registered = true;
    }

    /// Unregisters, sends the error frame if any, and closes the socket.
    async fn finish(mut self, end: End) {
        self.shared.peers.remove(self.conn);
        self.shared.presence.gone(self.conn);
        drop(self.permit.take());
        if self.registered {
            self.shared.metrics.connections.dec();
        }
        let End::Error(code, reason) = end else {
            let goodbye = async {
                if let Some(message) = self.packer.take() {
                    self.ws.send(Message::Binary(message.into())).await?;
                }
                self.ws.close(None).await?;
                linger(&mut self.ws, false).await;
                Ok::<(), WsError>(())
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), goodbye).await;
            return;
        };
        tracing::info!(conn = %self.conn, %code, reason, "closing connection");
        self.shared.metrics.refused(code.name());
        if code == ErrorCode::UNAUTHORIZED {
            self.shared.metrics.auth_failures.inc();
        }
        let repo = self.session.as_ref().is_some_and(Session::is_repo);
        let (kind, bytes) = if repo {
            let message = error_message(code, &reason);
            (message.kind(), message.encode())
        } else {
            let frame = Frame::error(code, reason, None);
            (frame.kind(), frame.encode())
        };
        self.shared.metrics.sent(kind, bytes.len());
        let close = CloseFrame {
            code: CloseCode::Policy,
            reason: code.name().into(),
        };
        // What was packed goes first, with the error if it fits (on a
        // connection that does not pack, the packer is empty).
        let mut messages: Vec<Vec<u8>> = self.packer.push(&bytes).into_iter().collect();
        messages.extend(self.packer.take());
        // A peer that does not read must not hold the task: give the
        // goodbye a moment, then drop the socket.
        let goodbye = async {
            for message in messages {
                self.ws.send(Message::Binary(message.into())).await?;
            }
            self.ws.close(Some(close)).await?;
            linger(&mut self.ws, self.unreadable).await;
            Ok::<(), WsError>(())
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), goodbye).await;
    }
}

/// Reads and drops bytes until the stream ends or fails (callers bound the
/// time).
async fn discard_until_eof<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut scratch = [0u8; 16 * 1024];
    while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
}

/// Sleeps until `deadline`; never wakes without one (the `select!` branch
/// using it is disabled then).
/// A deadline already reached is ready at once (a timer would first wait
/// for its next tick, and what it stands for would miss the message being
/// packed).
async fn sleep_until_some(deadline: Option<TokioInstant>) {
    match deadline {
        Some(deadline) if deadline <= TokioInstant::now() => {}
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The rest of the WebSocket closing handshake, once our close is sent:
/// reads (and drops) what the peer still sends until it closes (callers
/// bound the time). Dropping the socket with unread bytes in it would make
/// the kernel reset the connection, under the peer's writes and under the
/// error frame before the peer reads it.
///
/// While the stream still parses (`unreadable` false), frames are read
/// until the peer's close. Once tungstenite gave up on it (a frame over
/// the limit, bytes that are no WebSocket), or gives up while draining,
/// the WebSocket stream has ended (it ends at its first error) and the
/// rest is dropped as raw bytes, after shutting our side down so that a
/// peer waiting for it closes too.
pub(crate) async fn linger<S>(ws: &mut WebSocketStream<S>, unreadable: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if !unreadable && drain_until_closed(ws).await.is_ok() {
        return;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(ws.get_mut()).await;
    discard_until_eof(ws.get_mut()).await;
}

/// Reads frames until the peer's close; an error once tungstenite gives
/// up on the stream.
async fn drain_until_closed<S>(ws: &mut S) -> Result<(), WsError>
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Some(message) = ws.next().await {
        message?;
    }
    Ok(())
}
