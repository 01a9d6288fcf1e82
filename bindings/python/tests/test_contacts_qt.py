"""The PySide6 example (examples/python/contacts_qt.py), driven in-process
and headless: two windows on two replicas that sync through the real relay.

Changes made on one device must reach the other window through the path the
example documents (subscription callback on ``accord-events`` -> Qt signal
-> slot on the GUI thread): the tests never call ``refresh()`` on the window
that should update, they only spin the Qt event loop until it shows the
change.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtWidgets import QApplication

import accord
from conftest import ROOT, Relay

sys.path.insert(0, str(ROOT / "examples" / "python"))
from contacts_qt import CONFLICT_MARK, ContactsWindow  # noqa: E402

DEADLINE = 30.0


@pytest.fixture(scope="session")
def app() -> QApplication:
    return QApplication.instance() or QApplication([])  # type: ignore[return-value]


def spin_until(app: QApplication, condition: Callable[[], bool], what: Callable[[], str],
               timeout: float = DEADLINE) -> None:
    """Runs the Qt event loop until ``condition()`` holds; fails after
    ``timeout`` seconds with ``what()`` (the state seen last)."""
    deadline = time.monotonic() + timeout
    while True:
        app.processEvents()
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what()}")
        time.sleep(0.01)


def free_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}"


class Device:
    """A replica, its connection and its window."""

    def __init__(self, path: Path, url: str, name: str) -> None:
        self.url = url
        self.replica = accord.Replica(path)
        self.sync = self.replica.connect(url, collections=["contacts"])
        self.window = ContactsWindow(self.replica, self.sync, name=name)
        self.window.resize(820, 420)
        self.window.show()

    def disconnect(self) -> None:
        self.sync.close()

    def reconnect(self) -> None:
        self.sync = self.replica.connect(self.url, collections=["contacts"])
        self.window.set_sync(self.sync)

    def close(self) -> None:
        self.window.close()  # unsubscribes
        self.window.deleteLater()
        self.sync.close()
        self.replica.close()


@pytest.fixture
def devices(app: QApplication, relay: Relay, tmp_path: Path) -> Iterator[Tuple[Device, Device]]:
    a = Device(tmp_path / "phone.db", relay.url, "Phone")
    b = Device(tmp_path / "laptop.db", relay.url, "Laptop")
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        app.processEvents()


def names(window: ContactsWindow) -> Callable[[], str]:
    return lambda: f"the list shows {window.contact_names()}"


def test_a_contact_added_on_one_device_appears_on_the_other(
    app: QApplication, devices: Tuple[Device, Device], tmp_path: Path
) -> None:
    a, b = devices
    for d in (a, b):
        spin_until(app, lambda d=d: d.window.status_label.text() == "in sync",
                   lambda d=d: f"{d.window.windowTitle()} status reads {d.window.status_label.text()!r}")
    assert b.window.contact_names() == []
    events_before = b.window.events_received

    ada = a.window.add_contact("Ada Lovelace", "ada@example.org", "+44 20 7946 0000")
    assert ada is not None
    assert a.window.contact_names() == ["Ada Lovelace"]
    assert a.window.selected_id() == ada
    a.sync.wait_synced()
    spin_until(app, lambda: b.window.contact_names() == ["Ada Lovelace"], names(b.window))
    assert b.window.events_received > events_before, "the list changed without a change event"
    row = b.window.tree.topLevelItem(0)
    assert [row.text(1), row.text(2)] == ["ada@example.org", "+44 20 7946 0000"]

    shot = tmp_path / "laptop.png"
    assert b.window.grab().save(str(shot)), "QWidget.grab().save() failed"
    assert shot.is_file() and shot.stat().st_size > 5000, f"screenshot is {shot.stat().st_size} bytes"


def test_an_edit_in_b_appears_in_a(app: QApplication, devices: Tuple[Device, Device]) -> None:
    a, b = devices
    ada = a.window.add_contact("Ada Lovelace", "ada@example.org", "")
    assert ada is not None and a.window.selected_id() == ada  # A shows her in its form
    a.sync.wait_synced()
    spin_until(app, lambda: b.window.contact_names() == ["Ada Lovelace"], names(b.window))

    b.window.select_contact(ada)
    assert b.window.edits["email"].text() == "ada@example.org"
    b.window.edits["name"].setText("Ada King")
    b.window.edits["phone"].setText("+44 1")
    b.window.save_button.click()
    assert b.replica.get(ada) == {"name": "Ada King", "email": "ada@example.org", "phone": "+44 1"}
    b.sync.wait_synced()

    spin_until(app, lambda: a.window.contact_names() == ["Ada King"], names(a.window))
    # A's form was not being edited, so it follows the remote change.
    spin_until(app, lambda: a.window.edits["phone"].text() == "+44 1",
               lambda: f"A's form shows phone {a.window.edits['phone'].text()!r}")
    assert a.window.edits["name"].text() == "Ada King"

    # Deleting in A removes her from B.
    a.window.delete_button.click()
    assert a.window.contact_names() == []
    a.sync.wait_synced()
    spin_until(app, lambda: b.window.contact_names() == [], names(b.window))


def test_concurrent_edits_show_a_conflict_badge(app: QApplication, devices: Tuple[Device, Device]) -> None:
    a, b = devices
    ada = a.window.add_contact("Ada Lovelace", "ada@example.org", "+44 0")
    assert ada is not None
    a.sync.wait_synced()
    spin_until(app, lambda: b.window.contact_names() == ["Ada Lovelace"], names(b.window))

    a.disconnect()
    b.disconnect()
    spin_until(app, lambda: a.window.status_label.text() == "offline",
               lambda: f"A's status reads {a.window.status_label.text()!r} after close")
    a.window.select_contact(ada)
    a.window.edits["phone"].setText("+44 111")
    a.window.save_button.click()
    b.window.select_contact(ada)
    b.window.edits["phone"].setText("+33 222")
    b.window.edits["email"].setText("ada@lovelace.org")  # a different field: merges cleanly
    b.window.save_button.click()
    assert a.window.contact_names() == ["Ada Lovelace"], "a conflict before syncing"

    a.reconnect()
    b.reconnect()
    a.sync.wait_synced()
    b.sync.wait_synced()
    a.sync.wait_agreed()
    b.sync.wait_agreed()

    conflicts = a.replica.conflicts(ada)
    assert [c.path for c in conflicts] == ["phone"], conflicts
    assert sorted(v.value for v in conflicts[0].values) == ["+33 222", "+44 111"]
    shown = a.replica.get(ada, "phone")
    for d in (a, b):
        spin_until(app, lambda d=d: d.window.contact_names() == [CONFLICT_MARK + "Ada Lovelace"], names(d.window))
        label = d.window.conflict_label
        assert label.isVisibleTo(d.window), "no conflict label in the form"
        text = label.text()
        assert "phone" in text and "+44 111" in text and "+33 222" in text, text
        spin_until(app, lambda d=d: d.window.edits["email"].text() == "ada@lovelace.org",
                   lambda d=d: f"form shows email {d.window.edits['email'].text()!r}")
        assert d.window.edits["phone"].text() == shown

    # Saving in A writes the field again, which resolves the conflict everywhere.
    a.window.save_button.click()
    assert a.replica.conflicts(ada) == []
    assert a.window.contact_names() == ["Ada Lovelace"]
    assert not a.window.conflict_label.isVisibleTo(a.window)
    a.sync.wait_synced()
    spin_until(app, lambda: b.window.contact_names() == ["Ada Lovelace"], names(b.window))
    assert not b.window.conflict_label.isVisibleTo(b.window)


def test_search_box_filters_the_list(app: QApplication, tmp_path: Path) -> None:
    with accord.Replica(tmp_path / "alone.db") as replica:
        window = ContactsWindow(replica)
        try:
            assert window.status_label.text() == "local only"
            for name, email, phone in [("Grace Hopper", "grace@navy.mil", "+1 555 0100"),
                                       ("Ada Lovelace", "ada@example.org", "+44 20 7946 0000"),
                                       ("Alan Turing", "alan@example.org", "+44 161 496 0000"),
                                       ("Under_score", "us@example.org", "")]:
                assert window.add_contact(name, email, phone) is not None
            everyone = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Under_score"]
            assert window.contact_names() == everyone
            assert window.add_contact("   ", "nobody@example.org", "") is None
            assert window.contact_names() == everyone

            cases: List[Tuple[str, List[str]]] = [
                ("ada", ["Ada Lovelace"]),            # name, any case
                ("EXAMPLE.org", ["Ada Lovelace", "Alan Turing", "Under_score"]),  # email
                ("+44", ["Ada Lovelace", "Alan Turing"]),  # phone
                ("_", ["Under_score"]),               # LIKE wildcards are literal
                ("%", []),
                ("nobody", []),
                ("", everyone),
            ]
            for text, expected in cases:
                window.search_box.setText(text)
                assert window.contact_names() == expected, f"search {text!r}"
        finally:
            window.close()


def test_status_reads_offline_when_the_relay_is_unreachable(app: QApplication, tmp_path: Path) -> None:
    with accord.Replica(tmp_path / "alone.db") as replica:
        sync = replica.connect(free_port_url(), collections=["contacts"])
        window = ContactsWindow(replica, sync)
        try:
            window.show()
            ticks = []
            window.status_timer.timeout.connect(lambda: ticks.append(window.status_label.text()))
            spin_until(app, lambda: len(ticks) >= 4, lambda: f"status timer ticked {len(ticks)} times")
            assert set(ticks) == {"offline"}, ticks
            assert window.add_contact("Ada", "", "") is not None  # works offline
            assert window.contact_names() == ["Ada"]
        finally:
            window.close()
            sync.close()
