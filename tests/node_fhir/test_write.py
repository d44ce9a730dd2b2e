"""Consent create/update: stewards only, validated (R4B), the patient must exist."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B.consent import Consent

from incisive_lab.node.fhir_api import FhirApi
from incisive_lab.node.store import NodeStore
from tests.node_fhir.conftest import BASE

STEWARD = {"steward"}


def consent(patient: str, status: str = "active") -> dict[str, Any]:
    """A minimal research opt-in Consent for ``patient``."""
    return {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": "2024-03-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}]},
        "provision": {"type": "permit"},
    }


@pytest.fixture
def node(writable_node: NodeStore) -> tuple[FhirApi, str]:
    return FhirApi(writable_node.fhir), writable_node.fhir.search("Patient")[0]["id"]


def test_steward_creates_then_updates_a_consent(node: tuple[FhirApi, str],
                                                writable_node: NodeStore) -> None:
    api, patient = node
    body = consent(patient)
    body["id"] = "client-chosen"           # ignored on create
    r = api.handle("POST", "Consent", body=body, base_url=BASE, roles=STEWARD)
    assert r.status == 201, r.body
    new_id = r.body["id"]
    assert new_id != "client-chosen"
    assert r.headers["Location"] == f"{BASE}/Consent/{new_id}/_history/1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.body["meta"]["versionId"] == "1" and r.body["meta"]["lastUpdated"]
    assert r.resources == (f"Consent/{new_id}",)
    Consent.model_validate(r.body)
    stored = writable_node.fhir.info("Consent", new_id)
    assert stored is not None and stored.dataset == "site-a"
    assert stored.patient_ref == f"Patient/{patient}"
    # it is found by a search on its patient
    found = api.handle("GET", "Consent", {"patient": patient, "date": "2024-03"}, base_url=BASE)
    assert [e["resource"]["id"] for e in found.body["entry"]] == [new_id]

    changed = copy.deepcopy(r.body)
    changed["status"] = "inactive"
    u = api.handle("PUT", f"Consent/{new_id}", body=changed, base_url=BASE, roles=STEWARD)
    assert u.status == 200, u.body
    assert u.body["status"] == "inactive" and u.body["meta"]["versionId"] == "2"
    assert u.headers["ETag"] == 'W/"2"'
    same = api.handle("PUT", f"Consent/{new_id}", body=changed, base_url=BASE, roles=STEWARD)
    assert same.status == 200 and same.body["meta"]["versionId"] == "2"
    read = api.handle("GET", f"Consent/{new_id}", base_url=BASE)
    assert read.body == same.body


def test_update_of_an_ingested_consent_and_absolute_patient_reference(
        node: tuple[FhirApi, str], writable_node: NodeStore) -> None:
    api, patient = node
    existing = writable_node.fhir.search("Consent", patient=patient)[0]
    body = copy.deepcopy(existing)
    body["status"] = "inactive"
    body["patient"] = {"reference": f"{BASE}/Patient/{patient}"}
    r = api.handle("PUT", ["Consent", existing["id"]], body=body, base_url=BASE, roles=STEWARD)
    assert r.status == 200, r.body
    assert r.body["patient"]["reference"] == f"Patient/{patient}"
    assert r.body["meta"]["versionId"] == "2"


@pytest.mark.parametrize("roles", [set(), {"researcher"}, {"data-user", "Steward"}])
def test_writes_without_the_steward_role_are_forbidden(node: tuple[FhirApi, str],
                                                       roles: set[str]) -> None:
    api, patient = node
    r = api.handle("POST", "Consent", body=consent(patient), base_url=BASE, roles=roles)
    assert r.status == 403 and r.body["issue"][0]["code"] == "forbidden"
    existing = api.handle("GET", "Consent", base_url=BASE).body["entry"][0]["resource"]
    u = api.handle("PUT", f"Consent/{existing['id']}", body=existing, base_url=BASE,
                   roles=roles)
    assert u.status == 403


def _bad(mutate: Any) -> dict[str, Any]:
    body = consent("PLACEHOLDER")
    mutate(body)
    return body


@pytest.mark.parametrize(("body", "needle"), [
    ("not json object", "must be a JSON object"),
    ({"resourceType": "Patient"}, "does not match"),
    (_bad(lambda b: b.pop("scope")), "scope: Field required"),
    (_bad(lambda b: b.update(status="maybe")), "Consent.status 'maybe'"),
    (_bad(lambda b: b.update(unknownElement=1)), "unknownElement"),
    (_bad(lambda b: b.update(dateTime="yesterday")), "dateTime"),
    (_bad(lambda b: b.pop("patient")), "patient.reference is required"),
    (_bad(lambda b: b.update(patient={"reference": "Group/1"})), "is not Patient/<id>"),
    (_bad(lambda b: b.update(patient={"reference": "Patient/PSN-MISSING"})), "does not exist"),
])
def test_invalid_consents_are_refused(node: tuple[FhirApi, str], body: Any,
                                      needle: str) -> None:
    api, patient = node
    if isinstance(body, dict) and body.get("patient", {}).get("reference") == "Patient/PLACEHOLDER":
        body = {**body, "patient": {"reference": f"Patient/{patient}"}}
    r = api.handle("POST", "Consent", body=body, base_url=BASE, roles=STEWARD)
    assert r.status == 400, r.body
    assert needle in r.body["issue"][0]["diagnostics"], r.body


def test_update_rules(node: tuple[FhirApi, str]) -> None:
    api, patient = node
    body = consent(patient)
    missing = api.handle("PUT", "Consent/no-such", body={**body, "id": "no-such"},
                         base_url=BASE, roles=STEWARD)
    assert missing.status == 405 and "create it with POST" in missing.body["issue"][0]["diagnostics"]
    created = api.handle("POST", "Consent", body=body, base_url=BASE, roles=STEWARD).body
    no_id = api.handle("PUT", f"Consent/{created['id']}", body=body, base_url=BASE, roles=STEWARD)
    assert no_id.status == 400 and "must equal" in no_id.body["issue"][0]["diagnostics"]
    other = api.handle("PUT", f"Consent/{created['id']}", body={**body, "id": "other"},
                       base_url=BASE, roles=STEWARD)
    assert other.status == 400
    bad_id = api.handle("PUT", "Consent/a'b", body=body, base_url=BASE, roles=STEWARD)
    assert bad_id.status == 400
