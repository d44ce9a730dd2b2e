"""The cohort engine and guard on the scale-out back-end (a throw-away PostgreSQL cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from incisive_lab.cohort import (
    DifferencingRefused,
    QueryGuard,
    evaluate,
    parse_criteria,
    run_cohort_query,
)
from incisive_lab.node.store import NodeStore

QUERIES: list[dict[str, Any]] = [
    {},
    {"clinical": {"cancer_type": "363346000", "sex": "male"}},
    {"clinical": {"treatment": "surgery", "stage": "I"}},
    {"clinical": {"biomarkers": [{"marker": "psa_ng_ml", "min": 1}]}},
    {"imaging": {"modality": "CT", "body_part": "CHEST", "rows": {"min": 256}}},
    {"imaging": {"study_date": {"from": "2016-01-01"}, "age_at_study": {"max": 70}}},
]


def test_same_matches_and_guard_on_postgresql(small_node: Path, tmp_path: Path, pg_cluster: Any) -> None:
    from incisive_lab.node.ingest import ingest

    root = small_node.parent
    url = pg_cluster.create_database()
    ingest(tmp_path / "node", dataset="site-a", dicom=root / "raw" / "a" / "dicom",
           clinical=root / "raw" / "a" / "clinical.xlsx", hosting="federated",
           secret_file=root / "keys" / "provider.key", country="GR", progress=False, db_url=url)
    with NodeStore.open(small_node) as lite_store, NodeStore.open(tmp_path / "node", url) as pg:
        for q in QUERIES:
            c = parse_criteria(q)
            assert evaluate(pg, c).patients == evaluate(lite_store, c).patients, q
        guard = QueryGuard(pg.engine)
        assert run_cohort_query(pg, {}, user="pg", guard=guard, floor=3).datasets[0].count.value == 6
        with pytest.raises(DifferencingRefused):
            run_cohort_query(pg, {"imaging": {"age_at_study": {"max": 75}}}, user="pg", guard=guard,
                             floor=3)
