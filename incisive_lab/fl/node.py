"""The node's side of a federated run: who asks, for which task, over which patients.

Every message a node's ClientApp answers (train, evaluate, query) is authorised here, from
scratch, before any task code is loaded or any data read:

1. the user's access token is verified fully (:class:`incisive_lab.access.TokenVerifier`:
   signature by the issuer's JWKS, ``iss``, ``aud`` = this node, expiry, level of assurance);
2. the task's hash must be approved by this node's steward
   (:class:`incisive_lab.fl.approvals.TaskApprovals`), and the code sent must have that hash;
3. the cohort is the user's TRAIN scope: the cohorts of their active grants for the
   declared purpose whose terms allow training (``train-only`` datasets included), without
   patients who withdrew consent — computed afresh for every message, so a withdrawal or a
   revoked grant takes effect at the next round.

A refusal raises :class:`Refused` (the ClientApp turns it into an error reply) after it is
written to the node's ledger (kind ``fl-run``: action ``approve`` denied for task problems,
``start`` denied for token and scope problems). Participation is ledgered as ``fl-run``
``start``, ``round`` and ``finish`` with the datasets and the cohort size.

Node settings come from the SuperNode's ``--node-config`` (``context.node_config``), the
same settings ``incisive-lab node serve`` uses:

==================  ==========================================================
``node-dir``        the node directory (required)
``node-name``       the node's name in metrics and ledgers (required)
``issuer``          the identity provider users' tokens come from (required)
``audience``        this node's audience (resource identifier) (required)
``jwks-url``        the issuer's JWKS (default: found by OIDC discovery)
``min-loa``         least level of assurance (default ``substantial``)
``db-url``          the node database when not ``<node-dir>/node.sqlite``
==================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from incisive_lab.errors import IncisiveLabError

if TYPE_CHECKING:
    from incisive_lab.fl.data import CohortReader
    from incisive_lab.fl.task import TaskCode
    from incisive_lab.governance.policy import Requester
    from incisive_lab.governance.scope import ReadScope

__all__ = ["Authorization", "NodeSettings", "NodeSide", "Refused"]

LOA_LEVELS = ("low", "substantial", "high")
_KNOWN = {"node-dir", "node-name", "issuer", "audience", "jwks-url", "min-loa", "db-url"}


class Refused(IncisiveLabError):
    """The node refuses a federated message; ``reason`` is the stable code in the ledger."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class NodeSettings:
    """A node's federated-learning settings (see the module doc)."""

    node_dir: Path
    node_name: str
    issuer: str
    audience: str
    jwks_url: str | None = None
    min_loa: str = "substantial"
    db_url: str | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        """Read and check ``context.node_config``; a missing or bad setting is named.

        Raises
        ------
        IncisiveLabError
            Unknown key, missing key, non-loopback plain-http issuer, unknown level, not a node.
        """
        unknown = sorted(set(node_config) - _KNOWN)
        if unknown:
            raise IncisiveLabError(f"node config: unknown key(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(sorted(_KNOWN))})")

        def text(key: str) -> str:
            value = node_config.get(key, "")
            if not isinstance(value, str):
                raise IncisiveLabError(f"node config {key!r}: a string is needed (got {value!r})")
            return value.strip()

        missing = [k for k in ("node-dir", "node-name", "issuer", "audience") if not text(k)]
        if missing:
            raise IncisiveLabError(f"node config: missing {', '.join(missing)} (the SuperNode's --node-config)")
        issuer = text("issuer")
        if not issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise IncisiveLabError(f"node config 'issuer' {issuer!r}: must be https (plain http only on loopback)")
        min_loa = text("min-loa") or "substantial"
        if min_loa not in LOA_LEVELS:
            raise IncisiveLabError(f"node config 'min-loa': one of {', '.join(LOA_LEVELS)} (got {min_loa!r})")
        node_dir = Path(text("node-dir"))
        if not (node_dir / "objects").is_dir():
            raise IncisiveLabError(f"node config 'node-dir' {node_dir}: not a node (no objects/)")
        return cls(node_dir=node_dir, node_name=text("node-name"), issuer=issuer, audience=text("audience"),
                   jwks_url=text("jwks-url") or None, min_loa=min_loa, db_url=text("db-url") or None)


