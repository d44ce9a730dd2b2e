"""The FHIR store on SQLite and PostgreSQL: idempotent put, versions, search, count."""

from __future__ import annotations

import json
from typing import Any

import pytest

from incisive_lab.node import StoreError, canonical_json
from tests.node.conftest import OpenStore

SCT = "http://snomed.info/sct"


def _condition(cid: str, patient: str, code: str, onset: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid,
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": SCT, "code": code}]},
            "onsetDateTime": onset, **extra}


def test_put_is_idempotent(open_store: OpenStore) -> None:
    fhir = open_store().fhir
    res = {"resourceType": "Patient", "id": "PSN-1", "gender": "female"}
    first = fhir.put(res)
    assert (first.version_id, first.created, first.changed) == (1, True, True)
    stored = fhir.get("Patient", "PSN-1")
    assert stored is not None
    again = fhir.put(dict(reversed(list(res.items()))))  # same content, other key order
    assert (again.version_id, again.created, again.changed) == (1, False, False)
    with_meta = fhir.put(stored)  # meta.versionId/lastUpdated are not content
    assert not with_meta.changed
    assert fhir.get("Patient", "PSN-1") == stored
    assert stored["meta"] == {"versionId": "1", "lastUpdated": stored["meta"]["lastUpdated"]}
    assert fhir.count("Patient") == 1


def test_changed_content_makes_a_new_version(open_store: OpenStore) -> None:
    fhir = open_store().fhir
    fhir.put({"resourceType": "Patient", "id": "PSN-1", "gender": "female"})
    res = fhir.put({"resourceType": "Patient", "id": "PSN-1", "gender": "male",
                    "meta": {"profile": ["http://example.org/p"]}})
    assert (res.version_id, res.created, res.changed) == (2, False, True)
    got = fhir.get("Patient", "PSN-1")
    assert got is not None and got["gender"] == "male"
    assert got["meta"]["versionId"] == "2" and got["meta"]["profile"] == ["http://example.org/p"]


def test_put_many_in_one_batch_and_canonical_storage(open_store: OpenStore) -> None:
    store = open_store()
    results = store.fhir.put_many([
        {"resourceType": "Patient", "id": "A"},
        _condition("c1", "A", "363358000", "2020-01-05"),
        _condition("c1", "A", "363358000", "2020-01-06"),  # last one counts
    ], dataset="lung")
    assert [(r.resource_type, r.id) for r in results] == [("Patient", "A"), ("Condition", "c1")]
    with store.engine.connect() as conn:
        text = conn.exec_driver_sql(
            "SELECT content FROM fhir_resources WHERE id = 'c1'").scalar_one()
    assert text == canonical_json(json.loads(text)) and " " not in text
    assert json.loads(text)["onsetDateTime"] == "2020-01-06"
    assert store.fhir.counts_by_type(dataset="lung") == {"Condition": 1, "Patient": 1}


def test_search(open_store: OpenStore) -> None:
    fhir = open_store().fhir
    fhir.put_many([
        {"resourceType": "Patient", "id": "A"}, {"resourceType": "Patient", "id": "B"},
        _condition("c1", "A", "363358000", "2020-01-05"),
        _condition("c2", "A", "399068003", "2021-03-01"),
        _condition("c3", "B", "363358000", "2019-07-30T10:00:00Z"),
        {"resourceType": "Consent", "id": "k1", "status": "active",
         "patient": {"reference": "Patient/B"}, "dateTime": "2019-01-01"},
    ])
    assert [r["id"] for r in fhir.search("Condition", patient="A")] == ["c1", "c2"]
    assert [r["id"] for r in fhir.search("Condition", patient="Patient/B")] == ["c3"]
    assert [r["id"] for r in fhir.search("Consent", patient="B")] == ["k1"]
    assert [r["id"] for r in fhir.search("Patient", patient="A")] == ["A"]
    assert [r["id"] for r in fhir.search("Condition", code=(SCT, "363358000"))] == ["c1", "c3"]
    assert [r["id"] for r in fhir.search("Condition", code=(None, "399068003"))] == ["c2"]
    assert fhir.search("Condition", code=("http://other", "363358000")) == []
    assert [r["id"] for r in fhir.search("Condition", sort="-date")] == ["c2", "c1", "c3"]
    assert [r["id"] for r in fhir.search("Condition", sort="date", limit=1, offset=1)] == ["c1"]
    assert [r["id"] for r in fhir.search("Condition", date_from="2019-07-30",
                                         date_to="2020-01-05")] == ["c1", "c3"]
    assert [r["id"] for r in fhir.search("Condition", ids=["c2", "zz"])] == ["c2"]
    assert fhir.count("Condition", patient="A") == 2
    assert fhir.count() == 6
    assert fhir.get("Condition", "nope") is None
    with pytest.raises(StoreError, match="sort"):
        fhir.search("Condition", sort="name")


@pytest.mark.parametrize(("resource", "message"), [
    ({"id": "x"}, "resourceType None is missing"),
    ({"resourceType": "Patient"}, "FHIR Patient: id None is missing"),
    ({"resourceType": "Patient", "id": "bad id!"}, "id 'bad id!'"),
    ({"resourceType": "Patient", "id": "x", "n": float("nan")}, "not JSON-able"),
])
def test_invalid_resources_are_named(open_store: OpenStore, resource: dict[str, Any],
                                     message: str) -> None:
    fhir = open_store().fhir
    with pytest.raises(StoreError, match=message):
        fhir.put_many([{"resourceType": "Patient", "id": "ok"}, resource])
    assert fhir.count() == 0  # nothing of the batch was written
