"""Cohort criteria: a typed, strictly validated form of a JSON query.

A query is a JSON object with two optional parts, ``clinical`` and ``imaging``; every
criterion given must hold (AND), and a list of values means *any of them* (OR). Anything
unknown is refused with :class:`CohortError` naming the field: an unknown key, a code that
is not in the project's code tables, a value outside a column's allowed values, a range whose
minimum exceeds its maximum, a date that is not ``YYYY-MM-DD``. Nothing is silently ignored.

Clinical criteria (on the patient's FHIR resources)
    ``cancer_type``
        SNOMED CT disorder codes; each is expanded to itself and its descendants among the
        project's codes (:func:`incisive_lab.cdm.codes.snomed_descendants`), so
        ``"363346000"`` (*Malignant neoplastic disease*) finds every cancer type.
    ``histology``
        ICD-O-3 morphology codes (``"8140/3"``, matched literally) or SNOMED CT morphology
        codes (expanded to descendants).
    ``stage``
        UICC TNM 8 stage groups (``"IIA"``); a main group (``"II"``) also matches its
        subgroups (``IIA``, ``IIB``, ``IIC``). Or an object ``{"group": [...], "t": [...],
        "n": [...], "m": [...]}`` with clinical T/N/M categories (``"cT2"``, ``"cN0"``...).
    ``biomarkers``
        A list of ``{"marker": NAME or LOINC, "value": ... | "values": [...]}`` for coded
        markers or ``{"marker": ..., "min": x, "max": y}`` for numeric ones; all must hold.
        Markers: :data:`BIOMARKERS`.
    ``sex``
        ``female``, ``male``, ``other``, ``unknown``.
    ``age_at_diagnosis``
        ``{"min": years, "max": years}`` (inclusive; see :mod:`incisive_lab.cohort.engine`
        for how the age is derived from de-identified data).
    ``treatment``
        SNOMED CT procedure codes (or template values such as ``"surgery"``), expanded to
        descendants; a procedure or a medication statement with one of them.
    ``diagnosis_date``
        ``{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}`` (inclusive; either may be left out).

Imaging criteria (on one study of the patient)
    ``modality``
        DICOM modality codes (CID 29/33: ``CT``, ``MR``, ``MG``...).
    ``body_part``
        Body Part Examined defined terms (``"CHEST"``) or their SNOMED CT codes
        (``"816094009"``).
    ``rows``, ``columns``, ``number_of_frames``
        ``{"min": n, "max": n}``: an instance of the series has such a matrix / frame count.
    ``study_date``
        ``{"from": ..., "to": ...}``.
    ``age_at_study``
        ``{"min": years, "max": years}`` from the study's Patient's Age.
    ``annotations``
        ``true``: the study holds a SEG, SR or KO series; ``false``: it holds none.

``modality``, ``body_part`` and the acquisition ranges must hold for the same series; the
others for the study.

Examples
--------
>>> c = parse_criteria({"clinical": {"cancer_type": "254837009",
...                                  "biomarkers": [{"marker": "er_status", "value": "positive"}]},
...                     "imaging": {"modality": ["MG"], "annotations": True}})
>>> sorted(c.cancer_type)[:2]
['254837009', '427685000']
>>> parse_criteria({"imaging": {"modality": "XX"}})
Traceback (most recent call last):
...
incisive_lab.cohort.criteria.CohortError: imaging.modality: 'XX' is not a DICOM modality code
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from incisive_lab.cdm.codes import Code, all_concepts, snomed_concept, snomed_descendants
from incisive_lab.cdm.template import column
from incisive_lab.curation.bodypart import body_part_table, modality_table
from incisive_lab.errors import IncisiveLabError

__all__ = [
    "ANNOTATION_MODALITIES",
    "BIOMARKERS",
    "Biomarker",
    "CohortError",
    "Criteria",
    "DateRange",
    "Range",
    "parse_criteria",
]

#: Template columns that can be queried as biomarkers (laboratory observations with a code).
BIOMARKERS = ("er_status", "pr_status", "her2_status", "ki67_percent", "egfr_mutation",
              "alk_rearrangement", "pdl1_status", "psa_ng_ml", "gleason_score", "kras_mutation",
              "msi_status", "cea_ng_ml")
#: Modalities of series that carry annotations (segmentation, structured report, key objects).
ANNOTATION_MODALITIES = frozenset({"SEG", "SR", "KO"})
_CLINICAL = frozenset({"cancer_type", "histology", "stage", "biomarkers", "sex", "age_at_diagnosis",
                       "treatment", "diagnosis_date"})
_IMAGING = frozenset({"modality", "body_part", "rows", "columns", "number_of_frames", "study_date",
                      "age_at_study", "annotations"})
_SEXES = ("female", "male", "other", "unknown")
_MAX_VALUES = 200  # values per list: a query is not a data dump
_SCTID = re.compile(r"[1-9][0-9]{5,17}")
_ROMAN = frozenset("IV")


class CohortError(IncisiveLabError):
    """A cohort query that cannot be accepted (the message names the field)."""


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive numeric range; ``None`` leaves a side open."""

    min: float | None = None
    max: float | None = None

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def to_json(self) -> dict[str, float]:
        """The range as given (open sides left out)."""
        return {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}


