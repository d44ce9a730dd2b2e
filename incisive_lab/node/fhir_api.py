"""FHIR R4B REST over the node's FHIR store, without a web framework.

The node service's ASGI layer turns an HTTP request into plain values — the method, the path
below the FHIR base, the query (and form) parameters, the client's base URL, the parsed JSON
body and the caller's roles — and calls :meth:`FhirApi.handle`. The answer is a
:class:`FhirResponse` (status, headers, a JSON-able body and the ``Type/id`` of every
resource served or written, for the ledger). Errors are OperationOutcome bodies with their
HTTP status; :class:`FhirError` carries them inside this module.

What is served (the CapabilityStatement of :func:`capability_statement` is built from the
same tables, :mod:`incisive_lab.node._fhir_params`):

- ``GET [base]/metadata``: the CapabilityStatement.
- ``GET [base]/{type}/{id}`` (read) and ``GET [base]/{type}/{id}/_history/{vid}`` (vread of
  the current version; older versions are not kept) for Patient, Condition, Observation,
  Procedure, MedicationStatement, ImagingStudy and Consent.
- ``GET [base]/{type}?...`` and ``POST [base]/{type}/_search`` (form body): a searchset
  Bundle with an exact ``total``, ``self``/``first``/``previous``/``next``/``last`` links
  that start with the client's base URL, ``fullUrl`` and ``search.mode`` on every entry.
- ``POST [base]/Consent`` and ``PUT [base]/Consent/{id}``: callers with the ``steward``
  role only; validated with fhir.resources (R4B); the patient must exist.

Access control beyond the write role (tokens, grants, consent) and the ledger belong to the
service layer; this module neither authenticates nor logs.

Examples
--------
>>> api = FhirApi(store.fhir)                                              # doctest: +SKIP
>>> r = api.handle("GET", "Observation", [("code", "http://loinc.org|21908-9")],
...                base_url="https://node.example/fhir", roles={"researcher"})
>>> r.status, r.body["total"], r.body["link"][0]["url"]                    # doctest: +SKIP
(200, 2, 'https://node.example/fhir/Observation?code=http://loinc.org|21908-9&_count=50')
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import pydantic

from incisive_lab import __version__
from incisive_lab.node._fhir_params import (
    DEFAULT_COUNT,
    ID_RE,
    MAX_COUNT,
    RESOURCES,
    RESULT_PARAMS,
    FhirError,
    ResourceSpec,
    SearchRequest,
    pairs_of,
    parse_search,
)
from incisive_lab.node.fhir_store import FhirQuery, FhirStore

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = [
    "DEFAULT_COUNT",
    "FHIR_JSON",
    "FHIR_VERSION",
    "MAX_COUNT",
    "SUPPORTED_TYPES",
    "WRITE_ROLE",
    "FhirApi",
    "FhirError",
    "FhirResponse",
    "capability_statement",
]

FHIR_VERSION = "4.3.0"
"""The FHIR release served (R4B)."""
FHIR_JSON = "application/fhir+json; fhirVersion=4.3"
"""The content type of every response body."""
WRITE_ROLE = "steward"
"""The role that may create and update Consent resources."""
SUPPORTED_TYPES: tuple[str, ...] = tuple(RESOURCES)
"""The served resource types."""

_CONSENT_STATES = ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")
_PARAMS = Iterable[tuple[str, str]] | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FhirResponse:
    """What the HTTP layer sends back.

    Attributes
    ----------
    status
        HTTP status code.
    body
        A FHIR resource (the resource, a Bundle, an OperationOutcome or the
        CapabilityStatement), JSON-able.
    headers
        At least ``Content-Type``; ``Location``, ``ETag``, ``Last-Modified`` and ``Allow``
        where they apply.
    resources
        ``Type/id`` of every resource served (matches and includes) or written, for the
        access ledger; empty for errors and the CapabilityStatement.
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    resources: tuple[str, ...] = ()


