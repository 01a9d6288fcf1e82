//! The `accord-relay` binary: parses arguments, sets up logging, binds the
//! listeners, and runs the relay until SIGINT or SIGTERM. `accord-relay
//! token` mints an access token with the relay's secret.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use accord_engine::sync::{Access, Limits, OpenAccess};
use accord_engine::Collection;
use accord_relay::auth::{Right, Tokens};
use accord_relay::cluster::ClusterConfig;
use accord_relay::config::{Config, DEFAULT_DB, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The smallest `--max-handshake-frame-bytes` accepted: a `Hello` with a
/// token of a few collections fits easily.
/// A replica packs up to this much into one message before `Welcome`.
const MIN_HANDSHAKE_FRAME_BYTES: usize = accord_engine::sync::PACKED_BYTES_BEFORE_WELCOME;

/// A replica packs up to this much into one message after `Welcome`.
const MIN_FRAME_BYTES: usize = accord_engine::sync::PACKED_BYTES;

/// Accord's relay: stores every document it relays and forwards changes
/// live between replicas.
#[derive(Debug, Parser)]
#[command(name = "accord-relay", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    secret: SecretArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint an access token and print it alone on stdout.
    Token {
        /// A collection the token grants (repeatable).
        #[arg(long = "collection", value_name = "C", required = true)]
        collections: Vec<String>,
        /// Grant reading only (default: read and write).
        #[arg(long)]
        read_only: bool,
        /// How long the token is valid, such as 90m, 12h, 30d (at least 1s).
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_ttl)]
        ttl: Duration,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

