//! The whole system under kill -9. Each trial starts the real `accord-relay`
//! binary and several replica processes that write into a shared collection
//! and sync with it; every process is then killed with SIGKILL at a random
//! moment (a replica possibly while opening its file, mid-commit or just
//! after the relay confirmed its writes; the relay possibly mid-store or
//! before anyone connected). Afterwards:
//!
//! - every database opens, every record in it loads, SQLite finds nothing
//!   wrong, and the query projection agrees with the records;
//! - every write a replica acknowledged (its call returned) is in that
//!   replica's file;
//! - every write the relay acknowledged (`wait_synced` returned) is in the
//!   relay's file, although the relay was killed too;
//! - after restarting the relay and reopening every replica, all of them
//!   converge: each holds every write acknowledged so far, by anyone, and
//!   all agree on the heads of every record.
//!
//! The files are kept for three trials, so later trials start from what
//! earlier kills left. Sizes: `ACCORD_CLUSTER_TRIALS` (default 6),
//! `ACCORD_CLUSTER_REPLICAS` (default 3); `ACCORD_CLUSTER_SEED` replays a
//! run. The long run is in `docs/reliability.md`.

#[path = "../../engine/tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accord_engine::store::Store;
use accord_engine::{ConnectOptions, DocId, Heads, Replica, ReplicaOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::{spawn_relay, RelayProcess};

const CHILD_ENV: &str = "ACCORD_CLUSTER_CHILD";
const URL_ENV: &str = "ACCORD_CLUSTER_URL";
const WRITER_ENV: &str = "ACCORD_CLUSTER_WRITER";
const TRIAL_ENV: &str = "ACCORD_CLUSTER_TRIAL";
const CHILD_SEED_ENV: &str = "ACCORD_CLUSTER_CHILD_SEED";
const TRIALS_ENV: &str = "ACCORD_CLUSTER_TRIALS";
const REPLICAS_ENV: &str = "ACCORD_CLUSTER_REPLICAS";
const SEED_ENV: &str = "ACCORD_CLUSTER_SEED";
/// A write the replica acknowledged: `ACK <id> <key> <seq>`.
const ACK: &str = "ACCORD-ACK";
/// The relay holds every write up to this one: `SYNCED <seq>`.
const SYNCED: &str = "ACCORD-SYNCED";
const COLLECTION: &str = "cluster";
/// The most acknowledged writes a replica makes before its kill.
const MAX_ACKS_BEFORE_KILL: u64 = 300;
/// How many trials reuse the same files before a fresh set is started.
const TRIALS_PER_CLUSTER: usize = 3;
/// A guard for a broken run, not a synchronisation: how long anything may
/// take before the test gives up (a child also stops writing after this).
const STALL: Duration = Duration::from_secs(60);

/// The child: a replica process that writes and syncs until killed.
/// Without [`CHILD_ENV`] this is an ordinary (empty) test.
#[test]
fn cluster_child_replica() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    common::abort_on_panic();
    let url = std::env::var(URL_ENV).expect("child: relay url");
    let writer = common::env_number(WRITER_ENV).expect("child: writer");
    let trial = common::env_number(TRIAL_ENV).expect("child: trial");
    let options = ReplicaOptions {
        // Compact and evict often, so kills land inside compactions and
        // records are reloaded from what was committed.
        compact_after_chunks: 6,
        cache_capacity: 8,
        ..ReplicaOptions::default()
    };
    let replica = Replica::open_with(Path::new(&path), options).expect("child: open");
    let runtime = tokio::runtime::Runtime::new().expect("child: runtime");
    let mut handle = {
        let _entered = runtime.enter();
        replica.connect(
            &url,
            ConnectOptions {
                collections: vec![COLLECTION.into()],
                ..ConnectOptions::default()
            },
        )
    };
    // The highest write whose ACK line is out; a sync check started after
    // reading it covers it and everything before.
    let acked = Arc::new(AtomicU64::new(0));
    let last = Arc::clone(&acked);
    runtime.spawn(async move {
        loop {
            let upto = last.load(Ordering::SeqCst);
            // Times out while the relay is gone; then simply try again.
            if handle.wait_synced(STALL).await.is_ok() && upto > 0 {
                println!("{SYNCED} {upto}");
            }
        }
    });

    let seed = common::env_number(CHILD_SEED_ENV).expect("child: seed");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut known: Vec<DocId> = Vec::new();
    let deadline = Instant::now() + STALL;
    let mut seq = 0;
    while Instant::now() < deadline {
        if seq % 16 == 0 {
            // Pick up records the others created, as they arrive.
            known = replica
                .list(COLLECTION)
                .expect("child: list")
                .into_iter()
                .map(|m| m.id)
                .collect();
        }
        seq += 1;
        let key = format!("w{writer}_t{trial}_s{seq}");
        let id = if known.is_empty() || rng.random_bool(0.1) {
            let id = replica
                .create(COLLECTION, &json!({ key.as_str(): seq }))
                .expect("child: create");
            known.push(id);
            id
        } else {
            let id = known[rng.random_range(0..known.len())];
            replica
                .put(&id, &key, &json!(seq), None)
                .expect("child: put");
            id
        };
        println!("{ACK} {id} {key} {seq}");
        acked.store(seq, Ordering::SeqCst);
        // Pacing, like an app's: flat-out writes would starve the sync
        // (and the relay) of CPU on a small machine.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..2000)));
    }
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Write {
    writer: usize,
    id: DocId,
    key: String,
    seq: u64,
}

/// What one trial's processes acknowledged.
#[derive(Default)]
struct Acks {
    writes: Vec<Write>,
    /// Per writer: every write up to this seq is on the relay.
    synced: HashMap<usize, u64>,
}

impl Acks {
    /// Takes in one line of a replica process's output.
    fn record(&mut self, writer: usize, line: &str) -> Option<Line> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(ACK) => {
                let (Some(id), Some(key), Some(seq), None) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    panic!("malformed ack from writer {writer}: {line:?}");
                };
                self.writes.push(Write {
                    writer,
                    id: id.parse().expect("ack id"),
                    key: key.to_owned(),
                    seq: seq.parse().expect("ack seq"),
                });
                Some(Line::Ack)
            }
            Some(SYNCED) => {
                let upto: u64 = words.next().and_then(|s| s.parse().ok()).expect("seq");
                let entry = self.synced.entry(writer).or_default();
                *entry = (*entry).max(upto);
                Some(Line::Synced)
            }
            // libtest's own lines ("running 1 test", ...).
            _ => None,
        }
    }

    /// The writes the relay acknowledged.
    fn on_relay(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter().filter(|w| {
            self.synced
                .get(&w.writer)
                .is_some_and(|upto| w.seq <= *upto)
        })
    }
}

