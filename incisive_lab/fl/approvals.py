"""Which federated task code a node's steward approved, by hash.

A node runs only task code whose SHA-256 (:attr:`incisive_lab.fl.task.TaskCode.sha256`) its
steward approved — the code is reviewed once, then pinned: any change to any file is a new
hash and needs a new approval (Fed-BioMed's training-plan approval works the same way).
Approvals are kept in ``<node-dir>/fl-approvals.json`` (written atomically under a lock)
and every approval and revocation is a ``task`` entry in the node's ledger, written before
the file changes: a crash in between leaves an audited approval that did not take effect,
never an unaudited one.

Example
-------
>>> approvals = TaskApprovals(node_dir)                              # doctest: +SKIP
>>> approvals.approve(builtin("mg-lesion"), steward="steward@hospital-a.example")  # doctest: +SKIP
>>> approvals.is_approved(builtin("mg-lesion").sha256)               # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from incisive_lab._files import write_atomic
from incisive_lab.errors import IncisiveLabError

if TYPE_CHECKING:
    from incisive_lab.fl.task import TaskCode
    from incisive_lab.ledger import Ledger

__all__ = ["Approval", "ApprovalError", "TaskApprovals"]

FILE_NAME = "fl-approvals.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ApprovalError(IncisiveLabError):
    """An approval step that cannot be taken (the message says why)."""


@dataclass(frozen=True)
class Approval:
    """One approved task: its hash, name and version, who approved it and when."""

    sha256: str
    name: str
    version: str
    steward: str
    approved_at: str

    def to_json(self) -> dict[str, str]:
        """A JSON-ready view."""
        return asdict(self)


def _check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ApprovalError(f"task hash {sha256!r}: 64 lowercase hexadecimal characters are needed")
    return sha256


def _check_steward(steward: str) -> str:
    if not isinstance(steward, str) or not steward.strip():
        raise ApprovalError("steward: the steward's account id is needed (it goes to the ledger)")
    return steward.strip()


class TaskApprovals:
    """The task approvals of one node.

    Parameters
    ----------
    node_dir
        The node directory (it must be a node: ``objects/`` exists).
    ledger
        The node's open ledger (default: :meth:`incisive_lab.ledger.Ledger.open` on
        ``node_dir`` for each change).
    """

    def __init__(self, node_dir: str | os.PathLike[str], *, ledger: Ledger | None = None) -> None:
        self.node_dir = Path(node_dir)
        if not (self.node_dir / "objects").is_dir():
            raise ApprovalError(f"node dir {self.node_dir}: not a node (no objects/; run incisive-lab ingest first)")
        self.path = self.node_dir / FILE_NAME
        self._ledger = ledger

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict[str, Approval]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ApprovalError(f"{self.path}: unreadable approvals file ({exc}); refusing every task") from None
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("approvals"), list):
            raise ApprovalError(f"{self.path}: not an approvals file (version 1); refusing every task")
        out = {}
        for item in data["approvals"]:
            a = Approval(**{k: str(item[k]) for k in ("sha256", "name", "version", "steward", "approved_at")})
            out[_check_sha(a.sha256)] = a
        return out

    def is_approved(self, sha256: str) -> bool:
        """Whether task code with this hash is approved here (an unreadable file: no)."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            return False
        return sha256 in self._read()

    def get(self, sha256: str) -> Approval | None:
        """The approval of this hash, if any."""
        return self._read().get(_check_sha(sha256))

    def list(self) -> list[Approval]:
        """Every approval, oldest first."""
        return sorted(self._read().values(), key=lambda a: (a.approved_at, a.sha256))

    # ------------------------------------------------------------------ changing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.node_dir / (FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, approvals: dict[str, Approval]) -> None:
        body = json.dumps({"version": 1, "approvals": [a.to_json() for a in sorted(
            approvals.values(), key=lambda a: (a.approved_at, a.sha256))]}, indent=2, sort_keys=True) + "\n"
        write_atomic(self.path, body.encode("utf-8"))

    def _ledger_append(self, **event: Any) -> None:
        from incisive_lab.ledger import Event, Ledger

        if self._ledger is not None:
            self._ledger.append(Event(**event))
            return
        with Ledger.open(self.node_dir) as ledger:
            ledger.append(Event(**event))

    def approve(self, code: TaskCode, *, steward: str) -> Approval:
        """Approve ``code`` (by its hash) at this node, ledgered; approving twice changes nothing.

        Parameters
        ----------
        code
            The reviewed task code.
        steward
            The steward's account id (the ledger's actor is ``user:<steward>``).
        """
        from incisive_lab.ledger import Outcome

        who = _check_steward(steward)
        sha = _check_sha(code.sha256)
        with self._locked():
            current = self._read()
            if sha in current:
                return current[sha]
            approval = Approval(sha256=sha, name=code.name, version=code.version, steward=who,
                                approved_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
            self._ledger_append(kind="task", actor=f"user:{who}", action="approve", resource=f"task:{sha}",
                                outcome=Outcome.allow("role:steward"),
                                details={"task_sha256": sha, "name": code.name, "version": code.version})
            current[sha] = approval
            self._write(current)
        return approval

    def revoke(self, sha256: str, *, steward: str) -> Approval:
        """Withdraw the approval of ``sha256`` (ledgered); runs of it are refused from the next message.

        Raises
        ------
        ApprovalError
            When the hash is not approved here.
        """
        from incisive_lab.ledger import Outcome

        who = _check_steward(steward)
        sha = _check_sha(sha256)
        with self._locked():
            current = self._read()
            if sha not in current:
                raise ApprovalError(f"task {sha} is not approved at this node")
            gone = current.pop(sha)
            self._ledger_append(kind="task", actor=f"user:{who}", action="revoke", resource=f"task:{sha}",
                                outcome=Outcome.allow("role:steward"),
                                details={"task_sha256": sha, "name": gone.name, "version": gone.version})
            self._write(current)
        return gone
