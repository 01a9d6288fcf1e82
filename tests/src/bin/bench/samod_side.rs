//! samod's side of W1–W4: samod repos as clients, each with its own
//! filesystem storage and WebSocket, against a samod server in a child
//! process (`serve.rs`).
//!
//! samod has no collections: a replica learns document ids from the app.
//! Where Accord subscribes to a collection, the samod clients are handed
//! the ids and `find` them (all at once), which is what an automerge-repo
//! app does with ids kept in an index document or passed around.
//!
//! Clients dial with [`NoDelayDialer`], samod's own tungstenite dialer with
//! Nagle's algorithm off (as Accord's driver and both servers have it), so
//! the comparison does not hinge on a socket option.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ChangeHash, ROOT};
use accord_tests::samod_client::NoDelayDialer;
use anyhow::Context;
use futures_util::future::join_all;
use futures_util::StreamExt;
use samod::storage::TokioFilesystemStorage;
use samod::{BackoffConfig, DialerHandle, DocHandle, DocumentId, Repo};

use crate::accord_side::int_at;
use crate::process::{ServerProcess, System, Target};
use crate::proxy::Proxy;
use crate::run::{capped, poll_until, Settings};
use crate::workloads::{self, Idle, W1, W2, W3};

/// A client repo storing into `dir` (in memory when `None`).
async fn repo(dir: Option<&Path>) -> Repo {
    match dir {
        Some(dir) => {
            Repo::build_tokio()
                .with_storage(TokioFilesystemStorage::new(dir))
                .load()
                .await
        }
        None => Repo::build_tokio().load().await,
    }
}

/// Dials `url` and waits for the handshake.
async fn dial(repo: &Repo, url: &str, cap: Duration) -> anyhow::Result<DialerHandle<Infallible>> {
    let dialer = Arc::new(NoDelayDialer::new(url)?);
    let handle = repo
        .dial(BackoffConfig::default(), dialer)
        .map_err(|_| anyhow::anyhow!("repo stopped"))?;
    capped(cap, "samod connect", async {
        handle
            .established()
            .await
            .map_err(|e| anyhow::anyhow!("dial failed: {e}"))
    })
    .await?;
    Ok(handle)
}

/// Finds a document through the connected peers.
async fn find(repo: &Repo, id: DocumentId) -> anyhow::Result<DocHandle> {
    repo.find(id)
        .await
        .map_err(|_| anyhow::anyhow!("repo stopped"))?
        .context("document not found")
}

fn put_k(doc: &mut Automerge, key: &str, value: i64) {
    let mut tx = doc.transaction();
    // Infallible on the root map.
    let _ = tx.put(ROOT, key, value);
    tx.commit();
}

fn doc_with_k() -> Automerge {
    let mut doc = Automerge::new();
    put_k(&mut doc, "k", -1);
    doc
}

/// Waits until the server has every change of `handle`.
async fn uploaded(
    handle: &DocHandle,
    dialer: &DialerHandle<Infallible>,
    cap: Duration,
) -> anyhow::Result<()> {
    let conn = dialer.connection_id().context("not connected")?;
    capped(cap, "samod upload", async {
        handle.they_have_our_changes(conn).await;
        Ok(())
    })
    .await
}

async fn stop_all(repos: &[Repo]) {
    join_all(repos.iter().map(Repo::stop)).await;
}

/// W1 (see `accord_side::w1`), samod clients against `target`.
pub async fn w1(k: usize, n: usize, target: Target, s: Settings) -> anyhow::Result<(W1, u64)> {
    let dir = tempfile::tempdir()?;
    let server = target.start(&dir.path().join("server"))?;
    let cpu = server.cpu_secs()?;
    let mut repos = Vec::with_capacity(k);
    let mut dialers = Vec::with_capacity(k);
    for i in 0..k {
        let r = repo(Some(&dir.path().join(format!("c{i}")))).await;
        dialers.push(dial(&r, &server.url(), s.cap).await?);
        repos.push(r);
    }
    let writer = repos[0]
        .create(doc_with_k())
        .await
        .map_err(|_| anyhow::anyhow!("stopped"))?;
    let id = writer.document_id().clone();
    uploaded(&writer, &dialers[0], s.cap).await?;
    let readers = capped(s.cap, "W1 open", async {
        let found = join_all(repos[1..].iter().map(|r| find(r, id.clone()))).await;
        found.into_iter().collect::<anyhow::Result<Vec<_>>>()
    })
    .await?;
    let target = n as i64 - 1;
    let watchers: Vec<_> = readers
        .into_iter()
        .map(|h| tokio::spawn(watch(h, target)))
        .collect();
    let started = Instant::now();
    let last = tokio::task::spawn_blocking(move || {
        for i in 0..n {
            writer.with_document(|d| put_k(d, "k", i as i64));
        }
        Instant::now()
    })
    .await?;
    let seen = capped(s.cap, "W1 fan-out", async {
        let mut latest = last;
        for w in watchers {
            latest = latest.max(w.await??);
        }
        Ok(latest)
    })
    .await?;
    let cpu = server.cpu_secs()? - cpu;
    stop_all(&repos).await;
    drop(dialers);
    let peak = tokio::task::spawn_blocking(move || server.stop()).await??;
    let w1 = W1 {
        server_cpu_s: Some(cpu),
        ..workloads::w1_result(started, last, seen)
    };
    Ok((w1, peak))
}