fn spawn_writer(db: &Path, url: &str, writer: usize, trial: usize, seed: u64) -> Child {
    let writer = writer.to_string();
    let trial = trial.to_string();
    let seed = seed.to_string();
    common::spawn_self(
        "cluster_child_replica",
        &[
            (CHILD_ENV, db.as_os_str()),
            (URL_ENV, url.as_ref()),
            (WRITER_ENV, writer.as_ref()),
            (TRIAL_ENV, trial.as_ref()),
            (CHILD_SEED_ENV, seed.as_ref()),
        ],
    )
}

/// A line from writer `.0`, or `None` when its stdout closed.
type Output = (usize, Option<String>);

/// What a line of output said.
#[derive(Debug, Clone, Copy)]
enum Line {
    Ack,
    Synced,
}

fn read_lines(writer: usize, child: &mut Child, tx: mpsc::Sender<Output>) {
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((writer, Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((writer, None));
    });
}

fn kill(child: &mut Child, what: &str) {
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(common::SIGKILL),
        "{what} died of something else than our SIGKILL: {status}"
    );
}

/// When a replica process dies: after this many acknowledged writes, or
/// after this many confirmations from the relay, whichever comes first.
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    acks: u64,
    synced: u64,
}

impl KillPoint {
    /// Half the replicas die after a random number of writes (possibly
    /// before opening their file); the others once the relay confirmed a
    /// few times, so the relay's promises are tested too (with a cap on
    /// writes, for when the relay died first).
    fn draw(rng: &mut StdRng) -> Self {
        if rng.random_bool(0.5) {
            KillPoint {
                acks: rng.random_range(0..=MAX_ACKS_BEFORE_KILL),
                synced: u64::MAX,
            }
        } else {
            KillPoint {
                acks: 2 * MAX_ACKS_BEFORE_KILL,
                synced: rng.random_range(1..=4),
            }
        }
    }
}

