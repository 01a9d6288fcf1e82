//! Accord's side of W1–W5: `accord_engine::Replica`s, each on its own
//! SQLite file with its own WebSocket, against an Accord relay in a child
//! process.

use std::path::Path;
use std::time::{Duration, Instant};

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ReadDoc, ScalarValue, Value, ROOT};
use accord_engine::sync::SyncDocs;
use accord_engine::{
    ConnectOptions, DocId, Durability, Filter, RecvError, Replica, ReplicaOptions, SyncHandle,
};
use anyhow::Context;

use crate::process::{ServerProcess, System};
use crate::proxy::Proxy;
use crate::run::{capped, poll_until, Settings};
use crate::workloads::{self, Idle, W1, W2, W3, W5};

/// Opens a replica on `dir/name.db`.
pub(crate) fn open(dir: &Path, name: &str, s: Settings) -> anyhow::Result<Replica> {
    let options = ReplicaOptions {
        durability: s.durability,
        received_durability: s.received,
        ..ReplicaOptions::default()
    };
    Ok(Replica::open_with(dir.join(format!("{name}.db")), options)?)
}

/// Options syncing `collection`.
pub(crate) fn options(collection: &str) -> ConnectOptions {
    ConnectOptions {
        collections: vec![collection.to_owned()],
        ..ConnectOptions::default()
    }
}

/// Connects and waits until the relay holds every local change.
async fn connect(r: &Replica, url: &str, coll: &str, cap: Duration) -> anyhow::Result<SyncHandle> {
    let mut handle = r.connect(url, options(coll));
    handle.wait_synced(cap).await.context("wait_synced")?;
    Ok(handle)
}

/// The integer at key `k` of a record, if any.
pub(crate) fn k_of(replica: &Replica, id: &DocId) -> Option<i64> {
    replica.read(id, |doc, _| int_at(doc, "k")).ok().flatten()
}

/// The integer at `key` in the root map.
pub fn int_at(doc: &Automerge, key: &str) -> Option<i64> {
    match doc.get(ROOT, key).ok()??.0 {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Int(i) => Some(*i),
            _ => None,
        },
        _ => None,
    }
}

/// W1: client 0 sets `k` to 0..n-1, one change each; the other k-1
/// clients watch until they see n-1. Returns the result and the relay's
/// peak RSS in KiB.
pub async fn w1(k: usize, n: usize, s: Settings) -> anyhow::Result<(W1, u64)> {
    let dir = tempfile::tempdir()?;
    let relay_dir = moved("ACCORD_BENCH_W1_RELAY_DIR")?;
    let relay_db = relay_dir.as_ref().unwrap_or(&dir).path().join("relay.db");
    let server = ServerProcess::start(System::Accord, &relay_db)?;
    let cpu = server.cpu_secs()?;
    let result = w1_on(&[server.url()], dir.path(), k, n, s).await?;
    let result = W1 {
        server_cpu_s: Some(server.cpu_secs()? - cpu),
        ..result
    };
    let peak = tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok((result, peak))
}

/// A temporary directory inside the directory that the environment
/// variable `var` names, if it is set: W1 can keep its relay's file
/// (`ACCORD_BENCH_W1_RELAY_DIR`) or its readers' files
/// (`ACCORD_BENCH_W1_READERS_DIR`) off the writer's disk, on `/dev/shm`
/// say, to tell whose disk writes slow the writer (docs/performance.md).
fn moved(var: &str) -> anyhow::Result<Option<tempfile::TempDir>> {
    std::env::var_os(var)
        .map(|d| {
            tempfile::tempdir_in(&d).with_context(|| format!("{var}: {}", d.to_string_lossy()))
        })
        .transpose()
}

