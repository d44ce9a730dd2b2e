"""The node's FHIR store: resources as canonical JSON in the node database.

Resources arrive as JSON-able dicts already validated by the clinical ETL
(:mod:`incisive_lab.cdm`). Each is stored once per ``(resourceType, id)`` in canonical JSON
(sorted keys, compact, UTF-8) **without** ``meta.versionId``/``meta.lastUpdated``; those
live in their own columns and are put back by :meth:`FhirStore.get` and
:meth:`FhirStore.search`. A put of the same content is a no-op (no new version); a put of
changed content bumps ``versionId`` and ``lastUpdated``. Only the current version is kept.

Besides the JSON, each row holds what searches need: the patient reference
(``Patient/<id>`` for a Patient, else the ``subject``/``patient`` reference), the type's
main date (for ``_sort=date`` and date ranges) and the tokens of ``code``, ``category``
and ``modality`` (for ``code=system|code``).

Examples
--------
>>> store.fhir.put({"resourceType": "Patient", "id": "p1", "gender": "female"})  # doctest: +SKIP
PutResult(resource_type='Patient', id='p1', version_id=1, created=True, changed=True)
>>> store.fhir.search("Condition", patient="p1")                                 # doctest: +SKIP
[{'resourceType': 'Condition', ...}]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    delete,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
    update,
)

from incisive_lab.node._db import StoreError, chunks, fhir_table, fhir_tokens_table, insert_ignore
from incisive_lab.node._scope_sql import scope_condition

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = ["DateFilter", "DateTest", "FhirQuery", "FhirStore", "PutResult", "StoredInfo", "TokenFilter",
           "canonical_json", "fhir_table", "fhir_tokens_table"]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
#: Where the main date of a resource is looked for, in order (first found wins).
_DATE_PATHS: tuple[tuple[str, ...], ...] = (
    ("effectiveDateTime",), ("effectiveInstant",), ("effectivePeriod", "start"),
    ("onsetDateTime",), ("onsetPeriod", "start"), ("performedDateTime",),
    ("performedPeriod", "start"), ("occurrenceDateTime",), ("occurenceDateTime",),
    ("started",), ("dateTime",), ("date",), ("recordedDate",), ("issued",),
    ("authoredOn",), ("dateAsserted",), ("birthDate",),
)
_TOKEN_PARAMS = {"code": "code", "medicationCodeableConcept": "code", "category": "category",
                 "modality": "modality"}


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no spaces, UTF-8 characters kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _now() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class PutResult:
    """The outcome of one put: the stored version, whether it is new or changed."""

    resource_type: str
    id: str
    version_id: int
    created: bool
    changed: bool


@dataclass(frozen=True, slots=True)
class _Prepared:
    resource_type: str
    id: str
    content: str
    sha256: str
    patient_ref: str | None
    date: str | None
    tokens: tuple[tuple[str, str, str], ...]


def _patient_ref(res: Mapping[str, Any]) -> str | None:
    if res["resourceType"] == "Patient":
        return f"Patient/{res['id']}"
    for key in ("subject", "patient", "beneficiary"):
        ref = res.get(key)
        if isinstance(ref, Mapping):
            text = ref.get("reference")
            if isinstance(text, str) and text.startswith("Patient/"):
                return text
    return None


def _main_date(res: Mapping[str, Any]) -> str | None:
    for path in _DATE_PATHS:
        value: Any = res
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str) and value:
            return value
    return None


def _codings(value: Any) -> Iterable[Mapping[str, Any]]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if "coding" in item and isinstance(item["coding"], list):
            yield from (c for c in item["coding"] if isinstance(c, Mapping))
        elif "code" in item:  # a bare Coding (ImagingStudy.modality)
            yield item


def _tokens(res: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    found: set[tuple[str, str, str]] = set()
    for key, param in _TOKEN_PARAMS.items():
        if key in res:
            for coding in _codings(res[key]):
                code = coding.get("code")
                if isinstance(code, str) and code:
                    system = coding.get("system")
                    found.add((param, system if isinstance(system, str) else "", code))
    return tuple(sorted(found))


def _prepare(resource: Mapping[str, Any]) -> _Prepared:
    if not isinstance(resource, Mapping):
        raise StoreError(f"FHIR resource must be a JSON object, not {type(resource).__name__}")
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not _TYPE.fullmatch(rtype):
        raise StoreError(f"FHIR resource: resourceType {rtype!r} is missing or invalid")
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise StoreError(f"FHIR {rtype}: id {rid!r} is missing or not a FHIR id "
                         "(1-64 of A-Z a-z 0-9 - .)")
    body = dict(resource)
    meta = body.get("meta")
    if isinstance(meta, Mapping):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if meta:
            body["meta"] = meta
        else:
            del body["meta"]
    try:
        content = canonical_json(body)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"FHIR {rtype}/{rid}: not JSON-able: {exc}") from None
    return _Prepared(rtype, rid, content, hashlib.sha256(content.encode()).hexdigest(),
                     _patient_ref(body), _main_date(body), _tokens(body))


def _patient_ref_arg(patient: str) -> str:
    return patient if patient.startswith("Patient/") else f"Patient/{patient}"


# --- Criteria for the FHIR REST search (incisive_lab.node.fhir_api) -------------------------
#
# Stored main dates are ISO 8601 text of any precision ("2018", "2018-08", "2018-08-24",
# "2018-08-24T10:00:00Z"). A value stands for the range of instants it covers. Text order
# agrees with time order except that a coarser value sorts before the finer values it
# contains ("2018" < "2018-01-01"), which the two tests below correct for.

_INSTANT = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})")


def _covering(instant: str) -> tuple[list[str], list[str]]:
    """The coarser values that contain ``instant``, and those of them that start at it.

    ``instant`` is ``YYYY-MM-DDThh:mm:ss``. Returns ``(containing, starting_at)``: e.g. for
    ``2018-01-01T00:00:00`` every coarser value (``2018``, ``2018-01``, ...) starts at it;
    for ``2018-08-24T10:30:00`` only ``2018-08-24T10:30`` does.
    """
    m = _INSTANT.fullmatch(instant)
    if m is None:
        raise StoreError(f"FHIR date test: {instant!r} is not YYYY-MM-DDThh:mm:ss")
    year, month, day, hour, minute, second = m.groups()
    coarser = [year, f"{year}-{month}", f"{year}-{month}-{day}",
               f"{year}-{month}-{day}T{hour}:{minute}"]
    rest_zero = [month == "01" and day == "01" and (hour, minute, second) == ("00",) * 3,
                 day == "01" and (hour, minute, second) == ("00",) * 3,
                 (hour, minute, second) == ("00",) * 3,
                 second == "00"]
    return coarser, [v for v, zero in zip(coarser, rest_zero, strict=True) if zero]


@dataclass(frozen=True, slots=True)
class DateTest:
    """One comparison of a resource's main date (a range) with an instant.

    ``kind="starts_before"``: the date's range starts before ``instant``;
    ``kind="ends_after"``: it ends after ``instant`` (its range holds a later instant).
    ``negate`` inverts the test. ``instant`` is ``YYYY-MM-DDThh:mm:ss`` (UTC).
    """

    kind: str
    instant: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class DateFilter:
    """Tests on the main date, all true (``combine="and"``) or one true (``"or"``).

    A resource without a main date never matches.
    """

    tests: tuple[DateTest, ...]
    combine: str = "and"


@dataclass(frozen=True, slots=True)
class TokenFilter:
    """A token parameter (``code``, ``category``, ``modality``) matching any alternative.

    Each alternative is ``(system, code)``: ``system=None`` matches any system, ``""`` no
    system; ``code=None`` matches any code of the system (FHIR ``system|``).
    """

    param: str
    alternatives: tuple[tuple[str | None, str | None], ...]


@dataclass(frozen=True, slots=True)
class FhirQuery:
    """Criteria of a FHIR search, all of which must hold.

    ``ids``/``patients``: the id, or the patient reference (``Patient/<id>``), is one of
    these (``None``: no condition; an empty set matches nothing). ``scope``: the caller's
    :class:`~incisive_lab.governance.scope.ReadScope` (``None``: no limit; a resource
    without a patient is never in a scope).
    """

    ids: frozenset[str] | None = None
    patients: frozenset[str] | None = None
    tokens: tuple[TokenFilter, ...] = ()
    dates: tuple[DateFilter, ...] = ()
    scope: ReadScope | None = None


@dataclass(frozen=True, slots=True)
class StoredInfo:
    """What the store keeps beside a resource's JSON."""

    resource_type: str
    id: str
    version_id: int
    last_updated: str
    patient_ref: str | None
    dataset: str | None


