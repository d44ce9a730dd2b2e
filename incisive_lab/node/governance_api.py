"""The node's governance endpoints (framework glue over :mod:`incisive_lab.governance`).

=========================================  ==========  ==========================================
route                                      who         what
=========================================  ==========  ==========================================
``GET  /catalogue``                        anyone      the node's HealthDCAT-AP dataset records,
                                                       each with its terms in force as
                                                       ``incisive:accessTerms`` (absent: none,
                                                       so nothing but discovery is allowed)
``GET  /governance/terms/{dataset}``       anyone      the dataset's terms in force (404: none)
``PUT  /governance/terms/{dataset}``       steward     set new terms (a new version, ledgered)
``POST /governance/requests``              researcher  ask for a dataset: ``{dataset, purpose,
                                                       project, criteria?}``
``GET  /governance/requests``              anyone      my requests; stewards: ``?status=pending``
                                                       lists everyone's
``POST /governance/requests/{id}/approve`` steward     ``{days, members?}`` → the grant
``POST /governance/requests/{id}/reject``  steward     ``{reason}``
``POST /governance/requests/{id}/withdraw`` requester  withdraw my pending request
``GET  /governance/grants``                anyone      my active grants (cohort size, expiry)
``POST /governance/withdrawals``           steward     ``{dataset, patient}``: consent withdrawn
``GET  /governance/patients/{p}/report``   steward     "what happened to my data": every ledger
                                                       entry about the patient and their studies
``POST /cohort/count``                     per terms   ``{criteria, members?, datasets?,
                                                       broker_floor?, rounding?}``: suppressed
                                                       counts per dataset the terms allow;
                                                       member lists only under a grant, only
                                                       the grant's cohort
=========================================  ==========  ==========================================

Refusals are 403 with ``{"error": reason, "message": ...}`` and are ledgered by the
governance layer (requests) or here (role checks go through the service's handler).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from incisive_lab.access import Principal, Role
from incisive_lab.governance.policy import Requester
from incisive_lab.governance.store import Governance, GovernanceError
from incisive_lab.governance.terms import TermsError

__all__ = [
    "ORGANISATION_CLAIMS",
    "add_governance_routes",
    "is_staff",
    "purpose_term",
    "requester_of",
    "require_staff",
]

#: Claims naming the person's organisation, in order (eduGAIN/REFEDS, then a plain one).
ORGANISATION_CLAIMS = ("schac_home_organization", "org", "organisation")
_STATUS = {"not-found": 404, "not-pending": 409, "not-owner": 403, "invalid": 400}


def requester_of(who: Principal) -> Requester:
    """The policy's view of a verified caller."""
    org = next((str(who.claims[c]) for c in ORGANISATION_CLAIMS if isinstance(who.claims.get(c), str)), None)
    return Requester(subject=who.subject, roles=who.roles, loa=who.loa, organisation=org)


def is_staff(who: Principal, organisation: str | None, *roles: Role) -> bool:
    """Whether ``who`` is one of this node's stewards (or ``roles``): the role, and — when the
    node names its organisation — a token of that organisation (a steward elsewhere is not
    one here)."""
    if not who.has_role(*(roles or (Role.STEWARD,))):
        return False
    return organisation is None or requester_of(who).organisation == organisation


def require_staff(who: Principal, organisation: str | None, *roles: Role) -> None:
    """Refuse (403, ``role-missing``) unless :func:`is_staff`."""
    from incisive_lab.access import AccessDenied, Reason

    who.require_role(*(roles or (Role.STEWARD,)))
    if not is_staff(who, organisation, *roles):
        raise AccessDenied(Reason.ROLE_MISSING, f"{who.subject!r} acts for another organisation than "
                                                f"this node's ({organisation})")


def _central_token(request: Request) -> str | None:
    """The token for the central node: ``X-Central-Authorization`` when the steward's client
    sends one (a token for the central node's audience), else the caller's own token (nodes
    of one federation that share an audience)."""
    for name in ("x-central-authorization", "authorization"):
        value = request.headers.get(name, "")
        if value[:7].lower() == "bearer " and value[7:].strip():
            return value[7:].strip()
    return None


def purpose_term(header: str | None) -> str | None:
    """The purpose term of an ``X-Purpose`` header (``ai-development; project=lung`` → ``ai-development``)."""
    if not header:
        return None
    term = header.split(";", 1)[0].strip().lower()
    return term or None


