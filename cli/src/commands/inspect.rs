//! `accord inspect`: the relay's inspector page and HTTP API, read-only,
//! over a local database file, with no relay. Prints the URL on stdout and
//! serves until interrupted.

use std::net::SocketAddr;

use accord_relay::http::Api;
use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::Ctx;

/// Serves the inspector over `ctx`'s database on `listen`.
pub fn inspect(ctx: &mut Ctx, listen: SocketAddr) -> Result<()> {
    if !ctx.db.exists() {
        bail!(
            "database {} does not exist: check the path (--db, ACCORD_DB)",
            ctx.db.display()
        );
    }
    let replica = ctx.replica()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let router = Api::local(replica, shutdown.clone()).router();
        announce(&format!(
            "accord inspect: {} read-only at http://{addr}/ (Ctrl-C to stop)",
            ctx.db.display()
        ));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("serving the inspector")
    })
}

/// Prints the URL line and flushes it, for whoever reads it from a pipe.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
