//! Running the real `accord-relay` binary from the relay's tests, and a
//! raw protocol client to talk to it ([`wire`]).

#[allow(dead_code)] // not every test binary receives webhooks
pub mod receiver;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A relay process; killed when dropped.
pub struct RelayProcess {
    pub child: Child,
    pub url: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `accord-relay` in open mode (no tokens; these tests are about
/// storage and crashes, not access) on a free loopback port and reads the
/// port from its startup line (which also proves it opened `db`).
#[allow(dead_code)] // only some test binaries start it without arguments
pub fn spawn_relay(db: &Path) -> RelayProcess {
    spawn_relay_with(db, &[])
}

/// [`spawn_relay`] with more arguments.
#[allow(dead_code)] // only some test binaries pass any
pub fn spawn_relay_with(db: &Path, args: &[&str]) -> RelayProcess {
    spawn_relay_at(db, "127.0.0.1:0", args)
}

/// [`spawn_relay_with`] listening on `listen` (a restarted relay taking
/// its old port back).
#[allow(dead_code)] // only some test binaries restart relays
pub fn spawn_relay_at(db: &Path, listen: &str, args: &[&str]) -> RelayProcess {
    spawn(db, listen, args, None)
}

/// [`spawn_relay_with`], checking tokens signed with `secret` instead of
/// running in open mode.
#[allow(dead_code)] // only some test binaries use tokens
pub fn spawn_relay_secured(db: &Path, args: &[&str], secret: &str) -> RelayProcess {
    spawn(db, "127.0.0.1:0", args, Some(secret))
}

fn spawn(db: &Path, listen: &str, args: &[&str], secret: Option<&str>) -> RelayProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_accord-relay"));
    match secret {
        Some(secret) => command.env("ACCORD_RELAY_SECRET", secret),
        None => command.arg("--open"),
    };
    let mut child = command
        .args([
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--db",
        ])
        .arg(db)
        .args(args)
        .stdout(Stdio::piped())
        // ACCORD_TEST_RELAY_LOG=1 shows the relays' logs (with RUST_LOG).
        .stderr(match std::env::var_os("ACCORD_TEST_RELAY_LOG") {
            Some(_) => Stdio::inherit(),
            None => Stdio::null(),
        })
        .spawn()
        .expect("spawn accord-relay");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("startup line");
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `listening on <addr>` in {line:?}: did {db:?} open?"))
        .trim()
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:")
            && !addr.ends_with(":0")
            && (listen.ends_with(":0") || addr == listen),
        "real port in {line:?}"
    );
    RelayProcess {
        child,
        url: format!("ws://{addr}"),
    }
}
