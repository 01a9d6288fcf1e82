//! The Python package (`bindings/python`, `import accord`) against the real
//! `accord-relay` and `accord` binaries: builds the package with maturin
//! into a virtual environment and runs its pytest suite, the PySide6
//! example's headless test included.
//!
//! Needs CPython 3.9 or later with `venv` (`ACCORD_PYTHON` names another
//! interpreter). The environment is `bindings/python/.venv`; it is made,
//! and `requirements-dev.txt` (maturin, pytest, PySide6, pinned) installed
//! into it with pip, when it is missing or older than that file.

mod external;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use external::{binaries, must_run, run_suite, stale, tool_version};

/// Creating the environment and installing its packages may take this long.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Building the package (a cargo build of the extension) may take this long.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The whole pytest run may take this long before it is killed.
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

const NEEDED_BY: &str =
    "the Python package's tests need CPython 3.9+ with venv (set ACCORD_PYTHON to use another)";

#[test]
fn python_package_against_the_relay() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/python");
    let (relay, accord) = binaries();
    let python = std::env::var("ACCORD_PYTHON").unwrap_or_else(|_| "python3".into());
    check_version(&tool_version(&python, NEEDED_BY));

    let venv = package.join(".venv");
    let bin = venv.join("bin");
    let stamp = venv.join(".accord-requirements");
    if stale(&stamp, &package.join("requirements-dev.txt")) {
        let mut make = Command::new(&python);
        make.args(["-m", "venv", "--clear"]).arg(&venv);
        must_run(make, INSTALL_TIMEOUT, "python -m venv");
        let mut pip = Command::new(bin.join("python"));
        pip.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(package.join("requirements-dev.txt"));
        must_run(pip, INSTALL_TIMEOUT, "pip install -r requirements-dev.txt");
        std::fs::write(&stamp, "installed\n").expect("write the venv's stamp");
    }

    // `maturin develop` builds the extension with cargo (reusing this
    // build's artifacts where they match) and installs it, editable, into
    // the environment.
    let mut maturin = Command::new(bin.join("maturin"));
    maturin
        .args(["develop", "--quiet"])
        .current_dir(&package)
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", path_with(&bin));
    let started = Instant::now();
    must_run(maturin, BUILD_TIMEOUT, "maturin develop");
    println!(
        "maturin develop took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut pytest = Command::new(bin.join("python"));
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(&package)
        .env("ACCORD_RELAY_BIN", &relay)
        .env("ACCORD_BIN", &accord)
        .env("QT_QPA_PLATFORM", "offscreen")
        .env("PATH", path_with(&bin));
    run_suite(pytest, SUITE_TIMEOUT, "pytest", &package);
}

/// Fails unless `Python 3.N` with N ≥ 9.
fn check_version(version: &str) {
    let minor = version
        .trim()
        .strip_prefix("Python 3.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    assert!(
        minor.is_some_and(|m| m >= 9),
        "{NEEDED_BY}; `--version` says {}",
        version.trim()
    );
}

/// `PATH` with `dir` first.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![PathBuf::from(dir)];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries without separators")
}
