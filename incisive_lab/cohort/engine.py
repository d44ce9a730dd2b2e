"""Evaluate cohort criteria against one node: matching patients per dataset.

A patient of a dataset matches when

* it is not in the caller's set of withdrawn pseudonyms,
* its FHIR resources satisfy every clinical criterion, and
* at least one of its studies satisfies every imaging criterion (a patient of the index
  always has a study, so with no imaging criterion every patient passes this step).

Everything is counted **per patient** (a patient with three matching studies is one).

How each criterion is read from the node
    ``cancer_type``, ``histology``, ``diagnosis_date`` and ``age_at_diagnosis`` must hold for
    the **same** ``Condition`` (its ``code``, its mCODE histology extension, its
    ``onsetDateTime``). Biomarkers and stage are ``Observation`` resources found by their
    LOINC code; their value is read from ``valueCodeableConcept`` (a code of the tables or a
    local text value), ``valueQuantity.value``, ``valueInteger`` or ``valueString``.
    Treatments are ``Procedure.code`` and ``MedicationStatement.medicationCodeableConcept``.
    Sex is ``Patient.gender``, else the DICOM Patient's Sex of the index.

Age at diagnosis
    De-identification removes birth dates. The age is ``year(diagnosis) - birth year`` when a
    birth year survives (index or ``Patient.birthDate``), otherwise it is estimated from the
    Patient's Age (DICOM AS) of the patient's study closest to the diagnosis plus the whole
    years between that study and the diagnosis. Either way it may be one year off; a
    patient whose age cannot be derived does not match (fail closed).

Dates are those the node holds: after de-identification they may be shifted per patient.

Examples
--------
>>> with NodeStore.open("node") as store:                                   # doctest: +SKIP
...     result = evaluate(store, parse_criteria({"imaging": {"modality": "CT"}}))
>>> {d: len(p) for d, p in result.patients.items()}                         # doctest: +SKIP
{'site-a': 4}
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, exists, func, select

from incisive_lab.cdm.codes import system_uris
from incisive_lab.cohort.criteria import ANNOTATION_MODALITIES, Biomarker, CohortError, Criteria
from incisive_lab.node._db import chunks
from incisive_lab.node.fhir_store import fhir_table, fhir_tokens_table
from incisive_lab.node.index import instances_table, patients_table, series_table, studies_table
from incisive_lab.node.store import NodeStore

__all__ = ["CohortMatch", "StudyMembers", "evaluate"]

_MCODE_HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
_STAGE_GROUP_LOINC = "21908-9"
_TNM_LOINC = {"t": "21905-5", "n": "21906-3", "m": "21907-1"}
_DICOM_SEX = {"F": "female", "M": "male", "O": "other"}
_AGE = re.compile(r"(\d{3})([DWMY])")
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class StudyMembers:
    """A matching study and its matching series (pseudonymous UIDs only)."""

    study_uid: str
    series_uids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"study_uid": ..., "series_uids": [...]}``."""
        return {"study_uid": self.study_uid, "series_uids": list(self.series_uids)}


@dataclass(frozen=True)
class CohortMatch:
    """What matched, per dataset. Kept at the node: it holds pseudonyms.

    Attributes
    ----------
    patients : Mapping[str, frozenset[str]]
        Dataset -> pseudonyms of the matching patients (every dataset asked, maybe empty).
    members : Mapping[str, tuple[StudyMembers, ...]]
        Dataset -> matching studies and series, only for the datasets members were asked for.
    """

    patients: Mapping[str, frozenset[str]]
    members: Mapping[str, tuple[StudyMembers, ...]] = field(default_factory=dict)


# --- clinical ---------------------------------------------------------------------------------

def _codings(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping) and isinstance(value.get("coding"), list):
        return [c for c in value["coding"] if isinstance(c, Mapping)]
    return []


def _codes_of(value: Any, system: str | None = None) -> set[str]:
    return {c["code"] for c in _codings(value) if isinstance(c.get("code"), str)
            and (system is None or c.get("system") == system)}


