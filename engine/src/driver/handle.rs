//! The app's handle on a running connection.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::task::{Control, Driver};
use super::{ConnectOptions, ConnectionState, Presence, SyncError, SyncStatus, PRESENCE_BUFFER};
use crate::id::{Collection, DocId};
use crate::replica::{Filter, Replica};
use crate::sync::ClientConfig;

/// The app's handle on a running connection; dropping it stops syncing.
#[derive(Debug)]
pub struct SyncHandle {
    /// The driver's published status.
    status: watch::Receiver<SyncStatus>,
    /// Requests to the driver.
    control: mpsc::Sender<Control>,
    /// Stops the driver.
    cancel: CancellationToken,
    /// The driver task, awaited by `close`.
    task: Option<tokio::task::JoinHandle<()>>,
    /// The ticket of the next check.
    next_check: u64,
    /// Presence payloads from other peers, for [`SyncHandle::presence`].
    presence: broadcast::Sender<Presence>,
}

impl Replica {
    /// Starts syncing with the relay at `url` (`ws://host:port`) in the
    /// background. Must be called inside a tokio runtime. The returned
    /// handle reports the connection's state; dropping it stops syncing.
    /// [`ConnectOptions::fallback_urls`] names more nodes of the same relay
    /// cluster, tried in turn after `url` when it is unreachable or its
    /// connection ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use accord_engine::{ConnectOptions, Replica};
    /// use serde_json::json;
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let url = format!("ws://{}", listener.local_addr()?);
    /// # let config = accord_relay::Config { db: dir.path().join("relay.db"), ..Default::default() };
    /// # let stop = tokio_util::sync::CancellationToken::new();
    /// # let relay = tokio::spawn(accord_relay::run(listener, config, stop.clone()));
    /// let phone = Replica::open(dir.path().join("phone.db"))?;
    /// let laptop = Replica::open(dir.path().join("laptop.db"))?;
    /// let ada = phone.create("contacts", &json!({"name": "Ada"}))?; // offline
    ///
    /// let options = ConnectOptions {
    ///     collections: vec!["contacts".into()],
    ///     ..ConnectOptions::default()
    /// };
    /// let mut from_phone = phone.connect(&url, options.clone());
    /// from_phone.wait_synced(Duration::from_secs(10)).await?; // the relay holds Ada
    /// let mut to_laptop = laptop.connect(&url, options);
    /// to_laptop.wait_agreed(Duration::from_secs(10)).await?; // the laptop holds her too
    /// assert_eq!(laptop.get(&ada)?.value, json!({"name": "Ada"}));
    /// # from_phone.close().await;
    /// # to_laptop.close().await;
    /// # stop.cancel();
    /// # relay.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect(&self, url: &str, options: ConnectOptions) -> SyncHandle {
        let (status_tx, status) = watch::channel(SyncStatus::initial(url));
        let (control, control_rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let (presence, _) = broadcast::channel(PRESENCE_BUFFER);
        let collections: Result<BTreeSet<Collection>, _> =
            options.collections.iter().map(|c| c.parse()).collect();
        let task = match collections {
            Ok(collections) => {
                let config = ClientConfig {
                    peer_id: self.peer_id().clone(),
                    token: options.token.clone(),
                    collections,
                    max_in_flight: options.max_in_flight,
                    max_frame_bytes: options.relay_max_frame_bytes,
                };
                let driver = Driver::new(
                    self.clone(),
                    url,
                    options,
                    config,
                    self.subscribe(Filter::All),
                    status_tx,
                    control_rx,
                    cancel.clone(),
                    presence.clone(),
                );
                Some(tokio::spawn(driver.run()))
            }
            Err(e) => {
                status_tx.send_modify(|s| {
                    s.state = ConnectionState::Stopped;
                    s.last_error = Some(SyncError::BadCollection(e));
                });
                None
            }
        };
        SyncHandle {
            status,
            control,
            cancel,
            task,
            next_check: 0,
            presence,
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
    /// (and every local tombstone) in the subscribed collections. Changes
    /// made after the call never delay it. Fails with the relay's refusal
    /// if the token forbids it, and with [`SyncError::Timeout`] otherwise.
    ///
    /// ```
    /// use std::time::Duration;
    /// use accord_engine::{ConnectOptions, Replica};
    /// use serde_json::json;
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let url = format!("ws://{}", listener.local_addr()?);
    /// # let config = accord_relay::Config { db: dir.path().join("relay.db"), ..Default::default() };
    /// # let stop = tokio_util::sync::CancellationToken::new();
    /// # let relay = tokio::spawn(accord_relay::run(listener, config, stop.clone()));
    /// let replica = Replica::open(dir.path().join("notes.db"))?;
    /// let mut sync = replica.connect(&url, ConnectOptions {
    ///     collections: vec!["notes".into()],
    ///     ..ConnectOptions::default()
    /// });
    /// let id = replica.create("notes", &json!({"text": "buy milk"}))?;
    /// sync.wait_synced(Duration::from_secs(10)).await?;
    /// // Safe: the relay committed the note; another device will get it.
    /// assert_eq!(sync.status().connects, 1);
    /// # sync.close().await;
    /// # stop.cancel();
    /// # relay.await??;
    /// # let _ = id;
    /// # Ok(())
    /// # }
    /// ```
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
        let collections = collections
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<Collection>, _>>()?;
        self.control
            .send(Control::Subscribe(collections))
            .await
            .map_err(|_| SyncError::Stopped)
    }

    /// Replaces the token: the driver presents it at once on the open
    /// connection (`Reauth`, which keeps the connection and its sync state)
    /// and in every later `Hello`. Call it before
    /// [`SyncStatus::token_expires`]: at that time the relay closes the
    /// connection with `token_expired`, and a driver without a newer token
    /// stops. A stopped driver whose token was refused or expired connects
    /// again with this one. The relay checks the token like the first: a
    /// refused one closes the connection with `unauthorized`; collections
    /// it may not read are unsubscribed (`forbidden`, in
    /// [`SyncStatus::last_error`]). Returns once the driver uses the token
    /// (a stopped driver is connecting again by then, so a wait that
    /// follows sees it); fails only if the driver has ended.
    ///
    /// ```
    /// use std::time::Duration;
    /// use accord_engine::{ConnectOptions, Replica};
    /// # use accord_relay::auth::{Right, Tokens};
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let url = format!("ws://{}", listener.local_addr()?);
    /// # let tokens = Tokens::new(b"the relay's secret, long enough")?;
    /// # let config = accord_relay::Config {
    /// #     db: dir.path().join("relay.db"),
    /// #     access: std::sync::Arc::new(tokens.clone()),
    /// #     ..Default::default()
    /// # };
    /// # let stop = tokio_util::sync::CancellationToken::new();
    /// # let relay = tokio::spawn(accord_relay::run(listener, config, stop.clone()));
    /// # let token_for = |ttl| tokens.mint([("notes".to_owned(), Right::ReadWrite)].into(), ttl);
    /// let replica = Replica::open(dir.path().join("notes.db"))?;
    /// let mut sync = replica.connect(&url, ConnectOptions {
    ///     token: token_for(Duration::from_secs(600)), // from the app's server
    ///     collections: vec!["notes".into()],
    ///     ..ConnectOptions::default()
    /// });
    /// sync.wait_connected(Duration::from_secs(10)).await?;
    /// let expires = sync.status().token_expires.expect("the relay said when");
    ///
    /// // Before then, a fresh token from the app's server:
    /// sync.set_token(token_for(Duration::from_secs(3600))).await?;
    /// let mut status = sync.watch();
    /// let later = status.wait_for(|s| s.token_expires > Some(expires));
    /// tokio::time::timeout(Duration::from_secs(10), later).await??;
    /// assert_eq!(sync.status().connects, 1); // the same connection goes on
    /// # sync.close().await;
    /// # stop.cancel();
    /// # relay.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), SyncError> {
        let (in_use, answer) = oneshot::channel();
        self.control
            .send(Control::SetToken(token.into(), in_use))
            .await
            .map_err(|_| SyncError::Stopped)?;
        answer.await.map_err(|_| SyncError::Stopped)
    }

