//! A small HTTP client for the relay's HTTP door: one request per
//! connection over a real socket (the relay's own `http::client`), JSON in and out, and a
//! reader of server-sent events.

use std::net::SocketAddr;
use std::time::Duration;

use accord_relay::http::client::{self, sse_event, Target};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::Value;

/// An answer: status, headers, and the body (JSON if it parses, else the
/// text as a JSON string).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Bytes>,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let target = Target::parse(&format!("http://{addr}")).expect("address");
    let mut request = target.request(method, path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body.unwrap_or_default()))
        .expect("request");
    client::send(&target, request).await.expect("response")
}

/// Sends a request with an optional JSON body and reads the whole answer.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let bytes = body.map(|b| Bytes::from(b.to_string()));
    call_raw(addr, method, path, token, bytes).await
}

/// Like [`call`] with the body as given bytes (not necessarily JSON).
pub async fn call_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Bytes>,
) -> Answer {
    let response = send(addr, method, path, token, body, &[]).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its `event:` name.
    pub name: String,
    /// Its data, parsed as JSON.
    pub data: Value,
}

/// An open event stream.
#[derive(Debug)]
pub struct Events {
    /// The status it was answered with.
    pub status: u16,
    body: Incoming,
    buffer: String,
}

impl Events {
    /// Opens `path` as an event stream.
    pub async fn open(addr: SocketAddr, path: &str, token: Option<&str>) -> Events {
        Self::open_with(addr, path, token, &[]).await
    }

    /// Opens `path` as an event stream with extra request headers.
    pub async fn open_with(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Events {
        let response = send(addr, "GET", path, token, None, headers).await;
        Events {
            status: response.status().as_u16(),
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), `None` if the stream ended or
    /// nothing came within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.read_event())
            .await
            .ok()
            .flatten()
    }

    /// Whether the stream ends (the server closes it) within `timeout`.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let drain = async { while self.read_event().await.is_some() {} };
        tokio::time::timeout(timeout, drain).await.is_ok()
    }

    async fn read_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_event(&block) {
                    return Some(event);
                }
                continue;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

fn parse_event(block: &str) -> Option<Event> {
    let (name, data) = sse_event(block)?;
    Some(Event {
        name,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
    })
}