/// W1 against relays at `urls`: client `i` connects to `urls[i % len]`
/// (the writer, client 0, to the first).
pub(crate) async fn w1_on(
    urls: &[String],
    dir: &Path,
    k: usize,
    n: usize,
    s: Settings,
) -> anyhow::Result<W1> {
    let readers_dir = moved("ACCORD_BENCH_W1_READERS_DIR")?;
    let replicas: Vec<Replica> = (0..k)
        .map(|i| match (&readers_dir, i) {
            (Some(readers), 1..) => open(readers.path(), &format!("c{i}"), s),
            _ => open(dir, &format!("c{i}"), s),
        })
        .collect::<Result<_, _>>()?;
    let mut handles = Vec::with_capacity(k);
    for (i, r) in replicas.iter().enumerate() {
        let url = &urls[i % urls.len()];
        handles.push(capped(s.cap, "W1 connect", connect(r, url, "w1", s.cap)).await?);
    }
    let writer = replicas[0].clone();
    let id = writer.create_with("w1", None, |tx| tx.put(ROOT, "k", -1i64))?;
    poll_until(s.cap, "W1 open", || {
        replicas[1..].iter().all(|r| k_of(r, &id).is_some())
    })
    .await?;
    let deadline = Instant::now() + s.cap;
    let watchers: Vec<_> = replicas[1..]
        .iter()
        .map(|r| {
            let (r, target) = (r.clone(), n as i64 - 1);
            let events = r.subscribe(Filter::Doc(id));
            std::thread::spawn(move || watch(&r, &id, target, &events, deadline))
        })
        .collect();
    let started = Instant::now();
    let last = tokio::task::spawn_blocking(move || -> anyhow::Result<Instant> {
        for i in 0..n {
            writer.change(&id, None, |tx| tx.put(ROOT, "k", i as i64))?;
        }
        Ok(Instant::now())
    })
    .await??;
    let seen = tokio::task::spawn_blocking(move || workloads::join_latest(watchers)).await??;
    for h in handles {
        h.close().await;
    }
    Ok(workloads::w1_result(started, last, seen))
}

/// Waits (on a thread) until `replica` sees `k == target`.
fn watch(
    replica: &Replica,
    id: &DocId,
    target: i64,
    events: &accord_engine::Subscription,
    deadline: Instant,
) -> Option<Instant> {
    loop {
        if k_of(replica, id) == Some(target) {
            return Some(Instant::now());
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match events.recv_timeout(left) {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(_) => return None,
        }
    }
}

/// W2: `d` documents of 10 changes reach the relay; then fresh replicas
/// sync the collection, before and after a relay restart. Returns one
/// result per repetition and the relay's peak RSS.
pub async fn w2(d: usize, reps: usize, s: Settings) -> anyhow::Result<(Vec<W2>, u64)> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("relay.db");
    let mut server = ServerProcess::start(System::Accord, &db)?;
    let source = open(dir.path(), "source", s.unmeasured())?;
    let mut saved = 0u64;
    for i in 0..d {
        let bytes = workloads::ten_change_doc(i).save();
        saved += bytes.len() as u64;
        source.import("w2", &bytes)?;
    }
    let url = server.url();
    let upload = connect(&source, &url, "w2", s.cap);
    capped(s.cap, "W2 upload", upload).await?.close().await;
    let mut runs = Vec::with_capacity(reps);
    let mut peak = 0;
    for rep in 0..reps {
        let warm = fresh_sync(dir.path(), &format!("warm{rep}"), server.addr, d, s).await?;
        peak = peak.max(server.peak_kib);
        peak = peak.max(tokio::task::spawn_blocking(move || server.stop()).await??);
        server = ServerProcess::start(System::Accord, &db)?;
        let cold = fresh_sync(dir.path(), &format!("cold{rep}"), server.addr, d, s).await?;
        runs.push(W2::new(warm, cold, saved));
    }
    peak = peak.max(tokio::task::spawn_blocking(move || server.stop()).await??);
    Ok((runs, peak))
}