def _day(value: Any) -> dt.date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _resources(conn: Connection, rtype: str, dataset: str,
               codes: Collection[str] | None = None, system: str | None = None
               ) -> list[tuple[str, dict[str, Any]]]:
    """``(pseudonym, resource)`` of type `rtype` in `dataset`, optionally with a code token."""
    q = select(fhir_table.c.patient_ref, fhir_table.c.content).where(
        fhir_table.c.resource_type == rtype, fhir_table.c.dataset == dataset,
        fhir_table.c.patient_ref.is_not(None))
    out: list[tuple[str, dict[str, Any]]] = []
    batches: list[Any] = [None] if codes is None else chunks(sorted(codes), _IN_CHUNK)
    for batch in batches:
        qq = q
        if batch is not None:
            tok = fhir_tokens_table.c
            cond = [tok.resource_type == fhir_table.c.resource_type, tok.id == fhir_table.c.id,
                    tok.param == "code", tok.code.in_(list(batch))]
            if system is not None:
                cond.append(tok.system == system)
            qq = q.where(exists(select(tok.code).where(and_(*cond))))
        for ref, content in conn.execute(qq):
            if isinstance(ref, str) and ref.startswith("Patient/"):
                out.append((ref.removeprefix("Patient/"), json.loads(content)))
    return out


def _age_years(value: str | None) -> float | None:
    m = _AGE.fullmatch(value or "")
    if m is None:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"Y": n, "M": n / 12, "W": n / 52.1775, "D": n / 365.25}[unit]


def _whole_years(start: dt.date, end: dt.date) -> int:
    years = end.year - start.year
    return years - 1 if (end.month, end.day) < (start.month, start.day) else years


class _Clinical:
    """Applies the clinical criteria of one dataset (each step narrows `self.left`)."""

    def __init__(self, conn: Connection, dataset: str, criteria: Criteria,
                 patients: Mapping[str, Mapping[str, Any]]) -> None:
        self.conn, self.dataset, self.c = conn, dataset, criteria
        self.patients = patients
        self.left: set[str] = set(patients)
        self.sct = system_uris()["SCT"]
        self.loinc = system_uris()["LOINC"]

    def run(self) -> set[str]:
        c = self.c
        if c.cancer_type or c.histology or c.diagnosis_date or c.age_at_diagnosis:
            self.conditions()
        if c.sex:
            self.sex()
        if c.stage_group:
            self.observation(_STAGE_GROUP_LOINC, lambda o: bool(_codes_of(o.get("valueCodeableConcept"))
                                                                & c.stage_group))
        for key, codes in (("t", c.stage_t), ("n", c.stage_n), ("m", c.stage_m)):
            if codes:
                self.observation(_TNM_LOINC[key], lambda o, codes=codes:
                                 bool(_codes_of(o.get("valueCodeableConcept"), self.sct) & codes))
        for marker in c.biomarkers:
            self.observation(marker.loinc, lambda o, m=marker: _marker_ok(m, o))
        if c.treatment:
            found = {pid for rtype in ("Procedure", "MedicationStatement")
                     for pid, _ in _resources(self.conn, rtype, self.dataset, c.treatment, self.sct)}
            self.left &= found
        return self.left

    def conditions(self) -> None:
        c = self.c
        rows = _resources(self.conn, "Condition", self.dataset, c.cancer_type or None,
                          self.sct if c.cancer_type else None)
        ok: set[str] = set()
        for pid, res in rows:
            if pid not in self.left or pid in ok:
                continue
            if c.cancer_type and not (_codes_of(res.get("code"), self.sct) & c.cancer_type):
                continue
            if c.histology and not self.histology_ok(res):
                continue
            onset = _day(res.get("onsetDateTime"))
            if c.diagnosis_date is not None and onset not in c.diagnosis_date:
                continue
            if c.age_at_diagnosis is not None:
                age = self.age_at(pid, onset) if onset is not None else None
                if age not in c.age_at_diagnosis:
                    continue
            ok.add(pid)
        self.left &= ok

    def histology_ok(self, condition: Mapping[str, Any]) -> bool:
        for ext in condition.get("extension") or ():
            if isinstance(ext, Mapping) and ext.get("url") == _MCODE_HISTOLOGY \
                    and _codes_of(ext.get("valueCodeableConcept")) & self.c.histology:
                return True
        return False

    def age_at(self, pid: str, when: dt.date) -> int | None:
        birth_year = self.patients[pid].get("birth_year")
        if birth_year is None:
            birth_year = self.fhir_birth_year(pid)
        if isinstance(birth_year, int):
            return when.year - birth_year
        best: tuple[int, int] | None = None  # (distance in days, estimated age)
        for date_text, age_text in self.patients[pid].get("studies", ()):
            study_day = _study_day(date_text)
            years = _age_years(age_text)
            if study_day is None or years is None:
                continue
            delta = _whole_years(study_day, when) if when >= study_day else -_whole_years(when, study_day)
            estimate = int(years) + delta
            distance = abs((when - study_day).days)
            if best is None or distance < best[0]:
                best = (distance, estimate)
        return None if best is None else best[1]

    def fhir_birth_year(self, pid: str) -> int | None:
        row = self.conn.execute(select(fhir_table.c.content).where(
            fhir_table.c.resource_type == "Patient", fhir_table.c.id == pid)).first()
        if row is None:
            return None
        birth = json.loads(row[0]).get("birthDate")
        if isinstance(birth, str) and re.fullmatch(r"\d{4}(-.*)?", birth):
            return int(birth[:4])
        return None

    def sex(self) -> None:
        fhir = {pid: res.get("gender") for pid, res in _resources(self.conn, "Patient", self.dataset)}
        ok = set()
        for pid in self.left:
            gender = fhir.get(pid) if pid in fhir else _DICOM_SEX.get(self.patients[pid].get("sex") or "")
            if gender in self.c.sex:
                ok.add(pid)
        self.left &= ok

    def observation(self, loinc: str, test: Any) -> None:
        ok = {pid for pid, res in _resources(self.conn, "Observation", self.dataset, [loinc], self.loinc)
              if pid in self.left and res.get("status") not in ("cancelled", "entered-in-error")
              and test(res)}
        self.left &= ok


