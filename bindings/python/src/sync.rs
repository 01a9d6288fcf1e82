//! Syncing from Python: the engine's driver runs on one background tokio
//! runtime shared by every connection of the process (threads named
//! `accord-sync`); Python threads wait on it with the GIL released, in
//! short slices so Ctrl-C still works.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use accord_engine::{ConnectOptions, ConnectionState, Replica, SyncError, SyncHandle, SyncStatus};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::convert::seconds;
use crate::errors;
use crate::events::SLICE;

/// The process's sync runtime, started on first `connect`.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("accord-sync")
            .enable_all()
            .build()
            .expect("cannot start the accord-sync runtime")
    })
}

/// What a connection's Python object and its replica share.
#[derive(Debug)]
pub struct Shared {
    /// The driver's handle; `None` once closed. Waits hold the lock.
    handle: tokio::sync::Mutex<Option<SyncHandle>>,
    /// Its status, readable while a wait holds the handle.
    status: watch::Receiver<SyncStatus>,
    /// Cancelled by `close`, which ends every wait at once.
    closing: CancellationToken,
}

impl Shared {
    /// Stops the driver (its sync states are saved first).
    pub fn close(&self, py: Python<'_>) {
        self.closing.cancel();
        py.detach(|| {
            runtime().block_on(async {
                let handle = self.handle.lock().await.take();
                if let Some(handle) = handle {
                    handle.close().await;
                }
            })
        });
    }
}

/// A connection to a relay: the native half of `accord.Sync`.
#[pyclass(module = "accord._accord", name = "Sync", frozen)]
#[derive(Debug)]
pub struct PySync {
    /// Shared with the replica, which closes it when it closes.
    pub shared: Arc<Shared>,
}

impl PySync {
    /// Starts the driver for `replica` on the background runtime.
    pub fn start(replica: &Replica, url: &str, options: ConnectOptions) -> PySync {
        let handle = {
            let _entered = runtime().enter();
            replica.connect(url, options)
        };
        PySync {
            shared: Arc::new(Shared {
                status: handle.watch(),
                handle: tokio::sync::Mutex::new(Some(handle)),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// Runs `wait` against the handle, with the GIL released, handling
    /// signals every slice; `close` ends it with `accord.Closed`.
    fn wait<F, Fut>(&self, py: Python<'_>, wait: F) -> PyResult<()>
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<(), SyncError>> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let closing = shared.closing.clone();
        let fut = wait(shared);
        let mut task = runtime().spawn(async move {
            let outcome = tokio::select! {
                biased;
                _ = closing.cancelled() => Err(None),
                r = fut => r.map_err(Some),
            };
            // A wait that ended because `close` stopped the driver says so.
            match outcome {
                Err(Some(SyncError::Stopped)) if closing.is_cancelled() => Err(None),
                outcome => outcome,
            }
        });
        loop {
            // The timer is made inside the runtime, which it needs.
            let done = py.detach(|| {
                runtime().block_on(async { tokio::time::timeout(SLICE, &mut task).await })
            });
            match done {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(Some(e)))) => return Err(errors::sync(e)),
                Ok(Ok(Err(None))) => {
                    return Err(errors::Closed::new_err("the connection was closed"))
                }
                Ok(Err(join)) => {
                    return Err(errors::SyncError::new_err(format!(
                        "the wait failed: {join}"
                    )))
                }
                Err(_) => {
                    if let Err(e) = py.check_signals() {
                        task.abort();
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Which wait: connected, synced (the relay holds our changes) or agreed
/// (and we hold the relay's).
#[derive(Clone, Copy)]
enum Goal {
    Connected,
    Synced,
    Agreed,
}

async fn reach(shared: Arc<Shared>, goal: Goal, timeout: Duration) -> Result<(), SyncError> {
    let outcome = tokio::time::timeout(timeout, async {
        let mut handle = shared.handle.lock().await;
        let Some(handle) = handle.as_mut() else {
            return Err(SyncError::Stopped);
        };
        match goal {
            Goal::Connected => handle.wait_connected(timeout).await,
            Goal::Synced => handle.wait_synced(timeout).await,
            Goal::Agreed => handle.wait_agreed(timeout).await,
        }
    })
    .await;
    outcome.unwrap_or(Err(SyncError::Timeout(timeout)))
}

#[pymethods]
impl PySync {
    /// The driver's status as a dict.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.shared.status.borrow().clone();
        let d = PyDict::new(py);
        let state = if self.shared.closing.is_cancelled() {
            "closed"
        } else {
            match s.state {
                ConnectionState::Connecting => "connecting",
                ConnectionState::Connected => "connected",
                ConnectionState::Stopped => "stopped",
            }
        };
        d.set_item("state", state)?;
        d.set_item("relay_url", s.relay_url)?;
        d.set_item("synced", s.synced)?;
        d.set_item("agreed", s.agreed)?;
        d.set_item("pending", s.pending)?;
        d.set_item("connects", s.connects)?;
        d.set_item("last_error", s.last_error.map(|e| e.to_string()))?;
        d.set_item("refused", s.refused.map(|e| e.to_string()))?;
        d.set_item(
            "token_expires",
            s.token_expires
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
        )?;
        d.set_item("skipped", s.skipped)?;
        d.set_item("read_only", s.read_only.into_iter().collect::<Vec<_>>())?;
        d.set_item(
            "unpushed",
            s.unpushed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        )?;
        d.set_item("bytes_sent", s.stats.bytes_sent)?;
        d.set_item("bytes_received", s.stats.bytes_received)?;
        d.set_item("messages_sent", s.stats.messages_sent)?;
        d.set_item("messages_received", s.stats.messages_received)?;
        Ok(d)
    }

    /// Waits until the relay welcomed this replica.
    fn wait_connected(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        self.wait(py, move |s| reach(s, Goal::Connected, timeout))
    }

    /// Waits until the relay holds every local change made before the call.
    fn wait_synced(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        self.wait(py, move |s| reach(s, Goal::Synced, timeout))
    }

    /// Waits until, in addition, this replica holds all the relay holds.
    fn wait_agreed(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        self.wait(py, move |s| reach(s, Goal::Agreed, timeout))
    }

    /// Replaces the token (on the open connection and every later one).
    fn set_token(&self, py: Python<'_>, token: String) -> PyResult<()> {
        self.wait(py, move |shared| async move {
            let handle = shared.handle.lock().await;
            match handle.as_ref() {
                Some(h) => h.set_token(token).await,
                None => Err(SyncError::Stopped),
            }
        })
    }

    /// Stops syncing; waits in progress raise `accord.Closed`.
    fn close(&self, py: Python<'_>) {
        self.shared.close(py);
    }
}
