"""Change subscriptions: as an iterator, with timeouts, and as callbacks on
their own thread."""

from __future__ import annotations

import threading

import pytest

import accord


def test_iterator_and_timeouts() -> None:
    with accord.Replica() as r:
        sub = r.subscribe("contacts")
        assert sub.next(timeout=0) is None
        ada = r.create("contacts", {"name": "Ada"})
        r.create("notes", {"text": "not this collection"})
        r.put(ada, "name", "Ada L.")
        r.delete(ada)
        events = [next(sub) for _ in range(3)]
        assert [(e.id, e.kind, e.collection) for e in events] == [
            (ada, "created", "contacts"),
            (ada, "changed", "contacts"),
            (ada, "deleted", "contacts"),
        ]
        assert all(not e.remote and e.origin is None and e.heads for e in events)
        assert sub.next(timeout=0.05) is None

        one = r.subscribe(id=ada)
        grace = r.create("contacts", {"name": "Grace"})
        r.put(grace, "name", "Grace H.")
        assert one.next(timeout=0.05) is None
        one.close()
        assert one.closed
        with pytest.raises(accord.Closed):
            one.next(timeout=0)

        with pytest.raises(ValueError):
            r.subscribe("contacts", id=ada)
        with pytest.raises(ValueError):
            sub.next(timeout=-1)

        # The iterator ends when its replica closes.
        done = []
        t = threading.Thread(target=lambda: done.append(list(sub)))
        t.start()
        r.close()
        t.join(timeout=30)
        assert not t.is_alive() and len(done) == 1
        # The events for Grace were queued before the close.
        assert [(e.id, e.kind) for e in done[0]] == [(grace, "created"), (grace, "changed")]


def test_callbacks_run_on_their_own_thread_and_survive_exceptions() -> None:
    with accord.Replica() as r:
        seen = []
        threads = set()
        two = threading.Event()

        def on_change(event: accord.ChangeEvent) -> None:
            threads.add(threading.current_thread().name)
            seen.append((event.kind, event.id))
            if len(seen) == 1:
                raise RuntimeError("a bug in the app's callback")
            if len(seen) == 2:
                two.set()

        unraisable = []
        old_hook = __import__("sys").unraisablehook
        __import__("sys").unraisablehook = lambda u: unraisable.append(u.exc_value)
        try:
            sub = r.subscribe("contacts", callback=on_change)
            ada = r.create("contacts", {"name": "Ada"})
            r.put(ada, "name", "Ada L.")
            assert two.wait(30)
        finally:
            sub.close()
            __import__("sys").unraisablehook = old_hook
        assert seen == [("created", ada), ("changed", ada)]
        assert threads == {"accord-events"} and threading.current_thread().name not in threads
        assert len(unraisable) == 1 and "a bug in the app's callback" in str(unraisable[0])

        # Closed: no more calls.
        r.put(ada, "name", "Ada")
        assert sub.closed and seen == [("created", ada), ("changed", ada)]


def test_a_callback_may_close_its_own_subscription() -> None:
    with accord.Replica() as r:
        closed = threading.Event()
        holder = {}

        def once(event: accord.ChangeEvent) -> None:
            holder["sub"].close()
            closed.set()

        holder["sub"] = r.subscribe(callback=once)
        r.create("contacts", {})
        assert closed.wait(30)
        assert holder["sub"].closed
