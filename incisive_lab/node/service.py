"""The node service: one ASGI application over a node directory (framework glue only).

Every route but ``/healthz`` needs an OIDC access token (``Authorization: Bearer ...``),
verified locally by :class:`incisive_lab.access.TokenVerifier` (JWKS, ``iss``, ``aud``,
expiry, algorithm allow-list, eIDAS level of assurance). A missing or bad token is
answered 401, a caller without the role 403; both are written to the node's ledger with
the reason, as is every data access that is allowed. The request logic itself lives in
framework-free modules (DICOMweb, FHIR REST); this module maps HTTP to them and their
errors to HTTP in one place.

Settings come from one typed object (:class:`ServiceSettings`), read from command-line
arguments or ``INCISIVE_*`` environment variables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from incisive_lab.access import AccessError, Principal, Role, TokenVerifier
from incisive_lab.errors import IncisiveLabError

__all__ = ["ServiceSettings", "create_app"]

log = logging.getLogger("incisive_lab.node.service")

LOA_LEVELS = ("low", "substantial", "high")


@dataclass(frozen=True)
class ServiceSettings:
    """How a node service runs (see ``incisive-lab node serve --help``)."""

    node_dir: Path
    issuer: str
    audience: str
    min_loa: str = "substantial"
    db_url: str | None = None
    jwks_url: str | None = None
    pacs_url: str | None = None  #: serve images from this PACS's DICOMweb instead of the node's file store
    secret_file: Path | None = None  #: the provider's secret: STOW-RS screens uploads with it and the vault
    organisation: str | None = None  #: the provider's organisation: only its stewards act as this node's stewards
    central_url: str | None = None  #: the central node: a withdrawal here asks it to remove the patient there
    host: str = "127.0.0.1"
    port: int = 8081
    roles_claims: tuple[str, ...] = ("roles", "groups")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_loa not in LOA_LEVELS:
            raise IncisiveLabError(f"--min-loa must be one of {', '.join(LOA_LEVELS)} (got {self.min_loa!r})")
        if not self.issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise IncisiveLabError(
                f"--issuer {self.issuer!r}: an issuer must be https (plain http only on loopback, for development)"
            )
        if not self.audience:
            raise IncisiveLabError("--audience must name this node's resource identifier")
        if self.central_url is not None and self.secret_file is None:
            raise IncisiveLabError("--central-url needs --secret-file: the removal handle is computed from the vault")
        if self.central_url is not None and not self.central_url.startswith(
                ("https://", "http://127.0.0.1", "http://localhost")):
            raise IncisiveLabError(f"--central-url {self.central_url!r}: must be https (plain http only on loopback)")
        if not (self.node_dir / "objects").is_dir():
            raise IncisiveLabError(f"--node-dir {self.node_dir}: not a node (no objects/; run incisive-lab ingest first)")

    @classmethod
    def from_env(cls, **overrides: Any) -> ServiceSettings:
        """Settings from ``INCISIVE_NODE_DIR``, ``INCISIVE_ISSUER``, ``INCISIVE_AUDIENCE``,
        ``INCISIVE_MIN_LOA``, ``INCISIVE_DB_URL``, ``INCISIVE_JWKS_URL``, ``INCISIVE_PACS_URL``,
        ``INCISIVE_SECRET_FILE``, ``INCISIVE_ORGANISATION``, ``INCISIVE_CENTRAL_URL``; keyword
        overrides win."""
        env = os.environ
        values: dict[str, Any] = {
            "node_dir": Path(env["INCISIVE_NODE_DIR"]) if "INCISIVE_NODE_DIR" in env else None,
            "issuer": env.get("INCISIVE_ISSUER"),
            "audience": env.get("INCISIVE_AUDIENCE"),
            "min_loa": env.get("INCISIVE_MIN_LOA", "substantial"),
            "db_url": env.get("INCISIVE_DB_URL"),
            "jwks_url": env.get("INCISIVE_JWKS_URL"),
            "pacs_url": env.get("INCISIVE_PACS_URL"),
            "secret_file": Path(env["INCISIVE_SECRET_FILE"]) if env.get("INCISIVE_SECRET_FILE") else None,
            "organisation": env.get("INCISIVE_ORGANISATION") or None,
            "central_url": env.get("INCISIVE_CENTRAL_URL") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("node_dir", "issuer", "audience") if not values.get(k)]
        if missing:
            raise IncisiveLabError(
                "missing setting(s): " + ", ".join(f"--{m.replace('_', '-')} (or INCISIVE_{m.upper()})" for m in missing)
            )
        return cls(**values)


def _json_log(event: str, **fields: Any) -> None:
    log.info(json.dumps({"event": event, **fields}, sort_keys=True, default=str))


def _actor(principal: Any) -> str:
    return f"user:{principal.subject}"


def _principal(request: Request) -> Principal:
    """The caller, from a verified access token (a plain def: FastAPI runs it off the event loop)."""
    p: Principal = request.app.state.verifier.verify_header(request.headers.get("authorization"))
    request.state.principal = p
    return p


#: A route parameter that is the verified caller.
Caller = Annotated[Principal, Depends(_principal)]


def create_app(settings: ServiceSettings, *, verifier: Any = None, http_transport: Any = None) -> Any:
    """The ASGI application of one node.

    Parameters
    ----------
    settings
        The service settings.
    verifier
        A token verifier with ``verify_header(value) -> Principal`` (default: one built
        from the settings, fetching the issuer's JWKS through discovery).
    http_transport
        An httpx transport for the JWKS fetches (tests); default: the network.
    """
    from incisive_lab.ledger import Event, Ledger, Outcome
    from incisive_lab.node.dicomweb import DicomwebError, DicomwebService
    from incisive_lab.node.fhir_api import FhirApi
    from incisive_lab.node.store import NodeStore

    if verifier is None:
        verifier = TokenVerifier.for_service(settings.issuer, settings.audience, jwks_url=settings.jwks_url,
                                             min_loa=settings.min_loa, roles_claims=settings.roles_claims,
                                             http=http_transport)

    store = NodeStore.open(settings.node_dir, settings.db_url)
    ledger = Ledger.open(settings.node_dir)
    from incisive_lab.node.dicomweb.backend import DicomwebBackend
    from incisive_lab.node.dicomweb.pacs import PacsBackend

    def scope_studies(scope: Any) -> frozenset[str]:
        from sqlalchemy import select

        from incisive_lab.node._db import studies_table as st
        from incisive_lab.node._scope_sql import scope_condition

        rows = store.index.fetch(select(st.c.study_uid).where(
            scope_condition(st.c.dataset, st.c.patient_id, scope)))
        return frozenset(r.study_uid for r in rows)

    pacs = PacsBackend(settings.pacs_url, scope_studies=scope_studies) if settings.pacs_url else None
    dicomweb: DicomwebBackend = pacs if pacs is not None else DicomwebService(store)
    from incisive_lab.node.dicomweb.stow import StoreTarget, StowTarget

    stow_target: StowTarget = pacs if pacs is not None else StoreTarget(store)
    secret = None
    if settings.secret_file is not None:
        from incisive_lab.deid.keys import Secret

        secret = Secret.from_file(settings.secret_file)
    vault_path = settings.node_dir / NodeStore.PRIVATE / "vault.sqlite"
    fhir = FhirApi(store.fhir)
    from incisive_lab.governance.scope import ReadScope
    from incisive_lab.governance.store import Governance
    from incisive_lab.node.governance_api import is_staff, purpose_term, requester_of, require_staff

    governance = Governance(store.engine, ledger)
    if settings.organisation is None:
        log.warning("no --organisation: every token with the steward role from %s acts as a steward "
                    "of this node; set it when the issuer serves more than one organisation", settings.issuer)

    def read_scope(request: Request, who: Principal) -> ReadScope:
        """What the caller may read here for the purpose they declare (X-Purpose)."""
        return governance.read_scope(requester_of(who), purpose_term(request.headers.get("x-purpose")),
                                     staff=is_staff(who, settings.organisation))
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if pacs is not None:
            pacs.close()
        store.close()
        ledger.close()

    app = FastAPI(title="INCISIVE Lab node", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.settings, app.state.store, app.state.ledger = settings, store, ledger
    app.state.verifier = verifier

    def purpose_of(request: Request) -> str:
        text = request.headers.get("x-purpose", "").strip()[:200]
        return text or "unspecified"

    @app.exception_handler(AccessError)
    def _refused(request: Request, exc: AccessError) -> JSONResponse:
        who = getattr(request.state, "principal", None)
        writing = request.method == "POST" and request.url.path.startswith("/dicomweb/")
        ledger.append(Event(kind="annotate" if writing else "access", actor=_actor(who) if who else "anonymous",
                            action="refuse" if writing else "read",
                            resource=f"node:{request.url.path}", purpose=purpose_of(request),
                            outcome=Outcome.deny(exc.reason.value)))
        _json_log("refused", path=request.url.path, status=exc.status, reason=exc.reason.value)
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = verifier.www_authenticate(exc)
        return JSONResponse({"error": exc.reason.value, "message": exc.message}, status_code=exc.status,
                            headers=headers)

    @app.exception_handler(DicomwebError)
    def _dicomweb_error(request: Request, exc: DicomwebError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness and readiness: the database answers; says nothing about the data."""
        store.counts()
        return {"status": "ok"}

    # --- DICOMweb ------------------------------------------------------------------------
    def _dicomweb_reply(request: Request, who: Principal, reply: Any, *, action: str, fmt: str) -> Response:
        accessed = reply.accessed
        purpose = purpose_of(request)
        events = [Event(kind="access", actor=_actor(who), action=action, resource=f"study:{uid}", purpose=purpose,
                        outcome=Outcome.allow("token"), details={"study": uid, "format": fmt, "via": "dicomweb"})
                  for uid in accessed.studies]
        if not events:  # a search that found nothing is still a query of the node
            events = [Event(kind="query", actor=_actor(who), action="search", resource="node:dicomweb",
                            purpose=purpose, outcome=Outcome.allow("token"), details={"results": 0})]
        ledger.append_many(events)  # durable before the answer leaves
        headers = dict(reply.headers)
        if isinstance(reply.body, bytes | bytearray):
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=headers)
        return StreamingResponse(reply.body, status_code=reply.status, media_type=reply.media_type, headers=headers)

    def _base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/dicomweb"

    def _accept(request: Request) -> str | None:
        return request.headers.get("accept")

    def _refuse_read(request: Request, who: Principal, scope: ReadScope, *, action: str,
                     study: str | None = None) -> None:
        """Ledger a read outside the caller's scope, then refuse it (403, same answer whether
        or not the study exists)."""
        details: dict[str, Any] = {"via": "dicomweb" if request.url.path.startswith("/dicomweb") else "fhir"}
        if study:
            details["study"] = study
        ledger.append(Event(kind="access", actor=_actor(who), action=action,
                            resource=f"study:{study}" if study else f"node:{request.url.path}",
                            purpose=purpose_of(request), outcome=Outcome.deny(scope.reason), details=details))
        _json_log("refused", path=request.url.path, status=403, reason=scope.reason)
        raise DicomwebError(403, scope.explain())

    def _search_scope(request: Request, who: Principal) -> ReadScope:
        scope = read_scope(request, who)
        if not scope:
            _refuse_read(request, who, scope, action="read")
        return scope

    def _study_scope(request: Request, who: Principal, study: str, action: str) -> None:
        from sqlalchemy import select

        from incisive_lab.node._db import studies_table as st

        scope = read_scope(request, who)
        owner = store.index.fetch(select(st.c.dataset, st.c.patient_id).where(st.c.study_uid == study))
        if not owner or not scope.allows(owner[0].dataset, owner[0].patient_id):
            _refuse_read(request, who, scope, action=action, study=study)

    @app.get("/dicomweb/studies")
    def qido_studies(request: Request, who: Caller) -> Response:
        scope = _search_scope(request, who)
        reply = dicomweb.search_studies(request.query_params.multi_items(), accept=_accept(request),
                                        base_url=_base(request), scope=scope)
        return _dicomweb_reply(request, who, reply, action="read", fmt="metadata")

    @app.get("/dicomweb/series")
    @app.get("/dicomweb/studies/{study}/series")
    def qido_series(request: Request, who: Caller, study: str | None = None) -> Response:
        scope = _search_scope(request, who)
        reply = dicomweb.search_series(request.query_params.multi_items(), study_uid=study, accept=_accept(request),
                                       base_url=_base(request), scope=scope)
        return _dicomweb_reply(request, who, reply, action="read", fmt="metadata")

    @app.get("/dicomweb/instances")
    @app.get("/dicomweb/studies/{study}/instances")
    @app.get("/dicomweb/studies/{study}/series/{series}/instances")
    def qido_instances(request: Request, who: Caller, study: str | None = None, series: str | None = None) -> Response:
        scope = _search_scope(request, who)
        reply = dicomweb.search_instances(request.query_params.multi_items(), study_uid=study, series_uid=series,
                                          accept=_accept(request), base_url=_base(request), scope=scope)
        return _dicomweb_reply(request, who, reply, action="read", fmt="metadata")

    @app.get("/dicomweb/studies/{study}")
    @app.get("/dicomweb/studies/{study}/series/{series}")
    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{instance}")
    def wado(request: Request, who: Caller, study: str, series: str | None = None, instance: str | None = None) -> Response:
        _study_scope(request, who, study, "retrieve")
        reply = dicomweb.retrieve(study, series, instance, accept=_accept(request))
        return _dicomweb_reply(request, who, reply, action="retrieve", fmt="dicom")

    @app.get("/dicomweb/studies/{study}/metadata")
    @app.get("/dicomweb/studies/{study}/series/{series}/metadata")
    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata")
    def wado_metadata(request: Request, who: Caller, study: str, series: str | None = None, instance: str | None = None) -> Response:
        _study_scope(request, who, study, "read")
        reply = dicomweb.retrieve_metadata(study, series, instance, accept=_accept(request), base_url=_base(request))
        return _dicomweb_reply(request, who, reply, action="read", fmt="metadata")

    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    def wado_frames(request: Request, who: Caller, study: str, series: str, instance: str, frames: str) -> Response:
        _study_scope(request, who, study, "stream")
        reply = dicomweb.retrieve_frames(study, series, instance, frames, accept=_accept(request))
        return _dicomweb_reply(request, who, reply, action="stream", fmt="dicom")

    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered")
    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
    def wado_rendered(request: Request, who: Caller, study: str, series: str, instance: str, frame: int | None = None) -> Response:
        _study_scope(request, who, study, "view")
        reply = dicomweb.retrieve_rendered(study, series, instance, frame, request.query_params.multi_items(),
                                           accept=_accept(request))
        return _dicomweb_reply(request, who, reply, action="view", fmt="derived")

    # --- STOW-RS: annotations written back -------------------------------------------------
    def _store_annotations(who: Principal, parts: list[tuple[str, bytes]], study: str | None,
                           purpose: str) -> Any:
        from incisive_lab.deid.screen import IdentifierScreen
        from incisive_lab.deid.vault import Vault
        from incisive_lab.node.dicomweb.stow import UploadChecker, store_instances

        screen = None
        if secret is not None and vault_path.exists():
            screen = IdentifierScreen(secret, Vault(vault_path, secret))
        try:
            checker = UploadChecker(stow_target, screen=screen, path_study=study,
                                    allowed_names=[n for n in (who.username, who.subject) if n])
            outcome = store_instances(parts, checker, stow_target)
        finally:
            if screen is not None:
                screen.close()
        events = []
        for a in outcome.accepted:
            details: dict[str, Any] = {
                "study": a.study_uid, "series": a.series_uid, "instance": a.sop_uid, "object": a.kind,
                "source_series": list(a.source_series), "sha256": a.sha256, "labels": list(a.labels),
                "coerced": list(a.coerced), "discarded": len(a.discarded), "unchanged": not a.new,
                "via": "dicomweb"}
            if a.dataset:
                details["dataset"] = a.dataset
            events.append(Event(kind="annotate", actor=_actor(who), action="create", resource=f"study:{a.study_uid}",
                                purpose=purpose, outcome=Outcome.allow("role:annotator"), details=details))
        for f in outcome.failed:
            details = {"failure": f.reason, "via": "dicomweb"}
            details.update({k: v for k, v in (("study", f.study_uid), ("instance", f.sop_uid),
                                               ("object", f.kind)) if v})
            events.append(Event(kind="annotate", actor=_actor(who), action="refuse",
                                resource=f"study:{f.study_uid}" if f.study_uid else "node:dicomweb/studies",
                                purpose=purpose, outcome=Outcome.deny(f.message), details=details))
        ledger.append_many(events)  # durable before the answer leaves
        for w in outcome.warnings():
            _json_log("stow-warning", user=who.subject, warning=w)
        return outcome

    @app.post("/dicomweb/studies")
    @app.post("/dicomweb/studies/{study}")
    async def stow(request: Request, study: str | None = None) -> Response:
        """STOW-RS: store annotations (SEG, SR, KOS) into studies the node holds (annotators)."""
        from incisive_lab.node.dicomweb._http import check_uid
        from incisive_lab.node.dicomweb.stow import MAX_BYTES, parse_multipart

        who = await run_in_threadpool(_principal, request)
        who.require_role(Role.ANNOTATOR)
        purpose = purpose_of(request)
        try:
            if study is not None:
                check_uid(study, "path: StudyInstanceUID")
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
                raise DicomwebError(413, f"body: larger than {MAX_BYTES} bytes; send fewer instances per request")
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BYTES:
                    raise DicomwebError(413, f"body: larger than {MAX_BYTES} bytes; send fewer instances per request")
                chunks.append(chunk)
            parts = parse_multipart(request.headers.get("content-type"), b"".join(chunks))
        except DicomwebError as exc:
            await run_in_threadpool(ledger.append, Event(
                kind="annotate", actor=_actor(who), action="refuse", resource="node:dicomweb/studies",
                purpose=purpose, outcome=Outcome.deny(exc.message), details={"via": "dicomweb"}))
            raise
        outcome = await run_in_threadpool(_store_annotations, who, parts, study, purpose)
        response = JSONResponse(outcome.response(_base(request)), status_code=outcome.status,
                                media_type="application/dicom+json")
        for w in outcome.warnings():
            response.headers.append("Warning", w)
        return response

    # --- FHIR -----------------------------------------------------------------------------
    @app.api_route("/fhir/{path:path}", methods=["GET", "POST", "PUT"])
    async def fhir_route(request: Request, path: str) -> Response:
        who = await run_in_threadpool(_principal, request)
        body = None
        form = None
        if request.method in ("POST", "PUT"):
            ctype = request.headers.get("content-type", "")
            if "application/x-www-form-urlencoded" in ctype:
                form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
            else:
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "structure", "diagnostics": "the body is not JSON"}]},
                        status_code=400, media_type="application/fhir+json")
        roles = {r.value for r in who.roles}
        scope: ReadScope | None = None
        if path.strip("/") != "metadata" and (request.method == "GET" or path.rstrip("/").endswith("_search")):
            scope = await run_in_threadpool(read_scope, request, who)
            if not scope:
                await run_in_threadpool(ledger.append, Event(
                    kind="access", actor=_actor(who), action="read", resource=f"node:fhir/{path}",
                    purpose=purpose_of(request), outcome=Outcome.deny(scope.reason), details={"via": "fhir"}))
                return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "forbidden", "diagnostics": scope.explain()}]},
                    status_code=403, media_type="application/fhir+json")
        reply = await run_in_threadpool(
            fhir.handle, request.method, path, request.query_params.multi_items(),
            base_url=str(request.base_url).rstrip("/") + "/fhir", body=body, form=form, roles=roles,
            prefer=request.headers.get("prefer"), scope=scope)
        purpose = purpose_of(request)
        if reply.resources:
            events = [Event(kind="access", actor=_actor(who), action="read", resource=f"fhir:{ref}", purpose=purpose,
                            outcome=Outcome.allow("token"), details={"format": "fhir", "via": "fhir"})
                      for ref in reply.resources]
        else:
            outcome = Outcome.allow("token") if reply.status < 400 else Outcome.deny(f"HTTP {reply.status}")
            events = [Event(kind="query", actor=_actor(who), action="search", resource=f"node:fhir/{path}",
                            purpose=purpose, outcome=outcome, details={"results": 0})]
        await run_in_threadpool(ledger.append_many, events)
        if (request.method in ("POST", "PUT") and path.split("/", 1)[0] == "Consent" and reply.status < 300
                and isinstance(body, dict) and body.get("status") in ("inactive", "rejected")):
            await run_in_threadpool(_consent_withdrawn, who, body)
        return JSONResponse(reply.body, status_code=reply.status, headers=dict(reply.headers),
                            media_type="application/fhir+json")

    def _consent_withdrawn(who: Principal, consent: dict[str, Any]) -> None:
        """A Consent written inactive or rejected is a withdrawal: at once, in every dataset of the patient."""
        ref = str((consent.get("patient") or {}).get("reference", ""))
        patient = ref.removeprefix("Patient/") if ref.startswith("Patient/") else ""
        if patient:
            for dataset in sorted({s.dataset for s in store.index.studies(patient_id=patient)}):
                governance.withdraw_patient(dataset, patient, steward=who.subject)
                if settings.central_url:  # no token for the central node here: queued for `central retry`
                    central_removal(dataset, patient, None)

    # --- governance: terms, requests, grants, withdrawals ------------------------------------
    from incisive_lab.node.central_api import add_central_routes
    from incisive_lab.node.governance_api import add_governance_routes

    def central_removal(dataset: str, patient: str, token: str | None) -> dict[str, Any]:
        """The provider's half of a withdrawal: ask the central node to remove the patient (or queue it)."""
        from incisive_lab.deid.vault import Vault
        from incisive_lab.node.removal import queue_central_removal, remove_centrally

        assert settings.central_url is not None and secret is not None
        if token is None:
            queue_central_removal(store.engine, patient, dataset, "no token for the central node came with the "
                                                                  "withdrawal")
            return {"status": "pending", "error": "no token for the central node; run `incisive-lab central retry`"}
        with Vault(vault_path, secret) as vault:
            return remove_centrally(store.engine, vault, secret, patient, dataset=dataset,
                                    central_url=settings.central_url, token=token, timeout=10.0)

    app.state.governance = governance
    add_governance_routes(app, governance, principal=_principal, ledger=ledger,
                          patient_studies=lambda p: [s.study_uid for s in store.index.studies(patient_id=p)],
                          store=store, organisation=settings.organisation,
                          central_removal=central_removal if settings.central_url else None)
    add_central_routes(app, store, ledger, _principal, governance=governance)

    # --- the node's ledger ------------------------------------------------------------------
    @app.get("/ledger/checkpoint")
    def ledger_checkpoint(who: Caller) -> Response:
        return Response(str(ledger.checkpoint()), media_type="text/plain; charset=utf-8")

    @app.get("/ledger/accesses")
    def ledger_accesses(request: Request, who: Caller, resource: str) -> JSONResponse:
        """The steward's "who accessed my data": entries about a resource, each with its proof."""
        require_staff(who, settings.organisation, Role.STEWARD, Role.AUDITOR)
        return JSONResponse(ledger.query(resource=resource, limit=1000).to_dict())

    return app
