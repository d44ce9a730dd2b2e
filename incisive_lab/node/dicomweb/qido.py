"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances over the node index.

:func:`parse_query` turns the query parameters into a :class:`Query` (matching keys,
``includefield``, ``limit``/``offset``, ``fuzzymatching``), refusing anything it cannot
honour with a 400 that names the parameter. :func:`search` runs it as one parameterised
SQL statement over the index tables (indexed columns; wildcards become ``GLOB`` on
SQLite and ``LIKE ... ESCAPE`` on PostgreSQL with every metacharacter of the user's
value escaped) and renders the matches as DICOM JSON (PS3.18 F.2).

Matching (PS3.4 C.2.2.2, PS3.18 §8.3.4):

* single value — exact, case-sensitive;
* wildcard — ``*`` (any run) and ``?`` (one character) on LO/SH/CS attributes;
* UID list — UIDs separated by ``,`` or ``\\``;
* list of code strings — ``Modality=CT,MR`` (any of);
* date / time range — ``20200101-20201231``, ``-20201231``, ``20200101-``;
  times ``HH[MM[SS[.FFFFFF]]]``, a partial upper bound covering its whole last unit;
* universal — an empty value or ``*``: no filtering (the attribute is returned).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, select

from incisive_lab.node._scope_sql import scope_condition
from incisive_lab.node.dicomweb._headers import HeaderCache
from incisive_lab.node.dicomweb._http import DicomwebError, check_uid
from incisive_lab.node.dicomweb.attributes import (
    ATTRIBUTES,
    EXTRA,
    LEVELS,
    REQUIRED,
    Attribute,
    resolve,
    tag_hex,
)
from incisive_lab.node.index import (
    NodeIndex,
    instances_table,
    patients_table,
    series_table,
    studies_table,
)

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "MAX_OFFSET", "Match", "Query", "QueryResult",
           "parse_query", "search"]

#: The most matches one response carries; a larger ``limit`` is refused (400).
MAX_LIMIT = 1000
#: Matches returned when the request gives no ``limit``.
DEFAULT_LIMIT = 1000
#: The largest ``offset`` accepted.
MAX_OFFSET = 1_000_000_000
#: The most values of one UID or code list.
MAX_LIST = 1000

_RESERVED = ("limit", "offset", "includefield", "fuzzymatching")
_MAX_LEN = {"CS": 16, "SH": 16, "AS": 4, "LO": 64, "UI": 64}
_TIME = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?")
_INT = re.compile(r"[+-]?\d{1,10}")
_TABLES = {"patients": patients_table, "studies": studies_table, "series": series_table,
           "instances": instances_table}
_CHARSET = "ISO_IR 192"


