"""Storage of a ledger in SQL: SQLite (default) or PostgreSQL, with the same code.

:class:`Store` holds all the logic: the tables, group-committed appends that maintain
the Merkle tree's perfect nodes, proof-node reads, queries and consistent snapshots for
verification. :class:`SqliteStore` and :class:`PostgresStore` only change the dialect
(connection, placeholders, column types, how a writer takes the lock).

Stored format (version ``incisive-lab-ledger/1``; frozen by the golden-file test)::

    ledger_meta(key, value)                 format, origin, log_key (verifier key)
    ledger_head(id = 1, size)               number of entries
    ledger_entries(idx, leaf, data, kind, actor, resource, time)
        idx   0-based position; leaf = SHA-256(0x00 || data); data = canonical event JSON;
        kind/actor/resource/time copied from data for queries (verify re-derives them)
    ledger_nodes(key, hash)                 perfect internal nodes, key = merkle.node_key()
    ledger_checkpoints(size, note)          checkpoints signed by the log key
    ledger_cosignatures(size, name, key_id, line)   witnesses' cosignature lines

Group commit: appends from many threads of one process are queued; a thread that
finds no commit in progress commits everything queued in one transaction (one fsync),
while the others wait for it. If more appends queued meanwhile, it passes the lead to
the store's committer thread, which commits batch after batch while appenders keep
queuing, so the commits follow each other without a hand-over between threads: each
batch is whatever is queued once the committer holds the write lock (it never waits
for more), and the callers of a batch are woken just before the next batch's commit,
so that they prepare their next appends during its fsync. Writers in different
processes are serialised by the database (SQLite: an ``flock`` on ``<db>.lock`` and
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE`` on the head row). A call
returns only after its transaction committed durably (SQLite WAL with
``synchronous=FULL``; PostgreSQL with its default ``synchronous_commit``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ._errors import StoreError
from ._merkle import internal_node_count, node_key, perfect_nodes

__all__ = ["FORMAT", "PostgresStore", "Row", "Snapshot", "SqliteStore", "Store", "open_store"]

#: Identifier of the stored format, kept in ``ledger_meta``.
FORMAT = "incisive-lab-ledger/1"

#: One entry to append: (data, leaf hash, kind, actor, resource, time).
Row = tuple[bytes, bytes, str, str, str | None, str]

_CHUNK = 500  # parameters per IN (...) list
#: Seconds an idle committer thread waits for work before it ends (the next burst of
#: concurrent appends starts a new one).
COMMITTER_IDLE = 1.0
#: WAL pages after which a SQLite commit also checkpoints the WAL into the database
#: (SQLite's default is 1,000). Fewer, larger checkpoints copy each often-changed index
#: page once for many commits; the WAL file grows to about this many 4 KiB pages.
SQLITE_WAL_AUTOCHECKPOINT = 10_000


def _bytes(value: object, what: str) -> bytes:
    """A stored hash or entry as bytes; anything else means the store was tampered with."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise StoreError(f"stored {what} is a {type(value).__name__}, not bytes (run verify)")


def _wake(tickets: list[_Ticket]) -> None:
    """Wake the callers waiting on ``tickets`` and empty the list (so each wakes once)."""
    for ticket in tickets:
        ticket.wake.release()
    tickets.clear()


class _Ticket:
    """One caller's rows waiting for a group commit; ``wake`` is released to wake it."""

    __slots__ = ("done", "error", "first", "rows", "wake")

    def __init__(self, rows: Sequence[Row] | None) -> None:
        self.rows = rows  # None: a caller that only needs the writer (no rows)
        self.first = -1
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Lock()
        self.wake.acquire()


