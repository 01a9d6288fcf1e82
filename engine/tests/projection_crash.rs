//! The projection after a crash: whatever moment a SIGKILL hits, the
//! `records` projection agrees with every document once the file is
//! opened again, without any repair (the rows commit in the same
//! transaction as the chunks they describe).
//!
//! The test re-executes its own binary to run [`projection_crash_child`]
//! in a child process that writes from several threads (creates, puts,
//! deletes, with frequent compaction and an index to maintain) until it is
//! killed. The parent kills it after a random number of writes or a random
//! delay, then checks the file before anything could repair it: the
//! `projection_stale` flag is not set, no row is missing or stale by the
//! metadata, and every row's JSON is the document's content.
//!
//! `ACCORD_PROJECTION_CRASH_TRIALS` sets the number of kills (default 6)
//! and `ACCORD_PROJECTION_CRASH_SEED` replays a run.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use accord_engine::store::Store;
use accord_engine::{DocId, Durability, Replica, ReplicaOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Set in the child's environment to the database it writes to.
const CHILD_ENV: &str = "ACCORD_PROJECTION_CRASH_CHILD";
/// How many kills the parent performs.
const TRIALS_ENV: &str = "ACCORD_PROJECTION_CRASH_TRIALS";
/// Replays a run.
const SEED_ENV: &str = "ACCORD_PROJECTION_CRASH_SEED";
/// The line the child prints after each write returned.
const ACK: &str = "ACCORD-ACK";
/// Writer threads in the child.
const WRITERS: usize = 3;
/// A guard for a broken run, not a synchronisation.
const STALL: Duration = Duration::from_secs(60);

/// The child: writes until killed; an ordinary empty test otherwise.
#[test]
fn projection_crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    common::abort_on_panic();
    let options = ReplicaOptions {
        durability: Durability::Normal,
        compact_after_chunks: 4,
        cache_capacity: 4,
        ..ReplicaOptions::default()
    };
    let replica = Replica::open_with(Path::new(&path), options).expect("child: open");
    replica.create_index("crash", "$.k0").expect("child: index");
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            let replica = replica.clone();
            s.spawn(move || write_until_killed(&replica));
        }
    });
}

fn write_until_killed(replica: &Replica) {
    let mut rng = rand::rng();
    let mut docs: Vec<DocId> = replica
        .list("crash")
        .expect("child: list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    let deadline = Instant::now() + STALL;
    while Instant::now() < deadline {
        let roll = rng.random_range(0..100);
        if docs.len() < 3 || roll < 10 {
            let id = replica
                .create(
                    "crash",
                    &json!({"k0": rng.random_range(0..1000), "tags": ["a"]}),
                )
                .expect("child: create");
            docs.push(id);
        } else if roll < 13 {
            let id = docs.swap_remove(rng.random_range(0..docs.len()));
            // Another thread may hold it too; a second delete is a no-op.
            replica.delete(&id).expect("child: delete");
        } else {
            let id = docs[rng.random_range(0..docs.len())];
            let key = format!("k{}", rng.random_range(0..3));
            match replica.put(&id, &key, &json!(rng.random_range(0..1000)), None) {
                Ok(()) | Err(accord_engine::Error::Deleted(_)) => {}
                Err(e) => panic!("child: put: {e}"),
            }
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ACK}").expect("child: stdout");
        out.flush().expect("child: flush");
    }
}

/// Runs one child and kills it after `acks` writes, or `delay` after its
/// first write.
fn crash_once(path: &Path, acks: usize, delay: Duration) {
    let mut child = common::spawn_self("projection_crash_child", &[(CHILD_ENV, path.as_os_str())]);
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) if line.contains(ACK) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    for _ in 0..acks.max(1) {
        rx.recv_timeout(STALL)
            .expect("the child writes until it is killed");
    }
    // Fault injection timing, not synchronisation.
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(common::SIGKILL),
        "the child died of {status}"
    );
    reader.join().expect("reader");
}

/// Checks the file as the kill left it, then through a reopened replica.
fn verify(path: &Path, what: &str) {
    let store = Store::open(path, Durability::Full).expect("store");
    assert!(
        !store.projection_pending().expect("flag"),
        "{what}: the projection was flagged"
    );
    assert_eq!(
        store.stale_projections().expect("stale"),
        Vec::<DocId>::new(),
        "{what}: rows missing or stale"
    );
    drop(store);
    let replica = Replica::open(path).expect("reopen");
    assert_eq!(
        replica.check_projection().expect("check"),
        vec![],
        "{what}: rows disagree with the documents"
    );
}

#[test]
fn the_projection_agrees_with_the_documents_after_sigkill() {
    let trials = common::env_number(TRIALS_ENV).unwrap_or(6) as usize;
    let seed = common::env_number(SEED_ENV).unwrap_or_else(rand::random);
    eprintln!("projection crash test: {trials} trials, {SEED_ENV}={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    for trial in 0..trials {
        let path = dir.path().join(format!("db-{}.db", trial / 3));
        let acks = rng.random_range(1..=300);
        let delay = Duration::from_micros(rng.random_range(0..20_000));
        let what = format!("trial {trial} (seed {seed}, {acks} acks, {delay:?})");
        crash_once(&path, acks, delay);
        verify(&path, &what);
        eprintln!("{what}: consistent");
    }
}