    /// Sends a presence payload for a record to everyone else who has it
    /// open through the relay — Accord replicas syncing its collection and
    /// automerge-repo clients that opened it — who receive it from
    /// [`SyncHandle::presence`] (or as an automerge-repo `ephemeral`
    /// message). Nothing is stored and nothing is queued: `Ok(false)` says
    /// it could not go now (not connected, or the record's collection is
    /// not synced); send the current state again later. The relay drops
    /// payloads larger than its limit (16 KiB by default) and those a slow
    /// receiver cannot take at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use accord_engine::{ConnectOptions, Replica};
    /// use serde_json::json;
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let url = format!("ws://{}", listener.local_addr()?);
    /// # let config = accord_relay::Config { db: dir.path().join("relay.db"), ..Default::default() };
    /// # let stop = tokio_util::sync::CancellationToken::new();
    /// # let relay = tokio::spawn(accord_relay::run(listener, config, stop.clone()));
    /// let options = ConnectOptions {
    ///     collections: vec!["contacts".into()],
    ///     ..ConnectOptions::default()
    /// };
    /// let phone = Replica::open(dir.path().join("phone.db"))?;
    /// let ada = phone.create("contacts", &json!({"name": "Ada"}))?;
    /// let mut from_phone = phone.connect(&url, options.clone());
    /// from_phone.wait_synced(Duration::from_secs(10)).await?;
    ///
    /// let laptop = Replica::open(dir.path().join("laptop.db"))?;
    /// let mut to_laptop = laptop.connect(&url, options);
    /// let mut looking = to_laptop.presence();
    /// to_laptop.wait_connected(Duration::from_secs(10)).await?;
    /// # from_phone.wait_agreed(Duration::from_secs(10)).await?;
    /// # to_laptop.wait_agreed(Duration::from_secs(10)).await?;
    ///
    /// assert!(from_phone.broadcast(&ada, b"phone is editing".to_vec()).await?);
    /// let seen = tokio::time::timeout(Duration::from_secs(10), looking.recv()).await??;
    /// assert_eq!((seen.doc, seen.data), (ada, b"phone is editing".to_vec()));
    /// assert_eq!(seen.sender, phone.peer_id().as_str());
    /// # from_phone.close().await;
    /// # to_laptop.close().await;
    /// # stop.cancel();
    /// # relay.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn broadcast(&self, doc: &DocId, data: Vec<u8>) -> Result<bool, SyncError> {
        let (sent, answer) = oneshot::channel();
        self.control
            .send(Control::Broadcast(*doc, data, sent))
            .await
            .map_err(|_| SyncError::Stopped)?;
        answer.await.map_err(|_| SyncError::Stopped)?
    }

    /// Presence payloads other peers send for records of the synced
    /// collections, from now on (see [`SyncHandle::broadcast`]). A reader
    /// that falls more than [`PRESENCE_BUFFER`] behind is told how many it
    /// missed (`RecvError::Lagged`) and goes on with the newest.
    pub fn presence(&self) -> broadcast::Receiver<Presence> {
        self.presence.subscribe()
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