/// Per replica process: acknowledged writes and relay confirmations seen.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    acks: u64,
    synced: u64,
}

/// Runs one trial's processes until every one of them was killed, and
/// returns what they acknowledged.
fn run_trial(rng: &mut StdRng, relay_db: &Path, dbs: &[PathBuf], trial: usize) -> Acks {
    let mut relay: Option<RelayProcess> = Some(spawn_relay(relay_db));
    let url = relay.as_ref().map(|r| r.url.clone()).unwrap_or_default();
    let plan: Vec<KillPoint> = dbs.iter().map(|_| KillPoint::draw(rng)).collect();
    // About half the time the relay dies under the load, otherwise right
    // after the last replica (possibly while storing its last changes).
    let relay_kill_after = rng.random_range(0..=2 * MAX_ACKS_BEFORE_KILL * dbs.len() as u64);
    let (tx, rx) = mpsc::channel::<Output>();
    let mut children: Vec<Option<Child>> = Vec::new();
    for (writer, db) in dbs.iter().enumerate() {
        let mut child = spawn_writer(db, &url, writer, trial, rng.random());
        read_lines(writer, &mut child, tx.clone());
        children.push(Some(child));
    }
    drop(tx);
    let mut acks = Acks::default();
    let mut seen = vec![Seen::default(); dbs.len()];
    let mut open = dbs.len();
    let check_kills =
        |seen: &[Seen], children: &mut Vec<Option<Child>>, relay: &mut Option<RelayProcess>| {
            for (writer, slot) in children.iter_mut().enumerate() {
                let (seen, point) = (seen[writer], plan[writer]);
                if seen.acks >= point.acks || seen.synced >= point.synced {
                    if let Some(mut child) = slot.take() {
                        kill(&mut child, &format!("writer {writer}"));
                    }
                }
            }
            let total: u64 = seen.iter().map(|s| s.acks).sum();
            if total >= relay_kill_after || children.iter().all(Option::is_none) {
                if let Some(mut r) = relay.take() {
                    kill(&mut r.child, "the relay");
                }
            }
        };
    check_kills(&seen, &mut children, &mut relay);
    while open > 0 {
        let (writer, line) = rx
            .recv_timeout(STALL)
            .expect("a writer stalled (see its stderr)");
        match line {
            Some(line) => match acks.record(writer, &line) {
                Some(Line::Ack) => seen[writer].acks += 1,
                Some(Line::Synced) => seen[writer].synced += 1,
                None => {}
            },
            None => {
                open -= 1;
                assert!(
                    children[writer].is_none(),
                    "writer {writer} exited by itself; see its stderr"
                );
            }
        }
        check_kills(&seen, &mut children, &mut relay);
    }
    acks
}

/// Opens `db` (which must work after any kill) and checks that the file is
/// whole and holds every write in `writes`; returns each record's heads.
fn verify(db: &Path, writes: &[&Write], what: &str) -> BTreeMap<DocId, Heads> {
    let replica = Replica::open(db)
        .unwrap_or_else(|e| panic!("{what}: the database does not open after a kill: {e}"));
    let mut by_doc: HashMap<DocId, Vec<&Write>> = HashMap::new();
    for write in writes {
        by_doc.entry(write.id).or_default().push(write);
    }
    for (id, writes) in &by_doc {
        let record = replica
            .get(id)
            .unwrap_or_else(|e| panic!("{what}: acknowledged record {id} lost: {e}"));
        for write in writes {
            assert_eq!(
                record.value[&write.key],
                json!(write.seq),
                "{what}: acknowledged write {} of writer {} to {id} lost",
                write.key,
                write.writer
            );
        }
    }
    let heads = heads_of(&replica);
    let projection = replica.check_projection().expect("check projection");
    assert!(projection.is_empty(), "{what}: projection {projection:?}");
    let integrity = Store::open_reader(db)
        .and_then(|store| store.integrity_check())
        .expect("integrity check");
    assert!(integrity.is_empty(), "{what}: SQLite says {integrity:?}");
    heads
}