def _error(exc: GovernanceError | TermsError) -> JSONResponse:
    if isinstance(exc, TermsError):
        return JSONResponse({"error": "invalid-terms", "message": str(exc)}, status_code=400)
    return JSONResponse({"error": exc.reason, "message": str(exc)}, status_code=_STATUS.get(exc.reason, 403))


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise GovernanceError("the body must be a JSON object", "invalid")
    return body


def add_governance_routes(app: FastAPI, governance: Governance, *, principal: Callable[[Request], Principal],
                          ledger: Any, patient_studies: Callable[[str], list[str]], store: Any,
                          organisation: str | None = None,
                          central_removal: Callable[[str, str, str | None], dict[str, Any]] | None = None) -> None:
    """Add the routes of the module doc to ``app``.

    ``principal`` verifies the caller (raising the service's AccessError); ``ledger`` is the
    node's ledger (for the steward's patient report); ``patient_studies`` gives a patient's
    study UIDs (to find accesses of their images); ``store`` is the node store (cohort counts);
    ``organisation`` the provider's, whose stewards alone act as this node's (``None``: any
    steward; see :func:`is_staff`); ``central_removal(dataset, patient, token)``, when the
    provider also hosts data centrally, asks the central node to remove a withdrawn patient.
    """

    async def caller(request: Request) -> Principal:
        return await run_in_threadpool(principal, request)

    def catalogue() -> dict[str, Any]:
        records = []
        for info in store.index.datasets():
            path = store.dataset_record_path(info.name)
            if not path.is_file():
                continue  # an ingest that has not finished yet publishes nothing
            record = json.loads(path.read_text(encoding="utf-8"))
            terms = governance.terms(info.name)
            if terms is not None:
                record["incisive:accessTerms"] = {**terms.to_json(), "sha256": terms.sha256}
            records.append(record)
        return {"format": "incisive-catalogue/1", "node": store.dir.name, "datasets": records}

    @app.get("/catalogue")
    async def get_catalogue(request: Request) -> JSONResponse:
        """Discovery: every dataset's record (any authenticated person; ledgered as a query)."""
        from incisive_lab.ledger import Event, Outcome

        who = await caller(request)
        out = await run_in_threadpool(catalogue)
        await run_in_threadpool(ledger.append, Event(
            kind="query", actor=f"user:{who.subject}", action="catalogue", resource="node:catalogue",
            purpose=request.headers.get("x-purpose", "").strip()[:200] or "unspecified",
            outcome=Outcome.allow("discovery"), details={"results": len(out["datasets"])}))
        return JSONResponse(out, media_type="application/ld+json")

    @app.get("/governance/terms/{dataset}")
    async def get_terms(request: Request, dataset: str) -> JSONResponse:
        await caller(request)
        terms = await run_in_threadpool(governance.terms, dataset)
        if terms is None:
            return JSONResponse({"error": "no-terms", "message": f"dataset {dataset} has no sharing terms"},
                                status_code=404)
        return JSONResponse({**terms.to_json(), "sha256": terms.sha256})

    @app.put("/governance/terms/{dataset}")
    async def put_terms(request: Request, dataset: str) -> JSONResponse:
        who = await caller(request)
        require_staff(who, organisation)
        try:
            body = await _json_body(request)
            terms = await run_in_threadpool(lambda: governance.set_terms(body, actor=who.subject, dataset=dataset))
        except (GovernanceError, TermsError) as exc:
            return _error(exc)
        return JSONResponse({**terms.to_json(), "sha256": terms.sha256})

    @app.post("/governance/requests")
    async def submit(request: Request) -> JSONResponse:
        who = await caller(request)
        try:
            body = await _json_body(request)
            unknown = sorted(set(body) - {"dataset", "purpose", "project", "criteria"})
            if unknown:
                raise GovernanceError(f"unknown field {unknown[0]!r}", "invalid")
            if not all(isinstance(body.get(k), str) for k in ("dataset", "purpose", "project")):
                raise GovernanceError("dataset, purpose and project are required strings", "invalid")
            criteria = body.get("criteria")
            if criteria is not None and not isinstance(criteria, dict):
                raise GovernanceError("criteria must be a JSON object", "invalid")
            req = await run_in_threadpool(lambda: governance.submit_request(
                requester_of(who), body["dataset"], purpose=body["purpose"], project=body["project"],
                criteria=criteria))
        except GovernanceError as exc:
            return _error(exc)
        return JSONResponse(req.to_json(), status_code=201)

    @app.get("/governance/requests")
    async def list_requests(request: Request, status: str | None = None) -> JSONResponse:
        who = await caller(request)
        if is_staff(who, organisation) and status == "pending":
            found = await run_in_threadpool(governance.pending)
        else:
            found = await run_in_threadpool(lambda: governance.requests(requester=who.subject, status=status))
        return JSONResponse([r.to_json() for r in found])

    @app.post("/governance/requests/{request_id}/{verb}")
    async def decide_request(request: Request, request_id: str, verb: str) -> JSONResponse:
        who = await caller(request)
        try:
            if verb == "withdraw":
                req = await run_in_threadpool(lambda: governance.withdraw_request(request_id, requester=who.subject))
                return JSONResponse(req.to_json())
            if verb not in ("approve", "reject"):
                return JSONResponse({"error": "not-found", "message": f"no action {verb!r}"}, status_code=404)
            require_staff(who, organisation)
            body = await _json_body(request)
            if verb == "reject":
                req = await run_in_threadpool(lambda: governance.reject(
                    request_id, steward=who.subject, reason=str(body.get("reason", ""))))
                return JSONResponse(req.to_json())
            days = body.get("days", 365)
            members = body.get("members")
            if not isinstance(days, int) or isinstance(days, bool):
                raise GovernanceError("days must be an integer", "invalid")
            if members is not None and not (isinstance(members, list) and all(isinstance(m, str) for m in members)):
                raise GovernanceError("members must be a list of patient pseudonyms", "invalid")
            req = await run_in_threadpool(governance.request, request_id)
            cohort: frozenset[str] = (frozenset(members) if members is not None else
                                      await run_in_threadpool(lambda: governance.dataset_patients(req.dataset)))
            grant = await run_in_threadpool(lambda: governance.approve(
                request_id, steward=who.subject, members=cohort, days=days, reason=str(body.get("reason", ""))))
        except GovernanceError as exc:
            return _error(exc)
        return JSONResponse({"grant_id": grant.grant_id, "dataset": grant.dataset, "grantee": grant.grantee,
                             "purpose": grant.purpose, "expires": grant.expires.isoformat(),
                             "members": len(grant.members)})

    @app.get("/governance/grants")
    async def my_grants(request: Request) -> JSONResponse:
        who = await caller(request)
        grants = await run_in_threadpool(lambda: governance.grants_for(who.subject))
        return JSONResponse([{"grant_id": g.grant_id, "dataset": g.dataset, "purpose": g.purpose,
                              "expires": g.expires.isoformat(), "members": len(g.members)} for g in grants])

    @app.post("/governance/withdrawals")
    async def withdraw(request: Request) -> JSONResponse:
        who = await caller(request)
        require_staff(who, organisation)
        try:
            body = await _json_body(request)
            dataset, patient = body.get("dataset"), body.get("patient")
            if not isinstance(dataset, str) or not isinstance(patient, str) or not dataset or not patient:
                raise GovernanceError("dataset and patient are required", "invalid")
            if patient not in await run_in_threadpool(lambda: governance.dataset_patients(dataset)):
                raise GovernanceError(f"dataset {dataset} holds no patient {patient}", "not-found")
            shrunk = await run_in_threadpool(lambda: governance.withdraw_patient(dataset, patient,
                                                                                 steward=who.subject))
        except GovernanceError as exc:
            return _error(exc)
        answer: dict[str, Any] = {"dataset": dataset, "patient": patient, "grants_shrunk": shrunk}
        if central_removal is not None:  # the local withdrawal stands whatever the central node says
            answer["central"] = await run_in_threadpool(central_removal, dataset, patient,
                                                        _central_token(request))
        return JSONResponse(answer)

    @app.get("/governance/patients/{patient}/report")
    async def patient_report(request: Request, patient: str) -> JSONResponse:
        who = await caller(request)
        require_staff(who, organisation, Role.STEWARD, Role.AUDITOR)

        def build() -> dict[str, Any]:
            resources = [f"patient:{patient}", f"fhir:Patient/{patient}",
                         *[f"study:{s}" for s in patient_studies(patient)]]
            checkpoint = ledger.checkpoint()  # one tree for every proof in the report
            entries: dict[int, Any] = {}
            for resource in resources:
                for e in ledger.query(resource=resource, limit=10_000, checkpoint=checkpoint).to_dict()["entries"]:
                    entries[e["index"]] = e
            return {"patient": patient, "resources": resources, "checkpoint": str(checkpoint),
                    "entries": [entries[i] for i in sorted(entries)],
                    "withdrawn": sorted(governance.datasets_withdrawn_for(patient))}

        return JSONResponse(await run_in_threadpool(build))

    from incisive_lab.cohort import CohortError, QueryGuard, run_cohort_query
    from incisive_lab.cohort.guard import BudgetExceeded, QueryRefused
    from incisive_lab.governance.policy import Action
    from incisive_lab.ledger import Event, Outcome

    guard = QueryGuard(store.engine)

    def count(who: Principal, body: dict[str, Any], purpose: str | None, purpose_header: str) -> JSONResponse:
        requester = requester_of(who)
        unknown = sorted(set(body) - {"criteria", "members", "datasets", "broker_floor", "rounding"})
        if unknown:
            raise GovernanceError(f"unknown field {unknown[0]!r}", "invalid")
        names = [d.name for d in store.index.datasets()]
        wanted = body.get("datasets")
        if wanted is not None:
            if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
                raise GovernanceError("datasets must be a list of dataset names", "invalid")
            missing = sorted(set(wanted) - set(names))
            if missing:
                raise GovernanceError(f"this node holds no dataset {missing[0]!r}", "not-found")
            names = [n for n in names if n in wanted]
        allowed, denied, floors, member_sets = [], {}, {}, {}
        for name in names:
            d = governance.decide(requester, Action.COUNT, name, purpose=purpose)
            if not d.allowed:
                denied[name] = d.reason
                continue
            terms = governance.terms(name)
            assert terms is not None
            allowed.append(name)
            floors[name] = terms.floor
            grants = [g for g in governance.grants_for(who.subject, dataset=name) if g.purpose == purpose]
            if grants and governance.decide(requester, Action.LIST_MEMBERS, name, purpose=purpose).allowed:
                member_sets[name] = frozenset().union(*(g.members for g in grants))
        query_hash = hashlib.sha256(json.dumps(body.get("criteria"), sort_keys=True, default=str).encode()).hexdigest()
        base: dict[str, Any] = {"kind": "query", "actor": f"user:{who.subject}", "action": "cohort",
                                "resource": "node:cohort", "purpose": purpose_header or "unspecified"}
        if not allowed:
            ledger.append(Event(**base, outcome=Outcome.deny("no-dataset-allowed"),
                                details={"datasets": names, "query_sha256": query_hash}))
            return JSONResponse({"format": "incisive-cohort-answer/1", "datasets": [], "denied": denied})
        withdrawn = governance.withdrawn()
        try:
            answer = run_cohort_query(store, body.get("criteria") or {}, user=who.subject, guard=guard,
                                      floor=floors, broker_floor=body.get("broker_floor"),
                                      rounding=body.get("rounding", 1), withdrawn=withdrawn,
                                      members=bool(body.get("members")), member_datasets=set(member_sets),
                                      datasets=allowed)
        except QueryRefused as exc:
            ledger.append(Event(**base, outcome=Outcome.deny(exc.reason),
                                details={"datasets": allowed, "query_sha256": query_hash}))
            return JSONResponse({"error": exc.reason, "message": str(exc)},
                                status_code=429 if isinstance(exc, BudgetExceeded) else 403)
        out = answer.to_json()
        if member_sets and body.get("members"):  # a grant lists its own cohort only
            for item in out["datasets"]:
                cohort = member_sets.get(item["dataset"])
                if cohort is not None and "members" in item:
                    keep = {s.study_uid for s in store.index.studies(dataset=item["dataset"])
                            if s.patient_id in cohort}
                    item["members"] = [m for m in item["members"] if m["study_uid"] in keep]
        out["denied"] = denied
        ledger.append(Event(**base, outcome=Outcome.allow("terms"), details={
            "datasets": allowed, "query_sha256": query_hash,
            "suppressed": any(d["suppressed"] for d in out["datasets"]),
            "floor": min(d["floor"] for d in out["datasets"])}))
        return JSONResponse(out)

    @app.post("/cohort/count")
    async def cohort_count(request: Request) -> JSONResponse:
        who = await caller(request)
        header = request.headers.get("x-purpose", "").strip()[:200]
        try:
            body = await _json_body(request)
            return await run_in_threadpool(count, who, body, purpose_term(header), header)
        except GovernanceError as exc:
            return _error(exc)
        except CohortError as exc:
            return JSONResponse({"error": "invalid-criteria", "message": str(exc)}, status_code=400)
