//! Crash durability: a write that returned `Ok` survives the process being
//! killed with SIGKILL at any moment, with `Durability::Full` and `Normal`.
//!
//! The test re-executes its own binary to run [`crash_child_writer`] in a
//! child process. The child writes from several threads (so group commit
//! shares transactions, and compaction runs often) and prints one
//! `ACCORD-ACK` line per write *after* the call returned `Ok`. The parent
//! kills it after a random number of acknowledgements, or at a random
//! moment, then reopens the database and checks that every acknowledged
//! write is there. Each database is crashed several times in a row, and each
//! new child continues the records the previous one left behind.
//!
//! `ACCORD_CRASH_TRIALS` sets the number of kills (default 20) and
//! `ACCORD_CRASH_SEED` replays a run.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use accord_engine::store::Store;
use accord_engine::{DocId, Durability, Error, ListOptions, Replica, ReplicaOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Set in the child's environment to the database path it writes to.
const CHILD_ENV: &str = "ACCORD_CRASH_CHILD";
/// Set in the child's environment to `full` or `normal`.
const DURABILITY_ENV: &str = "ACCORD_CRASH_DURABILITY";
/// How many kills the parent performs.
const TRIALS_ENV: &str = "ACCORD_CRASH_TRIALS";
/// Replays a run.
const SEED_ENV: &str = "ACCORD_CRASH_SEED";
/// Marks an acknowledgement line on the child's stdout.
const ACK: &str = "ACCORD-ACK";
/// The collection the child writes to.
const COLLECTION: &str = "crash";
/// Writer threads in the child.
const WRITERS: usize = 3;
/// Keys each record gets values under.
const KEYS: u64 = 3;
/// How many kills hit the same database before a fresh one is used.
const KILLS_PER_DATABASE: usize = 3;
/// A guard for a broken run, not a synchronisation: how long the parent
/// waits for one line from a child that should be writing continuously.
const STALL: Duration = Duration::from_secs(60);

/// The child: writes until killed. Without [`CHILD_ENV`] this is an
/// ordinary (empty) test, which is how the parent's test run sees it.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    common::abort_on_panic();
    let durability = match std::env::var(DURABILITY_ENV).as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let options = ReplicaOptions {
        durability,
        // Compact often, so kills also land inside compactions.
        compact_after_chunks: 5,
        // Evict often, so records are reloaded from what was committed.
        cache_capacity: 4,
        ..ReplicaOptions::default()
    };
    let replica = Replica::open_with(Path::new(&path), options).expect("child: open");
    let inherited = live_records(&replica);
    std::thread::scope(|s| {
        for writer in 0..WRITERS {
            let replica = replica.clone();
            let mine: Vec<DocId> = inherited
                .iter()
                .skip(writer)
                .step_by(WRITERS)
                .copied()
                .collect();
            s.spawn(move || write_until_killed(&replica, writer, mine));
        }
    });
}

fn live_records(replica: &Replica) -> Vec<DocId> {
    replica
        .list(COLLECTION)
        .expect("child: list")
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// One writer thread: creates, updates and deletes its own records and
/// acknowledges each write on stdout once it returned.
fn write_until_killed(replica: &Replica, writer: usize, mut docs: Vec<DocId>) {
    let mut rng = rand::rng();
    // Continue each inherited key above whatever it holds now.
    let mut next: HashMap<(DocId, u64), u64> = HashMap::new();
    for id in &docs {
        let record = replica.get(id).expect("child: get inherited record");
        for k in 0..KEYS {
            let now = record.value[format!("k{k}")].as_u64().unwrap_or(0);
            next.insert((*id, k), now + 1);
        }
    }
    // Never outlive a parent that died: stop after a minute regardless.
    let deadline = Instant::now() + STALL;
    while Instant::now() < deadline {
        if docs.len() < 2 || (docs.len() < 6 && rng.random_bool(0.1)) {
            let id = replica
                .create(COLLECTION, &json!({ "writer": writer }))
                .expect("child: create");
            ack(&format!("create {id}"));
            docs.push(id);
        } else if rng.random_bool(0.02) {
            let id = docs.swap_remove(rng.random_range(0..docs.len()));
            replica.delete(&id).expect("child: delete");
            ack(&format!("delete {id}"));
        } else {
            let id = docs[rng.random_range(0..docs.len())];
            let k = rng.random_range(0..KEYS);
            let value = next.entry((id, k)).or_insert(1);
            replica
                .put(&id, &format!("k{k}"), &json!(*value), None)
                .expect("child: put");
            ack(&format!("put {id} {k} {value}"));
            *value += 1;
        }
    }
}

/// Prints one acknowledgement line and flushes it out of the process.
fn ack(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ACK} {line}").expect("child: stdout");
    out.flush().expect("child: flush");
}

/// What the parent knows was acknowledged, per record.
#[derive(Debug, Default)]
struct Acked {
    /// The highest acknowledged value of each key.
    values: HashMap<u64, u64>,
    /// Whether its deletion was acknowledged.
    deleted: bool,
}

/// Parses one line of the child's stdout into `acked`; other lines (the
/// test harness's own) are ignored. Returns whether it was an ack.
fn record_ack(line: &str, acked: &mut HashMap<DocId, Acked>) -> bool {
    let Some(at) = line.find(ACK) else {
        return false;
    };
    let words: Vec<&str> = line[at + ACK.len()..].split_whitespace().collect();
    let id: DocId = words[1].parse().expect("ack names a document");
    let entry = acked.entry(id).or_default();
    match words[0] {
        "create" => {}
        "delete" => entry.deleted = true,
        "put" => {
            let k: u64 = words[2].parse().expect("key");
            let v: u64 = words[3].parse().expect("value");
            let best = entry.values.entry(k).or_insert(0);
            *best = (*best).max(v);
        }
        other => panic!("unknown ack {other}"),
    }
    true
}

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// Right after reading this many acknowledgements (more are in flight).
    Acks(usize),
    /// This long after the first acknowledgement.
    SinceFirstAck(Duration),
    /// This long after spawning: possibly while opening or migrating.
    SinceSpawn(Duration),
}