/// Waits until a reader sees `k == target`.
async fn watch(handle: DocHandle, target: i64) -> anyhow::Result<Instant> {
    let mut changes = handle.changes();
    loop {
        if handle.with_document(|d| int_at(d, "k")) == Some(target) {
            return Ok(Instant::now());
        }
        changes.next().await.context("change stream ended")?;
    }
}

/// W2 (see `accord_side::w2`), samod clients against `target`.
pub async fn w2(
    d: usize,
    reps: usize,
    target: Target,
    s: Settings,
) -> anyhow::Result<(Vec<W2>, u64)> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("server");
    let mut server = target.start(&store)?;
    let source = repo(Some(&dir.path().join("source"))).await;
    let dialer = dial(&source, &server.url(), s.cap).await?;
    let (ids, saved) = capped(s.cap, "W2 upload", upload(&source, &dialer, d)).await?;
    dialer.close();
    source.stop().await;
    let mut runs = Vec::with_capacity(reps);
    let mut peak = 0;
    for rep in 0..reps {
        let warm = fresh_sync(&dir.path().join(format!("warm{rep}")), &server, &ids, s).await?;
        peak = peak.max(tokio::task::spawn_blocking(move || server.stop()).await??);
        server = target.start(&store)?;
        let cold = fresh_sync(&dir.path().join(format!("cold{rep}")), &server, &ids, s).await?;
        runs.push(W2::new(warm, cold, saved));
    }
    peak = peak.max(tokio::task::spawn_blocking(move || server.stop()).await??);
    Ok((runs, peak))
}

/// Creates the W2 documents and waits until the server has them all.
async fn upload(
    source: &Repo,
    dialer: &DialerHandle<Infallible>,
    d: usize,
) -> anyhow::Result<(Vec<DocumentId>, u64)> {
    let mut handles = Vec::with_capacity(d);
    let mut saved = 0u64;
    for i in 0..d {
        let doc = workloads::ten_change_doc(i);
        saved += doc.save().len() as u64;
        let handle = source
            .create(doc)
            .await
            .map_err(|_| anyhow::anyhow!("stopped"))?;
        handles.push(handle);
    }
    let conn = dialer.connection_id().context("not connected")?;
    join_all(handles.iter().map(|h| h.they_have_our_changes(conn))).await;
    Ok((
        handles.iter().map(|h| h.document_id().clone()).collect(),
        saved,
    ))
}

