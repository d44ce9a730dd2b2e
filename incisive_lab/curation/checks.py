"""Run the curation checks on a provider's raw input.

:func:`run_curation` reads every file of a DICOM folder once (in ``jobs`` processes), runs the
file-level checks there (:mod:`incisive_lab.curation._instance`), then in the parent the series,
study and patient checks and the links with the clinical spreadsheet, and decides what is
quarantined. See ``docs/curation.md`` for every check, its severity and what it holds back.

Examples
--------
>>> from incisive_lab.curation import run_curation                       # doctest: +SKIP
>>> result = run_curation("site/dicom", "site/clinical.xlsx", jobs=2,
...                       label=vault.pseudonym)                         # doctest: +SKIP
>>> [p for p in paths if not result.is_quarantined(p)]                   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import multiprocessing
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from incisive_lab.cdm.template import CANCER_TYPES, COLUMNS
from incisive_lab.curation._instance import InstanceInfo, inspect_file
from incisive_lab.curation.bodypart import CodedConcept, body_part_code, modality_code
from incisive_lab.curation.findings import CHECKS, Finding, QuarantinedItem
from incisive_lab.curation.result import CurationResult, SeriesSummary
from incisive_lab.deid import _standard

__all__ = ["ClinicalInput", "DecodePolicy", "read_clinical", "run_curation"]

ClinicalInput = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | None
DecodePolicy = Literal["sample", "all"]
Labeler = Callable[[str], str]

_EARLIEST = _dt.date(1900, 1, 1)
_CLINICAL_DATES = ("birth_date", "diagnosis_date", "treatment_start_date", "last_followup_date",
                   "consent_date")
_LINK_COLUMNS = ("patient_id", "accession_numbers")


# --- file discovery and the parallel pass ------------------------------------------------------


def _discover(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


_WORK: dict[str, Any] = {}


def _work_chunk(bounds: tuple[int, int]) -> list[InstanceInfo]:
    root: Path = _WORK["root"]
    files: list[Path] = _WORK["files"]
    sampled: set[tuple[str, str]] = _WORK["sampled"]
    return [inspect_file(root, p, decode_all=_WORK["decode_all"], sampled=sampled,
                         sampled_series=_WORK["sampled_series"])
            for p in files[bounds[0]:bounds[1]]]


def _inspect_all(root: Path, files: list[Path], jobs: int, decode_all: bool,
                 progress: bool = False) -> list[InstanceInfo]:
    from tqdm import tqdm

    _WORK.update(root=root, files=files, decode_all=decode_all, sampled=set(), sampled_series=set())
    bar = tqdm(total=len(files), unit="file", desc="curation", disable=not progress, file=sys.stderr)
    out: list[InstanceInfo] = []
    try:
        if jobs <= 1 or len(files) < 64:
            for i in range(0, len(files), 64):
                part = _work_chunk((i, min(i + 64, len(files))))
                out.extend(part)
                bar.update(len(part))
            return out
        chunk = max(16, min(256, math.ceil(len(files) / (jobs * 8))))
        bounds = [(i, min(i + chunk, len(files))) for i in range(0, len(files), chunk)]
        ctx = multiprocessing.get_context("fork")
        from incisive_lab.deid.batch import die_with_parent

        with ctx.Pool(jobs, initializer=die_with_parent) as pool:
            for part in pool.imap(_work_chunk, bounds):
                out.extend(part)
                bar.update(len(part))
            return out
    finally:
        bar.close()
        _WORK.clear()


# --- clinical input ----------------------------------------------------------------------------


def read_clinical(source: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Read the clinical workbook into ``(spreadsheet row number, row)`` pairs.

    Dates come back as ``datetime.date`` and empty cells as ``None``; empty rows are skipped
    but keep their numbers so that findings name the row the steward sees (see
    :func:`incisive_lab.cdm.spreadsheet.read_numbered_rows`).

    Raises
    ------
    ValueError
        If the workbook has no ``patients`` sheet or no header row.
    """
    from incisive_lab.cdm.spreadsheet import read_numbered_rows

    return read_numbered_rows(Path(source))