/// Every record's heads, sorted; loading each record on the way.
fn heads_of(replica: &Replica) -> BTreeMap<DocId, Heads> {
    replica
        .list(COLLECTION)
        .expect("list")
        .into_iter()
        .map(|meta| {
            let heads = replica.heads(&meta.id).unwrap_or_else(|e| {
                panic!(
                    "{:?}: record {} does not load: {e}",
                    replica.path(),
                    meta.id
                )
            });
            (meta.id, heads)
        })
        .collect()
}

/// Restarts the relay, reopens every replica and syncs them all: each
/// pushes, then each pulls. Returns once all agree with the relay.
fn converge(relay_db: &Path, dbs: &[PathBuf]) {
    let mut relay = spawn_relay(relay_db);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut handles = Vec::new();
        for db in dbs {
            let replica = Replica::open(db).expect("reopen replica");
            let handle = replica.connect(
                &relay.url,
                ConnectOptions {
                    collections: vec![COLLECTION.into()],
                    ..ConnectOptions::default()
                },
            );
            handles.push((replica, handle));
        }
        for (replica, handle) in &mut handles {
            handle
                .wait_synced(STALL)
                .await
                .unwrap_or_else(|e| panic!("{:?} does not sync: {e}", replica.path()));
        }
        // Everyone's writes are at the relay now; agreeing with it means
        // holding exactly its heads.
        for (replica, handle) in &mut handles {
            handle
                .wait_agreed(STALL)
                .await
                .unwrap_or_else(|e| panic!("{:?} does not agree: {e}", replica.path()));
        }
        let relay_heads = heads_of(&Replica::open(relay_db).expect("relay db"));
        for (replica, _) in &handles {
            assert!(
                heads_of(replica) == relay_heads,
                "{:?}: wait_agreed returned, but its heads differ from the relay's",
                replica.path()
            );
        }
        for (_, handle) in handles {
            handle.close().await;
        }
    });
    // An idle relay is killed too, rather than shut down politely.
    kill(&mut relay.child, "the relay");
}

#[test]
fn relay_and_replicas_killed_at_random_lose_nothing_and_converge() {
    let trials = common::env_number(TRIALS_ENV).unwrap_or(6) as usize;
    let replicas = common::env_number(REPLICAS_ENV).unwrap_or(3) as usize;
    let seed = common::env_number(SEED_ENV).unwrap_or_else(rand::random);
    eprintln!("cluster crash: {trials} trials, {replicas} replicas, {SEED_ENV}={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dir = tempfile::tempdir().expect("tempdir");
    let mut all: Vec<Write> = Vec::new();
    let mut acknowledged = 0;
    for trial in 0..trials {
        if trial % TRIALS_PER_CLUSTER == 0 {
            // Fresh files now and then: the records' growing histories
            // would otherwise make every later trial slower.
            dir = tempfile::tempdir().expect("tempdir");
            all.clear();
        }
        let relay_db = dir.path().join("relay.db");
        let dbs: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.path().join(format!("replica-{i}.db")))
            .collect();
        let acks = run_trial(&mut rng, &relay_db, &dbs, trial);
        let what = |who: &str| format!("trial {trial} ({SEED_ENV}={seed}), {who}");
        for (writer, db) in dbs.iter().enumerate() {
            let own: Vec<&Write> = all
                .iter()
                .chain(&acks.writes)
                .filter(|w| w.writer == writer)
                .collect();
            verify(db, &own, &what(&format!("replica {writer}")));
        }
        let on_relay: Vec<&Write> = all.iter().chain(acks.on_relay()).collect();
        verify(&relay_db, &on_relay, &what("relay"));
        eprintln!(
            "trial {trial}: {} writes acknowledged by replicas, {} by the relay",
            acks.writes.len(),
            acks.on_relay().count()
        );
        acknowledged += acks.writes.len();
        all.extend(acks.writes);

        converge(&relay_db, &dbs);
        let everything: Vec<&Write> = all.iter().collect();
        let relay_heads = verify(&relay_db, &everything, &what("relay after restart"));
        for (writer, db) in dbs.iter().enumerate() {
            let heads = verify(
                db,
                &everything,
                &what(&format!("replica {writer} after restart")),
            );
            assert!(
                heads == relay_heads,
                "{}: heads differ from the relay's",
                what(&format!("replica {writer} after restart"))
            );
        }
    }
    assert!(acknowledged > 0, "no trial acknowledged any write");
}
