"""run_cohort_query: suppressed answers, members policy, the differencing guard and budget."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
from sqlalchemy import func, select

from incisive_lab.cohort import (
    BudgetExceeded,
    CohortError,
    DifferencingRefused,
    QueryGuard,
    run_cohort_query,
)
from incisive_lab.cohort._tables import answer_sets_table, queries_table
from incisive_lab.node.store import NodeStore

from ._helpers import all_patients, patients_by_cancer, studies_of

LUNG, COLORECTAL, PROSTATE, BREAST = "363358000", "363510005", "399068003", "254837009"


def _ask(store: NodeStore, guard: QueryGuard, query: dict[str, Any], user: str = "alice",
         **kw: Any) -> dict[str, Any]:
    kw.setdefault("floor", 3)
    answer = run_cohort_query(store, query, user=user, guard=guard, **kw)
    out = answer.to_json()
    assert json.loads(json.dumps(out)) == out  # JSON-serialisable, as is
    return out


def test_answer_shape_and_json(cohort_node: NodeStore, guard: QueryGuard) -> None:
    out = _ask(cohort_node, guard, {"imaging": {"modality": ["MR", "CT"]}}, user="shape")
    assert out["format"] == "incisive-cohort-answer/1"
    assert out["criteria"] == {"imaging": {"modality": ["CT", "MR"]}}
    [ds] = out["datasets"]
    assert ds == {"dataset": "site-a", "count": 5, "suppressed": False, "floor": 3, "rounding": 1}


def test_counts_below_the_floor_are_never_numbers(cohort_node: NodeStore, guard: QueryGuard) -> None:
    out = _ask(cohort_node, guard, {"clinical": {"cancer_type": BREAST}}, user="floor", floor=10)
    assert out["datasets"][0]["count"] == "<10" and out["datasets"][0]["suppressed"] is True
    zero = _ask(cohort_node, guard, {"imaging": {"annotations": True}}, user="floor", floor=10)
    assert zero["datasets"][0]["count"] == "<10"  # zero is suppressed too


def test_broker_floor_raises_never_lowers(cohort_node: NodeStore, guard: QueryGuard) -> None:
    assert _ask(cohort_node, guard, {}, user="broker", floor=3, broker_floor=1)["datasets"][0]["count"] == 6
    assert _ask(cohort_node, guard, {}, user="broker", floor=3, broker_floor=7)["datasets"][0]["count"] == "<7"
    assert _ask(cohort_node, guard, {}, user="broker2", floor={"site-a": 5})["datasets"][0]["floor"] == 5


def test_rounding(cohort_node: NodeStore, guard: QueryGuard) -> None:
    assert _ask(cohort_node, guard, {}, user="round", rounding=5)["datasets"][0]["count"] == 5
    assert _ask(cohort_node, guard, {}, user="round", rounding=10)["datasets"][0]["count"] == 10
    with pytest.raises(CohortError, match="rounding"):
        _ask(cohort_node, guard, {}, user="round", rounding=0)


def test_withdrawn_patients_are_excluded_from_counts_and_members(cohort_node: NodeStore,
                                                                 guard: QueryGuard) -> None:
    [prostate] = patients_by_cancer(cohort_node, PROSTATE)
    out = _ask(cohort_node, guard, {}, user="withdrawn", withdrawn={prostate}, members=True,
               member_datasets={"site-a"})
    assert out["datasets"][0]["count"] == 5
    listed = {m["study_uid"] for m in out["datasets"][0]["members"]}
    assert listed and not listed & {s for s, _, _ in studies_of(cohort_node, prostate)}


def test_members_only_for_allowed_datasets_and_unsuppressed_counts(cohort_node: NodeStore,
                                                                    guard: QueryGuard) -> None:
    q = {"imaging": {"modality": "CT"}}
    assert "members" not in _ask(cohort_node, guard, q, user="m1", members=True)["datasets"][0]
    assert "members" not in _ask(cohort_node, guard, q, user="m2", member_datasets={"site-a"})["datasets"][0]
    shown = _ask(cohort_node, guard, q, user="m3", members=True, member_datasets={"site-a"})["datasets"][0]
    assert shown["count"] == 4 and len(shown["members"]) == 4
    hidden = _ask(cohort_node, guard, q, user="m4", members=True, member_datasets={"site-a"},
                  floor=10)["datasets"][0]
    assert hidden["count"] == "<10" and "members" not in hidden  # a list would disclose the count


def test_bad_inputs(cohort_node: NodeStore, guard: QueryGuard) -> None:
    with pytest.raises(CohortError, match="datasets: 'elsewhere'"):
        _ask(cohort_node, guard, {}, user="bad", datasets=["elsewhere"])
    with pytest.raises(CohortError, match="no floor given for dataset 'site-a'"):
        _ask(cohort_node, guard, {}, user="bad", floor={"other": 10})
    with pytest.raises(CohortError, match="node floor"):
        _ask(cohort_node, guard, {}, user="bad", floor=2)
    with pytest.raises(CohortError, match="user"):
        _ask(cohort_node, guard, {}, user=" ")
    with pytest.raises(CohortError, match=r"clinical\.cancer_type"):
        _ask(cohort_node, guard, {"clinical": {"cancer_type": "1"}}, user="bad")


# --- the differencing defence ----------------------------------------------------------------

def test_differencing_scenario_is_refused(cohort_node: NodeStore, guard: QueryGuard) -> None:
    """Query A (all patients), then A minus one patient's distinguishing attribute."""
    everyone = all_patients(cohort_node)
    [breast] = patients_by_cancer(cohort_node, BREAST)
    a = _ask(cohort_node, guard, {}, user="mallory")
    assert a["datasets"][0]["count"] == len(everyone) == 6
    # the breast patient is the only one aged 78 at her study: "at most 75" drops just her
    without_her = {"imaging": {"age_at_study": {"max": 75}}}
    with pytest.raises(DifferencingRefused, match="fewer patients than the floor") as info:
        _ask(cohort_node, guard, without_her, user="mallory")
    assert breast not in str(info.value)  # the refusal names no patient
    # the same query is fine for a user who did not ask A (no pair to subtract) ...
    assert _ask(cohort_node, guard, without_her, user="trent")["datasets"][0]["count"] == 5
    # ... and repeating A (identical set) is allowed
    assert _ask(cohort_node, guard, {}, user="mallory")["datasets"][0]["count"] == 6


