"""The node's cohort query: criteria in, suppressed per-dataset counts out.

:func:`run_cohort_query` is the one entry point the node service (and a broker's node
adapter) calls. It

1. parses the criteria (fail closed: :class:`~incisive_lab.cohort.criteria.CohortError`),
2. evaluates them per dataset, per patient, without the withdrawn patients,
3. asks the :class:`~incisive_lab.cohort.guard.QueryGuard` to admit the exact patient sets
   (differencing check, budget) and remembers them,
4. returns a :class:`CohortAnswer` where each count is suppressed below the effective floor
   and rounded, and member lists appear only where the caller allowed them **and** the count
   was not suppressed (a list of 4 studies would disclose a suppressed count).

Which datasets are granted to the user and visible is decided elsewhere (governance); the
caller passes ``member_datasets``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from incisive_lab.cohort.criteria import CohortError, Criteria, parse_criteria
from incisive_lab.cohort.disclosure import Count, check_rounding, disclose, effective_floor
from incisive_lab.cohort.engine import StudyMembers, evaluate
from incisive_lab.cohort.guard import QueryGuard
from incisive_lab.node.store import NodeStore

__all__ = ["CohortAnswer", "DatasetAnswer", "run_cohort_query"]

#: Version of the answer's JSON form.
ANSWER_FORMAT = "incisive-cohort-answer/1"


@dataclass(frozen=True, slots=True)
class DatasetAnswer:
    """The answer for one dataset: a disclosed count and, where allowed, its members."""

    dataset: str
    count: Count
    members: tuple[StudyMembers, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"dataset", "count", "suppressed", "floor", "rounding"[, "members"]}``."""
        out: dict[str, Any] = {"dataset": self.dataset, "count": self.count.to_json(),
                               "suppressed": self.count.suppressed, "floor": self.count.floor,
                               "rounding": self.count.rounding}
        if self.members is not None:
            out["members"] = [m.to_json() for m in self.members]
        return out


@dataclass(frozen=True, slots=True)
class CohortAnswer:
    """A node's answer to a cohort query (safe to send: no count below the floor)."""

    criteria: Mapping[str, Any]
    datasets: tuple[DatasetAnswer, ...]
    query_id: int

    def to_json(self) -> dict[str, Any]:
        """The answer as JSON-serialisable data."""
        return {"format": ANSWER_FORMAT, "query_id": self.query_id, "criteria": dict(self.criteria),
                "datasets": [d.to_json() for d in self.datasets]}


def _floors(datasets: Collection[str], floor: int | Mapping[str, int],
            broker_floor: int | None) -> dict[str, int]:
    out = {}
    for name in datasets:
        if isinstance(floor, Mapping):
            if name not in floor:
                raise CohortError(f"floor: no floor given for dataset {name!r}")
            node_floor = floor[name]
        else:
            node_floor = floor
        out[name] = effective_floor(node_floor, broker_floor)
    return out


def run_cohort_query(store: NodeStore, criteria: Criteria | Mapping[str, Any], *, user: str,
                     guard: QueryGuard, floor: int | Mapping[str, int],
                     broker_floor: int | None = None, rounding: int = 1,
                     withdrawn: Collection[str] = frozenset(), members: bool = False,
                     member_datasets: Collection[str] = frozenset(),
                     datasets: Collection[str] | None = None) -> CohortAnswer:
    """Answer a cohort query at this node.

    Parameters
    ----------
    store
        The node.
    criteria
        Parsed :class:`Criteria` or the JSON query (parsed here).
    user
        Stable identifier of the asking user (for the guard).
    guard
        The differencing guard and budget (required: there is no unguarded mode).
    floor
        The node floor of every dataset (from its sharing terms), or dataset -> floor.
    broker_floor
        A floor the broker asks for; it can raise the node's, never lower it.
    rounding
        Round shown counts to a multiple of this (1 = exact).
    withdrawn
        Pseudonyms of patients who withdrew consent (never counted or listed).
    members
        Whether member lists (study and series UIDs) are asked for.
    member_datasets
        Datasets for which the caller's policy allows member lists (granted and visible).
    datasets
        Datasets to query (default: every dataset of the node).

    Raises
    ------
    CohortError
        For bad criteria, floors, rounding or datasets.
    QueryRefused
        When the guard refuses (differencing, budget); nothing is disclosed.
    """
    parsed = criteria if isinstance(criteria, Criteria) else parse_criteria(criteria)
    if not isinstance(withdrawn, Collection) or isinstance(withdrawn, str):
        raise CohortError("withdrawn: must be a collection of pseudonyms")
    held = [d.name for d in store.index.datasets()]
    names = held if datasets is None else list(dict.fromkeys(datasets))
    floors = _floors(names, floor, broker_floor)
    check_rounding(rounding)
    members_for = frozenset(member_datasets) & frozenset(names) if members else frozenset()
    match = evaluate(store, parsed, datasets=names, withdrawn=frozenset(withdrawn),
                     members_for=members_for)
    query_id = guard.admit(user, parsed.sha256(), match.patients, floors)
    answers = []
    for name in names:
        count = disclose(len(match.patients[name]), floor=floors[name], rounding=rounding)
        listed = match.members.get(name) if name in members_for and not count.suppressed else None
        answers.append(DatasetAnswer(name, count, listed))
    return CohortAnswer(parsed.to_json(), tuple(answers), query_id)