@dataclass(frozen=True)
class Authorization:
    """What one message of a run may do at this node (the outcome of :meth:`NodeSide.authorize`)."""

    run_id: str
    subject: str
    requester: Requester
    purpose: str
    task_sha256: str
    scope: ReadScope

    @property
    def actor(self) -> str:
        """The ledger actor, ``user:<sub>``."""
        return f"user:{self.subject}"

    @property
    def datasets(self) -> list[str]:
        """Datasets with at least one patient in scope."""
        return sorted(d for d, members in self.scope.cohorts.items() if members)

    @property
    def cohort_size(self) -> int:
        """Patients in scope, over every dataset."""
        return sum(len(m) for m in self.scope.cohorts.values())


class NodeSide:
    """One node's store, ledger, governance and task approvals, for the ClientApp.

    Open with :meth:`open`; close with :meth:`close` (or use ``with``).
    """

    def __init__(self, settings: NodeSettings, *, verifier: Any) -> None:
        from incisive_lab.fl.approvals import TaskApprovals
        from incisive_lab.governance.store import Governance
        from incisive_lab.ledger import Ledger
        from incisive_lab.node.store import NodeStore

        self.settings = settings
        self.verifier = verifier
        self.store = NodeStore.open(settings.node_dir, settings.db_url)
        try:
            self.ledger = Ledger.open(settings.node_dir)
        except BaseException:
            self.store.close()
            raise
        self.governance = Governance(self.store.engine, self.ledger)
        self.approvals = TaskApprovals(settings.node_dir, ledger=self.ledger)

    @classmethod
    def open(cls, node_config: Mapping[str, Any], *, verifier: Any = None, http: Any = None) -> NodeSide:
        """Open the node named by ``node_config`` (see the module doc for the keys).

        Parameters
        ----------
        node_config
            The SuperNode's node config.
        verifier
            A token verifier (``verify(token) -> Principal``); default: a
            :class:`~incisive_lab.access.TokenVerifier` for the configured issuer and audience.
        http
            An httpx transport for the JWKS fetches (tests).
        """
        from incisive_lab.access import TokenVerifier

        settings = NodeSettings.from_node_config(node_config)
        if verifier is None:
            verifier = TokenVerifier.for_service(settings.issuer, settings.audience, jwks_url=settings.jwks_url,
                                                 min_loa=settings.min_loa, http=http)
        return cls(settings, verifier=verifier)

    def close(self) -> None:
        """Close the ledger and the store."""
        self.ledger.close()
        self.store.close()

    def __enter__(self) -> NodeSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        """The node's name."""
        return self.settings.node_name

    # ------------------------------------------------------------------ ledger
    def _event(self, *, actor: str, action: str, run_id: str, purpose: str, outcome: Any,
               **details: Any) -> None:
        from incisive_lab.ledger import Event

        clean = {k: v for k, v in details.items() if v is not None}
        self.ledger.append(Event(kind="fl-run", actor=actor, action=action, resource=f"fl-run:{run_id}",
                                 purpose=purpose or "unspecified", outcome=outcome,
                                 details={"run_id": run_id, "nodes": [self.name], **clean}))

    def refuse(self, reason: str, message: str, *, run_id: str, purpose: str, actor: str = "anonymous",
               action: str = "start", task_sha256: str | None = None) -> Refused:
        """Ledger a refusal (``fl-run`` ``action`` denied) and return the error to raise."""
        from incisive_lab.ledger import Outcome

        sha = task_sha256 if task_sha256 and len(task_sha256) == 64 and all(
            c in "0123456789abcdef" for c in task_sha256) else None
        self._event(actor=actor, action=action, run_id=run_id or "unknown", purpose=purpose,
                    outcome=Outcome.deny(reason), task_sha256=sha)
        return Refused(reason, f"node {self.name}: {message}")

    def participate(self, auth: Authorization, action: str, *, round: int | None = None,
                    rounds: int | None = None, datasets: list[str] | None = None,
                    cohort_size: int | None = None, privacy: str | None = None, reason: str = "") -> None:
        """Ledger this node's participation: ``fl-run`` ``start``, ``round`` or ``finish``, allowed."""
        from incisive_lab.ledger import Outcome

        if action not in ("start", "round", "finish"):
            raise ValueError(f"action {action!r}: one of start, round, finish")
        self._event(actor=auth.actor, action=action, run_id=auth.run_id, purpose=auth.purpose,
                    outcome=Outcome.allow(reason or "grant"), task_sha256=auth.task_sha256, round=round,
                    rounds=rounds, datasets=datasets if datasets is not None else auth.datasets,
                    cohort_size=cohort_size if cohort_size is not None else auth.cohort_size, privacy=privacy)

    # ------------------------------------------------------------------ decisions
    def authorize(self, token: str, purpose: str, task_sha256: str, run_id: str) -> Authorization:
        """Verify the token, the task's approval and the TRAIN scope (see the module doc).

        Raises
        ------
        Refused
            ``token-<reason>``, ``task-not-approved``, ``no-purpose`` or the scope's reason
            (``no-grant``, ``purpose-not-permitted``…), after ledgering it.
        """
        from incisive_lab.access import AccessError
        from incisive_lab.governance.policy import Action
        from incisive_lab.node.governance_api import purpose_term, requester_of

        term = purpose_term(purpose) or ""
        try:
            principal = self.verifier.verify(token)
        except AccessError as exc:
            raise self.refuse(f"token-{exc.reason.value}", f"the access token was refused ({exc.reason.value})",
                              run_id=run_id, purpose=term, task_sha256=task_sha256) from None
        actor = f"user:{principal.subject}"
        if not self.approvals.is_approved(task_sha256):
            raise self.refuse("task-not-approved", f"task {task_sha256} is not approved by this node's steward",
                              run_id=run_id, purpose=term, actor=actor, action="approve", task_sha256=task_sha256)
        if not term:
            raise self.refuse("no-purpose", "the run declares no purpose", run_id=run_id, purpose=term,
                              actor=actor, task_sha256=task_sha256)
        requester = requester_of(principal)
        scope = self.governance.read_scope(requester, term, action=Action.TRAIN)
        if not scope:
            reasons = ", ".join(f"{d}: {r}" for d, r in sorted(scope.denied.items())) or "no grant"
            raise self.refuse(scope.reason, f"no patient here may be used for training for purpose {term!r} "
                              f"({reasons})", run_id=run_id, purpose=term, actor=actor, task_sha256=task_sha256)
        return Authorization(run_id=run_id, subject=principal.subject, requester=requester, purpose=term,
                             task_sha256=task_sha256, scope=scope)

    def task_code(self, auth: Authorization, code: bytes) -> TaskCode:
        """The run's task code, once its bytes are shown to hash to the approved hash.

        Raises
        ------
        Refused
            ``task-hash-mismatch`` (or ``task-invalid``), ledgered, before anything is loaded.
        """
        from incisive_lab.fl.task import TaskCode

        try:
            parsed = TaskCode.from_bytes(code)
        except (ValueError, TypeError) as exc:
            raise self.refuse("task-invalid", f"the task code sent is not valid task code ({exc})",
                              run_id=auth.run_id, purpose=auth.purpose, actor=auth.actor, action="approve",
                              task_sha256=auth.task_sha256) from None
        if parsed.sha256 != auth.task_sha256:
            raise self.refuse("task-hash-mismatch", f"the task code sent hashes to {parsed.sha256}, not to the "
                              f"approved {auth.task_sha256}", run_id=auth.run_id, purpose=auth.purpose,
                              actor=auth.actor, action="approve", task_sha256=auth.task_sha256)
        return parsed

    def reader(self, auth: Authorization, *, on_read: Callable[[str, str], None] | None = None,
               datasets: Sequence[str] = ()) -> CohortReader:
        """The only way task code reads this node's data: a reader limited to ``auth.scope``,
        and to ``datasets`` when the run names some (never widened by them)."""
        from dataclasses import replace

        from incisive_lab.fl.data import CohortReader

        scope = auth.scope
        if datasets:
            wanted = set(datasets)
            scope = replace(scope, cohorts={d: m for d, m in scope.cohorts.items() if d in wanted},
                            whole={d: w for d, w in scope.whole.items() if d in wanted})
        return CohortReader(self.store, scope, on_read=on_read)

    def floor(self, datasets: list[str]) -> int:
        """The strictest small-count floor among ``datasets`` (their terms'; at least the default)."""
        from incisive_lab.cohort.disclosure import DEFAULT_FLOOR

        floors = []
        for d in datasets:
            terms = self.governance.terms(d)
            floors.append(terms.floor if terms is not None else DEFAULT_FLOOR)
        return max(floors, default=DEFAULT_FLOOR)

