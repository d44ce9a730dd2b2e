"""The curation checks' catalogue and the records they produce.

Every check has a stable id, one severity, the scope it is evaluated at and what an error
quarantines. A :class:`Finding` is one occurrence; a :class:`QuarantinedItem` is one file, series
or patient held back from de-identification with the reasons why.

Patients are never named by their raw PatientID here: :attr:`Finding.patient` and the keys of
patient quarantines hold the *label* that the caller's ``label`` callable gave (a pseudonym).
Files are named by their path relative to the DICOM root.

Examples
--------
>>> from incisive_lab.curation.findings import CHECKS
>>> CHECKS["geometry-spacing"].severity, CHECKS["geometry-spacing"].quarantines
('error', 'series')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "QuarantineKind",
    "QuarantinedItem",
    "Scope",
    "Severity",
]

Severity = Literal["error", "warning"]
Scope = Literal["instance", "series", "study", "patient", "dataset"]
QuarantineKind = Literal["file", "series", "patient"]


@dataclass(frozen=True)
class Check:
    """One curation check.

    Attributes
    ----------
    id : str
        Stable identifier (used in reports and counts).
    severity : {"error", "warning"}
        An error quarantines :attr:`quarantines`; a warning passes.
    scope : str
        What the check looks at: ``instance``, ``series``, ``study``, ``patient`` or ``dataset``.
    quarantines : {"file", "series", "patient"} or None
        What an error holds back: ``series`` (every file of the series; for study-scope checks
        every series of the study), ``patient`` (every file and the clinical row of the patient),
        ``file`` (only that file: it cannot be placed in a series). ``None`` for warnings.
    title : str
        One line for the report's summary table.
    """

    id: str
    severity: Severity
    scope: Scope
    quarantines: QuarantineKind | None
    title: str


def _catalogue(*checks: Check) -> Mapping[str, Check]:
    out = {c.id: c for c in checks}
    if len(out) != len(checks):  # pragma: no cover - static table
        raise RuntimeError("duplicate check ids")
    for c in checks:
        if (c.severity == "error") != (c.quarantines is not None) and c.id != "clinical-unreadable":
            raise RuntimeError(f"check {c.id}: errors quarantine, warnings do not")  # pragma: no cover
    return MappingProxyType(out)


#: Every check, by id.
CHECKS: Mapping[str, Check] = _catalogue(
    Check("file-unreadable", "error", "instance", "file",
          "File is not readable as DICOM or lacks the UIDs that place it in a series"),
    Check("pixel-missing", "error", "instance", "series",
          "Image IOD without Pixel Data"),
    Check("pixel-undecodable", "error", "instance", "series",
          "Pixel data truncated, corrupt or not decodable"),
    Check("required-type1", "error", "instance", "series",
          "Type 1 attribute of the IOD missing or empty"),
    Check("required-type2", "warning", "instance", None,
          "Type 2 attribute of the IOD missing"),
    Check("sop-class-unknown", "warning", "instance", None,
          "SOP Class not in the IOD tables: required attributes not checked"),
    Check("geometry-orientation", "error", "series", "series",
          "Image Orientation (Patient) differs within the series"),
    Check("geometry-dimensions", "error", "series", "series",
          "Rows, Columns or Pixel Spacing differ within the series"),
    Check("geometry-spacing", "error", "series", "series",
          "Irregular slice spacing or missing slices (gap)"),
    Check("geometry-duplicate-position", "error", "series", "series",
          "Two slices at the same position in one volume"),
    Check("duplicate-sop-identical", "warning", "instance", None,
          "Same SOP Instance UID in several files with identical bytes"),
    Check("duplicate-sop-conflict", "error", "instance", "series",
          "Same SOP Instance UID in several files with different content"),
    Check("modality-missing", "error", "series", "series",
          "Modality (Type 1) missing"),
    Check("modality-unknown", "warning", "series", None,
          "Modality not in DICOM CID 29 / CID 33"),
    Check("bodypart-missing", "warning", "series", None,
          "No Body Part Examined nor Anatomic Region Sequence"),
    Check("bodypart-unknown", "warning", "series", None,
          "Body Part Examined not a PS3.16 Annex L defined term"),
    Check("date-invalid", "error", "series", "series",
          "A DICOM date is not a valid DA value"),
    Check("birth-date-implausible", "error", "patient", "patient",
          "Patient's Birth Date in the future or before 1900"),
    Check("study-date-implausible", "error", "study", "series",
          "Study Date in the future, before 1900 or before birth"),
    Check("series-before-study", "error", "series", "series",
          "Series Date before the Study Date"),
    Check("clinical-unreadable", "error", "dataset", None,
          "Clinical spreadsheet cannot be read (every study is then unlinked)"),
    Check("clinical-incomplete", "error", "patient", "patient",
          "Required column of the patient's cancer type empty"),
    Check("clinical-duplicate-patient", "error", "patient", "patient",
          "Several clinical rows for one patient_id"),
    Check("clinical-date-implausible", "error", "patient", "patient",
          "Clinical date in the future, before 1900 or before birth"),
    Check("birth-date-mismatch", "error", "patient", "patient",
          "Birth date differs between DICOM and the clinical row"),
    Check("study-without-clinical", "error", "study", "patient",
          "Imaging study whose patient has no clinical row"),
    Check("study-link-conflict", "error", "study", "patient",
          "Study's accession number listed in another patient's clinical row"),
    Check("study-accession-unlisted", "warning", "study", None,
          "Study's accession number not listed in its patient's clinical row"),
    Check("clinical-without-imaging", "error", "patient", "patient",
          "Clinical row with no imaging study"),
    Check("clinical-accession-missing", "warning", "patient", None,
          "Accession number of the clinical row matches no study"),
)


@dataclass(frozen=True)
class Finding:
    """One occurrence of a check.

    Attributes
    ----------
    check : str
        Id of the :class:`Check` (see :data:`CHECKS`).
    severity : {"error", "warning"}
        The check's severity (copied for convenience).
    scope : str
        The check's scope (copied for convenience).
    message : str
        Human-readable reason, naming the file and the attribute or column.
    file : str or None
        Path relative to the DICOM root of the (first) file concerned.
    attribute : str or None
        DICOM keyword (or tag) or clinical column concerned.
    series : str or None
        SeriesInstanceUID concerned.
    study : str or None
        StudyInstanceUID concerned.
    patient : str or None
        Label (pseudonym) of the patient concerned: never the raw PatientID.
    row : int or None
        Spreadsheet row number (the header is row 1) for clinical findings.
    """

    check: str
    severity: Severity
    scope: Scope
    message: str
    file: str | None = None
    attribute: str | None = None
    series: str | None = None
    study: str | None = None
    patient: str | None = None
    row: int | None = None

    @classmethod
    def of(cls, check: str, message: str, **where: Any) -> Finding:
        """A finding of `check` (severity and scope taken from :data:`CHECKS`)."""
        c = CHECKS[check]
        return cls(check, c.severity, c.scope, message, **where)

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object (``None`` fields left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_json`."""
        return cls(**obj)


@dataclass(frozen=True)
class QuarantinedItem:
    """A file, series or patient held back, with why.

    Attributes
    ----------
    kind : {"file", "series", "patient"}
        What is held back.
    key : str
        The relative path (file), the SeriesInstanceUID (series) or the patient's label.
    patient : str or None
        Label of the patient the item belongs to.
    reasons : tuple of str
        ``"<check id>: <message>"`` for each error that caused it.
    files : tuple of str
        Relative paths of the source files held back (empty for a patient with no images).
    rows : tuple of int
        Clinical spreadsheet rows held back (patients only).
    """

    kind: QuarantineKind
    key: str
    patient: str | None
    reasons: tuple[str, ...]
    files: tuple[str, ...] = ()
    rows: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The item as a JSON object."""
        return {"kind": self.kind, "key": self.key, "patient": self.patient,
                "reasons": list(self.reasons), "files": list(self.files), "rows": list(self.rows)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> QuarantinedItem:
        """Inverse of :meth:`to_json`."""
        return cls(obj["kind"], obj["key"], obj["patient"], tuple(obj["reasons"]),
                   tuple(obj["files"]), tuple(obj["rows"]))