@dataclass(frozen=True, slots=True)
class Match:
    """One matching key: the attribute and the parsed condition.

    ``kind`` is ``equal`` (``values[0]``), ``in`` (any of ``values``), ``wildcard``
    (``values[0]`` with ``*``/``?``) or ``range`` (``values`` = (low or "", high or "")).
    """

    attribute: Attribute
    kind: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed QIDO-RS request for one level.

    ``include`` holds the tags to add to each match (beyond the level's required
    attributes); ``include_all`` adds every attribute the index keeps.
    """

    level: str
    matches: tuple[Match, ...] = ()
    include: tuple[int, ...] = ()
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    fuzzy_ignored: bool = False


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Matches as DICOM JSON objects, whether more exist beyond ``limit``, and their UIDs."""

    items: list[dict[str, Any]]
    more: bool
    uids: dict[str, list[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- parsing

def _check_text(value: str, attr: Attribute, what: str) -> None:
    limit = _MAX_LEN.get(attr.vr, 64)
    if len(value) > limit:
        raise DicomwebError(400, f"{what}: value is longer than {limit} characters "
                                 f"(the maximum of VR {attr.vr})")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise DicomwebError(400, f"{what}: value contains control characters")


def _date(value: str, what: str) -> str:
    if not re.fullmatch(r"\d{8}", value):
        raise DicomwebError(400, f"{what}: {value!r} is not a DICOM date (YYYYMMDD)")
    try:
        _dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise DicomwebError(400, f"{what}: {value!r} is not a valid calendar date") from None
    return value


def _time(value: str, what: str, upper: bool) -> str:
    m = _TIME.fullmatch(value)
    if not m:
        raise DicomwebError(400, f"{what}: {value!r} is not a DICOM time "
                                 "(HH[MM[SS[.FFFFFF]]])")
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise DicomwebError(400, f"{what}: {value!r} is not a valid time of day")
    fill = "9" if upper else "0"
    return "".join((hh, mm or ("59" if upper else "00"), ss or ("59" if upper else "00"), ".",
                    (frac or "").ljust(6, fill)))


def _parse_match(attr: Attribute, value: str, what: str, level: str) -> Match | None:
    """Parse one matching key's value; ``None`` for universal matching."""
    if value in ("", "*"):
        return None
    kind = attr.match
    if kind is None:
        raise DicomwebError(400, f"{what}: {attr.keyword} is returned but not supported "
                                 f"for matching at the {level} level")
    if kind == "uid":
        uids = [u for u in re.split(r"[,\\]", value)]
        if len(uids) > MAX_LIST:
            raise DicomwebError(400, f"{what}: more than {MAX_LIST} UIDs in the list")
        for u in uids:
            check_uid(u, what)
        return Match(attr, "in", tuple(dict.fromkeys(uids)))
    if kind in ("date", "time"):
        if value.count("-") > 1:
            form = "YYYYMMDD" if kind == "date" else "HHMMSS"
            raise DicomwebError(400, f"{what}: {value!r} is not a DICOM {kind} ({form}) or "
                                     f"a range ({form}-{form})")
        if "-" in value:
            low, high = value.split("-")
            if not low and not high:
                raise DicomwebError(400, f"{what}: '-' is not a range")
        else:
            low = high = value
        if kind == "date":
            lo = _date(low, what) if low else ""
            hi = _date(high, what) if high else ""
        else:
            lo = _time(low, what, upper=False) if low else ""
            hi = _time(high, what, upper=True) if high else ""
        if lo and hi and lo > hi:
            raise DicomwebError(400, f"{what}: the range {value!r} ends before it starts")
        if kind == "date" and lo == hi:
            return Match(attr, "equal", (lo,))
        return Match(attr, "range", (lo, hi))
    if kind == "int":
        if not _INT.fullmatch(value) or abs(int(value)) > 2**31 - 1:
            raise DicomwebError(400, f"{what}: {value!r} is not an integer")
        return Match(attr, "equal", (str(int(value)),))
    if kind in ("list", "modalities"):
        parts = re.split(r"[,\\]", value)
        if len(parts) > MAX_LIST:
            raise DicomwebError(400, f"{what}: more than {MAX_LIST} values in the list")
        for p in parts:
            if not p:
                raise DicomwebError(400, f"{what}: empty value in the list {value!r}")
            _check_text(p, attr, what)
        if len(parts) > 1:
            if any(c in p for p in parts for c in "*?"):
                raise DicomwebError(400, f"{what}: wildcards cannot be combined with a list")
            return Match(attr, "in", tuple(dict.fromkeys(parts)))
        return Match(attr, "wildcard" if any(c in value for c in "*?") else "equal", (value,))
    if "\\" in value:
        raise DicomwebError(400, f"{what}: multiple values (backslash) are not allowed for "
                                 f"{attr.keyword}")
    _check_text(value, attr, what)
    if kind == "wildcard" and any(c in value for c in "*?"):
        return Match(attr, "wildcard", (value,))
    return Match(attr, "equal", (value,))


def _one(values: list[str], name: str) -> str:
    if len(values) > 1:
        raise DicomwebError(400, f"{name}: given {len(values)} times; give it once")
    return values[0]


def _number(value: str, name: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,12}", value.strip()):
        raise DicomwebError(400, f"{name}: {value!r} is not a non-negative integer")
    n = int(value)
    if not low <= n <= high:
        raise DicomwebError(400, f"{name}: {n} is outside {low}..{high}")
    return n


def parse_query(pairs: Sequence[tuple[str, str]], level: str, *,
                max_limit: int = MAX_LIMIT) -> Query:
    """Parse QIDO-RS query parameters for a search at ``level``.

    Parameters
    ----------
    pairs
        (name, value) pairs as received (names repeated for repeated parameters).
    level
        ``"study"``, ``"series"`` or ``"instance"``: the searched level. Matching keys of
        this level and of the levels above it are accepted.
    max_limit
        The largest ``limit`` accepted (and the default).

    Raises
    ------
    DicomwebError
        400 for an unknown parameter or attribute, an attribute of a lower level, a value
        that is not valid for its VR, a repeated key, or a bad ``limit``/``offset``/
        ``fuzzymatching``.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    allowed = LEVELS[: LEVELS.index(level) + 1]
    matches: list[Match] = []
    include: list[int] = []
    include_all = False
    limit, offset, fuzzy = max_limit, 0, False
    seen: dict[int, str] = {}
    for name, values in grouped.items():
        key = name.lower()
        if key == "limit":
            limit = _number(_one(values, name), name, 1, max_limit)
        elif key == "offset":
            offset = _number(_one(values, name), name, 0, MAX_OFFSET)
        elif key == "fuzzymatching":
            flag = _one(values, name).lower()
            if flag not in ("true", "false"):
                raise DicomwebError(400, f"{name}: {flag!r} is not true or false")
            fuzzy = flag == "true"
        elif key == "includefield":
            for v in values:
                for item in v.split(","):
                    item = item.strip()
                    if item.lower() == "all":
                        include_all = True
                    elif item:
                        include.append(resolve(item, f"includefield {item!r}")[0])
                    else:
                        raise DicomwebError(400, f"includefield: empty item in {v!r}")
        else:
            tag, keyword = resolve(name, f"query parameter {name!r}")
            if tag in seen:
                raise DicomwebError(400, f"{name}: {keyword} is given more than once "
                                         f"(also as {seen[tag]!r})")
            seen[tag] = name
            attr = ATTRIBUTES.get(keyword)
            what = f"{name} ({keyword})" if name != keyword else name
            if attr is None:
                raise DicomwebError(400, f"{what}: not supported for matching; the "
                                         f"matching keys at the {level} level are "
                                         f"{', '.join(_keys(allowed))}")
            if attr.level not in allowed:
                raise DicomwebError(400, f"{what}: a {attr.level}-level attribute cannot "
                                         f"be matched in a {level} search")
            match = _parse_match(attr, _one(values, name), what, level)
            if match is not None:
                matches.append(match)
            include.append(attr.tag)
    return Query(level, tuple(matches), tuple(dict.fromkeys(include)), include_all, limit,
                 offset, fuzzy)


def _keys(levels: Iterable[str]) -> list[str]:
    return [a.keyword for a in ATTRIBUTES.values() if a.level in levels and a.match]


# --------------------------------------------------------------------------- SQL

def _escape_glob(value: str) -> str:
    """A GLOB pattern: ``*``/``?`` stay wildcards; ``[`` is bracketed to be literal."""
    return value.replace("[", "[[]")


def _escape_like(value: str) -> str:
    """A LIKE pattern with ``\\`` escapes: ``%``/``_``/``\\`` literal, ``*``/``?`` wildcards."""
    out = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return out.replace("*", "%").replace("?", "_")


def _condition(match: Match, dialect: str) -> ColumnElement[bool]:
    attr = match.attribute
    assert attr.column is not None
    table_name, col_name = attr.column
    if attr.match == "modalities":
        col = series_table.c.modality
        inner = _column_condition(col, match, dialect)
        return exists().where(series_table.c.study_uid == studies_table.c.study_uid, inner)
    return _column_condition(_TABLES[table_name].c[col_name], match, dialect)


def _column_condition(col: Any, match: Match, dialect: str) -> ColumnElement[bool]:
    if match.kind == "in":
        return col.in_(list(match.values))
    if match.kind == "equal":
        value: Any = int(match.values[0]) if match.attribute.match == "int" else match.values[0]
        return col == value
    if match.kind == "wildcard":
        if dialect == "sqlite":
            return col.op("GLOB")(_escape_glob(match.values[0]))
        return col.like(_escape_like(match.values[0]), escape="\\")
    low, high = match.values
    parts = []
    if low:
        parts.append(col >= low)
    if high:
        parts.append(col <= high)
    return and_(*parts)


def _study_counts() -> list[Any]:
    """NumberOfStudyRelatedSeries/-Instances as labelled scalar subqueries."""
    st, se, it = studies_table, series_table.alias("se_count"), instances_table.alias("it_count")
    return [select(func.count()).where(se.c.study_uid == st.c.study_uid)
            .scalar_subquery().label("st_n_series"),
            select(func.count()).where(it.c.study_uid == st.c.study_uid)
            .scalar_subquery().label("st_n_inst")]


def _statement(query: Query, dialect: str, scope: dict[str, str],
               read_scope: ReadScope | None = None) -> Select[Any]:
    st, pa, se, it = studies_table, patients_table, series_table, instances_table
    it2 = instances_table.alias("it_series_count")
    pa_join = and_(pa.c.dataset == st.c.dataset, pa.c.patient_id == st.c.patient_id)
    cols: list[Any] = [*st.c, pa.c.patient_sex]
    if query.level == "study":
        n_series = select(func.count()).where(se.c.study_uid == st.c.study_uid).scalar_subquery()
        n_inst = select(func.count()).where(it.c.study_uid == st.c.study_uid).scalar_subquery()
        # ModalitiesInStudy in the same statement (a study has few series; deduplicated later)
        mods = (select(func.aggregate_strings(se.c.modality, "\\"))
                .where(se.c.study_uid == st.c.study_uid, se.c.modality.is_not(None))
                .scalar_subquery())
        q = select(*cols, n_series.label("n_series"), n_inst.label("n_inst"),
                   mods.label("st_modalities")).join(pa, pa_join)
        order = (st.c.study_date, st.c.study_time, st.c.study_uid)
    elif query.level == "series":
        n_inst = select(func.count()).where(it.c.series_uid == se.c.series_uid).scalar_subquery()
        extra = _study_counts() if "study" not in scope else []
        q = (select(*cols, *(c.label(f"se_{c.name}") for c in se.c), n_inst.label("n_inst"),
                    *extra)
             .select_from(se).join(st, st.c.study_uid == se.c.study_uid).join(pa, pa_join))
        order = (se.c.study_uid, se.c.series_number, se.c.series_uid)
    else:
        extra = _study_counts() if "study" not in scope else []
        if "series" not in scope:
            extra.append(select(func.count()).where(it2.c.series_uid == se.c.series_uid)
                         .scalar_subquery().label("n_inst"))
        q = (select(*cols, *(c.label(f"se_{c.name}") for c in se.c),
                    *(c.label(f"it_{c.name}") for c in it.c), *extra)
             .select_from(it).join(se, se.c.series_uid == it.c.series_uid)
             .join(st, st.c.study_uid == it.c.study_uid).join(pa, pa_join))
        order = (it.c.series_uid, it.c.instance_number, it.c.sop_uid)
    if "study" in scope:
        q = q.where(st.c.study_uid == scope["study"])
    if "series" in scope:
        q = q.where(se.c.series_uid == scope["series"])
    if read_scope is not None:  # the caller's read scope, before paging
        q = q.where(scope_condition(st.c.dataset, st.c.patient_id, read_scope))
    for m in query.matches:
        q = q.where(_condition(m, dialect))
    return q.order_by(*order).offset(query.offset).limit(query.limit + 1)


# --------------------------------------------------------------------------- rendering

def _element(attr_keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    attr = ATTRIBUTES[attr_keyword]
    elem: dict[str, Any] = {"vr": attr.vr}
    if value is None or value == "" or value == ():
        return tag_hex(attr.tag), elem
    values = list(value) if isinstance(value, tuple | list) else [value]
    if attr.vr == "PN":
        values = [{"Alphabetic": v} for v in values]
    elem["Value"] = values
    return tag_hex(attr.tag), elem


@dataclass
class _Renderer:
    """Builds one match's DICOM JSON from an index row."""

    query: Query
    base_url: str
    scope: dict[str, str]
    modalities: dict[str, list[str]]
    headers: HeaderCache
    shas: dict[str, str]
    _names: tuple[str, ...] | None = None

    def levels(self) -> tuple[str, ...]:
        """Levels whose attributes the response carries (PS3.18 Table 6.7.1-2a)."""
        idx = LEVELS.index(self.query.level)
        if self.query.level == "study":
            return ("study",)
        if self.query.level == "series":
            return ("series",) if "study" in self.scope else ("study", "series")
        if "series" in self.scope:
            return ("instance",)
        return LEVELS[1:idx + 1] if "study" in self.scope else LEVELS

    def value(self, keyword: str, row: Any) -> Any:
        """The value of ``keyword`` for ``row`` (``None`` when unknown)."""
        m = row if isinstance(row, dict) else row._mapping
        column = _COLUMN_OF.get(keyword)
        if column is not None:
            return m.get(column)
        if keyword == "SpecificCharacterSet":
            return _CHARSET
        if keyword == "InstanceAvailability":
            return "ONLINE"
        st_uid = m["study_uid"]
        if keyword == "ModalitiesInStudy":
            return tuple(self.modalities.get(st_uid, ()))
        if keyword == "NumberOfStudyRelatedSeries":
            return _field(m, "n_series", "st_n_series")
        if keyword == "NumberOfStudyRelatedInstances":
            return (_field(m, "n_inst", "st_n_inst") if self.query.level == "study"
                    else _field(m, "st_n_inst"))
        if keyword == "NumberOfSeriesRelatedInstances":
            return m.get("n_inst")
        if keyword == "RetrieveURL":
            url = f"{self.base_url}/studies/{st_uid}"
            if self.query.level in ("series", "instance"):
                url += f"/series/{m.get('se_series_uid')}"
            if self.query.level == "instance":
                url += f"/instances/{m.get('it_sop_uid')}"
            return url
        if keyword == "BitsAllocated":
            header = self.headers.get(m["it_sha256"]).attributes()
            found = header.get(tag_hex(ATTRIBUTES[keyword].tag), {}).get("Value")
            return found[0] if found else None
        return None  # PatientName, PatientBirthDate, ReferringPhysicianName: not kept

    def render(self, row: Any) -> dict[str, Any]:
        """The DICOM JSON object of one match."""
        out: dict[str, dict[str, Any]] = {}
        row = dict(row._mapping)
        for kw in self.names:
            key, elem = _element(kw, self.value(kw, row))
            out[key] = elem
        header: dict[str, Any] | None = None
        for tag in self.query.include:
            key = tag_hex(tag)
            if key in out:
                continue
            attr = _BY_TAG.get(tag)
            if attr is not None and not _from_header(attr, self.query.level):
                out[key] = _element(attr.keyword, self.value(attr.keyword, row))[1]
                continue
            if header is None:
                header = self.headers.get(self._sha(row)).attributes()
            if key in header:
                out[key] = header[key]
        return dict(sorted(out.items()))

    def _sha(self, row: dict[str, Any]) -> str:
        if self.query.level == "instance":
            return str(row["it_sha256"])
        uid = row["se_series_uid"] if self.query.level == "series" else row["study_uid"]
        return self.shas[uid]

    @property
    def names(self) -> tuple[str, ...]:
        """The keywords every match carries, in order (computed once)."""
        if self._names is None:
            self._names = tuple(kw for level in self.levels() for kw in
                                REQUIRED[level] + (EXTRA[level] if self.query.include_all else ()))
        return self._names


def search(index: NodeIndex, headers: HeaderCache, query: Query, *, base_url: str,
           study_uid: str | None = None, series_uid: str | None = None,
           read_scope: ReadScope | None = None) -> QueryResult:
    """Run ``query`` on the index and render the matches.

    Parameters
    ----------
    index, headers
        The node index and the header cache of its objects.
    query
        From :func:`parse_query`.
    base_url
        The DICOMweb service root as the client sees it (for RetrieveURL).
    study_uid, series_uid
        The path's scope (``/studies/{study}/series``, ``/studies/{s}/series/{se}/instances``).
    read_scope
        The caller's :class:`~incisive_lab.governance.scope.ReadScope`; ``None``: no
        restriction.
    """
    scope = {k: v for k, v in (("study", study_uid), ("series", series_uid)) if v}
    rows = index.fetch(_statement(query, index.dialect_name, scope, read_scope))
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    study_uids = list(dict.fromkeys(r.study_uid for r in rows))
    modalities: dict[str, list[str]] = {}
    needs_mods = query.level == "study" or not scope
    if query.level == "study":
        for r in rows:
            found = r.st_modalities
            if found:
                modalities[r.study_uid] = sorted(set(found.split("\\")))
    elif needs_mods and study_uids:
        se = series_table
        for part in _chunks(study_uids):
            stmt = (select(se.c.study_uid, se.c.modality).distinct()
                    .where(se.c.study_uid.in_(part), se.c.modality.is_not(None)))
            for s_uid, mod in index.fetch(stmt):
                modalities.setdefault(s_uid, []).append(mod)
        for mods in modalities.values():
            mods.sort()
    shas: dict[str, str] = {}
    from_header = [t for t in query.include
                   if t not in _BY_TAG or _from_header(_BY_TAG[t], query.level)]
    if query.level != "instance" and from_header and rows:
        it = instances_table
        key_col = it.c.series_uid if query.level == "series" else it.c.study_uid
        keys = [r.se_series_uid for r in rows] if query.level == "series" else study_uids
        for part in _chunks(keys):
            stmt = (select(key_col, func.min(it.c.sha256)).where(key_col.in_(part))
                    .group_by(key_col))
            shas.update({k: v for k, v in index.fetch(stmt)})
    renderer = _Renderer(query, base_url.rstrip("/"), scope, modalities, headers, shas)
    items = [renderer.render(r) for r in rows]
    uids: dict[str, list[str]] = {"studies": study_uids}
    if query.level in ("series", "instance"):
        uids["series"] = list(dict.fromkeys(r.se_series_uid for r in rows))
    if query.level == "instance":
        uids["instances"] = [r.it_sop_uid for r in rows]
    return QueryResult(items, more, uids)


_BY_TAG = {a.tag: a for a in ATTRIBUTES.values()}

#: Keyword -> the column label of the statement's rows that holds its value.
_COLUMN_OF = {
    "StudyDate": "study_date", "StudyTime": "study_time", "AccessionNumber": "accession_number",
    "StudyDescription": "study_description", "PatientID": "patient_id",
    "PatientSex": "patient_sex", "PatientAge": "patient_age", "StudyInstanceUID": "study_uid",
    "StudyID": "study_id", "Modality": "se_modality",
    "SeriesDescription": "se_series_description", "SeriesInstanceUID": "se_series_uid",
    "SeriesNumber": "se_series_number", "BodyPartExamined": "se_body_part",
    "SOPClassUID": "it_sop_class_uid", "SOPInstanceUID": "it_sop_uid",
    "InstanceNumber": "it_instance_number", "Rows": "it_rows", "Columns": "it_columns",
    "NumberOfFrames": "it_number_of_frames",
    "AvailableTransferSyntaxUID": "it_transfer_syntax_uid",
}


def _from_header(attr: Attribute, level: str) -> bool:
    """Whether ``attr`` is read from a stored header (not the index) at ``level``."""
    lower = LEVELS.index(attr.level) > LEVELS.index(level)
    return attr.keyword == "BitsAllocated" or lower


def _field(mapping: Any, *names: str) -> Any:
    """The first of ``names`` the row mapping has (``None`` when none)."""
    for name in names:
        if name in mapping:
            return mapping[name]
    return None


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def dumps(items: list[dict[str, Any]]) -> bytes:
    """The ``application/dicom+json`` body of a list of DICOM JSON objects."""
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
