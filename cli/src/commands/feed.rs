//! `accord feed`: a collection's change feed from a relay, over its HTTP
//! API (`GET /v1/collections/{c}/changes`): pages until the end, or with
//! `--follow` the event stream, forever. Each event is one line (a JSON
//! object per line with `--json`); the cursor to resume from is the last
//! event's, and is printed on stderr when the command ends, failed or not.
//!
//! Given the nodes of a relay cluster (several `--relay`), which serve the
//! same feed under the same cursors, it moves to the next node when one
//! cannot be reached or fails (a 5xx answer), and, following, when its
//! event stream ends, resuming from the last cursor printed: nothing is
//! missed or printed twice. A refusal (a 4xx answer: bad token, no right)
//! is not retried elsewhere.
//!
//! `accord webhooks`: the relay's webhooks and their dead letters
//! (`/v1/webhooks`), and replaying or dropping one.

use std::process::ExitCode;

use accord_relay::http::client::{send, sse_event, Target};
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::Value;

use super::Ctx;
use crate::args::RelayArgs;
use crate::output::short;

/// Events asked for per page.
const PAGE: usize = 500;

/// An event stream that ends sooner than this counts as ended at once.
const BRIEF_STREAM: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends a request without a body; the response, or an error naming the
/// relay's error answer.
async fn call(
    target: &Target,
    method: &str,
    path: &str,
    token: &str,
    stream: bool,
) -> Result<hyper::Response<Incoming>> {
    let mut request = target.request(method, path);
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if stream {
        request = request.header("accept", "text/event-stream");
    }
    let response = send(target, request.body(Full::new(Bytes::new()))?).await?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(Refused { status, message }.into())
}

/// The relay answered with an error status.
#[derive(Debug)]
struct Refused {
    /// The status.
    status: hyper::StatusCode,
    /// The error's message, or the body.
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the relay refused: {}: {}", self.status, self.message)
    }
}

impl std::error::Error for Refused {}

/// Whether another node of a cluster may be asked after this failure of a
/// `method` request: the node could not be reached (nothing was sent);
/// for a GET, which changes nothing, also when it failed (5xx) or did not
/// answer. Never when it refused (4xx), nor when a change may have been
/// made.
fn worth_another_node(error: &anyhow::Error, method: &str) -> bool {
    // Connecting (TCP or TLS) failed: the request was never sent.
    if error.downcast_ref::<std::io::Error>().is_some() {
        return true;
    }
    method == "GET"
        && error
            .downcast_ref::<Refused>()
            .is_none_or(|refused| refused.status.is_server_error())
}

/// The relays to read from, and the one in use.
struct Relays {
    /// Every `--relay`, in order.
    targets: Vec<Target>,
    /// The one in use.
    current: usize,
}

impl Relays {
    fn new(relay: &RelayArgs) -> Result<Self> {
        let targets = relay
            .relay
            .iter()
            .map(|url| relay_target(url))
            .collect::<Result<Vec<_>>>()?;
        Ok(Relays {
            targets,
            current: 0,
        })
    }

    /// Sends a request to the relay in use, moving on to the next ones
    /// while a relay cannot answer ([`worth_another_node`]); fails when
    /// none could, naming each one's failure.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        stream: bool,
    ) -> Result<hyper::Response<Incoming>> {
        let mut failures = Vec::new();
        for _ in 0..self.targets.len() {
            let target = &self.targets[self.current];
            match call(target, method, path, token, stream).await {
                Ok(response) => return Ok(response),
                Err(e) if self.targets.len() > 1 && worth_another_node(&e, method) => {
                    failures.push(format!("{}: {e:#}", target.authority()));
                    self.next();
                }
                Err(e) => return Err(e),
            }
        }
        bail!("no relay answered: {}", failures.join("; "))
    }

    /// A request's JSON answer (see [`Relays::call`]).
    async fn json(&mut self, method: &str, path: &str, token: &str) -> Result<Value> {
        answer_json(self.call(method, path, token, false).await?).await
    }

    /// Moves to the next relay.
    fn next(&mut self) {
        self.current = (self.current + 1) % self.targets.len();
    }
}

/// `accord feed`.
pub fn feed(
    ctx: &mut Ctx,
    relay: &RelayArgs,
    collection: &str,
    since: u64,
    follow: bool,
) -> Result<ExitCode> {
    let mut relays = Relays::new(relay)?;
    let token = relay.token.as_str();
    accord_engine::replica::check_collection(collection)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut cursor = since;
    let read = runtime.block_on(async {
        if follow {
            stream(ctx, &mut relays, token, collection, &mut cursor).await
        } else {
            pages(ctx, &mut relays, token, collection, &mut cursor).await
        }
    });
    ctx.out.flush()?;
    // Even after a failure: where to resume.
    eprintln!("cursor: {cursor}");
    read?;
    Ok(ExitCode::SUCCESS)
}