def _marker_ok(marker: Biomarker, obs: Mapping[str, Any]) -> bool:
    if marker.range is not None:
        value: Any = None
        if isinstance(obs.get("valueQuantity"), Mapping):
            value = obs["valueQuantity"].get("value")
        elif "valueInteger" in obs:
            value = obs["valueInteger"]
        return value in marker.range
    concept = obs.get("valueCodeableConcept")
    if concept is not None:
        if _codes_of(concept) & marker.codes:
            return True
        return isinstance(concept, Mapping) and concept.get("text") in marker.texts
    return obs.get("valueString") in marker.texts


def _study_day(text: str | None) -> dt.date | None:
    if not text or not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


# --- imaging ----------------------------------------------------------------------------------

def _series_condition(c: Criteria) -> Any:
    s = series_table.c
    cond: list[Any] = [s.study_uid == studies_table.c.study_uid]
    if c.modality:
        cond.append(s.modality.in_(sorted(c.modality)))
    if c.body_part or c.body_part_code:
        cond.append(s.body_part.in_(sorted(c.body_part)) | s.body_part_code.in_(sorted(c.body_part_code)))
    if c.instance_level:
        i = instances_table.c
        inst: list[Any] = [i.series_uid == s.series_uid]
        frames = func.coalesce(i.number_of_frames, 1)  # an image without Number of Frames has one
        ranges: tuple[tuple[Any, Any], ...] = ((i.rows, c.rows), (i.columns, c.columns), (frames, c.number_of_frames))
        for col, rng in ranges:
            if rng is None:
                continue
            if rng.min is not None:
                inst.append(col >= rng.min)
            if rng.max is not None:
                inst.append(col <= rng.max)
        cond.append(exists(select(i.sop_uid).where(and_(*inst))))
    return and_(*cond)


