"""The federated catalogue: node catalogues merged into one HealthDCAT-AP ``dcat:Catalog``,
and a faceted search over it (pure: no HTTP).

Each node answers ``GET /catalogue`` with ``{"format": "incisive-catalogue/1", "node",
"datasets": [record, ...]}`` where a record is the dataset's HealthDCAT-AP JSON-LD (see
:mod:`incisive_lab.node.dataset`) plus the terms in force as ``incisive:accessTerms``
(absent: no terms). :func:`merge` makes one catalogue of them; every ``dcat:dataset``
entry is the node's record, with

``@id``
    ``urn:incisive-lab:dataset:<node>/<dataset>`` (dataset names are unique per node only),
``incisive:node`` and ``incisive:ref``
    the node's name and ``<node>/<dataset>`` (what the broker's cohort query and requests
    take),
``incisive:stale``
    true when the node did not answer the last refresh and this is its last catalogue.

A record that is not an object with a well-formed ``dct:identifier`` is left out (and
counted in the node's ``skipped``): fail closed.

Search facets (:func:`parse_search`; a facet given twice means *any of*; different facets
must all hold; an unknown facet is an error naming it)
    ``q``             words that must all appear (case-insensitive) in the title,
                      description or identifier
    ``cancer_type``   SNOMED CT code; the code and its descendants among the project's
                      codes (``363346000`` finds every cancer)
    ``modality``      DICOM modality (``CT``, ``MG``...)
    ``body_part``     Body Part Examined term (``CHEST``) or its SNOMED CT code
    ``country``       ISO 3166-1 alpha-2 or alpha-3 (``GR``, ``GRC``); from the record's
                      ``dct:spatial``, else the node's configured country
    ``min_patients``, ``max_patients``, ``min_instances``, ``max_instances``
                      size bounds (inclusive)
    ``hosting``       ``federated`` or ``central``
    ``purpose``       the terms in force permit this purpose (no terms: never)
    ``visibility``    ``visible``, ``train-only``, or ``none`` (no terms in force)
    ``organisation``  the terms allow members of this organisation (``*`` in the terms
                      allows any)
    ``node``          the node's name
    ``limit``, ``offset``  paging (default 100, at most 1000)

The answer carries, besides the page of entries, ``total`` and ``facets``: for every
categorical facet, the values found among *all* matching entries with their counts, so
that a UI can show them (``{"modality": [{"value": "CT", "count": 3}, ...], ...}``).

Examples
--------
>>> cat = NodeCatalogue("a", ({"@type": "dcat:Dataset", "dct:identifier": "lung",
...       "dct:title": {"@value": "Lung CT"}, "incisive:modality": [{"skos:notation": "CT"}],
...       "incisive:hosting": "federated"},), fetched_at=0.0)
>>> merged = merge([cat])
>>> merged["dcat:dataset"][0]["incisive:ref"]
'a/lung'
>>> result = search(merged["dcat:dataset"], parse_search([("modality", "ct")]))
>>> result["total"], result["facets"]["modality"]
(1, [{'value': 'CT', 'count': 1}])
>>> parse_search([("colour", "red")])
Traceback (most recent call last):
...
incisive_lab.federation.catalogue.CatalogueError: colour: unknown search parameter (known: body_part, cancer_type, country, hosting, limit, max_instances, max_patients, min_instances, min_patients, modality, node, offset, organisation, purpose, q, visibility)
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from incisive_lab.errors import IncisiveLabError

__all__ = ["CATALOGUE_FORMAT", "FACETS", "SEARCH_FORMAT", "CatalogueError", "NodeCatalogue",
           "SearchQuery", "merge", "parse_search", "search"]

CATALOGUE_FORMAT = "incisive-federated-catalogue/1"
SEARCH_FORMAT = "incisive-catalogue-search/1"
COUNTRY_BASE = "http://publications.europa.eu/resource/authority/country/"
SNOMED_BASE = "http://snomed.info/id/"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CODE = re.compile(r"\d{6,18}")
_MULTI = ("cancer_type", "modality", "body_part", "country", "hosting", "purpose", "visibility",
          "organisation", "node")
_SIZES = ("min_patients", "max_patients", "min_instances", "max_instances")
#: Every search parameter.
FACETS: tuple[str, ...] = tuple(sorted((*_MULTI, *_SIZES, "q", "limit", "offset")))
#: Facets counted in an answer.
COUNTED: tuple[str, ...] = ("cancer_type", "modality", "body_part", "country", "hosting", "purpose",
                            "visibility", "node")
MAX_LIMIT = 1000


class CatalogueError(IncisiveLabError):
    """A search the catalogue cannot answer (the message names the parameter)."""


@dataclass(frozen=True)
class NodeCatalogue:
    """One node's catalogue as last fetched.

    ``fetched_at`` is seconds since the epoch; ``stale`` is true when a later refresh
    failed (``error`` says why) and this is the last good copy.
    """

    node: str
    datasets: tuple[Mapping[str, Any], ...]
    fetched_at: float
    stale: bool = False
    error: str | None = None
    country: str | None = None  #: the node's configured country (alpha-2/3), if any


# ------------------------------------------------------------------------------ merging

def _context() -> dict[str, str]:
    from incisive_lab.node.dataset import CONTEXT

    return dict(CONTEXT)


def _country3(value: str) -> str | None:
    from incisive_lab.node.dataset import RecordError, country_code

    try:
        return country_code(value)
    except RecordError:
        return None


def merge(catalogues: Iterable[NodeCatalogue], *, title: str = "INCISIVE federated catalogue") -> dict[str, Any]:
    """One JSON-LD ``dcat:Catalog`` of every node's records (see the module doc)."""
    context = _context()
    entries: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for cat in catalogues:
        skipped = 0
        for record in cat.datasets:
            name = record.get("dct:identifier") if isinstance(record, Mapping) else None
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                skipped += 1
                continue
            entry = {k: v for k, v in record.items() if not (k == "@context" and v == context)}
            entry["@id"] = f"urn:incisive-lab:dataset:{cat.node}/{name}"
            entry["incisive:node"] = cat.node
            entry["incisive:ref"] = f"{cat.node}/{name}"
            entry["incisive:stale"] = cat.stale
            if "dct:spatial" not in entry and cat.country and _country3(cat.country):
                entry["dct:spatial"] = {"@id": COUNTRY_BASE + str(_country3(cat.country))}
            entries.append(entry)
        info: dict[str, Any] = {
            "name": cat.node, "datasets": len(cat.datasets) - skipped, "skipped": skipped,
            "stale": cat.stale,
            "fetched": dt.datetime.fromtimestamp(cat.fetched_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if cat.error:
            info["error"] = cat.error
        nodes.append(info)
    return {"@context": context, "@type": "dcat:Catalog", "@id": "urn:incisive-lab:catalogue:federated",
            "incisive:format": CATALOGUE_FORMAT, "dct:title": {"@value": title, "@language": "en"},
            "dcat:dataset": entries, "incisive:nodes": nodes}


# ------------------------------------------------------------------------------ reading entries

def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("@value")
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("@value")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _items(entry: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = entry.get(key)
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _cancers(entry: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for item in _items(entry, "healthdcatap:healthTheme"):
        code = item.get("skos:notation") or str(item.get("@id", "")).removeprefix(SNOMED_BASE)
        if isinstance(code, str) and code:
            out[code] = _text(item.get("skos:prefLabel")) or code
    return out


def _modalities(entry: Mapping[str, Any]) -> set[str]:
    return {str(i["skos:notation"]).upper() for i in _items(entry, "incisive:modality")
            if isinstance(i.get("skos:notation"), str)}


def _body_parts(entry: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    terms, codes = set(), set()
    for i in _items(entry, "incisive:bodyPart"):
        if isinstance(i.get("skos:notation"), str):
            terms.add(i["skos:notation"].upper())
        if isinstance(i.get("incisive:snomedCode"), str):
            codes.add(i["incisive:snomedCode"])
    return terms, codes


def _country(entry: Mapping[str, Any]) -> str | None:
    spatial = entry.get("dct:spatial")
    ref = spatial.get("@id") if isinstance(spatial, Mapping) else None
    if isinstance(ref, str) and ref.startswith(COUNTRY_BASE):
        return ref.removeprefix(COUNTRY_BASE).upper()
    return None


def _terms(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    terms = entry.get("incisive:accessTerms")
    return terms if isinstance(terms, Mapping) else None


def _terms_in_force(entry: Mapping[str, Any], today: dt.date) -> Mapping[str, Any] | None:
    terms = _terms(entry)
    if terms is None:
        return None
    expires = terms.get("expires")
    if expires is not None:
        try:
            if today > dt.date.fromisoformat(str(expires)):
                return None
        except ValueError:
            return None  # an unreadable expiry allows nothing
    return terms


def _strings(value: Any) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


# ------------------------------------------------------------------------------ searching

@dataclass(frozen=True)
class SearchQuery:
    """A parsed search (see :func:`parse_search`)."""

    words: tuple[str, ...] = ()
    values: Mapping[str, frozenset[str]] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    limit: int = 100
    offset: int = 0

    def to_json(self) -> dict[str, Any]:
        """The query as parsed (normalised values), for the answer."""
        out: dict[str, Any] = {k: sorted(v) for k, v in self.values.items()}
        out.update(self.sizes)
        if self.words:
            out["q"] = " ".join(self.words)
        out.update(limit=self.limit, offset=self.offset)
        return out


def _nonneg(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{1,12}", value.strip()):
        raise CatalogueError(f"{name}: must be a non-negative integer (got {value!r})")
    return int(value)


def parse_search(params: Iterable[tuple[str, str]]) -> SearchQuery:
    """Parse search parameters (a query string's ``multi_items()``).

    Raises
    ------
    CatalogueError
        An unknown parameter, a malformed value, a repeated single-valued parameter or a
        minimum above its maximum (the message names the parameter).
    """
    from incisive_lab.cdm.codes import snomed_descendants

    values: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    words: list[str] = []
    limit, offset = 100, 0
    seen: set[str] = set()
    for name, raw in params:
        value = raw.strip()
        if name not in FACETS:
            raise CatalogueError(f"{name}: unknown search parameter (known: {', '.join(FACETS)})")
        if name not in _MULTI and name != "q":
            if name in seen:
                raise CatalogueError(f"{name}: given more than once")
            seen.add(name)
        if not value and name != "q":
            raise CatalogueError(f"{name}: empty value")
        if name == "q":
            words += [w.lower() for w in value.split()]
        elif name in _SIZES:
            sizes[name] = _nonneg(name, value)
        elif name == "limit":
            limit = _nonneg(name, value)
            if not 1 <= limit <= MAX_LIMIT:
                raise CatalogueError(f"limit: must be between 1 and {MAX_LIMIT} (got {value})")
        elif name == "offset":
            offset = _nonneg(name, value)
        elif name == "cancer_type":
            if not _CODE.fullmatch(value):
                raise CatalogueError(f"cancer_type: {value!r} is not a SNOMED CT concept id")
            try:
                values.setdefault(name, set()).update(snomed_descendants(value))
            except KeyError:  # not in the project's tables: the code itself only
                values.setdefault(name, set()).add(value)
        elif name == "country":
            code = _country3(value)
            if code is None:
                raise CatalogueError(f"country: {value!r} is not an ISO 3166-1 alpha-3 (or European "
                                     "alpha-2) code")
            values.setdefault(name, set()).add(code)
        elif name == "hosting":
            if value not in ("federated", "central"):
                raise CatalogueError(f"hosting: must be federated or central (got {value!r})")
            values.setdefault(name, set()).add(value)
        elif name == "visibility":
            if value not in ("visible", "train-only", "none"):
                raise CatalogueError(f"visibility: must be visible, train-only or none (got {value!r})")
            values.setdefault(name, set()).add(value)
        elif name == "purpose":
            from incisive_lab.governance.terms import PURPOSES

            if value not in PURPOSES:
                raise CatalogueError(f"purpose: unknown purpose {value!r} (known: {', '.join(PURPOSES)})")
            values.setdefault(name, set()).add(value)
        elif name in ("modality", "body_part"):
            values.setdefault(name, set()).add(value.upper())
        else:  # organisation, node: exact
            values.setdefault(name, set()).add(value)
    for what in ("patients", "instances"):
        low, high = sizes.get(f"min_{what}"), sizes.get(f"max_{what}")
        if low is not None and high is not None and low > high:
            raise CatalogueError(f"min_{what}: {low} is above max_{what} ({high})")
    return SearchQuery(tuple(words), {k: frozenset(v) for k, v in values.items()}, sizes, limit, offset)


def _facet_values(entry: Mapping[str, Any], today: dt.date) -> dict[str, set[str]]:
    """The categorical values of ``entry`` for :data:`COUNTED` (and ``organisation``)."""
    terms = _terms_in_force(entry, today)
    country = _country(entry)
    hosting = entry.get("incisive:hosting")
    return {
        "cancer_type": set(_cancers(entry)),
        "modality": _modalities(entry),
        "body_part": _body_parts(entry)[0],
        "country": {country} if country else set(),
        "hosting": {hosting} if isinstance(hosting, str) else set(),
        "purpose": _strings(terms.get("purposes")) if terms else set(),
        "visibility": {str(terms.get("visibility"))} if terms else {"none"},
        "node": {str(entry.get("incisive:node"))},
        "organisation": _strings(terms.get("organisations")) if terms else set(),
    }


def _matches(entry: Mapping[str, Any], query: SearchQuery, today: dt.date) -> bool:
    if query.words:
        text = " ".join((_text(entry.get("dct:title")), _text(entry.get("dct:description")),
                         str(entry.get("dct:identifier", "")))).lower()
        if not all(w in text for w in query.words):
            return False
    facets = _facet_values(entry, today)
    for name, wanted in query.values.items():
        have = facets[name]
        if name == "body_part":
            have = have | _body_parts(entry)[1]
        if name == "organisation":
            if "*" not in have and not (have & wanted):
                return False
        elif not (have & wanted):
            return False
    sizes = {"patients": _int(entry.get("healthdcatap:numberOfUniqueIndividuals")),
             "instances": _int(entry.get("incisive:numberOfInstances"))
             if entry.get("incisive:numberOfInstances") is not None
             else _int(entry.get("healthdcatap:numberOfRecords"))}
    for name, bound in query.sizes.items():
        side, what = name.split("_", 1)
        n = sizes[what]
        if n is None or (n < bound if side == "min" else n > bound):
            return False
    return True


def search(entries: Sequence[Mapping[str, Any]], query: SearchQuery, *,
           today: dt.date | None = None) -> dict[str, Any]:
    """The entries of a merged catalogue that match ``query``, with facet counts.

    Returns ``{"format", "query", "total", "offset", "limit", "facets", "datasets"}``;
    ``facets`` count every matching entry (not only the page). Cancer types carry their
    label: ``{"value": code, "label": ..., "count": n}``.
    """
    day = today or dt.datetime.now(dt.UTC).date()
    found = [e for e in entries if _matches(e, query, day)]
    counts: dict[str, Counter[str]] = {name: Counter() for name in COUNTED}
    labels: dict[str, str] = {}
    for entry in found:
        for name, vals in _facet_values(entry, day).items():
            if name in counts:
                counts[name].update(vals)
        labels.update(_cancers(entry))
    facets: dict[str, list[dict[str, Any]]] = {}
    for name, counter in counts.items():
        rows = []
        for value, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            row: dict[str, Any] = {"value": value, "count": n}
            if name == "cancer_type" and labels.get(value, value) != value:
                row = {"value": value, "label": labels[value], "count": n}
            rows.append(row)
        facets[name] = rows
    page = found[query.offset:query.offset + query.limit]
    return {"format": SEARCH_FORMAT, "query": query.to_json(), "total": len(found),
            "offset": query.offset, "limit": query.limit, "facets": facets, "datasets": page}