/// Where the signing secret comes from.
#[derive(Debug, Args)]
struct SecretArgs {
    /// A file holding the secret that signs tokens (at least 16 bytes).
    #[arg(long, value_name = "PATH", env = "ACCORD_RELAY_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 lets the OS choose).
    #[arg(long, env = "ACCORD_RELAY_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// SQLite file holding every document.
    #[arg(long, env = "ACCORD_RELAY_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// A separate address serving /health and /metrics, besides the main
    /// port, which always serves them ("off", the default: none).
    #[arg(long, env = "ACCORD_RELAY_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    metrics_listen: String,
    /// Run without a secret: every connection may read and write every
    /// collection. Without a secret and without --open the relay refuses
    /// to start, on any address.
    #[arg(
        long,
        env = "ACCORD_RELAY_OPEN",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    open: bool,
    /// A file holding an earlier secret (at least 16 bytes) whose tokens
    /// are still accepted, for the overlap of a secret rotation; it signs
    /// nothing. Repeatable. `ACCORD_RELAY_PREVIOUS_SECRET` gives one such
    /// secret itself.
    #[arg(long = "previous-secret-file", value_name = "PATH")]
    previous_secret_files: Vec<PathBuf>,
    /// Largest accepted WebSocket message, in bytes.
    #[arg(long, env = "ACCORD_RELAY_MAX_FRAME_BYTES", default_value_t = Config::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Largest accepted WebSocket message before the connection is
    /// welcomed (the Hello with its token), in bytes.
    #[arg(long, env = "ACCORD_RELAY_MAX_HANDSHAKE_FRAME_BYTES", default_value_t = Config::default().max_handshake_frame_bytes)]
    max_handshake_frame_bytes: usize,
    /// Most connections open at once.
    #[arg(long, env = "ACCORD_RELAY_MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    max_connections: usize,
    /// Most connections one client (an IPv4 address, an IPv6 /64) may have
    /// open at once; loopback is not counted; 0: no limit.
    #[arg(long, env = "ACCORD_RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = Config::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Most distinct documents one connection may sync.
    #[arg(long, env = "ACCORD_RELAY_MAX_DOCS_PER_CONNECTION", default_value_t = Limits::default().max_docs)]
    max_docs_per_connection: usize,
    /// Sustained frames per second one connection may send.
    #[arg(long, env = "ACCORD_RELAY_RATE", default_value_t = Limits::default().rate_per_sec)]
    rate: f64,
    /// Frames one connection may send in a burst above the rate.
    #[arg(long, env = "ACCORD_RELAY_BURST", default_value_t = Limits::default().burst)]
    burst: f64,
    /// Seconds a new connection has to say hello.
    #[arg(
        long,
        env = "ACCORD_RELAY_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    handshake_timeout_secs: u64,
    /// Seconds between pings to each connection.
    #[arg(long, env = "ACCORD_RELAY_PING_SECS", default_value_t = 20)]
    ping_secs: u64,
    /// Seconds of silence after which a connection is closed.
    #[arg(long, env = "ACCORD_RELAY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Seconds a document stays in memory without traffic.
    #[arg(long, env = "ACCORD_RELAY_DOC_IDLE_SECS", default_value_t = 30)]
    doc_idle_secs: u64,
    /// Documents kept loaded in memory; bounds the relay's memory.
    #[arg(long, env = "ACCORD_RELAY_CACHE_DOCS", default_value_t = Config::default().cache_docs)]
    cache_docs: usize,
    /// Largest document stored, in bytes; larger ones are refused with `too_large`.
    #[arg(long, env = "ACCORD_RELAY_MAX_DOCUMENT_BYTES", default_value_t = Config::default().max_document_bytes)]
    max_document_bytes: u64,
    /// Collection that documents first created by automerge-repo clients
    /// (at /automerge-repo) are stored in, when their token does not grant
    /// writing exactly one collection.
    #[arg(long, env = "ACCORD_RELAY_AUTOMERGE_REPO_COLLECTION", value_name = "NAME",
          default_value = accord_engine::sync::repo_session::DEFAULT_COLLECTION,
          value_parser = parse_collection)]
    automerge_repo_collection: Collection,
    /// A file of webhooks (TOML `[[webhook]]` tables: name, url,
    /// collections, secret or secret_file; see docs/change-feed.md) that
    /// receive their collections' changes.
    #[arg(long, env = "ACCORD_RELAY_WEBHOOKS", value_name = "FILE")]
    webhooks: Option<PathBuf>,
    /// Run as a cluster node on this PostgreSQL store
    /// (postgres://USER@HOST[:PORT]/DB) instead of the SQLite file: every
    /// node given the same store (and --store-schema) serves the same
    /// documents. Migrations run at start.
    #[arg(long, env = "ACCORD_RELAY_STORE", value_name = "URL")]
    store: Option<String>,
    /// The PostgreSQL schema holding the store's tables.
    #[arg(long, env = "ACCORD_RELAY_STORE_SCHEMA", value_name = "NAME",
          default_value = accord_relay::cluster::DEFAULT_SCHEMA, requires = "store")]
    store_schema: String,
    /// Connections in the PostgreSQL pool.
    #[arg(
        long,
        env = "ACCORD_RELAY_STORE_POOL",
        default_value_t = 16,
        requires = "store"
    )]
    store_pool: usize,
    /// The NATS bus (nats://HOST:PORT) carrying each node's commits to the
    /// other nodes of the cluster, live; without it nodes learn of each
    /// other's commits from the store, every --catch-up-secs.
    #[arg(long, env = "ACCORD_RELAY_BUS", value_name = "URL", requires = "store")]
    bus: Option<String>,
    /// Seconds between a cluster node's checks of the store for commits
    /// the bus did not bring.
    #[arg(
        long,
        env = "ACCORD_RELAY_CATCH_UP_SECS",
        default_value_t = 2,
        requires = "store"
    )]
    catch_up_secs: u64,
}

fn parse_collection(name: &str) -> Result<Collection, String> {
    Collection::new(name).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Token {
            collections,
            read_only,
            ttl,
            secret,
        }) => mint(&collections, read_only, ttl, &secret),
        None => serve(cli.serve, &cli.secret),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accord-relay: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A token lifetime: a duration of at least one second (a shorter one
/// would mint a token that is expired before anyone can use it).
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(1) {
        return Err(format!(
            "a token valid for {text} would be expired when it is printed; give at least 1s"
        ));
    }
    Ok(ttl)
}

