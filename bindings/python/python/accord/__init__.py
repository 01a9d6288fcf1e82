"""Accord for Python: offline-first records that sync.

Open a :class:`Replica` on a SQLite file and create, read, change and
delete records while offline; every write is durable when the call
returns. :meth:`Replica.connect` syncs collections with an
``accord-relay`` in the background, and concurrent edits from other
devices merge automatically (every record is an Automerge document).

>>> import accord
>>> with accord.Replica() as r:              # in memory; pass a path for a file
...     ada = r.create("contacts", {"name": "Ada"})
...     r.put(ada, "email", "ada@example.org", message="add email")
...     r.get(ada)
{'email': 'ada@example.org', 'name': 'Ada'}

Records hold JSON: ``dict`` (string keys), ``list``/``tuple``, ``str``,
``int``, ``float``, ``bool`` and ``None``. Errors are subclasses of
:class:`AccordError` (see ``accord._errors``). The native calls release
the GIL while they touch the disk or wait on the network, so other
Python threads run meanwhile; see ``docs/python.md`` for threads and Qt.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import _accord, _errors
from ._errors import (
    AccordError,
    Closed,
    Deleted,
    Forbidden,
    InvalidCollection,
    InvalidId,
    InvalidPath,
    InvalidValue,
    NotFound,
    QueryError,
    StorageError,
    SyncError,
    Timeout,
    Unreachable,
    UnknownChange,
)

__all__ = [
    "Replica",
    "Record",
    "RecordInfo",
    "Change",
    "Conflict",
    "ConflictValue",
    "Index",
    "ChangeEvent",
    "Subscription",
    "Sync",
    "SyncStatus",
    *_errors.__all__,
]

Heads = Union[str, Sequence[str]]
"""Change hashes: a list of hex hashes (full or an unambiguous prefix), or
one string of them separated by commas."""

_MISSING: Any = object()


def _heads(at: Optional[Heads]) -> Optional[List[str]]:
    if at is None:
        return None
    if isinstance(at, str):
        return [h for h in (p.strip() for p in at.split(",")) if h]
    return [str(h) for h in at]


def _from_seconds(seconds: Optional[float]) -> Optional[datetime]:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def _from_millis(ms: Optional[int]) -> Optional[datetime]:
    return None if ms is None else _from_seconds(ms / 1000)


@dataclass(frozen=True)
class Record:
    """A record's content as of some heads."""

    id: str
    """The record's id."""
    collection: str
    """Its collection."""
    heads: List[str]
    """The change hashes this content is at."""
    value: Dict[str, Any]
    """The content."""


@dataclass(frozen=True)
class RecordInfo:
    """A record's metadata, as :meth:`Replica.list` returns it."""

    id: str
    collection: str
    deleted: bool
    deleted_at: Optional[datetime]
    """When it was deleted (by this replica's clock, UTC), if it was."""
    heads: List[str]
    change_count: int
    size_bytes: int
    """The bytes its stored changes take."""
    created: datetime
    """When this replica first saw it (UTC)."""
    updated: datetime
    """When this replica last wrote it (UTC)."""


@dataclass(frozen=True)
class Change:
    """One change in a record's history."""

    hash: str
    actor: str
    device: str
    """The device that made it: the first 16 hex digits of its actor, the
    same for every process of one database file."""
    seq: int
    time: Optional[datetime]
    """When it was made (the writer's clock, UTC), if recorded."""
    message: Optional[str]
    deps: List[str]
    ops: int


@dataclass(frozen=True)
class ConflictValue:
    """One of a conflicted field's values."""

    value: Any
    change: Optional[str]
    """The change that wrote it."""
    actor: str
    shown: bool
    """Whether this is the value reads show."""


@dataclass(frozen=True)
class Conflict:
    """A field that holds concurrent values (two devices set it while apart).
    Reads show one of them, the same on every device; the others are kept
    until the field is written again."""

    path: str
    values: List[ConflictValue]


