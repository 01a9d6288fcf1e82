//! The client driver: a replica's background connection to a relay.
//!
//! [`Replica::connect`] spawns a task on the current tokio runtime that owns
//! the WebSocket and a sans-IO [`ClientSession`]. Everything that touches
//! SQLite (the session reading and persisting documents) runs on the
//! blocking pool; the task itself only moves frames. It reconnects with
//! exponential backoff and jitter, except after a refusal that retrying
//! cannot fix (bad token, unsupported version). [`SyncHandle`] exposes the
//! connection state and [`SyncHandle::wait_synced`].

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::replica::{ChangeEvent, Filter, Origin, Replica, Subscription};
use crate::sync::{
    ClientConfig, ClientOutput, ClientSession, ErrorCode, Frame, SessionEvent, SessionStats,
    SyncTarget,
};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The token presented in `Hello` (empty for an open relay).
    pub token: String,
    /// Collections to sync.
    pub collections: Vec<String>,
    /// How many documents may be mid-exchange at once.
    pub max_in_flight: usize,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Whether to reconnect after the connection drops.
    pub reconnect: bool,
    /// Largest accepted message from the relay, in bytes.
    pub max_frame_bytes: usize,
    /// Reconnect when nothing (not even a ping) arrived for this long; the
    /// relay pings every 20 s by default.
    pub idle_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: String::new(),
            collections: Vec::new(),
            max_in_flight: 64,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            reconnect: true,
            max_frame_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Trying to connect (or waiting to retry).
    Connecting,
    /// Welcomed by the relay.
    Connected,
    /// Stopped: closed by the app, or refused in a way retrying cannot fix.
    Stopped,
}

/// Why syncing failed or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The relay could not be reached or the connection broke.
    #[error("cannot reach relay {url}: {reason}")]
    Unreachable {
        /// The relay URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The relay refused or reported an error.
    #[error("relay refused: {message} [{code}]")]
    Refused {
        /// The relay's error code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The wait timed out.
    #[error("not synced within {0:?}")]
    Timeout(Duration),
    /// The driver stopped.
    #[error("sync stopped")]
    Stopped,
}

/// A snapshot of the driver's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// The connection state.
    pub state: ConnectionState,
    /// Whether the relay holds every local change of the subscribed
    /// collections made before the last check.
    pub synced: bool,
    /// Whether, in addition, this replica holds everything the relay
    /// holds in those collections (as of the last check).
    pub agreed: bool,
    /// The last check request this status answers.
    pub checked: u64,
    /// Documents waiting for or in the middle of an exchange.
    pub pending: usize,
    /// Counters of the current connection.
    pub stats: SessionStats,
    /// How many times the relay welcomed us.
    pub connects: u64,
    /// The most recent error, if any.
    pub last_error: Option<SyncError>,
    /// A refusal of this connection's rights (`forbidden`): waiting for
    /// sync fails with it instead of timing out.
    pub refused: Option<SyncError>,
}

enum Control {
    /// Answer when synced (and agreed, if the flag is set).
    Check(u64, bool),
    Subscribe(Vec<String>),
}

/// The app's handle on a running connection; dropping it stops syncing.
#[derive(Debug)]
pub struct SyncHandle {
    status: watch::Receiver<SyncStatus>,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    next_check: u64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Check(n, agree) => write!(f, "Check({n}, {agree})"),
            Control::Subscribe(c) => write!(f, "Subscribe({c:?})"),
        }
    }
}