def _date_test_sql(test: DateTest) -> Any:
    col = fhir_table.c.date
    containing, starting = _covering(test.instant)
    if test.kind == "starts_before":
        cond: Any = and_(col < test.instant, col.not_in(starting)) if starting else (
            col < test.instant)
    elif test.kind == "ends_after":
        cond = or_(col >= test.instant, col.in_(containing))
    else:
        raise StoreError(f"FHIR date test: kind {test.kind!r} is not starts_before/ends_after")
    return not_(cond) if test.negate else cond


_SORTS = {"date", "-date", "id", "-id"}


def _criteria(q: Select[Any], resource_type: str, query: FhirQuery) -> Select[Any]:
    t, tt = fhir_table, fhir_tokens_table
    q = q.where(t.c.resource_type == resource_type)
    if query.ids is not None:
        q = q.where(t.c.id.in_(sorted(query.ids)))
    if query.patients is not None:
        q = q.where(t.c.patient_ref.in_(sorted(query.patients)))
    if query.scope is not None:
        q = q.where(scope_condition(t.c.dataset, t.c.patient_ref, query.scope, prefix="Patient/"))
    for tok in query.tokens:
        alts = []
        for system, code in tok.alternatives:
            parts = []
            if system is not None:
                parts.append(tt.c.system == system)
            if code is not None:
                parts.append(tt.c.code == code)
            alts.append(and_(*parts) if parts else true())
        q = q.where(exists().where(tt.c.resource_type == t.c.resource_type, tt.c.id == t.c.id,
                                   tt.c.param == tok.param, or_(*alts) if alts else false()))
    for flt in query.dates:
        conds = [_date_test_sql(test) for test in flt.tests]
        joined = and_(*conds) if flt.combine == "and" else or_(*conds)
        q = q.where(t.c.date.is_not(None), joined)
    return q


