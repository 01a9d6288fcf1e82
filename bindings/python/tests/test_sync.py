"""Two replicas sync through the real accord-relay binary on loopback."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

import accord
from conftest import Relay, mint


def free_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}"


def test_offline_edits_merge_and_deletes_replicate(relay: Relay, tmp_path: Path) -> None:
    phone = accord.Replica(tmp_path / "phone.db")
    laptop = accord.Replica(tmp_path / "laptop.db")
    ada = phone.create("contacts", {"name": "Ada"})
    with phone.connect(relay.url, collections=["contacts"]) as p, laptop.connect(relay.url, collections="contacts") as l:
        p.wait_synced()
        l.wait_agreed()
        assert laptop.get(ada) == {"name": "Ada"}
        status = l.status()
        assert status.state == "connected" and status.connects == 1 and status.agreed
        assert status.bytes_received > 0

    # Both offline: different fields, then the same field.
    phone.put(ada, "email", "ada@example.org")
    laptop.put(ada, "phone", "+44 20 7946 0000")
    phone.put(ada, "city", "London")
    laptop.put(ada, "city", "Paris")
    grace = laptop.create("contacts", {"name": "Grace"})

    with phone.connect(relay.url, collections=["contacts"]) as p, laptop.connect(relay.url, collections=["contacts"]) as l:
        p.wait_synced()
        l.wait_synced()
        p.wait_agreed()
        l.wait_agreed()
        merged = phone.get(ada)
        assert merged == laptop.get(ada)
        assert merged["email"] == "ada@example.org" and merged["phone"] == "+44 20 7946 0000"
        assert merged["city"] in ("London", "Paris")
        assert phone.heads(ada) == laptop.heads(ada)
        (conflict,) = phone.conflicts(ada)
        assert conflict.path == "city"
        assert sorted(v.value for v in conflict.values) == ["London", "Paris"]
        assert [v.value for v in conflict.values if v.shown] == [merged["city"]]
        assert laptop.conflicts(ada) == phone.conflicts(ada)
        assert phone.get(grace) == {"name": "Grace"}

        phone.delete(grace)
        p.wait_synced()
        l.wait_agreed()
        with pytest.raises(accord.Deleted):
            laptop.get(grace)
        assert [i.id for i in laptop.list("contacts")] == [ada]
    phone.close()
    laptop.close()


def test_a_callback_sees_remote_changes(relay: Relay, tmp_path: Path) -> None:
    with accord.Replica(tmp_path / "a.db") as a, accord.Replica(tmp_path / "b.db") as b:
        got = []
        target = {}
        arrived = threading.Event()

        def on_change(event: accord.ChangeEvent) -> None:
            got.append(event)
            if event.heads == target.get("heads"):
                arrived.set()

        b.subscribe("notes", callback=on_change)
        sa = a.connect(relay.url, collections=["notes"])
        sb = b.connect(relay.url, collections=["notes"])
        note = a.create("notes", {"text": "buy milk"})
        sa.wait_synced()
        a.put(note, "text", "buy oat milk")
        target["heads"] = a.heads(note)
        if any(e.heads == target["heads"] for e in got):
            arrived.set()
        sa.wait_synced()
        assert arrived.wait(30), f"no event for the remote change, got {got}"
        assert all(e.remote and e.origin and e.id == note for e in got)
        assert got[0].kind == "created"
        assert b.get(note) == {"text": "buy oat milk"}
        sb.close()
        sa.close()


def test_wait_synced_honours_its_timeout_and_releases_the_gil(tmp_path: Path) -> None:
    with accord.Replica(tmp_path / "alone.db") as r:
        r.create("notes", {"text": "nobody hears"})
        sync = r.connect(free_port_url(), collections=["notes"])
        started = time.monotonic()
        with pytest.raises((accord.Timeout, accord.Unreachable)) as raised:
            sync.wait_synced(timeout=0.5)
        elapsed = time.monotonic() - started
        assert elapsed >= 0.45, f"gave up after {elapsed:.2f} s, before its timeout"
        assert elapsed < 15, f"took {elapsed:.1f} s for a 0.5 s timeout"
        assert isinstance(raised.value, accord.SyncError)
        assert sync.status().state == "connecting"
        assert sync.status().summary == "offline"

        # While the main thread waits (timeout 60 s), another thread runs
        # Python code and closes the connection: the wait ends with Closed.
        progress = []

        def other() -> None:
            while len(progress) < 1000:
                progress.append(len(progress))
            sync.close()

        t = threading.Thread(target=other)
        t.start()
        with pytest.raises(accord.Closed):
            sync.wait_synced(timeout=60)
        t.join()
        assert len(progress) == 1000
        assert sync.state == "closed"
        with pytest.raises(accord.Closed):
            sync.wait_synced(timeout=1)


@pytest.mark.parametrize("one_string", [False, True], ids=["list", "str"])
def test_an_unreachable_relay_fails_over_to_a_fallback_url(relay: Relay, tmp_path: Path, one_string: bool) -> None:
    dead = free_port_url()
    with accord.Replica(tmp_path / "phone.db") as phone, accord.Replica(tmp_path / "laptop.db") as laptop:
        ada = phone.create("contacts", {"name": "Ada"})
        grace = phone.create("contacts", {"name": "Grace"})
        fallbacks = relay.url if one_string else [relay.url]
        with phone.connect(dead, collections=["contacts"], fallback_urls=fallbacks) as p:
            assert p.status().relay_url in (dead, relay.url)
            p.wait_synced(timeout=30)
            status = p.status()
            assert status.relay_url == relay.url
            assert status.state == "connected" and status.connects == 1

        # The live relay holds them: a replica connected to it alone gets both.
        with laptop.connect(relay.url, collections=["contacts"]) as l:
            l.wait_agreed(timeout=30)
            assert l.status().relay_url == relay.url
        assert laptop.get(ada) == {"name": "Ada"}
        assert laptop.get(grace) == {"name": "Grace"}


def test_fallback_urls_are_tried_in_order(tmp_path: Path) -> None:
    with socket.socket() as a, socket.socket() as b:  # two distinct ports, then nothing listens
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        first, second = (f"ws://127.0.0.1:{s.getsockname()[1]}" for s in (a, b))
    with accord.Replica(tmp_path / "f.db") as r:
        # Without reconnecting, each URL gets one attempt: the driver stops
        # after the fallback's, and says which relay that was.
        with r.connect(first, collections=["notes"], reconnect=False, fallback_urls=[second]) as once:
            with pytest.raises(accord.Unreachable, match=re.escape(second)):
                once.wait_connected(timeout=30)
            status = once.status()
            assert status.state == "stopped" and status.relay_url == second
            assert status.last_error is not None and second in status.last_error

        # Without fallbacks, every attempt goes to the one URL.
        with r.connect(first, collections=["notes"]) as alone:
            assert alone.status().relay_url == first

        with pytest.raises(TypeError):
            r.connect(first, collections=["notes"], fallback_urls=[second, 7420])  # type: ignore[list-item]


def test_tokens(secured_relay: Relay, tmp_path: Path) -> None:
    with accord.Replica(tmp_path / "t.db") as r:
        note = r.create("notes", {"text": "secret"})
        with r.connect(secured_relay.url, collections=["notes"], token="forged") as bad:
            with pytest.raises(accord.Forbidden, match="unauthorized"):
                bad.wait_synced(timeout=30)
            assert bad.state == "stopped"
        with r.connect(secured_relay.url, collections=["notes"], token=mint(secured_relay, "notes")) as good:
            good.wait_synced(timeout=30)
            assert good.status().token_expires is not None
            good.set_token(mint(secured_relay, "notes"))
            good.wait_synced(timeout=30)

        # A read-only token pulls but cannot push: the change stays local
        # and is listed.
        r.put(note, "text", "changed on a read-only device")
        with r.connect(secured_relay.url, collections=["notes"], token=mint(secured_relay, "notes", read_only=True)) as ro:
            ro.wait_agreed(timeout=30)
            status = ro.status()
            assert status.read_only == ["notes"] and status.unpushed == [note]


def test_closing_a_replica_closes_its_connections(relay: Relay, tmp_path: Path) -> None:
    r = accord.Replica(tmp_path / "c.db")
    sync = r.connect(relay.url, collections=["notes"])
    sync.wait_connected()
    r.close()
    assert sync.state == "closed"
    with pytest.raises(accord.Closed):
        sync.wait_synced(timeout=1)
    with pytest.raises(accord.InvalidCollection):
        accord.Replica().connect(relay.url, collections=["bad name"]).wait_connected(timeout=5)
