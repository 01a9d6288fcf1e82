"""The Python side of `bench --only python`: the binding's cost over the
engine's, measured with the same calls the harness times in Rust
(tests/src/bin/bench/python.rs).

Prints one JSON object: durable single writes per second (`put` of one
field of one record, each committed before it returns), creates per second,
and the median latency of an indexed query returning ten rows of a
1,000-record collection. Refuses a debug build of the package unless
--allow-debug: build it with `maturin develop --release` first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import accord
from accord import _accord

RECORDS = 1000
"""Contacts created (and timed), then queried: 100 cities, ten each."""

QUERY = (
    "SELECT id, json_extract(json, '$.name') AS name FROM records "
    "WHERE collection = 'contacts' AND json_extract(json, '$.city') = ?"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--allow-debug", action="store_true")
    args = parser.parse_args()
    if _accord.debug_build and not args.allow_debug:
        print("accord is a debug build: run `maturin develop --release` in bindings/python", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp, accord.Replica(Path(tmp) / "bench.db") as r:
        record = r.create("bench", {"k": -1})
        started = time.perf_counter()
        for i in range(args.writes):
            r.put(record, "k", i)
        puts = args.writes / (time.perf_counter() - started)

        started = time.perf_counter()
        for i in range(RECORDS):
            r.create("contacts", {"name": f"contact {i}", "city": f"city {i % 100}", "n": i})
        creates = RECORDS / (time.perf_counter() - started)

        r.create_index("contacts", "$.city")
        latencies = []
        for q in range(args.queries):
            started = time.perf_counter()
            rows = r.query(QUERY, (f"city {q % 100}",))
            latencies.append(time.perf_counter() - started)
            assert rows, "the query found nothing"
    print(json.dumps({"put_per_s": puts, "create_per_s": creates, "query_ms": statistics.median(latencies) * 1000}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