def _matching_studies(conn: Connection, dataset: str, c: Criteria) -> dict[str, list[str]]:
    """Pseudonym -> UIDs of its studies satisfying every imaging criterion."""
    st = studies_table.c
    q = select(st.patient_id, st.study_uid, st.study_date, st.patient_age).where(st.dataset == dataset)
    if c.study_date is not None:
        if c.study_date.start is not None:
            q = q.where(st.study_date >= c.study_date.start.strftime("%Y%m%d"))
        if c.study_date.end is not None:
            q = q.where(st.study_date <= c.study_date.end.strftime("%Y%m%d"))
    if c.annotations is not None:
        s = series_table.c
        has = exists(select(s.series_uid).where(s.study_uid == st.study_uid,
                                                s.modality.in_(sorted(ANNOTATION_MODALITIES))))
        q = q.where(has if c.annotations else ~has)
    if c.series_level:
        q = q.where(exists(select(series_table.c.series_uid).where(_series_condition(c))))
    out: dict[str, list[str]] = {}
    for pid, study_uid, study_date, age in conn.execute(q):
        if c.study_date is not None and _study_day(study_date) is None:
            continue  # a malformed date cannot be shown to be in range
        if c.age_at_study is not None and _age_years(age) not in c.age_at_study:
            continue
        out.setdefault(pid, []).append(study_uid)
    return out


def _members(conn: Connection, c: Criteria, studies: Iterable[str]) -> tuple[StudyMembers, ...]:
    uids = sorted(set(studies))
    series: dict[str, list[str]] = {u: [] for u in uids}
    s = series_table.c
    for batch in chunks(uids, _IN_CHUNK):
        q = select(s.study_uid, s.series_uid).where(s.study_uid.in_(list(batch)))
        if c.series_level:
            q = select(s.study_uid, s.series_uid).select_from(series_table.join(
                studies_table, studies_table.c.study_uid == s.study_uid)).where(
                s.study_uid.in_(list(batch)), _series_condition(c))
        for study_uid, series_uid in conn.execute(q):
            series[study_uid].append(series_uid)
    return tuple(StudyMembers(u, tuple(sorted(series[u]))) for u in uids)


# --- entry point ------------------------------------------------------------------------------

def evaluate(store: NodeStore, criteria: Criteria, *, datasets: Collection[str] | None = None,
             withdrawn: Collection[str] = frozenset(),
             members_for: Collection[str] = frozenset()) -> CohortMatch:
    """The matching patients of each dataset (and, where asked, their studies and series).

    Parameters
    ----------
    store
        The node.
    criteria
        Parsed criteria (:func:`incisive_lab.cohort.criteria.parse_criteria`).
    datasets
        Datasets to query; ``None`` for every dataset of the node. An unknown name is an error.
    withdrawn
        Pseudonyms of patients who withdrew consent: never matched, counted or listed.
    members_for
        Datasets for which to compute member lists (study and series UIDs); nothing is
        computed for the others.

    Raises
    ------
    CohortError
        When a dataset is not held by the node.
    """
    held = [d.name for d in store.index.datasets()]
    names = held if datasets is None else list(dict.fromkeys(datasets))
    for name in names:
        if name not in held:
            raise CohortError(f"datasets: {name!r} is not a dataset of this node")
    out_patients: dict[str, frozenset[str]] = {}
    out_members: dict[str, tuple[StudyMembers, ...]] = {}
    gone = frozenset(withdrawn)
    with store.engine.connect() as conn:
        for name in names:
            p = patients_table.c
            rows: dict[str, dict[str, Any]] = {
                pid: {"sex": sex, "birth_year": by, "studies": []}
                for pid, sex, by in conn.execute(select(p.patient_id, p.patient_sex, p.birth_year)
                                                 .where(p.dataset == name))
                if pid not in gone}
            st = studies_table.c
            for pid, date, age in conn.execute(select(st.patient_id, st.study_date, st.patient_age)
                                               .where(st.dataset == name)):
                if pid in rows:
                    rows[pid]["studies"].append((date, age))
            left = _Clinical(conn, name, criteria, rows).run()
            studies = _matching_studies(conn, name, criteria)
            matched = frozenset(pid for pid in left if studies.get(pid))
            out_patients[name] = matched
            if name in members_for:
                out_members[name] = _members(conn, criteria,
                                             (u for pid in matched for u in studies[pid]))
    return CohortMatch(out_patients, out_members)