/// The secret from `ACCORD_RELAY_SECRET` or `--secret-file`, if any.
fn secret(args: &SecretArgs) -> anyhow::Result<Option<Tokens>> {
    let bytes = match (&args.secret_file, std::env::var("ACCORD_RELAY_SECRET")) {
        (Some(path), _) => std::fs::read(path)
            .with_context(|| format!("cannot read secret file {}", path.display()))?,
        (None, Ok(text)) => text.into_bytes(),
        (None, Err(_)) => return Ok(None),
    };
    Ok(Some(Tokens::new(&bytes)?))
}

fn mint(
    collections: &[String],
    read_only: bool,
    ttl: Duration,
    args: &SecretArgs,
) -> anyhow::Result<()> {
    let Some(tokens) = secret(args)? else {
        bail!("no secret: set ACCORD_RELAY_SECRET or give --secret-file PATH (the relay's own)");
    };
    let right = if read_only {
        Right::Read
    } else {
        Right::ReadWrite
    };
    let mut rights = BTreeMap::new();
    for c in collections {
        accord_engine::replica::check_collection(c)?;
        rights.insert(c.clone(), right);
    }
    announce(&tokens.mint(rights, ttl));
    Ok(())
}

fn serve(args: ServeArgs, secret_args: &SecretArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let limits = checked_limits(&args)?;
    let mut config = config(&args, limits, access(&args, secret_args)?);
    if let Some(file) = &args.webhooks {
        config.webhooks = accord_relay::webhooks::load(file)?;
    }
    // Held until the relay has stopped: a second relay on this file is
    // refused. Cluster nodes share PostgreSQL instead, by design.
    let lock = match config.cluster {
        Some(_) => None,
        None => Some(accord_relay::db_lock::DbLock::acquire(&config.db)?),
    };
    let files = accord_relay::open_files::raise_for(config.max_connections)?;
    tracing::info!(
        soft = files.soft,
        hard = files.hard,
        max_connections = config.max_connections,
        "open-file limit"
    );
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(run(config, &args.metrics_listen));
    drop(runtime); // every task is done with the database before the lock goes
    drop(lock);
    result
}

/// The previous secrets from `--previous-secret-file` and
/// `ACCORD_RELAY_PREVIOUS_SECRET`, in that order.
fn previous_secrets(args: &ServeArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut secrets = Vec::new();
    for path in &args.previous_secret_files {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read previous secret file {}", path.display()))?;
        secrets.push(bytes);
    }
    if let Ok(text) = std::env::var("ACCORD_RELAY_PREVIOUS_SECRET") {
        secrets.push(text.into_bytes());
    }
    Ok(secrets)
}

/// The current secret's tokens plus the previous secrets that still verify.
fn rotating(tokens: Tokens, previous: Vec<Vec<u8>>) -> anyhow::Result<Tokens> {
    let mut tokens = tokens;
    for (i, secret) in previous.iter().enumerate() {
        tokens = tokens
            .with_previous(secret)
            .with_context(|| format!("previous secret {} of {}", i + 1, previous.len()))?;
    }
    if tokens.previous_secrets() > 0 {
        tracing::info!(
            previous = tokens.previous_secrets(),
            "tokens signed with previous secrets are still accepted; new tokens use the current one"
        );
    }
    Ok(tokens)
}

/// Who may do what: signed tokens with a secret, everyone with `--open`.
/// Having neither is an error, whatever the address: a relay on loopback
/// behind a public TLS proxy is as public as the proxy.
fn access(args: &ServeArgs, secret_args: &SecretArgs) -> anyhow::Result<Arc<dyn Access>> {
    let previous = previous_secrets(args)?;
    if !previous.is_empty() && secret(secret_args)?.is_none() {
        bail!(
            "previous secrets (--previous-secret-file, ACCORD_RELAY_PREVIOUS_SECRET) only \
             extend a current secret: set ACCORD_RELAY_SECRET or --secret-file too"
        );
    }
    match (secret(secret_args)?, args.open) {
        (Some(tokens), false) => Ok(Arc::new(rotating(tokens, previous)?)),
        (Some(_), true) => bail!(
            "both a secret and --open (or ACCORD_RELAY_OPEN) were given: \
             drop --open to require tokens, or drop the secret to run open"
        ),
        (None, true) => {
            tracing::warn!(
                listen = %args.listen,
                "OPEN MODE (--open): no secret, no authentication; anyone who can reach this relay, \
                 directly or through a proxy, may read and write every collection"
            );
            Ok(Arc::new(OpenAccess))
        }
        (None, false) => bail!(
            "refusing to start without a secret: anyone who can reach {} (directly, or through \
             a proxy in front of it) could read and write every collection. Either set a secret \
             (ACCORD_RELAY_SECRET, or --secret-file PATH; at least 16 bytes) and give clients \
             tokens from `accord-relay token`, or pass --open (or ACCORD_RELAY_OPEN=1) to run \
             without authentication on purpose",
            args.listen
        ),
    }
}

