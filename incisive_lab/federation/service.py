"""The broker service: one ASGI application over a node list (framework glue only).

========================================  =========  ==========================================
route                                     who        what
========================================  =========  ==========================================
``GET  /healthz``                         anyone     the broker runs (says nothing of nodes)
``GET  /nodes``                           anyone     each node's ``/healthz`` status and the
                                          signed in  state of its cached catalogue
``GET  /catalogue``                       signed in  one HealthDCAT-AP ``dcat:Catalog`` of
                                                     every node's records (cached, refreshed
                                                     after ``catalogue_ttl``)
``GET  /catalogue/search?...``            signed in  faceted search (see
                                                     :mod:`incisive_lab.federation.catalogue`)
``POST /cohort/count``                    per terms  ``{criteria, members?, datasets?, nodes?,
                                                     broker_floor?, rounding?}`` fanned out to
                                                     the nodes; per-node answers and status
``GET  /requests``                        signed in  my access requests on every node;
                                                     stewards: ``?status=pending`` lists
                                                     everyone's pending requests
``POST /requests``                        signed in  ``{dataset, purpose, project, criteria?,
                                                     node?}`` forwarded to the node holding
                                                     the dataset (``dataset`` may be a
                                                     ``node/dataset`` reference)
``GET  /grants``                          signed in  my active grants on every node
========================================  =========  ==========================================

Tokens: the broker verifies the caller's access token itself (an RFC 9068 JWT for the
federation's audience; JWKS, ``iss``, ``aud``, expiry, level of assurance) and forwards the
same ``Authorization`` and ``X-Purpose`` headers to every node, which verifies the token
again and decides under its own sharing terms. All nodes of a federation are therefore
configured with the federation's audience (see ``docs/broker.md``; token exchange per node,
RFC 8693, is the production alternative).

Every federated query (``count``, ``catalogue``, searches included) is written to the
broker's own ledger, allowed or denied; a missing or bad token is answered 401 and
ledgered. Errors map to HTTP in one place: ``{"error": code, "message": ...}``.

Example
-------
>>> settings = BrokerSettings(config=load_config("nodes.toml"), issuer="https://idp.example",
...                           audience="https://federation.example/", state_dir=Path("state"))  # doctest: +SKIP
>>> app = create_app(settings)                                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from incisive_lab.access import AccessError, Principal, TokenVerifier
from incisive_lab.errors import IncisiveLabError
from incisive_lab.federation.broker import Broker, BrokerError, NodeResult
from incisive_lab.federation.catalogue import CatalogueError, merge, parse_search, search
from incisive_lab.federation.config import BrokerConfig

__all__ = ["BrokerSettings", "create_app"]

log = logging.getLogger("incisive_lab.federation.service")
LOA_LEVELS = ("low", "substantial", "high")
_REQUEST_FIELDS = frozenset({"dataset", "purpose", "project", "criteria", "node"})


@dataclass(frozen=True)
class BrokerSettings:
    """How a broker runs (see ``incisive-lab broker serve --help``).

    The ledger is opened at ``ledger_dir`` if given, else at ``state_dir`` (its files go in
    a ``ledger/`` folder there, as at a node); one of them is required.
    """

    config: BrokerConfig
    issuer: str
    audience: str
    state_dir: Path | None = None
    ledger_dir: Path | None = None
    min_loa: str = "substantial"
    jwks_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8090
    roles_claims: tuple[str, ...] = ("roles", "groups")

    def __post_init__(self) -> None:
        if self.min_loa not in LOA_LEVELS:
            raise IncisiveLabError(f"--min-loa must be one of {', '.join(LOA_LEVELS)} (got {self.min_loa!r})")
        if not self.issuer or not self.issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise IncisiveLabError(f"--issuer {self.issuer!r}: an issuer must be https (plain http only on "
                                   "loopback, for development)")
        if not self.audience:
            raise IncisiveLabError("--audience must name the federation's resource identifier")
        if self.ledger_dir is None and self.state_dir is None:
            raise IncisiveLabError("--state-dir or --ledger-dir is required (the broker's ledger lives there)")

    @property
    def ledger_location(self) -> Path:
        """Where :meth:`Ledger.open` is pointed."""
        where = self.ledger_dir if self.ledger_dir is not None else self.state_dir
        assert where is not None
        return where


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def _statuses(results: list[NodeResult]) -> list[str]:
    return [f"{r.node}:{r.status}" for r in results]


def create_app(settings: BrokerSettings, *, verifier: Any = None,
               transport: Any = None, jwks_transport: Any = None, training: Any = None) -> FastAPI:
    """The ASGI application of a broker.

    Parameters
    ----------
    settings
        The broker settings.
    verifier
        A token verifier with ``verify_header(value) -> Principal`` (default: one built
        from the settings over the issuer's JWKS).
    transport
        An httpx *async* transport to the nodes (tests); default: the network.
    jwks_transport
        An httpx transport for the JWKS fetches (tests); default: the network.
    training
        A function ``ledger -> Coordinator`` for federated training runs (``/fl/runs``,
        see :mod:`incisive_lab.fl.routes`); default: none (the endpoints are absent).
    """
    from incisive_lab.ledger import Event, Ledger, Outcome

    if verifier is None:
        verifier = TokenVerifier.for_service(settings.issuer, settings.audience, jwks_url=settings.jwks_url,
                                             min_loa=settings.min_loa, roles_claims=settings.roles_claims,
                                             http=jwks_transport)
    settings.ledger_location.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(settings.ledger_location)
    broker = Broker(settings.config, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await broker.aclose()
        ledger.close()

    app = FastAPI(title="INCISIVE Lab broker", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.settings, app.state.broker, app.state.ledger = settings, broker, ledger

    def purpose_of(request: Request) -> str:
        return request.headers.get("x-purpose", "").strip()[:200]

    async def caller(request: Request) -> Principal:
        p: Principal = await run_in_threadpool(verifier.verify_header, request.headers.get("authorization"))
        request.state.principal = p
        return p

    async def record(**kw: Any) -> None:
        await run_in_threadpool(ledger.append, Event(**kw))

    def _action(path: str) -> tuple[str, str]:
        if path.startswith("/cohort"):
            return "query", "count"
        if path.startswith("/catalogue"):
            return "query", "catalogue"
        if path.startswith("/fl/"):
            return "fl-run", "submit"
        return "access", "read"

    @app.exception_handler(AccessError)
    async def _refused(request: Request, exc: AccessError) -> JSONResponse:
        who = getattr(request.state, "principal", None)
        kind, action = _action(request.url.path)
        await record(kind=kind, actor=f"user:{who.subject}" if who else "anonymous", action=action,
                     resource=f"broker:{request.url.path}", purpose=purpose_of(request) or "unspecified",
                     outcome=Outcome.deny(exc.reason.value))
        headers = {"WWW-Authenticate": verifier.www_authenticate(exc)} if exc.status == 401 else {}
        return JSONResponse({"error": exc.reason.value, "message": exc.message}, status_code=exc.status,
                            headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the broker answers (node health is ``/nodes``)."""
        return {"status": "ok", "nodes": len(settings.config.nodes)}

    @app.get("/nodes")
    async def nodes(request: Request) -> JSONResponse:
        await caller(request)
        results = await broker.fan_out("GET", "/healthz", authorization=None, purpose=None)
        cache = broker.cache_state()
        out = [{**r.summary(), "url": n.url, "timeout": n.timeout, "country": n.country,
                "catalogue": cache[n.name]} for n, r in zip(settings.config.nodes, results, strict=True)]
        return JSONResponse({"nodes": out, "partial": any(r.status != "ok" for r in results)})

    async def _catalogue(request: Request, who: Principal) -> tuple[dict[str, Any], list[NodeResult]]:
        cats, statuses = await broker.catalogues(authorization=request.headers.get("authorization"),
                                                 purpose=purpose_of(request) or None)
        merged = merge(cats)
        by_name = {r.node: r for r in statuses}
        infos = {i["name"]: i for i in merged["incisive:nodes"]}
        merged["incisive:nodes"] = [
            {**infos.get(n.name, {"name": n.name, "datasets": 0, "stale": False}),
             "status": by_name[n.name].status if n.name in by_name else "error",
             **({"message": by_name[n.name].message} if n.name in by_name and by_name[n.name].message else {})}
            for n in settings.config.nodes]
        merged["incisive:partial"] = any(i["status"] != "ok" for i in merged["incisive:nodes"])
        return merged, statuses

    @app.get("/catalogue")
    async def catalogue(request: Request) -> JSONResponse:
        """The federated catalogue (any signed-in person; ledgered)."""
        who = await caller(request)
        merged, statuses = await _catalogue(request, who)
        await record(kind="query", actor=f"user:{who.subject}", action="catalogue", resource="broker:catalogue",
                     purpose=purpose_of(request) or "unspecified", outcome=Outcome.allow("discovery"),
                     details={"results": len(merged["dcat:dataset"]), "nodes": _statuses(statuses)})
        return JSONResponse(merged, media_type="application/ld+json")

    @app.get("/catalogue/search")
    async def catalogue_search(request: Request) -> JSONResponse:
        """Faceted search over the federated catalogue (ledgered, refusals too)."""
        who = await caller(request)
        base = {"kind": "query", "actor": f"user:{who.subject}", "action": "catalogue",
                "resource": "broker:catalogue/search", "purpose": purpose_of(request) or "unspecified"}
        try:
            query = parse_search(request.query_params.multi_items())
        except CatalogueError as exc:
            await record(**base, outcome=Outcome.deny("invalid-search"))
            return _error(400, "invalid-search", str(exc))
        merged, statuses = await _catalogue(request, who)
        result = search(merged["dcat:dataset"], query)
        result["nodes"] = merged["incisive:nodes"]
        result["partial"] = merged["incisive:partial"]
        await record(**base, outcome=Outcome.allow("discovery"),
                     details={"results": result["total"], "nodes": _statuses(statuses)})
        return JSONResponse(result)

    @app.post("/cohort/count")
    async def cohort_count(request: Request) -> JSONResponse:
        """A federated cohort count (per-node answers and status; ledgered, refusals too)."""
        who = await caller(request)
        purpose = purpose_of(request)
        raw = await request.body()
        base = {"kind": "query", "actor": f"user:{who.subject}", "action": "count", "resource": "broker:cohort",
                "purpose": purpose or "unspecified"}
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise BrokerError("the body is not JSON") from None
            answer = await broker.count(body, authorization=request.headers.get("authorization"),
                                        purpose=purpose or None)
        except BrokerError as exc:
            await record(**base, outcome=Outcome.deny(exc.error),
                         details={"query_sha256": hashlib.sha256(raw).hexdigest()})
            return _error(exc.status, exc.error, str(exc))
        query_hash = hashlib.sha256(json.dumps(answer["criteria"], sort_keys=True, default=str).encode()).hexdigest()
        problems = [f"{n['node']} {n['status']}" for n in answer["nodes"] if n["status"] != "ok"]
        await record(**base, outcome=Outcome.allow("partial: " + ", ".join(problems) if problems else "fan-out"),
                     details={"datasets": [d["ref"] for d in answer["datasets"]], "query_sha256": query_hash,
                              "results": len(answer["datasets"]),
                              "suppressed": any(d["suppressed"] for d in answer["datasets"]),
                              "floor": answer["broker_floor"],
                              "nodes": [f"{n['node']}:{n['status']}" for n in answer["nodes"]]})
        return JSONResponse(answer)

    def _merged_lists(results: list[NodeResult]) -> dict[str, Any]:
        items = []
        for r in results:
            if r.status == "ok" and isinstance(r.body, list):
                items += [{**i, "node": r.node} for i in r.body if isinstance(i, dict)]
            elif r.status == "ok":
                r.status, r.message = "error", "malformed answer (not a list)"
        return {"items": items, "nodes": [r.summary() for r in results],
                "partial": any(r.status != "ok" for r in results)}

    @app.get("/requests")
    async def list_requests(request: Request, status: str | None = None) -> JSONResponse:
        """My requests on every node; stewards with ``?status=pending``: every pending request."""
        await caller(request)
        results = await broker.fan_out("GET", "/governance/requests",
                                       authorization=request.headers.get("authorization"),
                                       purpose=purpose_of(request) or None,
                                       params={"status": status} if status else None)
        return JSONResponse(_merged_lists(results))

    @app.get("/grants")
    async def list_grants(request: Request) -> JSONResponse:
        """My active grants on every node."""
        await caller(request)
        results = await broker.fan_out("GET", "/governance/grants",
                                       authorization=request.headers.get("authorization"),
                                       purpose=purpose_of(request) or None)
        return JSONResponse(_merged_lists(results))

    @app.post("/requests")
    async def submit_request(request: Request) -> JSONResponse:
        """Forward an access request to the node holding the dataset; the node's answer comes back."""
        who = await caller(request)
        auth, purpose = request.headers.get("authorization"), purpose_of(request) or None
        try:
            try:
                body = await request.json()
            except ValueError:
                raise BrokerError("the body is not JSON") from None
            if not isinstance(body, dict):
                raise BrokerError("the body must be a JSON object")
            unknown = sorted(set(body) - _REQUEST_FIELDS)
            if unknown:
                raise BrokerError(f"{unknown[0]}: unknown field (fields: {', '.join(sorted(_REQUEST_FIELDS))})")
            for key in ("dataset", "purpose", "project"):
                if not isinstance(body.get(key), str) or not body[key].strip():
                    raise BrokerError(f"{key}: required, a non-empty string")
            node_name, dataset = body.get("node"), body["dataset"]
            if "/" in dataset:
                ref_node, _, dataset = dataset.partition("/")
                if node_name not in (None, ref_node):
                    raise BrokerError(f"node: {node_name!r} disagrees with the reference {body['dataset']!r}")
                node_name = ref_node
            if node_name is None:
                holders = await broker.holders(dataset, authorization=auth, purpose=purpose)
                if not holders:
                    raise BrokerError(f"dataset: no node's catalogue lists {dataset!r}", status=404,
                                      error="not-found")
                if len(holders) > 1:
                    raise BrokerError(f"dataset: {dataset!r} is held by {', '.join(holders)}; name one as "
                                      "'node/dataset' or with node")
                node_name = holders[0]
            if not isinstance(node_name, str):
                raise BrokerError("node: must be a node name")
            try:
                node = settings.config.node(node_name)
            except KeyError:
                raise BrokerError(f"node: unknown node {node_name!r}", status=404, error="not-found") from None
        except BrokerError as exc:
            return _error(exc.status, exc.error, str(exc))
        forward = {k: v for k, v in body.items() if k != "node"}
        forward["dataset"] = dataset
        res = await broker.call(node, "POST", "/governance/requests", authorization=auth, purpose=purpose,
                                json=forward)
        if res.status == "timeout":
            return _error(504, "node-timeout", f"node {node.name}: {res.message}")
        if res.http_status is None or not isinstance(res.body, dict):
            return _error(502, "node-error", f"node {node.name}: {res.message}")
        log.info(json.dumps({"event": "request-forwarded", "user": who.subject, "node": node.name,
                             "status": res.http_status}))
        return JSONResponse({**res.body, "node": node.name}, status_code=res.http_status)

    if training is not None:
        from incisive_lab.fl.routes import add_routes

        add_routes(app, training(ledger), caller, purpose_of)
    return app