/// Reads pages until one is empty, moving `since` past each one printed.
async fn pages(
    ctx: &mut Ctx,
    relays: &mut Relays,
    token: &str,
    collection: &str,
    since: &mut u64,
) -> Result<()> {
    loop {
        let path = format!("/v1/collections/{collection}/changes?since={since}&limit={PAGE}");
        let page = relays.json("GET", &path, token).await?;
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        for change in &changes {
            print(ctx, change)?;
        }
        let next = page["next"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(*since);
        if changes.is_empty() || next == *since {
            return Ok(());
        }
        *since = next;
    }
}

/// Prints the event stream until it ends (the relay stops, the token
/// expires) or the process is interrupted, moving `since` to each event
/// printed. With several relays, a stream that ends or breaks is opened
/// again on the next one, from `since`.
async fn stream(
    ctx: &mut Ctx,
    relays: &mut Relays,
    token: &str,
    collection: &str,
    since: &mut u64,
) -> Result<()> {
    // Streams in a row that ended at once: every relay ending them (all
    // shutting down) ends the command rather than a loop.
    let mut brief = 0;
    loop {
        let path = format!("/v1/collections/{collection}/changes?since={since}");
        let body = relays.call("GET", &path, token, true).await?.into_body();
        let from = relays.targets[relays.current].authority();
        let opened = std::time::Instant::now();
        let ended = tokio::select! {
            ended = events(ctx, body, since) => ended,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        brief = match opened.elapsed() < BRIEF_STREAM {
            true => brief + 1,
            false => 0,
        };
        if brief > relays.targets.len() {
            ended?;
            bail!("every relay ended the event stream as soon as it was opened");
        }
        match ended {
            Ok(()) if relays.targets.len() == 1 => return Ok(()),
            Err(e) if relays.targets.len() == 1 || !worth_another_node(&e, "GET") => return Err(e),
            Ok(()) => eprintln!("the event stream from {from} ended; going on at the next relay"),
            Err(e) => eprintln!("{e:#}; going on at the next relay"),
        }
        relays.next();
    }
}

/// Prints one event stream's events until it ends, moving `since` to each
/// one printed.
async fn events(ctx: &mut Ctx, mut body: Incoming, since: &mut u64) -> Result<()> {
    let mut buffer = String::new();
    loop {
        let Some(frame) = body.frame().await else {
            return Ok(());
        };
        let Ok(data) = frame.context("reading the event stream")?.into_data() else {
            continue;
        };
        buffer.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some((name, data)) = sse_event(&block) else {
                continue; // a keep-alive comment
            };
            let event: Value = serde_json::from_str(&data).context("an event's data")?;
            if name == "error" {
                bail!("the relay failed: {}", event["message"]);
            }
            print(ctx, &event)?;
            ctx.out.flush()?;
            if let Some(cursor) = event["cursor"].as_str().and_then(|c| c.parse().ok()) {
                *since = cursor;
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

fn relay_target(relay: &str) -> Result<Target> {
    Target::parse(relay).map_err(|e| anyhow::anyhow!("bad relay URL: {e:#}"))
}

/// A response's body as JSON.
async fn answer_json(response: hyper::Response<Incoming>) -> Result<Value> {
    let body = response.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&body).context("the relay's answer is not JSON")
}

/// `accord webhooks`.
pub fn webhooks(
    ctx: &mut Ctx,
    relay: &RelayArgs,
    replay: Option<&str>,
    drop: Option<&str>,
) -> Result<()> {
    let mut relays = Relays::new(relay)?;
    let token = relay.token.as_str();
    let letter = |text: &str| -> Result<(String, i64)> {
        let (name, id) = text
            .split_once('/')
            .and_then(|(n, i)| Some((n.to_owned(), i.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("'{text}' is not WEBHOOK/ID (such as search/3)"))?;
        Ok((name, id))
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        if let Some(text) = replay {
            let (name, id) = letter(text)?;
            let path = format!("/v1/webhooks/{name}/dead-letters/{id}/replay");
            relays.json("POST", &path, token).await?;
            return Ok(ctx.out.line(&format!("delivered {name}/{id}"))?);
        }
        if let Some(text) = drop {
            let (name, id) = letter(text)?;
            let path = format!("/v1/webhooks/{name}/dead-letters/{id}");
            relays.json("DELETE", &path, token).await?;
            return Ok(ctx.out.line(&format!("dropped {name}/{id}"))?);
        }
        let mut hooks = relays.json("GET", "/v1/webhooks", token).await?["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for hook in &mut hooks {
            let name = hook["name"].as_str().unwrap_or_default().to_owned();
            let path = format!("/v1/webhooks/{name}/dead-letters");
            hook["dead_letters"] = relays.json("GET", &path, token).await?["dead_letters"].clone();
        }
        if ctx.out.json {
            return Ok(ctx
                .out
                .json_value(&serde_json::json!({ "webhooks": hooks }))?);
        }
        for hook in &hooks {
            print_hook(ctx, hook)?;
        }
        Ok(())
    })
}

/// A webhook, its collections and its dead letters, as lines.
fn print_hook(ctx: &mut Ctx, hook: &Value) -> Result<()> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    ctx.out
        .line(&format!("{}  {}", text(&hook["name"]), text(&hook["url"])))?;
    for c in hook["collections"].as_array().into_iter().flatten() {
        ctx.out.line(&format!(
            "  {}: delivered to cursor {}, {} behind",
            text(&c["collection"]),
            text(&c["cursor"]),
            c["behind"]
        ))?;
    }
    let letters = hook["dead_letters"].as_array().cloned().unwrap_or_default();
    if letters.is_empty() {
        return Ok(ctx.out.line("  no dead letters")?);
    }
    for l in &letters {
        ctx.out.line(&format!(
            "  dead letter {}/{}: {} cursors {}-{}, {} event(s), {} attempt(s), {}: {}",
            text(&hook["name"]),
            l["id"],
            text(&l["collection"]),
            text(&l["first_cursor"]),
            text(&l["last_cursor"]),
            l["events"],
            l["attempts"],
            text(&l["failed"]),
            text(&l["error"])
        ))?;
    }
    Ok(())
}
