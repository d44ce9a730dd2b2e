"""Cohort queries at a node: criteria over clinical and imaging data, counted per patient,
with small-count suppression and a defence against differencing (issue 6).

Pure library code (no HTTP): the node service and the broker call
:func:`run_cohort_query`. See ``docs/cohort.md``.

Examples
--------
>>> from incisive_lab.cohort import QueryGuard, run_cohort_query       # doctest: +SKIP
>>> answer = run_cohort_query(store, {"imaging": {"modality": "CT"}}, user="alice",
...                           guard=QueryGuard(store.engine), floor=10)  # doctest: +SKIP
>>> answer.to_json()["datasets"][0]["count"]                            # doctest: +SKIP
'<10'
"""

from incisive_lab.cohort.criteria import BIOMARKERS, CohortError, Criteria, parse_criteria
from incisive_lab.cohort.disclosure import (
    DEFAULT_FLOOR,
    MIN_FLOOR,
    Count,
    disclose,
    effective_floor,
)
from incisive_lab.cohort.engine import CohortMatch, StudyMembers, evaluate
from incisive_lab.cohort.guard import BudgetExceeded, DifferencingRefused, QueryGuard, QueryRefused
from incisive_lab.cohort.query import CohortAnswer, DatasetAnswer, run_cohort_query

__all__ = [
    "BIOMARKERS",
    "DEFAULT_FLOOR",
    "MIN_FLOOR",
    "BudgetExceeded",
    "CohortAnswer",
    "CohortError",
    "CohortMatch",
    "Count",
    "Criteria",
    "DatasetAnswer",
    "DifferencingRefused",
    "QueryGuard",
    "QueryRefused",
    "StudyMembers",
    "disclose",
    "effective_floor",
    "evaluate",
    "parse_criteria",
    "run_cohort_query",
]
