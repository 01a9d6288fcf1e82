//! Helpers for running the built `accord` binary against a database in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use accord_engine::automerge::transaction::Transactable;
use accord_engine::automerge::{Automerge, ROOT};
use accord_engine::{DocId, Replica};

/// A temporary directory holding one database.
#[derive(Debug)]
pub struct Env {
    /// Removed when the test ends.
    dir: tempfile::TempDir,
    /// `accord.db` inside it (created by the first writing command).
    pub db: PathBuf,
}

/// What a finished run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Exit status (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Stdout as text.
    pub stdout: String,
    /// Stderr as text.
    pub stderr: String,
    /// Stdout as bytes, for binary output.
    pub raw: Vec<u8>,
}

impl Env {
    /// A fresh directory; no database yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("accord.db");
        Env { dir, db }
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `accord --db <db> ARGS`, with a clean environment for colour and
    /// time zone, run in the temporary directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accord"));
        cmd.arg("--db")
            .arg(&self.db)
            .args(args)
            .current_dir(self.path())
            .env_remove("ACCORD_DB")
            .env_remove("NO_COLOR")
            .env("TZ", "UTC")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `accord ARGS` to the end.
    pub fn run(&self, args: &[&str]) -> Run {
        run(&mut self.cmd(args))
    }

    /// Runs `accord ARGS`, asserts it succeeded, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, Some(0), "accord {args:?} failed: {run:?}");
        assert!(
            run.stderr.is_empty(),
            "accord {args:?} wrote to stderr: {run:?}"
        );
        run.stdout
    }

    /// Runs `accord ARGS`, asserts it exited with `code` and said nothing
    /// on stdout, and returns its stderr.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, Some(code), "accord {args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "accord {args:?} printed: {run:?}");
        assert!(!run.stderr.contains("panicked"), "accord {args:?}: {run:?}");
        run.stderr
    }

    /// Runs `accord ARGS` and parses its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("accord {args:?}: {e}: {out}"))
    }

    /// Creates a record with the CLI and returns its id.
    pub fn new_record(&self, collection: &str, data: &str) -> String {
        let out = self.ok(&["new", collection, "--data", data]);
        out.trim().to_owned()
    }

    /// The database opened through the engine, for setting up histories
    /// the CLI cannot make (concurrent edits). Drop it before running the
    /// CLI.
    pub fn replica(&self) -> Replica {
        Replica::open(&self.db).expect("open replica")
    }

    /// A record with `n` changes (each setting `n` to its number), made
    /// with Automerge directly and imported; returns its id.
    pub fn long_history(&self, n: i64) -> DocId {
        let mut doc = Automerge::new();
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, "n", i).expect("put");
            tx.commit();
        }
        self.replica().import("long", &doc.save()).expect("import")
    }
}

/// Runs a command to the end and collects what it printed, failing the
/// test (and killing the process) if it has not ended within `patience`:
/// for commands whose failure mode is running for ever.
pub fn run_within(cmd: &mut Command, patience: Duration) -> Run {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn accord");
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(out) = finished.recv_timeout(patience) else {
        // Only the process this test started, by its id.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let _ = waiter.join();
        panic!("accord {cmd:?} still ran after {patience:?}");
    };
    let _ = waiter.join();
    let out = out.expect("run accord");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw: out.stdout,
    }
}

/// Runs a command to the end and collects what it printed.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run accord");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw: out.stdout,
    }
}

/// The object keys of a JSON value, sorted.
pub fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}
