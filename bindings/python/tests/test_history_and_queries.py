"""History (log, reads at past heads, diff) and SQL queries with indexes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import accord


def test_log_get_at_and_diff() -> None:
    with accord.Replica() as r:
        ada = r.create("contacts", {"name": "Ada"}, message="first")
        first = r.heads(ada)
        r.put(ada, "email", "ada@example.org", message="add email")
        r.put(ada, "name", "Ada Lovelace")

        log = r.log(ada)
        assert [c.message for c in log] == ["first", "add email", None]
        assert log[1].deps == [log[0].hash]
        assert log[2].hash == r.heads(ada)[0]
        assert {c.device for c in log} == {r.device}
        assert all(c.actor.startswith(r.device) for c in log)
        assert log[0].time is not None and log[0].time.tzinfo == timezone.utc
        assert abs((datetime.now(timezone.utc) - log[0].time).total_seconds()) < 3600
        assert log[0].ops >= 1

        assert r.get(ada, at=first) == {"name": "Ada"}
        assert r.get(ada, at=log[1].hash[:10]) == {"name": "Ada", "email": "ada@example.org"}  # a short hash
        assert r.record(ada, at=first).heads == first
        with pytest.raises(accord.UnknownChange):
            r.get(ada, at="00" * 32)

        patches = r.diff(ada, first)
        assert [(p["action"], p["path"]) for p in patches] == [("put", ["email"]), ("put", ["name"])]
        assert patches[1]["value"] == "Ada Lovelace"
        assert patches[0]["description"] == 'set email = "ada@example.org"'
        everything = r.diff(ada)  # from the empty record to now
        assert {tuple(p["path"]) for p in everything} == {("name",), ("email",)}
        assert r.diff(ada, first, first) == []


def test_query_params_indexes_and_refusals() -> None:
    with accord.Replica() as r:
        for name, city, age in [("Ada", "London", 36), ("Grace", "New York", 85), ("Alan", "London", 41)]:
            r.create("contacts", {"name": name, "city": city, "age": age})
        r.create("notes", {"city": "London"})

        rows = r.query(
            "SELECT json_extract(json, '$.name') AS name, json_extract(json, '$.age') AS age FROM records "
            "WHERE collection = ? AND json_extract(json, '$.city') = ? ORDER BY name",
            ("contacts", "London"),
        )
        assert rows == [{"name": "Ada", "age": 36}, {"name": "Alan", "age": 41}]
        assert r.query("SELECT 1.5 AS f, NULL AS n, x'0102' AS b, 'ü' AS t") == [
            {"f": 1.5, "n": None, "b": b"\x01\x02", "t": "ü"}
        ]
        assert r.query("SELECT ? AS yes, ? AS blob", [True, b"\x00"]) == [{"yes": 1, "blob": b"\x00"}]

        index = r.create_index("contacts", "$.name")
        assert (index.collection, index.path) == ("contacts", "$.name")
        assert r.indexes() == [index]
        assert r.create_index("contacts", "$.name") == index  # again: harmless
        assert r.drop_index("contacts", "$.name") is True
        assert r.drop_index("contacts", "$.name") is False
        assert r.indexes() == []

        with pytest.raises(accord.QueryError, match="read-only"):
            r.query("DELETE FROM docs")
        with pytest.raises(accord.QueryError, match="one statement"):
            r.query("SELECT 1; SELECT 2")
        with pytest.raises(accord.QueryError, match="bad SQL"):
            r.query("SELEC nothing")
        with pytest.raises(accord.QueryError, match="parameter"):
            r.query("SELECT ?", ())
        with pytest.raises(accord.InvalidValue, match="parameter 1 is a list"):
            r.query("SELECT ?", [[1, 2]])
        with pytest.raises(accord.QueryError):
            r.create_index("contacts", "name without dollar")
        assert len(r.query("SELECT id FROM records WHERE collection = 'contacts'")) == 3
