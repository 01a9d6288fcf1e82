//! Servers in their own process, so their memory and CPU are theirs alone.
//!
//! The harness starts itself again as `bench serve --system S --db PATH`
//! (see `serve.rs`): the child prints `listening on ADDR`, serves until its
//! standard input closes, then shuts down gracefully. The parent reads the
//! child's `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat`
//! (utime + stime).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which server a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// `accord_relay::server` with its default configuration.
    Accord,
    /// A samod repo accepting WebSockets, storing to the filesystem.
    Samod,
}

/// The server a samod client load runs against in the comparison of
/// three servers: the same clients, three implementations of the
/// automerge-repo protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// samod's own server (a samod repo accepting WebSockets).
    Samod,
    /// `accord-relay`'s `/automerge-repo` door.
    AccordRelay,
    /// The stock JS sync server (`tests/js/support/js-sync-server.mjs`:
    /// an automerge-repo `Repo` with NodeFS storage behind the WebSocket
    /// server adapter), run by Node.
    JsServer,
}

impl Target {
    /// How the table names it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Samod => "samod 0.16 server",
            Target::AccordRelay => "accord-relay /automerge-repo",
            Target::JsServer => "JS sync server (automerge-repo 2.5)",
        }
    }

    /// Starts it on a free loopback port, storing into `db`.
    pub fn start(self, db: &Path) -> anyhow::Result<ServerProcess> {
        match self {
            Target::Samod => ServerProcess::start(System::Samod, db),
            Target::AccordRelay => {
                let mut server = ServerProcess::start(System::Accord, db)?;
                server.path = "/automerge-repo";
                Ok(server)
            }
            Target::JsServer => {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/js/support/js-sync-server.mjs");
                let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/js/node_modules");
                anyhow::ensure!(
                    Path::new(modules).is_dir(),
                    "the JS sync server needs its packages: run `npm ci` in tests/js"
                );
                let mut node = Command::new("node");
                node.arg(script)
                    .args(["--port", "0", "--stdin", "--dir"])
                    .arg(db);
                ServerProcess::spawn(node, "")
            }
        }
    }
}

/// A server running as a child process.
#[derive(Debug)]
pub struct ServerProcess {
    /// The child; killed if it outlives a graceful stop.
    child: Child,
    /// Closing it asks the child to shut down.
    stdin: Option<ChildStdin>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The highest VmHWM seen so far (KiB), kept across restarts by callers.
    pub peak_kib: u64,
    /// The WebSocket path clients dial (empty: the root).
    path: &'static str,
}

impl ServerProcess {
    /// Starts `system` on a free loopback port, storing into `db`.
    pub fn start(system: System, db: &Path) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let name = match system {
            System::Accord => "accord",
            System::Samod => "samod",
        };
        let mut command = Command::new(exe);
        command.args(["serve", "--system", name, "--db"]).arg(db);
        Self::spawn(command, "")
    }

    /// Starts an Accord cluster node on `store` (schema `schema`) and
    /// `bus`.
    pub fn start_node(
        store: &str,
        schema: &str,
        bus: &str,
        db: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let mut command = Command::new(exe);
        command
            .args(["serve", "--system", "accord", "--db"])
            .arg(db)
            .args(["--store", store, "--store-schema", schema, "--bus", bus]);
        Self::spawn(command, "")
    }

    /// Runs `command`, which prints `listening on ADDR` first and stops
    /// when its standard input closes; clients dial `path`.
    fn spawn(mut command: Command, path: &'static str) -> anyhow::Result<ServerProcess> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the server process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("server did not start: {line:?}");
        };
        let addr = addr.parse()?;
        let stdin = child.stdin.take();
        Ok(ServerProcess {
            child,
            stdin,
            addr,
            peak_kib: 0,
            path,
        })
    }

    /// `ws://ADDR/PATH`.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    /// The URL of this server's endpoint through a proxy at `proxy`
    /// (`ws://ADDR`).
    pub fn through(&self, proxy: &str) -> String {
        format!("{proxy}{}", self.path)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        status_field(self.pid(), "VmRSS")
    }

    /// Peak resident memory so far, in KiB.
    pub fn hwm_kib(&mut self) -> anyhow::Result<u64> {
        let hwm = status_field(self.pid(), "VmHWM")?;
        self.peak_kib = self.peak_kib.max(hwm);
        Ok(self.peak_kib)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs(self.pid())
    }

    /// Asks the child to shut down and waits for it (killing it after
    /// 30 s); returns its peak RSS in KiB.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        let peak = self.hwm_kib()?;
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                // A server still busy with a backlog (samod after a capped
                // W1) is not a failed measurement: its peak is known.
                eprintln!("  server did not stop within 30 s; killed");
                self.child.kill()?;
                self.child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(peak)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let value = line[field.len() + 1..].trim().trim_end_matches("kB").trim();
    Ok(value.parse()?)
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) as f64 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux in practice).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
