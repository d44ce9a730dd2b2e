"""Curation: quality checks on a provider's raw input, before de-identification.

:func:`run_curation` checks a folder of DICOM files and the clinical spreadsheet (pixel data
decodable, required attributes of the IOD, series geometry, duplicate SOP instances, modality and
body part codes, plausible dates, clinical completeness per cancer type, links between studies
and clinical rows) and returns a :class:`CurationResult`: findings, what is quarantined and why,
counts, and the normalised codes of each series. It writes itself as JSON
(:meth:`CurationResult.write_json`) and as an HTML page for the data steward
(:meth:`CurationResult.write_html`). See ``docs/curation.md``.
"""

from incisive_lab.curation.bodypart import CodedConcept, body_part_code, modality_code
from incisive_lab.curation.checks import read_clinical, run_curation
from incisive_lab.curation.findings import CHECKS, Check, Finding, QuarantinedItem
from incisive_lab.curation.result import CurationResult, SeriesSummary

__all__ = [
    "CHECKS",
    "Check",
    "CodedConcept",
    "CurationResult",
    "Finding",
    "QuarantinedItem",
    "SeriesSummary",
    "body_part_code",
    "modality_code",
    "read_clinical",
    "run_curation",
]
