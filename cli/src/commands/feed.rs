//! `accord feed`: a collection's change feed from a relay, over its HTTP
//! API (`GET /v1/collections/{c}/changes`): pages until the end, or with
//! `--follow` the event stream, forever. Each event is one line (a JSON
//! object per line with `--json`); the cursor to resume from is the last
//! event's, and is printed on stderr when the command ends.
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

/// Sends a GET and returns the response, or an error naming the relay's
/// error answer.
async fn get(
    target: &Target,
    path: &str,
    token: &str,
    stream: bool,
) -> Result<hyper::Response<Incoming>> {
    call(target, "GET", path, token, stream).await
}

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
    bail!("the relay refused: {status}: {message}");
}

/// `accord feed`.
pub fn feed(
    ctx: &mut Ctx,
    relay: &RelayArgs,
    collection: &str,
    since: u64,
    follow: bool,
) -> Result<ExitCode> {
    let (target, token) = (relay_target(relay.primary())?, relay.token.as_str());
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
        let page = json(target, "GET", &path, token).await?;
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

fn relay_target(relay: &str) -> Result<Target> {
    Target::parse(relay).map_err(|e| anyhow::anyhow!("bad relay URL: {e:#}"))
}

/// A request's JSON answer.
async fn json(target: &Target, method: &str, path: &str, token: &str) -> Result<Value> {
    let body = call(target, method, path, token, false)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    serde_json::from_slice(&body).context("the relay's answer is not JSON")
}

/// `accord webhooks`.
pub fn webhooks(
    ctx: &mut Ctx,
    relay: &RelayArgs,
    replay: Option<&str>,
    drop: Option<&str>,
) -> Result<()> {
    let (target, token) = (relay_target(relay.primary())?, relay.token.as_str());
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
            json(&target, "POST", &path, token).await?;
            return Ok(ctx.out.line(&format!("delivered {name}/{id}"))?);
        }
        if let Some(text) = drop {
            let (name, id) = letter(text)?;
            let path = format!("/v1/webhooks/{name}/dead-letters/{id}");
            json(&target, "DELETE", &path, token).await?;
            return Ok(ctx.out.line(&format!("dropped {name}/{id}"))?);
        }
        let mut hooks = json(&target, "GET", "/v1/webhooks", token).await?["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for hook in &mut hooks {
            let name = hook["name"].as_str().unwrap_or_default().to_owned();
            let path = format!("/v1/webhooks/{name}/dead-letters");
            hook["dead_letters"] =
                json(&target, "GET", &path, token).await?["dead_letters"].clone();
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