class FhirStore:
    """FHIR resources of a node (use :attr:`NodeStore.fhir`).

    Parameters
    ----------
    engine
        The node database's engine (schema already prepared).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, resource: Mapping[str, Any], *, dataset: str | None = None) -> PutResult:
        """Create or update one resource (see :meth:`put_many`)."""
        return self.put_many([resource], dataset=dataset)[0]

    def put_many(self, resources: Iterable[Mapping[str, Any]], *,
                 dataset: str | None = None) -> list[PutResult]:
        """Create or update resources in one transaction.

        A resource whose canonical content equals the stored one is left alone (same
        ``versionId``, same ``lastUpdated``); a changed one gets ``versionId + 1``. When
        the same ``(resourceType, id)`` appears twice in the batch the last one counts.

        Parameters
        ----------
        resources
            FHIR resources as JSON-able dicts (``resourceType`` and ``id`` required).
        dataset
            The dataset the resources belong to (kept with each row; ``None`` keeps a
            stored row's dataset).

        Returns
        -------
        list of PutResult
            One per distinct resource, in first-seen order.

        Raises
        ------
        StoreError
            A resource without a valid ``resourceType``/``id`` or not JSON-able (the
            message names it). Nothing of the batch is written.
        """
        batch: dict[tuple[str, str], _Prepared] = {}
        for res in resources:
            prep = _prepare(res)
            batch[(prep.resource_type, prep.id)] = prep
        if not batch:
            return []
        results: list[PutResult] = []
        now = _now()
        t = fhir_table
        with self._engine.connect().execution_options(write=True) as conn, conn.begin():
            stored: dict[tuple[str, str], tuple[int, str]] = {}
            by_type: dict[str, list[str]] = {}
            for rtype, rid in batch:
                by_type.setdefault(rtype, []).append(rid)
            for rtype, ids in by_type.items():
                for part in chunks(ids, 500):
                    for row in conn.execute(select(t.c.id, t.c.version_id, t.c.sha256).where(
                            t.c.resource_type == rtype, t.c.id.in_(part))):
                        stored[(rtype, row.id)] = (row.version_id, row.sha256)
            new_rows: list[dict[str, Any]] = []
            changed: list[_Prepared] = []
            for key, prep in batch.items():
                if key not in stored:
                    new_rows.append({"resource_type": prep.resource_type, "id": prep.id,
                                     "version_id": 1, "last_updated": now,
                                     "patient_ref": prep.patient_ref, "dataset": dataset,
                                     "date": prep.date, "content": prep.content,
                                     "sha256": prep.sha256})
                    results.append(PutResult(prep.resource_type, prep.id, 1, True, True))
                    continue
                version, sha = stored[key]
                if sha == prep.sha256:
                    results.append(PutResult(prep.resource_type, prep.id, version, False, False))
                    continue
                values: dict[str, Any] = {
                    "version_id": version + 1, "last_updated": now,
                    "patient_ref": prep.patient_ref, "date": prep.date,
                    "content": prep.content, "sha256": prep.sha256}
                if dataset is not None:
                    values["dataset"] = dataset
                conn.execute(update(t).where(t.c.resource_type == prep.resource_type,
                                             t.c.id == prep.id).values(**values))
                changed.append(prep)
                results.append(PutResult(prep.resource_type, prep.id, version + 1, False, True))
            if new_rows:
                conn.execute(insert_ignore(conn, t), new_rows)
            self._write_tokens(conn, [p for k, p in batch.items() if k not in stored], changed)
        return results

    @staticmethod
    def _write_tokens(conn: Connection, new: Sequence[_Prepared],
                      changed: Sequence[_Prepared]) -> None:
        tt = fhir_tokens_table
        for prep in changed:
            conn.execute(delete(tt).where(tt.c.resource_type == prep.resource_type,
                                          tt.c.id == prep.id))
        rows = [{"resource_type": p.resource_type, "id": p.id, "param": param,
                 "system": system, "code": code}
                for p in (*new, *changed) for param, system, code in p.tokens]
        if rows:
            conn.execute(insert_ignore(conn, tt), rows)

    @staticmethod
    def _load(row: Any) -> dict[str, Any]:
        res: dict[str, Any] = json.loads(row.content)
        meta = dict(res.get("meta") or {})
        meta["versionId"] = str(row.version_id)
        meta["lastUpdated"] = row.last_updated
        res["meta"] = meta
        return res

    def get(self, resource_type: str, id: str) -> dict[str, Any] | None:
        """The current version of ``resource_type/id`` (with ``meta``), or ``None``."""
        t = fhir_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.content, t.c.version_id, t.c.last_updated).where(
                t.c.resource_type == resource_type, t.c.id == id)).one_or_none()
        return self._load(row) if row is not None else None

    def _query(self, columns: Sequence[Any], resource_type: str | None, *,
               patient: str | None, ids: Sequence[str] | None,
               code: tuple[str | None, str] | None, code_param: str,
               date_from: str | None, date_to: str | None,
               dataset: str | None) -> Select[Any]:
        t, tt = fhir_table, fhir_tokens_table
        q: Select[Any] = select(*columns)
        if resource_type is not None:
            q = q.where(t.c.resource_type == resource_type)
        if patient is not None:
            q = q.where(t.c.patient_ref == _patient_ref_arg(patient))
        if ids is not None:
            q = q.where(t.c.id.in_(list(ids)))
        if dataset is not None:
            q = q.where(t.c.dataset == dataset)
        if date_from is not None:
            q = q.where(t.c.date >= date_from)
        if date_to is not None:
            # a date of the upper day (2020-05-01T10:00) is within "up to 2020-05-01"
            q = q.where(t.c.date <= date_to + "\uffff")
        if code is not None:
            system, value = code
            cond = [tt.c.resource_type == t.c.resource_type, tt.c.id == t.c.id,
                    tt.c.param == code_param, tt.c.code == value]
            if system is not None:
                cond.append(tt.c.system == system)
            q = q.where(exists().where(and_(*cond)))
        return q

    def search(self, resource_type: str, *, patient: str | None = None,
               ids: Sequence[str] | None = None, code: tuple[str | None, str] | None = None,
               code_param: str = "code", date_from: str | None = None,
               date_to: str | None = None, dataset: str | None = None,
               sort: str | None = None, limit: int | None = None,
               offset: int = 0) -> list[dict[str, Any]]:
        """Resources of ``resource_type`` matching every filter given.

        Parameters
        ----------
        resource_type
            E.g. ``"Condition"``.
        patient
            ``"Patient/<id>"`` or ``"<id>"``: the resource's patient/subject.
        ids
            Only these ids (FHIR ``_id``).
        code
            ``(system, code)``; ``system=None`` matches any system.
        code_param
            Which token to match: ``code`` (also ``medicationCodeableConcept``),
            ``category`` or ``modality``.
        date_from, date_to
            Inclusive bounds on the resource's main date (ISO 8601 prefixes compare as
            text: ``"2020"``, ``"2020-05"``, ``"2020-05-01"``).
        dataset
            Only resources put for this dataset.
        sort
            ``"date"`` or ``"-date"``; the default orders by id.
        limit, offset
            Paging.
        """
        t = fhir_table
        q = self._query((t.c.content, t.c.version_id, t.c.last_updated), resource_type,
                        patient=patient, ids=ids, code=code, code_param=code_param,
                        date_from=date_from, date_to=date_to, dataset=dataset)
        if sort == "date":
            q = q.order_by(t.c.date.is_(None), t.c.date, t.c.id)
        elif sort == "-date":
            q = q.order_by(t.c.date.is_(None), t.c.date.desc(), t.c.id)
        elif sort is None:
            q = q.order_by(t.c.id)
        else:
            raise StoreError(f"FHIR search: sort {sort!r} is not 'date' or '-date'")
        q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        return [self._load(r) for r in rows]

    def count(self, resource_type: str | None = None, *, patient: str | None = None,
              ids: Sequence[str] | None = None, code: tuple[str | None, str] | None = None,
              code_param: str = "code", date_from: str | None = None,
              date_to: str | None = None, dataset: str | None = None) -> int:
        """The number of resources :meth:`search` would return without paging."""
        q = self._query((func.count(),), resource_type, patient=patient, ids=ids, code=code,
                        code_param=code_param, date_from=date_from, date_to=date_to,
                        dataset=dataset).select_from(fhir_table)
        with self._engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def counts_by_type(self, *, dataset: str | None = None) -> dict[str, int]:
        """``resourceType -> number of resources`` (of ``dataset`` when given)."""
        t = fhir_table
        q = select(t.c.resource_type, func.count()).group_by(t.c.resource_type)
        if dataset is not None:
            q = q.where(t.c.dataset == dataset)
        with self._engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(q)}

    def find(self, resource_type: str, query: FhirQuery | None = None, *,
             sort: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict[str, Any]]:
        """Resources of ``resource_type`` matching ``query``, in a stable order.

        Parameters
        ----------
        resource_type
            E.g. ``"Observation"``.
        query
            The criteria (see :class:`FhirQuery`; ``None``: every resource of the type).
        sort
            ``"date"``/``"-date"`` (resources without a date last, then by id), ``"id"``/
            ``"-id"``; default ``"id"``. Ties are broken by id, so pages never overlap.
        limit, offset
            Paging.

        Raises
        ------
        StoreError
            An unknown sort or a malformed date test.
        """
        t = fhir_table
        if sort is not None and sort not in _SORTS:
            raise StoreError(f"FHIR search: sort {sort!r} is not one of {sorted(_SORTS)}")
        q = _criteria(select(t.c.content, t.c.version_id, t.c.last_updated), resource_type,
                      query or FhirQuery())
        if sort == "date":
            q = q.order_by(t.c.date.is_(None), t.c.date, t.c.id)
        elif sort == "-date":
            q = q.order_by(t.c.date.is_(None), t.c.date.desc(), t.c.id)
        elif sort == "-id":
            q = q.order_by(t.c.id.desc())
        else:
            q = q.order_by(t.c.id)
        if offset:
            q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        return [self._load(r) for r in rows]


    def find_count(self, resource_type: str, query: FhirQuery | None = None) -> int:
        """The number of resources :meth:`find` would return without paging."""
        q = _criteria(select(func.count()).select_from(fhir_table), resource_type,
                      query or FhirQuery())
        with self._engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


    def info(self, resource_type: str, id: str) -> StoredInfo | None:
        """Version, last update, patient and dataset of ``resource_type/id``, or ``None``."""
        t = fhir_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.version_id, t.c.last_updated, t.c.patient_ref,
                                      t.c.dataset).where(t.c.resource_type == resource_type,
                                                         t.c.id == id)).one_or_none()
        if row is None:
            return None
        return StoredInfo(resource_type, id, int(row.version_id), row.last_updated,
                          row.patient_ref, row.dataset)