def _now() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _base(base_url: str) -> str:
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url {base_url!r} must be an absolute http(s) URL")
    return base_url.rstrip("/")


def _http_date(instant: str) -> str:
    moment = dt.datetime.fromisoformat(instant.replace("Z", "+00:00"))
    return email.utils.format_datetime(moment.astimezone(dt.UTC), usegmt=True)


def error_response(err: FhirError, *, allow: Sequence[str] = ()) -> FhirResponse:
    """The response for a refused request: its status and OperationOutcome."""
    headers = {"Content-Type": FHIR_JSON}
    if allow:
        headers["Allow"] = ", ".join(allow)
    return FhirResponse(err.status, err.outcome(), headers)


class _MethodNotAllowed(FhirError):
    def __init__(self, method: str, what: str, allow: Sequence[str]) -> None:
        super().__init__(405, "not-supported",
                         f"{method} is not allowed on {what} (allowed: {', '.join(allow)})")
        self.allow = tuple(allow)


def _interactions(spec: ResourceSpec) -> list[str]:
    names = ["read", "vread", "search-type"]
    return [*names, "create", "update"] if spec.writable else names


def capability_statement(base_url: str) -> dict[str, Any]:
    """The node's CapabilityStatement (R4B): exactly what :class:`FhirApi` serves.

    Parameters
    ----------
    base_url
        The client's base URL of the FHIR endpoint (``implementation.url``).
    """
    base = _base(base_url)
    resources = []
    for spec in RESOURCES.values():
        entry: dict[str, Any] = {
            "type": spec.type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{spec.type}",
            "interaction": [{"code": c} for c in _interactions(spec)],
            "versioning": "versioned",
            "readHistory": False,
            "updateCreate": False,
            "conditionalCreate": False,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {k: v for k, v in (("name", p.name), ("definition", p.definition),
                                   ("type", p.type), ("documentation", p.documentation))
                 if v is not None}
                for p in spec.params],
            "documentation": (f"Main date (date parameters, _sort): {spec.date_doc}. "
                              f"_sort: {', '.join(spec.sorts)}."),
        }
        if spec.includes:
            entry["searchInclude"] = [*spec.includes]
        if spec.writable:
            entry["documentation"] += (f" create/update: role {WRITE_ROLE!r} only; the "
                                       "server assigns ids; the patient must exist.")
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "publisher": "INCISIVE Lab",
        "kind": "instance",
        "software": {"name": "incisive-lab node", "version": __version__},
        "implementation": {"description": "INCISIVE Lab node: FHIR R4B over the node store",
                           "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": (
                "Strict search: an unknown parameter, modifier or malformed value is "
                "refused (400, OperationOutcome); 'Prefer: handling=lenient' ignores unknown "
                f"parameters. Bundle.total is always exact. _count 0..{MAX_COUNT} "
                f"(default {DEFAULT_COUNT})."),
            "security": {"description": "Every request carries an OAuth 2.0 bearer access "
                                        "token (RFC 9068 JWT) verified by the node."},
            "resource": resources,
            "searchParam": [{"name": name, "type": kind, "documentation": doc}
                            for name, (kind, doc) in RESULT_PARAMS.items()],
        }],
    }


