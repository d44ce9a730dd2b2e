"""Group commit: what goes in a batch, the committer thread, wake-ups, failures, two writers.

The scenarios are driven by :class:`GatedStore`, a SQLite store whose commits wait at a
gate the test opens, and which records (or fails) each commit. Nothing here asserts on
wall-clock time; the waits only synchronise with the threads under test.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from incisive_lab.ledger import EntryRef, Ledger, _ledger, _store
from incisive_lab.ledger._store import SqliteStore

from .helpers import Site, make_event

TIMEOUT = 30.0


def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds (polling); fail after :data:`TIMEOUT` seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.001)


class _GatedConnection:
    """The writer connection of a :class:`GatedStore`; everything but ``commit`` passes."""

    def __init__(self, conn: sqlite3.Connection, store: GatedStore) -> None:
        self._conn = conn
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        store = self._store
        size = int(self._conn.execute("SELECT size FROM ledger_head WHERE id = 1").fetchone()[0])
        with store.lock:
            store.at_gate += 1
            number = len(store.commits) + len(store.failed) + 1
        assert store.gate.wait(TIMEOUT), "the test never opened the gate"
        if number in store.fail:
            store.failed.append(number)
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        self._conn.commit()
        with store.lock:
            store.commits.append((threading.current_thread().name, size))


class GatedStore(SqliteStore):
    """SQLite store whose commits wait for ``gate``; records ``(thread, size)`` per commit.

    Commits whose sequence number (1-based, counting failed ones) is in ``fail`` raise a
    simulated disk error instead of committing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.at_gate = 0
        self.commits: list[tuple[str, int]] = []
        self.failed: list[int] = []
        self.fail: set[int] = set()

    def _connect(self, *, write: bool) -> Any:
        conn = super()._connect(write=write)
        return _GatedConnection(conn, self) if write else conn