class Store:
    """SQL storage of one ledger; see the module docstring.

    Subclasses set the class attributes below and implement :meth:`_connect`,
    :meth:`_ddl` and the few dialect hooks.
    """

    #: DB-API parameter placeholder.
    placeholder: ClassVar[str] = "?"
    #: Human-readable name of the back-end.
    backend: ClassVar[str] = "sql"

    def __init__(self, *, read_only: bool = False) -> None:
        self.read_only = read_only
        self._lock = threading.Lock()          # guards connection bookkeeping
        self._cv = threading.Condition(threading.Lock())  # guards the queue and leadership
        self._queue: list[_Ticket] = []
        self._leader = False                    # a thread holds the lead (commits)
        self._committer: threading.Thread | None = None
        self._handed = False                    # the lead was passed to the committer
        self._handoff: list[_Ticket] = []       # ... with these callers still to wake
        self._idle: list[Any] = []              # pooled read connections
        self._conns: list[Any] = []
        self._writer: Any = None
        self._pid = os.getpid()
        self._frontier: tuple[int, list[bytes]] | None = None
        self._closed = False

    # ----------------------------------------------------------------- dialect hooks
    def _connect(self, *, write: bool) -> Any:
        raise NotImplementedError

    def _ddl(self) -> list[str]:
        raise NotImplementedError

    def _init_lock(self, conn: Any) -> None:
        """Serialise schema creation between processes (inside the init transaction)."""

    @contextlib.contextmanager
    def _process_write_lock(self, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Serialise writers in different processes; call ``waiting`` before blocking.

        Here the database's row lock does it (:meth:`_head_for_update`); whether that
        will wait is not known in advance, so ``waiting`` is called first.
        """
        if waiting is not None:
            waiting()
        yield

    def _begin_write(self, conn: Any) -> None:
        """Start a write transaction."""

    def _head_for_update(self) -> str:
        return "SELECT size FROM ledger_head WHERE id = 1"

    def _begin_snapshot(self, conn: Any) -> None:
        raise NotImplementedError

    def _derived_mismatch_sql(self) -> str:
        """SQL (params: below, limit) returning ``idx`` of entries whose query columns
        (kind, actor, resource, time) do not match their data, ascending."""
        raise NotImplementedError

    #: Whether verification may run the query-column check on a second connection in a
    #: thread, overlapping the streaming pass (SQLite releases the GIL while it works).
    parallel_derived_check: ClassVar[bool] = False

    def _derived_mismatches(self, conn: Any, below: int, limit: int) -> list[int]:
        cur = conn.cursor()
        try:
            cur.execute(self._sql(self._derived_mismatch_sql()), (below, limit))
            return [int(r[0]) for r in cur.fetchall()]
        finally:
            cur.close()

    def _derived_mismatches_slow(self, conn: Any, below: int, limit: int) -> list[int]:
        """Row-by-row check in Python, for stores whose SQL check cannot parse an entry."""
        import json

        out: list[int] = []
        cur = conn.cursor()
        try:
            cur.execute(self._sql("SELECT idx, data, kind, actor, resource, time "
                                  "FROM ledger_entries WHERE idx < ? ORDER BY idx"), (below,))
            for idx, data, *columns in cur:
                try:
                    obj = json.loads(bytes(data) if not isinstance(data, str) else data)
                    ok = [obj.get(k) for k in ("kind", "actor", "resource", "time")] == columns
                except (ValueError, TypeError, AttributeError):
                    ok = False
                if not ok:
                    out.append(int(idx))
                    if len(out) >= limit:
                        break
            return out
        finally:
            cur.close()

    def _server_cursor(self, conn: Any, name: str) -> Any:
        return conn.cursor()

    # ----------------------------------------------------------------- plumbing
    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:  # forked: connections belong to the parent
            self._pid = os.getpid()
            self._idle = []
            self._conns = []
            self._writer = None
            self._queue = []
            self._leader = False
            self._committer = None
            self._handed = False
            self._handoff = []
            self._cv = threading.Condition(threading.Lock())
            self._frontier = None

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Any]:
        """Borrow a read connection from the pool (one per concurrent reader, reused)."""
        if self._closed:
            raise StoreError("the ledger is closed")
        self._check_pid()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect(write=False)
            with self._lock:
                self._conns.append(conn)
        try:
            yield conn
        except BaseException:  # a failed connection is not reused (PostgreSQL may have broken it)
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()
            raise
        with self._lock:
            if not self._closed and os.getpid() == self._pid:
                self._idle.append(conn)

    def _writer_conn(self) -> Any:
        if self.read_only:
            raise StoreError("the ledger was opened read-only")
        if self._closed:
            raise StoreError("the ledger is closed")
        self._check_pid()
        if self._writer is None:
            self._writer = self._connect(write=True)
            with self._lock:
                self._conns.append(self._writer)
        return self._writer

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._reader() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self._sql(sql), tuple(params))
                return list(cur.fetchall())
            finally:
                cur.close()

    def close(self) -> None:
        """Close every connection this store opened (in this process)."""
        self._closed = True
        if os.getpid() == self._pid:
            with self._cv:
                self._cv.notify_all()  # an idle committer thread ends now
        with self._lock:
            conns, self._conns, self._idle = self._conns, [], []
        if os.getpid() != self._pid:
            return
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._writer = None

    # ----------------------------------------------------------------- schema
    def initialise(self, origin: str | None, log_key: str | None) -> dict[str, str]:
        """Create the tables if needed; return the metadata (format, origin, log_key).

        Raises
        ------
        StoreError
            When the store holds another format, or a different origin or key.
        """
        meta = self._meta_if_present()
        if meta is None:
            if self.read_only:
                raise StoreError("no ledger in this location (opened read-only)")
            if origin is None or log_key is None:
                raise StoreError("a new ledger needs an origin and a log key")
            conn = self._writer_conn()
            with self._process_write_lock():
                self._begin_write(conn)
                try:
                    self._init_lock(conn)
                    cur = conn.cursor()
                    for stmt in self._ddl():
                        cur.execute(stmt)
                    for key, value in (("format", FORMAT), ("origin", origin),
                                       ("log_key", log_key)):
                        cur.execute(self._sql(self._insert_ignore(
                            "ledger_meta (key, value) VALUES (?, ?)", "key")), (key, value))
                    cur.execute(self._insert_ignore("ledger_head (id, size) VALUES (1, 0)", "id"))
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
            meta = self._meta_if_present()
            assert meta is not None
        if meta.get("format") != FORMAT:
            raise StoreError(f"unsupported ledger format {meta.get('format')!r} (this version "
                             f"reads {FORMAT!r})")
        if origin is not None and meta.get("origin") != origin:
            raise StoreError(f"this ledger's origin is {meta.get('origin')!r}, not {origin!r}")
        if log_key is not None and meta.get("log_key") != log_key:
            raise StoreError("the node key does not match the key this ledger was created with "
                             f"({meta.get('log_key')})")
        return meta

    def _insert_ignore(self, rest: str, conflict: str) -> str:
        return f"INSERT INTO {rest} ON CONFLICT ({conflict}) DO NOTHING"

    def _meta_if_present(self) -> dict[str, str] | None:
        try:
            rows = self._fetchall("SELECT key, value FROM ledger_meta")
        except Exception as exc:
            if self._is_missing_table(exc):
                return None
            raise
        return dict(rows) or None

    def _is_missing_table(self, exc: Exception) -> bool:
        return "ledger_meta" in str(exc)

    # ----------------------------------------------------------------- reads
    def size(self) -> int:
        """Number of entries committed."""
        rows = self._fetchall("SELECT size FROM ledger_head WHERE id = 1")
        if not rows:
            raise StoreError("ledger head row is missing")
        return int(rows[0][0])

    def meta(self) -> dict[str, str]:
        """The ``ledger_meta`` key/value pairs."""
        return dict(self._fetchall("SELECT key, value FROM ledger_meta"))

    def leaves(self, indices: Sequence[int]) -> dict[int, bytes]:
        """Leaf hashes by entry index."""
        out: dict[int, bytes] = {}
        ids = sorted(set(indices))
        for i in range(0, len(ids), _CHUNK):
            part = ids[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for idx, leaf in self._fetchall(
                    f"SELECT idx, leaf FROM ledger_entries WHERE idx IN ({marks})", part):
                out[int(idx)] = _bytes(leaf, f"leaf hash of entry {idx}")
        return out

    def nodes(self, keys: Sequence[int]) -> dict[int, bytes]:
        """Perfect internal node hashes by node key."""
        out: dict[int, bytes] = {}
        ids = sorted(set(keys))
        for i in range(0, len(ids), _CHUNK):
            part = ids[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for key, h in self._fetchall(
                    f"SELECT key, hash FROM ledger_nodes WHERE key IN ({marks})", part):
                out[int(key)] = _bytes(h, f"tree node {key}")
        return out

    def perfect_hashes(self, addresses: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Hashes of perfect nodes ``(level, index)`` (level 0 = leaves), in one or two reads.

        Raises
        ------
        StoreError
            When a node the tree must have is missing.
        """
        leaf_ids = [i for lvl, i in addresses if lvl == 0]
        node_ids = {node_key(lvl, i): (lvl, i) for lvl, i in addresses if lvl > 0}
        out: dict[tuple[int, int], bytes] = {}
        if leaf_ids:
            for idx, h in self.leaves(leaf_ids).items():
                out[(0, idx)] = h
        if node_ids:
            for key, h in self.nodes(list(node_ids)).items():
                out[node_ids[key]] = h
        missing = [a for a in addresses if a not in out]
        if missing:
            lvl, i = missing[0]
            raise StoreError(f"the stored tree lacks node level {lvl} index {i} "
                             f"(run verify)")
        return out

    def entries(self, start: int, end: int) -> list[tuple[int, bytes, bytes]]:
        """``(idx, leaf, data)`` for ``start <= idx < end``, in order."""
        return [(int(i), _bytes(leaf, f"leaf hash of entry {i}"), _bytes(data, f"entry {i}"))
                for i, leaf, data in self._fetchall(
                    "SELECT idx, leaf, data FROM ledger_entries WHERE idx >= ? AND idx < ? "
                    "ORDER BY idx", (start, end))]

    def query(self, *, resource: str | None, actor: str | None, kind: str | None,
              since: str | None, until: str | None, below: int, after: int,
              limit: int | None) -> list[tuple[int, bytes, bytes]]:
        """Entries matching every given filter, by index (see :meth:`Ledger.query`)."""
        where = ["idx < ?", "idx > ?"]
        params: list[Any] = [below, after]
        if resource is not None:
            where.append("(resource = ? OR (resource >= ? AND resource < ?))")
            params += [resource, resource + "/", resource + "0"]
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        if until is not None:
            where.append("time < ?")
            params.append(until)
        sql = (f"SELECT idx, leaf, data FROM ledger_entries WHERE {' AND '.join(where)} "
               "ORDER BY idx")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(int(i), _bytes(leaf, f"leaf hash of entry {i}"), _bytes(data, f"entry {i}"))
                for i, leaf, data in self._fetchall(sql, params)]

    def checkpoint_notes(self, size: int | None = None) -> list[tuple[int, str]]:
        """Stored checkpoint notes ``(size, note)``, ascending (one size if given)."""
        if size is None:
            rows = self._fetchall("SELECT size, note FROM ledger_checkpoints ORDER BY size")
        else:
            rows = self._fetchall("SELECT size, note FROM ledger_checkpoints WHERE size = ?",
                                  (size,))
        return [(int(s), str(n)) for s, n in rows]

    def latest_checkpoint_note(self) -> tuple[int, str] | None:
        """The stored checkpoint with the largest size."""
        rows = self._fetchall(
            "SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def cosignature_lines(self, size: int) -> list[str]:
        """Cosignature lines stored for the checkpoint of ``size``."""
        return [str(r[0]) for r in self._fetchall(
            "SELECT line FROM ledger_cosignatures WHERE size = ? ORDER BY name, key_id", (size,))]

    # ----------------------------------------------------------------- writes
    def put_checkpoint(self, size: int, note: str) -> None:
        """Store a signed checkpoint (no-op if one of that size exists)."""
        self._simple_write(self._insert_ignore("ledger_checkpoints (size, note) VALUES (?, ?)",
                                               "size"), (size, note))

    def put_cosignature(self, size: int, name: str, key_id: bytes, line: str) -> None:
        """Store (or replace) one witness's cosignature of the checkpoint of ``size``."""
        self._simple_write(
            "INSERT INTO ledger_cosignatures (size, name, key_id, line) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (size, name, key_id) DO UPDATE SET line = excluded.line",
            (size, name, key_id, line))

    def _simple_write(self, sql: str, params: Sequence[Any]) -> None:
        self._check_pid()
        self._become_leader()
        try:
            conn = self._writer_conn()
            with self._process_write_lock():
                self._begin_write(conn)
                try:
                    conn.cursor().execute(self._sql(sql), tuple(params))
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
        finally:
            self._hand_over()

    def _become_leader(self) -> None:
        """Queue an empty ticket and wait until it leads (for writes outside appends)."""
        ticket = _Ticket(None)
        with self._cv:
            self._queue.append(ticket)
            if not self._leader:
                self._leader = True
                self._queue.remove(ticket)
                return
        ticket.wake.acquire()  # given the lead by the previous leader
        with self._cv:
            self._queue.remove(ticket)

    def _hand_over(self) -> None:
        """Give the lead to the first queued caller, or drop it."""
        with self._cv:
            if self._queue:
                self._queue[0].wake.release()
            else:
                self._leader = False

    def append(self, rows: Sequence[Row]) -> int:
        """Append rows atomically and durably; return the index of the first one.

        Concurrent callers are group-committed (see the module docstring).
        """
        if not rows:
            return self.size()
        if self.read_only:
            raise StoreError("the ledger was opened read-only")
        self._check_pid()
        ticket = _Ticket(rows)
        with self._cv:
            self._queue.append(ticket)
            lead = not self._leader
            self._leader = True
        if not lead:
            ticket.wake.acquire()  # released when committed, or when given the lead
        if not ticket.done:
            self._lead(ticket)
        if ticket.error is not None:
            raise ticket.error
        return ticket.first

    def _lead(self, own: _Ticket) -> None:
        """Commit what is queued (``own`` included); pass the lead on if more is queued."""
        unwoken: list[_Ticket] = []
        passed = False
        try:
            batch = self._commit_queued(unwoken)
            unwoken = [t for t in batch if t is not own]
            with self._cv:
                if self._queue and self._queue[0].rows is not None:
                    passed = self._pass_to_committer(unwoken)
        finally:
            if not passed:
                _wake(unwoken)
                self._hand_over()

    def _pass_to_committer(self, unwoken: list[_Ticket]) -> bool:
        """Give the lead to the committer thread (started if needed; called under ``_cv``).

        ``unwoken`` are committed callers the committer wakes before its first commit.
        Returns False when no thread can be started (the caller hands over instead).
        """
        if self._committer is None:
            thread = threading.Thread(target=self._run_committer, name="ledger-commit",
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError:  # cannot start a thread: appenders keep leading
                return False
            self._committer = thread
        self._handoff = unwoken
        self._handed = True
        self._cv.notify_all()
        return True

    def _run_committer(self) -> None:
        """The committer thread: lead whenever given the lead; end when idle or closed."""
        me = threading.current_thread()
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._handed or self._closed, COMMITTER_IDLE)
                    if not self._handed:
                        if self._committer is me:
                            self._committer = None  # the next hand-over starts a new one
                        return
                    self._handed = False
                    unwoken, self._handoff = self._handoff, []
                try:
                    while True:
                        batch = self._commit_queued(unwoken)
                        _wake(unwoken)  # the commit woke them, unless it failed first
                        unwoken = batch
                        with self._cv:
                            if not self._queue or self._queue[0].rows is None:
                                break  # nothing queued, or a write outside appends waits
                finally:
                    _wake(unwoken)
                    self._hand_over()
        finally:
            with self._cv:
                if self._committer is me:
                    self._committer = None
                if self._handed:  # ended by an unexpected error, holding the lead: pass it on
                    self._handed = False
                    _wake(self._handoff)
                    if self._queue:
                        self._queue[0].wake.release()
                    else:
                        self._leader = False

    def _take_batch(self) -> list[_Ticket]:
        """Remove and return every queued append (writes outside appends stay queued)."""
        with self._cv:
            batch = [t for t in self._queue if t.rows is not None]
            self._queue = [t for t in self._queue if t.rows is None]
        return batch

    def _load_frontier(self, cur: Any, size: int) -> list[bytes]:
        """Hashes of the perfect subtrees covering ``[0, size)``, left to right.

        Kept from the previous commit of this process; read back only after another
        process appended or a commit failed. (One indexed read per node: measured faster
        with several appending processes than one ``IN (...)`` read of them all.)
        """
        if self._frontier is not None and self._frontier[0] == size:
            return list(self._frontier[1])
        addrs = perfect_nodes(0, size)
        out: list[bytes] = []
        for lvl, i in addrs:
            if lvl == 0:
                cur.execute(self._sql("SELECT leaf FROM ledger_entries WHERE idx = ?"), (i,))
            else:
                cur.execute(self._sql("SELECT hash FROM ledger_nodes WHERE key = ?"),
                            (node_key(lvl, i),))
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"the stored tree lacks node level {lvl} index {i}: cannot "
                                 "append (run verify)")
            out.append(_bytes(row[0], f"tree node level {lvl} index {i}"))
        return out

    def _commit_queued(self, unwoken: list[_Ticket]) -> list[_Ticket]:
        """Commit everything queued in one transaction; return the tickets, marked done.

        The batch is taken once this thread holds the write lock, so appends queued while
        it waited are included. ``unwoken`` (callers of the previous batch, already
        durable) are woken just before the commit, or before waiting for another
        process.
        """
        sha = hashlib.sha256
        batch: list[_Ticket] = []
        try:
            conn = self._writer_conn()
            with self._process_write_lock((lambda: _wake(unwoken)) if unwoken else None):
                self._begin_write(conn)
                try:
                    cur = conn.cursor()
                    cur.execute(self._head_for_update())
                    row = cur.fetchone()
                    if row is None:
                        raise StoreError("ledger head row is missing")
                    size = int(row[0])
                    batch = self._take_batch()
                    stack = self._load_frontier(cur, size)
                    next_key = internal_node_count(size)
                    entries: list[tuple[Any, ...]] = []
                    nodes: list[tuple[int, bytes]] = []
                    i = size
                    for ticket in batch:
                        ticket.first = i
                        for data, leaf, kind, actor, resource, time in ticket.rows or ():
                            entries.append((i, leaf, data, kind, actor, resource, time))
                            h = leaf
                            n = i + 1
                            for _ in range((n & -n).bit_length() - 1):
                                h = sha(b"\x01" + stack.pop() + h).digest()
                                nodes.append((next_key, h))
                                next_key += 1
                            stack.append(h)
                            i += 1
                    cur.executemany(self._sql(
                        "INSERT INTO ledger_entries (idx, leaf, data, kind, actor, resource, time) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)"), entries)
                    if nodes:
                        cur.executemany(self._sql(
                            "INSERT INTO ledger_nodes (key, hash) VALUES (?, ?)"), nodes)
                    cur.execute(self._sql("UPDATE ledger_head SET size = ? WHERE id = 1"), (i,))
                    _wake(unwoken)  # they prepare their next appends during this fsync
                    conn.commit()
                except BaseException:
                    self._frontier = None
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise
            self._frontier = (i, stack)
        except BaseException as exc:
            if not batch:  # failed before taking the batch: the queued callers get the error
                batch = self._take_batch()
            for ticket in batch:
                ticket.error = exc
                ticket.done = True
            return batch
        for ticket in batch:
            ticket.done = True
        return batch

    # ----------------------------------------------------------------- verification
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent read-only view of the whole ledger (for verification)."""
        if self._closed:
            raise StoreError("the ledger is closed")
        conn = self._connect(write=False)
        try:
            self._begin_snapshot(conn)
            yield Snapshot(self, conn)
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()


class Snapshot:
    """Reads within one consistent transaction; made by :meth:`Store.snapshot`."""

    def __init__(self, store: Store, conn: Any) -> None:
        self._store = store
        self._conn = conn

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = self._conn.cursor()
        cur.execute(self._store._sql(sql), tuple(params))
        rows = list(cur.fetchall())
        cur.close()
        return rows

    def meta(self) -> dict[str, str]:
        """The ``ledger_meta`` pairs."""
        return dict(self._all("SELECT key, value FROM ledger_meta"))

    def head(self) -> int | None:
        """The head size, or None if the row is missing."""
        rows = self._all("SELECT size FROM ledger_head WHERE id = 1")
        return int(rows[0][0]) if rows else None

    def entry_bounds(self) -> tuple[int, int | None]:
        """``(count, max idx)`` of the entries table."""
        count, top = self._all("SELECT COUNT(*), MAX(idx) FROM ledger_entries")[0]
        return int(count), (None if top is None else int(top))

    def node_count(self) -> int:
        """Rows in the nodes table."""
        return int(self._all("SELECT COUNT(*) FROM ledger_nodes")[0][0])

    def checkpoints(self) -> list[tuple[int, str]]:
        """``(size, note)`` of every stored checkpoint, ascending."""
        return [(int(s), str(n)) for s, n in
                self._all("SELECT size, note FROM ledger_checkpoints ORDER BY size")]

    def cosignatures(self) -> list[tuple[int, str]]:
        """``(size, line)`` of every stored cosignature."""
        return [(int(s), str(line)) for s, line in
                self._all("SELECT size, line FROM ledger_cosignatures ORDER BY size")]

    def derived_mismatches(self, below: int, limit: int) -> Callable[[], list[int]]:
        """Start checking the query columns of entries ``idx < below``; call the result to
        get the indices (ascending, at most ``limit``) whose columns differ from their data.

        On back-ends that allow it the check runs on a second connection in a thread while
        the caller streams (rows below the head never change, so both views agree).
        """
        store = self._store
        if not store.parallel_derived_check:
            return lambda: store._derived_mismatches(self._conn, below, limit)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                conn = store._connect(write=False)
                try:
                    store._begin_snapshot(conn)
                    box["result"] = store._derived_mismatches(conn, below, limit)
                finally:
                    conn.close()
            except BaseException as exc:  # handed to the caller
                box["error"] = exc

        thread = threading.Thread(target=work, name="ledger-verify-columns", daemon=True)
        thread.start()

        def result() -> list[int]:
            thread.join()
            if "error" in box:
                raise box["error"]
            out: list[int] = box["result"]
            return out

        return result

    def _stream(self, sql: str, name: str, batch: int) -> Iterator[list[Any]]:
        cur = self._store._server_cursor(self._conn, name)
        try:
            cur.execute(sql)
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield rows
        finally:
            cur.close()

    def stream_entries(self, batch: int = 20000) -> Iterator[list[tuple[int, bytes, bytes]]]:
        """Batches of ``(idx, leaf, data)`` in index order."""
        return self._stream("SELECT idx, leaf, data FROM ledger_entries ORDER BY idx",
                            "ledger_entries_stream", batch)

    def stream_nodes(self, batch: int = 50000) -> Iterator[list[tuple[int, bytes]]]:
        """Batches of ``(key, hash)`` in key order."""
        return self._stream("SELECT key, hash FROM ledger_nodes ORDER BY key",
                            "ledger_nodes_stream", batch)


class SqliteStore(Store):
    """SQLite in WAL mode with ``synchronous=FULL``: one file per ledger."""

    backend: ClassVar[str] = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.path = Path(path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise StoreError(f"no ledger database at {self.path}")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def _connect(self, *, write: bool) -> Any:
        if self.read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                                   timeout=60)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=60)
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            if write:
                conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT:d}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def _ddl(self) -> list[str]:
        refuse = "BEGIN SELECT RAISE(ABORT, 'ledger tables are append-only'); END"
        stmts = [
            "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_head (id INTEGER PRIMARY KEY CHECK (id = 1), "
            "size INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_entries (idx INTEGER PRIMARY KEY, "
            "leaf BLOB NOT NULL, data BLOB NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL, "
            "resource TEXT, time TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ledger_entries_resource ON ledger_entries (resource, idx)",
            "CREATE INDEX IF NOT EXISTS ledger_entries_actor ON ledger_entries (actor, idx)",
            "CREATE INDEX IF NOT EXISTS ledger_entries_time ON ledger_entries (time, idx)",
            "CREATE TABLE IF NOT EXISTS ledger_nodes (key INTEGER PRIMARY KEY, "
            "hash BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_checkpoints (size INTEGER PRIMARY KEY, "
            "note TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_cosignatures (size INTEGER NOT NULL, "
            "name TEXT NOT NULL, key_id BLOB NOT NULL, line TEXT NOT NULL, "
            "PRIMARY KEY (size, name, key_id))",
        ]
        for table in ("ledger_entries", "ledger_nodes", "ledger_checkpoints", "ledger_meta"):
            for op in ("UPDATE", "DELETE"):
                stmts.append(f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} "
                             f"BEFORE {op} ON {table} {refuse}")
        return stmts

    @contextlib.contextmanager
    def _process_write_lock(self, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        if self._lock_fd is None or self._check_lock_pid():
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_fd_pid = os.getpid()
        if waiting is None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process writes: wake whom we owe first
                waiting()
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _check_lock_pid(self) -> bool:
        return getattr(self, "_lock_fd_pid", None) != os.getpid()

    def _begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _begin_snapshot(self, conn: Any) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM ledger_meta").fetchone()  # takes the snapshot

    parallel_derived_check: ClassVar[bool] = True

    def _derived_mismatch_sql(self) -> str:
        t = "CAST(data AS TEXT)"
        return (
            f"SELECT idx FROM ledger_entries WHERE idx < ? AND NOT ("
            f"json_extract({t}, '$.kind') IS kind AND json_extract({t}, '$.actor') IS actor AND "
            f"json_extract({t}, '$.resource') IS resource AND json_extract({t}, '$.time') IS time"
            ") ORDER BY idx LIMIT ?")

    def _derived_mismatches(self, conn: Any, below: int, limit: int) -> list[int]:
        try:
            return super()._derived_mismatches(conn, below, limit)
        except sqlite3.OperationalError as exc:  # an entry that is not JSON: go row by row
            if "JSON" not in str(exc):
                raise
            return self._derived_mismatches_slow(conn, below, limit)

    def _is_missing_table(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)

    def close(self) -> None:
        super().close()
        if self._lock_fd is not None and not self._check_lock_pid():
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        self._lock_fd = None


class PostgresStore(Store):
    """PostgreSQL (psycopg 3): tables prefixed ``ledger_`` in the database of the URL."""

    placeholder: ClassVar[str] = "%s"
    backend: ClassVar[str] = "postgresql"

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.url = url

    def __repr__(self) -> str:
        safe = self.url.split("@", 1)[-1] if "@" in self.url else self.url
        return f"PostgresStore({safe!r})"

    def _connect(self, *, write: bool) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=not write)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return conn

    def _ddl(self) -> list[str]:
        text = 'TEXT COLLATE "C"'
        return [
            "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_head (id INTEGER PRIMARY KEY CHECK (id = 1), "
            "size BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_entries (idx BIGINT PRIMARY KEY, "
            f"leaf BYTEA NOT NULL, data BYTEA NOT NULL, kind {text} NOT NULL, "
            f"actor {text} NOT NULL, resource {text}, time {text} NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ledger_entries_resource ON ledger_entries (resource, idx)",
            "CREATE INDEX IF NOT EXISTS ledger_entries_actor ON ledger_entries (actor, idx)",
            "CREATE INDEX IF NOT EXISTS ledger_entries_time ON ledger_entries (time, idx)",
            "CREATE TABLE IF NOT EXISTS ledger_nodes (key BIGINT PRIMARY KEY, "
            "hash BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_checkpoints (size BIGINT PRIMARY KEY, "
            "note TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_cosignatures (size BIGINT NOT NULL, "
            "name TEXT NOT NULL, key_id BYTEA NOT NULL, line TEXT NOT NULL, "
            "PRIMARY KEY (size, name, key_id))",
            "CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'ledger tables are append-only'; END $$",
            *[f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
              "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
              for t in ("ledger_entries", "ledger_nodes", "ledger_checkpoints", "ledger_meta")],
            *[f"CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
              "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
              for t in ("ledger_entries", "ledger_nodes", "ledger_checkpoints", "ledger_meta")],
            "CREATE OR REPLACE FUNCTION ledger_entry_json(b BYTEA) RETURNS JSONB "
            "LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
            "RETURN convert_from(b, 'UTF8')::jsonb; "
            "EXCEPTION WHEN others THEN RETURN NULL; END $$",
        ]

    def _init_lock(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(727110331)")

    def _head_for_update(self) -> str:
        return "SELECT size FROM ledger_head WHERE id = 1 FOR UPDATE"

    def _begin_snapshot(self, conn: Any) -> None:
        from psycopg import IsolationLevel

        conn.autocommit = False
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True

    def _server_cursor(self, conn: Any, name: str) -> Any:
        return conn.cursor(name=name)

    def _derived_mismatch_sql(self) -> str:
        return (
            "SELECT idx FROM (SELECT idx, kind, actor, resource, time, "
            "ledger_entry_json(data) AS j FROM ledger_entries) e "
            "WHERE idx < %s AND (j IS NULL OR (j->>'kind') IS DISTINCT FROM kind "
            "OR (j->>'actor') IS DISTINCT FROM actor "
            "OR (j->>'resource') IS DISTINCT FROM resource "
            "OR (j->>'time') IS DISTINCT FROM time) ORDER BY idx LIMIT %s")

    def _is_missing_table(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UndefinedTable)


def open_store(location: str | os.PathLike[str], *, read_only: bool = False) -> Store:
    """Open a store: a ``postgresql://`` URL or the path of a SQLite file."""
    text = os.fspath(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, read_only=read_only)
    return SqliteStore(text, read_only=read_only)
