"""The ingest bookkeeping of a node: which source files are in, and which run is unfinished.

Kept in ``<node-dir>/private/ingest.sqlite`` (provider-only; it names source paths):

- ``sources``: one row per source file already stored, keyed by the SHA-256 of its bytes,
  so the same input again is recognised without being de-identified again (whatever its
  path), and a killed run is completed by doing only what is missing;
- ``runs``: one row per ingest; a run still ``running`` when the next one starts was
  interrupted, and the next run resumes it (and is ledgered as ``resume``).

An anonymising run keeps its one-time salt in ``private/runs/<run>.salt`` (mode 0600) only
while it runs, so that a resumed run anonymises the rest with the same salt and patients are
not split; the file is deleted when the run completes, after which nobody can link the
anonymous identifiers back.

A node takes one ingest at a time: :func:`node_lock` holds an exclusive POSIX lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from incisive_lab.errors import IncisiveLabError

__all__ = ["RunBook", "RunState", "hash_files", "node_lock", "sha256_file"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    sha256 TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    path TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- stored
    run TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL            -- running | done
);
"""


_HELD: set[str] = set()  # nodes this process is ingesting (POSIX locks do not exclude the same process)
_HELD_LOCK = threading.Lock()


def _busy(private: Path) -> IncisiveLabError:
    return IncisiveLabError(f"another ingest is running on this node ({private.parent}); wait for it to finish")


@contextlib.contextmanager
def node_lock(private: Path) -> Iterator[None]:
    """Hold the node's ingest lock, or fail at once if another ingest holds it."""
    private.mkdir(parents=True, exist_ok=True)
    key = str(private.resolve())
    with _HELD_LOCK:
        if key in _HELD:
            raise _busy(private)
        _HELD.add(key)
    try:
        with _process_lock(private):
            yield
    finally:
        with _HELD_LOCK:
            _HELD.discard(key)


@contextlib.contextmanager
def _process_lock(private: Path) -> Iterator[None]:
    fd = os.open(private / "ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            # a POSIX record lock belongs to this process alone: forked workers do not inherit
            # it, so a run killed with -9 frees the node at once even while orphaned workers
            # finish (an flock would stay held by them)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            raise _busy(private) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read())  # DICOM files are small; one read is the fastest here
    return h.hexdigest()


def hash_files(root: Path, rels: Sequence[str]) -> list[str]:
    """SHA-256 of each file (hashlib releases the GIL: a few threads use every core)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
        return list(pool.map(lambda r: sha256_file(root / r), rels, chunksize=64))


@dataclass(frozen=True)
class RunState:
    """The run this ingest is: a fresh one, or the resumption of an interrupted one."""

    id: str
    resumed: bool


class RunBook:
    """The ``ingest.sqlite`` bookkeeping (see the module docstring)."""

    def __init__(self, private: Path) -> None:
        private.mkdir(parents=True, exist_ok=True)
        self.private = private
        self._db = sqlite3.connect(private / "ingest.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs ---------------------------------------------------------------------------
    def begin(self, dataset: str) -> RunState:
        """Start a run, or take over the unfinished one of this dataset."""
        row = self._db.execute(
            "SELECT id FROM runs WHERE dataset = ? AND status = 'running' ORDER BY started LIMIT 1", (dataset,)
        ).fetchone()
        if row is not None:
            return RunState(row[0], resumed=True)
        run = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self._db.execute("INSERT INTO runs VALUES (?, ?, ?, NULL, 'running')", (run, dataset, time.time()))
        return RunState(run, resumed=False)

    def finish(self, run: str) -> None:
        self._db.execute("UPDATE runs SET status = 'done', finished = ? WHERE id = ?", (time.time(), run))
        self.salt_path(run).unlink(missing_ok=True)

    def salt_path(self, run: str) -> Path:
        return self.private / "runs" / f"{run}.salt"

    def run_salt(self, run: str) -> bytes:
        """The anonymising salt of this run (made on first use, kept until the run finishes)."""
        path = self.salt_path(run)
        if path.exists():
            return path.read_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        salt = os.urandom(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, salt)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return salt

    # --- sources ------------------------------------------------------------------------
    def known(self, hashes: Iterable[str]) -> set[str]:
        """Which of these source hashes are already stored (quarantined and failed files are
        not remembered: they are checked again on every run, so a fix at the source lands)."""
        wanted = list(hashes)
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self._db.execute(f"SELECT sha256 FROM sources WHERE outcome = 'stored' AND sha256 IN ({marks})", part))
        return found

    def record(self, dataset: str, run: str, rows: Iterable[tuple[str, str, str]]) -> None:
        """Record ``(sha256, path, outcome)`` for files whose outcome is durable in the store."""
        with contextlib.closing(self._db.cursor()) as cur:
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany(
                "INSERT OR IGNORE INTO sources VALUES (?, ?, ?, ?, ?)",
                ((sha, dataset, path, outcome, run) for sha, path, outcome in rows),
            )
            cur.execute("COMMIT")

    def counts(self, dataset: str) -> dict[str, int]:
        return dict(self._db.execute("SELECT outcome, count(*) FROM sources WHERE dataset = ? GROUP BY outcome", (dataset,)).fetchall())