@dataclass(frozen=True)
class Index:
    """An index on a JSON path of a collection's records."""

    name: str
    collection: str
    path: str


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change, local or from another device.

    ``kind`` is ``"created"``, ``"changed"``, ``"deleted"``, or ``"missed"``:
    the subscriber fell behind and ``missed`` events were dropped (reload
    what you show; ``id`` is ``None`` then).
    """

    id: Optional[str]
    collection: Optional[str]
    kind: str
    origin: Optional[str]
    """The peer it came from (the relay's id), or ``None`` if made here."""
    heads: List[str]
    missed: int = 0

    @property
    def remote(self) -> bool:
        """Whether the change came from another device."""
        return self.origin is not None


@dataclass(frozen=True)
class SyncStatus:
    """A snapshot of a connection's state."""

    state: str
    """``"connecting"``, ``"connected"``, ``"stopped"`` (refused in a way
    retrying cannot fix, or not reconnecting) or ``"closed"``."""
    relay_url: str
    """The relay of the open connection, or of the attempt under way or
    last made: the ``url`` given to :meth:`Replica.connect` or one of its
    ``fallback_urls``."""
    synced: bool
    """The relay held every local change as of the last wait_synced/agreed."""
    agreed: bool
    """And this replica held everything the relay held, as of that check."""
    pending: int
    """Records waiting for, or in the middle of, an exchange."""
    connects: int
    last_error: Optional[str]
    refused: Optional[str]
    token_expires: Optional[datetime]
    skipped: Dict[str, str]
    """Collections the relay refused on this connection, with its reason."""
    read_only: List[str]
    """Collections this connection may only read."""
    unpushed: List[str]
    """Records of read-only collections with changes the relay does not hold."""
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int

    @property
    def summary(self) -> str:
        """``"offline"``, ``"syncing"`` or ``"in sync"``, for a status line.

        "in sync" means connected with no exchange in progress; to know that
        the relay holds a change, call :meth:`Sync.wait_synced`."""
        if self.state != "connected":
            return "offline"
        return "syncing" if self.pending else "in sync"


class Subscription:
    """Change events from :meth:`Replica.subscribe`.

    Iterate over it (each step blocks until an event comes, with the GIL
    released), call :meth:`next` with a timeout, or give ``subscribe`` a
    ``callback``. Close it (or use ``with``) to unsubscribe.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    def next(self, timeout: Optional[float] = None) -> Optional[ChangeEvent]:
        """The next event, waiting at most ``timeout`` seconds (for ever if
        ``None``); ``None`` if none came. Raises :class:`Closed` once the
        subscription or its replica is closed."""
        d = self._native.next(timeout)
        return None if d is None else ChangeEvent(**d)

    def __iter__(self) -> Iterator[ChangeEvent]:
        return self

    def __next__(self) -> ChangeEvent:
        try:
            event = self.next()
        except Closed:
            raise StopIteration from None
        assert event is not None
        return event

    def close(self) -> None:
        """Unsubscribes. A callback in progress finishes first (unless it is
        the caller)."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.is_closed()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sync:
    """A replica's connection to a relay, from :meth:`Replica.connect`.

    The engine's driver runs on a background runtime (threads named
    ``accord-sync``): it connects, reconnects with backoff, and syncs every
    change of the collections both ways until :meth:`close`. With
    ``fallback_urls``, each attempt after one that failed (or a connection
    that ended) goes to the next relay URL; ``status().relay_url`` names the
    current one. The waits release the GIL; waits and :meth:`set_token` on
    one ``Sync`` take turns.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    def status(self) -> SyncStatus:
        """The driver's state now."""
        d = self._native.status()
        return SyncStatus(token_expires=_from_seconds(d.pop("token_expires")), **d)

    @property
    def state(self) -> str:
        """``"connecting"``, ``"connected"``, ``"stopped"`` or ``"closed"``."""
        return self.status().state

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Waits until the relay welcomed this replica; raises
        :class:`Timeout`, or the reason it cannot (:class:`Forbidden`, ...)."""
        self._native.wait_connected(float(timeout))

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Waits until the relay holds every local change (and delete) made
        before the call; changes made meanwhile never delay it. Raises
        :class:`Timeout` after ``timeout`` seconds, :class:`Forbidden` if the
        token does not allow it, :class:`Unreachable` if the relay cannot
        be reached."""
        self._native.wait_synced(float(timeout))

    def wait_agreed(self, timeout: float = 10.0) -> None:
        """Waits until, in addition, this replica holds everything the relay
        holds in the synced collections."""
        self._native.wait_agreed(float(timeout))

    def set_token(self, token: str) -> None:
        """Replaces the token, on the open connection and every later one
        (call it before ``status().token_expires``)."""
        self._native.set_token(token)

    def close(self) -> None:
        """Stops syncing (sync progress is saved first); waits in progress
        raise :class:`Closed`."""
        self._native.close()

    def __enter__(self) -> "Sync":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Replica:
    """A local-first database of records on one SQLite file.

    ``Replica(path)`` opens the file, creating it if missing; with no path
    the replica lives in memory. Use it as a context manager, or call
    :meth:`close`. One ``Replica`` may be used from several threads.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]", None] = None) -> None:
        self._native = _accord.Replica(None if path is None else os.fspath(path))

    @classmethod
    def open(cls, path: Union[str, "os.PathLike[str]"]) -> "Replica":
        """Opens (creating if missing) the replica at ``path``."""
        return cls(path)

    @classmethod
    def in_memory(cls) -> "Replica":
        """A replica that keeps nothing on disk (tests, scratch work)."""
        return cls(None)

    # -- lifecycle -------------------------------------------------------

    @property
    def path(self) -> Optional[str]:
        """The database file, or ``None`` in memory."""
        p = self._native.path()
        return None if p is None else str(p)

    @property
    def peer_id(self) -> str:
        """This replica's id towards relays."""
        return self._native.peer_id()

    @property
    def device(self) -> str:
        """This database file's device id (16 hex digits), shown in logs."""
        return self._native.device()

    @property
    def closed(self) -> bool:
        return self._native.is_closed()

    def close(self) -> None:
        """Stops its connections, then closes the file. Later calls raise
        :class:`Closed`. Closing twice is harmless."""
        self._native.close()

    def __enter__(self) -> "Replica":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records ---------------------------------------------------------

    def create(self, collection: str, data: Dict[str, Any], message: Optional[str] = None) -> str:
        """Creates a record in ``collection`` with ``data`` (a dict) as its
        content; returns its id. Durable when it returns."""
        return self._native.create(collection, data, message)

    def get(
        self,
        id: str,
        path: Optional[str] = None,
        *,
        at: Optional[Heads] = None,
        default: Any = _MISSING,
    ) -> Any:
        """A record's content (a dict), or the value at a dot ``path`` in it
        (``"address.city"``, ``"tags.0"``); as of the change hashes ``at``
        if given (see :meth:`log`). With ``default``, a path that leads
        nowhere gives ``default`` instead of :class:`InvalidPath` (a
        malformed one, such as ``"a..b"``, still raises).

        Raises :class:`NotFound` (or :class:`Deleted`), :class:`InvalidId`,
        :class:`InvalidPath`, :class:`UnknownChange`.
        """
        d = self._native.get(id, _heads(at), path, default is not _MISSING)
        return d.get("value", default)

    def record(self, id: str, *, at: Optional[Heads] = None) -> Record:
        """The record with its id, collection and heads."""
        return Record(**self._native.get(id, _heads(at), None))

    def put(self, id: str, path: str, value: Any, message: Optional[str] = None) -> None:
        """Sets the value at a dot ``path`` (missing objects on the way are
        not created; a list index equal to the length appends). Durable
        when it returns."""
        self._native.put(id, path, value, message)

    def delete(self, id: str) -> None:
        """Deletes a record: a tombstone that replicates to every device."""
        self._native.delete(id)

    def list(self, collection: Optional[str] = None, include_deleted: bool = False) -> List[RecordInfo]:
        """The records of ``collection`` (every collection if ``None``)."""
        out = []
        for d in self._native.list(collection, include_deleted):
            out.append(
                RecordInfo(
                    id=d["id"],
                    collection=d["collection"],
                    deleted=d["deleted"],
                    deleted_at=_from_millis(d["deleted_at"]),
                    heads=d["heads"],
                    change_count=d["change_count"],
                    size_bytes=d["size_bytes"],
                    created=_from_millis(d["created_at"]),  # type: ignore[arg-type]
                    updated=_from_millis(d["updated_at"]),  # type: ignore[arg-type]
                )
            )
        return out

    def collections(self) -> Dict[str, int]:
        """Every collection and how many live records it holds."""
        return dict(self._native.collections())

    # -- history ---------------------------------------------------------

    def heads(self, id: str) -> List[str]:
        """The record's current change hashes."""
        return self._native.heads(id)

    def log(self, id: str) -> List[Change]:
        """Every change of a record, oldest first (each after its deps)."""
        return [
            Change(
                hash=d["hash"],
                actor=d["actor"],
                device=d["device"],
                seq=d["seq"],
                time=_from_seconds(d["time"] or None),  # 0: not recorded
                message=d["message"],
                deps=d["deps"],
                ops=d["ops"],
            )
            for d in self._native.log(id)
        ]

    def diff(self, id: str, before: Optional[Heads] = None, after: Optional[Heads] = None) -> List[Dict[str, Any]]:
        """What changed between two points of a record's history (``before``:
        the empty record if ``None``; ``after``: now if ``None``), as
        patches: dicts with ``action`` (put, insert, splice, increment,
        conflict, delete, mark), ``path`` and ``description``, the same as
        ``accord diff --json``."""
        return self._native.diff(id, _heads(before) or [], _heads(after))

    def conflicts(self, id: str, *, at: Optional[Heads] = None) -> List[Conflict]:
        """Fields holding concurrent values (two devices set them while
        apart), with every value."""
        return [
            Conflict(path=c["path"], values=[ConflictValue(**v) for v in c["values"]])
            for c in self._native.conflicts(id, _heads(at))
        ]

    # -- queries ---------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[Dict[str, Any]]:
        """Runs one read-only SQL statement over the ``records`` view
        (``id``, ``collection``, ``deleted``, ``created_at``, ``updated_at``,
        ``json``; see docs/queries.md) with positional ``?`` parameters;
        every row as a dict keyed by column. SQL that would write is
        refused with :class:`QueryError`."""
        return self._native.query(sql, list(params))

    def create_index(self, collection: str, path: str) -> Index:
        """Indexes a JSON path (``"$.name"``) of a collection's records, for
        queries that filter or sort on it. Creating it again is harmless."""
        return Index(*self._native.create_index(collection, path))

    def drop_index(self, collection: str, path: str) -> bool:
        """Drops an index; whether it existed."""
        return self._native.drop_index(collection, path)

    def indexes(self) -> List[Index]:
        """Every index."""
        return [Index(*i) for i in self._native.indexes()]

    # -- changes ---------------------------------------------------------

    def subscribe(
        self,
        collection: Optional[str] = None,
        *,
        id: Optional[str] = None,
        callback: Optional[Callable[[ChangeEvent], Any]] = None,
    ) -> Subscription:
        """Change events from now on: of one collection, one record (``id``)
        or everything, local and remote.

        Without ``callback``, iterate over the returned subscription. With
        it, ``callback(event)`` is called for each event on the
        subscription's own thread, named ``accord-events`` (not the thread
        that subscribed; in a Qt app, emit a signal from it to reach the
        GUI thread, see docs/python.md). A callback's exception is reported
        through ``sys.unraisablehook`` and events keep coming.
        """
        sub = Subscription(self._native.subscribe(collection, id))
        if callback is not None:

            def deliver(d: Dict[str, Any]) -> None:
                thread = threading.current_thread()
                if thread.name != "accord-events":  # Python's name for the native thread
                    thread.name = "accord-events"
                callback(ChangeEvent(**d))

            sub._native.start(deliver)
        return sub

    # -- sync ------------------------------------------------------------

    def connect(
        self,
        url: str,
        *,
        collections: Union[str, Sequence[str]],
        token: str = "",
        reconnect: bool = True,
        fallback_urls: Union[str, Sequence[str], None] = None,
    ) -> Sync:
        """Starts syncing ``collections`` with the relay at ``url``
        (``ws://host:port``) in the background and returns at once; see
        :class:`Sync`. ``token`` is the relay's access token (empty for an
        open relay). Closing the replica closes its connections.

        ``fallback_urls`` are more nodes of the same relay cluster (one URL
        or a sequence of them): when an attempt fails or a connection ends,
        the next attempt goes to the next URL, after the last back to
        ``url``, with the usual backoff in between. The nodes of a cluster
        share the relay's id, so the next one resumes where the last left
        off; :attr:`SyncStatus.relay_url` names the relay in use. With
        ``reconnect=False`` each URL gets one attempt, in order."""
        if isinstance(collections, str):
            collections = [collections]
        if fallback_urls is None:
            fallback_urls = []
        elif isinstance(fallback_urls, str):
            fallback_urls = [fallback_urls]
        return Sync(self._native.connect(url, token, list(collections), reconnect, list(fallback_urls)))
