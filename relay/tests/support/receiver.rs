//! A webhook receiver for tests: a real HTTP server (axum) on loopback
//! that records every delivery and answers with scripted statuses.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// What the receiver answered.
    pub status: u16,
    /// The body, parsed.
    pub body: Value,
    /// The body's bytes.
    pub raw: Vec<u8>,
    /// `X-Accord-Signature`.
    pub signature: String,
    /// `Idempotency-Key`.
    pub key: String,
}

impl Delivery {
    /// Whether the signature is HMAC-SHA256 with `secret` over
    /// `"<t>.<body>"`, checked independently of the relay's code.
    pub fn signed_with(&self, secret: &[u8]) -> bool {
        let Some((t, v1)) = self
            .signature
            .split_once(',')
            .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(format!("{t}.").as_bytes());
        mac.update(&self.raw);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        expected == v1
    }

    /// The delivered events.
    pub fn events(&self) -> Vec<Value> {
        self.body["events"].as_array().cloned().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    deliveries: Mutex<Vec<Delivery>>,
    answers: Mutex<VecDeque<u16>>,
    arrived: Notify,
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts on `addr` (`127.0.0.1:0` for any port).
    pub async fn start(addr: &str) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner::default());
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&inner));
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await
        });
        Receiver { addr, inner, stop }
    }

    /// The URL deliveries go to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next deliveries with these statuses (then 200).
    pub fn answer_next(&self, statuses: &[u16]) {
        self.inner
            .answers
            .lock()
            .expect("answers")
            .extend(statuses.iter().copied());
    }

    /// Every delivery so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.deliveries.lock().expect("deliveries").clone()
    }

    /// Waits until `done` holds for the deliveries, failing after
    /// `timeout` with `what`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) {
        let wait = async {
            loop {
                let arrived = self.inner.arrived.notified();
                if done(&self.deliveries()) {
                    return;
                }
                arrived.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            panic!(
                "timed out waiting for {what}; {} deliveries",
                self.deliveries().len()
            );
        }
    }

    /// Stops listening.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = inner
        .answers
        .lock()
        .expect("answers")
        .pop_front()
        .unwrap_or(200);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delivery = Delivery {
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        signature: header("x-accord-signature"),
        key: header("idempotency-key"),
    };
    inner.deliveries.lock().expect("deliveries").push(delivery);
    inner.arrived.notify_waiters();
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