/// Refuses settings that are wrong on their own, by flag, before anything
/// starts; returns the per-connection limits.
fn checked_limits(args: &ServeArgs) -> anyhow::Result<Limits> {
    if args.rate <= 0.0 || args.burst < 1.0 {
        bail!("--rate must be positive and --burst at least 1");
    }
    if args.max_handshake_frame_bytes < MIN_HANDSHAKE_FRAME_BYTES {
        bail!(
            "--max-handshake-frame-bytes must be at least {MIN_HANDSHAKE_FRAME_BYTES}: a Hello \
             with its token, and what a replica packs with it, has to fit"
        );
    }
    if args.max_frame_bytes < MIN_FRAME_BYTES {
        bail!(
            "--max-frame-bytes must be at least {MIN_FRAME_BYTES}: replicas pack frames into \
             messages of up to that size"
        );
    }
    if args.cache_docs == 0 {
        bail!("--cache-docs must be at least 1 (documents kept loaded in memory)");
    }
    Ok(Limits {
        max_docs: args.max_docs_per_connection,
        rate_per_sec: args.rate,
        burst: args.burst,
        ..Limits::default()
    })
}

fn config(args: &ServeArgs, limits: Limits, access: Arc<dyn Access>) -> Config {
    Config {
        listen: args.listen,
        db: args.db.clone(),
        max_frame_bytes: args.max_frame_bytes,
        max_handshake_frame_bytes: args.max_handshake_frame_bytes,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        doc_idle: Duration::from_secs(args.doc_idle_secs),
        cache_docs: args.cache_docs,
        max_document_bytes: args.max_document_bytes,
        handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
        ping_interval: Duration::from_secs(args.ping_secs.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
        limits,
        access,
        automerge_repo_collection: args.automerge_repo_collection.clone(),
        cluster: args.store.as_ref().map(|store| ClusterConfig {
            store: store.clone(),
            schema: args.store_schema.clone(),
            bus: args.bus.clone(),
            pool_size: args.store_pool,
            catch_up_interval: Duration::from_secs(args.catch_up_secs.max(1)),
        }),
        ..Config::default()
    }
}

async fn run(config: Config, metrics_listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let relay = accord_relay::server::start(config.clone(), shutdown.clone()).await?;
    if config.cluster.is_none() {
        tracing::info!(db = %config.db.display(), "relay database open");
    }
    let http = match metrics_listen {
        "off" => None,
        text => {
            let metrics_addr: SocketAddr = text
                .parse()
                .with_context(|| format!("bad --metrics-listen '{text}'"))?;
            let http = tokio::net::TcpListener::bind(metrics_addr)
                .await
                .with_context(|| {
                    format!("cannot listen on {metrics_addr} for /health and /metrics")
                })?;
            Some(http)
        }
    };
    // One line on stdout, as the docs promise and scripts read; the rest
    // goes to the log.
    announce(&format!("accord-relay listening on {addr}"));
    if let Some(http) = http {
        tracing::info!(addr = %http.local_addr()?, "serving /health and /metrics");
        tokio::spawn(accord_relay::metrics::serve_http(
            http,
            relay.metrics(),
            shutdown.clone(),
        ));
    }
    accord_relay::server::serve(listener, relay, shutdown).await
}

/// Prints a startup line on stdout. Whoever started the relay may have
/// closed its end of stdout after reading the first line; that is no error.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
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
