"""The ledger: one node's append-only, tamper-evident log of data transactions."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, overload

from ._checkpoint import Checkpoint
from ._errors import LedgerError, NoteError, ProofError, StoreError
from ._events import Event, format_time
from ._keys import SIG_ED25519, SignerKey, VerifierKey, check_key_name, load_or_create_signer
from ._merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    consistency_ranges,
    fold_range,
    inclusion_ranges,
    leaf_hash,
    perfect_nodes,
)
from ._note import Cosignature
from ._store import PostgresStore, Row, SqliteStore, Store
from ._verify import VerifyResult, verify_store

__all__ = ["Entry", "EntryRef", "Ledger", "ProvenEntry", "QueryResult"]

#: Where a node directory keeps its ledger.
LEDGER_SUBDIR = "ledger"
DB_NAME = "ledger.sqlite"
KEY_NAME = "node.key"
PUB_NAME = "node.pub"


@dataclass(frozen=True, slots=True)
class EntryRef:
    """What an append returns: the entry's index and leaf hash (the entry is durable)."""

    index: int
    leaf_hash: bytes


@dataclass(frozen=True)
class Entry:
    """A stored entry: its index, leaf hash and canonical bytes."""

    index: int
    leaf_hash: bytes
    data: bytes

    @cached_property
    def event(self) -> Event:
        """The entry parsed back into an :class:`Event` (strictly, against its schema)."""
        return Event.from_bytes(self.data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: index, leaf hash (base64) and the entry text (``data``)."""
        return {"index": self.index, "leaf_hash": base64.b64encode(self.leaf_hash).decode(),
                "data": self.data.decode("utf-8")}


@dataclass(frozen=True)
class ProvenEntry(Entry):
    """An entry with its inclusion proof in a checkpoint's tree."""

    proof: InclusionProof

    def verify(self, checkpoint: Checkpoint) -> None:
        """Check that this entry's bytes are in the tree of ``checkpoint`` (raises ProofError).

        The checkpoint's signatures are the caller's business (:meth:`QueryResult.verify`
        checks them).
        """
        if leaf_hash(self.data) != self.leaf_hash:
            raise ProofError(f"entry {self.index}: leaf hash does not match its bytes")
        if self.proof.index != self.index or self.proof.tree_size != checkpoint.size:
            raise ProofError(f"entry {self.index}: proof is for another index or tree size")
        self.proof.verify(self.leaf_hash, checkpoint.root)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: :meth:`Entry.to_dict` plus ``inclusion_proof``."""
        out = Entry.to_dict(self)
        out["inclusion_proof"] = self.proof.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProvenEntry:
        """Inverse of :meth:`to_dict` (raises ProofError when malformed)."""
        try:
            text = data["data"]
            leaf = base64.b64decode(data["leaf_hash"], validate=True)
            index = data["index"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofError(f"malformed proven entry: {exc}") from exc
        if not isinstance(text, str) or not isinstance(index, int):
            raise ProofError("malformed proven entry")
        return cls(index, leaf, text.encode("utf-8"),
                   InclusionProof.from_dict(data.get("inclusion_proof") or {}))


class QueryResult(Sequence[ProvenEntry]):
    """Entries that matched a query, each with its inclusion proof in :attr:`checkpoint`.

    A steward verifies it without trusting the operator: check the checkpoint with the
    node's public key (and the witnesses' cosignatures), then every proof
    (:meth:`verify`). What a proof cannot show is that *no other* entry matches; that is
    what full verification by an auditor (:meth:`Ledger.verify`) and the witnesses'
    consistency checks are for.
    """

    def __init__(self, checkpoint: Checkpoint, entries: Sequence[ProvenEntry]) -> None:
        self.checkpoint = checkpoint
        self.entries = tuple(entries)

    @overload
    def __getitem__(self, i: int) -> ProvenEntry: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[ProvenEntry]: ...
    def __getitem__(self, i: int | slice) -> ProvenEntry | Sequence[ProvenEntry]:
        return self.entries[i]

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"QueryResult({len(self.entries)} entries, tree size {self.checkpoint.size})"

    def verify(self, log_key: VerifierKey, witness_keys: Iterable[VerifierKey] = (),
               quorum: int = 0) -> None:
        """Verify the checkpoint (log signature, ``quorum`` cosignatures) and every proof.

        Raises
        ------
        NoteError
            When the checkpoint's signatures do not verify.
        ProofError
            When an entry is not proven to be in the checkpoint's tree.
        """
        self.checkpoint.verify_witnessed(log_key, witness_keys, quorum)
        for entry in self.entries:
            entry.verify(self.checkpoint)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"checkpoint": note, "entries": [...]}``."""
        return {"checkpoint": str(self.checkpoint),
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueryResult:
        """Inverse of :meth:`to_dict`."""
        cp = Checkpoint.parse(str(data.get("checkpoint", "")))
        return cls(cp, [ProvenEntry.from_dict(e) for e in data.get("entries", [])])


class WitnessLike(Protocol):
    """What :meth:`Ledger.collect_cosignatures` needs from a witness (local or remote)."""

    def latest(self, origin: str) -> Checkpoint | None:
        """The last checkpoint of ``origin`` it cosigned."""

    def cosign(self, checkpoint: Checkpoint | str, proof: ConsistencyProof | Sequence[bytes],
               *, old_size: int | None = None) -> Cosignature:
        """Cosign a checkpoint given a consistency proof from its last one."""


def _row(event: Event) -> Row:
    data = event.to_bytes()
    assert isinstance(event.time, str)
    return (data, leaf_hash(data), event.kind, event.actor, event.resource, event.time)


class Ledger:
    """A node's append-only Merkle log of data transactions (RFC 9162), with signed checkpoints.

    Open one with :meth:`open`. A ledger is thread-safe and may be opened by several
    processes at once: appends from all of them are serialised, and appends from the
    threads of one process are group-committed (one transaction and one fsync for all
    of the appends that arrived while the previous commit ran).

    Examples
    --------
    >>> with Ledger.open(node_dir, origin="hospital-a.example/ledger") as ledger:  # doctest: +SKIP
    ...     ref = ledger.append(Event(kind="access", actor="user:alice@idp", action="view",
    ...                               resource="dataset:lung-01", purpose="research:p7",
    ...                               outcome=Outcome.allow("grant g-12")))
    ...     cp = ledger.checkpoint()
    ...     proof = ledger.inclusion_proof(ref.index, cp.size)
    ...     verify_inclusion(ref.leaf_hash, ref.index, cp.size, proof, cp.root)
    """

    def __init__(self, store: Store, *, origin: str, verifier: VerifierKey,
                 signer: SignerKey | None, location: str) -> None:
        self._store = store
        self.origin = origin
        self.verifier = verifier
        self._signer = signer
        self.location = location

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, location: str | os.PathLike[str], *, origin: str | None = None,
             key_dir: str | os.PathLike[str] | None = None, read_only: bool = False) -> Ledger:
        """Open (creating on first use) the ledger of a node.

        Parameters
        ----------
        location
            A node directory (the ledger lives in ``<node-dir>/ledger/``: ``ledger.sqlite``,
            ``node.key``, ``node.pub``) or a ``postgresql://`` URL.
        origin
            The log's identity, e.g. ``"hospital-a.example/incisive/ledger"``: the first
            line of its checkpoints and the name of its key. Needed only on first open
            (a random ``incisive-lab.local/node-...`` otherwise); if given later, it must
            match.
        key_dir
            Where ``node.key``/``node.pub`` are (required with a PostgreSQL URL; default
            ``<node-dir>/ledger``). The key is generated on first open with mode 0600;
            the public key (C2SP verifier-key format) is written to ``node.pub``.
        read_only
            Open without the private key (only ``node.pub`` is needed); appends and new
            checkpoints are refused. For auditors and for verifying copies.

        Raises
        ------
        LedgerError
            When the location, key or stored format is unusable, or ``origin`` conflicts
            with what is stored.
        """
        text = os.fspath(location)
        store: Store
        if text.startswith(("postgresql://", "postgres://")):
            if key_dir is None:
                raise LedgerError("a PostgreSQL ledger needs key_dir (where node.key is kept)")
            kdir = Path(key_dir)
            store = PostgresStore(text, read_only=read_only)
        else:
            node_dir = Path(text)
            if node_dir.suffix in (".sqlite", ".db") or node_dir.is_file():
                raise LedgerError(f"{node_dir} is a file; give the node directory")
            kdir = Path(key_dir) if key_dir is not None else node_dir / LEDGER_SUBDIR
            if read_only and not (node_dir / LEDGER_SUBDIR / DB_NAME).exists():
                raise LedgerError(f"no ledger in {node_dir}")
            store = SqliteStore(node_dir / LEDGER_SUBDIR / DB_NAME, read_only=read_only)
        try:
            return cls._open_store(store, text, kdir, origin, read_only)
        except BaseException:
            store.close()
            raise

    @classmethod
    def _open_store(cls, store: Store, location: str, kdir: Path, origin: str | None,
                    read_only: bool) -> Ledger:
        if origin is not None:
            check_key_name(origin)
        meta = store._meta_if_present()
        stored_origin = meta.get("origin") if meta else None
        if origin is not None and stored_origin is not None and origin != stored_origin:
            raise LedgerError(f"this ledger's origin is {stored_origin!r}, not {origin!r}")
        key_path, pub_path = kdir / KEY_NAME, kdir / PUB_NAME
        signer: SignerKey | None = None
        name: str | None
        if read_only:
            if meta is None:
                raise LedgerError(f"no ledger at {location}")
            if pub_path.exists():
                verifier = VerifierKey.parse(pub_path.read_text(encoding="utf-8"))
            else:
                verifier = VerifierKey.parse(meta["log_key"])
            name = verifier.name
        else:
            name = stored_origin or origin
            if name is None and not key_path.exists():
                name = f"incisive-lab.local/node-{secrets.token_hex(6)}"
            signer = load_or_create_signer(key_path, pub_path, name, SIG_ED25519)
            verifier = signer.verifier
            name = signer.name
        store.initialise(None if read_only else verifier.name,
                         None if read_only else str(verifier))
        return cls(store, origin=verifier.name, verifier=verifier, signer=signer,
                   location=location)

    @property
    def public_key(self) -> str:
        """The node's verifier key (``name+id+key``), as published in ``node.pub``."""
        return str(self.verifier)

    @property
    def read_only(self) -> bool:
        """True when opened without the private key."""
        return self._signer is None

    def close(self) -> None:
        """Close the ledger's connections."""
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.origin!r}, {self._store!r})"

    # ------------------------------------------------------------------ appending
    def append(self, event: Event | Mapping[str, Any]) -> EntryRef:
        """Append one event; return its index and leaf hash once it is durable.

        A mapping is turned into an :class:`Event` first (:meth:`Event.from_dict`).
        """
        ev = event if isinstance(event, Event) else Event.from_dict(event)
        row = _row(ev)
        return EntryRef(self._store.append([row]), row[1])

    def append_many(self, events: Iterable[Event | Mapping[str, Any]]) -> list[EntryRef]:
        """Append events atomically (all or none), in order, in one transaction."""
        rows = [_row(e if isinstance(e, Event) else Event.from_dict(e)) for e in events]
        if not rows:
            return []
        first = self._store.append(rows)
        return [EntryRef(first + i, row[1]) for i, row in enumerate(rows)]

    def _append_rows(self, rows: Sequence[Row]) -> int:
        """Append pre-encoded rows (bulk loading in benchmarks and fixtures; unvalidated)."""
        return self._store.append(rows)

    @property
    def size(self) -> int:
        """Number of entries in the log."""
        return self._store.size()

    def __len__(self) -> int:
        return self.size

    # ------------------------------------------------------------------ reading
    def entry(self, index: int) -> Entry:
        """The entry at ``index``."""
        rows = self._store.entries(index, index + 1)
        if not rows:
            raise LedgerError(f"no entry {index} (the log has {self.size})")
        return Entry(*rows[0])

    def entries(self, start: int = 0, end: int | None = None, *,
                batch: int = 1000) -> Iterator[Entry]:
        """Entries ``start <= index < end`` (default: to the current size), in order."""
        stop = self.size if end is None else end
        pos = start
        while pos < stop:
            rows = self._store.entries(pos, min(stop, pos + batch))
            if not rows:
                return
            for row in rows:
                yield Entry(*row)
            pos = rows[-1][0] + 1

    def _range_hashes(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        parts = [perfect_nodes(a, b) for a, b in ranges]
        found = self._store.perfect_hashes([addr for p in parts for addr in p])
        return [fold_range([found[addr] for addr in p]) for p in parts]

    def _check_size(self, tree_size: int | None) -> int:
        size = self.size
        if tree_size is None:
            return size
        if not isinstance(tree_size, int) or not 0 <= tree_size <= size:
            raise LedgerError(f"tree size {tree_size} is outside 0..{size}")
        return tree_size

    def root(self, tree_size: int | None = None) -> bytes:
        """RFC 9162 root hash of the first ``tree_size`` entries (default: all)."""
        n = self._check_size(tree_size)
        if n == 0:
            return EMPTY_ROOT
        return self._range_hashes([(0, n)])[0]

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        """Proof that entry ``index`` is in the tree of ``tree_size`` entries (default: all).

        Costs one or two indexed reads of ``O(log n)`` stored nodes.
        """
        n = self._check_size(tree_size)
        if not isinstance(index, int) or not 0 <= index < n:
            raise LedgerError(f"index {index} is outside a tree of size {n}")
        return InclusionProof(index, n, tuple(self._range_hashes(inclusion_ranges(index, n))))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Proof that the tree of ``new_size`` entries (default: all) extends ``old_size``."""
        n = self._check_size(new_size)
        if not isinstance(old_size, int) or not 0 <= old_size <= n:
            raise LedgerError(f"old size {old_size} is outside 0..{n}")
        return ConsistencyProof(old_size, n,
                                tuple(self._range_hashes(consistency_ranges(old_size, n))))

    def _proofs(self, indices: Sequence[int], n: int) -> list[InclusionProof]:
        """Inclusion proofs for many entries with one batched read."""
        per = [inclusion_ranges(i, n) for i in indices]
        parts = {r: perfect_nodes(*r) for rs in per for r in rs}
        found = self._store.perfect_hashes(list({a for p in parts.values() for a in p}))
        hashes = {r: fold_range([found[a] for a in p]) for r, p in parts.items()}
        return [InclusionProof(i, n, tuple(hashes[r] for r in rs)) for i, rs in zip(indices, per,
                                                                                  strict=True)]

    # ------------------------------------------------------------------ checkpoints
    def _with_cosignatures(self, size: int, note: str) -> Checkpoint:
        cp = Checkpoint.parse(note)
        for line in self._store.cosignature_lines(size):
            cp = cp.with_signature(Cosignature.parse(line))
        return cp

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest stored checkpoint, with the cosignatures collected for it."""
        row = self._store.latest_checkpoint_note()
        return None if row is None else self._with_cosignatures(*row)

    def checkpoint_at(self, size: int) -> Checkpoint | None:
        """The stored checkpoint of exactly ``size`` entries, if one was made."""
        rows = self._store.checkpoint_notes(size)
        return self._with_cosignatures(*rows[0]) if rows else None

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first (with cosignatures)."""
        return [self._with_cosignatures(s, n) for s, n in self._store.checkpoint_notes()]

    def checkpoint(self) -> Checkpoint:
        """Sign (and store) a checkpoint of the current tree; reuse it if the size is unchanged.

        Returns
        -------
        Checkpoint
            ``str()`` of it is the C2SP signed note to publish.
        """
        latest = self.latest_checkpoint()
        size = self.size
        if latest is not None and latest.size == size:
            return latest
        if self._signer is None:
            raise LedgerError("the ledger was opened read-only: cannot sign a checkpoint")
        cp = Checkpoint(self.origin, size, self.root(size)).signed(self._signer)
        self._store.put_checkpoint(size, cp.note)
        stored = self.checkpoint_at(size)
        assert stored is not None
        return stored

    def add_cosignature(self, checkpoint: Checkpoint | str, cosignature: Cosignature | str,
                        witness_key: VerifierKey | None = None) -> Checkpoint:
        """Store a witness's cosignature of one of this log's stored checkpoints.

        If ``witness_key`` is given the cosignature is verified first.

        Returns
        -------
        Checkpoint
            The stored checkpoint with every cosignature collected so far.
        """
        cp = Checkpoint.coerce(checkpoint)
        cos = cosignature if isinstance(cosignature, Cosignature) else Cosignature.parse(
            cosignature)
        stored = self.checkpoint_at(cp.size)
        if stored is None or stored.body != cp.body:
            raise LedgerError(f"no stored checkpoint of this log matches the one cosigned "
                              f"(size {cp.size})")
        if witness_key is not None:
            cos.verify(cp.body, witness_key)
        self._store.put_cosignature(cp.size, cos.name, cos.key_id, cos.line)
        result = self.checkpoint_at(cp.size)
        assert result is not None
        return result

    def collect_cosignatures(self, witnesses: Iterable[WitnessLike]
                             ) -> tuple[Checkpoint, list[LedgerError]]:
        """Ask each witness to cosign the current checkpoint; store what they return.

        Each witness gets a consistency proof from the last checkpoint it cosigned.

        Returns
        -------
        (Checkpoint, list of errors)
            The checkpoint with all cosignatures, and each witness's refusal or failure.
        """
        cp = self.checkpoint()
        errors: list[LedgerError] = []
        for witness in witnesses:
            try:
                known = witness.latest(self.origin)
                old = 0 if known is None else known.size
                if old > cp.size:
                    proof = ConsistencyProof(old, cp.size, ())
                else:
                    proof = self.consistency_proof(old, cp.size)
                cos = witness.cosign(cp, proof, old_size=old)
                cp = self.add_cosignature(cp, cos)
            except LedgerError as exc:
                errors.append(exc)
        return cp, errors

    # ------------------------------------------------------------------ queries
    def query(self, *, resource: str | None = None, actor: str | None = None,
              kind: str | None = None, since: str | datetime | None = None,
              until: str | datetime | None = None, limit: int | None = None,
              after: int = -1, checkpoint: Checkpoint | None = None) -> QueryResult:
        """Entries matching every given filter, each with its inclusion proof.

        Parameters
        ----------
        resource
            Matches that resource and everything below it (``dataset:lung-01`` matches
            ``dataset:lung-01/series:1.2.3``): the steward's "who accessed my dataset".
        actor, kind
            Exact matches.
        since, until
            Time window ``since <= time < until`` (RFC 3339 or aware datetimes).
        limit, after
            Paging: at most ``limit`` entries with index greater than ``after``.
        checkpoint
            Prove against this stored checkpoint; default: the current one
            (:meth:`checkpoint`), or the latest stored one when opened read-only.

        Returns
        -------
        QueryResult
            The checkpoint and the proven entries, oldest first.
        """
        if checkpoint is None:
            checkpoint = self.checkpoint() if not self.read_only else self.latest_checkpoint()
            if checkpoint is None:
                raise LedgerError("no checkpoint to prove against (the ledger is read-only)")
        lo = None if since is None else format_time(since)
        hi = None if until is None else format_time(until)
        rows = self._store.query(resource=resource, actor=actor, kind=kind, since=lo, until=hi,
                                 below=checkpoint.size, after=after, limit=limit)
        proofs = self._proofs([r[0] for r in rows], checkpoint.size) if rows else []
        out = []
        for (idx, leaf, data), proof in zip(rows, proofs, strict=True):
            entry = ProvenEntry(idx, leaf, data, proof)
            ev = entry.event
            if ((resource is not None and ev.resource != resource
                 and not str(ev.resource).startswith(resource + "/"))
                    or (actor is not None and ev.actor != actor)
                    or (kind is not None and ev.kind != kind)
                    or (lo is not None and str(ev.time) < lo)
                    or (hi is not None and str(ev.time) >= hi)):
                raise StoreError(f"entry {idx} does not match its query columns (run verify)")
            out.append(entry)
        return QueryResult(checkpoint, out)

    # ------------------------------------------------------------------ verification
    def verify(self, *, trusted: Iterable[Checkpoint | str] = (),
               log_key: VerifierKey | str | None = None, max_problems: int = 100) -> VerifyResult:
        """Recompute everything and report the first bad place.

        Parameters
        ----------
        trusted
            Checkpoints obtained outside this node (from a witness, a steward, an earlier
            audit): their signatures are checked and their roots recomputed, which
            detects a log rewritten together with its stored checkpoints.
        log_key
            The node key to check signatures with (default: ``node.pub``); pass the key
            you pinned when you do not trust the node's files.
        max_problems
            Stop recording after this many problems.

        Returns
        -------
        VerifyResult
            True-ish when intact; otherwise ``first_bad_index`` and ``problems``.
        """
        key = VerifierKey.parse(log_key) if isinstance(log_key, str) else (log_key or
                                                                          self.verifier)
        cps = []
        for item in trusted:
            cp = Checkpoint.coerce(item)
            try:
                cp.verify(key)
            except NoteError as exc:
                raise LedgerError(f"a trusted checkpoint does not verify: {exc}") from exc
            cps.append(cp)
        return verify_store(self._store, origin=key.name, log_key=key, trusted=cps,
                            max_problems=max_problems)
