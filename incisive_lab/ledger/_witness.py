"""Witnesses: cosign other nodes' checkpoints only when they extend what was seen before.

A witness keeps, for each log it trusts (by the log's verifier key), the last checkpoint
it cosigned. Asked to cosign a new checkpoint with a consistency proof from that one, it

* checks the log's signature;
* refuses a checkpoint smaller than the one it cosigned (**rollback**);
* refuses one of the same size with another root, or a larger one whose consistency
  proof fails (**fork**: the log rewrote history);
* otherwise records the new checkpoint (durably, before answering) and returns a
  C2SP tlog-cosignature.

A refusal raises :class:`WitnessRefusal` carrying :class:`Evidence`: both checkpoints,
each signed by the log (so the log cannot deny them), and the proof it offered. The
evidence is also written to ``<witness dir>/evidence/``. Every node runs a witness and
witnesses the others, so no node can show different histories to different parties.

State directory layout::

    witness.key  witness.pub     cosigning key (type 0x04), generated on first open
    logs                         trusted log verifier keys, one per line
    state/<id>.note              last cosigned checkpoint per log (log signature only)
    evidence/*.json              refusals with their evidence
    .lock                        serialises witnesses in several processes
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checkpoint import Checkpoint
from ._errors import LedgerError, NoteError, ProofError
from ._events import Event, Outcome, format_time
from ._keys import SIG_COSIGNATURE, VerifierKey, check_key_name, load_or_create_signer
from ._merkle import ConsistencyProof, verify_consistency
from ._note import Cosignature, cosign

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["REFUSALS", "Evidence", "Witness", "WitnessRefusal"]

#: Kinds of refusal. ``fork`` and ``rollback`` are misbehaviour by the log; ``conflict``
#: means the log's idea of the witness's state is stale (retry with a proof from
#: :meth:`Witness.latest`); the others are bad requests.
REFUSALS = ("fork", "rollback", "conflict", "bad-signature", "unknown-log", "malformed")


@dataclass(frozen=True)
class Evidence:
    """What a witness saw when it refused to cosign.

    Attributes
    ----------
    kind
        One of :data:`REFUSALS`.
    origin
        The log concerned (``None`` if the checkpoint could not be parsed).
    witness
        The refusing witness's key name.
    time
        When (RFC 3339, UTC).
    message
        Why, for people.
    cosigned
        The last checkpoint of this log the witness cosigned, as a note signed by the log.
    presented
        The checkpoint it was asked to cosign, as presented.
    proof
        The consistency proof offered (base64 hashes), if any.
    old_size
        The size the log said the witness was at, if it said.
    """

    kind: str
    origin: str | None
    witness: str
    time: str
    message: str
    cosigned: str | None = None
    presented: str | None = None
    proof: tuple[str, ...] = ()
    old_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["proof"] = list(self.proof)
        return out

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        """Inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["proof"] = tuple(fields.get("proof") or ())
        return cls(**fields)

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of :meth:`to_json`, to reference the evidence from elsewhere."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def confirm(self, log_key: VerifierKey) -> str:
        """Re-check fork or rollback evidence independently of the witness.

        Both checkpoints must carry valid signatures by ``log_key``; for a fork the
        roots must differ at the same size, or the offered proof must fail.

        Returns
        -------
        str
            A one-line statement of what the evidence proves.

        Raises
        ------
        LedgerError
            When the evidence does not hold up.
        """
        if self.kind not in ("fork", "rollback") or not self.cosigned or not self.presented:
            raise LedgerError(f"{self.kind!r} evidence does not show misbehaviour by the log")
        old, new = Checkpoint.parse(self.cosigned), Checkpoint.parse(self.presented)
        old.verify(log_key)
        new.verify(log_key)
        if self.kind == "rollback":
            if new.size >= old.size:
                raise LedgerError("rollback evidence: the presented tree is not smaller")
            return (f"{log_key.name} signed size {old.size} and later presented size "
                    f"{new.size}")
        if new.size == old.size:
            if new.root == old.root:
                raise LedgerError("fork evidence: the roots are equal")
            return f"{log_key.name} signed two different trees of size {new.size}"
        hashes = [base64.b64decode(h) for h in self.proof]
        try:
            verify_consistency(old.size, new.size, old.root, new.root, hashes)
        except ProofError as exc:
            return (f"{log_key.name} signed size {old.size} and size {new.size} but could "
                    f"not prove the second extends the first ({exc})")
        raise LedgerError("fork evidence: the offered proof verifies after all")


class WitnessRefusal(LedgerError):
    """A witness refused to cosign; :attr:`evidence` says why and holds the signed notes."""

    def __init__(self, evidence: Evidence) -> None:
        super().__init__(f"witness {evidence.witness} refused to cosign "
                         f"{evidence.origin or 'a checkpoint'}: {evidence.kind}: "
                         f"{evidence.message}")
        self.evidence = evidence

    @property
    def kind(self) -> str:
        """The refusal kind (:data:`REFUSALS`)."""
        return self.evidence.kind


