//! The web inspector in a real browser: runs the Node suite in
//! `tests/browser` (`node --test`, driving headless Chromium through
//! playwright-core) against the `accord-relay` and `accord` binaries this
//! build made. Needs Node 20 or later with npm, and Debian's `chromium`
//! package (`/usr/bin/chromium`, or the path in `CHROMIUM`); installs the
//! suite's pinned package with `npm ci` when `tests/browser/node_modules`
//! is missing or older than `package-lock.json`. Screenshots go to
//! `tests/browser/artifacts` (or `ACCORD_ARTIFACTS`).

mod external;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use external::{binaries, node_packages, run_suite, tool_version};

/// What `node` and `npm` are needed by, for the failure that says they
/// are missing.
const NEEDED_BY: &str =
    "the inspector's browser suite (tests/browser) needs Node 20+ and npm on PATH";

/// Where Debian's `chromium` package puts the browser.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// The whole Node run may take this long before it is killed.
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `npm ci` may take this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// One Node test may take this long (`node --test --test-timeout`).
const TEST_TIMEOUT_MS: u32 = 180_000;

#[test]
fn inspector_in_a_headless_browser_against_the_relay() {
    let suite_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    let (relay, accord) = binaries();
    let chromium = chromium();

    node_packages(&suite_dir, NEEDED_BY, INSTALL_TIMEOUT);

    let mut node = Command::new("node");
    node.arg("--test")
        .arg(format!("--test-timeout={TEST_TIMEOUT_MS}"))
        .current_dir(&suite_dir)
        .env("ACCORD_RELAY_BIN", &relay)
        .env("ACCORD_BIN", &accord)
        .env("CHROMIUM", &chromium);
    run_suite(node, SUITE_TIMEOUT, "node --test", &suite_dir);
}

/// The Chromium to drive: `CHROMIUM`, or Debian's package; a failure
/// saying how to install it when there is none.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
    assert!(
        path.is_file(),
        "no Chromium at {}: the inspector's browser suite (tests/browser) drives a headless \
         Chromium; install Debian's `chromium` package (apt-get install chromium), or set \
         CHROMIUM to a Chromium binary",
        path.display()
    );
    let version = tool_version(
        path.to_str().unwrap_or(DEFAULT_CHROMIUM),
        "the inspector's browser suite needs a working Chromium: install Debian's `chromium` package",
    );
    println!(
        "using {} ({})",
        path.display(),
        version.lines().next().unwrap_or("").trim()
    );
    path
}
