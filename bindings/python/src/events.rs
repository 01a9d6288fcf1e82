//! Change events for Python: pulled one at a time (the iterator), or
//! pushed to a callback on the subscription's own thread, named
//! `accord-events`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accord_engine::{ChangeEvent, ChangeKind, Origin, RecvError, Subscription};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{hashes, seconds};
use crate::errors;

/// How long a blocked wait sleeps before it lets Python handle signals
/// (Ctrl-C) and checks whether it was closed.
pub const SLICE: Duration = Duration::from_millis(100);

/// A stream of change events: the native half of `accord.Subscription`.
#[pyclass(module = "accord._accord", name = "Subscription", frozen)]
#[derive(Debug)]
pub struct PySubscription {
    /// `None` once closed.
    subscription: Mutex<Option<Arc<Subscription>>>,
    /// Tells the callback thread to stop.
    stop: Arc<AtomicBool>,
    /// The callback thread, if one was started.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PySubscription {
    pub fn new(subscription: Subscription) -> Self {
        PySubscription {
            subscription: Mutex::new(Some(Arc::new(subscription))),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        }
    }

    fn current(&self) -> PyResult<Arc<Subscription>> {
        self.subscription
            .lock()
            .clone()
            .ok_or_else(|| errors::Closed::new_err("the subscription is closed"))
    }
}

/// What reaches Python: an event, or how many were missed.
enum Delivery {
    Event(ChangeEvent),
    Missed(u64),
}

/// What one receive gave: something to deliver, nothing yet, or the end.
enum Received {
    Deliver(Delivery),
    Nothing,
    Ended,
}

fn receive(subscription: &Subscription, wait: Duration) -> Received {
    match subscription.recv_timeout(wait) {
        Ok(event) => Received::Deliver(Delivery::Event(event)),
        Err(RecvError::Lagged(n)) => Received::Deliver(Delivery::Missed(n)),
        Err(RecvError::Timeout) => Received::Nothing,
        Err(RecvError::Closed) => Received::Ended,
    }
}

/// A delivery as the dict `accord.ChangeEvent` is built from.
fn event_dict<'py>(py: Python<'py>, delivery: &Delivery) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match delivery {
        Delivery::Event(e) => {
            d.set_item("id", e.doc.to_string())?;
            d.set_item("collection", e.collection.as_str())?;
            let kind = match e.kind {
                ChangeKind::Created => "created",
                ChangeKind::Changed => "changed",
                ChangeKind::Deleted => "deleted",
            };
            d.set_item("kind", kind)?;
            match &e.origin {
                Origin::Local => d.set_item("origin", py.None())?,
                Origin::Remote(peer) => d.set_item("origin", peer.to_string())?,
            }
            d.set_item("heads", hashes(e.heads.as_slice()))?;
            d.set_item("missed", 0)?;
        }
        Delivery::Missed(n) => {
            d.set_item("id", py.None())?;
            d.set_item("collection", py.None())?;
            d.set_item("kind", "missed")?;
            d.set_item("origin", py.None())?;
            d.set_item("heads", Vec::<String>::new())?;
            d.set_item("missed", *n)?;
        }
    }
    Ok(d)
}

#[pymethods]
impl PySubscription {
    /// The next event as a dict, waiting at most `timeout` seconds (for
    /// ever if `None`); `None` if none came. Raises `accord.Closed` once
    /// the subscription or its replica is closed.
    #[pyo3(signature = (timeout=None))]
    fn next<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let subscription = self.current()?;
        let deadline = match timeout {
            Some(t) => Some(Instant::now() + seconds(t)?),
            None => None,
        };
        loop {
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            let received = py.detach(|| receive(&subscription, wait));
            match received {
                Received::Ended => {
                    return Err(errors::Closed::new_err(
                        "the subscription's replica is closed",
                    ))
                }
                Received::Nothing => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    py.check_signals()?;
                    if self.subscription.lock().is_none() {
                        return Err(errors::Closed::new_err("the subscription is closed"));
                    }
                }
                Received::Deliver(delivery) => return event_dict(py, &delivery).map(Some),
            }
        }
    }

    /// Calls `callback(dict)` for every event, on a thread of its own
    /// (`accord-events`), until `close`. An exception the callback raises
    /// is reported (`sys.unraisablehook`) and the next event still comes.
    fn start(&self, callback: Py<PyAny>) -> PyResult<()> {
        let subscription = self.current()?;
        let mut thread = self.thread.lock();
        if thread.is_some() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this subscription already has a callback",
            ));
        }
        let stop = Arc::clone(&self.stop);
        let handle = std::thread::Builder::new()
            .name("accord-events".into())
            .spawn(move || deliver(&subscription, &stop, &callback))
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        *thread = Some(handle);
        Ok(())
    }

    /// Unsubscribes; a callback thread stops after the call in progress.
    fn close(&self, py: Python<'_>) {
        self.stop.store(true, Ordering::SeqCst);
        self.subscription.lock().take();
        let thread = self.thread.lock().take();
        // A callback that closes its own subscription does not wait for
        // itself.
        if let Some(thread) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            py.detach(|| {
                let _ = thread.join();
            });
        }
    }

    /// Whether `close` was called.
    fn is_closed(&self) -> bool {
        self.subscription.lock().is_none()
    }
}

/// The callback thread's loop.
fn deliver(subscription: &Subscription, stop: &AtomicBool, callback: &Py<PyAny>) {
    while !stop.load(Ordering::SeqCst) {
        let received = receive(subscription, SLICE);
        match received {
            Received::Ended => return,
            Received::Nothing => continue,
            Received::Deliver(delivery) => Python::attach(|py| {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let outcome =
                    event_dict(py, &delivery).and_then(|d| callback.call1(py, (d,)).map(drop));
                if let Err(e) = outcome {
                    e.write_unraisable(py, Some(callback.bind(py)));
                }
            }),
        }
    }
}