/// A fresh repo finds every document through a counting proxy.
async fn fresh_sync(
    dir: &Path,
    server: &ServerProcess,
    ids: &[DocumentId],
    s: Settings,
) -> anyhow::Result<(f64, u64)> {
    let proxy = Proxy::start(server.addr).await?;
    let fresh = repo(Some(dir)).await;
    let started = Instant::now();
    let _dialer = dial(&fresh, &server.through(&proxy.url()), s.cap).await?;
    capped(s.cap, "W2 cold sync", async {
        let found = join_all(ids.iter().map(|id| find(&fresh, id.clone()))).await;
        found.into_iter().collect::<anyhow::Result<Vec<_>>>()
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    fresh.stop().await;
    Ok((secs, proxy.totals().bytes))
}

/// W3 (see `accord_side::w3`), samod clients against `target`.
pub async fn w3(m: usize, target: Target, s: Settings) -> anyhow::Result<(W3, u64)> {
    let dir = tempfile::tempdir()?;
    let server = target.start(&dir.path().join("server"))?;
    let a = repo(Some(&dir.path().join("a"))).await;
    let b = repo(Some(&dir.path().join("b"))).await;
    let (da, db) = (
        dial(&a, &server.url(), s.cap).await?,
        dial(&b, &server.url(), s.cap).await?,
    );
    let ha = a
        .create(doc_with_k())
        .await
        .map_err(|_| anyhow::anyhow!("stopped"))?;
    uploaded(&ha, &da, s.cap).await?;
    let hb = capped(s.cap, "W3 share", find(&b, ha.document_id().clone())).await?;
    da.close();
    db.close();
    let base = ha.with_document(|d| d.get_heads());
    let (a2, b2) = (ha.clone(), hb.clone());
    tokio::task::spawn_blocking(move || {
        for i in 0..m {
            a2.with_document(|d| put_k(d, "a", i as i64));
            b2.with_document(|d| put_k(d, "b", i as i64));
        }
    })
    .await?;
    let missing = missing_bytes(&ha, &base) + missing_bytes(&hb, &base);
    let proxy = Proxy::start(server.addr).await?;
    let started = Instant::now();
    let (_da, _db) = (
        dial(&a, &server.through(&proxy.url()), s.cap).await?,
        dial(&b, &server.through(&proxy.url()), s.cap).await?,
    );
    let done = poll_until(s.cap, "W3 merge", || {
        ha.with_document(|d| d.get_heads()) == hb.with_document(|d| d.get_heads())
    })
    .await?;
    let totals = proxy.totals();
    stop_all(&[a, b]).await;
    let peak = tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok((W3::new(started, done, totals, missing), peak))
}

fn missing_bytes(h: &DocHandle, base: &[ChangeHash]) -> u64 {
    h.with_document(|d| d.save_after(base).len() as u64)
}

/// W4 (see `accord_side::w4_stored`): the server's storage is filled by a
/// samod repo on the same directory before the server starts.
pub async fn w4_stored(stored: usize, live: usize, s: Settings) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("server");
    let ids = capped(s.cap * 10, "W4 populate", populate(&store, stored, live)).await?;
    let server = ServerProcess::start(System::Samod, &store)?;
    let client = repo(None).await;
    let _dialer = dial(&client, &server.url(), s.cap).await?;
    capped(s.cap, "W4 live sync", async {
        let found = join_all(ids.iter().map(|id| find(&client, id.clone()))).await;
        found.into_iter().collect::<anyhow::Result<Vec<_>>>()
    })
    .await?;
    let rss = server.rss_kib()?;
    client.stop().await;
    tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok(rss as f64 / 1024.0)
}

/// Stores `stored` small documents; returns the ids of the first `live`.
///
/// The files are written directly in the layout of samod's
/// `TokioFilesystemStorage` (`<id[..2]>/<id[2..]>/snapshot/<name>`, each
/// holding `Automerge::save()`), which is what samod leaves after
/// compacting a document: creating 100,000 documents through a samod repo
/// takes over 20 minutes here and holds them all in memory.
async fn populate(store: &Path, stored: usize, live: usize) -> anyhow::Result<Vec<DocumentId>> {
    let store = store.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut ids = Vec::with_capacity(live);
        for i in 0..stored {
            let id = DocumentId::try_from(accord_engine::DocId::random().as_bytes().to_vec())
                .map_err(|e| anyhow::anyhow!("document id: {e:?}"))?;
            let doc = workloads::small_doc(i);
            let text = id.to_string();
            let (head, rest) = text.split_at(2);
            let dir = store.join(head).join(rest).join("snapshot");
            std::fs::create_dir_all(&dir)?;
            let name = doc
                .get_heads()
                .first()
                .map(|h| h.to_string())
                .unwrap_or_default();
            std::fs::write(dir.join(name), doc.save())?;
            if i < live {
                ids.push(id);
            }
        }
        Ok(ids)
    })
    .await?
}

/// W4 (see `accord_side::w4_idle`), with in-memory client repos.
pub async fn w4_idle(conns: usize, window: Duration, s: Settings) -> anyhow::Result<Idle> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(System::Samod, &dir.path().join("server"))?;
    let before = workloads::settled_rss(&server).await?;
    let mut repos = Vec::with_capacity(conns);
    let mut dialers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let r = repo(None).await;
        dialers.push(dial(&r, &server.url(), s.cap).await?);
        repos.push(r);
    }
    let idle = workloads::measure_idle(&server, before, conns, window).await?;
    stop_all(&repos).await;
    drop(dialers);
    tokio::task::spawn_blocking(move || server.stop()).await??;
    Ok(idle)
}
