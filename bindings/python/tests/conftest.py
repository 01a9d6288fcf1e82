"""Fixtures: the real ``accord-relay`` and ``accord`` binaries of this build
(``ACCORD_RELAY_BIN``, ``ACCORD_BIN``; relay/tests/python_bindings.rs sets
them, or they are looked up next to each other in ``target/debug``), each
relay on a free loopback port with its own database file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _binary(env: str, name: str) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / name
    if not path.is_file():
        pytest.fail(f"{name} not found at {path}: run `cargo build --workspace` or set {env}")
    return path


@pytest.fixture(scope="session")
def relay_bin() -> Path:
    return _binary("ACCORD_RELAY_BIN", "accord-relay")


@pytest.fixture(scope="session")
def accord_bin() -> Path:
    return _binary("ACCORD_BIN", "accord")


class Relay:
    """A running accord-relay process."""

    def __init__(self, binary: Path, db: Path, args: List[str]) -> None:
        self.binary = binary
        self.db = db
        self.args = args
        self.process: Optional[subprocess.Popen[str]] = None
        self.url = ""
        self.start()

    def start(self) -> None:
        listen = "127.0.0.1:0" if not self.url else self.url.removeprefix("ws://")
        self.process = subprocess.Popen(
            [str(self.binary), "--listen", listen, "--metrics-listen", "off", "--db", str(self.db), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert "listening on " in line, f"accord-relay did not start: {line!r}"
        self.url = "ws://" + line.split("listening on ", 1)[1].strip()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def relay(relay_bin: Path, tmp_path: Path) -> Iterator[Relay]:
    """An open relay (no tokens)."""
    r = Relay(relay_bin, tmp_path / "relay.db", ["--open"])
    yield r
    r.stop()


@pytest.fixture
def secured_relay(relay_bin: Path, tmp_path: Path) -> Iterator[Relay]:
    """A relay with a secret; mint tokens with ``mint(relay, ...)``."""
    secret = tmp_path / "secret"
    secret.write_text("a secret of the python tests, long enough")
    r = Relay(relay_bin, tmp_path / "secured-relay.db", ["--secret-file", str(secret)])
    r.secret = secret  # type: ignore[attr-defined]
    yield r
    r.stop()


def mint(relay: Relay, *collections: str, read_only: bool = False) -> str:
    args = [str(relay.binary), "token", "--secret-file", str(relay.secret)]  # type: ignore[attr-defined]
    for c in collections:
        args += ["--collection", c]
    if read_only:
        args.append("--read-only")
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
