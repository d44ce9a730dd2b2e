"""Clinical ETL: the clinical spreadsheet (one row per patient) to validated FHIR R4B resources.

Two steps, both pure (no I/O besides reading the workbook, nothing of the node or the
de-identifier):

1. :func:`read_clinical_rows` reads the (de-identified) workbook into typed
   :class:`ClinicalRow` values. Whole-file problems raise
   :class:`~incisive_lab.errors.IncisiveLabError`; problems of a row are collected on the row.
2. :func:`rows_to_fhir` turns every row without problems into Patient, Condition, Observation,
   Procedure, MedicationStatement, ImagingStudy and Consent resources, links the caller's
   :class:`StudySummary` values to the rows, validates every resource with ``fhir.resources``
   (R4B) and returns an :class:`EtlResult`. A row with a problem, or whose resources do not
   validate, is *quarantined*: none of its resources is returned.

:func:`workbook_to_fhir` does both. ``docs/clinical-fhir.md`` maps every column to FHIR.

Examples
--------
>>> from incisive_lab.cdm.fhir import StudySummary, SeriesSummary, workbook_to_fhir
>>> study = StudySummary("PSN-7K2M9QX4ZB1TXY3A", "2.25.1234", accession="A6VY4A3UFH35S7QV",
...                      series=(SeriesSummary("2.25.5678", "CT", 48),))
>>> result = workbook_to_fhir("deid/clinical.xlsx", imaging=[study])   # doctest: +SKIP
>>> result.counts()                                                    # doctest: +SKIP
{'Condition': 1, 'Consent': 1, 'ImagingStudy': 1, 'Observation': 13, 'Patient': 1, ...}
>>> [str(p) for q in result.quarantined for p in q.problems]           # doctest: +SKIP
[]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

from incisive_lab.cdm._fhir_resources import (
    DICOM_UID_SYSTEM,
    ConversionError,
    SeriesSummary,
    StudySummary,
    build_patient_resources,
    resource_id,
)
from incisive_lab.cdm._fhir_rows import (
    ETL_COLUMNS,
    REQUIRED_HEADER,
    ClinicalRow,
    ClinicalWorkbook,
    RowProblem,
    accessions,
    parse_rows,
    read_clinical_rows,
)
from incisive_lab.errors import IncisiveLabError

__all__ = [
    "DEFAULT_PSEUDONYM_SYSTEM",
    "DICOM_UID_SYSTEM",
    "ETL_COLUMNS",
    "PSEUDONYM_PATTERN",
    "REQUIRED_HEADER",
    "ClinicalRow",
    "ClinicalWorkbook",
    "EtlResult",
    "PatientResources",
    "QuarantinedPatient",
    "RowProblem",
    "SeriesSummary",
    "StudyLink",
    "StudySummary",
    "UnlinkedRecord",
    "UnlinkedStudy",
    "canonical_json",
    "parse_rows",
    "read_clinical_rows",
    "resource_id",
    "rows_to_fhir",
    "workbook_to_fhir",
]

#: Identifier system of ``Patient.identifier`` when the caller gives none; a node passes its own
#: (e.g. ``urn:incisive:node:<node-id>:pseudonym``).
DEFAULT_PSEUDONYM_SYSTEM = "urn:incisive:pseudonym"

#: What a de-identified ``patient_id`` looks like (``PSN-`` pseudonymised, ``ANO-`` anonymised);
#: checked under ``require_pseudonyms=True``.
PSEUDONYM_PATTERN = re.compile(r"(PSN|ANO)-[A-Z2-7]{16}")

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*:\S+")


def canonical_json(resource: Mapping[str, Any]) -> str:
    """The canonical JSON text of a resource: sorted keys, no spaces, UTF-8 characters as is.

    Two runs over the same input give the same text, byte for byte.
    """
    return json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class PatientResources:
    """The validated resources of one patient.

    Attributes
    ----------
    pseudonym : str
        ``Patient.id`` (the ``patient_id`` of the row, the DICOM PatientID).
    row : int
        Sheet row of the patient.
    resources : tuple of dict
        JSON-able resources (as ``fhir.resources`` dumps them after validation), Patient first,
        then Condition, ImagingStudy, Observation, Procedure/MedicationStatement, Consent.
        Treat them as read-only.
    digest : str
        SHA-256 (hex) of the canonical JSON of the resources, one per line: changes exactly
        when a resource changes.
    """

    pseudonym: str
    row: int
    resources: tuple[dict[str, Any], ...]
    digest: str


@dataclass(frozen=True)
class QuarantinedPatient:
    """A row that was not converted, with every reason.

    Attributes
    ----------
    pseudonym : str or None
        The row's ``patient_id``; ``None`` when empty or when it is not a pseudonym under
        ``require_pseudonyms`` (a raw identifier is never repeated in a report).
    row : int
        Sheet row.
    problems : tuple of RowProblem
        Each with row, column and reason.
    """

    pseudonym: str | None
    row: int
    problems: tuple[RowProblem, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {"pseudonym": self.pseudonym, "row": self.row,
                "problems": [p.to_dict() for p in self.problems]}


@dataclass(frozen=True)
class StudyLink:
    """A study attached to a patient: ``by`` is ``"accession"`` or ``"patient"`` (the
    accession number was not listed on the patient's row, the DICOM PatientID matched)."""

    study_uid: str
    pseudonym: str
    by: Literal["accession", "patient"]


@dataclass(frozen=True)
class UnlinkedStudy:
    """An imaging study that got no ImagingStudy resource, and why."""

    study_uid: str
    patient_pseudonym: str
    accession: str | None
    reason: str


@dataclass(frozen=True)
class UnlinkedRecord:
    """A converted patient whose row names imaging that is missing.

    Attributes
    ----------
    pseudonym : str
        The patient.
    row : int
        Sheet row.
    missing_accessions : tuple of str
        Accession numbers listed on the row that no study carries.
    linked_studies : int
        How many studies the patient has; 0 means a clinical record without any imaging.
    """

    pseudonym: str
    row: int
    missing_accessions: tuple[str, ...]
    linked_studies: int

    @property
    def reason(self) -> str:
        """The problem, for people."""
        what = "no imaging study" if self.linked_studies == 0 else f"{self.linked_studies} imaging studies"
        if self.missing_accessions:
            what += f"; no study for accession number{'s' if len(self.missing_accessions) > 1 else ''} "
            what += ", ".join(self.missing_accessions)
        return what


@dataclass(frozen=True)
class EtlResult:
    """What :func:`rows_to_fhir` made of a workbook and a set of studies.

    Attributes
    ----------
    source : str
        The workbook's name.
    patients : Mapping[str, PatientResources]
        Converted patients by pseudonym, in pseudonym order.
    quarantined : tuple of QuarantinedPatient
        Rows not converted, in row order.
    links : tuple of StudyLink
        Every study attached to a converted patient.
    unlinked_studies : tuple of UnlinkedStudy
        Studies without a (converted) clinical record, or whose summary is unusable.
    unlinked_records : tuple of UnlinkedRecord
        Converted patients with no study or with listed accession numbers without a study.
    warnings : tuple of str
        Workbook-level warnings (extra sheets, columns not read).
    """

    source: str
    patients: Mapping[str, PatientResources]
    quarantined: tuple[QuarantinedPatient, ...] = ()
    links: tuple[StudyLink, ...] = ()
    unlinked_studies: tuple[UnlinkedStudy, ...] = ()
    unlinked_records: tuple[UnlinkedRecord, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def resources(self) -> Iterator[dict[str, Any]]:
        """Every resource of every converted patient, patient by patient."""
        for p in self.patients.values():
            yield from p.resources

    def counts(self) -> dict[str, int]:
        """Number of resources by resource type (sorted by type)."""
        counter = Counter(r["resourceType"] for r in self.resources())
        return dict(sorted(counter.items()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary for the curation report (no resources, no raw identifiers)."""
        return {
            "source": self.source,
            "patients": len(self.patients),
            "resources": self.counts(),
            "quarantined": [q.to_dict() for q in self.quarantined],
            "links": {"accession": sum(1 for x in self.links if x.by == "accession"),
                      "patient": sum(1 for x in self.links if x.by == "patient")},
            "unlinked_studies": [{"study_uid": u.study_uid, "patient": u.patient_pseudonym,
                                  "accession": u.accession, "reason": u.reason}
                                 for u in self.unlinked_studies],
            "unlinked_records": [{"patient": u.pseudonym, "row": u.row,
                                  "missing_accessions": list(u.missing_accessions),
                                  "linked_studies": u.linked_studies, "reason": u.reason}
                                 for u in self.unlinked_records],
            "warnings": list(self.warnings),
        }


def _validate(resource: dict[str, Any]) -> dict[str, Any]:
    from fhir.resources.R4B import get_fhir_model_class  # heavy import kept local

    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return dumped


def _first_error(exc: Exception) -> str:
    text = str(exc).splitlines()
    return "; ".join(line.strip() for line in text[:3] if line.strip() and "errors.pydantic.dev" not in line)


_ORDER = {"Patient": 0, "Condition": 1, "ImagingStudy": 2, "Observation": 3, "Procedure": 4,
          "MedicationStatement": 4, "Consent": 5}


def _convert(row: ClinicalRow, pseudonym: str, identifier_system: str,
             studies: Sequence[StudySummary]) -> PatientResources:
    built = build_patient_resources(row, pseudonym, identifier_system=identifier_system, studies=studies)
    out = []
    for column, resource in built:
        try:
            out.append(_validate(resource))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            where = f"{resource['resourceType']}/{resource.get('id')}"
            raise ConversionError(column, f"{where} is not valid FHIR R4B: {_first_error(exc)}") from None
    out.sort(key=lambda r: _ORDER[r["resourceType"]])  # stable: keeps the builder's order within a type
    digest = hashlib.sha256("\n".join(canonical_json(r) for r in out).encode()).hexdigest()
    return PatientResources(pseudonym, row.row, tuple(out), digest)


def _rows_of(rows: ClinicalWorkbook | Iterable[ClinicalRow]) -> tuple[tuple[ClinicalRow, ...], str, tuple[str, ...]]:
    if isinstance(rows, ClinicalWorkbook):
        return rows.rows, rows.source, rows.warnings
    seq = tuple(rows)
    return seq, (seq[0].source if seq else "<rows>"), ()


def rows_to_fhir(
    rows: ClinicalWorkbook | Iterable[ClinicalRow],
    *,
    imaging: Iterable[StudySummary] = (),
    identifier_system: str = DEFAULT_PSEUDONYM_SYSTEM,
    require_pseudonyms: bool = False,
) -> EtlResult:
    """Convert checked rows to validated FHIR R4B resources and link the imaging studies.

    Parameters
    ----------
    rows : ClinicalWorkbook or iterable of ClinicalRow
        From :func:`read_clinical_rows` or :func:`parse_rows`.
    imaging : iterable of StudySummary
        The de-identified studies of the node (or of this ingest). A study is attached to the
        row whose ``accession_numbers`` lists its accession number, else to the row whose
        ``patient_id`` equals its ``patient_pseudonym``; the two must agree.
    identifier_system : str
        ``Patient.identifier.system`` of the pseudonyms (a URI; the node's own).
    require_pseudonyms : bool
        Quarantine rows whose ``patient_id`` does not look like a pseudonym
        (:data:`PSEUDONYM_PATTERN`): a guard against converting a raw workbook. Ingest passes
        ``True``.

    Returns
    -------
    EtlResult
        Converted patients, quarantined rows with reasons, study links and what is unlinked.

    Raises
    ------
    IncisiveLabError
        If `identifier_system` is not a URI.
    """
    if not _URI.fullmatch(identifier_system):
        raise IncisiveLabError(f"identifier_system {identifier_system!r} is not a URI")
    all_rows, source, warnings = _rows_of(rows)

    quarantined: dict[int, list[RowProblem]] = {}
    hidden: set[int] = set()  # rows whose patient_id must not appear in the report
    for row in all_rows:
        problems = list(row.problems)
        pid = row.patient_id
        if pid is not None and require_pseudonyms and not PSEUDONYM_PATTERN.fullmatch(pid):
            problems.append(RowProblem(row.source, row.row, "patient_id",
                                       "not a pseudonym (PSN-/ANO- and 16 characters): "
                                       "is the workbook de-identified?"))
            hidden.add(row.row)
        elif pid is not None and not _FHIR_ID.fullmatch(pid):
            problems.append(RowProblem(row.source, row.row, "patient_id",
                                       "cannot be a FHIR id (1-64 of A-Z a-z 0-9 - .)"))
        if problems:
            quarantined[row.row] = problems

    by_pid = {r.patient_id: r for r in all_rows if r.patient_id is not None}
    owner = {acc: r.patient_id for r in all_rows if r.patient_id is not None for acc in accessions(r)}
    linked: dict[str, list[StudySummary]] = {}
    links: list[StudyLink] = []
    unlinked: list[UnlinkedStudy] = []
    seen: set[str] = set()
    for study in sorted(imaging, key=lambda s: (s.patient_pseudonym, s.study_uid)):
        def skip(reason: str, study: StudySummary = study) -> None:
            unlinked.append(UnlinkedStudy(study.study_uid, study.patient_pseudonym, study.accession, reason))

        bad = study.problems()
        if bad:
            skip("unusable study summary: " + "; ".join(bad))
            continue
        if study.study_uid in seen:
            skip("the same study UID was given twice")
            continue
        seen.add(study.study_uid)
        listed_for = owner.get(study.accession) if study.accession else None
        pid = study.patient_pseudonym
        if listed_for is not None and listed_for != pid:
            skip(f"accession number {study.accession} is listed for patient {listed_for} in the "
                 f"clinical record, but the images belong to {pid}")
            continue
        record = by_pid.get(pid)
        if record is None:
            skip(f"no clinical record for patient {pid}")
            continue
        if record.row in quarantined:
            skip(f"the clinical record of patient {pid} (row {record.row}) is quarantined")
            continue
        linked.setdefault(pid, []).append(study)
        links.append(StudyLink(study.study_uid, pid, "accession" if listed_for is not None else "patient"))

    patients: dict[str, PatientResources] = {}
    for row in all_rows:
        if row.row in quarantined or row.patient_id is None:
            continue
        studies = sorted(linked.get(row.patient_id, ()), key=lambda s: s.study_uid)
        try:
            patients[row.patient_id] = _convert(row, row.patient_id, identifier_system, studies)
        except ConversionError as exc:
            quarantined[row.row] = [RowProblem(row.source, row.row, exc.column, exc.reason)]
            for study in studies:
                unlinked.append(UnlinkedStudy(study.study_uid, study.patient_pseudonym, study.accession,
                                              f"the clinical record of patient {row.patient_id} "
                                              f"(row {row.row}) is quarantined"))
            links = [x for x in links if x.pseudonym != row.patient_id]

    records = []
    for pid, res in sorted(patients.items()):
        carried = {s.accession for s in linked.get(pid, ()) if s.accession}
        missing = tuple(a for a in accessions(by_pid[pid]) if a not in carried)
        count = len(linked.get(pid, ()))
        if missing or count == 0:
            records.append(UnlinkedRecord(pid, res.row, missing, count))

    rows_by_number = {r.row: r for r in all_rows}
    return EtlResult(
        source=source,
        patients=MappingProxyType(dict(sorted(patients.items()))),
        quarantined=tuple(
            QuarantinedPatient(None if n in hidden else rows_by_number[n].patient_id, n, tuple(p))
            for n, p in sorted(quarantined.items())
        ),
        links=tuple(sorted(links, key=lambda x: (x.pseudonym, x.study_uid))),
        unlinked_studies=tuple(sorted(unlinked, key=lambda u: (u.patient_pseudonym, u.study_uid))),
        unlinked_records=tuple(records),
        warnings=warnings,
    )


def workbook_to_fhir(
    path: str | Path | IO[bytes],
    *,
    imaging: Iterable[StudySummary] = (),
    identifier_system: str = DEFAULT_PSEUDONYM_SYSTEM,
    require_pseudonyms: bool = False,
    extra_sheets: Literal["warn", "error"] = "warn",
) -> EtlResult:
    """Read a clinical workbook and convert it: :func:`read_clinical_rows` then :func:`rows_to_fhir`.

    Raises
    ------
    IncisiveLabError
        For whole-file problems (see :func:`read_clinical_rows`).
    """
    workbook = read_clinical_rows(path, extra_sheets=extra_sheets)
    return rows_to_fhir(workbook, imaging=imaging, identifier_system=identifier_system,
                        require_pseudonyms=require_pseudonyms)