impl Replica {
    /// Starts syncing with the relay at `url` (`ws://host:port`) in the
    /// background. Must be called inside a tokio runtime.
    pub fn connect(&self, url: &str, options: ConnectOptions) -> SyncHandle {
        let initial = SyncStatus {
            state: ConnectionState::Connecting,
            synced: false,
            agreed: false,
            checked: 0,
            pending: 0,
            stats: SessionStats::default(),
            connects: 0,
            last_error: None,
            refused: None,
        };
        let (status_tx, status) = watch::channel(initial);
        let (control, control_rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let driver = Driver {
            replica: self.clone(),
            url: url.to_owned(),
            events: self.subscribe(Filter::All),
            session: Some(ClientSession::new(ClientConfig {
                peer_id: self.peer_id().to_owned(),
                token: options.token.clone(),
                collections: options.collections.iter().cloned().collect::<BTreeSet<_>>(),
                max_in_flight: options.max_in_flight,
            })),
            options,
            status: status_tx,
            control: control_rx,
            cancel: cancel.clone(),
            started: std::time::Instant::now(),
            pending_check: None,
            check_target: None,
        };
        let task = tokio::spawn(driver.run());
        SyncHandle {
            status,
            control,
            cancel,
            task: Some(task),
            next_check: 0,
        }
    }
}

impl SyncHandle {
    /// The latest status.
    pub fn status(&self) -> SyncStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status updates, independent of this handle (for
    /// progress displays while another task waits).
    pub fn watch(&self) -> watch::Receiver<SyncStatus> {
        self.status.clone()
    }

    /// Waits until the relay has welcomed this replica.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), SyncError> {
        self.wait(timeout, |s| {
            s.state == ConnectionState::Connected || s.connects > 0
        })
        .await
    }

    /// Waits until the relay holds every local change made before this call
    /// (and every local tombstone) in the subscribed collections.
    pub async fn wait_synced(&mut self, timeout: Duration) -> Result<(), SyncError> {
        let ticket = self.check(false).await?;
        self.wait(timeout, |s| s.checked >= ticket && s.synced)
            .await
    }

    /// Waits until, in addition, this replica holds everything the relay
    /// holds in the subscribed collections: both sides agree.
    pub async fn wait_agreed(&mut self, timeout: Duration) -> Result<(), SyncError> {
        let ticket = self.check(true).await?;
        self.wait(timeout, |s| s.checked >= ticket && s.synced && s.agreed)
            .await
    }

    async fn check(&mut self, agree: bool) -> Result<u64, SyncError> {
        self.next_check += 1;
        let ticket = self.next_check;
        match self.control.send(Control::Check(ticket, agree)).await {
            Ok(()) => Ok(ticket),
            Err(_) => Err(self.status().last_error.unwrap_or(SyncError::Stopped)),
        }
    }

    /// Waits for `done`, failing if the driver stops or time runs out.
    async fn wait(
        &mut self,
        timeout: Duration,
        done: impl Fn(&SyncStatus) -> bool,
    ) -> Result<(), SyncError> {
        let wait = self
            .status
            .wait_for(|s| done(s) || s.state == ConnectionState::Stopped || s.refused.is_some());
        let outcome = match tokio::time::timeout(timeout, wait).await {
            Err(_) => Err(None),
            Ok(Err(_)) => Err(Some(SyncError::Stopped)),
            Ok(Ok(s)) if done(&s) => Ok(()),
            Ok(Ok(s)) if s.refused.is_some() => Err(s.refused.clone()),
            Ok(Ok(s)) => Err(Some(s.last_error.clone().unwrap_or(SyncError::Stopped))),
        };
        outcome.map_err(|e| match e {
            Some(e) => e,
            None => {
                let status = self.status();
                match status.last_error {
                    Some(e) if status.state != ConnectionState::Connected => e,
                    _ => SyncError::Timeout(timeout),
                }
            }
        })
    }

    /// Adds collections to sync.
    pub async fn subscribe(&self, collections: Vec<String>) -> Result<(), SyncError> {
        self.control
            .send(Control::Subscribe(collections))
            .await
            .map_err(|_| SyncError::Stopped)
    }

    /// Closes the connection cleanly and waits for the driver to stop
    /// (its sync states are persisted first).
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

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

/// The background task.
struct Driver {
    replica: Replica,
    url: String,
    options: ConnectOptions,
    events: Subscription,
    /// `None` only while on the blocking pool.
    session: Option<ClientSession>,
    status: watch::Sender<SyncStatus>,
    control: mpsc::Receiver<Control>,
    cancel: CancellationToken,
    started: std::time::Instant,
    /// A check requested and not yet answered: its ticket, and whether
    /// agreement was asked for.
    pending_check: Option<(u64, bool)>,
    /// What the pending check waits for, snapshotted when it arrived.
    check_target: Option<SyncTarget>,
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = self.options.backoff_min;
        loop {
            self.set(|s| s.state = ConnectionState::Connecting);
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
            self.blocking(|session, _| session.disconnected()).await;
            match ended {
                Ended::Cancelled => break,
                Ended::Fatal(e) => {
                    self.set(|s| s.last_error = Some(e));
                    break;
                }
                Ended::Retry(e) => {
                    tracing::debug!(url = self.url, error = %e, "sync connection lost; retrying");
                    self.set(|s| s.last_error = Some(e));
                    if !self.options.reconnect {
                        break;
                    }
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

    async fn open(&self) -> Result<Ws, SyncError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.options.max_frame_bytes))
            .max_frame_size(Some(self.options.max_frame_bytes));
        let connect =
            tokio_tungstenite::connect_async_with_config(self.url.as_str(), Some(config), true);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(SyncError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(SyncError::Unreachable {
                url: self.url.clone(),
                reason: "connection timed out".into(),
            }),
        }
    }

