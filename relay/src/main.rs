//! The `accord-relay` binary: parses arguments, sets up logging, binds the
//! listener, and runs the relay until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use accord_relay::config::{Config, DEFAULT_DB, DEFAULT_LISTEN};
use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Accord's relay: stores every document it relays and forwards changes
/// live between replicas.
#[derive(Debug, Parser)]
#[command(name = "accord-relay", version)]
struct Args {
    /// Address to listen on (port 0 lets the OS choose).
    #[arg(long, env = "ACCORD_RELAY_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// SQLite file holding every document.
    #[arg(long, env = "ACCORD_RELAY_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// Largest accepted WebSocket message, in bytes.
    #[arg(long, env = "ACCORD_RELAY_MAX_FRAME_BYTES", default_value_t = Config::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Most connections open at once.
    #[arg(long, env = "ACCORD_RELAY_MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    max_connections: usize,
    /// Seconds a document stays in memory without traffic.
    #[arg(long, env = "ACCORD_RELAY_DOC_IDLE_SECS", default_value_t = 30)]
    doc_idle_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        db: args.db,
        max_frame_bytes: args.max_frame_bytes,
        max_connections: args.max_connections,
        doc_idle: Duration::from_secs(args.doc_idle_secs),
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let relay = accord_relay::server::start(config.clone(), shutdown.clone()).await?;
    tracing::info!(db = %config.db.display(), "relay database open");
    println!("accord-relay listening on {addr}");
    accord_relay::server::serve(listener, relay, shutdown).await
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}
