//! Running the test suites written in other languages (the Node suite in
//! `tests/js`, the Python package's pytest suite) against this build's
//! binaries: finding the binaries, checking the tools, and running a
//! command with its output captured and a deadline.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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