    fn set(&self, f: impl FnOnce(&mut SyncStatus)) {
        self.status.send_modify(f);
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` with the session and replica on the blocking pool, carrying
    /// out persistence there too; returns the frames and events to handle.
    async fn blocking<F>(&mut self, f: F) -> Vec<ClientOutput>
    where
        F: FnOnce(&mut ClientSession, &Replica) -> Vec<ClientOutput> + Send + 'static,
    {
        let Some(mut session) = self.session.take() else {
            return Vec::new();
        };
        let replica = self.replica.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let outputs = f(&mut session, &replica);
            let rest = persist(&replica, outputs);
            (session, rest)
        })
        .await;
        match joined {
            Ok((session, rest)) => {
                self.session = Some(session);
                rest
            }
            Err(e) => {
                tracing::error!(error = %e, "sync session panicked");
                Vec::new()
            }
        }
    }

    async fn connection(&mut self, mut ws: Ws) -> Ended {
        let hello = self.blocking(|s, _| s.connected()).await;
        if let Some(end) = self.carry_out(&mut ws, hello).await {
            return end;
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
                    return Ended::Retry(SyncError::Unreachable { url: self.url.clone(), reason });
                }
                msg = ws.next() => {
                    heard = tokio::time::Instant::now();
                    match self.on_message(msg).await {
                        Ok(outputs) => outputs,
                        Err(end) => return end,
                    }
                }
                event = self.events.recv_async() => {
                    let mut batch: Vec<ChangeEvent> = event.ok().into_iter().collect();
                    while let Some(Ok(e)) = self.events.try_recv() {
                        batch.push(e);
                    }
                    self.on_local(batch).await
                }
                control = self.control.recv() => match control {
                    Some(Control::Check(n, agree)) => {
                        self.pending_check = Some((n, agree));
                        self.check_target = None;
                        if agree {
                            self.blocking(|s, _| s.request_fresh_announcements()).await
                        } else {
                            Vec::new()
                        }
                    }
                    Some(Control::Subscribe(c)) => self.blocking(move |s, _| s.subscribe(&c)).await,
                    None => Vec::new(),
                },
                _ = tick.tick() => {
                    let now = self.now();
                    self.blocking(move |s, r| s.tick(now, r)).await
                }
            };
            if let Some(end) = self.carry_out(&mut ws, outputs).await {
                return end;
            }
            self.refresh_synced().await;
        }
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Vec<ClientOutput>, Ended> {
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => {
                return Err(Ended::Retry(SyncError::Unreachable {
                    url: self.url.clone(),
                    reason: "the relay closed the connection".into(),
                }));
            }
            Some(Ok(_)) => return Ok(Vec::new()),
            Some(Err(e)) => {
                return Err(Ended::Retry(SyncError::Unreachable {
                    url: self.url.clone(),
                    reason: e.to_string(),
                }))
            }
        };
        let frame = match Frame::decode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                return Err(Ended::Retry(SyncError::Refused {
                    code: ErrorCode::MALFORMED,
                    message: format!("relay sent {e}"),
                }));
            }
        };
        let now = self.now();
        Ok(self
            .blocking(move |s, r| s.handle_frame(now, frame, r))
            .await)
    }

    async fn on_local(&mut self, batch: Vec<ChangeEvent>) -> Vec<ClientOutput> {
        let local: Vec<ChangeEvent> = batch
            .into_iter()
            .filter(|e| e.origin == Origin::Local)
            .collect();
        if local.is_empty() {
            return Vec::new();
        }
        let now = self.now();
        self.blocking(move |s, r| {
            let mut out = Vec::new();
            for e in local {
                out.extend(s.local_change(now, e.doc, &e.collection, e.kind, r));
            }
            out
        })
        .await
    }

    /// Sends frames and handles events; returns how the connection ends if
    /// an output ends it.
    async fn carry_out(&mut self, ws: &mut Ws, outputs: Vec<ClientOutput>) -> Option<Ended> {
        for output in outputs {
            match output {
                ClientOutput::Send(frame) => {
                    if let Err(e) = ws.send(Message::Binary(frame.encode().into())).await {
                        return Some(Ended::Retry(SyncError::Unreachable {
                            url: self.url.clone(),
                            reason: e.to_string(),
                        }));
                    }
                }
                ClientOutput::Event(SessionEvent::Welcomed { relay_id }) => {
                    tracing::debug!(relay_id, "connected to relay");
                    self.set(|s| {
                        s.state = ConnectionState::Connected;
                        s.connects += 1;
                        s.last_error = None;
                    });
                }
                ClientOutput::Event(SessionEvent::RelayError { code, message, doc }) => {
                    tracing::warn!(%code, message, ?doc, "relay reported an error");
                    let error = SyncError::Refused { code, message };
                    self.set(|s| {
                        if code == ErrorCode::FORBIDDEN {
                            s.refused = Some(error.clone());
                        }
                        s.last_error = Some(error);
                    });
                }
                ClientOutput::Close { code, reason } => {
                    let _ = ws.close(None).await;
                    let error = SyncError::Refused {
                        code,
                        message: reason,
                    };
                    let fatal = matches!(code, ErrorCode::UNAUTHORIZED | ErrorCode::VERSION);
                    return Some(if fatal {
                        Ended::Fatal(error)
                    } else {
                        Ended::Retry(error)
                    });
                }
                ClientOutput::SaveStates { .. } => {} // done by `persist`
            }
        }
        None
    }

    /// Publishes counters, and answers a pending check: `wait_synced` once
    /// the relay holds the local state as of the check (later writes do not
    /// delay it), `wait_agreed` once, in addition, nothing is left to
    /// exchange either way.
    async fn refresh_synced(&mut self) {
        let pending = self.session.as_ref().map_or(0, ClientSession::pending);
        let Some((ticket, agree)) = self.pending_check else {
            let stats = self
                .session
                .as_ref()
                .map(ClientSession::stats)
                .unwrap_or_default();
            self.set(|s| {
                s.stats = stats;
                s.pending = pending;
            });
            return;
        };
        // Agreement needs every local change fed to the session first.
        let quiet = self.events.is_empty();
        let Some(mut session) = self.session.take() else {
            return;
        };
        let target = self.check_target.take();
        let replica = self.replica.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let target = match target {
                Some(target) => Ok(target),
                None => SyncTarget::snapshot(&session, &replica),
            };
            let (target, synced) = match target {
                Ok(mut target) => {
                    let synced = session.reached(&mut target, &replica);
                    (Some(target), synced)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list local documents for a sync check");
                    (None, false)
                }
            };
            let agreed = synced
                && agree
                && quiet
                && session.fresh_announced()
                && session.agrees(&replica).unwrap_or(false);
            (session, target, synced, agreed)
        })
        .await;
        let Ok((session, target, synced, agreed)) = joined else {
            return;
        };
        let stats = session.stats();
        self.session = Some(session);
        let answered = synced && (agreed || !agree);
        if answered {
            self.pending_check = None;
        } else {
            self.check_target = target;
        }
        self.set(|s| {
            s.synced = synced;
            s.agreed = agreed;
            if answered {
                s.checked = s.checked.max(ticket);
            }
            s.stats = stats;
            s.pending = pending;
        });
    }
}

/// Persists the sync states among `outputs` and returns the rest.
fn persist(replica: &Replica, outputs: Vec<ClientOutput>) -> Vec<ClientOutput> {
    use crate::sync::SyncDocs;
    outputs
        .into_iter()
        .filter(|o| match o {
            ClientOutput::SaveStates { relay, states } => {
                if let Err(e) = replica.save_sync_states(relay, states.clone()) {
                    tracing::warn!(error = %e, "could not persist sync states");
                }
                false
            }
            _ => true,
        })
        .collect()
}
