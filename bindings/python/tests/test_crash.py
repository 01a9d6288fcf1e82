"""A Python process writing in a loop is killed with SIGKILL: every write
that returned is in the file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import accord

WRITER = r"""
import sys, accord
r = accord.Replica(sys.argv[1])
counter = r.create("log", {"n": 0}) if len(sys.argv) < 3 else sys.argv[2]
print("counter", counter, flush=True)
i = r.get(counter, "n")
while True:
    i += 1
    note = r.create("log", {"n": i, "text": "x" * (i % 50)})
    print("created", i, note, flush=True)   # acknowledged: create returned
    r.put(counter, "n", i)
    print("counted", i, flush=True)
"""


def test_every_acknowledged_write_survives_sigkill(tmp_path: Path, accord_bin: Path) -> None:
    db = tmp_path / "crash.db"
    seed = int(os.environ.get("ACCORD_PY_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    trials = int(os.environ.get("ACCORD_PY_CRASH_TRIALS", "4"))
    created: dict[str, int] = {}
    counter = None
    for trial in range(trials):
        args = [sys.executable, "-c", WRITER, str(db)] + ([counter] if counter else [])
        child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        kill_after = rng.randrange(1, 300)
        counted = None
        lines = 0
        for line in child.stdout:
            parts = line.split()
            if parts[0] == "counter":
                counter = parts[1]
            elif parts[0] == "created":
                created[parts[2]] = int(parts[1])
            elif parts[0] == "counted":
                counted = int(parts[1])
            lines += 1
            if lines >= kill_after:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Every acknowledged write is in the file, and the file is whole.
        with accord.Replica(db) as r:
            for note, n in created.items():
                assert r.get(note, "n") == n, f"seed {seed}, trial {trial}: note {n} lost"
            if counted is not None:
                assert r.get(counter, "n") >= counted, f"seed {seed}, trial {trial}: count went back"
            live = {i.id for i in r.list("log")}
            assert set(created) <= live
        # The file is whole: SQLite's integrity check and the engine's own,
        # run by the CLI in its own process (opening the file with Python's
        # sqlite3 in this process, beside the engine's SQLite, would break
        # both libraries' locks; see docs/python.md).
        check = subprocess.run([str(accord_bin), "--db", str(db), "check"], capture_output=True, text=True)
        assert check.returncode == 0 and "database file sound" in check.stdout, check.stdout + check.stderr
    assert len(created) > 0