@dataclass(frozen=True, slots=True)
class DateRange:
    """An inclusive range of calendar dates; ``None`` leaves a side open."""

    start: dt.date | None = None
    end: dt.date | None = None

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, dt.date):
            return False
        return (self.start is None or value >= self.start) and (self.end is None or value <= self.end)

    def to_json(self) -> dict[str, str]:
        """``{"from": ..., "to": ...}`` (open sides left out)."""
        return {k: v.isoformat() for k, v in (("from", self.start), ("to", self.end)) if v is not None}


@dataclass(frozen=True, slots=True)
class Biomarker:
    """One biomarker criterion.

    Attributes
    ----------
    marker : str
        The template column (``er_status``...).
    loinc : str
        The LOINC code of the observation.
    codes : frozenset of str
        For coded markers: the SNOMED CT codes that satisfy the criterion.
    texts : frozenset of str
        For coded markers with local values, and string-valued markers (Gleason score): the
        values that satisfy it.
    range : Range or None
        For numeric markers.
    """

    marker: str
    loinc: str
    codes: frozenset[str] = frozenset()
    texts: frozenset[str] = frozenset()
    range: Range | None = None
    given: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The criterion in its canonical JSON form."""
        if self.range is not None:
            return {"marker": self.marker, **self.range.to_json()}
        return {"marker": self.marker, "values": list(self.given)}


@dataclass(frozen=True, slots=True)
class Criteria:
    """A parsed cohort query (see the module documentation for each field).

    Empty sets and ``None`` mean *no criterion*. Code sets are already expanded to
    descendants; :meth:`to_json` gives back the canonical form of what was asked.
    """

    cancer_type: frozenset[str] = frozenset()
    histology: frozenset[str] = frozenset()
    stage_group: frozenset[str] = frozenset()
    stage_t: frozenset[str] = frozenset()
    stage_n: frozenset[str] = frozenset()
    stage_m: frozenset[str] = frozenset()
    biomarkers: tuple[Biomarker, ...] = ()
    sex: frozenset[str] = frozenset()
    age_at_diagnosis: Range | None = None
    treatment: frozenset[str] = frozenset()
    diagnosis_date: DateRange | None = None
    modality: frozenset[str] = frozenset()
    body_part: frozenset[str] = frozenset()
    body_part_code: frozenset[str] = frozenset()
    rows: Range | None = None
    columns: Range | None = None
    number_of_frames: Range | None = None
    study_date: DateRange | None = None
    age_at_study: Range | None = None
    annotations: bool | None = None
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def series_level(self) -> bool:
        """Whether a criterion must hold for one series (modality, body part, acquisition)."""
        return bool(self.modality or self.body_part or self.body_part_code or self.rows
                     or self.columns or self.number_of_frames)

    @property
    def instance_level(self) -> bool:
        """Whether an acquisition-parameter criterion applies."""
        return bool(self.rows or self.columns or self.number_of_frames)

    def to_json(self) -> dict[str, Any]:
        """The query as given, in canonical form (sorted lists, normalised values)."""
        out: dict[str, Any] = json.loads(json.dumps(self.source, sort_keys=True))
        return out

    def sha256(self) -> str:
        """SHA-256 of the canonical JSON of the query (for logs and the guard)."""
        text = json.dumps(self.source, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# --- parsing helpers ------------------------------------------------------------------------

def _keys(obj: Any, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CohortError(f"{where}: must be a JSON object, not {type(obj).__name__}")
    for key in obj:
        if not isinstance(key, str) or key not in allowed:
            raise CohortError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    return obj


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise CohortError(f"{where}: must be a string or a non-empty list of strings")
    if len(items) > _MAX_VALUES:
        raise CohortError(f"{where}: at most {_MAX_VALUES} values")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise CohortError(f"{where}: {item!r} is not a non-empty string")
    return [i.strip() for i in items]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CohortError(f"{where}: {value!r} is not a finite number")
    return value


def _range(value: Any, where: str, *, lowest: float = 0, highest: float | None = None) -> Range:
    obj = _keys(value, frozenset({"min", "max"}), where)
    if not obj:
        raise CohortError(f"{where}: give min, max or both")
    lo = _number(obj["min"], f"{where}.min") if "min" in obj else None
    hi = _number(obj["max"], f"{where}.max") if "max" in obj else None
    for name, v in (("min", lo), ("max", hi)):
        if v is not None and (v < lowest or (highest is not None and v > highest)):
            bounds = f"{lowest}..{highest}" if highest is not None else f">= {lowest}"
            raise CohortError(f"{where}.{name}: {v!r} is outside {bounds}")
    if lo is not None and hi is not None and lo > hi:
        raise CohortError(f"{where}: min {lo!r} is greater than max {hi!r}")
    return Range(lo, hi)


def _date(value: Any, where: str) -> dt.date:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise CohortError(f"{where}: {value!r} is not a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CohortError(f"{where}: {value!r} is not a valid date") from None


def _date_range(value: Any, where: str) -> DateRange:
    obj = _keys(value, frozenset({"from", "to"}), where)
    if not obj:
        raise CohortError(f"{where}: give from, to or both")
    start = _date(obj["from"], f"{where}.from") if "from" in obj else None
    end = _date(obj["to"], f"{where}.to") if "to" in obj else None
    if start is not None and end is not None and start > end:
        raise CohortError(f"{where}: from {start} is after to {end}")
    return DateRange(start, end)


def _snomed(values: list[str], where: str, *, kinds: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for v in values:
        c = snomed_concept(v) if _SCTID.fullmatch(v) else None
        if c is None:
            raise CohortError(f"{where}: {v!r} is not a SNOMED CT code of the project's code tables")
        if not c.display.endswith(tuple(f"({k})" for k in kinds)):
            raise CohortError(f"{where}: SNOMED CT {v} |{c.display}| is not a {' or '.join(kinds)}")
        out |= snomed_descendants(v)
    return frozenset(out)


def _coded_values(name: str, values: list[str], where: str) -> tuple[frozenset[str], frozenset[str]]:
    """Template values (or their SNOMED CT codes) of coded column `name` -> (codes, texts)."""
    col = column(name)
    assert col.values is not None
    by_code = {c.code: value for value, codes in col.values.items() for c in codes}
    codes: set[str] = set()
    texts: set[str] = set()
    for v in values:
        value = v if v in col.values else by_code.get(v)
        if value is None:
            raise CohortError(f"{where}: {v!r} is not a value of {name} "
                              f"(allowed: {', '.join(col.values)})")
        found: tuple[Code, ...] = col.values[value]
        if found:
            codes.update(c.code for c in found)
        else:
            texts.add(value)
    return frozenset(codes), frozenset(texts)


def _biomarker(item: Any, where: str) -> Biomarker:
    obj = _keys(item, frozenset({"marker", "value", "values", "min", "max"}), where)
    if not isinstance(obj.get("marker"), str):
        raise CohortError(f"{where}.marker: required (one of {', '.join(BIOMARKERS)} or its LOINC code)")
    name = obj["marker"]
    by_loinc = {column(m).concept.code: m for m in BIOMARKERS}  # type: ignore[union-attr]
    name = by_loinc.get(name, name)
    if name not in BIOMARKERS:
        raise CohortError(f"{where}.marker: unknown marker {obj['marker']!r} "
                          f"(known: {', '.join(BIOMARKERS)} or their LOINC codes)")
    col = column(name)
    assert col.concept is not None
    if col.type in ("integer", "decimal"):
        if "value" in obj or "values" in obj:
            raise CohortError(f"{where}: {name} is numeric: give min and/or max, not values")
        rng = _range({k: obj[k] for k in ("min", "max") if k in obj}, where,
                     lowest=col.minimum or 0, highest=col.maximum)
        return Biomarker(name, col.concept.code, range=rng)
    if "min" in obj or "max" in obj:
        raise CohortError(f"{where}: {name} is coded: give value or values, not min/max")
    if ("value" in obj) == ("values" in obj):
        raise CohortError(f"{where}: give exactly one of value and values")
    given = _strings(obj.get("value", obj.get("values")), f"{where}.{'value' if 'value' in obj else 'values'}")
    codes, texts = _coded_values(name, given, f"{where}.value")
    return Biomarker(name, col.concept.code, codes=codes, texts=texts, given=tuple(sorted(given)))


def _stage_groups(values: list[str], where: str) -> frozenset[str]:
    col = column("stage_group")
    assert col.values is not None
    out: set[str] = set()
    for v in values:
        if v not in col.values:
            raise CohortError(f"{where}: {v!r} is not a UICC TNM 8 stage group "
                              f"(allowed: {', '.join(col.values)})")
        out |= {s for s in col.values if s == v or (s.startswith(v) and s[len(v)] not in _ROMAN)}
    return frozenset(out)


def _stage(value: Any, where: str) -> dict[str, frozenset[str]]:
    if isinstance(value, str | list):
        return {"group": _stage_groups(_strings(value, where), where)}
    obj = _keys(value, frozenset({"group", "t", "n", "m"}), where)
    if not obj:
        raise CohortError(f"{where}: give group, t, n or m")
    out = {}
    for key, name in (("t", "clinical_t"), ("n", "clinical_n"), ("m", "clinical_m")):
        if key in obj:
            out[key] = _coded_values(name, _strings(obj[key], f"{where}.{key}"), f"{where}.{key}")[0]
    if "group" in obj:
        out["group"] = _stage_groups(_strings(obj["group"], f"{where}.group"), f"{where}.group")
    return out


def _histology(values: list[str], where: str) -> frozenset[str]:
    icdo = {c.code for c in all_concepts().values() if c.system == "ICDO3" and "/" in c.code}
    out: set[str] = set()
    for v in values:
        if v in icdo:
            out.add(v)
        else:
            try:
                out |= _snomed([v], where, kinds=("morphologic abnormality",))
            except CohortError:
                raise CohortError(f"{where}: {v!r} is neither an ICD-O-3 morphology nor a SNOMED CT "
                                  "morphology of the project's code tables") from None
    return frozenset(out)


def _treatment(values: list[str], where: str) -> frozenset[str]:
    col = column("treatments")
    assert col.values is not None
    codes: list[str] = []
    for v in values:
        if v in col.values:
            codes.extend(c.code for c in col.values[v])
        else:
            codes.append(v)
    return _snomed(codes, where, kinds=("procedure", "regime/therapy"))


def _modalities(values: list[str], where: str) -> frozenset[str]:
    table = modality_table()
    for v in values:
        if v not in table:
            raise CohortError(f"{where}: {v!r} is not a DICOM modality code")
    return frozenset(values)


def _body_parts(values: list[str], where: str) -> tuple[frozenset[str], frozenset[str]]:
    table = body_part_table()
    codes = {c.code for c in table.values()}
    terms: set[str] = set()
    found: set[str] = set()
    for v in values:
        if v in table:
            terms.add(v)
            found.add(table[v].code)  # a series coded but with another term still matches
        elif v in codes:
            found.add(v)
            terms.update(t for t, c in table.items() if c.code == v)
        else:
            raise CohortError(f"{where}: {v!r} is neither a Body Part Examined defined term nor its "
                              "SNOMED CT code (DICOM PS3.16 Table L-1)")
    return frozenset(terms), frozenset(found)


def parse_criteria(query: Any) -> Criteria:
    """Parse and validate a cohort query.

    Parameters
    ----------
    query
        A JSON-like object ``{"clinical": {...}, "imaging": {...}}`` (see the module
        documentation); ``{}`` asks for every patient.

    Returns
    -------
    Criteria

    Raises
    ------
    CohortError
        Naming the field at fault, for anything unknown or malformed.
    """
    top = _keys(query, frozenset({"clinical", "imaging"}), "query")
    clinical = _keys(top.get("clinical", {}), _CLINICAL, "clinical")
    imaging = _keys(top.get("imaging", {}), _IMAGING, "imaging")
    kw: dict[str, Any] = {}
    source: dict[str, Any] = {}

    def strings(part: Mapping[str, Any], key: str, prefix: str) -> list[str] | None:
        if key not in part:
            return None
        values = _strings(part[key], f"{prefix}.{key}")
        source.setdefault(prefix, {})[key] = sorted(set(values))
        return values

    if (v := strings(clinical, "cancer_type", "clinical")) is not None:
        kw["cancer_type"] = _snomed(v, "clinical.cancer_type", kinds=("disorder",))
    if (v := strings(clinical, "histology", "clinical")) is not None:
        kw["histology"] = _histology(v, "clinical.histology")
    if "stage" in clinical:
        for key, codes in _stage(clinical["stage"], "clinical.stage").items():
            kw[f"stage_{key}"] = codes
        source.setdefault("clinical", {})["stage"] = clinical["stage"]
    if "biomarkers" in clinical:
        items = clinical["biomarkers"]
        if not isinstance(items, list) or not items or len(items) > 20:
            raise CohortError("clinical.biomarkers: must be a list of 1 to 20 criteria")
        markers = tuple(_biomarker(item, f"clinical.biomarkers[{i}]") for i, item in enumerate(items))
        kw["biomarkers"] = markers
        source.setdefault("clinical", {})["biomarkers"] = [b.to_json() for b in markers]
    if (v := strings(clinical, "sex", "clinical")) is not None:
        for s in v:
            if s not in _SEXES:
                raise CohortError(f"clinical.sex: {s!r} is not one of {', '.join(_SEXES)}")
        kw["sex"] = frozenset(v)
    if (v := strings(clinical, "treatment", "clinical")) is not None:
        kw["treatment"] = _treatment(v, "clinical.treatment")
    if "age_at_diagnosis" in clinical:
        kw["age_at_diagnosis"] = _range(clinical["age_at_diagnosis"], "clinical.age_at_diagnosis",
                                        highest=150)
        source.setdefault("clinical", {})["age_at_diagnosis"] = kw["age_at_diagnosis"].to_json()
    if "diagnosis_date" in clinical:
        kw["diagnosis_date"] = _date_range(clinical["diagnosis_date"], "clinical.diagnosis_date")
        source.setdefault("clinical", {})["diagnosis_date"] = kw["diagnosis_date"].to_json()

    if (v := strings(imaging, "modality", "imaging")) is not None:
        kw["modality"] = _modalities(v, "imaging.modality")
    if (v := strings(imaging, "body_part", "imaging")) is not None:
        kw["body_part"], kw["body_part_code"] = _body_parts(v, "imaging.body_part")
    for key, highest in (("rows", 65535), ("columns", 65535), ("number_of_frames", 2**31 - 1)):
        if key in imaging:
            kw[key] = _range(imaging[key], f"imaging.{key}", highest=highest)
            source.setdefault("imaging", {})[key] = kw[key].to_json()
    if "study_date" in imaging:
        kw["study_date"] = _date_range(imaging["study_date"], "imaging.study_date")
        source.setdefault("imaging", {})["study_date"] = kw["study_date"].to_json()
    if "age_at_study" in imaging:
        kw["age_at_study"] = _range(imaging["age_at_study"], "imaging.age_at_study", highest=150)
        source.setdefault("imaging", {})["age_at_study"] = kw["age_at_study"].to_json()
    if "annotations" in imaging:
        if not isinstance(imaging["annotations"], bool):
            raise CohortError("imaging.annotations: must be true or false")
        kw["annotations"] = imaging["annotations"]
        source.setdefault("imaging", {})["annotations"] = imaging["annotations"]
    return Criteria(**kw, source=source)