class FhirApi:
    """FHIR R4B REST request logic over a :class:`~incisive_lab.node.fhir_store.FhirStore`.

    Parameters
    ----------
    store
        The node's FHIR store (``NodeStore.open(dir).fhir``).

    Notes
    -----
    Each public method takes plain inputs and returns a :class:`FhirResponse` or raises
    :class:`FhirError`; :meth:`handle` dispatches a request and turns every
    :class:`FhirError` into its OperationOutcome response.
    """

    def __init__(self, store: FhirStore) -> None:
        self._store = store

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, method: str, path: str | Sequence[str], params: _PARAMS = (), *,
               base_url: str, body: Any = None, form: _PARAMS | None = None,
               roles: Iterable[str] = (), prefer: str | None = None,
               scope: ReadScope | None = None) -> FhirResponse:
        """Answer one request.

        Parameters
        ----------
        method
            HTTP method (``GET``, ``POST``, ``PUT``, ...).
        path
            The path below the FHIR base, as parts (``["Observation", "abc"]``) or text
            (``"Observation/abc"``).
        params
            Query parameters: pairs, a mapping of name to value(s) or a Starlette multi-dict.
        base_url
            The client's base URL of the FHIR endpoint (scheme, host, port and path prefix,
            as the client used them); every URL in the answer starts with it.
        body
            The parsed JSON body of ``POST``/``PUT`` writes.
        form
            The form parameters of ``POST {type}/_search`` (added to ``params``).
        roles
            The caller's roles (from the verified token).
        prefer
            The ``Prefer`` header; ``handling=lenient`` ignores unknown search parameters.
        scope
            The caller's :class:`~incisive_lab.governance.scope.ReadScope`: searches find,
            and reads return, only resources of its patients (a read outside is 403);
            ``None``: no limit (the library's own use).

        Returns
        -------
        FhirResponse
            Never raises :class:`FhirError`: refusals are OperationOutcome responses.
        """
        parts = [p for p in (path.split("/") if isinstance(path, str) else path) if p]
        method = method.upper()
        try:
            return self._dispatch(method, parts, params, base_url=base_url, body=body,
                                  form=form, roles=frozenset(roles), prefer=prefer, scope=scope)
        except _MethodNotAllowed as err:
            return error_response(err, allow=err.allow)
        except FhirError as err:
            return error_response(err)

    def _dispatch(self, method: str, parts: list[str], params: _PARAMS, *, base_url: str,
                  body: Any, form: _PARAMS | None, roles: frozenset[str],
                  prefer: str | None, scope: ReadScope | None = None) -> FhirResponse:
        if parts == ["metadata"]:
            if method not in ("GET", "HEAD"):
                raise _MethodNotAllowed(method, "metadata", ["GET"])
            return self.metadata(base_url=base_url)
        if not parts:
            raise FhirError(404, "not-supported", "no system-level interactions here; "
                            "see [base]/metadata for what is served")
        spec = _spec(parts[0])
        what = "/".join(parts)
        if len(parts) == 1:
            allow = ["GET", "POST"] if spec.writable else ["GET"]
            if method == "GET":
                return self.search(spec.type, params, base_url=base_url, prefer=prefer, scope=scope)
            if method == "POST" and spec.writable:
                return self.create(spec.type, body, base_url=base_url, roles=roles)
            raise _MethodNotAllowed(method, what, allow)
        if len(parts) == 2 and parts[1] == "_search":
            if method != "POST":
                raise _MethodNotAllowed(method, what, ["POST"])
            merged = [*pairs_of(params), *pairs_of(form or ())]
            return self.search(spec.type, merged, base_url=base_url, prefer=prefer, scope=scope)
        if len(parts) == 2:
            allow = ["GET", "PUT"] if spec.writable else ["GET"]
            if method == "GET":
                return self.read(spec.type, parts[1], base_url=base_url, scope=scope)
            if method == "PUT" and spec.writable:
                return self.update(spec.type, parts[1], body, base_url=base_url, roles=roles)
            raise _MethodNotAllowed(method, what, allow)
        if len(parts) == 4 and parts[2] == "_history":
            if method != "GET":
                raise _MethodNotAllowed(method, what, ["GET"])
            return self.read(spec.type, parts[1], base_url=base_url, version_id=parts[3], scope=scope)
        raise FhirError(404, "not-supported", f"{what}: no such FHIR interaction here "
                        "(see [base]/metadata)")

    # -- interactions -----------------------------------------------------------------------

    def metadata(self, *, base_url: str) -> FhirResponse:
        """``GET [base]/metadata``: the CapabilityStatement."""
        return FhirResponse(200, capability_statement(base_url), {"Content-Type": FHIR_JSON})

    def read(self, resource_type: str, id: str, *, base_url: str,
             version_id: str | None = None,
             scope: ReadScope | None = None) -> FhirResponse:
        """``GET [base]/{type}/{id}`` (or ``.../_history/{vid}`` with ``version_id``).

        Raises
        ------
        FhirError
            400 for an id that is not a FHIR id, 404 when the resource (or that version:
            only the current one is kept) does not exist or the type is not served, 403
            when it is outside ``scope`` (the same answer whether or not it exists).
        """
        spec = _spec(resource_type)
        _base(base_url)
        if not ID_RE.fullmatch(id):
            raise FhirError(400, "invalid", f"{id!r} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)")
        if scope is not None:
            info = self._store.info(spec.type, id)
            patient = (info.patient_ref or "").removeprefix("Patient/") if info is not None else None
            if info is None or not scope.allows(info.dataset, patient):
                raise FhirError(403, "forbidden", f"{spec.type}/{id} is not within your grants "
                                "for the declared purpose (X-Purpose)")
        resource = self._store.get(spec.type, id)
        if resource is None:
            raise FhirError(404, "not-found", f"{spec.type}/{id} does not exist")
        current = resource["meta"]["versionId"]
        if version_id is not None and version_id != current:
            raise FhirError(404, "not-found", f"{spec.type}/{id} version {version_id!r} is not "
                            f"kept (only the current version, {current}, is)")
        return FhirResponse(200, resource, _version_headers(resource), (f"{spec.type}/{id}",))

    def search(self, resource_type: str, params: _PARAMS, *, base_url: str,
               prefer: str | None = None,
               scope: ReadScope | None = None) -> FhirResponse:
        """``GET [base]/{type}?...``: a searchset Bundle.

        Parameters
        ----------
        resource_type
            A served type.
        params
            The search parameters (see :meth:`handle`).
        base_url
            The client's base URL; links and ``fullUrl`` start with it.
        prefer
            The ``Prefer`` header (``handling=lenient`` or ``handling=strict``).

        Raises
        ------
        FhirError
            400 naming the parameter at fault, 404 for a type not served.
        """
        base = _base(base_url)
        req = parse_search(resource_type, pairs_of(params), base_url=base,
                           lenient=_lenient(prefer))
        if scope is not None:
            req = dataclasses.replace(req, query=dataclasses.replace(req.query, scope=scope))
        store = self._store
        total = store.find_count(req.resource_type, req.query)
        matches = (store.find(req.resource_type, req.query, sort=req.sort, limit=req.count,
                              offset=req.offset) if req.count else [])
        included = self._included(req, matches, scope)
        entries = [_entry(base, r, "match") for r in matches]
        entries += [_entry(base, r, "include") for r in included]
        if req.ignored:
            entries.append({"resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "not-supported",
                           "diagnostics": f"ignored unknown search parameter {name!r} "
                                          "(Prefer: handling=lenient)"}
                          for name in req.ignored]},
                "search": {"mode": "outcome"}})
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": uuid.uuid4().hex,
            "meta": {"lastUpdated": _now()},
            "type": "searchset",
            "total": total,
            "link": _links(base, req, total),
        }
        if entries:
            bundle["entry"] = entries
        served = tuple(f"{r['resourceType']}/{r['id']}" for r in (*matches, *included))
        return FhirResponse(200, bundle, {"Content-Type": FHIR_JSON}, served)

    def _included(self, req: SearchRequest, matches: Sequence[Mapping[str, Any]],
                  scope: ReadScope | None = None) -> list[dict[str, Any]]:
        if not req.includes or not matches:
            return []
        # Type:patient and Type:subject both name the resource's patient (the element
        # ``subject`` or ``patient``, as the patient/subject search parameters do).
        refs: set[str] = set()
        for res in matches:
            for element in ("subject", "patient"):
                ref = res.get(element)
                text = ref.get("reference") if isinstance(ref, Mapping) else None
                if isinstance(text, str) and text.startswith("Patient/"):
                    refs.add(text.partition("/")[2])
        if not refs:
            return []
        return self._store.find("Patient", FhirQuery(ids=frozenset(refs), scope=scope))

    def create(self, resource_type: str, body: Any, *, base_url: str,
               roles: Iterable[str]) -> FhirResponse:
        """``POST [base]/{type}``: create a Consent with a server-assigned id.

        Returns 201 with ``Location`` (``[base]/Consent/{id}/_history/1``), ``ETag`` and the
        created resource (with ``meta.versionId``/``lastUpdated``) in the body. An ``id`` in
        the body is ignored, as FHIR prescribes.

        Raises
        ------
        FhirError
            403 without the steward role, 405 for a type that cannot be written, 400 for a
            body that is not a valid R4B resource of the type or names no existing patient.
        """
        spec = _writable(resource_type, "POST", roles)
        base = _base(base_url)
        resource = _validated(spec, body, base)
        resource["id"] = uuid.uuid4().hex
        dataset = self._patient_dataset(resource)
        self._store.put(resource, dataset=dataset)
        return self._written(spec.type, resource["id"], base, 201)

    def update(self, resource_type: str, id: str, body: Any, *, base_url: str,
               roles: Iterable[str]) -> FhirResponse:
        """``PUT [base]/{type}/{id}``: replace an existing Consent.

        Returns 200 with the stored resource; ``versionId`` grows when the content changed
        (an identical body leaves the version alone).

        Raises
        ------
        FhirError
            403 without the steward role; 400 for an invalid body, an ``id`` in the body that
            differs from the URL's (or none) or a patient that does not exist; 405 when the
            resource does not exist (no update-as-create: ids are the server's).
        """
        spec = _writable(resource_type, "PUT", roles)
        base = _base(base_url)
        if not ID_RE.fullmatch(id):
            raise FhirError(400, "invalid", f"{id!r} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)")
        resource = _validated(spec, body, base)
        if resource.get("id") != id:
            raise FhirError(400, "invalid", f"the body's id {resource.get('id')!r} must equal "
                            f"the URL's id {id!r}", "id")
        if self._store.info(spec.type, id) is None:
            raise FhirError(405, "not-supported", f"{spec.type}/{id} does not exist and ids "
                            f"are assigned by the server: create it with POST [base]/{spec.type}")
        dataset = self._patient_dataset(resource)
        self._store.put(resource, dataset=dataset)
        return self._written(spec.type, id, base, 200)

    def _patient_dataset(self, resource: Mapping[str, Any]) -> str | None:
        ref = resource["patient"]["reference"]
        info = self._store.info("Patient", ref.partition("/")[2])
        if info is None:
            raise FhirError(400, "invalid", f"patient {ref!r} does not exist on this node",
                            "Consent.patient")
        return info.dataset

    def _written(self, rtype: str, rid: str, base: str, status: int) -> FhirResponse:
        stored = self._store.get(rtype, rid)
        if stored is None:   # a concurrent writer cannot delete: the store has no delete
            raise FhirError(500, "exception", f"{rtype}/{rid} vanished after it was written")
        headers = _version_headers(stored)
        if status == 201:
            headers["Location"] = f"{base}/{rtype}/{rid}/_history/{stored['meta']['versionId']}"
        return FhirResponse(status, stored, headers, (f"{rtype}/{rid}",))


