//! A small HTTP client over hyper and rustls: what `accord feed` reads the
//! change feed with and what webhooks deliver with, plain or TLS (the web
//! PKI's roots, as the sync client's WebSocket uses). [`send`] and
//! [`fetch`] use a connection per request; a [`Connection`] keeps one open
//! across requests to one server (a webhook's deliveries), so a busy
//! endpoint costs one TCP and TLS handshake, not one per batch.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where requests go: a URL's scheme, host, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether over TLS (`https`, `wss`).
    pub tls: bool,
    /// The URL's path and query (`/` if it had none).
    pub path: String,
}

impl Target {
    /// Parses an `http`, `https`, `ws` or `wss` URL.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: Uri = url.parse().map_err(|e| anyhow!("bad URL '{url}': {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https" | "wss") => true,
            Some("http" | "ws") => false,
            _ => bail!("bad URL '{url}': expected http://, https://, ws:// or wss://HOST[:PORT]"),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("bad URL '{url}': no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        // `Uri` takes any text after the host's colon; a port must be a
        // number.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let after_host = authority.rfind(']').unwrap_or(0);
        if let Some(colon) = authority[after_host..].rfind(':') {
            let port = &authority[after_host + colon + 1..];
            if port.parse::<u16>().is_err() {
                bail!("bad URL '{url}': the port '{port}' is not a number from 0 to 65535");
            }
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Target {
            host,
            port,
            tls,
            path,
        })
    }

    /// `host:port`, as the `Host` header and the socket address want it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Starts a request to `path` on this target, with its `Host` header.
    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority())
            .header("user-agent", concat!("accord/", env!("CARGO_PKG_VERSION")))
    }
}

/// A byte stream to a server, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(target: &Target) -> Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(target.authority())
        .await
        .with_context(|| format!("cannot reach {}", target.authority()))?;
    let _ = tcp.set_nodelay(true);
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

/// Sends `request` to `target` and returns the response head and its
/// streaming body.
pub async fn send(target: &Target, request: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
    let io = connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .with_context(|| format!("HTTP handshake with {} failed", target.authority()))?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .with_context(|| format!("{} did not answer", target.authority()))
}

/// Sends `request` and reads the whole answer, at most `limit` bytes of
/// body, within `timeout`.
pub async fn fetch(
    target: &Target,
    request: Request<Full<Bytes>>,
    limit: usize,
    timeout: Duration,
) -> Result<(hyper::StatusCode, Bytes)> {
    let exchange = async {
        let response = send(target, request).await?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer from {}: {e}", target.authority()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{} did not answer within {timeout:?}", target.authority()))?
}

/// One server-sent event's name (`message` if it gives none) and data,
/// from a block of lines that ended with a blank line; `None` for a block
/// without data (a keep-alive comment).
pub fn sse_event(block: &str) -> Option<(String, String)> {
    let mut name = String::from("message");
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    (!data.is_empty()).then_some((name, data))
}

/// One kept-alive HTTP/1.1 connection to a target, opened on first use
/// and again after it failed or the server closed it.
#[derive(Debug)]
pub struct Connection {
    /// Where it goes.
    target: Target,
    /// The open connection's sender, if one is open.
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `target`, not opened yet.
    pub fn new(target: Target) -> Self {
        Connection {
            target,
            sender: None,
        }
    }

    /// Like [`fetch`], on the kept-alive connection (a fresh one if it is
    /// closed); a failure closes it.
    pub async fn fetch(
        &mut self,
        request: Request<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(hyper::StatusCode, Bytes)> {
        let result = tokio::time::timeout(timeout, self.exchange(request, limit)).await;
        let outcome = result
            .map_err(|_| {
                anyhow!(
                    "{} did not answer within {timeout:?}",
                    self.target.authority()
                )
            })
            .and_then(|r| r);
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }

    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(hyper::StatusCode, Bytes)> {
        let reusable = self.sender.as_mut().is_some_and(|s| !s.is_closed());
        if !reusable {
            let io = connect(&self.target).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .with_context(|| {
                    format!("HTTP handshake with {} failed", self.target.authority())
                })?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        sender
            .ready()
            .await
            .with_context(|| format!("{} closed the connection", self.target.authority()))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{} did not answer", self.target.authority()))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer from {}: {e}", self.target.authority()))?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn urls_of_every_scheme_name_host_port_tls_and_path() {
        let t = Target::parse("ws://127.0.0.1:7420").expect("ws");
        assert_eq!(
            (t.host.as_str(), t.port, t.tls, t.path.as_str()),
            ("127.0.0.1", 7420, false, "/")
        );
        let t = Target::parse("wss://relay.example.com/").expect("wss");
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("relay.example.com", 443, true)
        );
        let t = Target::parse("http://[::1]:8080/hooks/accord?x=1").expect("v6");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/hooks/accord?x=1")
        );
        assert_eq!(t.authority(), "[::1]:8080");
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://host:notaport").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn server_sent_events_are_read_by_name_and_data() {
        let event = super::sse_event("event: change\nid: 7\ndata: {\"a\":1}\n\n");
        assert_eq!(event, Some(("change".to_owned(), "{\"a\":1}".to_owned())));
        assert_eq!(super::sse_event(": keep-alive\n\n"), None);
    }
}
