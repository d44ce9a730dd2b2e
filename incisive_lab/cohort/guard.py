"""The defence against differencing: per-user overlap check and query budget.

Two suppressed-looking answers can still isolate a patient: ask for *all lung patients*
(23), then for *lung patients aged under 80* (22), and the difference is one person whose
other attributes the second query's complement reveals. The floor on each answer does not
stop this, because each answer is above the floor.

:class:`QueryGuard` keeps, in the node database (:mod:`incisive_lab.cohort._tables`), the
exact patient set (pseudonyms; they never leave the node) of every answer it let through,
per user and dataset, for a window of days. Before a new answer goes out it checks, for each
dataset, every remembered set ``Q`` of the same user against the new set ``P``:

* if ``0 < |P △ Q| < floor`` the query is **refused** (:class:`DifferencingRefused`),
  because the two counts would differ by fewer patients than the floor: their difference
  (or a difference of their complements) would be a small group the floor exists to hide;
* a pair where both counts were below the floor is skipped (neither answer showed a number);
* ``P == Q`` (a repeated or equivalent query) is allowed: it tells nothing new.

Independently, each user may ask at most ``daily_budget`` queries in any 24 hours at this
node (refused ones count too, so refusals cannot be used as a cheap oracle), else
:class:`BudgetExceeded`. The check and the recording of the new answer happen in one write
transaction, so two concurrent queries of one user cannot both slip past the check.

Limits (also in ``docs/cohort.md``): users who collude, or one person with several
accounts, are not compared with each other; chains of three or more queries whose pairwise
differences are all >= floor can still isolate people (e.g. A, B, A∪B arithmetic); a refusal
itself says that the difference is small; sets older than the window are forgotten; the
guard sees one node only, so a broker combining nodes needs its own check.

Examples
--------
>>> guard = QueryGuard(store.engine, daily_budget=50)                  # doctest: +SKIP
>>> guard.admit("alice", "3f1c...", {"site-a": frozenset(p)}, {"site-a": 10})  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping

from sqlalchemy import Connection, Engine, delete, func, insert, select

from incisive_lab.cohort._tables import answer_sets_table, queries_table
from incisive_lab.cohort.criteria import CohortError

__all__ = ["BudgetExceeded", "DifferencingRefused", "QueryGuard", "QueryRefused"]


class QueryRefused(CohortError):
    """The guard refused to answer (the message says why, never which patients)."""

    reason = "refused"


class DifferencingRefused(QueryRefused):
    """The answer would differ from an earlier answer of the same user by 1..floor-1 patients."""

    reason = "differencing"


class BudgetExceeded(QueryRefused):
    """The user has used up the query budget of the last 24 hours."""

    reason = "budget"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _instant(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class QueryGuard:
    """Per-user differencing check and daily budget, persisted in the node database.

    Parameters
    ----------
    engine
        The node database (``NodeStore.engine``); the tables exist once a store opened it.
    daily_budget
        Queries a user may ask in any 24 hours at this node (answered or refused).
    window_days
        How long answered patient sets are remembered (and compared with).
    max_remembered
        At most this many of a user's most recent answers are compared with (bounds the work
        per query; older ones within the window are still kept until the window passes).
    clock
        Returns the current time (aware); tests pass a fixed clock.
    """

    def __init__(self, engine: Engine, *, daily_budget: int = 200, window_days: int = 90,
                 max_remembered: int = 2000,
                 clock: Callable[[], dt.datetime] = _utc_now) -> None:
        for name, value in (("daily_budget", daily_budget), ("window_days", window_days),
                            ("max_remembered", max_remembered)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CohortError(f"guard: {name} must be a positive integer (got {value!r})")
        self.engine = engine
        self.daily_budget = daily_budget
        self.window = dt.timedelta(days=window_days)
        self.max_remembered = max_remembered
        self.clock = clock

    def __repr__(self) -> str:
        return (f"QueryGuard(daily_budget={self.daily_budget}, "
                f"window_days={self.window.days}, max_remembered={self.max_remembered})")

    def admit(self, user: str, criteria_sha256: str, sets: Mapping[str, frozenset[str]],
              floors: Mapping[str, int]) -> int:
        """Check a query's answer sets and, if allowed, remember them.

        Parameters
        ----------
        user
            The user's stable identifier (the token subject).
        criteria_sha256
            Hash of the canonical criteria (recorded for the audit of refusals).
        sets
            Dataset -> pseudonyms of the matching patients of this answer.
        floors
            Dataset -> the effective floor of the answer.

        Returns
        -------
        int
            The id of the recorded query.

        Raises
        ------
        BudgetExceeded, DifferencingRefused
            When the query must not be answered (the refusal is recorded).
        """
        if not isinstance(user, str) or not user.strip() or len(user) > 255:
            raise CohortError("user: a non-empty identifier of at most 255 characters is required")
        missing = set(sets) - set(floors)
        if missing:
            raise CohortError(f"guard: no floor for dataset(s) {', '.join(sorted(missing))}")
        now = self.clock()
        q, a = queries_table.c, answer_sets_table.c
        refusal: QueryRefused | None = None
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            old = [r[0] for r in conn.execute(select(q.id).where(q.asked_at < _instant(now - self.window)))]
            for batch in (old[i:i + 500] for i in range(0, len(old), 500)):
                conn.execute(delete(answer_sets_table).where(a.query_id.in_(batch)))
                conn.execute(delete(queries_table).where(q.id.in_(batch)))
            used = conn.execute(select(func.count()).select_from(queries_table).where(
                q.user_id == user, q.asked_at > _instant(now - dt.timedelta(days=1)))).scalar_one()
            if used >= self.daily_budget:
                refusal = BudgetExceeded(
                    f"query budget used up: at most {self.daily_budget} cohort queries in 24 hours")
            else:
                refusal = self._differencing(conn, user, sets, floors)
            row = {"user_id": user, "asked_at": _instant(now), "criteria_sha256": criteria_sha256,
                   "refused": refusal.reason if refusal else None}
            key = conn.execute(insert(queries_table).values(**row)).inserted_primary_key
            assert key is not None
            query_id = int(key[0])
            if refusal is None and sets:
                conn.execute(insert(answer_sets_table), [
                    {"query_id": query_id, "dataset": d, "n": len(p), "patients": json.dumps(sorted(p))}
                    for d, p in sets.items()])
        if refusal is not None:
            raise refusal
        return query_id

    def _differencing(self, conn: Connection, user: str, sets: Mapping[str, frozenset[str]],
                      floors: Mapping[str, int]) -> DifferencingRefused | None:
        q, a = queries_table.c, answer_sets_table.c
        ids = [r[0] for r in conn.execute(
            select(q.id).where(q.user_id == user, q.refused.is_(None))
            .order_by(q.id.desc()).limit(self.max_remembered))]
        if not ids:
            return None
        for dataset, new in sets.items():
            floor = floors[dataset]
            rows = conn.execute(select(a.n, a.patients).where(
                a.dataset == dataset, a.query_id >= min(ids),
                a.query_id.in_(select(q.id).where(q.user_id == user, q.refused.is_(None)))))
            for n, patients in rows:
                if n < floor and len(new) < floor:
                    continue  # neither answer showed a number
                if abs(n - len(new)) >= floor:
                    continue  # |P - Q| >= floor without reading the set
                diff = len(new.symmetric_difference(json.loads(patients)))
                if 0 < diff < floor:
                    return DifferencingRefused(
                        f"refused: on dataset {dataset!r} this answer would differ from one of "
                        f"your earlier answers by fewer patients than the floor ({floor}); "
                        "comparing the two could single out patients")
        return None