# -- helpers -------------------------------------------------------------------------------


def _lenient(prefer: str | None) -> bool:
    if not prefer:
        return False
    prefs = {p.strip().replace(" ", "") for p in prefer.split(",")}
    return "handling=lenient" in prefs


def _spec(resource_type: str) -> ResourceSpec:
    spec = RESOURCES.get(resource_type)
    if spec is None:
        raise FhirError(404, "not-supported", f"resource type {resource_type!r} is not served "
                        f"here (served: {', '.join(RESOURCES)})")
    return spec


def _writable(resource_type: str, method: str, roles: Iterable[str]) -> ResourceSpec:
    spec = _spec(resource_type)
    if not spec.writable:
        raise _MethodNotAllowed(method, resource_type, ["GET"])
    if WRITE_ROLE not in set(roles):
        raise FhirError(403, "forbidden", f"writing {resource_type} needs the role "
                        f"{WRITE_ROLE!r}")
    return spec


def _validated(spec: ResourceSpec, body: Any, base: str) -> dict[str, Any]:
    """The body as a resource of ``spec.type`` checked with fhir.resources (R4B)."""
    from fhir.resources.R4B.consent import Consent

    if not isinstance(body, Mapping):
        raise FhirError(400, "structure", f"the body must be a JSON object (a {spec.type}), "
                        f"not {type(body).__name__}")
    resource = dict(body)
    if resource.get("resourceType") != spec.type:
        raise FhirError(400, "invalid", f"resourceType {resource.get('resourceType')!r} does "
                        f"not match the URL's {spec.type!r}", "resourceType")
    if "id" in resource and not (isinstance(resource["id"], str)
                                 and ID_RE.fullmatch(resource["id"])):
        raise FhirError(400, "invalid", f"id {resource['id']!r} is not a FHIR id", "id")
    try:
        Consent.model_validate(resource)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(resource)'}: {e['msg']}"
                             for e in exc.errors()[:5])
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise FhirError(400, "structure", f"not a valid R4B {spec.type}: {problems}{more}"
                        ) from None
    if resource.get("status") not in _CONSENT_STATES:
        raise FhirError(400, "code-invalid", f"Consent.status {resource.get('status')!r} is "
                        f"not one of {', '.join(_CONSENT_STATES)}", "Consent.status")
    patient = resource.get("patient")
    if not isinstance(patient, Mapping) or not isinstance(patient.get("reference"), str):
        raise FhirError(400, "required", "Consent.patient.reference is required on this node "
                        "(Patient/<id>)", "Consent.patient")
    ref: str = patient["reference"]
    if ref.startswith(base + "/"):
        ref = ref[len(base) + 1:]
    rtype, _, rid = ref.partition("/")
    if rtype != "Patient" or not ID_RE.fullmatch(rid):
        raise FhirError(400, "invalid", f"Consent.patient.reference {ref!r} is not "
                        "Patient/<id>", "Consent.patient")
    resource["patient"] = {**patient, "reference": f"Patient/{rid}"}
    return resource


def _version_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource["meta"]
    return {"Content-Type": FHIR_JSON, "ETag": f'W/"{meta["versionId"]}"',
            "Last-Modified": _http_date(meta["lastUpdated"])}


def _entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource, "search": {"mode": mode}}


def _url(base: str, req: SearchRequest, count: int, offset: int) -> str:
    pairs = [*req.link_params, ("_count", str(count))]
    if offset:
        pairs.append(("_offset", str(offset)))
    query = urlencode(pairs, quote_via=quote, safe=":/|,")
    return f"{base}/{req.resource_type}?{query}"


def _links(base: str, req: SearchRequest, total: int) -> list[dict[str, str]]:
    count, offset = req.count, req.offset
    links = [{"relation": "self", "url": _url(base, req, count, offset)}]
    if count == 0:
        return links
    last = max(0, (total - 1) // count * count)
    links.append({"relation": "first", "url": _url(base, req, count, 0)})
    if offset > 0:
        links.append({"relation": "previous",
                      "url": _url(base, req, count, min(max(0, offset - count), last))})
    if offset + count < total:
        links.append({"relation": "next", "url": _url(base, req, count, offset + count)})
    links.append({"relation": "last", "url": _url(base, req, count, last)})
    return links
