"""A read scope as one SQL condition (shared by the DICOMweb and FHIR searches).

A :class:`~incisive_lab.governance.scope.ReadScope` maps datasets to the patients a caller
may read; :func:`scope_condition` turns it into ``(dataset = d1 AND patient IN (...)) OR
...`` over the given columns, so filtering happens in the same statement as matching and
paging. Patient lists are rendered inline (``literal_execute``): a cohort of tens of
thousands of patients must not hit SQLite's bound-parameter limit. An empty scope is
``false``: nothing matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, bindparam, false, or_
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["scope_condition"]


def scope_condition(dataset_col: Any, patient_col: Any, cohorts: Mapping[str, frozenset[str]], *,
                    prefix: str = "") -> ColumnElement[bool]:
    """``patient_col`` is in ``cohorts[dataset_col]`` (values prefixed with ``prefix``, e.g.
    ``"Patient/"`` for FHIR references)."""
    parts: list[ColumnElement[bool]] = []
    for dataset, patients in sorted(cohorts.items()):
        if not patients:
            continue
        values = sorted(prefix + p for p in patients)
        parts.append(and_(dataset_col == dataset,
                          patient_col.in_(bindparam(f"scope_{len(parts)}", values, expanding=True,
                                                    literal_execute=True, unique=True))))
    return or_(*parts) if parts else false()
