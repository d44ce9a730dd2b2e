"""Reading the clinical workbook for the FHIR ETL: typed cells and per-row problems.

Whole-file problems (no file, an empty file, not an ``.xlsx`` package, no ``patients`` sheet, no
header row, duplicate or missing required columns) raise
:class:`~incisive_lab.errors.IncisiveLabError` with a message that names the file. Everything that
concerns one row (a wrong type, an unknown code, a missing required value, a duplicate patient) is
collected as a :class:`RowProblem` on that row, so that one bad patient never stops the others.

Only the columns the ETL maps are read: ``patient_id`` (the pseudonym in a de-identified
workbook), the ``link``, ``date`` and ``clinical`` columns of the template. Names, addresses,
phone numbers, other identifiers and free text are never read, even when a raw workbook has them.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

from incisive_lab.cdm.template import CANCER_TYPES, COLUMNS, SHEET_NAME, Column
from incisive_lab.errors import IncisiveLabError

__all__ = [
    "ETL_COLUMNS",
    "REQUIRED_HEADER",
    "ClinicalRow",
    "ClinicalWorkbook",
    "RowProblem",
    "accessions",
    "parse_rows",
    "read_clinical_rows",
]

#: Template columns that the ETL reads, by name (``patient_id`` and every link, date and
#: clinical column). Direct identifiers other than ``patient_id`` and free text are never read.
ETL_COLUMNS: Mapping[str, Column] = MappingProxyType(
    {
        c.name: c
        for c in COLUMNS
        if c.name == "patient_id" or c.phi_category in ("link", "date", "clinical")
    }
)

#: Columns the header must have: ``patient_id`` and the required link and clinical columns that
#: apply to every cancer type. Date columns may be missing (a de-identifier that removes dates
#: drops them); columns for some cancer types only may be missing when no row needs them.
REQUIRED_HEADER: tuple[str, ...] = tuple(
    c.name
    for c in ETL_COLUMNS.values()
    if c.name == "patient_id"
    or (c.required and c.phi_category != "date" and c.applies_to == CANCER_TYPES)
)

_NOT_READ = frozenset(c.name for c in COLUMNS) - set(ETL_COLUMNS)

#: Which ICD-O-3 topography prefixes fit which cancer type (a consistency check per row).
_SITE_PREFIXES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"lung": ("C34",), "colorectal": ("C18", "C19", "C20"), "prostate": ("C61",), "breast": ("C50",)}
)

_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class RowProblem:
    """One problem of one row of a clinical workbook.

    Attributes
    ----------
    source : str
        The file name (or ``"<rows>"`` for rows given in memory).
    row : int
        The sheet row number (the header is row 1, the first patient row 2).
    column : str or None
        The column at fault; ``None`` for a problem of the whole row.
    reason : str
        What is wrong, for people.
    """

    source: str
    row: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}, sheet {SHEET_NAME!r}, row {self.row}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (``source``, ``row``, ``column``, ``reason``, ``message``)."""
        return {"source": self.source, "row": self.row, "column": self.column,
                "reason": self.reason, "message": str(self)}


