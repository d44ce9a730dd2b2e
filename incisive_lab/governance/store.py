"""The node's governance records: terms, requests, grants and consent withdrawals.

:class:`Governance` keeps them in the node database (the tables of
:mod:`incisive_lab.governance._tables`, SQLite or PostgreSQL) and writes every step to the
node's ledger inside the same database transaction, before it commits: a crash leaves
either both or a ledger entry whose change a rerun completes (every step is idempotent or
refuses a second time with a clear error).

Life of an access request::

    submit (researcher) ──> pending ──> approved ──> grant (expiry, frozen cohort)
                               │  └───> rejected (reason)
                               └──────> withdrawn (by the researcher)

A grant's cohort is the set of patients frozen at approval: it shrinks when a patient
withdraws consent and never grows (a larger cohort needs a new request).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from incisive_lab.errors import IncisiveLabError
from incisive_lab.governance._tables import (
    access_requests_table,
    grant_members_table,
    grants_table,
    sharing_terms_table,
    withdrawals_table,
)
from incisive_lab.governance.policy import Action, Decision, Grant, Requester, decide
from incisive_lab.governance.scope import ReadScope
from incisive_lab.governance.terms import SharingTerms

__all__ = ["AccessRequest", "Governance", "GovernanceError"]

MAX_GRANT_DAYS = 3 * 365


class GovernanceError(IncisiveLabError):
    """A governance step that cannot be taken (the message says why; ``reason`` is a code)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AccessRequest:
    """A researcher's request for a dataset (or a cohort within it)."""

    request_id: str
    dataset: str
    requester: str
    purpose: str
    project: str
    status: str
    created_at: str
    criteria: dict[str, Any] | None = None
    decided_by: str | None = None
    decided_at: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (for the requests API)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Governance:
    """Governance records of one node.

    Parameters
    ----------
    engine
        The node database (``NodeStore.engine``).
    ledger
        The node's ledger (``incisive_lab.ledger.Ledger``); every step is appended to it.
    clock
        Returns the current time (tests pass a fixed clock).
    """

    def __init__(self, engine: Engine, ledger: Any, *, clock: Any = _now) -> None:
        self._engine = engine
        self._ledger = ledger
        self._clock = clock
        self._scopes: dict[tuple[Any, ...], tuple[tuple[Any, ...], datetime, ReadScope]] = {}

    def _append(self, **event: Any) -> None:
        from incisive_lab.ledger import Event

        self._ledger.append(Event(**event))

    # ---------------------------------------------------------------- terms

    def set_terms(self, terms: SharingTerms | dict[str, Any], *, actor: str, dataset: str | None = None) -> SharingTerms:
        """Store a new version of a dataset's terms (the steward's action), ledgered.

        Setting terms equal to those in force changes nothing and writes nothing.
        """
        from incisive_lab.ledger import Outcome

        parsed = terms if isinstance(terms, SharingTerms) else SharingTerms.from_json(terms, dataset=dataset)
        with self._engine.begin() as conn:
            last = conn.execute(select(sharing_terms_table.c.version, sharing_terms_table.c.document)
                                .where(sharing_terms_table.c.dataset == parsed.dataset)
                                .order_by(sharing_terms_table.c.version.desc()).limit(1)).first()
            if last is not None:
                current = SharingTerms.from_json(json.loads(last.document))
                same = {**current.to_json(), "version": 0} == {**parsed.to_json(), "version": 0}
                if same:
                    return current
            version = (last.version + 1) if last is not None else 1
            new = SharingTerms.from_json({**parsed.to_json(), "version": version})
            conn.execute(insert(sharing_terms_table).values(
                dataset=new.dataset, version=version, document=json.dumps(new.to_json(), sort_keys=True),
                sha256=new.sha256, set_by=actor, set_at=_iso(self._clock())))
            self._append(kind="terms", actor=actor, action="set" if version == 1 else "update",
                         resource=f"dataset:{new.dataset}", outcome=Outcome.allow("role:steward"), details={
                             "dataset": new.dataset, "terms_version": version, "terms_sha256": new.sha256,
                             "floor": new.floor, "hosting": new.hosting, "visibility": new.visibility.value,
                             "purposes": sorted(new.purposes), "roles": sorted(r.value for r in new.roles),
                             "organisations": sorted(new.organisations), "min_loa": new.min_loa.name.lower(),
                             **({"expires": new.expires.isoformat()} if new.expires else {})})
        return new

    def terms(self, dataset: str) -> SharingTerms | None:
        """The terms in force for ``dataset`` (``None``: it has none, so only discovery is allowed)."""
        with self._engine.connect() as conn:
            row = conn.execute(select(sharing_terms_table.c.document)
                               .where(sharing_terms_table.c.dataset == dataset)
                               .order_by(sharing_terms_table.c.version.desc()).limit(1)).first()
        return SharingTerms.from_json(json.loads(row.document)) if row else None

    def terms_history(self, dataset: str) -> list[SharingTerms]:
        """Every version of the dataset's terms, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(sharing_terms_table.c.document)
                                .where(sharing_terms_table.c.dataset == dataset)
                                .order_by(sharing_terms_table.c.version)).all()
        return [SharingTerms.from_json(json.loads(r.document)) for r in rows]

    # ---------------------------------------------------------------- decisions

    def decide(self, requester: Requester, action: Action | str, dataset: str, *, purpose: str | None,
               patient: str | None = None) -> Decision:
        """The policy decision with this node's terms, the requester's best grant and withdrawals."""
        now = self._clock()
        if patient is not None and patient in self.withdrawn(dataset):
            return Decision(False, "consent-withdrawn")
        grants = [g for g in self.grants_for(requester.subject, dataset=dataset)
                  if purpose is None or g.purpose == purpose]
        terms = self.terms(dataset)
        best: Decision | None = None
        for grant in grants or [None]:  # type: ignore[list-item]
            d = decide(requester, action, terms, purpose=purpose, now=now, grant=grant, patient=patient)
            if d.allowed:
                return d
            best = best or d
        assert best is not None
        return best

    def read_scope(self, requester: Requester, purpose: str | None, *, staff: bool = False,
                   action: Action | str = Action.VIEW) -> ReadScope:
        """What ``requester`` may read here for ``purpose`` (see :mod:`.scope`).

        ``staff``: the node's own steward (the caller decides who that is); they read every
        consenting patient of every dataset. Everyone else reads the cohorts of their active
        grants for ``purpose`` whose ``action`` the policy allows now, without withdrawn patients.

        ``action``: ``view`` (the default: images and clinical data shown to the caller, so
        ``train-only`` datasets are never in scope) or ``train`` (data a node's own training
        code reads for the caller's federated run: ``train-only`` datasets are in scope too).
        Any other action is refused (``ValueError``).

        Every read asks, so scopes are cached: an entry is used only while nothing it was
        computed from changed (one small fingerprint query over terms, grants, their members,
        withdrawals, Consents and patients — so a withdrawal counts on the very next
        request), before its earliest grant or terms expiry, and for at most a minute.
        """
        act = Action(action)
        if act not in (Action.VIEW, Action.TRAIN):
            raise ValueError(f"action {act.value!r}: a read scope is for 'view' or 'train'")
        key = (requester, purpose, staff, act)
        now = self._clock()
        fingerprint = self._fingerprint()
        cached = self._scopes.get(key)
        if cached is not None and cached[0] == fingerprint and now < cached[1]:
            return cached[2]
        scope, valid_until = self._compute_scope(requester, purpose, staff=staff, now=now, action=act)
        if len(self._scopes) >= 1024:
            self._scopes.clear()
        self._scopes[key] = (fingerprint, min(valid_until, now + timedelta(seconds=60)), scope)
        return scope

    def _fingerprint(self) -> tuple[Any, ...]:
        from incisive_lab.node._db import fhir_table, patients_table

        def n(table: Any) -> Any:
            return select(func.count()).select_from(table).scalar_subquery()

        consent = fhir_table.c.resource_type == "Consent"
        q = select(n(sharing_terms_table), n(grants_table), n(grant_members_table), n(withdrawals_table),
                   n(patients_table),
                   select(func.coalesce(func.sum(grants_table.c.revoked), 0)).scalar_subquery(),
                   select(func.count()).where(consent).scalar_subquery(),
                   select(func.max(fhir_table.c.last_updated)).where(consent).scalar_subquery())
        with self._engine.connect() as conn:
            return tuple(conn.execute(q).one())

    def _dataset_patients_all(self) -> dict[str, set[str]]:
        from incisive_lab.node._db import patients_table

        with self._engine.connect() as conn:
            rows = conn.execute(select(patients_table.c.dataset, patients_table.c.patient_id)).all()
        out: dict[str, set[str]] = {}
        for r in rows:
            out.setdefault(r.dataset, set()).add(r.patient_id)
        return out

    def _compute_scope(self, requester: Requester, purpose: str | None, *, staff: bool,
                       now: datetime, action: Action = Action.VIEW) -> tuple[ReadScope, datetime]:
        far = now + timedelta(days=1)
        everyone = self._dataset_patients_all()
        if staff:
            withdrawn = self.withdrawn()
            return ReadScope(purpose, {d: frozenset(p - withdrawn) for d, p in everyone.items()}, staff=True,
                             whole={d: frozenset(p & withdrawn) for d, p in everyone.items()}), far
        cohorts: dict[str, frozenset[str]] = {}
        denied: dict[str, str] = {}
        terms_of: dict[str, SharingTerms | None] = {}
        withdrawn_of: dict[str, frozenset[str]] = {}
        valid_until = far
        for grant in self.grants_for(requester.subject):
            if grant.dataset not in terms_of:
                terms_of[grant.dataset] = self.terms(grant.dataset)
            terms = terms_of[grant.dataset]
            d = decide(requester, action, terms, purpose=purpose, now=now, grant=grant)
            if not d.allowed:
                denied.setdefault(grant.dataset, d.reason)
                continue
            valid_until = min(valid_until, grant.expires)
            if terms is not None and terms.expires is not None:
                valid_until = min(valid_until, datetime.combine(terms.expires + timedelta(days=1),
                                                                datetime.min.time(), tzinfo=UTC))
            if grant.dataset not in withdrawn_of:
                withdrawn_of[grant.dataset] = self.withdrawn(grant.dataset)
            cohorts[grant.dataset] = cohorts.get(grant.dataset, frozenset()) | (
                grant.members - withdrawn_of[grant.dataset])
        whole: dict[str, frozenset[str]] = {}
        for dataset, members in cohorts.items():
            held = everyone.get(dataset, set())
            if members and members == held - withdrawn_of[dataset]:
                whole[dataset] = frozenset(held & withdrawn_of[dataset])
        return ReadScope(purpose, cohorts, {k: v for k, v in denied.items() if k not in cohorts},
                         whole=whole), valid_until

    # ---------------------------------------------------------------- requests

    def submit_request(self, requester: Requester, dataset: str, *, purpose: str, project: str,
                       criteria: dict[str, Any] | None = None) -> AccessRequest:
        """File a request; refused (and ledgered) when the terms would not allow the requester at all."""
        from incisive_lab.ledger import Outcome

        if not project.strip():
            raise GovernanceError("a request needs a project name", "invalid")
        eligible = decide(requester, Action.COUNT, self.terms(dataset), purpose=purpose, now=self._clock())
        if not eligible.allowed:
            self._append(kind="request", actor=f"user:{requester.subject}", action="submit",
                         resource=f"dataset:{dataset}", purpose=purpose, outcome=Outcome.deny(eligible.reason),
                         details={"request_type": "access", "requester": requester.subject, "datasets": [dataset],
                                  "project": project})
            raise GovernanceError(f"dataset {dataset}: the terms do not allow this request ({eligible.reason})",
                                  eligible.reason)
        req = AccessRequest(request_id=f"req-{uuid.uuid4().hex[:16]}", dataset=dataset, requester=requester.subject,
                            purpose=purpose, project=project.strip(), status="pending",
                            created_at=_iso(self._clock()), criteria=criteria)
        with self._engine.begin() as conn:
            conn.execute(insert(access_requests_table).values(
                request_id=req.request_id, dataset=dataset, requester=req.requester, purpose=purpose,
                project=req.project, criteria=json.dumps(criteria, sort_keys=True) if criteria else None,
                status="pending", created_at=req.created_at))
            self._append(kind="request", actor=f"user:{requester.subject}", action="submit",
                         resource=f"dataset:{dataset}", purpose=purpose, outcome=Outcome.allow(eligible.reason),
                         details={"request_id": req.request_id, "request_type": "access",
                                  "requester": requester.subject, "datasets": [dataset],
                                  "project": req.project})
        return req

    def request(self, request_id: str) -> AccessRequest:
        """One request (``GovernanceError`` ``not-found`` if unknown)."""
        with self._engine.connect() as conn:
            row = conn.execute(select(access_requests_table)
                               .where(access_requests_table.c.request_id == request_id)).first()
        if row is None:
            raise GovernanceError(f"no access request {request_id!r}", "not-found")
        return self._request_row(row)

    @staticmethod
    def _request_row(row: Any) -> AccessRequest:
        return AccessRequest(request_id=row.request_id, dataset=row.dataset, requester=row.requester,
                             purpose=row.purpose, project=row.project, status=row.status,
                             created_at=row.created_at, criteria=json.loads(row.criteria) if row.criteria else None,
                             decided_by=row.decided_by, decided_at=row.decided_at, reason=row.reason)

    def requests(self, *, requester: str | None = None, dataset: str | None = None,
                 status: str | None = None) -> list[AccessRequest]:
        """Requests matching every filter given, newest first."""
        t = access_requests_table
        q = select(t)
        for col, value in ((t.c.requester, requester), (t.c.dataset, dataset), (t.c.status, status)):
            if value is not None:
                q = q.where(col == value)
        with self._engine.connect() as conn:
            rows = conn.execute(q.order_by(t.c.created_at.desc(), t.c.request_id)).all()
        return [self._request_row(r) for r in rows]

    def approve(self, request_id: str, *, steward: str, members: Iterable[str], days: int = 365,
                reason: str = "") -> Grant:
        """Approve a pending request: a grant until ``days`` from now over ``members`` (frozen).

        ``members`` is the cohort the steward approves (patient pseudonyms, e.g. the cohort
        engine's answer for the request's criteria); withdrawn patients are left out.
        """
        from incisive_lab.ledger import Outcome

        if not 1 <= days <= MAX_GRANT_DAYS:
            raise GovernanceError(f"days must be 1..{MAX_GRANT_DAYS} (got {days})", "invalid")
        req = self.request(request_id)
        if req.status != "pending":
            raise GovernanceError(f"request {request_id} is {req.status}, not pending", "not-pending")
        terms = self.terms(req.dataset)
        if terms is None or terms.expired(self._clock().date()):
            raise GovernanceError(f"dataset {req.dataset} has no terms in force", "no-terms")
        cohort = frozenset(members) - self.withdrawn(req.dataset)
        now = self._clock()
        expires = now + timedelta(days=days)
        if terms.expires is not None:
            expires = min(expires, datetime.combine(terms.expires, datetime.max.time(), tzinfo=UTC))
        grant = Grant(grant_id=f"grant-{uuid.uuid4().hex[:16]}", dataset=req.dataset, grantee=req.requester,
                      purpose=req.purpose, expires=expires, members=cohort)
        with self._engine.begin() as conn:
            done = conn.execute(update(access_requests_table)
                                .where(and_(access_requests_table.c.request_id == request_id,
                                            access_requests_table.c.status == "pending"))
                                .values(status="approved", decided_by=steward, decided_at=_iso(now),
                                        reason=reason or None))
            if done.rowcount != 1:
                raise GovernanceError(f"request {request_id} was decided meanwhile", "not-pending")
            conn.execute(insert(grants_table).values(
                grant_id=grant.grant_id, request_id=request_id, dataset=req.dataset, grantee=req.requester,
                purpose=req.purpose, project=req.project, expires=_iso(expires), revoked=0,
                terms_version=terms.version, created_at=_iso(now)))
            if cohort:
                conn.execute(insert(grant_members_table),
                             [{"grant_id": grant.grant_id, "patient_id": p} for p in sorted(cohort)])
            self._append(kind="request", actor=f"user:{steward}", action="approve",
                         resource=f"dataset:{req.dataset}", outcome=Outcome.allow("role:steward"),
                         details={"request_id": request_id, "request_type": "access", "requester": req.requester,
                                  "datasets": [req.dataset], "grant_id": grant.grant_id})
            self._append(kind="grant", actor=f"user:{steward}", action="grant", resource=f"dataset:{req.dataset}",
                         purpose=req.purpose, outcome=Outcome.allow("role:steward"), details={
                             "grantee": req.requester, "grant_id": grant.grant_id, "dataset": req.dataset,
                             "access": terms.visibility.value, "expires": _iso(expires),
                             "terms_version": terms.version, "request": request_id,
                             "project": req.project, "members": len(cohort)})
        return grant

    def reject(self, request_id: str, *, steward: str, reason: str) -> AccessRequest:
        """Reject a pending request; the reason is required and told to the requester."""
        return self._close(request_id, actor=steward, status="rejected", action="reject", reason=reason)

    def withdraw_request(self, request_id: str, *, requester: str) -> AccessRequest:
        """The requester withdraws their own pending request."""
        if self.request(request_id).requester != requester:
            raise GovernanceError(f"request {request_id} is not yours", "not-owner")
        return self._close(request_id, actor=requester, status="withdrawn", action="withdraw", reason="")

    def _close(self, request_id: str, *, actor: str, status: str, action: str, reason: str) -> AccessRequest:
        from incisive_lab.ledger import Outcome

        if status == "rejected" and not reason.strip():
            raise GovernanceError("a rejection needs a reason", "invalid")
        req = self.request(request_id)
        with self._engine.begin() as conn:
            done = conn.execute(update(access_requests_table)
                                .where(and_(access_requests_table.c.request_id == request_id,
                                            access_requests_table.c.status == "pending"))
                                .values(status=status, decided_by=actor, decided_at=_iso(self._clock()),
                                        reason=reason or None))
            if done.rowcount != 1:
                raise GovernanceError(f"request {request_id} is {req.status}, not pending", "not-pending")
            self._append(kind="request", actor=f"user:{actor}", action=action, resource=f"dataset:{req.dataset}",
                         outcome=Outcome.deny(reason) if status == "rejected" else Outcome.allow("requester"),
                         details={"request_id": request_id, "request_type": "access", "requester": req.requester,
                                  "datasets": [req.dataset]})
        return self.request(request_id)

    # ---------------------------------------------------------------- grants

    def grants_for(self, grantee: str, *, dataset: str | None = None, active_only: bool = True) -> list[Grant]:
        """A person's grants (by default only those not revoked and not expired), cohorts current."""
        t = grants_table
        q = select(t).where(t.c.grantee == grantee)
        if dataset is not None:
            q = q.where(t.c.dataset == dataset)
        now = self._clock()
        out = []
        with self._engine.connect() as conn:
            for row in conn.execute(q.order_by(t.c.created_at)).all():
                expires = _parse(row.expires)
                if active_only and (row.revoked or now >= expires):
                    continue
                members = frozenset(r.patient_id for r in conn.execute(
                    select(grant_members_table.c.patient_id).where(grant_members_table.c.grant_id == row.grant_id)))
                out.append(Grant(grant_id=row.grant_id, dataset=row.dataset, grantee=row.grantee,
                                 purpose=row.purpose, expires=expires, members=members, revoked=bool(row.revoked)))
        return out

    def revoke(self, grant_id: str, *, steward: str, reason: str) -> None:
        """Revoke a grant at once (ledgered with the reason)."""
        from incisive_lab.ledger import Outcome

        with self._engine.begin() as conn:
            row = conn.execute(select(grants_table).where(grants_table.c.grant_id == grant_id)).first()
            if row is None:
                raise GovernanceError(f"no grant {grant_id!r}", "not-found")
            conn.execute(update(grants_table).where(grants_table.c.grant_id == grant_id).values(revoked=1))
            self._append(kind="grant", actor=f"user:{steward}", action="revoke", resource=f"dataset:{row.dataset}",
                         outcome=Outcome.allow(reason or "revoked"),
                         details={"grantee": row.grantee, "grant_id": grant_id, "dataset": row.dataset})

    # ---------------------------------------------------------------- consent withdrawal

    def withdrawn(self, dataset: str | None = None) -> frozenset[str]:
        """Patients who do not (or no longer) consent, of ``dataset`` or of any dataset.

        Those whose withdrawal a steward recorded, and those whose FHIR Consent (from the
        clinical data, or written through the FHIR API) is anything but ``active`` — a
        draft, a refusal, an inactive (withdrawn) consent. A patient without any Consent
        resource (an images-only dataset) is governed by the dataset's terms alone.
        """
        from incisive_lab.node._db import fhir_table

        q = select(withdrawals_table.c.patient_id)
        c = select(fhir_table.c.patient_ref, fhir_table.c.content).where(fhir_table.c.resource_type == "Consent")
        if dataset is not None:
            q = q.where(withdrawals_table.c.dataset == dataset)
            c = c.where(fhir_table.c.dataset == dataset)
        with self._engine.connect() as conn:
            out = {r.patient_id for r in conn.execute(q)}
            consent: dict[str, bool] = {}
            for r in conn.execute(c):
                if not r.patient_ref or not r.patient_ref.startswith("Patient/"):
                    continue
                active = json.loads(r.content).get("status") == "active"
                pid = r.patient_ref.removeprefix("Patient/")
                consent[pid] = consent.get(pid, False) or active
        return frozenset(out | {p for p, active in consent.items() if not active})

    def withdraw_patient(self, dataset: str, patient: str, *, steward: str) -> list[str]:
        """Record a patient's withdrawal (at once) and shrink every grant holding them.

        Returns the grant ids that shrank. Recording the same withdrawal twice changes
        nothing the second time.
        """
        from incisive_lab.ledger import Outcome

        now = self._clock()
        with self._engine.begin() as conn:
            exists = conn.execute(select(func.count()).select_from(withdrawals_table).where(and_(
                withdrawals_table.c.dataset == dataset, withdrawals_table.c.patient_id == patient))).scalar_one()
            if exists:
                return []
            conn.execute(insert(withdrawals_table).values(dataset=dataset, patient_id=patient,
                                                          withdrawn_at=_iso(now), recorded_by=steward))
            affected = [r.grant_id for r in conn.execute(
                select(grant_members_table.c.grant_id).join(
                    grants_table, grants_table.c.grant_id == grant_members_table.c.grant_id)
                .where(and_(grant_members_table.c.patient_id == patient, grants_table.c.dataset == dataset)))]
            if affected:
                conn.execute(delete(grant_members_table).where(and_(
                    grant_members_table.c.patient_id == patient, grant_members_table.c.grant_id.in_(affected))))
            self._append(kind="consent", actor=f"user:{steward}", action="withdraw", resource=f"patient:{patient}",
                         outcome=Outcome.allow("role:steward"),
                         details={"patient": patient, "dataset": dataset, "effective": _iso(now)})
            for grant_id in affected:
                left = conn.execute(select(func.count()).select_from(grant_members_table)
                                    .where(grant_members_table.c.grant_id == grant_id)).scalar_one()
                grantee = conn.execute(select(grants_table.c.grantee)
                                       .where(grants_table.c.grant_id == grant_id)).scalar_one()
                self._append(kind="grant", actor=f"user:{steward}", action="modify", resource=f"dataset:{dataset}",
                             outcome=Outcome.allow("consent-withdrawn"),
                             details={"grantee": grantee, "grant_id": grant_id, "dataset": dataset,
                                      "members": int(left), "removed": 1})
        return affected

    def datasets_withdrawn_for(self, patient: str) -> frozenset[str]:
        """Datasets in which ``patient`` has withdrawn consent."""
        with self._engine.connect() as conn:
            return frozenset(r.dataset for r in conn.execute(
                select(withdrawals_table.c.dataset).where(withdrawals_table.c.patient_id == patient)))

    def dataset_patients(self, dataset: str, *, consented_only: bool = True) -> frozenset[str]:
        """The patients (pseudonyms) the node holds in ``dataset``, without withdrawn ones by default."""
        from incisive_lab.node._db import patients_table

        with self._engine.connect() as conn:
            found = frozenset(r.patient_id for r in conn.execute(
                select(patients_table.c.patient_id).where(patients_table.c.dataset == dataset)))
        return found - self.withdrawn(dataset) if consented_only else found

    def pending(self, datasets: Sequence[str] | None = None) -> list[AccessRequest]:
        """Pending requests (for stewards), of ``datasets`` if given."""
        found = self.requests(status="pending")
        return [r for r in found if datasets is None or r.dataset in datasets]