def test_differencing_by_a_whole_group_of_floor_size_is_allowed(cohort_node: NodeStore,
                                                                guard: QueryGuard) -> None:
    _ask(cohort_node, guard, {}, user="carol")                                       # 6 patients
    out = _ask(cohort_node, guard, {"clinical": {"cancer_type": [LUNG, PROSTATE]}}, user="carol")
    assert out["datasets"][0]["count"] == 3                                          # 3 apart: allowed
    with pytest.raises(DifferencingRefused):                                         # 2 apart from A
        _ask(cohort_node, guard, {"clinical": {"cancer_type": [LUNG, COLORECTAL]}}, user="carol")


def test_refused_query_leaves_no_remembered_set(cohort_node: NodeStore, guard: QueryGuard) -> None:
    _ask(cohort_node, guard, {}, user="dave")
    with pytest.raises(DifferencingRefused):
        _ask(cohort_node, guard, {"clinical": {"cancer_type": [LUNG, COLORECTAL, PROSTATE]}}, user="dave")
    q, a = queries_table.c, answer_sets_table.c
    with cohort_node.engine.connect() as conn:
        rows = conn.execute(select(q.id, q.refused).where(q.user_id == "dave").order_by(q.id)).all()
        assert [r.refused for r in rows] == [None, "differencing"]
        sets = conn.execute(select(func.count()).select_from(answer_sets_table)
                            .where(a.query_id == rows[1].id)).scalar_one()
    assert sets == 0


def test_both_suppressed_answers_are_not_compared(cohort_node: NodeStore, guard: QueryGuard) -> None:
    _ask(cohort_node, guard, {"clinical": {"cancer_type": LUNG}}, user="erin", floor=10)       # 2: "<10"
    out = _ask(cohort_node, guard, {"clinical": {"cancer_type": BREAST}}, user="erin", floor=10)
    assert out["datasets"][0]["count"] == "<10"                                               # 1: "<10"


def test_window_forgets_old_answers(cohort_node: NodeStore) -> None:
    now = [dt.datetime(2030, 1, 1, tzinfo=dt.UTC)]
    guard = QueryGuard(cohort_node.engine, window_days=7, clock=lambda: now[0])
    _ask(cohort_node, guard, {}, user="frank")
    with pytest.raises(DifferencingRefused):
        _ask(cohort_node, guard, {"imaging": {"age_at_study": {"max": 75}}}, user="frank")
    now[0] += dt.timedelta(days=8)
    assert _ask(cohort_node, guard, {"imaging": {"age_at_study": {"max": 75}}}, user="frank")


def test_daily_budget(cohort_node: NodeStore) -> None:
    now = [dt.datetime(2031, 1, 1, tzinfo=dt.UTC)]
    guard = QueryGuard(cohort_node.engine, daily_budget=3, clock=lambda: now[0])
    for _ in range(3):
        _ask(cohort_node, guard, {}, user="grace")
    with pytest.raises(BudgetExceeded, match="at most 3 cohort queries in 24 hours"):
        _ask(cohort_node, guard, {}, user="grace")
    assert _ask(cohort_node, guard, {}, user="heidi")  # budgets are per user
    now[0] += dt.timedelta(hours=23)
    with pytest.raises(BudgetExceeded):  # refusals count too: still 4 in the last 24 h
        _ask(cohort_node, guard, {}, user="grace")
    now[0] += dt.timedelta(hours=25)
    assert _ask(cohort_node, guard, {}, user="grace")


