"""Common data model: code tables (SNOMED CT, LOINC, ICD-O-3) and the clinical template.

* :mod:`incisive_lab.cdm.codes` — the code tables, loaded from ``data/codes.json``;
* :mod:`incisive_lab.cdm.template` — the clinical spreadsheet template (one
  :class:`~incisive_lab.cdm.template.Column` per column) and its documentation renderer;
* :mod:`incisive_lab.cdm.spreadsheet` — deterministic reading and writing of the workbook.

This package imports nothing else of the project.
"""

from incisive_lab.cdm.codes import Code, concept
from incisive_lab.cdm.spreadsheet import read_workbook, write_workbook
from incisive_lab.cdm.template import COLUMNS, Column, column, render_markdown, validate_row

__all__ = [
    "COLUMNS",
    "Code",
    "Column",
    "column",
    "concept",
    "read_workbook",
    "render_markdown",
    "validate_row",
    "write_workbook",
]
