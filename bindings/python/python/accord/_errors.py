"""The exceptions the ``accord`` package raises.

Every one derives from :class:`AccordError`, and also from the built-in
exception a Python programmer would reach for (``ValueError`` for bad
input, ``LookupError`` for a missing record, ``TimeoutError``, ...), so
``except ValueError`` keeps working. The message is the engine's own and
names what was wrong. An operation that raises has changed nothing.
"""


class AccordError(Exception):
    """Base class of every error the accord package raises."""


class NotFound(AccordError, LookupError):
    """No record has this id (in this replica)."""


class Deleted(NotFound):
    """The record was deleted; its tombstone is kept and replicated."""


class InvalidId(AccordError, ValueError):
    """A string is not a record id (bs58check, or an ``automerge:`` URL)."""


class InvalidPath(AccordError, ValueError):
    """A dot path is malformed, or leads nowhere in the record."""


class InvalidValue(AccordError, TypeError):
    """A value is not JSON: records hold dict, list, tuple, str, int, float,
    bool and None (a ``set``, ``bytes``, a ``datetime``, NaN are refused)."""


class InvalidCollection(AccordError, ValueError):
    """A collection name is not allowed."""


class UnknownChange(AccordError, ValueError):
    """A change hash is not in the record's history, or a short one is
    ambiguous."""


class QueryError(AccordError, ValueError):
    """A query was refused (it would write, several statements, bad SQL,
    wrong parameter count) or failed; nothing was changed."""


class StorageError(AccordError, OSError):
    """The SQLite file could not be read or written."""


class Closed(AccordError):
    """The replica, subscription or connection was closed."""


class SyncError(AccordError):
    """Syncing with the relay failed."""


class Unreachable(SyncError, ConnectionError):
    """The relay could not be reached, or the connection broke."""


class Forbidden(SyncError, PermissionError):
    """The relay refused the token, or a right it does not grant."""


class Timeout(SyncError, TimeoutError):
    """A wait ran out of time (the relay may still be working on it)."""


__all__ = [
    "AccordError",
    "NotFound",
    "Deleted",
    "InvalidId",
    "InvalidPath",
    "InvalidValue",
    "InvalidCollection",
    "UnknownChange",
    "QueryError",
    "StorageError",
    "Closed",
    "SyncError",
    "Unreachable",
    "Forbidden",
    "Timeout",
]