def _origin_id(origin: str) -> str:
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()[:24]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Witness:
    """A witness with its state in a directory (see the module docstring).

    Examples
    --------
    >>> w = Witness.open(tmp / "witness", name="hospital-b.example/witness")  # doctest: +SKIP
    >>> w.trust(ledger_a.public_key)                                         # doctest: +SKIP
    >>> cp, refusals = ledger_a.collect_cosignatures([w])                    # doctest: +SKIP
    """

    def __init__(self, directory: Path, *, name: str | None, record_to: Ledger | None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "state").mkdir(exist_ok=True)
        (directory / "evidence").mkdir(exist_ok=True)
        key_path, pub_path = directory / "witness.key", directory / "witness.pub"
        if name is None and not key_path.exists():
            name = f"incisive-lab.local/witness-{secrets.token_hex(6)}"
        self._signer = load_or_create_signer(key_path, pub_path, name, SIG_COSIGNATURE)
        self._thread_lock = threading.Lock()
        self._record_to = record_to

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, name: str | None = None,
             record_to: Ledger | None = None) -> Witness:
        """Open (creating on first use) a witness.

        Parameters
        ----------
        directory
            Its state directory (a node keeps it at ``<node-dir>/ledger/witness``).
        name
            Its key name on first open, e.g. ``"hospital-b.example/witness"``; must match
            afterwards if given.
        record_to
            A ledger (normally the witnessing node's own) where each cosignature and
            refusal is appended as a ``witness`` event.
        """
        if name is not None:
            check_key_name(name)
        return cls(Path(directory), name=name, record_to=record_to)

    @property
    def name(self) -> str:
        """The witness's key name (the name on its cosignature lines)."""
        return self._signer.name

    @property
    def verifier(self) -> VerifierKey:
        """The witness's public key (type 0x04)."""
        return self._signer.verifier

    @property
    def public_key(self) -> str:
        """The witness's verifier key text, as in ``witness.pub``."""
        return str(self._signer.verifier)

    # ------------------------------------------------------------------ trust
    def trusted_logs(self) -> dict[str, list[VerifierKey]]:
        """Trusted log keys by origin."""
        path = self.directory / "logs"
        out: dict[str, list[VerifierKey]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    key = VerifierKey.parse(line)
                    out.setdefault(key.name, []).append(key)
        return out

    def trust(self, log_key: VerifierKey | str) -> VerifierKey:
        """Trust a log's key (its ``node.pub``); the key's name is the log's origin."""
        key = VerifierKey.parse(log_key) if isinstance(log_key, str) else log_key
        if key.sig_type != 0x01:
            raise NoteError("a log key has signature type 0x01 (this looks like a witness key)")
        with self._locked():
            known = self.trusted_logs()
            if key not in known.get(key.name, []):
                path = self.directory / "logs"
                old = path.read_text(encoding="utf-8") if path.exists() else ""
                _write_atomic(path, old + str(key) + "\n")
        return key

    # ------------------------------------------------------------------ state
    def latest(self, origin: str) -> Checkpoint | None:
        """The last checkpoint of ``origin`` this witness cosigned (log signature only)."""
        path = self.directory / "state" / f"{_origin_id(origin)}.note"
        if not path.exists():
            return None
        cp = Checkpoint.parse(path.read_text(encoding="utf-8"))
        if cp.origin != origin:
            raise LedgerError(f"witness state file {path} is for {cp.origin!r}")
        return cp

    def evidence(self) -> list[Evidence]:
        """Every refusal recorded, oldest first."""
        out = []
        for path in sorted((self.directory / "evidence").glob("*.json")):
            out.append(Evidence.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ cosigning
    def _refuse(self, kind: str, message: str, *, origin: str | None,
                cosigned: Checkpoint | None = None, presented: str | None = None,
                proof: Sequence[bytes] = (), old_size: int | None = None) -> WitnessRefusal:
        ev = Evidence(kind=kind, origin=origin, witness=self.name, time=format_time(None),
                      message=message, cosigned=None if cosigned is None else cosigned.note,
                      presented=presented,
                      proof=tuple(base64.b64encode(h).decode() for h in proof),
                      old_size=old_size)
        if kind not in ("conflict", "unknown-log"):
            stamp = ev.time.replace(":", "").replace("-", "").replace(".", "")
            path = self.directory / "evidence" / (
                f"{stamp}-{kind}-{_origin_id(origin or '-')[:12]}.json")
            _write_atomic(path, ev.to_json() + "\n")
        self._record("refuse", origin, None, ev)
        return WitnessRefusal(ev)

    def _record(self, action: str, origin: str | None, cp: Checkpoint | None,
                ev: Evidence | None) -> None:
        if self._record_to is None or origin is None:
            return
        details: dict[str, Any] = {"origin": origin}
        if cp is not None:
            details.update(size=cp.size, root=base64.b64encode(cp.root).decode())
        if ev is not None:
            details.update(refusal=ev.kind, evidence_sha256=ev.sha256)
        outcome = Outcome.allow("consistent") if ev is None else Outcome.deny(ev.message)
        self._record_to.append(Event(kind="witness", actor=f"witness:{self.name}",
                                     action=action, resource=f"log:{origin}",
                                     outcome=outcome, details=details))

    def cosign(self, checkpoint: Checkpoint | str, proof: ConsistencyProof | Sequence[bytes],
               *, old_size: int | None = None) -> Cosignature:
        """Cosign ``checkpoint`` if it consistently extends the last one cosigned.

        Parameters
        ----------
        checkpoint
            The log's signed checkpoint (note text or :class:`Checkpoint`).
        proof
            Consistency proof from :meth:`latest` ``(origin).size`` to the checkpoint's
            size (empty the first time).
        old_size
            The size the log believes this witness is at; a mismatch is a ``conflict``
            (retry with a fresh proof), not a misbehaviour.

        Returns
        -------
        Cosignature
            Add it to the checkpoint (:meth:`Ledger.add_cosignature`).

        Raises
        ------
        WitnessRefusal
            With :class:`Evidence`; see the module docstring.
        """
        presented = str(checkpoint)
        try:
            cp = Checkpoint.coerce(checkpoint)
        except NoteError as exc:
            raise self._refuse("malformed", str(exc), origin=None, presented=presented) from None
        keys = self.trusted_logs().get(cp.origin)
        if not keys:
            raise self._refuse("unknown-log", f"{cp.origin!r} is not a log this witness trusts",
                               origin=cp.origin, presented=presented)
        errors = []
        for key in keys:
            try:
                cp.verify(key)
                break
            except NoteError as exc:
                errors.append(str(exc))
        else:
            raise self._refuse("bad-signature", "; ".join(errors), origin=cp.origin,
                               presented=presented)
        if isinstance(proof, ConsistencyProof):
            hashes = list(proof.hashes)
            if proof.new_size != cp.size:
                raise self._refuse("malformed", f"the proof is for size {proof.new_size}, the "
                                   f"checkpoint has size {cp.size}", origin=cp.origin,
                                   presented=presented, proof=hashes)
            if old_size is None:
                old_size = proof.old_size
        else:
            hashes = list(proof)
        with self._locked():
            prev = self.latest(cp.origin)
            prev_size = 0 if prev is None else prev.size
            if old_size is not None and old_size != prev_size:
                raise self._refuse("conflict", f"this witness is at size {prev_size}, not "
                                   f"{old_size}; send a proof from size {prev_size}",
                                   origin=cp.origin, cosigned=prev, presented=presented,
                                   proof=hashes, old_size=old_size)
            if prev is not None:
                if cp.size < prev.size:
                    raise self._refuse("rollback", f"the log signed size {prev.size} before; "
                                       f"now it presents size {cp.size}", origin=cp.origin,
                                       cosigned=prev, presented=presented, proof=hashes,
                                       old_size=old_size)
                if cp.size == prev.size and cp.root != prev.root:
                    raise self._refuse("fork", f"two different roots for size {cp.size}",
                                       origin=cp.origin, cosigned=prev, presented=presented,
                                       proof=hashes, old_size=old_size)
                if cp.size > prev.size > 0 and not hashes:
                    raise self._refuse("malformed", f"a consistency proof from size {prev.size} "
                                       "is needed", origin=cp.origin, presented=presented,
                                       old_size=old_size)
                if cp.size > prev.size:
                    try:
                        verify_consistency(prev.size, cp.size, prev.root, cp.root, hashes)
                    except ProofError as exc:
                        raise self._refuse(
                            "fork", f"size {cp.size} is not proven to extend the cosigned size "
                            f"{prev.size}: {exc}", origin=cp.origin, cosigned=prev,
                            presented=presented, proof=hashes, old_size=old_size) from None
            elif hashes and cp.size > 0:
                raise self._refuse("malformed", "the first checkpoint seen needs no proof",
                                   origin=cp.origin, presented=presented, proof=hashes)
            log_sigs = [s for s in cp.signatures if any(s.matches(k) for k in keys)]
            record = Checkpoint(cp.origin, cp.size, cp.root, cp.extensions, tuple(log_sigs))
            if prev is None or cp.size > prev.size:
                _write_atomic(self.directory / "state" / f"{_origin_id(cp.origin)}.note",
                              record.note)
            cos = cosign(cp.body, self._signer)
        self._record("cosign", cp.origin, cp, None)
        return cos
