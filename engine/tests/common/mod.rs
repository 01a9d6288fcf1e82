//! What the kill -9 tests share: re-running this test binary as a child
//! that writes until killed, and reading sizes from the environment.

use std::process::{Child, Command, Stdio};

/// The signal `Child::kill` sends on Unix.
pub const SIGKILL: i32 = 9;

/// Starts this test binary again, running only `test` with `env` set, with
/// stdout piped so the parent can read the child's acknowledgements.
pub fn spawn_self(test: &str, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command.args(["--exact", test, "--nocapture"]);
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// In a child, a panicking writer thread must end the process at once,
/// visibly (SIGABRT), not hide behind other threads until the SIGKILL.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// A number from the environment, if set.
pub fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {text:?}")),
    )
}
