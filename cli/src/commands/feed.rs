//! `accord feed`: a collection's change feed from a relay, over its HTTP
//! API (`GET /v1/collections/{c}/changes`): pages until the end, or with
//! `--follow` the event stream, forever. Each event is one line (a JSON
//! object per line with `--json`); the cursor to resume from is the last
//! event's, and is printed on stderr when the command ends.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Ctx;
use crate::output::short;

/// Events asked for per page.
const PAGE: usize = 500;

/// Where the relay is: host, port, and whether over TLS.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    tls: bool,
}

impl Target {
    fn parse(url: &str) -> Result<Self> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            bail!("bad relay URL '{url}': expected ws://, wss://, http:// or https://HOST:PORT");
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse()
                    .map_err(|_| anyhow!("bad port in relay URL '{url}'"))?;
                (host.trim_matches(['[', ']']).to_owned(), port)
            }
            _ => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            bail!("bad relay URL '{url}': no host");
        }
        Ok(Target { host, port, tls })
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A byte stream to the relay, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(target: &Target) -> Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(target.authority())
        .await
        .with_context(|| format!("cannot reach the relay at {}", target.authority()))?;
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.clone())
        .with_context(|| format!("bad host name '{}'", target.host))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {} failed", target.host))?;
    Ok(Box::new(tls))
}

/// Sends a GET and returns the response, or an error naming the relay's
/// error answer.
async fn get(
    target: &Target,
    path: &str,
    token: &str,
    stream: bool,
) -> Result<hyper::Response<Incoming>> {
    let io = connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP handshake with the relay failed")?;
    tokio::spawn(conn);
    let mut request = Request::get(path).header("host", target.authority());
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if stream {
        request = request.header("accept", "text/event-stream");
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await
        .context("the relay did not answer")?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    bail!("the relay refused: {status}: {message}");
}

/// `accord feed`.
pub fn feed(
    ctx: &mut Ctx,
    relay: &str,
    token: &str,
    collection: &str,
    since: u64,
    follow: bool,
) -> Result<ExitCode> {
    let target = Target::parse(relay)?;
    accord_engine::replica::check_collection(collection)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let last = runtime.block_on(async {
        if follow {
            stream(ctx, &target, token, collection, since).await
        } else {
            pages(ctx, &target, token, collection, since).await
        }
    })?;
    ctx.out.flush()?;
    eprintln!("cursor: {last}");
    Ok(ExitCode::SUCCESS)
}

/// Reads pages until one is empty; returns the last cursor.
async fn pages(
    ctx: &mut Ctx,
    target: &Target,
    token: &str,
    collection: &str,
    mut since: u64,
) -> Result<u64> {
    loop {
        let path = format!("/v1/collections/{collection}/changes?since={since}&limit={PAGE}");
        let body = get(target, &path, token, false)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        let page: Value = serde_json::from_slice(&body).context("the relay's answer")?;
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        for change in &changes {
            print(ctx, change)?;
        }
        let next = page["next"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(since);
        if changes.is_empty() || next == since {
            return Ok(since);
        }
        since = next;
    }
}

/// Prints the event stream until it ends (the relay stops, the token
/// expires) or the process is interrupted; returns the last cursor.
async fn stream(
    ctx: &mut Ctx,
    target: &Target,
    token: &str,
    collection: &str,
    mut since: u64,
) -> Result<u64> {
    let path = format!("/v1/collections/{collection}/changes?since={since}");
    let mut body = get(target, &path, token, true).await?.into_body();
    let mut buffer = String::new();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tokio::signal::ctrl_c() => return Ok(since),
        };
        let Some(frame) = frame else {
            return Ok(since);
        };
        let Ok(data) = frame.context("reading the event stream")?.into_data() else {
            continue;
        };
        buffer.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let event: Value = serde_json::from_str(&data).context("an event's data")?;
            if block.lines().any(|l| l.trim() == "event: error") {
                bail!("the relay failed: {}", event["message"]);
            }
            print(ctx, &event)?;
            ctx.out.flush()?;
            if let Some(cursor) = event["cursor"].as_str().and_then(|c| c.parse().ok()) {
                since = cursor;
            }
        }
    }
}

/// One event: a JSON line, or `cursor  time  event  id  content`.
fn print(ctx: &mut Ctx, change: &Value) -> Result<()> {
    if ctx.out.json {
        ctx.out.line(&change.to_string())?;
        return Ok(());
    }
    let text = |key: &str| change[key].as_str().unwrap_or_default().to_owned();
    let content = change["value"].to_string();
    let content = if content.chars().count() > 60 {
        format!("{}…", content.chars().take(59).collect::<String>())
    } else {
        content
    };
    let event = text("event");
    ctx.out.line(&format!(
        "{:>8}  {}  {:<7}  {}  {}",
        text("cursor"),
        text("time"),
        event,
        short(&text("id"), 28),
        content
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn relay_urls_of_every_scheme_name_host_port_and_tls() {
        let t = Target::parse("ws://127.0.0.1:7420").expect("ws");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("127.0.0.1", 7420, false));
        let t = Target::parse("wss://relay.example.com/").expect("wss");
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("relay.example.com", 443, true)
        );
        let t = Target::parse("http://[::1]:8080").expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://host:notaport").is_err());
    }
}
