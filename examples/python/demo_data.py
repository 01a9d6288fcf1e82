"""Seeds two replicas with a few contacts, one of them in conflict, through
a relay: the data behind ``docs/images/contacts_qt.png``.

To refresh that screenshot, from the repository root with the package
installed and ``accord-relay`` (``target/debug``) on the PATH::

    mkdir -p /tmp/demo && accord-relay --open --listen 127.0.0.1:7420 --db /tmp/demo/relay.db &
    python examples/python/demo_data.py --relay ws://127.0.0.1:7420 /tmp/demo/phone.db /tmp/demo/laptop.db
    QT_QPA_PLATFORM=offscreen python examples/python/contacts_qt.py --db /tmp/demo/laptop.db \\
        --relay ws://127.0.0.1:7420 --name Laptop --select Ada --screenshot docs/images/contacts_qt.png
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import accord

CONTACTS = [
    ("Ada Lovelace", "ada@example.org", "+44 20 7946 0000"),
    ("Alan Turing", "alan@example.org", "+44 161 496 0000"),
    ("Grace Hopper", "grace@example.org", "+1 555 0100"),
    ("Katherine Johnson", "katherine@example.org", "+1 555 0199"),
]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", required=True, help="ws://host:port of an accord-relay")
    parser.add_argument("phone", help="the first replica's file")
    parser.add_argument("laptop", help="the second replica's file")
    args = parser.parse_args(argv)

    with accord.Replica(args.phone) as phone, accord.Replica(args.laptop) as laptop:
        ids = [phone.create("contacts", {"name": n, "email": e, "phone": p}) for n, e, p in CONTACTS]
        with phone.connect(args.relay, collections="contacts") as p, \
                laptop.connect(args.relay, collections="contacts") as l:
            p.wait_synced()
            l.wait_agreed()
        # Both offline: the same field changed differently on each device.
        phone.put(ids[0], "phone", "+44 7700 900123", message="new mobile")
        laptop.put(ids[0], "phone", "+44 20 7946 0999", message="new office number")
        laptop.put(ids[2], "email", "grace.hopper@example.org")
        with phone.connect(args.relay, collections="contacts") as p, \
                laptop.connect(args.relay, collections="contacts") as l:
            p.wait_synced()
            l.wait_synced()
            p.wait_agreed()
            l.wait_agreed()
        print(f"{len(ids)} contacts; conflicts of {CONTACTS[0][0]}: {laptop.conflicts(ids[0])}")


if __name__ == "__main__":
    main()