/// A fresh replica syncs collection `w2` through a counting proxy; returns
/// seconds and bytes on the wire.
pub(crate) async fn fresh_sync(
    dir: &Path,
    name: &str,
    relay: std::net::SocketAddr,
    d: usize,
    s: Settings,
) -> anyhow::Result<(f64, u64)> {
    let proxy = Proxy::start(relay).await?;
    let replica = open(dir, name, s)?;
    let started = Instant::now();
    let mut handle = replica.connect(&proxy.url(), options("w2"));
    capped(s.cap, "W2 cold sync", async {
        handle.wait_agreed(s.cap).await.context("wait_agreed")
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let have = replica.list("w2")?.len();
    anyhow::ensure!(have == d, "fresh replica has {have} of {d} documents");
    handle.close().await;
    Ok((secs, proxy.totals().bytes))
}

/// W5: replica `b` holds an `n`-record collection in sync and
/// disconnects; `changed` records change at replica `a` and reach the
/// relay; `b` reconnects. Measures `b`'s first sync and its reconnect
/// (connect to agreed), time and bytes through a counting proxy.
pub async fn w5(n: usize, changed: usize, s: Settings) -> anyhow::Result<W5> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(System::Accord, &dir.path().join("relay.db"))?;
    let a = open(dir.path(), "a", s.unmeasured())?;
    let ids = {
        let a = a.clone();
        let import = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<DocId>> {
            (0..n)
                .map(|i| Ok(a.import("w5", &workloads::small_doc(i).save())?))
                .collect()
        });
        capped(s.cap * 10, "W5 populate", async { import.await? }).await?
    };
    let url = server.url();
    let upload = connect(&a, &url, "w5", s.cap * 10);
    capped(s.cap * 10, "W5 upload", upload).await?.close().await;

    let b = open(dir.path(), "b", s)?;
    let (first_s, first_bytes) = synced_through_proxy(&b, &server, s, "W5 first sync").await?;
    anyhow::ensure!(b.list("w5")?.len() == n, "b misses records");
    // The cursor is saved once everything agrees (at the latest at the
    // next tick of the session); reconnecting before would list all.
    let collection = "w5".parse()?;
    poll_until(s.cap, "W5 cursor saved", || {
        matches!(SyncDocs::sync_cursor(&b, &collection), Ok(Some(_)))
    })
    .await?;

    for (i, id) in ids.iter().take(changed).enumerate() {
        a.change(id, None, |tx| tx.put(ROOT, "n", -(i as i64)))?;
    }
    let push = connect(&a, &url, "w5", s.cap);
    capped(s.cap, "W5 changes elsewhere", push)
        .await?
        .close()
        .await;

    let (reconnect_s, reconnect_bytes) =
        synced_through_proxy(&b, &server, s, "W5 reconnect").await?;
    for id in ids.iter().take(changed) {
        anyhow::ensure!(b.heads(id)? == a.heads(id)?, "b misses the change of {id}");
    }
    let idle_kib_per_conn =
        capped(s.cap * 10, "W5 idle subscribers", idle_subscribers(&server)).await?;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok(W5 {
        first_s,
        first_bytes,
        reconnect_s,
        reconnect_bytes,
        idle_kib_per_conn,
    })
}

/// How many connections [`idle_subscribers`] opens.
const IDLE_SUBSCRIBERS: usize = 20;

/// The relay's resident memory per idle connection subscribed to the
/// `w5` collection: [`IDLE_SUBSCRIBERS`] raw connections each read a
/// full listing of it (every document announced, the most a listing can
/// leave behind) and then stay open; KiB added per connection.
async fn idle_subscribers(server: &ServerProcess) -> anyhow::Result<f64> {
    use accord_engine::sync::{Frame, SubscribeFrom};
    use accord_tests::wire::{next_frame, send, welcomed};
    let before = server.rss_kib()?;
    let mut open = Vec::with_capacity(IDLE_SUBSCRIBERS);
    for k in 0..IDLE_SUBSCRIBERS {
        let mut ws = welcomed(&server.url(), &format!("idle-{k}"), "").await;
        let subscribe = Frame::SubscribeSince {
            collections: vec![SubscribeFrom {
                collection: "w5".into(),
                cursor: None,
            }],
        };
        send(&mut ws, &subscribe).await;
        loop {
            match next_frame(&mut ws).await {
                Some(Frame::Announce { complete: true, .. }) => break,
                Some(_) => {}
                None => anyhow::bail!("an idle subscriber's connection ended"),
            }
        }
        open.push(ws);
    }
    let after = server.rss_kib()?;
    drop(open);
    Ok(after.saturating_sub(before) as f64 / IDLE_SUBSCRIBERS as f64)
}

