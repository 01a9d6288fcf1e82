//! Stock automerge-repo JavaScript clients against the real `accord-relay`
//! binary: runs the Node suite in `tests/js` (`node --test`) with the
//! binaries this build made. Needs Node 20 or later and npm; installs the
//! suite's pinned packages with `npm ci` when `tests/js/node_modules` is
//! missing or older than `package-lock.json`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The whole Node run may take this long before it is killed.
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `npm ci` may take this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// One Node test may take this long (`node --test --test-timeout`).
const TEST_TIMEOUT_MS: u32 = 120_000;

#[test]
fn stock_automerge_repo_js_clients_against_the_relay() {
    let js_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_accord-relay"));
    let accord = relay.with_file_name(format!("accord{}", std::env::consts::EXE_SUFFIX));
    assert!(
        accord.is_file(),
        "the accord CLI is not next to accord-relay at {}: build it with cargo build -p accord-cli \
         (cargo test --workspace builds it)",
        accord.display()
    );

    let node_version = tool_version("node");
    let major: u32 = node_version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the JS client suite needs Node 20 or later; `node --version` says {}",
        node_version.trim()
    );
    tool_version("npm");

    if needs_install(&js_dir) {
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js_dir);
        let (status, out, err) = run(npm, INSTALL_TIMEOUT, "npm ci");
        assert!(
            status.success(),
            "npm ci in {} failed ({status}):\n{out}\n{err}",
            js_dir.display()
        );
    }

    let mut node = Command::new("node");
    node.arg("--test")
        .arg(format!("--test-timeout={TEST_TIMEOUT_MS}"))
        .current_dir(&js_dir)
        .env("ACCORD_RELAY_BIN", &relay)
        .env("ACCORD_BIN", &accord)
        .env_remove("ACCORD_JS_TARGET");
    let started = Instant::now();
    let (status, out, err) = run(node, SUITE_TIMEOUT, "node --test");
    println!(
        "node --test in {} took {:.1} s",
        js_dir.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "the JS client suite failed ({status}); node's output:\n{out}\n{err}"
    );
}

/// `TOOL --version`, or a failure naming the missing tool.
fn tool_version(tool: &str) -> String {
    let output = Command::new(tool).arg("--version").output();
    match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "`{tool} --version` failed ({}): the JS client suite (tests/js) needs Node 20+ and npm",
            o.status
        ),
        Err(e) => panic!(
            "`{tool}` not found ({e}): the JS client suite (tests/js) needs Node 20+ and npm on PATH"
        ),
    }
}

/// Whether `node_modules` is missing or older than `package-lock.json`
/// (npm writes `node_modules/.package-lock.json` on every install).
fn needs_install(js_dir: &Path) -> bool {
    let modified =
        |p: PathBuf| -> Option<SystemTime> { p.metadata().and_then(|m| m.modified()).ok() };
    let lock = modified(js_dir.join("package-lock.json"))
        .unwrap_or_else(|| panic!("no package-lock.json in {}", js_dir.display()));
    match modified(js_dir.join("node_modules/.package-lock.json")) {
        Some(installed) => installed < lock,
        None => true,
    }
}

/// Runs `cmd` with its output captured; kills it after `timeout`.
fn run(mut cmd: Command, timeout: Duration, what: &str) -> (ExitStatus, String, String) {
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