@pytest.fixture
def gated(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    """A fresh SQLite ledger on a :class:`GatedStore` (commits recorded from here on)."""
    monkeypatch.setattr(_ledger, "SqliteStore", GatedStore)
    ledger = Ledger.open(os.path.join(tmp_path, "node"), origin="a.example/l")
    store = ledger._store
    assert isinstance(store, GatedStore)
    store.commits.clear()
    store.at_gate = 0
    yield ledger
    store.gate.set()
    ledger.close()


def _appender(ledger: Ledger, i: int, out: dict[int, Any], name: str) -> threading.Thread:
    def run() -> None:
        try:
            out[i] = ledger.append(make_event(i))
        except Exception as exc:  # handed to the test
            out[i] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def _store_of(ledger: Ledger) -> GatedStore:
    store = ledger._store
    assert isinstance(store, GatedStore)
    return store


def test_appends_queued_during_a_commit_go_to_the_committer(gated: Ledger) -> None:
    store = _store_of(gated)
    store.gate.clear()
    out: dict[int, Any] = {}
    first = _appender(gated, 0, out, "first")
    _until(lambda: store.at_gate == 1, "the first append is committing")
    others = [_appender(gated, i, out, f"other-{i}") for i in (1, 2, 3)]
    _until(lambda: len(store._queue) == 3, "three appends are queued")
    assert out == {}  # nobody is acknowledged before its commit
    store.gate.set()
    for t in (first, *others):
        t.join(TIMEOUT)
    committer = store._committer
    # the caller committed its own append; the three queued meanwhile went in one batch,
    # committed by the committer thread, not by one of their callers
    assert store.commits == [("first", 1), ("ledger-commit", 4)]
    assert out[0].index == 0 and sorted(out[i].index for i in (1, 2, 3)) == [1, 2, 3]
    assert all(isinstance(r, EntryRef) for r in out.values())
    gated.close()
    if committer is not None:
        committer.join(TIMEOUT)
        assert not committer.is_alive()  # close() ends an idle committer


def test_a_batch_is_taken_once_the_writer_holds_the_lock(gated: Ledger) -> None:
    """Appends that queue while the leader waits for the lock join its batch."""
    store = _store_of(gated)
    fd = os.open(store._lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # "another process"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out: dict[int, Any] = {}
        first = _appender(gated, 0, out, "first")
        _until(lambda: gated._store._leader, "the first append leads")
        others = [_appender(gated, i, out, f"other-{i}") for i in (1, 2)]
        _until(lambda: len(store._queue) == 3, "all three are queued")
        fcntl.flock(fd, fcntl.LOCK_UN)
        for t in (first, *others):
            t.join(TIMEOUT)
    finally:
        os.close(fd)
    assert store.commits == [("first", 3)]  # one transaction, one fsync
    assert sorted(r.index for r in out.values()) == [0, 1, 2]


def test_waiting_for_another_writer_first_wakes_whom_we_owe(tmp_path: os.PathLike[str]
                                                            ) -> None:
    """Callers whose appends are durable are not kept waiting on another process."""
    store = SqliteStore(os.path.join(tmp_path, "l.sqlite"))
    fd = os.open(store._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    woken = threading.Event()
    held = threading.Event()

    def lock() -> None:
        with store._process_write_lock(woken.set):
            held.set()

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        thread = threading.Thread(target=lock)
        thread.start()
        assert woken.wait(TIMEOUT)  # called while the other writer still holds the lock
        assert not held.is_set()
        fcntl.flock(fd, fcntl.LOCK_UN)
        thread.join(TIMEOUT)
        assert held.is_set()
        called: list[int] = []
        with store._process_write_lock(lambda: called.append(1)):
            pass
        assert called == []  # not called when nobody else holds it
    finally:
        os.close(fd)
        store.close()


def test_a_failed_commit_fails_its_batch_only(gated: Ledger) -> None:
    store = _store_of(gated)
    store.fail = {2}  # the committer's first commit
    store.gate.clear()
    out: dict[int, Any] = {}
    first = _appender(gated, 0, out, "first")
    _until(lambda: store.at_gate == 1, "the first append is committing")
    others = [_appender(gated, i, out, f"other-{i}") for i in (1, 2)]
    _until(lambda: len(store._queue) == 2, "two appends are queued")
    store.gate.set()
    for t in (first, *others):
        t.join(TIMEOUT)
    assert isinstance(out[0], EntryRef) and out[0].index == 0
    for i in (1, 2):
        assert isinstance(out[i], sqlite3.OperationalError)
    assert store.failed == [2]
    # nothing of the failed batch is stored; the ledger goes on from the tree it has
    assert gated.size == 1
    refs = [gated.append(make_event(10)), *gated.append_many([make_event(11)])]
    assert [r.index for r in refs] == [1, 2]
    result = gated.verify()
    assert result.ok, result.summary()


def test_an_idle_committer_ends_and_a_new_one_starts(gated: Ledger,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_store, "COMMITTER_IDLE", 0.01)
    store = _store_of(gated)
    for round_ in range(2):
        store.gate.clear()
        out: dict[int, Any] = {}
        base = 10 * round_
        first = _appender(gated, base, out, "first")
        commits_so_far = 2 * round_

        def committing(n: int = commits_so_far + 1) -> bool:
            return store.at_gate == n

        _until(committing, "the first append is committing")
        other = _appender(gated, base + 1, out, "other")
        _until(lambda: len(store._queue) == 1, "an append is queued")
        committer_before = store._committer
        store.gate.set()
        first.join(TIMEOUT)
        other.join(TIMEOUT)
        assert store.commits[-1][0] == "ledger-commit"
        assert committer_before is None  # the previous one ended when idle
        thread = store._committer
        if thread is not None:
            thread.join(TIMEOUT)
        _until(lambda: store._committer is None, "the idle committer ended")
    assert gated.size == 4 and gated.verify().ok


def test_two_writers_on_one_ledger(site: Site) -> None:
    """Two stores (as two processes would) append concurrently; each re-reads the tree."""
    with site.open(origin="a.example/l") as a, site.open() as b:
        refs: list[tuple[int, bytes]] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work(ledger: Ledger, other: Ledger, k: int) -> None:
            try:
                for i in range(15):
                    ref = ledger.append(make_event(k * 1000 + i))
                    # acknowledged means committed: visible to the other writer at once
                    assert other.entry(ref.index).leaf_hash == ref.leaf_hash
                    with lock:
                        refs.append((ref.index, ref.leaf_hash))
                for ref in ledger.append_many([make_event(k * 1000 + 500 + i)
                                               for i in range(3)]):
                    with lock:
                        refs.append((ref.index, ref.leaf_hash))
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        threads = [threading.Thread(target=work, args=((a, b) if k % 2 else (b, a)) + (k,))
                   for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 4)
        assert errors == []
        assert sorted(i for i, _ in refs) == list(range(8 * 18))
        stored = {e.index: e.leaf_hash for e in a.entries()}
        assert all(stored[i] == leaf for i, leaf in refs)
        for ledger in (a, b):
            result = ledger.verify()
            assert result.ok, result.summary()
