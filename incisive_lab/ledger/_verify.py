"""Full verification of a stored ledger: recompute everything, name the first bad place.

One streaming pass over a consistent snapshot:

1. every entry's leaf hash is recomputed from its bytes and compared with the stored one;
2. every perfect internal node is recomputed from the entries and compared with the
   stored node (nodes are stored in completion order, so the two streams advance
   together and memory stays ``O(log n)``);
3. the root at every stored checkpoint's size (and at every checkpoint the caller
   trusts, e.g. one a witness cosigned) is recomputed and compared with the signed root,
   and each checkpoint's signature is checked with the node's public key;
4. the query columns (kind, actor, resource, time) are re-derived from the entry bytes
   (in SQL, so it stays fast), and the head, the entry count and the node count must agree.

A problem caused by an earlier one (the nodes above a changed entry) is not reported
again, so the first problem is the place to look.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._checkpoint import Checkpoint
from ._errors import NoteError
from ._keys import VerifierKey
from ._merkle import fold_range, internal_node_count
from ._store import FORMAT, Store

__all__ = ["Problem", "VerifyResult", "verify_store"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing verification found wrong.

    Attributes
    ----------
    index
        The first entry index concerned (``None`` when no entry is: e.g. a bad signature
        on a checkpoint beyond the log, or metadata).
    where
        ``"entry"``, ``"node"``, ``"checkpoint"``, ``"head"``, ``"index"`` (query
        columns), ``"meta"``.
    message
        What is wrong, for people.
    """

    index: int | None
    where: str
    message: str

    def __str__(self) -> str:
        at = f"entry {self.index}: " if self.index is not None else ""
        return f"[{self.where}] {at}{self.message}"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`Ledger.verify`; true when the ledger is intact.

    Attributes
    ----------
    ok
        True when no problem was found.
    size
        Number of entries the head records.
    entries_checked, nodes_checked, checkpoints_checked
        What was recomputed.
    root
        Root hash of the entries as stored (``None`` when the tree could not be computed).
    first_bad_index
        Smallest entry index named by a problem (``None`` if none is).
    problems
        Every problem found (at most ``max_problems``), in the order found.
    """

    ok: bool
    size: int
    entries_checked: int
    nodes_checked: int
    checkpoints_checked: int
    root: bytes | None
    first_bad_index: int | None
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        """One paragraph for people (the CLI prints it)."""
        if self.ok:
            return (f"ledger OK: {self.entries_checked} entries, {self.nodes_checked} nodes and "
                    f"{self.checkpoints_checked} checkpoints recomputed")
        first = (f"first bad entry: index {self.first_bad_index}"
                 if self.first_bad_index is not None else "no single entry is to blame")
        lines = [f"ledger BAD: {len(self.problems)} problem(s); {first}"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class _Problems:
    def __init__(self, limit: int) -> None:
        self.items: list[Problem] = []
        self.limit = limit
        self.first: int | None = None
        self.last_entry = -1  # highest entry index named so far (cascade suppression)

    def add(self, index: int | None, where: str, message: str, *, tree: bool = False) -> None:
        if index is not None:
            self.first = index if self.first is None else min(self.first, index)
            if tree:
                self.last_entry = max(self.last_entry, index)
        if len(self.items) < self.limit:
            self.items.append(Problem(index, where, message))


def _coerce(idx: int, data: object, leaf: object, add: Any) -> tuple[bytes, bytes]:
    """Values of the wrong SQL type (SQLite stores whatever it is given): name and adapt."""
    out = []
    for name, value in (("data", data), ("leaf hash", leaf)):
        if isinstance(value, bytes | bytearray | memoryview):
            out.append(bytes(value))
        else:
            add(idx, "entry", f"stored {name} is a {type(value).__name__}, not bytes", tree=True)
            out.append(value.encode("utf-8", "surrogateescape") if isinstance(value, str)
                       else repr(value).encode())
    return out[0], out[1]


def verify_store(store: Store, *, origin: str, log_key: VerifierKey | None,
                 trusted: Iterable[Checkpoint] = (), max_problems: int = 100,
                 batch: int = 20000) -> VerifyResult:
    """Verify a store; see the module docstring. Used by :meth:`Ledger.verify`."""
    probs = _Problems(max_problems)
    add = probs.add
    sha = hashlib.sha256
    with store.snapshot() as snap:
        meta = snap.meta()
        if meta.get("format") != FORMAT:
            add(None, "meta", f"unknown format {meta.get('format')!r}")
        if meta.get("origin") != origin:
            add(None, "meta", f"origin is {meta.get('origin')!r}, expected {origin!r}")
        if log_key is not None and meta.get("log_key") != str(log_key):
            add(None, "meta", f"stored log key {meta.get('log_key')!r} is not the node key "
                              f"{log_key}")
        head = snap.head()
        if head is None:
            add(None, "head", "the head row is missing")
        count, _ = snap.entry_bounds()

        # checkpoints to recompute: size -> [(root, label)]
        targets: dict[int, list[tuple[bytes, str]]] = {}
        n_checkpoints = 0
        for size, note in snap.checkpoints():
            n_checkpoints += 1
            label = f"stored checkpoint at size {size}"
            try:
                cp = Checkpoint.parse(note)
                if cp.size != size:
                    raise NoteError(f"its note says size {cp.size}")
                if log_key is not None:
                    cp.verify(log_key)
                elif cp.origin != origin:
                    raise NoteError(f"origin {cp.origin!r}")
            except NoteError as exc:
                add(min(size, count), "checkpoint", f"{label} is invalid: {exc}")
                continue
            targets.setdefault(size, []).append((cp.root, label))
        for cp in trusted:
            n_checkpoints += 1
            targets.setdefault(cp.size, []).append((cp.root, f"trusted checkpoint at size "
                                                               f"{cp.size}"))
        columns_check = snap.derived_mismatches(count if head is None else head, max_problems)
        later: list[tuple[int, int, str, str]] = []  # (start, end, where, message)

        def explained(start: int, end: int) -> bool:
            """Is a problem already named in entries start..end (a cascade, not news)?"""
            return probs.last_entry >= start

        def tree_problem(start: int, end: int, where: str, message: str) -> None:
            """Record a node/checkpoint problem once the query-column check is known."""
            probs.last_entry = max(probs.last_entry, start)
            later.append((start, end, where, message))

        sizes = sorted(targets)
        target_iter = iter(sizes)
        next_target = next(target_iter, None)
        while next_target == 0:
            for root, label in targets[0]:
                if root != sha(b"").digest():
                    add(0, "checkpoint", f"{label}: root is not the empty tree's")
            next_target = next(target_iter, None)
        last_good = 0

        nodes = itertools.chain.from_iterable(snap.stream_nodes())
        stack: list[bytes] = []
        expected = 0
        next_key = 0
        nodes_checked = 0
        broken = False
        for rows in snap.stream_entries(batch):
            for idx, leaf, data in rows:
                if type(data) is not bytes or type(leaf) is not bytes:
                    data, leaf = _coerce(idx, data, leaf, add)
                if idx != expected:
                    add(expected, "entry", f"entr{'y' if idx - expected == 1 else 'ies'} "
                        f"{expected}{'' if idx - expected == 1 else f'..{idx - 1}'} missing",
                        tree=True)
                    broken = True
                h = sha(b"\x00" + data).digest()
                if h != leaf:
                    add(idx, "entry", "content does not match its stored leaf hash", tree=True)
                n = expected = idx + 1
                if broken:
                    continue
                merges = (n & -n).bit_length() - 1
                for level in range(1, merges + 1):
                    h = sha(b"\x01" + stack.pop() + h).digest()
                    row = next(nodes, None)
                    if row is None or row[0] != next_key:
                        add(n - (1 << level), "node", f"stored tree node for entries "
                            f"{n - (1 << level)}..{idx} is missing", tree=True)
                        broken = True
                        break
                    nodes_checked += 1
                    next_key += 1
                    if row[1] != h:  # (a str never equals)
                        start = n - (1 << level)
                        if not explained(start, idx):
                            tree_problem(start, idx, "node", f"stored tree node for entries "
                                         f"{start}..{idx} does not match the entries")
                if broken:
                    continue
                stack.append(h)
                if n == next_target:
                    root = fold_range(stack)
                    if all(want == root for want, _ in targets[n]):
                        last_good = n
                    elif not explained(last_good, n - 1):
                        for want, label in targets[n]:
                            if want != root:
                                tree_problem(last_good, n - 1, "checkpoint", f"{label}: the "
                                             "entries differ from what was signed (the change "
                                             f"lies in entries {last_good}..{n - 1})")
                    next_target = next(target_iter, None)

        known = columns_check()  # ascending
        for idx in known:
            add(idx, "index", "query columns (kind/actor/resource/time) do not match the "
                              "entry's data")
        for start, end, where, message in later:  # drop cascades of a bad query column
            k = bisect.bisect_left(known, start)
            if not (k < len(known) and known[k] <= end):
                add(start, where, message)

        stored = expected
        root_now = fold_range(stack) if stack and not broken else (
            sha(b"").digest() if stored == 0 else None)
        if head is not None and head != stored:
            if head > stored:
                add(stored, "entry", f"log truncated: the head records {head} entries but only "
                                     f"{stored} are stored")
            else:
                add(head, "head", f"{stored - head} entries are stored beyond the head "
                                  f"({head})")
        while next_target is not None:
            if next_target > stored or not broken:
                for _, label in targets[next_target]:
                    add(stored, "checkpoint", f"{label} covers {next_target} entries but only "
                        f"{stored} are stored: the log was truncated or rolled back")
            next_target = next(target_iter, None)
        extra = sum(1 for _ in nodes)
        if not broken and (extra or next_key != internal_node_count(stored)):
            add(None, "node", f"{extra} stored tree node(s) do not belong to a tree of "
                              f"{stored} entries")
        for size, line in snap.cosignatures():
            if size not in targets:
                add(None, "checkpoint", f"cosignature {line[:40]!r}... is for size {size}, "
                                        "which has no stored checkpoint")

    return VerifyResult(ok=not probs.items, size=head if head is not None else stored,
                        entries_checked=stored, nodes_checked=nodes_checked,
                        checkpoints_checked=n_checkpoints, root=root_now,
                        first_bad_index=probs.first, problems=tuple(probs.items))
