//! Stock automerge-repo JavaScript clients against the real `accord-relay`
//! binary: runs the Node suite in `tests/js` (`node --test`) with the
//! binaries this build made. Needs Node 20 or later and npm; installs the
//! suite's pinned packages with `npm ci` when `tests/js/node_modules` is
//! missing or older than `package-lock.json`.

mod external;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use external::{binaries, node_packages, run_suite};

/// What `node` and `npm` are needed by, for the failure that says they
/// are missing.
const NEEDED_BY: &str = "the JS client suite (tests/js) needs Node 20+ and npm on PATH";

/// The whole Node run may take this long before it is killed.
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `npm ci` may take this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// One Node test may take this long (`node --test --test-timeout`).
const TEST_TIMEOUT_MS: u32 = 120_000;

#[test]
fn stock_automerge_repo_js_clients_against_the_relay() {
    let js_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js");
    let (relay, accord) = binaries();

    node_packages(&js_dir, NEEDED_BY, INSTALL_TIMEOUT);

    let mut node = Command::new("node");
    node.arg("--test")
        .arg(format!("--test-timeout={TEST_TIMEOUT_MS}"))
        .current_dir(&js_dir)
        .env("ACCORD_RELAY_BIN", &relay)
        .env("ACCORD_BIN", &accord)
        .env_remove("ACCORD_JS_TARGET");
    run_suite(node, SUITE_TIMEOUT, "node --test", &js_dir);
}
