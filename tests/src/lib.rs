//! Shared support for Accord's cross-crate integration tests and benchmark
//! harness: a real relay on `127.0.0.1:0` backed by a real SQLite file, and
//! helpers to wait on conditions with a timeout instead of sleeping, and a
//! fault-injecting TCP proxy ([`proxy`]).

pub mod http;
pub mod proxy;
pub mod samod_client;
pub mod wire;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use accord_relay::{Config, Relay};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A relay running in this process.
#[derive(Debug)]
pub struct TestRelay {
    /// `ws://127.0.0.1:<port>`.
    pub url: String,
    /// The address it listens on (for a proxy in front of it).
    pub addr: std::net::SocketAddr,
    /// The relay's state (its replica, counters).
    pub relay: Relay,
    /// Cancelling it shuts the relay down.
    pub shutdown: CancellationToken,
    /// The server task.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestRelay {
    /// Starts a relay on a free loopback port, storing into `db`.
    pub async fn start(db: &Path) -> anyhow::Result<TestRelay> {
        Self::start_with(Config {
            db: db.to_owned(),
            ..Config::default()
        })
        .await
    }

    /// Starts a relay with the given configuration (its `listen` is
    /// ignored: a free loopback port is used).
    pub async fn start_with(config: Config) -> anyhow::Result<TestRelay> {
        Self::start_layered(config, |replica| std::sync::Arc::new(replica)).await
    }

    /// Like [`TestRelay::start_with`], with a layer around the relay's
    /// storage seam (to inject faults behind the real store).
    pub async fn start_layered(
        config: Config,
        store: impl FnOnce(accord_engine::Replica) -> accord_relay::server::Store,
    ) -> anyhow::Result<TestRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("ws://{addr}");
        let shutdown = CancellationToken::new();
        let relay = accord_relay::server::start_with(config, shutdown.clone(), store).await?;
        let task = tokio::spawn(accord_relay::server::serve(
            listener,
            relay.clone(),
            shutdown.clone(),
        ));
        Ok(TestRelay {
            url,
            addr,
            relay,
            shutdown,
            task,
        })
    }

    /// Shuts the relay down gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}

/// Polls `check` until it returns true, failing after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