def test_guard_settings_are_checked(cohort_node: NodeStore) -> None:
    with pytest.raises(CohortError, match="daily_budget"):
        QueryGuard(cohort_node.engine, daily_budget=0)
    with pytest.raises(CohortError, match="window_days"):
        QueryGuard(cohort_node.engine, window_days=True)  # type: ignore[arg-type]


# --- property: no answer ever carries a number below the floor -------------------------------

def _random_query(rng: random.Random) -> dict[str, Any]:
    clinical: dict[str, Any] = {}
    imaging: dict[str, Any] = {}
    if rng.random() < 0.4:
        clinical["cancer_type"] = rng.sample([LUNG, COLORECTAL, PROSTATE, BREAST, "363346000"], rng.randint(1, 2))
    if rng.random() < 0.3:
        clinical["sex"] = rng.choice(["female", "male", ["female", "male"]])
    if rng.random() < 0.2:
        lo = rng.randint(30, 80)
        clinical["age_at_diagnosis"] = {"min": lo, "max": lo + rng.randint(0, 30)}
    if rng.random() < 0.2:
        clinical["stage"] = rng.sample(["I", "II", "III", "IV", "IA", "IIB"], 2)
    if rng.random() < 0.2:
        clinical["treatment"] = rng.choice(["surgery", "chemotherapy", "radiotherapy", "active-surveillance"])
    if rng.random() < 0.15:
        clinical["biomarkers"] = [rng.choice([{"marker": "er_status", "value": "positive"},
                                              {"marker": "psa_ng_ml", "min": rng.randint(0, 20)},
                                              {"marker": "kras_mutation", "value": "mutated"}])]
    if rng.random() < 0.2:
        year = rng.randint(2008, 2024)
        clinical["diagnosis_date"] = {"from": f"{year}-01-01"}
    if rng.random() < 0.4:
        imaging["modality"] = rng.sample(["CT", "MR", "MG", "OT"], rng.randint(1, 2))
    if rng.random() < 0.2:
        imaging["body_part"] = rng.choice(["CHEST", "ABDOMEN", "BREAST", "PROSTATE"])
    if rng.random() < 0.2:
        imaging["rows"] = {"min": rng.choice([128, 256, 512])}
    if rng.random() < 0.2:
        imaging["age_at_study"] = {"max": rng.randint(50, 90)}
    if rng.random() < 0.1:
        imaging["annotations"] = rng.random() < 0.5
    out: dict[str, Any] = {}
    if clinical:
        out["clinical"] = clinical
    if imaging:
        out["imaging"] = imaging
    return out


def _check_no_small_numbers(store: NodeStore, seed: int, queries: int) -> tuple[int, int]:
    rng = random.Random(seed)
    guard = QueryGuard(store.engine, daily_budget=100_000)
    shown = suppressed = 0
    for i in range(queries):
        floor = rng.choice([3, 5, 10, 11])
        rounding = rng.choice([1, 1, 5, 10])
        try:
            out = _ask(store, guard, _random_query(rng), user=f"prop-{seed}-{i % 7}", floor=floor,
                       broker_floor=rng.choice([None, 2, 12]), rounding=rounding, members=True,
                       member_datasets={"site-a"})
        except DifferencingRefused:
            continue
        for ds in out["datasets"]:
            count = ds["count"]
            if isinstance(count, int):
                assert count >= ds["floor"] >= floor, (count, ds)
                assert len(ds.get("members", [])) >= 0
                shown += 1
            else:
                assert count == f"<{ds['floor']}" and ds["suppressed"] and "members" not in ds
                suppressed += 1
        text = json.dumps(out)
        for patient in all_patients(store):
            assert patient not in text  # pseudonyms never leave the node in an answer
    return shown, suppressed


def test_property_small_node_never_discloses_a_number_below_the_floor(cohort_node: NodeStore) -> None:
    shown, suppressed = _check_no_small_numbers(cohort_node, seed=1, queries=150)
    assert shown and suppressed  # both branches exercised


def test_property_full_site_never_discloses_a_number_below_the_floor(full_node: NodeStore) -> None:
    shown, suppressed = _check_no_small_numbers(full_node, seed=2, queries=120)
    assert shown and suppressed


def test_differencing_on_the_full_site_with_floor_10(full_node: NodeStore) -> None:
    guard = QueryGuard(full_node.engine)
    everyone = _ask(full_node, guard, {}, user="oscar", floor=10)
    assert everyone["datasets"][0]["count"] == len(all_patients(full_node)) >= 10
    # drop the patients of one small group (fewer than 10) by a criterion
    prostate = len(patients_by_cancer(full_node, PROSTATE))
    assert 0 < prostate < 10
    with pytest.raises(DifferencingRefused):
        _ask(full_node, guard, {"clinical": {"cancer_type": [LUNG, COLORECTAL, BREAST]}}, user="oscar",
             floor=10)