/// `r` connects through a counting proxy and waits until it agrees with
/// the relay; returns seconds and bytes on the wire.
async fn synced_through_proxy(
    r: &Replica,
    server: &ServerProcess,
    s: Settings,
    what: &'static str,
) -> anyhow::Result<(f64, u64)> {
    let proxy = Proxy::start(server.addr).await?;
    let started = Instant::now();
    let mut handle = r.connect(&proxy.url(), options("w5"));
    capped(s.cap, what, async {
        handle.wait_agreed(s.cap).await.context("wait_agreed")
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let bytes = proxy.totals().bytes;
    handle.close().await;
    Ok((secs, bytes))
}

/// W3: two replicas share a record, go offline, make `m` changes each,
/// reconnect; time until their heads are identical.
pub async fn w3(m: usize, s: Settings) -> anyhow::Result<(W3, u64)> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(System::Accord, &dir.path().join("relay.db"))?;
    let a = open(dir.path(), "a", s)?;
    let b = open(dir.path(), "b", s)?;
    let id = a.create_with("w3", None, |tx| tx.put(ROOT, "k", -1i64))?;
    let ha = capped(s.cap, "W3 share", connect(&a, &server.url(), "w3", s.cap)).await?;
    let mut hb = b.connect(&server.url(), options("w3"));
    capped(s.cap, "W3 share", async {
        hb.wait_agreed(s.cap).await.context("b agreed")
    })
    .await?;
    ha.close().await;
    hb.close().await;
    let base = a.heads(&id)?;
    let (a2, b2) = (a.clone(), b.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for i in 0..m {
            a2.change(&id, None, |tx| tx.put(ROOT, "a", i as i64))?;
            b2.change(&id, None, |tx| tx.put(ROOT, "b", i as i64))?;
        }
        Ok(())
    })
    .await??;
    let missing = missing_bytes(&a, &id, &base)? + missing_bytes(&b, &id, &base)?;
    let proxy = Proxy::start(server.addr).await?;
    let started = Instant::now();
    let ha = a.connect(&proxy.url(), options("w3"));
    let hb = b.connect(&proxy.url(), options("w3"));
    let done = poll_until(
        s.cap,
        "W3 merge",
        || matches!((a.heads(&id), b.heads(&id)), (Ok(x), Ok(y)) if x == y),
    )
    .await?;
    let totals = proxy.totals();
    ha.close().await;
    hb.close().await;
    let peak = tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok((W3::new(started, done, totals, missing), peak))
}

/// Bytes of the changes made after `base`, as Automerge saves them.
fn missing_bytes(
    r: &Replica,
    id: &DocId,
    base: &[accord_engine::automerge::ChangeHash],
) -> anyhow::Result<u64> {
    Ok(r.read(id, |doc, _| doc.save_after(base).len() as u64)?)
}

/// W4: RSS of a relay storing `stored` documents of which `live` are being
/// synced. Pre-populates the relay's file through a `Replica` on it.
pub async fn w4_stored(stored: usize, live: usize, s: Settings) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("relay.db");
    let populate = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let relay = Replica::open_with(
                &db,
                ReplicaOptions {
                    durability: Durability::Normal,
                    ..ReplicaOptions::default()
                },
            )?;
            for i in 0..stored {
                let coll = if i < live { "hot" } else { "cold" };
                relay.import(coll, &workloads::small_doc(i).save())?;
            }
            Ok(())
        })
    };
    capped(s.cap * 10, "W4 populate", async { populate.await? }).await?;
    let server = ServerProcess::start(System::Accord, &db)?;
    let client = open(dir.path(), "client", s.unmeasured())?;
    let mut handle = client.connect(&server.url(), options("hot"));
    capped(s.cap, "W4 live sync", async {
        handle.wait_agreed(s.cap).await.context("wait_agreed")
    })
    .await?;
    anyhow::ensure!(
        client.list("hot")?.len() == live,
        "not all live documents synced"
    );
    let rss = server.rss_kib()?;
    handle.close().await;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok(rss as f64 / 1024.0)
}

/// W4: memory and CPU of a relay holding `conns` idle connections.
pub async fn w4_idle(conns: usize, window: Duration, s: Settings) -> anyhow::Result<Idle> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(System::Accord, &dir.path().join("relay.db"))?;
    let before = workloads::settled_rss(&server).await?;
    let mut handles = Vec::with_capacity(conns);
    let mut replicas = Vec::with_capacity(conns);
    for _ in 0..conns {
        let r = Replica::open_in_memory()?;
        handles.push(r.connect(&server.url(), options("idle")));
        replicas.push(r);
    }
    for h in &mut handles {
        capped(s.cap, "W4 idle connect", async {
            h.wait_synced(s.cap).await.context("wait_synced")
        })
        .await?;
    }
    let idle = workloads::measure_idle(&server, before, conns, window).await?;
    for h in handles {
        h.close().await;
    }
    tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok(idle)
}
