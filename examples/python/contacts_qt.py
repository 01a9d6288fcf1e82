"""An offline address book in PySide6 on top of the ``accord`` package.

Every contact is a record of the collection ``contacts`` (fields ``name``,
``email``, ``phone``) in a local SQLite file. The window works the same
with or without a network: writes are durable when ``put`` returns, and
with ``--relay`` they sync in the background with every other device that
talks to the same ``accord-relay``.

Run two copies against one relay (from the repository root, with the
package installed, e.g. in ``bindings/python/.venv``)::

    accord-relay --open --listen 127.0.0.1:7420 --db /tmp/relay.db
    python examples/python/contacts_qt.py --db /tmp/phone.db  --relay ws://127.0.0.1:7420 --name Phone
    python examples/python/contacts_qt.py --db /tmp/laptop.db --relay ws://127.0.0.1:7420 --name Laptop

Add a contact in one window and it appears in the other; stop the relay,
edit the same field differently in both, start it again, and both windows
mark the contact with a conflict badge (Save resolves it). Without
``--relay`` the window is a local-only address book.

How accord meets Qt (the pattern to copy): ``Replica.subscribe(...,
callback=...)`` calls the callback on a thread of its own, named
``accord-events``. Widgets may only be touched from the GUI thread, so the
callback does nothing but emit a signal of a QObject that lives on the GUI
thread (:class:`EventBridge`); Qt queues the signal to that thread, where
the slot re-reads the list. The replica itself may be used from any thread.

``--screenshot PATH`` renders the window once it is in sync, saves it as
PNG and exits; ``docs/images/contacts_qt.png`` is made that way (see
``demo_data.py`` beside this file).
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from typing import Dict, List, Optional, Sequence

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QBrush, QCloseEvent, QColor
from PySide6.QtWidgets import (
    QApplication, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMainWindow, QPushButton,
    QSplitter, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
)

import accord

COLLECTION = "contacts"
FIELDS = ("name", "email", "phone")
CONFLICT_MARK = "\u26a0 "  # "⚠ " before the name of a contact with concurrent values
STATUS_INTERVAL_MS = 250

# The records view (docs/queries.md): one row per record, deleted ones too;
# `conflicts` counts the fields that hold concurrent values.
SEARCH_SQL = r"""
SELECT id,
       json_extract(json, '$.name')  AS name,
       json_extract(json, '$.email') AS email,
       json_extract(json, '$.phone') AS phone,
       conflicts
