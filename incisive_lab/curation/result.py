"""The outcome of a curation run: findings, quarantine, counts and normalised codes.

:class:`CurationResult` is what :func:`~incisive_lab.curation.run_curation` returns and what the
ingest consults before de-identifying: a file is ingested only when
:meth:`CurationResult.is_quarantined` is false for it, a clinical row only when its patient's
label is not in :attr:`CurationResult.quarantined_patients`.

It holds no raw PatientID nor name: patients appear by the label the caller gave.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from incisive_lab._files import write_atomic
from incisive_lab.curation.bodypart import CodedConcept
from incisive_lab.curation.findings import CHECKS, Finding, QuarantinedItem

__all__ = ["FORMAT", "CurationResult", "SeriesSummary"]

#: Version tag of the JSON report.
FORMAT = "incisive-curation-report/1"


@dataclass(frozen=True)
class SeriesSummary:
    """One series as curation saw it, with its normalised codes (for the ingest's index).

    Attributes
    ----------
    series_uid, study_uid : str
        The raw series and study UIDs (the ingest maps them to its de-identified ones).
    patient : str
        The patient's label.
    modality_value : str
        Modality (0008,0060) as written.
    modality : CodedConcept or None
        Its DICOM CID 29 (or CID 33) code.
    body_part_value : str
        Body Part Examined (0018,0015) as written (empty if absent).
    body_part : CodedConcept or None
        Its SNOMED CT code (PS3.16 Annex L), or the Anatomic Region Sequence's SNOMED CT code when
        Body Part Examined is absent.
    files : tuple of str
        Relative paths of the series' files.
    first_file : str
        The series' first file (by path), to name the series in reports.
    """

    series_uid: str
    study_uid: str
    patient: str
    modality_value: str
    modality: CodedConcept | None
    body_part_value: str
    body_part: CodedConcept | None
    files: tuple[str, ...]

    @property
    def first_file(self) -> str:
        """The series' first file by relative path."""
        return self.files[0] if self.files else ""

    def to_json(self) -> dict[str, Any]:
        """The series as a JSON object."""
        return {
            "series_uid": self.series_uid, "study_uid": self.study_uid, "patient": self.patient,
            "modality_value": self.modality_value,
            "modality": self.modality.to_json() if self.modality else None,
            "body_part_value": self.body_part_value,
            "body_part": self.body_part.to_json() if self.body_part else None,
            "files": list(self.files),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SeriesSummary:
        """Inverse of :meth:`to_json`."""
        return cls(obj["series_uid"], obj["study_uid"], obj["patient"], obj["modality_value"],
                   CodedConcept.from_json(obj["modality"]) if obj["modality"] else None,
                   obj["body_part_value"],
                   CodedConcept.from_json(obj["body_part"]) if obj["body_part"] else None,
                   tuple(obj["files"]))


@dataclass(frozen=True, eq=True)
class CurationResult:
    """Findings, quarantine and codes of one curation run.

    Attributes
    ----------
    findings : tuple of Finding
        Every finding, errors first, then by check id and file.
    quarantine : tuple of QuarantinedItem
        Every file, series and patient held back, with reasons.
    series : Mapping[str, SeriesSummary]
        Every series seen (quarantined or not), by SeriesInstanceUID.
    files_checked : int
        DICOM files examined (DICOMDIR and hidden files are not counted).
    files_skipped : tuple of str
        Files ignored on purpose (DICOMDIR).
    clinical_rows : int
        Clinical rows examined.
    patients : tuple of str
        Labels of every patient seen, in DICOM or in the spreadsheet.
    thumbnails : Mapping[str, str]
        SeriesInstanceUID -> PNG data URI of a thumbnail, for series with errors.
    settings : Mapping[str, Any]
        How the run was made (jobs, decode policy, reference date).
    """

    findings: tuple[Finding, ...]
    quarantine: tuple[QuarantinedItem, ...]
    series: Mapping[str, SeriesSummary]
    files_checked: int
    files_skipped: tuple[str, ...] = ()
    clinical_rows: int = 0
    patients: tuple[str, ...] = ()
    thumbnails: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    # --- what the ingest asks ---------------------------------------------------------------

    @cached_property
    def quarantined_files(self) -> frozenset[str]:
        """Relative paths of every source file held back."""
        return frozenset(f for item in self.quarantine for f in item.files)

    @cached_property
    def quarantined_series(self) -> frozenset[str]:
        """SeriesInstanceUIDs held back (directly, or through their patient)."""
        out = {i.key for i in self.quarantine if i.kind == "series"}
        patients = self.quarantined_patients
        out.update(uid for uid, s in self.series.items() if s.patient in patients)
        return frozenset(out)

    @cached_property
    def quarantined_patients(self) -> frozenset[str]:
        """Labels of the patients held back entirely (images and clinical row)."""
        return frozenset(i.key for i in self.quarantine if i.kind == "patient")

    @cached_property
    def quarantined_rows(self) -> frozenset[int]:
        """Clinical spreadsheet rows held back."""
        return frozenset(r for i in self.quarantine for r in i.rows)

    def is_quarantined(self, path: str) -> bool:
        """Whether the file at `path` (relative to the DICOM root, POSIX separators) is held back."""
        return path in self.quarantined_files

    def reasons(self, path: str) -> tuple[str, ...]:
        """Why the file at `path` is held back (empty if it is not)."""
        return tuple(r for item in self.quarantine if path in item.files for r in item.reasons)

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings of severity error."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The findings of severity warning."""
        return tuple(f for f in self.findings if f.severity == "warning")

    def counts(self) -> dict[tuple[str, str], int]:
        """(check id, severity) -> number of findings."""
        return dict(Counter((f.check, f.severity) for f in self.findings))

    def summary(self) -> dict[str, Any]:
        """Totals for a one-screen summary (and the dataset record's curation summary)."""
        by_check = Counter(f.check for f in self.findings)
        return {
            "files_checked": self.files_checked,
            "files_skipped": len(self.files_skipped),
            "clinical_rows": self.clinical_rows,
            "patients": len(self.patients),
            "series": len(self.series),
            "errors": sum(1 for f in self.findings if f.severity == "error"),
            "warnings": sum(1 for f in self.findings if f.severity == "warning"),
            "by_check": {k: {"severity": CHECKS[k].severity, "count": v} for k, v in sorted(by_check.items())},
            "quarantined_files": len(self.quarantined_files),
            "quarantined_series": len(self.quarantined_series),
            "quarantined_patients": len(self.quarantined_patients),
        }

    # --- persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole result as a JSON object (see :data:`FORMAT`)."""
        return {
            "format": FORMAT,
            "summary": self.summary(),
            "settings": dict(self.settings),
            "checks": {c.id: {"severity": c.severity, "scope": c.scope, "quarantines": c.quarantines,
                              "title": c.title} for c in CHECKS.values()},
            "files_checked": self.files_checked,
            "files_skipped": list(self.files_skipped),
            "clinical_rows": self.clinical_rows,
            "patients": list(self.patients),
            "findings": [f.to_json() for f in self.findings],
            "quarantine": [q.to_json() for q in self.quarantine],
            "series": {uid: s.to_json() for uid, s in self.series.items()},
            "thumbnails": dict(self.thumbnails),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CurationResult:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            If the object is not a curation report of this format.
        """
        if obj.get("format") != FORMAT:
            raise ValueError(f"not a curation report of format {FORMAT} (got {obj.get('format')!r})")
        return cls(
            findings=tuple(Finding.from_json(f) for f in obj["findings"]),
            quarantine=tuple(QuarantinedItem.from_json(q) for q in obj["quarantine"]),
            series={uid: SeriesSummary.from_json(s) for uid, s in obj["series"].items()},
            files_checked=int(obj["files_checked"]),
            files_skipped=tuple(obj["files_skipped"]),
            clinical_rows=int(obj["clinical_rows"]),
            patients=tuple(obj["patients"]),
            thumbnails=dict(obj["thumbnails"]),
            settings=dict(obj["settings"]),
        )

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically (a temporary file in the same folder, then rename).

        Returns the path written.
        """
        target = Path(path)
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=1, sort_keys=False)
        write_atomic(target, text.encode("utf-8"))
        return target

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> CurationResult:
        """Read a report written by :meth:`write_json`."""
        return cls.from_json(json.loads(Path(path).read_text("utf-8")))

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the data steward's HTML page atomically (see :mod:`incisive_lab.curation.report`)."""
        from incisive_lab.curation.report import render_html

        target = Path(path)
        write_atomic(target, render_html(self).encode("utf-8"))
        return target
