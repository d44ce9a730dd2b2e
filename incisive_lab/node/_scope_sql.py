"""A read scope as one SQL condition (shared by the DICOMweb and FHIR searches).

A :class:`~incisive_lab.governance.scope.ReadScope` maps datasets to the patients a caller
may read; :func:`scope_condition` turns it into ``(dataset = d1 AND patient IN (...)) OR
...`` over the given columns, so filtering happens in the same statement as matching and
paging. Patient lists are rendered inline (``literal_execute``): a cohort of tens of
thousands of patients must not hit SQLite's bound-parameter limit. An empty scope is
``false``: nothing matches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, false, or_
from sqlalchemy.sql.elements import ColumnElement

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = ["scope_condition"]


def scope_condition(dataset_col: Any, patient_col: Any, scope: ReadScope, *,
                    prefix: str = "") -> ColumnElement[bool]:
    """``patient_col`` is in ``scope.cohorts[dataset_col]`` (values prefixed with ``prefix``,
    e.g. ``"Patient/"`` for FHIR references). A dataset in ``scope.whole`` is every patient
    of the dataset but ``whole[dataset]``: said as ``NOT IN`` those few instead of listing
    every patient."""
    cohorts, whole = scope.cohorts, scope.whole
    def values(patients: frozenset[str]) -> Any:
        return bindparam("scope", sorted(prefix + p for p in patients), expanding=True, literal_execute=True,
                         unique=True)

    parts: list[ColumnElement[bool]] = []
    for dataset, patients in sorted(cohorts.items()):
        if not patients:
            continue
        if dataset in whole:
            excluded = whole[dataset]
            parts.append(and_(dataset_col == dataset, patient_col.not_in(values(excluded)))
                         if excluded else dataset_col == dataset)
        else:
            parts.append(and_(dataset_col == dataset, patient_col.in_(values(patients))))
    return or_(*parts) if parts else false()