def _clinical_rows(clinical: ClinicalInput, findings: list[Finding]) -> list[tuple[int, dict[str, Any]]] | None:
    if clinical is None:
        return None
    if isinstance(clinical, str | os.PathLike):
        try:
            return read_clinical(clinical)
        except Exception as exc:
            findings.append(Finding.of("clinical-unreadable", f"{Path(clinical).name}: {exc}",
                                       file=Path(clinical).name))
            return []
    return [(n, dict(r)) for n, r in enumerate(clinical, start=2)]


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


# --- dates -------------------------------------------------------------------------------------


def _da(value: str) -> _dt.date | None:
    """A DICOM DA value as a date; raises ValueError when malformed."""
    v = value.strip()
    if not v:
        return None
    if len(v) == 10 and v[4] == "." and v[7] == ".":  # ACR-NEMA form, still met
        v = v.replace(".", "")
    if len(v) != 8 or not v.isdigit():
        raise ValueError(v)
    return _dt.date(int(v[:4]), int(v[4:6]), int(v[6:]))


def _as_date(value: object) -> _dt.date | None:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    return None


# --- the run -----------------------------------------------------------------------------------


class _Run:
    """State of one curation run (the parent's side)."""

    def __init__(self, infos: list[InstanceInfo], label: Labeler, today: _dt.date) -> None:
        self.infos = infos
        self.label = label
        self.today = today
        self.findings: list[Finding] = []
        # quarantine requests: (kind, key) -> reasons; patient keys are raw ids here
        self.q_series: dict[str, list[str]] = defaultdict(list)
        self.q_patient: dict[str, list[str]] = defaultdict(list)
        self.q_file: dict[str, list[str]] = defaultdict(list)
        self.q_rows: dict[str, set[int]] = defaultdict(set)
        self.readable = [i for i in infos if i.readable]
        self.by_series: dict[str, list[InstanceInfo]] = defaultdict(list)
        for i in self.readable:
            self.by_series[i.series_uid].append(i)
        self.by_study: dict[str, list[InstanceInfo]] = defaultdict(list)
        for i in self.readable:
            self.by_study[i.study_uid].append(i)
        self._labels: dict[str, str] = {}

    def lab(self, patient_id: str) -> str:
        if patient_id not in self._labels:
            self._labels[patient_id] = self.label(patient_id)
        return self._labels[patient_id]

    def add(self, check: str, message: str, *, patient_id: str | None = None,
            series: str | None = None, study: str | None = None, file: str | None = None,
            attribute: str | None = None, row: int | None = None,
            quarantine_key: str | None = None) -> None:
        """Record a finding and, for errors, the quarantine it causes."""
        c = CHECKS[check]
        patient = self.lab(patient_id) if patient_id is not None else None
        self.findings.append(Finding.of(check, message, file=file, attribute=attribute, series=series,
                                        study=study, patient=patient, row=row))
        reason = f"{check}: {message}"
        if c.quarantines == "series":
            if series is not None:
                self.q_series[series].append(reason)
            elif study is not None:
                for uid in sorted({i.series_uid for i in self.by_study.get(study, ())}):
                    self.q_series[uid].append(reason)
        elif c.quarantines == "patient":
            key = quarantine_key if quarantine_key is not None else patient_id
            if key is not None:
                self.q_patient[key].append(reason)
                if row is not None:
                    self.q_rows[key].add(row)
        elif c.quarantines == "file" and file is not None:
            self.q_file[file].append(reason)

    # --- file-level findings, grouped per series and attribute ---------------------------

    def file_findings(self) -> None:
        grouped: dict[tuple[str, str, str | None], list[InstanceInfo]] = defaultdict(list)
        messages: dict[tuple[str, str, str | None], str] = {}
        for info in self.infos:
            for raw in info.findings:
                if raw.check == "file-unreadable" or raw.check.startswith("pixel-"):
                    self.add(raw.check, f"{info.path}: {raw.message}", file=info.path,
                             attribute=raw.attribute, series=info.series_uid or None,
                             study=info.study_uid or None,
                             patient_id=info.patient_id if info.readable else None)
                    continue
                key = (raw.check, info.series_uid, raw.attribute)
                grouped[key].append(info)
                messages.setdefault(key, raw.message)
        for (check, series, attribute), members in grouped.items():
            first = min(members, key=lambda i: i.path)
            more = f" (and {len(members) - 1} more files of the series)" if len(members) > 1 else ""
            self.add(check, f"{first.path}: {messages[(check, series, attribute)]}{more}",
                     file=first.path, attribute=attribute, series=series, study=first.study_uid,
                     patient_id=first.patient_id)

    # --- duplicates --------------------------------------------------------------------------

    def duplicates(self) -> None:
        by_uid: dict[str, list[InstanceInfo]] = defaultdict(list)
        for i in self.readable:
            by_uid[i.sop_uid].append(i)
        for uid, members in by_uid.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda i: i.path)
            paths = ", ".join(i.path for i in members)
            if len({i.digest for i in members}) == 1:
                self.add("duplicate-sop-identical", f"{paths}: same SOPInstanceUID, identical bytes "
                         "(one copy is kept)", file=members[1].path, attribute="SOPInstanceUID",
                         series=members[0].series_uid, study=members[0].study_uid,
                         patient_id=members[0].patient_id)
                continue
            for series in sorted({i.series_uid for i in members}):
                first = next(i for i in members if i.series_uid == series)
                self.add("duplicate-sop-conflict", f"{paths}: same SOPInstanceUID {uid}, different "
                         "content", file=first.path, attribute="SOPInstanceUID", series=series,
                         study=first.study_uid, patient_id=first.patient_id)

    # --- geometry ----------------------------------------------------------------------------

    def geometry(self) -> None:
        for uid, members in self.by_series.items():
            stack = [i for i in members if i.position is not None and i.orientation is not None
                     and len(i.position) == 3 and len(i.orientation) == 6
                     and "LOCALIZER" not in i.image_type]
            unique: dict[str, InstanceInfo] = {}
            for i in sorted(stack, key=lambda i: i.path):
                unique.setdefault(f"{i.sop_uid}/{i.digest}", i)  # identical copies count once
            if len(unique) < 2:
                continue
            self._series_geometry(uid, list(unique.values()))

    def _series_geometry(self, uid: str, stack: list[InstanceInfo]) -> None:
        first = stack[0]
        where: dict[str, Any] = {"series": uid, "study": first.study_uid, "patient_id": first.patient_id}
        dims = Counter((i.rows, i.columns, tuple(round(v, 4) for v in i.pixel_spacing or ())) for i in stack)
        if len(dims) > 1:
            common = dims.most_common(1)[0][0]
            odd = [i for i in stack if (i.rows, i.columns,
                                        tuple(round(v, 4) for v in i.pixel_spacing or ())) != common]
            o = odd[0]
            self.add("geometry-dimensions", f"{o.path}: Rows/Columns/PixelSpacing {o.rows}x{o.columns} "
                     f"{list(o.pixel_spacing or ())} differ from the series' {common[0]}x{common[1]} "
                     f"{list(common[2])} ({len(odd)} of {len(stack)} files)", file=o.path,
                     attribute="Rows/Columns/PixelSpacing", **where)
        ref = Counter(tuple(round(v, 3) for v in i.orientation or ()) for i in stack).most_common(1)[0][0]
        odd = [i for i in stack if max(abs(a - b) for a, b in zip(i.orientation or (), ref, strict=True)) > 1e-3]
        if odd:
            o = odd[0]
            self.add("geometry-orientation", f"{o.path}: ImageOrientationPatient "
                     f"{[round(v, 4) for v in o.orientation or ()]} differs from the series' {list(ref)} "
                     f"({len(odd)} of {len(stack)} files)", file=o.path,
                     attribute="ImageOrientationPatient", **where)
            return
        normal = (ref[1] * ref[5] - ref[2] * ref[4], ref[2] * ref[3] - ref[0] * ref[5],
                  ref[0] * ref[4] - ref[1] * ref[3])
        volumes: dict[tuple[str, ...], list[InstanceInfo]] = defaultdict(list)
        for i in stack:
            volumes[i.stack_key].append(i)
        for members in volumes.values():
            if len(members) >= 2:
                self._spacing(members, normal, where)

    def _spacing(self, members: list[InstanceInfo], normal: tuple[float, ...], where: dict[str, Any]) -> None:
        placed = sorted(((sum(n * p for n, p in zip(normal, i.position or (), strict=True)), i) for i in members),
                        key=lambda t: (t[0], t[1].path))
        # Cluster equal positions: a position repeated in every slot is a multi-volume series
        # (repetitions, or b-values written only in private tags) and its distinct positions
        # are checked; a position repeated in some slots only is a duplicate.
        slots: list[list[tuple[float, InstanceInfo]]] = []
        for d, info in placed:
            if slots and abs(d - slots[-1][0][0]) < 1e-3:
                slots[-1].append((d, info))
            else:
                slots.append([(d, info)])
        sizes = Counter(len(s) for s in slots)
        if len(sizes) > 1:
            common = sizes.most_common(1)[0][0]
            odd = next(s for s in slots if len(s) != common)
            a, b = odd[0][1], odd[-1][1]
            self.add("geometry-duplicate-position", f"{a.path}: ImagePositionPatient {list(a.position or ())} "
                     f"occurs in {len(odd)} files (e.g. {b.path}) where the series' other positions occur "
                     f"{common} time(s)", file=a.path, attribute="ImagePositionPatient", **where)
            return
        steps = [(b[0][0] - a[0][0], a[0][1], b[0][1]) for a, b in itertools.pairwise(slots)]
        if len(steps) < 2:
            return
        spacings = sorted(d for d, _, _ in steps)
        typical = spacings[len(spacings) // 2]
        tol = max(0.01, 0.05 * typical)
        bad = [(d, a, b) for d, a, b in steps if abs(d - typical) > tol]
        if bad:
            d, a, b = bad[0]
            kind = "gap (missing slices?)" if d > typical else "irregular spacing"
            self.add("geometry-spacing", f"{a.path} -> {b.path}: slice spacing {d:.3f} mm along the "
                     f"normal where the series has {typical:.3f} mm: {kind} ({len(bad)} irregular steps "
                     f"of {len(steps)})", file=b.path, attribute="ImagePositionPatient", **where)

    # --- codes -------------------------------------------------------------------------------

    def codes(self) -> dict[str, SeriesSummary]:
        out: dict[str, SeriesSummary] = {}
        for uid, members in self.by_series.items():
            members.sort(key=lambda i: i.path)
            first = members[0]
            where: dict[str, Any] = {"series": uid, "study": first.study_uid, "patient_id": first.patient_id,
                     "file": first.path}
            modality_value = Counter(i.modality for i in members).most_common(1)[0][0]
            modality: CodedConcept | None = None
            if not modality_value:
                self.add("modality-missing", f"{first.path}: Modality (Type 1) missing",
                         attribute="Modality", **where)
            else:
                modality = modality_code(modality_value)
                if modality is None:
                    self.add("modality-unknown", f"{first.path}: Modality {modality_value!r} is not in "
                             "DICOM CID 29 or CID 33", attribute="Modality", **where)
            parts = [i.body_part for i in members if i.body_part]
            body_value = Counter(parts).most_common(1)[0][0] if parts else ""
            body: CodedConcept | None = None
            if body_value:
                body = body_part_code(body_value)
                if body is None:
                    self.add("bodypart-unknown", f"{first.path}: BodyPartExamined {body_value!r} is not a "
                             "defined term of PS3.16 Annex L", attribute="BodyPartExamined", **where)
            else:
                region = next((i.region for i in members if i.region), None)
                if region is not None and region[0] in ("SCT", "SRT") and region[1]:
                    body = CodedConcept("SCT", region[1], region[2])
                else:
                    self.add("bodypart-missing", f"{first.path}: no BodyPartExamined nor "
                             "AnatomicRegionSequence", attribute="BodyPartExamined", **where)
            out[uid] = SeriesSummary(uid, first.study_uid, self.lab(first.patient_id), modality_value,
                                     modality, body_value, body, tuple(i.path for i in members))
        return out

    # --- dates -------------------------------------------------------------------------------

    def _date(self, info: InstanceInfo, keyword: str, value: str) -> _dt.date | None:
        try:
            return _da(value)
        except ValueError:
            self.add("date-invalid", f"{info.path}: {keyword} {value!r} is not a valid date",
                     file=info.path, attribute=keyword, series=info.series_uid, study=info.study_uid,
                     patient_id=info.patient_id)
            return None

    def dates(self) -> dict[str, _dt.date]:
        """Check DICOM dates; returns raw PatientID -> DICOM birth date (when plausible)."""
        births: dict[str, _dt.date] = {}
        by_patient: dict[str, list[InstanceInfo]] = defaultdict(list)
        for i in self.readable:
            by_patient[i.patient_id].append(i)
        for pid, members in by_patient.items():
            members.sort(key=lambda i: i.path)
            with_birth = next((i for i in members if i.birth_date), None)
            if with_birth is None:
                continue
            birth = self._date(with_birth, "PatientBirthDate", with_birth.birth_date)
            if birth is None:
                continue
            if birth > self.today or birth < _EARLIEST:
                self.add("birth-date-implausible", f"{with_birth.path}: PatientBirthDate {birth} is "
                         f"{'in the future' if birth > self.today else 'before 1900'}", file=with_birth.path,
                         attribute="PatientBirthDate", patient_id=pid)
            else:
                births[pid] = birth
        for study, members in self.by_study.items():
            members.sort(key=lambda i: i.path)
            first = members[0]
            with_date = next((i for i in members if i.study_date), None)
            study_date = self._date(with_date, "StudyDate", with_date.study_date) if with_date else None
            if study_date is not None and with_date is not None:
                birth = births.get(first.patient_id)
                why = ("in the future" if study_date > self.today else "before 1900" if study_date < _EARLIEST
                       else f"before the patient's birth date {birth}" if birth and study_date < birth else None)
                if why:
                    self.add("study-date-implausible", f"{with_date.path}: StudyDate {study_date} is {why}",
                             file=with_date.path, attribute="StudyDate", study=study,
                             patient_id=first.patient_id)
            seen: set[str] = set()
            for i in members:
                if i.series_uid in seen or not i.series_date:
                    continue
                seen.add(i.series_uid)
                series_date = self._date(i, "SeriesDate", i.series_date)
                if series_date is None:
                    continue
                if study_date is not None and series_date < study_date:
                    self.add("series-before-study", f"{i.path}: SeriesDate {series_date} is before the "
                             f"StudyDate {study_date}", file=i.path, attribute="SeriesDate",
                             series=i.series_uid, study=study, patient_id=i.patient_id)
                elif series_date > self.today:
                    self.add("series-before-study", f"{i.path}: SeriesDate {series_date} is in the future",
                             file=i.path, attribute="SeriesDate", series=i.series_uid, study=study,
                             patient_id=i.patient_id)
        return births

    # --- clinical ----------------------------------------------------------------------------

    def clinical(self, rows: list[tuple[int, dict[str, Any]]], births: Mapping[str, _dt.date]) -> None:
        by_patient: dict[str, list[int]] = defaultdict(list)
        for number, row in rows:
            pid = _text(row.get("patient_id"))
            key = pid if pid else f"row {number}"
            if pid:
                by_patient[pid].append(number)
            self._completeness(number, row, key)
            self._clinical_dates(number, row, key, births.get(pid) if pid else None)
        for pid, numbers in by_patient.items():
            if len(numbers) > 1:
                for n in numbers:
                    self.add("clinical-duplicate-patient", f"row {n}: patient_id appears in rows "
                             f"{', '.join(map(str, numbers))}", attribute="patient_id", row=n, patient_id=pid)

    def _completeness(self, number: int, row: Mapping[str, Any], key: str) -> None:
        cancer = _text(row.get("cancer_type"))
        if cancer and cancer not in CANCER_TYPES:
            self.add("clinical-incomplete", f"row {number}: cancer_type {cancer!r} is not one of "
                     f"{', '.join(CANCER_TYPES)}", attribute="cancer_type", row=number,
                     patient_id=key)
            cancer = ""
        for col in COLUMNS:
            if not col.required or not _empty(row.get(col.name)):
                continue
            if cancer and cancer not in col.applies_to:
                continue
            if not cancer and col.applies_to != CANCER_TYPES:
                continue  # depends on a cancer type we do not know
            which = f"for cancer_type {cancer}" if col.applies_to != CANCER_TYPES else "for every patient"
            self.add("clinical-incomplete", f"row {number}: column {col.name} is required {which} and is "
                     "empty" + (" (column absent from the sheet)" if col.name not in row else ""),
                     attribute=col.name, row=number, patient_id=key)

    def _clinical_dates(self, number: int, row: Mapping[str, Any], key: str,
                        dicom_birth: _dt.date | None) -> None:
        birth = _as_date(row.get("birth_date"))
        for name in _CLINICAL_DATES:
            d = _as_date(row.get(name))
            if d is None:
                continue
            why = ("in the future" if d > self.today else "before 1900" if d < _EARLIEST
                   else f"before birth_date {birth}" if birth and name != "birth_date" and d < birth else None)
            if why:
                self.add("clinical-date-implausible", f"row {number}: {name} {d} is {why}", attribute=name,
                         row=number, patient_id=key)
        if birth is not None and dicom_birth is not None and birth != dicom_birth:
            self.add("birth-date-mismatch", f"row {number}: birth_date {birth} differs from the DICOM "
                     f"PatientBirthDate {dicom_birth}", attribute="birth_date", row=number, patient_id=key)

    def links(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        row_of: dict[str, int] = {}
        accessions_of: dict[str, set[str]] = {}
        owner_of_accession: dict[str, str] = {}
        for number, row in rows:
            pid = _text(row.get("patient_id"))
            if not pid or pid in row_of:
                continue
            row_of[pid] = number
            accs = {a.strip() for a in _text(row.get("accession_numbers")).split(";") if a.strip()}
            accessions_of[pid] = accs
            for a in accs:
                owner_of_accession.setdefault(a, pid)
        seen_patients: set[str] = set()
        seen_accessions: set[str] = set()
        for study, members in sorted(self.by_study.items(), key=lambda kv: min(i.path for i in kv[1])):
            first = min(members, key=lambda i: i.path)
            pid, acc = first.patient_id, first.accession
            seen_patients.add(pid)
            if acc:
                seen_accessions.add(acc)
            owner = owner_of_accession.get(acc) if acc else None
            if owner is not None and owner != pid:
                self.add("study-link-conflict", f"{first.path}: AccessionNumber is listed in the clinical "
                         f"row {row_of[owner]} of another patient ({self.lab(owner)})",
                         file=first.path, attribute="AccessionNumber", study=study, patient_id=pid,
                         row=row_of[owner])
                continue
            if pid not in row_of:
                self.add("study-without-clinical", f"{first.path}: no clinical row has this study's "
                         "PatientID" + (" or AccessionNumber" if acc else ""), file=first.path,
                         attribute="PatientID", study=study, patient_id=pid)
            elif acc and accessions_of[pid] and acc not in accessions_of[pid]:
                self.add("study-accession-unlisted", f"{first.path}: AccessionNumber not listed in "
                         f"accession_numbers of clinical row {row_of[pid]}", file=first.path,
                         attribute="AccessionNumber", study=study, patient_id=pid, row=row_of[pid])
        for pid, number in row_of.items():
            if pid not in seen_patients:
                self.add("clinical-without-imaging", f"row {number}: no imaging study has this patient_id "
                         "or one of its accession_numbers", attribute="patient_id", row=number, patient_id=pid)
                continue
            for acc in sorted(accessions_of[pid] - seen_accessions):
                self.add("clinical-accession-missing", f"row {number}: accession number "
                         f"#{sorted(accessions_of[pid]).index(acc) + 1} of accession_numbers matches no "
                         "study", attribute="accession_numbers", row=number, patient_id=pid)

    # --- quarantine --------------------------------------------------------------------------

    def quarantine(self, rows: list[tuple[int, dict[str, Any]]]) -> tuple[QuarantinedItem, ...]:
        rows_of: dict[str, list[int]] = defaultdict(list)
        for number, row in rows:
            pid = _text(row.get("patient_id"))
            rows_of[pid if pid else f"row {number}"].append(number)
        files_of_patient: dict[str, list[str]] = defaultdict(list)
        for i in self.readable:
            files_of_patient[i.patient_id].append(i.path)
        items: list[QuarantinedItem] = []
        for key, reasons in sorted(self.q_patient.items(), key=lambda kv: self.lab(kv[0])):
            items.append(QuarantinedItem("patient", self.lab(key), self.lab(key), tuple(dict.fromkeys(reasons)),
                                         tuple(sorted(files_of_patient.get(key, ()))),
                                         tuple(sorted(set(rows_of.get(key, ())) | self.q_rows[key]))))
        held = set(self.q_patient)
        for uid, reasons in sorted(self.q_series.items()):
            members = self.by_series.get(uid, [])
            pid = members[0].patient_id if members else ""
            if pid in held:
                continue
            items.append(QuarantinedItem("series", uid, self.lab(pid), tuple(dict.fromkeys(reasons)),
                                         tuple(sorted(i.path for i in members))))
        for path, reasons in sorted(self.q_file.items()):
            items.append(QuarantinedItem("file", path, None, tuple(dict.fromkeys(reasons)), (path,)))
        return tuple(items)


def _default_labeler(ids: Iterable[str]) -> Labeler:
    table = {pid: f"patient-{n:04d}" for n, pid in enumerate(sorted(set(ids)), start=1)}

    def label(pid: str) -> str:
        return table.get(pid) or (pid if pid.startswith("row ") else "patient-unknown")

    return label


def run_curation(
    dicom_root: str | os.PathLike[str],
    clinical: ClinicalInput = None,
    *,
    jobs: int = 1,
    label: Labeler | None = None,
    decode: DecodePolicy = "sample",
    today: _dt.date | None = None,
    thumbnails: bool = True,
    progress: bool | None = False,
) -> CurationResult:
    """Run every curation check on a provider's raw DICOM folder and clinical spreadsheet.

    Parameters
    ----------
    dicom_root : path
        Folder of DICOM files, any layout (hidden files and DICOMDIR are ignored).
    clinical : path, sequence of mappings or None
        The clinical workbook in the template of :mod:`incisive_lab.cdm.template`, or its rows
        already read (column -> value; dates as ``datetime.date``), or ``None`` to skip the
        clinical completeness and linkage checks.
    jobs : int
        Processes reading files (forked); 1 reads in this process.
    label : callable, optional
        Maps a raw PatientID (or ``"row N"`` for a clinical row without one) to the label
        reports show; give the pseudonym of the de-identification. Default: ``patient-0001`` ...
        in order of PatientID. Raw PatientIDs never appear in the result.
    decode : {"sample", "all"}
        ``sample`` fully decodes the first frame of the first compressed file of each series and
        transfer syntax (and of any file whose codestream structure is broken); ``all`` decodes
        the first frame of every compressed file. See :mod:`incisive_lab.curation._instance`.
    today : date, optional
        Reference date for "in the future" (default: today).
    thumbnails : bool
        Make PNG thumbnails of the series with errors for the HTML report.
    progress : bool, optional
        Show a progress bar on standard error (``None``: when it is a terminal).

    Returns
    -------
    CurationResult

    Raises
    ------
    FileNotFoundError
        If `dicom_root` is not a folder.
    """
    root = Path(dicom_root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder {root} does not exist")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1 (got {jobs})")
    today = today or _dt.date.today()
    for iod in ("ct-image", "mr-image", "digital-mammography-x-ray-image", "secondary-capture-image"):
        from incisive_lab.curation._instance import iod_required_types

        if _standard.iod_requires_pixels(iod):
            iod_required_types(iod)  # loaded once here, shared by forked workers
    files = _discover(root)
    show = sys.stderr.isatty() if progress is None else progress
    infos = _inspect_all(root, files, jobs, decode == "all", show)
    pre: list[Finding] = []
    rows = _clinical_rows(clinical, pre)
    if label is None:
        ids = [i.patient_id for i in infos if i.readable]
        ids += [_text(r.get("patient_id")) for _, r in rows or () if _text(r.get("patient_id"))]
        label = _default_labeler(ids)
    run = _Run(infos, label, today)
    run.findings.extend(pre)
    run.file_findings()
    run.duplicates()
    run.geometry()
    series = run.codes()
    births = run.dates()
    if rows is not None:
        run.clinical(rows, births)
        run.links(rows)
    quarantine = run.quarantine(rows or [])
    order = {cid: n for n, cid in enumerate(CHECKS)}
    findings = sorted(run.findings, key=lambda f: (f.severity != "error", order[f.check], f.file or "",
                                                   f.row or 0, f.message))
    patients = sorted({run.lab(i.patient_id) for i in run.readable}
                      | {run.lab(_text(r.get("patient_id")) or f"row {n}") for n, r in rows or ()})
    thumbs: dict[str, str] = {}
    if thumbnails:
        from incisive_lab.curation.report import make_thumbnails

        thumbs = make_thumbnails(root, infos, findings)
    return CurationResult(
        findings=tuple(findings), quarantine=quarantine, series=dict(sorted(series.items())),
        files_checked=sum(1 for i in infos if not i.skipped),
        files_skipped=tuple(i.path for i in infos if i.skipped),
        clinical_rows=len(rows or ()), patients=tuple(patients), thumbnails=thumbs,
        settings={"jobs": jobs, "decode": decode, "today": today.isoformat(),
                  "clinical": "none" if rows is None else "given"},
    )
