//! The child side of `process.rs`: `bench serve --system S --db PATH`.
//!
//! Accord runs `accord_relay::server` with its default configuration (what
//! `accord-relay --open` runs: open access, no tokens to check). samod runs
//! a `Repo` on its tokio filesystem storage and hands every accepted
//! WebSocket to an acceptor, the way samod's own examples serve. Both listen on `127.0.0.1:0`, print
//! `listening on ADDR`, and shut down gracefully when standard input closes.

use std::io::{Read, Write};
use std::path::PathBuf;

use accord_relay::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::process::System;

/// Runs a server until standard input closes.
pub fn serve(
    system: System,
    db: PathBuf,
    cluster: Option<accord_relay::cluster::ClusterConfig>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        tokio::task::spawn_blocking({
            let shutdown = shutdown.clone();
            move || {
                let mut buf = [0u8; 64];
                while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
                shutdown.cancel();
            }
        });
        match system {
            System::Accord => accord(listener, db, cluster, addr, shutdown).await,
            System::Samod => samod(listener, db, addr, shutdown).await,
        }
    })
}

fn announce(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    Ok(())
}

async fn accord(
    listener: TcpListener,
    db: PathBuf,
    cluster: Option<accord_relay::cluster::ClusterConfig>,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Config {
        db,
        cluster,
        ..Config::default()
    };
    let relay = accord_relay::server::start(config, shutdown.clone()).await?;
    announce(addr)?;
    accord_relay::server::serve(listener, relay, shutdown).await
}

async fn samod(
    listener: TcpListener,
    dir: PathBuf,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let repo = samod::Repo::build_tokio()
        .with_storage(samod::storage::TokioFilesystemStorage::new(&dir))
        .load()
        .await;
    let url = samod::Url::parse(&format!("ws://{addr}"))?;
    let acceptor = repo
        .make_acceptor(url)
        .map_err(|_| anyhow::anyhow!("samod repo stopped"))?;
    announce(addr)?;
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(ws) = tokio_tungstenite_samod::accept_async(stream).await {
                let _ = acceptor.accept_tungstenite(ws);
            }
        });
    }
    repo.stop().await;
    Ok(())
}