FROM records
WHERE collection = ?1 AND deleted = 0
  AND (ifnull(json_extract(json, '$.name'), '')  LIKE ?2 ESCAPE '\'
    OR ifnull(json_extract(json, '$.email'), '') LIKE ?2 ESCAPE '\'
    OR ifnull(json_extract(json, '$.phone'), '') LIKE ?2 ESCAPE '\')
ORDER BY name COLLATE NOCASE, id
"""

STATUS_COLORS = {"in sync": "#2e7d32", "syncing": "#ef6c00", "offline": "#c62828", "local only": "#555555"}


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere (its % and _ taken literally)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class EventBridge(QObject):
    """Carries accord change events from the ``accord-events`` thread to the
    GUI thread. Create it on the GUI thread; :meth:`forward` is the
    subscription's callback."""

    changed = Signal(object)  # an accord.ChangeEvent

    def forward(self, event: accord.ChangeEvent) -> None:
        # Runs on the accord-events thread: touch no widget and no window
        # state here. Emitting is thread-safe; the connected slot runs later
        # on the GUI thread (a queued connection).
        self.changed.emit(event)


class ContactsWindow(QMainWindow):
    """The address book of one replica; ``sync`` (optional) feeds its status line."""

    def __init__(self, replica: accord.Replica, sync: Optional[accord.Sync] = None,
                 name: str = "", parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.replica = replica
        self.sync = sync
        self.events_received = 0  # change events that reached the GUI thread
        self._loaded: Dict[str, str] = {}  # the form's values as last read from the replica
        self.setWindowTitle(f"Accord contacts \u2014 {name}" if name else "Accord contacts")

        # Left: search box and the list.
        self.search_box = QLineEdit(placeholderText="Search name, email or phone")
        self.search_box.setClearButtonEnabled(True)
        self.search_box.textChanged.connect(self.refresh)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Name", "Email", "Phone"])
        self.tree.setRootIsDecorated(False)
        self.tree.setAlternatingRowColors(True)
        self.tree.setColumnWidth(0, 150)
        self.tree.setColumnWidth(1, 195)
        self.tree.currentItemChanged.connect(lambda *_: self._load_selected(force=True))
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.search_box)
        left_layout.addWidget(self.tree)

        # Right: the form.
        self.edits = {f: QLineEdit() for f in FIELDS}
        self.conflict_label = QLabel(wordWrap=True)
        self.conflict_label.setStyleSheet(
            "background: #fff3e0; color: #8a3c00; border: 1px solid #ef6c00; border-radius: 4px; padding: 6px;")
        self.conflict_label.hide()
        self.new_button = QPushButton("New")
        self.add_button = QPushButton("Add")
        self.save_button = QPushButton("Save")
        self.delete_button = QPushButton("Delete")
        self.new_button.clicked.connect(self.clear_form)
        self.add_button.clicked.connect(lambda: self.add_contact(*self._form_values()))
        self.save_button.clicked.connect(self._save_clicked)
        self.delete_button.clicked.connect(self._delete_clicked)
        form = QFormLayout()
        for f in FIELDS:
            form.addRow(f.capitalize() + ":", self.edits[f])
        buttons = QHBoxLayout()
        for b in (self.new_button, self.add_button, self.save_button, self.delete_button):
            buttons.addWidget(b)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addLayout(form)
        right_layout.addWidget(self.conflict_label)
        right_layout.addLayout(buttons)
        right_layout.addStretch(1)

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([500, 320])
        self.setCentralWidget(splitter)

        # Status line: "local only", or the connection's summary, polled.
        self.status_label = QLabel()
        self.statusBar().addPermanentWidget(QLabel(f"device {replica.device} \u00b7 sync:"))
        self.statusBar().addPermanentWidget(self.status_label)
        self.status_timer = QTimer(self, interval=STATUS_INTERVAL_MS)
        self.status_timer.timeout.connect(self.update_status)
        self.status_timer.start()
        self.update_status()

        # Live updates: accord-events thread -> signal -> slot on this thread.
        self.bridge = EventBridge(self)
        self.bridge.changed.connect(self._on_change, Qt.ConnectionType.QueuedConnection)
        self.subscription: Optional[accord.Subscription] = replica.subscribe(
            COLLECTION, callback=self.bridge.forward)
        self.refresh()

    # -- what a test (or another front end) drives --------------------------------

    def contact_names(self) -> List[str]:
        """The names the list shows, top to bottom (with the conflict mark)."""
        return [self.tree.topLevelItem(i).text(0) for i in range(self.tree.topLevelItemCount())]

    def selected_id(self) -> Optional[str]:
        item = self.tree.currentItem()
        return None if item is None else item.data(0, Qt.ItemDataRole.UserRole)

    def select_contact(self, id: Optional[str]) -> None:
        """Selects a contact of the list (as a click does) and loads it into the form."""
        for i in range(self.tree.topLevelItemCount()):
            if self.tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole) == id:
                self.tree.setCurrentItem(self.tree.topLevelItem(i))
                return
        self.tree.setCurrentItem(None)  # type: ignore[arg-type]

    def add_contact(self, name: str, email: str, phone: str) -> Optional[str]:
        """What the Add button does: creates a contact and selects it."""
        if not name.strip():
            self.statusBar().showMessage("A contact needs a name.", 5000)
            return None
        try:
            id = self.replica.create(COLLECTION, {"name": name.strip(), "email": email.strip(),
                                                  "phone": phone.strip()}, message="add contact")
        except accord.AccordError as e:
            self.statusBar().showMessage(f"Not added: {e}", 10000)
            return None
        self.refresh()
        self.select_contact(id)
        return id

    def save_contact(self, id: str, name: str, email: str, phone: str) -> bool:
        """What the Save button does: writes the fields that changed, and
        those in conflict (writing a field again resolves its conflict)."""
        try:
            current = self.replica.get(id)
            conflicted = {c.path for c in self.replica.conflicts(id)}
            for field, value in zip(FIELDS, (name.strip(), email.strip(), phone.strip())):
                if value != _text(current.get(field)) or field in conflicted:
                    self.replica.put(id, field, value, message=f"edit {field}")
        except accord.AccordError as e:
            self.statusBar().showMessage(f"Not saved: {e}", 10000)
            return False
        self.refresh()
        self._load_selected(force=True)
        return True

    def delete_contact(self, id: str) -> bool:
        """What the Delete button does (the tombstone syncs to every device)."""
        try:
            self.replica.delete(id)
        except accord.AccordError as e:
            self.statusBar().showMessage(f"Not deleted: {e}", 10000)
            return False
        self.refresh()
        return True

    def set_sync(self, sync: Optional[accord.Sync]) -> None:
        """Shows the status of another connection (after a reconnect)."""
        self.sync = sync
        self.update_status()

    def clear_form(self) -> None:
        self.tree.setCurrentItem(None)  # type: ignore[arg-type]
        self._fill_form({}, [])

    @Slot()
    def refresh(self) -> None:
        """Re-reads the list from the replica, keeping the selection."""
        selected = self.selected_id()
        rows = self.replica.query(SEARCH_SQL, [COLLECTION, like_pattern(self.search_box.text())])
        self.tree.blockSignals(True)  # no form reloads while the list is rebuilt
        try:
            self.tree.clear()
            for row in rows:
                mark = CONFLICT_MARK if row["conflicts"] else ""
                item = QTreeWidgetItem([mark + _text(row["name"]), _text(row["email"]), _text(row["phone"])])
                item.setData(0, Qt.ItemDataRole.UserRole, row["id"])
                if row["conflicts"]:
                    item.setForeground(0, QBrush(QColor("#c25100")))
                    item.setToolTip(0, "Fields with concurrent values: select to see them")
                self.tree.addTopLevelItem(item)
                if row["id"] == selected:
                    self.tree.setCurrentItem(item)
        finally:
            self.tree.blockSignals(False)
        self._load_selected(force=False)

    @Slot()
    def update_status(self) -> None:
        if self.sync is None:
            summary = "local only"
        else:
            try:
                status = self.sync.status()
                summary = status.summary
                self.status_label.setToolTip(
                    f"state {status.state}, {status.pending} pending, {status.connects} connects"
                    + (f"\nlast error: {status.last_error}" if status.last_error else ""))
            except accord.AccordError:
                summary = "offline"
        self.status_label.setText(summary)
        self.status_label.setStyleSheet(f"color: {STATUS_COLORS.get(summary, '#555555')}; font-weight: bold;")

    def shutdown(self) -> None:
        """Unsubscribes and stops the timer (closing the window does it)."""
        self.status_timer.stop()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    # -- internals ------------------------------------------------------------------

    @Slot(object)
    def _on_change(self, event: accord.ChangeEvent) -> None:
        """On the GUI thread, for each change event, local or remote."""
        self.events_received += 1
        self.refresh()

    def _form_values(self) -> List[str]:
        return [self.edits[f].text() for f in FIELDS]

    def _save_clicked(self) -> None:
        id = self.selected_id()
        if id is None:
            self.statusBar().showMessage("Select a contact to save, or Add a new one.", 5000)
        else:
            self.save_contact(id, *self._form_values())

    def _delete_clicked(self) -> None:
        id = self.selected_id()
        if id is not None and self.delete_contact(id):
            self.clear_form()

    def _load_selected(self, force: bool) -> None:
        """Shows the selected contact in the form; unless ``force``, keeps what
        the user is typing (the form differs from what was loaded)."""
        id = self.selected_id()
        if not force and self._form_values() != [self._loaded.get(f, "") for f in FIELDS]:
            conflicts = self._conflicts(id) if id else []
            self._show_conflicts(conflicts)
            return
        if id is None:
            self._fill_form({}, [])
            return
        try:
            self._fill_form(self.replica.get(id), self._conflicts(id))
        except accord.NotFound:  # deleted meanwhile (Deleted is a NotFound)
            self._fill_form({}, [])

    def _conflicts(self, id: str) -> List[accord.Conflict]:
        try:
            return self.replica.conflicts(id)
        except accord.NotFound:
            return []

    def _fill_form(self, value: Dict[str, object], conflicts: List[accord.Conflict]) -> None:
        self._loaded = {f: _text(value.get(f)) for f in FIELDS}
        for f in FIELDS:
            self.edits[f].setText(self._loaded[f])
        self._show_conflicts(conflicts)

    def _show_conflicts(self, conflicts: List[accord.Conflict]) -> None:
        if not conflicts:
            self.conflict_label.hide()
            self.conflict_label.clear()
            return
        lines = [f"<b>{CONFLICT_MARK}Conflict</b>: edited on two devices while apart."]
        for c in conflicts:
            values = " / ".join(f"\u201c{html.escape(_text(v.value))}\u201d" + (" (shown)" if v.shown else "")
                                for v in c.values)
            lines.append(f"<b>{html.escape(c.path)}</b>: {values}")
        lines.append("Save keeps what the form shows.")
        self.conflict_label.setText("<br>".join(lines))
        self.conflict_label.show()


