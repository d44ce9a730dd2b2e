"""Helpers of the cohort tests: finding patients by attribute, adding studies and series."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from sqlalchemy import select

from incisive_lab.node._db import fhir_table, patients_table, series_table, studies_table
from incisive_lab.node.index import InstanceRecord
from incisive_lab.node.store import NodeStore

_serial = itertools.count(1)


def patients_by_cancer(store: NodeStore, code: str, dataset: str = "site-a") -> list[str]:
    """Pseudonyms of the patients whose indexed cancer type is `code`, sorted."""
    p = patients_table.c
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(select(p.patient_id).where(
            p.dataset == dataset, p.cancer_type_code == code)))


def all_patients(store: NodeStore, dataset: str = "site-a") -> list[str]:
    """Every pseudonym of `dataset`, sorted."""
    p = patients_table.c
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(select(p.patient_id).where(p.dataset == dataset)))


def studies_of(store: NodeStore, pid: str) -> list[tuple[str, str | None, str | None]]:
    """``(study_uid, study_date, patient_age)`` of a patient's studies."""
    s = studies_table.c
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(s.study_uid, s.study_date, s.patient_age).where(s.patient_id == pid))]


def modalities_of(store: NodeStore, study_uid: str) -> set[str]:
    s = series_table.c
    with store.engine.connect() as conn:
        return {r[0] for r in conn.execute(select(s.modality).where(s.study_uid == study_uid))}


def series_modality(store: NodeStore, series_uid: str) -> str | None:
    s = series_table.c
    with store.engine.connect() as conn:
        return conn.execute(select(s.modality).where(s.series_uid == series_uid)).scalar_one()  # type: ignore[no-any-return]


def _uid() -> str:
    return f"2.25.{990000000000 + next(_serial)}"


def add_series(store: NodeStore, pid: str, *, study_uid: str | None = None, modality: str = "MR",
               study_date: str = "20200101", body_part: str | None = None, rows: int = 256,
               instances: int = 1) -> tuple[str, str]:
    """Index a series (a new study unless `study_uid` is given) of patient `pid`; no objects."""
    study = study_uid or _uid()
    series = _uid()
    records = []
    for n in range(instances):
        sop = _uid()
        records.append(InstanceRecord(
            dataset="site-a", patient_id=pid, study_uid=study, series_uid=series, sop_uid=sop,
            sha256=hashlib.sha256(sop.encode()).hexdigest(), size=1, study_date=study_date,
            patient_age="070Y", modality=modality, body_part=body_part, rows=rows, columns=rows,
            instance_number=n + 1))
    store.index.add_instances(records)
    return study, series


def condition_of(store: NodeStore, pid: str) -> dict[str, Any]:
    f = fhir_table.c
    with store.engine.connect() as conn:
        content = conn.execute(select(f.content).where(
            f.resource_type == "Condition", f.patient_ref == f"Patient/{pid}")).scalar_one()
    return json.loads(content)  # type: ignore[no-any-return]
