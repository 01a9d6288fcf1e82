//! The change feed and webhooks (`--only feed`, and in the default run):
//!
//! - **feed read**: a relay holding `records` records pages through its
//!   collection's feed over HTTP (1,000 per page), in events per second,
//!   against `Replica::changes_since` on the same file in-process (the
//!   machine's limit: no HTTP, no JSON);
//! - **webhook latency**: a replica writes `rate` changes per second
//!   through sync for `seconds`; each change's time from the write to its
//!   arrival at a local receiver, p50 and p99;
//! - **sync with a webhook**: the same replica's cold push of `records`
//!   records to a relay with a webhook attached, against a relay without
//!   one (goal: at most 10% slower).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accord_engine::{ConnectOptions, Replica};
use accord_relay::http::client::{fetch, Target};
use accord_relay::Config;
use accord_tests::TestRelay;
use anyhow::Context;
use axum::body::Bytes;
use serde_json::{json, Value};

use crate::run::{capped, poll_until, Settings};

/// Arrival times of delivered records, by id.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A receiver on loopback recording when each record arrived.
async fn receiver() -> anyhow::Result<(String, Arrivals)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let arrivals: Arrivals = Arc::default();
    let seen = Arc::clone(&arrivals);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let now = Instant::now();
                let batch: Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut seen = seen.lock().expect("arrivals");
                for e in batch["events"].as_array().into_iter().flatten() {
                    if let Some(id) = e["id"].as_str() {
                        seen.entry(id.to_owned()).or_insert(now);
                    }
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, arrivals))
}

/// A relay on a fresh file, with a webhook for `contacts` to `url` if
/// given.
async fn relay(dir: &std::path::Path, hook: Option<&str>) -> anyhow::Result<TestRelay> {
    let mut config = Config {
        db: dir.join("relay.db"),
        ..Config::default()
    };
    if let Some(url) = hook {
        let file = dir.join("hooks.toml");
        std::fs::write(
            &file,
            format!(
                "[[webhook]]\nname = \"bench\"\nurl = \"{url}\"\ncollections = [\"contacts\"]\n\
                 secret = \"the benchmark's webhook secret\"\n"
            ),
        )?;
        config.webhooks = accord_relay::webhooks::load(&file)?;
    }
    TestRelay::start_with(config).await
}

fn contact(i: usize) -> Value {
    json!({"name": format!("contact {i}"), "city": format!("city {}", i % 100), "n": i})
}

/// Feed events per second over HTTP, and from the engine directly.
pub async fn feed_read(records: usize, s: Settings) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let relay = relay(dir.path(), None).await?;
    let contents: Vec<Value> = (0..records).map(contact).collect();
    relay.relay.replica().create_many("contacts", &contents)?;
    let target = Target::parse(&relay.url)?;
    let started = Instant::now();
    let mut since = "0".to_owned();
    let mut events = 0;
    capped(s.cap, "feed read", async {
        loop {
            let path = format!("/v1/collections/contacts/changes?since={since}&limit=1000");
            let request = target.request("GET", &path).body(Default::default())?;
            let (_, body) = fetch(&target, request, 64 << 20, s.cap).await?;
            let page: Value = serde_json::from_slice(&body)?;
            let n = page["changes"].as_array().map_or(0, Vec::len);
            if n == 0 {
                return Ok(());
            }
            events += n;
            since = page["next"].as_str().context("next")?.to_owned();
        }
    })
    .await?;
    let http = events as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(events == records, "read {events} of {records} events");
    let replica = relay.relay.replica().clone();
    let started = Instant::now();
    let (mut since, mut direct) = (0, 0);
    loop {
        let page = replica.changes_since("contacts", since, 1000)?;
        let Some(last) = page.last() else { break };
        since = last.seq;
        direct += page.len();
    }
    let engine = direct as f64 / started.elapsed().as_secs_f64();
    relay.stop().await?;
    Ok((http, engine))
}

/// Webhook latency (p50, p99, ms) for `rate` changes/s over `seconds`.
pub async fn webhook_latency(
    rate: usize,
    seconds: usize,
    s: Settings,
) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let (url, arrivals) = receiver().await?;
    let relay = relay(dir.path(), Some(&url)).await?;
    let replica = Replica::open(dir.path().join("writer.db"))?;
    let mut sync = replica.connect(
        &relay.url,
        ConnectOptions {
            collections: vec!["contacts".into()],
            ..ConnectOptions::default()
        },
    );
    sync.wait_connected(s.cap).await?;
    let total = rate * seconds;
    let interval = Duration::from_secs(1) / rate as u32;
    let mut written = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(interval);
    for i in 0..total {
        tick.tick().await;
        let id = replica.create("contacts", &contact(i))?;
        written.push((id.to_string(), Instant::now()));
    }
    poll_until(s.cap, "webhook deliveries", || {
        arrivals.lock().expect("arrivals").len() >= total
    })
    .await?;
    let arrived = arrivals.lock().expect("arrivals").clone();
    let mut ms: Vec<f64> = written
        .iter()
        .filter_map(|(id, at)| Some(arrived.get(id)?.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let figures = (pick(0.5), pick(0.99));
    sync.close().await;
    relay.stop().await?;
    Ok(figures)
}

/// Seconds for a replica's cold push of `records` records to be synced,
/// with or without a webhook on the relay.
pub async fn push(records: usize, webhook: bool, s: Settings) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let receiver = if webhook {
        Some(receiver().await?)
    } else {
        None
    };
    let relay = relay(dir.path(), receiver.as_ref().map(|(url, _)| url.as_str())).await?;
    let replica = Replica::open(dir.path().join("writer.db"))?;
    let contents: Vec<Value> = (0..records).map(contact).collect();
    replica.create_many("contacts", &contents)?;
    let started = Instant::now();
    let mut sync = replica.connect(
        &relay.url,
        ConnectOptions {
            collections: vec!["contacts".into()],
            ..ConnectOptions::default()
        },
    );
    sync.wait_synced(s.cap).await?;
    let took = started.elapsed().as_secs_f64();
    sync.close().await;
    relay.stop().await?;
    Ok(took)
}
