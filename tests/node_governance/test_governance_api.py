"""Governance over HTTP on a real node service with the real identity provider: a steward
sets terms, a researcher asks, the steward approves with a cohort, a patient withdraws, and
the steward reads what happened to that patient's data — every step in the node's ledger."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.governance.store import Governance
from incisive_lab.ledger import Ledger, QueryResult
from incisive_lab.node.service import ServiceSettings
from incisive_lab.node.store import NodeStore
from tests._support.idp import Idp, start_idp
from tests._support.node_server import serve_node

AUDIENCE = "https://node-a.test/"
TERMS = {"hosting": "federated", "visibility": "visible", "organisations": ["*"],
         "roles": ["researcher", "annotator"], "purposes": ["ai-development", "cancer-research"],
         "min_loa": "substantial", "floor": 10, "expires": None}


class Node:
    def __init__(self, url: str, idp: Idp, root: Path) -> None:
        self.url, self.idp, self.root = url, idp, root
        self._tokens: dict[str, str] = {}

    def h(self, user: str, purpose: str = "ai-development") -> dict[str, str]:
        if user not in self._tokens:
            self._tokens[user] = self.idp.token(user)
        return {"Authorization": f"Bearer {self._tokens[user]}", "X-Purpose": purpose}

    def call(self, method: str, path: str, user: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.h(user), timeout=30, **kw)

    def events(self) -> list[Any]:
        with Ledger.open(self.root, read_only=True) as ledger:
            return [e.event for e in ledger.entries()]


@pytest.fixture(scope="module")
def node(small_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("gov")
    root = base / "node"
    shutil.copytree(small_node, root, symlinks=True)
    with start_idp(base / "idp", audience=AUDIENCE) as idp, \
            serve_node(ServiceSettings(node_dir=root, issuer=idp.issuer, audience=AUDIENCE)) as url:
        yield Node(url, idp, root)


def test_terms_request_grant_withdrawal_and_the_patient_report(node: Node) -> None:
    with NodeStore.open(node.root) as store:
        dataset = store.index.datasets()[0].name
        everyone = {s.patient_id for s in store.index.studies(dataset=dataset)}
        # patients whose ingested Consent is not active (the synthetic set has a draft) never join a cohort
        patients = sorted(everyone - Governance(store.engine, None).withdrawn(dataset))
    assert len(patients) >= 4
    # terms: stewards only; anyone may read them
    assert node.call("PUT", f"/governance/terms/{dataset}", "researcher", json=TERMS).status_code == 403
    r = node.call("PUT", f"/governance/terms/{dataset}", "steward", json={**TERMS, "floor": 1})
    assert r.status_code == 400 and "floor" in r.json()["message"]
    r = node.call("PUT", f"/governance/terms/{dataset}", "steward", json=TERMS)
    assert r.status_code == 200 and r.json()["version"] == 1
    assert node.call("GET", f"/governance/terms/{dataset}", "researcher").json()["floor"] == 10
    assert node.call("GET", "/governance/terms/no-such-dataset", "researcher").status_code == 404
    # a request outside the terms is refused and ledgered; a good one is pending
    r = node.call("POST", "/governance/requests", "researcher",
                  json={"dataset": dataset, "purpose": "education", "project": "course"})
    assert r.status_code == 403 and r.json()["error"] == "purpose-not-permitted"
    r = node.call("POST", "/governance/requests", "researcher",
                  json={"dataset": dataset, "purpose": "ai-development", "project": "nodules"})
    assert r.status_code == 201
    request_id = r.json()["request_id"]
    assert node.call("POST", f"/governance/requests/{request_id}/approve", "researcher", json={}).status_code == 403
    pending = node.call("GET", "/governance/requests?status=pending", "steward").json()
    assert [p["request_id"] for p in pending] == [request_id]
    r = node.call("POST", f"/governance/requests/{request_id}/approve", "steward",
                  json={"days": 30, "members": patients[:3]})
    assert r.status_code == 200 and r.json()["members"] == 3
    grants = node.call("GET", "/governance/grants", "researcher").json()
    assert [(g["dataset"], g["members"]) for g in grants] == [(dataset, 3)]
    # withdrawal: the grant shrinks at once
    r = node.call("POST", "/governance/withdrawals", "steward", json={"dataset": dataset, "patient": patients[0]})
    assert r.status_code == 200 and r.json()["grants_shrunk"] == [grants[0]["grant_id"]]
    assert node.call("GET", "/governance/grants", "researcher").json()[0]["members"] == 2
    assert node.call("POST", "/governance/withdrawals", "researcher",
                     json={"dataset": dataset, "patient": patients[1]}).status_code == 403
    assert node.call("POST", "/governance/withdrawals", "steward",
                     json={"dataset": dataset, "patient": "PSN-NOBODY"}).status_code == 404
    # the steward's "what happened to my data": verifiable, naming the withdrawal
    report = node.call("GET", f"/governance/patients/{patients[0]}/report", "steward")
    assert report.status_code == 200
    body = report.json()
    assert body["withdrawn"] == [dataset]
    result = QueryResult.from_dict({"checkpoint": body["checkpoint"], "entries": body["entries"]})
    with Ledger.open(node.root, read_only=True) as ledger:
        result.verify(ledger.verifier)
    assert any('"withdraw"' in e["data"] and '"consent"' in e["data"] for e in body["entries"])
    assert node.call("GET", f"/governance/patients/{patients[0]}/report", "researcher").status_code == 403
    kinds = {(e.kind, e.action, e.outcome.allowed) for e in node.events()}
    for step in [("terms", "set", True), ("request", "submit", False), ("request", "submit", True),
                 ("request", "approve", True), ("grant", "grant", True), ("consent", "withdraw", True),
                 ("grant", "modify", True)]:
        assert step in kinds, step


def test_cohort_counts_follow_the_terms_the_floor_grants_and_withdrawals(node: Node) -> None:
    """Runs after the life-cycle test: terms are set, the researcher holds a grant of 2 patients."""
    with NodeStore.open(node.root) as store:
        dataset = store.index.datasets()[0].name
    query = {"criteria": {"imaging": {"modality": ["CT", "MR", "MG"]}}, "members": True}
    # no purpose the terms permit: denied per dataset, and ledgered
    r = httpx.post(node.url + "/cohort/count", json=query, headers=node.h("researcher", "education"))
    assert r.status_code == 200 and r.json()["denied"] == {dataset: "purpose-not-permitted"}
    # the small node has 6 patients (one withdrawn): below the floor of 10, so no number and no members
    r = httpx.post(node.url + "/cohort/count", json=query, headers=node.h("researcher"))
    (answer,) = r.json()["datasets"]
    assert answer["count"] == "<10" and answer["suppressed"] and "members" not in answer
    # a lower floor (terms v2) lets the count through; members only for the grant's cohort
    assert node.call("PUT", f"/governance/terms/{dataset}", "steward", json={**TERMS, "floor": 3}).status_code == 200
    r = httpx.post(node.url + "/cohort/count", json=query, headers=node.h("researcher"))
    (answer,) = r.json()["datasets"]
    with NodeStore.open(node.root) as store:
        everyone = {s.patient_id for s in store.index.studies(dataset=dataset)}
        not_consenting = Governance(store.engine, None).withdrawn(dataset)
    assert 1 <= len(not_consenting) < len(everyone)
    assert answer["count"] == len(everyone - not_consenting)  # the withdrawn and the draft consent left out
    with NodeStore.open(node.root) as store:
        assert [g["members"] for g in node.call("GET", "/governance/grants", "researcher").json()] == [2]
        studies = {s.study_uid: s.patient_id for s in store.index.studies(dataset=dataset)}
    listed = {m["study_uid"] for m in answer["members"]}
    grant_patients = {studies[s] for s in listed}
    assert len(grant_patients) == 2, "member lists cover the grant's cohort only"
    # a broker floor below the node's is ignored; an annotator without a grant gets no members
    r = httpx.post(node.url + "/cohort/count", json={**query, "broker_floor": 2}, headers=node.h("annotator"))
    (answer,) = r.json()["datasets"]
    assert answer["floor"] == 3 and "members" not in answer
    bad = httpx.post(node.url + "/cohort/count", json={"criteria": {"imaging": {"modality": ["XX"]}}},
                     headers=node.h("researcher"))
    assert bad.status_code == 400 and "modality" in bad.json()["message"]
    cohort_events = [e for e in node.events() if e.kind == "query" and e.action == "cohort"]
    assert len(cohort_events) >= 4
    assert any(not e.outcome.allowed for e in cohort_events)


def test_a_consent_set_inactive_through_fhir_is_a_withdrawal(node: Node) -> None:
    with NodeStore.open(node.root) as store:
        dataset = store.index.datasets()[0].name
        before = Governance(store.engine, None).withdrawn(dataset)
    bundle = node.call("GET", "/fhir/Consent", "steward", params={"_count": "50"}).json()
    consents = [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Consent"]
    consent = next(c for c in consents if c["patient"]["reference"].removeprefix("Patient/") not in before
                   and c["status"] == "active")
    patient = consent["patient"]["reference"].removeprefix("Patient/")
    r = node.call("PUT", f"/fhir/Consent/{consent['id']}", "steward", json={**consent, "status": "inactive"})
    assert r.status_code == 200, r.text
    with NodeStore.open(node.root) as store:
        assert patient in Governance(store.engine, None).withdrawn(dataset)
    withdrawals = [e for e in node.events() if e.kind == "consent" and e.action == "withdraw"]
    assert any(e.details["patient"] == patient for e in withdrawals)


def test_the_catalogue_lists_records_with_the_terms_in_force_and_is_ledgered(node: Node) -> None:
    with NodeStore.open(node.root) as store:
        names = sorted(d.name for d in store.index.datasets())
    r = node.call("GET", "/catalogue", "researcher")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    body = r.json()
    assert body["format"] == "incisive-catalogue/1"
    assert sorted(d["dct:identifier"] for d in body["datasets"]) == names
    for record in body["datasets"]:
        terms = node.call("GET", f"/governance/terms/{record['dct:identifier']}", "researcher")
        if terms.status_code == 404:  # no terms: the key is absent, never guessed
            assert "incisive:accessTerms" not in record
        else:
            assert record["incisive:accessTerms"]["sha256"] == terms.json()["sha256"]
    assert httpx.get(node.url + "/catalogue", timeout=10).status_code == 401
    assert any(e.kind == "query" and e.action == "catalogue" and e.outcome.allowed for e in node.events())