fn spawn_child(path: &Path, durability: Durability) -> Child {
    let durability = match durability {
        Durability::Full => "full",
        Durability::Normal => "normal",
    };
    common::spawn_self(
        "crash_child_writer",
        &[
            (CHILD_ENV, path.as_os_str()),
            (DURABILITY_ENV, durability.as_ref()),
        ],
    )
}

/// Runs one child until `kill`, and returns how many acks it produced.
fn crash_once(
    path: &Path,
    durability: Durability,
    kill: Kill,
    acked: &mut HashMap<DocId, Acked>,
) -> usize {
    let mut child = spawn_child(path, durability);
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = 0;
    let mut next_line = |acks: &mut usize| -> bool {
        match rx.recv_timeout(STALL) {
            Ok(line) => {
                *acks += usize::from(record_ack(&line, acked));
                true
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => false,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("child stalled"),
        }
    };
    let mut exited_early = false;
    match kill {
        Kill::Acks(n) => {
            while acks < n {
                if !next_line(&mut acks) {
                    exited_early = true;
                    break;
                }
            }
        }
        Kill::SinceFirstAck(delay) => {
            while acks == 0 {
                if !next_line(&mut acks) {
                    exited_early = true;
                    break;
                }
            }
            // Fault injection timing, not synchronisation.
            std::thread::sleep(delay);
        }
        Kill::SinceSpawn(delay) => std::thread::sleep(delay),
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(
        !exited_early,
        "child exited by itself ({status}) after {acks} acks; see its stderr"
    );
    // Acks the child wrote before it died count too: they were promised.
    reader.join().expect("reader");
    while let Ok(line) = rx.try_recv() {
        acks += usize::from(record_ack(&line, acked));
    }
    assert_eq!(
        status.signal(),
        Some(common::SIGKILL),
        "the child died of something else than our SIGKILL: {status}"
    );
    acks
}

/// Reopens the database and checks every acknowledged write.
fn verify(path: &Path, acked: &HashMap<DocId, Acked>, what: &str) {
    let replica = Replica::open(path)
        .unwrap_or_else(|e| panic!("{what}: the database does not open after a kill: {e}"));
    for (id, state) in acked {
        if state.deleted {
            assert!(
                matches!(replica.get(id), Err(Error::Deleted(d)) if d == *id),
                "{what}: acknowledged deletion of {id} lost"
            );
        }
        // Read at the current heads, which also works for a record whose
        // deletion committed but was not acknowledged before the kill.
        let heads = replica
            .heads(id)
            .unwrap_or_else(|e| panic!("{what}: acknowledged record {id} lost: {e}"));
        let record = replica.get_at(id, &heads).expect("content at heads");
        for (k, v) in &state.values {
            let stored = record.value[format!("k{k}")].as_u64().unwrap_or(0);
            assert!(
                stored >= *v,
                "{what}: {id} k{k} is {stored}, but {v} was acknowledged"
            );
        }
    }
    // Nothing half-written: every record the database knows loads, and its
    // metadata agrees with its chunks.
    let all = replica.list_with(&ListOptions::everything()).expect("list");
    for meta in &all {
        let history = replica
            .history(&meta.id)
            .unwrap_or_else(|e| panic!("{what}: {} does not load: {e}", meta.id));
        assert_eq!(history.len() as u64, meta.change_count, "{what}");
    }
    drop(replica);
    let store = Store::open(path, Durability::Full).expect("store");
    assert_eq!(
        store.integrity_check().expect("integrity_check"),
        Vec::<String>::new(),
        "{what}"
    );
}

fn pick_kill(rng: &mut StdRng) -> Kill {
    match rng.random_range(0..10) {
        0..=5 => Kill::Acks(rng.random_range(1..=200)),
        6..=8 => Kill::SinceFirstAck(Duration::from_micros(rng.random_range(0..100_000))),
        _ => Kill::SinceSpawn(Duration::from_micros(rng.random_range(0..50_000))),
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let trials = common::env_number(TRIALS_ENV).unwrap_or(20) as usize;
    let seed = common::env_number(SEED_ENV).unwrap_or_else(rand::random);
    eprintln!("crash test: {trials} trials, {SEED_ENV}={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = HashMap::new();
    let mut total_acks = 0;
    for trial in 0..trials {
        let round = trial % KILLS_PER_DATABASE;
        if round == 0 {
            acked.clear();
        }
        let path = dir
            .path()
            .join(format!("db-{}.db", trial / KILLS_PER_DATABASE));
        let durability = if rng.random_bool(0.5) {
            Durability::Full
        } else {
            Durability::Normal
        };
        let kill = pick_kill(&mut rng);
        let what = format!("trial {trial} (seed {seed}, {durability:?}, {kill:?})");
        let acks = crash_once(&path, durability, kill, &mut acked);
        verify(&path, &acked, &what);
        eprintln!("{what}: {acks} acks, {} records checked", acked.len());
        total_acks += acks;
    }
    // The run exercised something: writes were acknowledged and checked.
    assert!(total_acks > 0, "no write was ever acknowledged");
}
