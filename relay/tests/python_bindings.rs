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
use std::time::{Duration, Instant, SystemTime};

use external::{binaries, run, tool_version};

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
    if needs_install(&package.join("requirements-dev.txt"), &stamp) {
        let mut make = Command::new(&python);
        make.args(["-m", "venv", "--clear"]).arg(&venv);
        check(
            run(make, INSTALL_TIMEOUT, "python -m venv"),
            "python -m venv",
        );
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
        check(
            run(pip, INSTALL_TIMEOUT, "pip install"),
            "pip install -r requirements-dev.txt",
        );
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
    check(
        run(maturin, BUILD_TIMEOUT, "maturin develop"),
        "maturin develop",
    );
    println!(
        "maturin develop took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut pytest = Command::new(bin.join("python"));
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&package)
        .env("ACCORD_RELAY_BIN", &relay)
        .env("ACCORD_BIN", &accord)
        .env("QT_QPA_PLATFORM", "offscreen")
        .env("PATH", path_with(&bin));
    let started = Instant::now();
    let (status, out, err) = run(pytest, SUITE_TIMEOUT, "pytest");
    println!(
        "pytest in {} took {:.1} s:\n{out}",
        package.display(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "the Python package's tests failed ({status}); pytest's output:\n{out}\n{err}"
    );
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

fn check((status, out, err): (std::process::ExitStatus, String, String), what: &str) {
    assert!(status.success(), "{what} failed ({status}):\n{out}\n{err}");
}

/// Whether the environment is missing or older than the requirements.
fn needs_install(requirements: &Path, stamp: &Path) -> bool {
    let modified =
        |p: &Path| -> Option<SystemTime> { p.metadata().and_then(|m| m.modified()).ok() };
    let wanted = modified(requirements)
        .unwrap_or_else(|| panic!("no {} to install from", requirements.display()));
    match modified(stamp) {
        Some(installed) => installed < wanted,
        None => true,
    }
}

/// `PATH` with `dir` first.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![PathBuf::from(dir)];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries without separators")
}