@dataclass(frozen=True)
class ClinicalRow:
    """One patient row, with typed values and its problems.

    Attributes
    ----------
    source : str
        The file name the row came from.
    row : int
        The sheet row number (header = 1).
    patient_id : str or None
        The ``patient_id`` cell (the pseudonym in a de-identified workbook); ``None`` if empty.
    values : Mapping[str, object]
        Column name -> typed value for every :data:`ETL_COLUMNS` column the sheet has:
        ``datetime.date`` for dates, ``int``/``float`` for numbers, ``str`` for codes and
        strings, ``tuple[str, ...]`` for code lists, ``None`` for empty or invalid cells.
    problems : tuple of RowProblem
        Everything wrong with the row; a row with problems is quarantined, never converted.
    """

    source: str
    row: int
    patient_id: str | None
    values: Mapping[str, Any]
    problems: tuple[RowProblem, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the row has no problem."""
        return not self.problems

    def get(self, name: str) -> Any:
        """The typed value of column `name` (``None`` when empty or absent)."""
        return self.values.get(name)


@dataclass(frozen=True)
class ClinicalWorkbook:
    """The rows of one clinical workbook and its workbook-level warnings.

    Attributes
    ----------
    source : str
        The file name.
    columns : tuple of str
        The header, in sheet order.
    rows : tuple of ClinicalRow
        One per non-empty row, in sheet order.
    warnings : tuple of str
        Workbook-level notes that do not stop the ETL: extra sheets (not read), columns the
        template does not know (not read), identifier or free-text columns (not read).
    """

    source: str
    columns: tuple[str, ...]
    rows: tuple[ClinicalRow, ...]
    warnings: tuple[str, ...] = field(default=())


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_cell(col: Column, value: object) -> tuple[Any, str | None]:
    """Type one non-blank cell: ``(value, None)`` or ``(None, reason)``."""
    kind = col.type
    if kind == "date":
        if isinstance(value, _dt.datetime):
            return value.date(), None
        if isinstance(value, _dt.date):
            return value, None
        if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
            try:
                return _dt.date.fromisoformat(value.strip()), None
            except ValueError:
                pass
        return None, f"unparseable date {value!r} (expected a date cell or YYYY-MM-DD text)"
    if kind in ("integer", "decimal"):
        number: int | float
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None, f"expected a number, got {type(value).__name__} {value!r}"
        if isinstance(value, str):
            text = value.strip()
            if kind == "integer" and _INT.fullmatch(text):
                number = int(text)
            elif kind == "decimal" and _DEC.fullmatch(text):
                number = float(text)
            else:
                what = "an integer" if kind == "integer" else "a number"
                return None, f"expected {what}, got text {value!r}"
        else:
            number = value
        if isinstance(number, float) and not math.isfinite(number):
            return None, f"expected a finite number, got {number!r}"
        if kind == "integer":
            if isinstance(number, float) and not number.is_integer():
                return None, f"expected an integer, got {number!r}"
            number = int(number)
        else:
            number = float(number)
        if col.minimum is not None and number < col.minimum:
            return None, f"{number:g} is below the minimum {col.minimum:g}"
        if col.maximum is not None and number > col.maximum:
            return None, f"{number:g} is above the maximum {col.maximum:g}"
        return number, None
    # string, text, code, code-list: text cells (integral numbers are read as their digits)
    if isinstance(value, bool | _dt.date):
        return None, f"expected text, got {type(value).__name__} {value!r}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if kind == "code":
        assert col.values is not None
        if text not in col.values:
            return None, f"unknown code {text!r} (allowed: {', '.join(col.values)})"
        return text, None
    if kind == "code-list":
        assert col.values is not None
        items = [p.strip() for p in text.split(";") if p.strip()]
        bad = [p for p in items if p not in col.values]
        if bad:
            return None, (f"unknown code{'s' if len(bad) > 1 else ''} "
                          f"{', '.join(repr(b) for b in bad)} (allowed: {', '.join(col.values)})")
        return tuple(dict.fromkeys(items)), None
    return text, None


def _parse_row(source: str, number: int, record: Mapping[str, object]) -> ClinicalRow:
    problems: list[RowProblem] = []

    def problem(column: str | None, reason: str) -> None:
        problems.append(RowProblem(source, number, column, reason))

    values: dict[str, Any] = {}
    for name, col in ETL_COLUMNS.items():
        if name not in record:
            continue
        raw = record[name]
        if _is_blank(raw):
            values[name] = None
            continue
        value, reason = _parse_cell(col, raw)
        values[name] = value
        if reason is not None:
            problem(name, reason)
    patient_id = values.get("patient_id")
    if patient_id is None and not any(p.column == "patient_id" for p in problems):
        problem("patient_id", "required: the row cannot be linked to a patient")
    cancer = values.get("cancer_type")
    bad_columns = {p.column for p in problems}
    for name, col in ETL_COLUMNS.items():
        if name == "patient_id" or name in bad_columns:
            continue
        value = values.get(name)
        applies = cancer in col.applies_to if isinstance(cancer, str) else True
        if value is None:
            if not col.required or not applies:
                continue
            if name not in record and col.phi_category == "date":
                continue  # a de-identifier that removes dates drops the whole column
            if cancer is None and col.applies_to != CANCER_TYPES:
                continue  # cannot tell without a valid cancer_type (reported on its own)
            reason = "required" if col.applies_to == CANCER_TYPES else f"required for cancer_type {cancer}"
            problem(name, reason if name in record else f"{reason}, but there is no such column")
        elif not applies:
            problem(name, f"must be empty for cancer_type {cancer} (applies to {', '.join(col.applies_to)})")
    site = values.get("primary_site")
    if isinstance(cancer, str) and isinstance(site, str) and not site.startswith(_SITE_PREFIXES[cancer]):
        problem("primary_site", f"topography {site} does not fit cancer_type {cancer}")
    treatments = values.get("treatments") or ()
    if values.get("surgery_procedure") is not None and "surgery" not in treatments:
        problem("surgery_procedure", "given, but treatments does not list surgery")
    return ClinicalRow(source, number, patient_id, MappingProxyType(values), tuple(problems))


def accessions(row: ClinicalRow) -> tuple[str, ...]:
    """The accession numbers listed on `row` (``;``-separated in the sheet), in order."""
    text = row.get("accession_numbers")
    if not isinstance(text, str):
        return ()
    return tuple(dict.fromkeys(p.strip() for p in text.split(";") if p.strip()))


def _plural(items: Sequence[object], word: str) -> str:
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(map(str, items))}"


def _mark_duplicates(rows: list[ClinicalRow]) -> list[ClinicalRow]:
    """Add cross-row problems: a patient on two rows, an accession number on two patients."""
    by_patient: dict[str, list[int]] = {}
    by_accession: dict[str, list[int]] = {}
    for r in rows:
        if r.patient_id is not None:
            by_patient.setdefault(r.patient_id, []).append(r.row)
        for acc in accessions(r):
            by_accession.setdefault(acc, []).append(r.row)
    out = []
    for r in rows:
        extra: list[RowProblem] = []
        others = [n for n in by_patient.get(r.patient_id or "", []) if n != r.row]
        if others:
            extra.append(RowProblem(r.source, r.row, "patient_id", "the same patient_id is on "
                                    f"{_plural(others, 'row')} (one row per patient)"))
        for acc in accessions(r):
            also = [n for n in by_accession[acc] if n != r.row]
            if also:
                extra.append(RowProblem(r.source, r.row, "accession_numbers",
                                        f"accession number {acc} is also listed on {_plural(also, 'row')}"))
        if extra:
            r = ClinicalRow(r.source, r.row, r.patient_id, r.values, (*r.problems, *extra))
        out.append(r)
    return out


def parse_rows(
    records: Iterable[Mapping[str, object]], *, source: str = "<rows>", first_row: int = 2
) -> tuple[ClinicalRow, ...]:
    """Type and check rows given in memory (column name -> cell value).

    Parameters
    ----------
    records : iterable of mappings
        One mapping per patient, as :func:`incisive_lab.cdm.spreadsheet.read_workbook` returns.
    source : str
        Name used in problem messages.
    first_row : int
        Sheet row number of the first record (2: right below the header).

    Returns
    -------
    tuple of ClinicalRow
        One per record, with its problems (duplicate ``patient_id`` values included).
    """
    rows = [_parse_row(source, first_row + i, rec) for i, rec in enumerate(records)]
    return tuple(_mark_duplicates(rows))


def _load(data: bytes, label: str) -> Any:
    from openpyxl import load_workbook  # heavy import kept local

    if not data.strip():
        raise IncisiveLabError(f"{label}: the file is empty (expected an .xlsx workbook)")
    try:
        return load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError and XML errors for non-workbooks
        raise IncisiveLabError(
            f"{label}: not a readable .xlsx workbook ({type(exc).__name__}: {exc})"
        ) from None


def read_clinical_rows(
    path: str | Path | IO[bytes],
    *,
    extra_sheets: Literal["warn", "error"] = "warn",
    name: str | None = None,
) -> ClinicalWorkbook:
    """Read a clinical workbook (raw or de-identified) into typed, checked rows.

    Parameters
    ----------
    path : path or binary file
        The ``.xlsx`` workbook (any file name: the content decides).
    extra_sheets : {"warn", "error"}
        What a sheet other than ``patients`` causes: a workbook warning (default; the sheet is
        not read) or an :class:`~incisive_lab.errors.IncisiveLabError`.
    name : str, optional
        Name of the file in messages (default: the file name).

    Returns
    -------
    ClinicalWorkbook
        Every non-empty row with its problems, and the workbook's warnings.

    Raises
    ------
    IncisiveLabError
        For whole-file problems, with the file name in the message: no such file, an empty
        file, not an ``.xlsx`` workbook, no ``patients`` sheet, an empty sheet, duplicate
        column names, missing required columns (all listed), or extra sheets under
        ``extra_sheets="error"``.

    Examples
    --------
    >>> wb = read_clinical_rows("clinical.xlsx")          # doctest: +SKIP
    >>> [str(p) for r in wb.rows for p in r.problems]     # doctest: +SKIP
    ["clinical.xlsx, sheet 'patients', row 3, column 'ecog': expected an integer, got text 'two'"]
    """
    if isinstance(path, str | Path):
        label = name or Path(path).name
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise IncisiveLabError(f"{label}: no such file") from None
        except OSError as exc:
            raise IncisiveLabError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    else:
        label = name or Path(str(getattr(path, "name", "<workbook>"))).name
        data = path.read()
    wb = _load(data, label)
    try:
        return _read(wb, label, extra_sheets)
    finally:
        wb.close()


def _read(wb: Any, label: str, extra_sheets: str) -> ClinicalWorkbook:
    warnings: list[str] = []
    sheets = list(wb.sheetnames)
    if SHEET_NAME not in sheets:
        raise IncisiveLabError(f"{label}: no sheet named {SHEET_NAME!r} (sheets: {', '.join(map(repr, sheets))})")
    others = [s for s in sheets if s != SHEET_NAME]
    if others:
        message = (f"{label}: extra sheet{'s' if len(others) > 1 else ''} "
                   f"{', '.join(map(repr, others))}: the template has only {SHEET_NAME!r}")
        if extra_sheets == "error":
            raise IncisiveLabError(message)
        warnings.append(message + "; not read")
    it = wb[SHEET_NAME].iter_rows(values_only=True)
    first = next(it, None)
    if first is None or all(_is_blank(v) for v in first):
        raise IncisiveLabError(f"{label}: sheet {SHEET_NAME!r} is empty (no header row)")
    header = [None if _is_blank(h) else str(h).strip() for h in first]
    names = [h for h in header if h is not None]
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        raise IncisiveLabError(f"{label}: sheet {SHEET_NAME!r}: duplicate columns {', '.join(dupes)}")
    missing = [c for c in REQUIRED_HEADER if c not in names]
    if missing:
        raise IncisiveLabError(
            f"{label}: sheet {SHEET_NAME!r}: missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}"
        )
    unknown = [h for h in names if h not in ETL_COLUMNS and h not in _NOT_READ]
    if unknown:
        warnings.append(f"{label}: column{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        "not in the template; not read")
    skipped = [h for h in names if h in _NOT_READ]
    if skipped:
        warnings.append(f"{label}: identifier or free-text column{'s' if len(skipped) > 1 else ''} "
                        f"{', '.join(skipped)} present; not read (de-identify the workbook first)")
    records: list[tuple[int, dict[str, object]]] = []
    unnamed_data = False
    for number, values in enumerate(it, start=2):
        if all(_is_blank(v) for v in values):
            continue
        record: dict[str, object] = {}
        for h, v in zip(header, values, strict=False):
            if h is None:
                unnamed_data = unnamed_data or not _is_blank(v)
            else:
                record[h] = v
        records.append((number, record))
    if unnamed_data:
        warnings.append(f"{label}: sheet {SHEET_NAME!r} has cells under a column without a header; not read")
    rows = [_parse_row(label, number, record) for number, record in records]
    return ClinicalWorkbook(label, tuple(names), tuple(_mark_duplicates(rows)), tuple(warnings))

