//! Running the test suites written in other languages (the Node suites in
//! `tests/js` and `tests/browser`, the Python package's pytest suite) against this build's
//! binaries: finding the binaries, checking the tools, and running a
//! command with its output captured and a deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The `accord-relay` binary this build made, and the `accord` CLI beside it.
pub fn binaries() -> (PathBuf, PathBuf) {
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_accord-relay"));
    let accord = relay.with_file_name(format!("accord{}", std::env::consts::EXE_SUFFIX));
    assert!(
        accord.is_file(),
        "the accord CLI is not next to accord-relay at {}: build it with cargo build -p accord-cli \
         (cargo test --workspace builds it)",
        accord.display()
    );
    (relay, accord)
}

/// `TOOL --version`, or a failure naming the missing tool and what needs it.
pub fn tool_version(tool: &str, needed_by: &str) -> String {
    let output = Command::new(tool).arg("--version").output();
    match output {
        Ok(o) if o.status.success() => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        }
        Ok(o) => panic!("`{tool} --version` failed ({}): {needed_by}", o.status),
        Err(e) => panic!("`{tool}` not found ({e}): {needed_by}"),
    }
}

/// Whether `installed` (a file an install writes) is missing or older than
/// `wanted` (the lock or requirements file it installs from).
pub fn stale(installed: &Path, wanted: &Path) -> bool {
    let modified =
        |p: &Path| -> Option<SystemTime> { p.metadata().and_then(|m| m.modified()).ok() };
    let wanted =
        modified(wanted).unwrap_or_else(|| panic!("no {} to install from", wanted.display()));
    match modified(installed) {
        Some(installed) => installed < wanted,
        None => true,
    }
}

/// Runs a setup step (an install, a build) and fails with its output
/// unless it succeeds.
pub fn must_run(cmd: Command, timeout: Duration, what: &str) {
    let (status, out, err) = run(cmd, timeout, what);
    assert!(status.success(), "{what} failed ({status}):\n{out}\n{err}");
}

/// Runs a whole suite (`what`, in `dir`) and fails with its output unless
/// it passes; prints how long it took and what it said.
pub fn run_suite(cmd: Command, timeout: Duration, what: &str, dir: &Path) {
    let started = Instant::now();
    let (status, out, err) = run(cmd, timeout, what);
    println!(
        "{what} in {} took {:.1} s:\n{out}",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "{what} failed ({status}); its output:\n{out}\n{err}"
    );
}

/// Runs `cmd` with its output captured; kills it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration, what: &str) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let (out, out_reader) = drain(&mut child, true);
    let (err, err_reader) = drain(&mut child, false);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // Grandchildren may still hold the pipes: show what came so far.
                panic!(
                    "{what} did not finish within {timeout:?}; killed. Its output so far:\n{}\n{}",
                    text(&out),
                    text(&err)
                );
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    let _ = out_reader.join();
    let _ = err_reader.join();
    (status, text(&out), text(&err))
}

type Captured = Arc<Mutex<Vec<u8>>>;

fn text(captured: &Captured) -> String {
    let bytes = captured.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Copies the child's stdout (or stderr) into a buffer on a thread, as it comes.
fn drain(child: &mut Child, stdout: bool) -> (Captured, thread::JoinHandle<()>) {
    let mut pipe: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("stdout is piped"))
    } else {
        Box::new(child.stderr.take().expect("stderr is piped"))
    };
    let captured = Captured::default();
    let sink = Arc::clone(&captured);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    (captured, reader)
}

/// Checks for Node 20+ and npm (failing with `needed_by` when missing)
/// and installs the Node package in `dir` with `npm ci` when its
/// `node_modules` is missing or older than its `package-lock.json`.
#[allow(dead_code)] // each test binary compiles this module; the Python one needs no Node
pub fn node_packages(dir: &Path, needed_by: &str, install_timeout: Duration) {
    let node_version = tool_version("node", needed_by);
    let major: u32 = node_version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "{needed_by}: Node 20 or later; `node --version` says {}",
        node_version.trim()
    );
    tool_version("npm", needed_by);
    // npm writes node_modules/.package-lock.json on every install.
    let installed = dir.join("node_modules/.package-lock.json");
    if stale(&installed, &dir.join("package-lock.json")) {
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
        must_run(
            npm,
            install_timeout,
            &format!("npm ci in {}", dir.display()),
        );
    }
}
