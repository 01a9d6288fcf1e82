"""Records: create, read, change, delete, list; and bad input raising the
documented exception while losing nothing."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

import accord


def test_create_get_put_delete_list(tmp_path: Path) -> None:
    with accord.Replica(tmp_path / "contacts.db") as r:
        assert r.path == str(tmp_path / "contacts.db")
        ada = r.create("contacts", {"name": "Ada", "tags": ["math"], "age": 36, "score": 1.5, "vip": True, "note": None})
        assert r.get(ada) == {"name": "Ada", "tags": ["math"], "age": 36, "score": 1.5, "vip": True, "note": None}
        assert r.get(ada, "name") == "Ada"
        assert r.get(ada, "tags.0") == "math"
        assert r.get(ada, "email", default=None) is None
        assert r.get(ada, "tags.5", default="none") == "none"
        with pytest.raises(accord.InvalidPath, match="may not be empty"):
            r.get(ada, "address..city", default=None)  # malformed, not missing

        r.put(ada, "email", "ada@example.org", message="add email")
        r.put(ada, "tags.1", "poetry")  # index == length appends
        r.put(ada, "address", {"city": "London", "lines": ("12 St James's Square",)})
        assert r.get(ada, "address.city") == "London"
        assert r.get(ada)["tags"] == ["math", "poetry"]
        assert r.get(ada, "address.lines") == ["12 St James's Square"]

        rec = r.record(ada)
        assert (rec.id, rec.collection) == (ada, "contacts")
        assert rec.heads == r.heads(ada) and len(rec.heads) == 1

        grace = r.create("contacts", {"name": "Grace"})
        r.create("notes", {"text": "hello"})
        assert {i.id for i in r.list("contacts")} == {ada, grace}
        assert r.collections() == {"contacts": 2, "notes": 1}
        info = next(i for i in r.list("contacts") if i.id == ada)
        assert info.collection == "contacts" and not info.deleted and info.deleted_at is None
        assert info.change_count == 4
        assert isinstance(info.created, datetime) and info.created.tzinfo == timezone.utc
        assert info.updated >= info.created

        r.delete(grace)
        assert [i.id for i in r.list("contacts")] == [ada]
        deleted = next(i for i in r.list("contacts", include_deleted=True) if i.id == grace)
        assert deleted.deleted and deleted.deleted_at is not None
        with pytest.raises(accord.Deleted):
            r.get(grace)
        # a Deleted is a NotFound is a LookupError
        with pytest.raises(LookupError):
            r.get(grace)

    # everything above is in the file
    with accord.Replica.open(tmp_path / "contacts.db") as again:
        assert again.get(ada, "email") == "ada@example.org"
        assert again.collections() == {"contacts": 1, "notes": 1}


def test_bad_input_raises_the_documented_exception_and_loses_nothing(tmp_path: Path) -> None:
    r = accord.Replica(tmp_path / "r.db")
    ada = r.create("contacts", {"name": "Ada", "tags": ["math"]})
    before = (r.get(ada), r.heads(ada), r.collections())

    with pytest.raises(accord.InvalidId, match="not-an-id"):
        r.get("not-an-id")
    with pytest.raises(ValueError):  # InvalidId is a ValueError
        r.put("not-an-id", "name", "x")
    missing = accord.Replica().create("contacts", {})  # a valid id this replica lacks
    with pytest.raises(accord.NotFound, match=missing):
        r.get(missing)
    with pytest.raises(accord.NotFound):
        r.put(missing, "name", "x")
    with pytest.raises(accord.NotFound):
        r.delete(missing)

    with pytest.raises(accord.InvalidPath, match="email"):
        r.get(ada, "email")
    with pytest.raises(accord.InvalidPath, match="may not be empty"):
        r.put(ada, "address..city", "London")
    with pytest.raises(accord.InvalidPath, match="not a number"):
        r.put(ada, "tags.first", "x")
    with pytest.raises(accord.InvalidPath, match="past the end"):
        r.put(ada, "tags.5", "x")
    with pytest.raises(accord.InvalidPath, match="not an object or list"):
        r.put(ada, "name.first", "x")

    with pytest.raises(accord.InvalidValue, match="'tags' is a set"):
        r.put(ada, "tags", {"a", "b"})
    with pytest.raises(accord.InvalidValue, match="'when' is a datetime"):
        r.create("contacts", {"name": "Bob", "when": datetime.now()})
    with pytest.raises(accord.InvalidValue, match="'x.0' is a bytes"):
        r.put(ada, "x", [b"raw"])
    with pytest.raises(accord.InvalidValue, match="NaN or infinite"):
        r.put(ada, "score", float("nan"))
    with pytest.raises(accord.InvalidValue, match="64-bit"):
        r.put(ada, "big", 2**70)
    with pytest.raises(accord.InvalidValue, match="key of type int"):
        r.put(ada, "map", {1: "one"})
    with pytest.raises(accord.InvalidValue, match="content is a dict, not a list"):
        r.create("contacts", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # InvalidValue is a TypeError
        r.put(ada, "obj", object())
    nested: list = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(accord.InvalidValue, match="deeper"):
        r.put(ada, "deep", nested)

    with pytest.raises(accord.InvalidCollection):
        r.create("no spaces allowed", {})
    with pytest.raises(accord.InvalidCollection):
        r.list("no spaces allowed")

    # Nothing was written by any of the failed calls.
    assert (r.get(ada), r.heads(ada), r.collections()) == before
    assert len(r.log(ada)) == 1

    r.close()
    r.close()  # harmless
    assert r.closed
    for call in (lambda: r.get(ada), lambda: r.create("contacts", {}), lambda: r.query("SELECT 1"), lambda: r.subscribe()):
        with pytest.raises(accord.Closed):
            call()
    with accord.Replica(tmp_path / "r.db") as again:
        assert (again.get(ada), again.heads(ada)) == before[:2]


def test_automerge_urls_are_ids() -> None:
    with accord.Replica() as r:
        ada = r.create("contacts", {"name": "Ada"})
        assert r.get("automerge:" + ada) == {"name": "Ada"}


def test_python_and_the_cli_read_each_others_records(tmp_path: Path, accord_bin: Path) -> None:
    db = tmp_path / "shared.db"
    content = {"name": "Ada", "tags": ["math", "poetry"], "age": 36, "ratio": 0.25, "vip": False, "note": None,
               "address": {"city": "London"}, "unicode": "Ünïcödé ✓"}
    with accord.Replica(db) as r:
        ada = r.create("contacts", content)
    out = subprocess.run([str(accord_bin), "--db", str(db), "get", ada], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == content

    new = subprocess.run(
        [str(accord_bin), "--db", str(db), "new", "contacts", "--data", json.dumps(content)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    subprocess.run([str(accord_bin), "--db", str(db), "put", new, "address.city", '"Paris"'], check=True, capture_output=True)
    with accord.Replica(db) as r:
        assert r.get(new) == {**content, "address": {"city": "Paris"}}
        assert r.get(ada) == content
