"""Common data model: code tables (SNOMED CT, LOINC, ICD-O-3) and the clinical template.

* :mod:`incisive_lab.cdm.codes` — the code tables, loaded from ``data/codes.json``;
* :mod:`incisive_lab.cdm.template` — the clinical spreadsheet template (one
  :class:`~incisive_lab.cdm.template.Column` per column) and its documentation renderer;
* :mod:`incisive_lab.cdm.spreadsheet` — deterministic reading and writing of the workbook;
* :mod:`incisive_lab.cdm.fhir` — the clinical ETL: workbook rows to validated FHIR R4B resources,
  linked to the imaging studies.

This package imports nothing else of the project but :mod:`incisive_lab.errors`.
"""

from incisive_lab.cdm.codes import Code, concept
from incisive_lab.cdm.fhir import (
    EtlResult,
    SeriesSummary,
    StudySummary,
    read_clinical_rows,
    rows_to_fhir,
    workbook_to_fhir,
)
from incisive_lab.cdm.spreadsheet import read_numbered_rows, read_workbook, write_workbook
from incisive_lab.cdm.template import COLUMNS, Column, column, render_markdown, validate_row

__all__ = [
    "COLUMNS",
    "Code",
    "Column",
    "EtlResult",
    "SeriesSummary",
    "StudySummary",
    "column",
    "concept",
    "read_clinical_rows",
    "read_numbered_rows",
    "read_workbook",
    "render_markdown",
    "rows_to_fhir",
    "validate_row",
    "workbook_to_fhir",
    "write_workbook",
]
