"""What the node's FHIR REST API supports, as data, and the parser of search parameters.

The tables here are the single source of truth: :func:`incisive_lab.node.fhir_api.
capability_statement` is built from them and :func:`parse_search` accepts exactly what they
declare. Parsing is strict: an unknown parameter, an unsupported modifier, a malformed date,
token, reference or id is a :class:`FhirError` (400) that names the parameter and the value.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from incisive_lab.node.fhir_store import DateFilter, DateTest, FhirQuery, TokenFilter

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "RESOURCES",
    "RESULT_PARAMS",
    "FhirError",
    "ParamSpec",
    "ResourceSpec",
    "SearchRequest",
    "declared_names",
    "pairs_of",
    "parse_search",
]

DEFAULT_COUNT = 50
"""Page size when the request gives no ``_count``."""
MAX_COUNT = 1000
"""The largest ``_count`` accepted; a larger one is refused (400)."""
MAX_OFFSET = 2**31 - 1
_MAX_VALUE = 2048          # characters in one parameter value
_MAX_PARAMS = 100          # parameters in one request
_MAX_ALTERNATIVES = 100    # comma-separated values in one parameter

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Token codes this node accepts: what SNOMED CT, LOINC, ICD-O-3, DICOM and FHIR code
# systems use. Quotes, spaces, semicolons and the like are refused.
_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+\-]{0,127}")
_SYSTEM_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9._~:/?#\[\]@!$&()*+,=%\-]{1,250}")
_DATE_RE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.\d{1,9})?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?")
_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JSON_FORMATS = {"json", "application/json", "application/fhir+json"}


class FhirError(Exception):
    """A request the FHIR API refuses; becomes an OperationOutcome with ``status``.

    Parameters
    ----------
    status
        HTTP status (400, 403, 404, 405, ...).
    code
        The OperationOutcome issue type (``invalid``, ``not-supported``, ``not-found``,
        ``forbidden``, ...).
    diagnostics
        A message for the caller; names the parameter or element at fault.
    expression
        Where the fault is (a parameter name or a FHIRPath), when known.
    """

    def __init__(self, status: int, code: str, diagnostics: str,
                 expression: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.expression = expression

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome resource describing this error."""
        issue: dict[str, Any] = {"severity": "error", "code": self.code,
                                 "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = [self.expression]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


def _bad(param: str, message: str) -> FhirError:
    return FhirError(400, "invalid", f"search parameter {param!r}: {message}", param)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One search parameter of one resource type.

    ``kind`` says how it is evaluated: ``id`` (``_id``), ``patient`` (the resource's patient
    reference), ``token:<store param>`` (``code``/``category``/``modality`` tokens) or
    ``date`` (the resource's main date).
    """

    name: str
    type: str                  # FHIR SearchParamType
    kind: str
    documentation: str
    definition: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A served resource type: its search parameters and whether it may be written."""

    type: str
    params: tuple[ParamSpec, ...]
    writable: bool = False
    date_doc: str = ""

    @property
    def by_name(self) -> dict[str, ParamSpec]:
        """Search parameters by name."""
        return {p.name: p for p in self.params}

    @property
    def includes(self) -> tuple[str, ...]:
        """Accepted ``_include`` values (``Type:patient``, ``Type:subject``)."""
        return tuple(f"{self.type}:{p.name}" for p in self.params if p.kind == "patient")

    @property
    def sorts(self) -> tuple[str, ...]:
        """Accepted ``_sort`` values."""
        keys = ["_id", *(p.name for p in self.params if p.kind == "date")]
        return tuple(k for key in keys for k in (key, f"-{key}"))


_SP = "http://hl7.org/fhir/SearchParameter/"


def _id_param() -> ParamSpec:
    return ParamSpec("_id", "token", "id", "Logical id; comma-separated ids match any.",
                     _SP + "Resource-id")


def _patient(name: str, rtype: str) -> ParamSpec:
    definition = _SP + ("clinical-patient" if name == "patient" else f"{rtype}-subject")
    return ParamSpec(name, "reference", "patient",
                     f"The {rtype}'s patient: Patient/<id> or <id> (comma-separated: any); "
                     "only Patient targets.", definition)


def _token(name: str, store_param: str, element: str, definition: str | None) -> ParamSpec:
    return ParamSpec(name, "token", f"token:{store_param}",
                     f"{element}: system|code, code, system| or |code (comma-separated: any). "
                     "Codes: letters, digits and . _ : / + -.", definition)


def _date(name: str, element: str, definition: str | None) -> ParamSpec:
    return ParamSpec(name, "date", "date",
                     f"{element}; prefixes eq ne lt gt le ge sa eb, partial dates "
                     "(YYYY, YYYY-MM, YYYY-MM-DD, YYYY-MM-DDThh:mm[:ss][Z|+hh:mm]).",
                     definition)


def _resources() -> tuple[ResourceSpec, ...]:
    code = "clinical-code"
    return (
        ResourceSpec("Patient", (
            _id_param(),
            _date("birthdate", "Patient.birthDate (the year only on this node)",
                  _SP + "individual-birthdate"),
        ), date_doc="birthDate"),
        ResourceSpec("Condition", (
            _id_param(), _patient("patient", "Condition"), _patient("subject", "Condition"),
            _token("code", "code", "Condition.code", _SP + code),
            _token("category", "category", "Condition.category", _SP + "Condition-category"),
            _date("onset-date", "Condition.onsetDateTime", _SP + "Condition-onset-date"),
            _date("date", "The main date: onsetDateTime, onsetPeriod.start, recordedDate", None),
        ), date_doc="onsetDateTime, onsetPeriod.start, recordedDate"),
        ResourceSpec("Observation", (
            _id_param(), _patient("patient", "Observation"),
            _patient("subject", "Observation"),
            _token("code", "code", "Observation.code", _SP + code),
            _token("category", "category", "Observation.category",
                   _SP + "Observation-category"),
            _date("date", "Observation.effective[x] (dateTime, instant, period start), issued",
                  _SP + "clinical-date"),
        ), date_doc="effectiveDateTime, effectiveInstant, effectivePeriod.start, issued"),
        ResourceSpec("Procedure", (
            _id_param(), _patient("patient", "Procedure"), _patient("subject", "Procedure"),
            _token("code", "code", "Procedure.code", _SP + code),
            _date("date", "Procedure.performed[x] (dateTime, period start)",
                  _SP + "clinical-date"),
        ), date_doc="performedDateTime, performedPeriod.start"),
        ResourceSpec("MedicationStatement", (
            _id_param(), _patient("patient", "MedicationStatement"),
            _patient("subject", "MedicationStatement"),
            _token("code", "code", "MedicationStatement.medicationCodeableConcept", _SP + code),
            _date("effective", "MedicationStatement.effective[x]",
                  _SP + "MedicationStatement-effective"),
            _date("date", "The main date: effective[x], dateAsserted", None),
        ), date_doc="effectiveDateTime, effectivePeriod.start, dateAsserted"),
        ResourceSpec("ImagingStudy", (
            _id_param(), _patient("patient", "ImagingStudy"),
            _patient("subject", "ImagingStudy"),
            _token("modality", "modality", "ImagingStudy.modality (DICOM codes)",
                   _SP + "ImagingStudy-modality"),
            _date("started", "ImagingStudy.started", _SP + "ImagingStudy-started"),
            _date("date", "The main date: ImagingStudy.started", None),
        ), date_doc="started"),
        ResourceSpec("Consent", (
            _id_param(), _patient("patient", "Consent"),
            _token("category", "category", "Consent.category", _SP + "Consent-category"),
            _date("date", "Consent.dateTime", _SP + "clinical-date"),
        ), writable=True, date_doc="dateTime"),
    )


RESOURCES: dict[str, ResourceSpec] = {r.type: r for r in _resources()}
"""The served resource types, by name."""

RESULT_PARAMS: dict[str, tuple[str, str]] = {
    "_count": ("number", f"Page size, 0 to {MAX_COUNT} (default {DEFAULT_COUNT}); 0 returns "
                         "only Bundle.total. A larger value is refused."),
    "_offset": ("number", "Where the page starts (0-based); the server writes it into "
                          "next/previous links."),
    "_sort": ("string", "One key: _id or a date parameter of the type, '-' for descending. "
                        "Default _id. Ties are broken by id."),
    "_include": ("special", "Type:patient or Type:subject (optionally :Patient): the "
                            "patients of the page's matches, search.mode include."),
    "_total": ("token", "none | estimate | accurate: Bundle.total is always exact."),
    "_totalMethod": ("token", "Accepted (fhirpy sends it with count()); the total is always "
                              "exact."),
    "_format": ("token", "json, application/json or application/fhir+json only."),
}
"""Parameters every search accepts besides the type's own: name -> (type, documentation)."""


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A parsed, validated search."""

    resource_type: str
    query: FhirQuery
    count: int
    offset: int
    sort: str | None                              # store sort: date, -date, id, -id
    includes: tuple[str, ...]                     # accepted _include values
    link_params: tuple[tuple[str, str], ...]      # what self/next links repeat
    ignored: tuple[str, ...] = field(default=())  # unknown names ignored (lenient)


def pairs_of(params: Iterable[tuple[str, str]] | Mapping[str, Any]) -> list[tuple[str, str]]:
    """Parameters as ``(name, value)`` pairs, repeats kept in order.

    Accepts pairs, a mapping of name to a value or a list of values, or a multi-dict with
    ``multi_items()`` (Starlette's ``QueryParams``/``FormData``; checked first, as their
    mapping view keeps only the last value of a repeated name).
    """
    multi = getattr(params, "multi_items", None)
    if callable(multi):
        return [(str(k), str(v)) for k, v in multi()]
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in params.items():
            if isinstance(value, str):
                pairs.append((str(name), value))
            else:
                pairs.extend((str(name), str(v)) for v in value)
        return pairs
    return [(str(k), str(v)) for k, v in params]


def _split(name: str, value: str) -> list[str]:
    parts = [p.replace(r"\,", ",") for p in re.split(r"(?<!\\),", value)]
    if len(parts) > _MAX_ALTERNATIVES:
        raise _bad(name, f"more than {_MAX_ALTERNATIVES} comma-separated values")
    if any(not p for p in parts):
        raise _bad(name, f"empty value in {value!r}")
    return parts


def _parse_int(name: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,10}", value):
        raise _bad(name, f"{value!r} is not a non-negative integer")
    n = int(value)
    if not low <= n <= high:
        raise _bad(name, f"{n} is outside {low}..{high}"
                   + (f" (the maximum page size is {MAX_COUNT})" if name == "_count" else ""))
    return n


def _parse_ids(name: str, value: str) -> set[str]:
    ids = set()
    for part in _split(name, value):
        if not ID_RE.fullmatch(part):
            raise _bad(name, f"{part!r} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)")
        ids.add(part)
    return ids


def _parse_refs(name: str, value: str, base_url: str) -> set[str]:
    refs = set()
    for part in _split(name, value):
        ref = part
        if ref.startswith(base_url + "/"):
            ref = ref[len(base_url) + 1:]
        if "/" in ref:
            rtype, _, rid = ref.partition("/")
            if rtype != "Patient":
                raise _bad(name, f"{part!r}: only Patient references are searchable")
        else:
            rid = ref
        if not ID_RE.fullmatch(rid):
            raise _bad(name, f"{part!r} is not Patient/<id> or <id> with a FHIR id")
        refs.add(f"Patient/{rid}")
    return refs


def _parse_token(name: str, value: str, store_param: str) -> TokenFilter:
    alts: list[tuple[str | None, str | None]] = []
    for part in _split(name, value):
        if part.count("|") > 1:
            raise _bad(name, f"{part!r} has more than one '|' (use system|code)")
        if "|" in part:
            system, code = part.split("|")
            if not system and not code:
                raise _bad(name, "'|' alone names neither a system nor a code")
            if system and not _SYSTEM_RE.fullmatch(system):
                raise _bad(name, f"{system!r} is not an absolute URI (scheme:...) without "
                                 "spaces or quotes")
            if code and not _CODE_RE.fullmatch(code):
                raise _bad(name, f"code {code!r} has characters a code cannot have "
                                 "(letters, digits and . _ : / + - only, at most 128)")
            alts.append((system, code or None))
        else:
            if not _CODE_RE.fullmatch(part):
                raise _bad(name, f"code {part!r} has characters a code cannot have "
                                 "(letters, digits and . _ : / + - only, at most 128)")
            alts.append((None, part))
    return TokenFilter(store_param, tuple(alts))


def _instant(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _date_range(name: str, text: str) -> tuple[str, str]:
    """``[low, high)`` of a partial date as UTC ``YYYY-MM-DDThh:mm:ss`` instants."""
    m = _DATE_RE.fullmatch(text)
    if m is None:
        raise _bad(name, f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or "
                         "YYYY-MM-DDThh:mm[:ss][Z|+hh:mm], after an optional prefix "
                         f"{'/'.join(_PREFIXES)})")
    g = m.groupdict()
    year = int(g["year"])
    if not 1 <= year <= 9998:
        raise _bad(name, f"{text!r}: year outside 0001..9998")
    try:
        if g["hour"] is not None:
            tz = dt.UTC if g["tz"] in (None, "Z") else dt.datetime.strptime(
                g["tz"], "%z").tzinfo
            low = dt.datetime(year, int(g["month"]), int(g["day"]), int(g["hour"]),
                              int(g["minute"]), int(g["second"] or 0), tzinfo=tz)
            low = low.astimezone(dt.UTC)
            step = dt.timedelta(seconds=1 if g["second"] is not None else 60)
            return _instant(low), _instant(low + step)
        if g["day"] is not None:
            day = dt.date(year, int(g["month"]), int(g["day"]))
            nxt = day + dt.timedelta(days=1)
            return f"{day.isoformat()}T00:00:00", f"{nxt.isoformat()}T00:00:00"
        if g["month"] is not None:
            month = int(g["month"])
            dt.date(year, month, 1)
            ny, nm = (year + 1, 1) if month == 12 else (year, month + 1)
            return f"{year:04d}-{month:02d}-01T00:00:00", f"{ny:04d}-{nm:02d}-01T00:00:00"
        return f"{year:04d}-01-01T00:00:00", f"{year + 1:04d}-01-01T00:00:00"
    except ValueError as exc:
        raise _bad(name, f"{text!r} is not a valid date: {exc}") from None


def _parse_date(name: str, value: str) -> DateFilter:
    if "," in value:
        raise _bad(name, "comma-separated dates are not supported; repeat the parameter "
                         "for AND")
    prefix, text = ("eq", value)
    if value[:2] in _PREFIXES:
        prefix, text = value[:2], value[2:]
    low, high = _date_range(name, text)

    def sb(x: str, negate: bool = False) -> DateTest:
        return DateTest("starts_before", x, negate)

    def ea(x: str, negate: bool = False) -> DateTest:
        return DateTest("ends_after", x, negate)

    tests = {
        "eq": DateFilter((sb(low, True), ea(high, True))),
        "ne": DateFilter((sb(low), ea(high)), combine="or"),
        "lt": DateFilter((sb(low),)),
        "gt": DateFilter((ea(high),)),
        "le": DateFilter((sb(high),)),
        "ge": DateFilter((ea(low),)),
        "sa": DateFilter((sb(high, True),)),
        "eb": DateFilter((ea(low, True),)),
    }
    return tests[prefix]


def _check_value(name: str, value: str) -> None:
    if len(value) > _MAX_VALUE:
        raise _bad(name, f"value longer than {_MAX_VALUE} characters")
    if _CONTROL.search(value):
        raise _bad(name, "value holds control characters")


def parse_search(resource_type: str, params: Iterable[tuple[str, str]] | Mapping[str, Any],
                 *, base_url: str, lenient: bool = False) -> SearchRequest:
    """Validate a search's parameters and turn them into store criteria.

    Parameters
    ----------
    resource_type
        A served type (see :data:`RESOURCES`).
    params
        Query (and, for ``POST _search``, form) parameters: pairs, a mapping of name to
        value or list of values, or a Starlette multi-dict. Repeated parameters are ANDed;
        comma-separated values within one are ORed.
    base_url
        The client's base URL (for absolute patient references).
    lenient
        ``Prefer: handling=lenient``: unknown parameter names are ignored (and listed in
        :attr:`SearchRequest.ignored`) instead of refused. Bad values are refused either way.

    Raises
    ------
    FhirError
        400 naming the parameter and the value at fault; 404 for an unserved type.
    """
    spec = RESOURCES.get(resource_type)
    if spec is None:
        raise FhirError(404, "not-supported", f"resource type {resource_type!r} is not served "
                        f"here (served: {', '.join(RESOURCES)})")
    pairs = pairs_of(params)
    if len(pairs) > _MAX_PARAMS:
        raise FhirError(400, "too-costly", f"more than {_MAX_PARAMS} search parameters")
    by_name = spec.by_name
    ids: set[str] | None = None
    patients: set[str] | None = None
    tokens: list[TokenFilter] = []
    dates: list[DateFilter] = []
    count, offset, sort = DEFAULT_COUNT, 0, None
    includes: list[str] = []
    link: list[tuple[str, str]] = []
    ignored: list[str] = []
    seen_single: set[str] = set()
    for raw_name, value in pairs:
        _check_value(raw_name, raw_name)
        _check_value(raw_name, value)
        name, _, modifier = raw_name.partition(":")
        if name in RESULT_PARAMS:
            if modifier:
                raise _bad(raw_name, f"{name} takes no modifier")
            if name in ("_count", "_offset", "_sort", "_total", "_totalMethod", "_format"):
                if name in seen_single:
                    raise _bad(name, "given more than once")
                seen_single.add(name)
            if name == "_count":
                count = _parse_int(name, value, 0, MAX_COUNT)
            elif name == "_offset":
                offset = _parse_int(name, value, 0, MAX_OFFSET)
            elif name == "_sort":
                if value not in spec.sorts:
                    raise _bad(name, f"{value!r} is not supported for {resource_type} "
                                     f"(supported: {', '.join(spec.sorts)})")
                key = value.lstrip("-")
                desc = "-" if value.startswith("-") else ""
                sort = f"{desc}id" if key == "_id" else f"{desc}date"
                link.append((name, value))
            elif name == "_include":
                inc = value[:-len(":Patient")] if value.endswith(":Patient") else value
                if inc not in spec.includes:
                    raise _bad(name, f"{value!r} is not supported for {resource_type} "
                                     f"(supported: {', '.join(spec.includes) or 'none'})")
                if inc not in includes:
                    includes.append(inc)
                link.append((name, value))
            elif name == "_total":
                if value not in ("none", "estimate", "accurate"):
                    raise _bad(name, f"{value!r} is not none, estimate or accurate")
            elif name == "_format" and value not in _JSON_FORMATS:
                raise FhirError(406, "not-supported", f"_format {value!r}: only JSON is "
                                "served (json, application/json, application/fhir+json)",
                                "_format")
            continue
        ps = by_name.get(name)
        if ps is None:
            if lenient:
                ignored.append(raw_name)
                continue
            known = ", ".join([*by_name, *RESULT_PARAMS])
            raise FhirError(400, "not-supported",
                            f"unknown search parameter {raw_name!r} for {resource_type} "
                            f"(supported: {known}; Prefer: handling=lenient ignores unknown "
                            "parameters)", raw_name)
        if modifier and not (ps.kind == "patient" and modifier == "Patient"):
            raise _bad(raw_name, f"modifier ':{modifier}' is not supported")
        if ps.kind == "id":
            found = _parse_ids(name, value)
            ids = found if ids is None else ids & found
        elif ps.kind == "patient":
            found = _parse_refs(name, value, base_url)
            patients = found if patients is None else patients & found
        elif ps.kind.startswith("token:"):
            tokens.append(_parse_token(name, value, ps.kind.partition(":")[2]))
        else:
            dates.append(_parse_date(name, value))
        link.append((raw_name, value))
    query = FhirQuery(ids=frozenset(ids) if ids is not None else None,
                      patients=frozenset(patients) if patients is not None else None,
                      tokens=tuple(tokens), dates=tuple(dates))
    return SearchRequest(resource_type, query, count, offset, sort, tuple(includes),
                         tuple(link), tuple(ignored))


def declared_names(spec: ResourceSpec) -> Sequence[str]:
    """Every parameter name a search of ``spec.type`` accepts."""
    return [*spec.by_name, *RESULT_PARAMS]
