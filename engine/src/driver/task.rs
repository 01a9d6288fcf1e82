//! The background task: one WebSocket at a time, a session, reconnects.
//!
//! The task moves frames between the socket and the session and runs every
//! session call on the blocking pool (the session reads and writes SQLite).
//! The session is never left behind: if a call panics, the connection ends
//! with [`SyncError::Internal`] and a fresh session (built from the same
//! configuration, resuming from the persisted sync states) takes over on
//! the next connection.
//!
//! Each attempt goes to one URL of [`Relays`]; after an attempt that
//! failed or a connection that ended, the next goes to the next URL.

use std::time::{Duration, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::relays::Relays;
use super::{ConnectOptions, ConnectionState, Presence, SyncError, SyncStatus};
use crate::id::{Collection, DocId};
use crate::replica::{ChangeEvent, ChangeKind, Origin, RecvError, Replica, Subscription};
use crate::sync::client::LocalChange;
use crate::sync::{
    ClientConfig, ClientOutput, ClientSession, ErrorCode, Frame, Packer, SessionEvent, SyncCheck,
    SyncDocs, PACKED_BYTES, PACKED_BYTES_BEFORE_WELCOME,
};

/// A request from the app's handle.
#[derive(Debug)]
pub(super) enum Control {
    /// Answer when synced (and agreed, if the flag is set).
    Check(u64, bool),
    /// Add collections.
    Subscribe(Vec<Collection>),
    /// Use this token from now on; answered once it is in use.
    SetToken(String, oneshot::Sender<()>),
    /// Send a presence payload for a record; answered with whether it
    /// went out.
    Broadcast(DocId, Vec<u8>, oneshot::Sender<Result<bool, SyncError>>),
}

/// At most this many frames from the relay are handled, and committed,
/// together (see `Driver::on_messages`).
const RUN_FRAMES: usize = 256;
/// ...and at most this many bytes of them.
const RUN_BYTES: usize = 8 * 1024 * 1024;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a connection ended.
enum Ended {
    /// The app closed.
    Cancelled,
    /// Retry after a backoff.
    Retry(SyncError),
    /// Do not retry.
    Fatal(SyncError),
}

/// A check the app waits for: its ticket and what it waits for.
struct PendingCheck {
    /// The ticket the answer is published under.
    ticket: u64,
    /// The session's account of it.
    check: SyncCheck,
}

/// The background task's state.
pub(super) struct Driver {
    /// The replica being synced.
    replica: Replica,
    /// The relay URLs, and the one of the current attempt.
    relays: Relays,
    /// How to connect.
    options: ConnectOptions,
    /// What a session is built from (again, after a panic).
    config: ClientConfig,
    /// The replica's committed changes, to push local ones.
    events: Subscription,
    /// The protocol state; `None` only while a call runs on the blocking
    /// pool (and rebuilt if that call panicked).
    session: Option<ClientSession>,
    /// Where the app reads the status.
    status: watch::Sender<SyncStatus>,
    /// Requests from the app.
    control: mpsc::Receiver<Control>,
    /// Cancelled when the app closes the handle.
    cancel: CancellationToken,
    /// The session clock's origin.
    started: std::time::Instant,
    /// A check not answered yet.
    pending: Option<PendingCheck>,
    /// Where presence payloads from other peers go.
    presence: broadcast::Sender<Presence>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        replica: Replica,
        url: &str,
        options: ConnectOptions,
        config: ClientConfig,
        events: Subscription,
        status: watch::Sender<SyncStatus>,
        control: mpsc::Receiver<Control>,
        cancel: CancellationToken,
        presence: broadcast::Sender<Presence>,
    ) -> Self {
        Driver {
            replica,
            relays: Relays::new(url, &options.fallback_urls),
            options,
            session: Some(ClientSession::new(config.clone())),
            config,
            events,
            status,
            control,
            cancel,
            started: std::time::Instant::now(),
            pending: None,
            presence,
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = self.options.backoff_min;
        // Attempts since the start or a new token: without `reconnect`,
        // each URL gets one.
        let mut attempts = 0;
        loop {
            let url = self.url().to_owned();
            self.set(|s| {
                s.state = ConnectionState::Connecting;
                s.relay_url = url;
            });
            attempts += 1;
            let opened = tokio::select! {
                () = self.cancel.cancelled() => break,
                opened = self.open() => opened,
            };
            let welcomed_before = self.status.borrow().connects;
            let ended = match opened {
                Ok(ws) => self.connection(ws).await,
                Err(e) => Ended::Retry(e),
            };
            if self.status.borrow().connects > welcomed_before {
                // The relay accepted us this time: the next drop is a new
                // incident, not the continuation of a failing streak.
                backoff = self.options.backoff_min;
            }
            // A panic here was reported already; the next connection
            // starts from a fresh session either way.
            let _ = self.outputs(|s, _| s.disconnected()).await;
            match ended {
                Ended::Cancelled => break,
                Ended::Fatal(e) => {
                    let waits_for_token = refuses_token(&e);
                    self.set(|s| {
                        s.last_error = Some(e);
                        s.state = ConnectionState::Stopped;
                        s.synced = false;
                    });
                    // The same relay is tried with the new token: the
                    // refusal was the token's, not the relay's.
                    if waits_for_token && self.wait_for_token().await {
                        backoff = self.options.backoff_min;
                        attempts = 0;
                        continue;
                    }
                    break;
                }
                Ended::Retry(e) => {
                    tracing::debug!(url = self.url(), error = %e, "sync connection lost; retrying");
                    self.set(|s| s.last_error = Some(e));
                    if !self.options.reconnect && attempts >= self.relays.len() {
                        break;
                    }
                    self.relays.advance();
                }
            }
            let jitter = rand::rng().random_range(0.5..1.0);
            let delay = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(self.options.backoff_max);
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.set(|s| {
            s.state = ConnectionState::Stopped;
            s.synced = false;
        });
    }

    /// Stopped by a refused or expired token: waits for the app to give
    /// another through `set_token` (true) or to close (false). Collections
    /// added meanwhile are kept for the next connection; checks are
    /// answered by the stopped status.
    async fn wait_for_token(&mut self) -> bool {
        loop {
            let control = tokio::select! {
                () = self.cancel.cancelled() => return false,
                control = self.control.recv() => control,
            };
            // No connection is open, so these calls send nothing. A panic
            // in them is reported by `blocking`, and the fresh session that
            // replaces the broken one is built from `config`.
            match control {
                None => return false,
                Some(Control::Check(..)) => {}
                Some(Control::SetToken(token, in_use)) => {
                    let _reported = self.new_token(token).await;
                    self.set(|s| s.state = ConnectionState::Connecting);
                    // The app may have stopped waiting; the token is in use.
                    let _ = in_use.send(());
                    return true;
                }
                Some(Control::Subscribe(c)) => {
                    let _reported = self.outputs(move |s, r| s.subscribe(&c, r)).await;
                }
                Some(Control::Broadcast(_, _, sent)) => {
                    let _ = sent.send(Ok(false)); // not connected
                }
            }
        }
    }

    /// The app's fresh token: kept for every later session and `Hello`,
    /// sent at once on an open connection. A refusal under the old token's
    /// rights is forgotten: the relay refuses again what the new one does
    /// not allow.
    async fn new_token(&mut self, token: String) -> Result<Vec<ClientOutput>, Ended> {
        self.config.token = token.clone();
        self.set(|s| s.refused = None);
        self.outputs(move |s, _| s.reauth(token)).await
    }

    /// The URL of the current attempt or connection.
    fn url(&self) -> &str {
        self.relays.current()
    }

    async fn open(&self) -> Result<Ws, SyncError> {
        // Small buffers, as the relay's: tungstenite's defaults (128 KiB to
        // read, 128 KiB to write) were most of an idle connection's memory;
        // frames are written one at a time and flushed anyway.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.options.max_frame_bytes))
            .max_frame_size(Some(self.options.max_frame_bytes));
        let connect = tokio_tungstenite::connect_async_with_config(self.url(), Some(config), true);
        let unreachable = |reason: String| SyncError::Unreachable {
            url: self.url().to_owned(),
            reason,
        };
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable("connection timed out".into())),
        }
    }

    fn set(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.status.send_modify(f);
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` with the session and replica on the blocking pool. If it
    /// panics, the session is replaced by a fresh one and the connection
    /// ends (the next one resyncs from the persisted sync states).
    async fn blocking<T, F>(&mut self, f: F) -> Result<T, Ended>
    where
        T: Send + 'static,
        F: FnOnce(&mut ClientSession, &Replica) -> T + Send + 'static,
    {
        let mut session = self
            .session
            .take()
            .unwrap_or_else(|| ClientSession::new(self.config.clone()));
        let replica = self.replica.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let value = f(&mut session, &replica);
            (session, value)
        })
        .await;
        match joined {
            Ok((session, value)) => {
                self.session = Some(session);
                Ok(value)
            }
            Err(e) => {
                tracing::error!(error = %e, "sync session panicked; reconnecting with a fresh one");
                let error = SyncError::Internal(format!("the sync session panicked: {e}"));
                Err(self.start_over(error))
            }
        }
    }

    /// Ends the connection with a fresh session for the next one (which
    /// resyncs from the persisted sync states), reporting `error`.
    fn start_over(&mut self, error: SyncError) -> Ended {
        self.session = Some(ClientSession::new(self.config.clone()));
        self.set(|s| s.last_error = Some(error.clone()));
        Ended::Retry(error)
    }

    /// Like [`Driver::blocking`] for calls that return outputs: whatever
    /// the call writes is committed together with the sync states it
    /// produces (`Replica::commit_together`) before any output is carried
    /// out, so nothing it sends acknowledges what is not stored; if that
    /// commit fails, nothing is sent and the connection starts over.
    async fn outputs<F>(&mut self, f: F) -> Result<Vec<ClientOutput>, Ended>
    where
        F: FnOnce(&mut ClientSession, &Replica) -> Vec<ClientOutput> + Send + 'static,
    {
        let now = self.now();
        let committed = self
            .blocking(move |s, r| {
                let mut outputs = r.commit_together(|| persist(r, f(s, r)))?;
                if s.cursors_deferred() {
                    // The writes a cursor waited for are committed now.
                    let more = r.commit_together(|| persist(r, s.save_deferred_cursors(now, r)))?;
                    outputs.extend(more);
                }
                Ok(outputs)
            })
            .await?;
        committed.map_err(|e| {
            tracing::warn!(error = %e, "could not commit what the session wrote; starting over");
            self.start_over(SyncError::Local {
                code: crate::sync::error_code(&e),
                message: format!("could not store what syncing wrote: {e}"),
            })
        })
    }

    async fn connection(&mut self, mut ws: Ws) -> Ended {
        let now = self.now();
        match self.outputs(move |s, r| s.connected(now, r)).await {
            Ok(hello) => {
                if let Some(end) = self.carry_out(&mut ws, hello).await {
                    return end;
                }
            }
            Err(end) => return end,
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut heard = tokio::time::Instant::now();
        loop {
            let silent_until = heard + self.options.idle_timeout;
            let outputs = tokio::select! {
                () = self.cancel.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ended::Cancelled;
                }
                () = tokio::time::sleep_until(silent_until) => {
                    let reason = format!("the relay was silent for {:?}", self.options.idle_timeout);
                    return Ended::Retry(SyncError::Unreachable { url: self.url().to_owned(), reason });
                }
                msg = ws.next() => {
                    heard = tokio::time::Instant::now();
                    self.on_messages(msg, &mut ws).await
                }
                event = self.events.recv_async() => self.on_local(event).await,
                control = self.control.recv() => self.on_control(control).await,
                _ = tick.tick() => {
                    let now = self.now();
                    self.outputs(move |s, r| s.tick(now, r)).await
                }
            };
            let outputs = match outputs {
                Ok(outputs) => outputs,
                Err(end) => return end,
            };
            if let Some(end) = self.carry_out(&mut ws, outputs).await {
                return end;
            }
            if let Err(end) = self.publish().await {
                return end;
            }
        }
    }

    /// A message arrived: it and every further frame already waiting (up
    /// to [`RUN_FRAMES`] frames or [`RUN_BYTES`] bytes) are handled in one
    /// call of [`Driver::outputs`], so their writes cost one commit (a cold
    /// sync is hundreds of documents arriving back to back).
    async fn on_messages(
        &mut self,
        first: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        ws: &mut Ws,
    ) -> Result<Vec<ClientOutput>, Ended> {
        let mut frames = Vec::new();
        let mut bytes = 0;
        let mut end = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match self.frames_of(msg) {
                Ok(Some((message, len))) => {
                    frames.extend(message);
                    bytes += len;
                }
                Ok(None) => {}
                Err(e) => {
                    end = Some(e);
                    break;
                }
            }
            if frames.len() < RUN_FRAMES && bytes < RUN_BYTES {
                next = ws.next().now_or_never();
            }
        }
        let now = self.now();
        let outputs = if frames.is_empty() {
            Vec::new()
        } else {
            self.outputs(move |s, r| {
                frames
                    .into_iter()
                    .flat_map(|frame| s.handle_frame(now, frame, r))
                    .collect()
            })
            .await?
        };
        match end {
            None => Ok(outputs),
            Some(end) => {
                // What came before the end was handled and decides first
                // (a refusal the relay sent before closing stops the
                // driver); its replies go out if they still can.
                match self.carry_out(ws, outputs).await {
                    Some(decided) => Err(decided),
                    None => Err(end),
                }
            }
        }
    }

    /// The frames in a WebSocket message (`None` for pings and the like),
    /// with its size, or why the connection ends. The relay speaks our
    /// version (an older one refuses our `Hello`), so a message may carry
    /// several frames.
    fn frames_of(
        &self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Option<(Vec<Frame>, usize)>, Ended> {
        let unreachable = |reason: String| SyncError::Unreachable {
            url: self.url().to_owned(),
            reason,
        };
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => {
                let reason = "the relay closed the connection".into();
                return Err(Ended::Retry(unreachable(reason)));
            }
            Some(Ok(_)) => return Ok(None),
            Some(Err(e)) => return Err(Ended::Retry(unreachable(e.to_string()))),
        };
        let frames = Frame::decode_message(&bytes).map_err(|e| {
            Ended::Retry(SyncError::Refused {
                url: self.url().to_owned(),
                code: ErrorCode::MALFORMED,
                message: format!("relay sent {e}"),
            })
        })?;
        Ok(Some((frames, bytes.len())))
    }

    /// Local changes were committed: push them. If the change feed
    /// overflowed, the session compares every local document instead.
    async fn on_local(
        &mut self,
        first: Result<ChangeEvent, RecvError>,
    ) -> Result<Vec<ClientOutput>, Ended> {
        let mut missed = false;
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next.take() {
            match event {
                Ok(e) if e.origin == Origin::Local => batch.push(e),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(
                        missed = n,
                        "change feed overflowed; comparing every document"
                    );
                    missed = true;
                }
                Err(_) => {}
            }
            next = self.events.try_recv();
        }
        if batch.is_empty() && !missed {
            return Ok(Vec::new());
        }
        let now = self.now();
        self.outputs(move |s, r| {
            if missed {
                return s.local_changes_missed(now, r);
            }
            let mut out = Vec::new();
            for e in batch {
                let change = match e.kind {
                    ChangeKind::Deleted => LocalChange::Tombstone,
                    ChangeKind::Created | ChangeKind::Changed => LocalChange::Content,
                };
                out.extend(s.local_change(now, e.doc, &e.collection, change, r));
            }
            out
        })
        .await
    }

    async fn on_control(&mut self, control: Option<Control>) -> Result<Vec<ClientOutput>, Ended> {
        match control {
            Some(Control::Check(ticket, agree)) => {
                let begun = self.blocking(move |s, r| s.begin_check(agree, r)).await?;
                match begun {
                    Ok((check, outputs)) => {
                        self.pending = Some(PendingCheck { ticket, check });
                        Ok(outputs)
                    }
                    Err(e) => {
                        let error = SyncError::Local {
                            code: crate::sync::error_code(&e),
                            message: format!("cannot list local documents for a sync check: {e}"),
                        };
                        self.set(|s| s.last_error = Some(error));
                        Ok(Vec::new())
                    }
                }
            }
            Some(Control::Subscribe(c)) => self.outputs(move |s, r| s.subscribe(&c, r)).await,
            Some(Control::Broadcast(doc, data, sent)) => {
                let frame = self.blocking(move |s, r| s.ephemeral(doc, data, r)).await?;
                let (answer, outputs) = match frame {
                    Ok(Some(frame)) => (Ok(true), vec![ClientOutput::Send(frame)]),
                    Ok(None) => (Ok(false), Vec::new()),
                    Err(e) => {
                        let error = SyncError::Local {
                            code: crate::sync::error_code(&e),
                            message: e.to_string(),
                        };
                        (Err(error), Vec::new())
                    }
                };
                let _ = sent.send(answer);
                Ok(outputs)
            }
            Some(Control::SetToken(token, in_use)) => {
                let outputs = self.new_token(token).await;
                // The app may have stopped waiting; the token is in use.
                let _ = in_use.send(());
                outputs
            }
            None => Ok(Vec::new()),
        }
    }

    /// Sends frames and handles events; returns how the connection ends if
    /// an output ends it. The frames go packed, as few messages as fit
    /// (before `Welcome` in the relay's smaller handshake limit).
    async fn carry_out(&mut self, ws: &mut Ws, outputs: Vec<ClientOutput>) -> Option<Ended> {
        let welcomed = self
            .session
            .as_ref()
            .is_some_and(|s| s.relay_id().is_some());
        let mut packer = Packer::new(match welcomed {
            true => PACKED_BYTES,
            false => PACKED_BYTES_BEFORE_WELCOME,
        });
        for output in outputs {
            match output {
                ClientOutput::Send(frame) => {
                    if let Some(message) = packer.push(&frame.encode()) {
                        if let Some(end) = self.send_message(ws, message).await {
                            return Some(end);
                        }
                    }
                }
                ClientOutput::Event(event) => self.on_event(event),
                ClientOutput::Close { code, reason } => {
                    if let Some(message) = packer.take() {
                        let _ = self.send_message(ws, message).await;
                    }
                    let _ = ws.close(None).await;
                    let retry = match &self.session {
                        Some(session) => session.retries_after(code),
                        None => !code.is_final(),
                    };
                    let error = SyncError::Refused {
                        url: self.url().to_owned(),
                        code,
                        message: reason,
                    };
                    return Some(if retry {
                        Ended::Retry(error)
                    } else {
                        Ended::Fatal(error)
                    });
                }
                ClientOutput::SaveStates { .. } => {} // done by `persist`
            }
        }
        match packer.take() {
            Some(message) => self.send_message(ws, message).await,
            None => None,
        }
    }

    /// Sends one message; how the connection ends if it cannot.
    async fn send_message(&self, ws: &mut Ws, message: Vec<u8>) -> Option<Ended> {
        let sent = ws.send(Message::Binary(message.into())).await;
        sent.err().map(|e| {
            Ended::Retry(SyncError::Unreachable {
                url: self.url().to_owned(),
                reason: e.to_string(),
            })
        })
    }

    fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Authorized { expires_at_ms } => {
                let expires = expires_at_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
                self.set(|s| s.token_expires = expires);
            }
            SessionEvent::Welcomed { relay_id } => {
                // Not kept: the next connection may reach another node
                // (or another relay), whose welcome names its id.
                tracing::debug!(%relay_id, url = self.url(), "connected to relay");
                self.set(|s| {
                    s.state = ConnectionState::Connected;
                    s.connects += 1;
                    s.last_error = None;
                    s.skipped.clear();
                    s.read_only.clear();
                });
            }
            SessionEvent::Subscribed { collection, write } => {
                self.set(|s| {
                    s.skipped.remove(collection.as_str());
                    if write {
                        s.read_only.remove(collection.as_str());
                    } else {
                        s.read_only.insert(collection.to_string());
                    }
                });
            }
            SessionEvent::CollectionSkipped {
                collection,
                code,
                message,
            } => {
                tracing::warn!(collection, %code, message, "relay refused a collection; syncing the others");
                self.set(|s| {
                    s.skipped.insert(collection, message);
                });
            }
            SessionEvent::RelayError { code, message, doc } => {
                tracing::warn!(%code, message, ?doc, "relay reported an error");
                let url = self.url().to_owned();
                let error = SyncError::Refused { url, code, message };
                self.set(|s| {
                    if code == ErrorCode::FORBIDDEN {
                        s.refused = Some(error.clone());
                    }
                    s.last_error = Some(error);
                });
            }
            SessionEvent::LocalFailure { code, message, doc } => {
                tracing::warn!(%code, message, ?doc, "sync failed locally");
                self.set(|s| s.last_error = Some(SyncError::Local { code, message }));
            }
            SessionEvent::Ephemeral {
                doc,
                collection,
                sender,
                data,
            } => {
                // Nobody listening is fine: presence is not kept.
                let _ = self.presence.send(Presence {
                    doc,
                    collection,
                    sender,
                    data,
                });
            }
        }
    }

    /// Publishes counters, and answers the pending check when the session
    /// says it is reached.
    async fn publish(&mut self) -> Result<(), Ended> {
        let Some(mut pending) = self.pending.take() else {
            let (stats, waiting) = self
                .session
                .as_ref()
                .map(|s| (s.stats(), s.pending()))
                .unwrap_or_default();
            self.set(|s| {
                s.stats = stats;
                s.pending = waiting;
            });
            return Ok(());
        };
        // Agreement needs every local change fed to the session first.
        let quiet = self.events.is_empty();
        let (pending, outcome, stats, waiting) = self
            .blocking(move |s, r| {
                let outcome = s.check(&mut pending.check, quiet, r);
                (pending, outcome, s.stats(), s.pending())
            })
            .await?;
        let answered = outcome.answers(&pending.check);
        let ticket = pending.ticket;
        if !answered {
            self.pending = Some(pending);
        }
        self.set(|s| {
            s.synced = outcome.synced;
            s.agreed = outcome.agreed;
            if answered {
                s.unpushed = outcome.unpushed;
            }
            if answered {
                s.checked = s.checked.max(ticket);
            }
            s.stats = stats;
            s.pending = waiting;
        });
        Ok(())
    }
}

/// Whether the relay refused the token itself (bad, or expired): the
/// driver cannot get another by itself, so it waits for the app's.
fn refuses_token(error: &SyncError) -> bool {
    matches!(
        error,
        SyncError::Refused { code, .. }
            if *code == ErrorCode::UNAUTHORIZED || *code == ErrorCode::TOKEN_EXPIRED
    )
}

/// Persists the sync states among `outputs` and returns the rest; a
/// failure to persist is reported like any local failure (it only costs
/// a fuller exchange next time).
fn persist(replica: &Replica, outputs: Vec<ClientOutput>) -> Vec<ClientOutput> {
    let mut rest = Vec::with_capacity(outputs.len());
    for output in outputs {
        match output {
            ClientOutput::SaveStates { relay, states } => {
                if let Err(e) = replica.save_sync_states(&relay, states) {
                    rest.push(ClientOutput::Event(SessionEvent::LocalFailure {
                        code: crate::sync::error_code(&e),
                        message: format!("could not persist sync states: {e}"),
                        doc: None,
                    }));
                }
            }
            other => rest.push(other),
        }
    }
    rest
}