def _text(value: object) -> str:
    return "" if value is None else str(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="An offline address book that syncs through accord-relay.")
    parser.add_argument("--db", required=True, help="the replica's SQLite file (created if missing)")
    parser.add_argument("--relay", help="ws://host:port of an accord-relay; local only without it")
    parser.add_argument("--token", default="", help="the relay's access token (none for an --open relay)")
    parser.add_argument("--name", default="", help="a name for this device, in the title")
    parser.add_argument("--screenshot", metavar="PATH", help="save the window as PNG once in sync, then exit")
    parser.add_argument("--select", metavar="TEXT", help="select the first contact whose name contains TEXT")
    args = parser.parse_args(argv)

    app = QApplication.instance() or QApplication([sys.argv[0]])
    replica = accord.Replica(args.db)
    sync = replica.connect(args.relay, collections=[COLLECTION], token=args.token) if args.relay else None
    window = ContactsWindow(replica, sync, name=args.name)
    window.resize(900, 330)
    window.show()

    def select() -> None:
        for i, name in enumerate(window.contact_names()):
            if args.select and args.select.lower() in name.lower():
                window.tree.setCurrentItem(window.tree.topLevelItem(i))
                return

    if args.select:
        select()
    if args.screenshot:
        if sync is not None:
            try:
                sync.wait_agreed(timeout=15)  # before the event loop: nothing to freeze yet
            except accord.AccordError as e:
                print(f"not in sync ({e}); saving the screenshot anyway", file=sys.stderr)
        deadline = time.monotonic() + 10

        def shoot() -> None:
            window.update_status()
            if window.status_label.text() == "syncing" and time.monotonic() < deadline:
                QTimer.singleShot(100, shoot)
                return
            select()
            window.grab().save(args.screenshot)
            app.quit()

        QTimer.singleShot(300, shoot)  # let queued change events reach the list first
    try:
        return app.exec()
    finally:
        window.shutdown()  # unsubscribe before the replica closes
        replica.close()  # closes its connection too


if __name__ == "__main__":
    sys.exit(main())
