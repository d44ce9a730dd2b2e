"""Reads follow grants: DICOMweb and FHIR at a real node service, with the real IdP.

A researcher without a grant reads nothing; with one, only the grant's cohort, for the
grant's purpose, and never a train-only dataset; the node's own steward reads every
consenting patient, a steward of another organisation nothing. A withdrawal takes effect
on the very next request: counts, member lists, searches, retrieval and FHIR. Every
refusal is in the ledger.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.governance.store import Governance
from incisive_lab.ledger import Ledger
from incisive_lab.node.service import ServiceSettings
from incisive_lab.node.store import NodeStore
from tests._support.idp import DEFAULT_USERS, Idp, start_idp
from tests._support.node_server import serve_node

AUDIENCE = "https://node-a.test/"
ORG = "hospital-a.example"
TERMS = {"hosting": "federated", "visibility": "visible", "organisations": ["*"],
         "roles": ["researcher", "annotator"], "purposes": ["ai-development"],
         "min_loa": "substantial", "floor": 3, "expires": None}
USERS = (*DEFAULT_USERS,
         {"username": "steward-b", "roles": ["steward"], "groups": [], "loa": "substantial",
          "organisation": "hospital-b.example"})


class Node:
    def __init__(self, url: str, idp: Idp, root: Path) -> None:
        self.url, self.idp, self.root = url, idp, root
        self._tokens: dict[str, str] = {}
        with NodeStore.open(root) as store:
            self.dataset = store.index.datasets()[0].name
            self.study_of: dict[str, list[str]] = {}
            for s in store.index.studies(dataset=self.dataset):
                self.study_of.setdefault(s.patient_id, []).append(s.study_uid)
            self.consenting = sorted(set(self.study_of) - Governance(store.engine, None).withdrawn(self.dataset))

    def h(self, user: str, purpose: str = "ai-development") -> dict[str, str]:
        if user not in self._tokens:
            self._tokens[user] = self.idp.token(user)
        return {"Authorization": f"Bearer {self._tokens[user]}", "X-Purpose": purpose}

    def get(self, path: str, user: str = "researcher", purpose: str = "ai-development", **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.h(user, purpose), timeout=30, **kw)

    def post(self, path: str, user: str, json: Any) -> httpx.Response:
        return httpx.post(self.url + path, headers=self.h(user), json=json, timeout=30)

    def put(self, path: str, user: str, json: Any) -> httpx.Response:
        return httpx.put(self.url + path, headers=self.h(user), json=json, timeout=30)

    def studies(self, user: str = "researcher", **params: str) -> list[str]:
        r = self.get("/dicomweb/studies", user, params=params)
        assert r.status_code == 200, r.text
        return [s["0020000D"]["Value"][0] for s in r.json()]

    def fhir_patients(self, user: str = "researcher") -> set[str]:
        r = self.get("/fhir/Patient", user, params={"_count": "100"})
        assert r.status_code == 200, r.text
        return {e["resource"]["id"] for e in r.json().get("entry", [])}

    def denials(self) -> list[Any]:
        with Ledger.open(self.root, read_only=True) as ledger:
            return [e.event for e in ledger.entries() if e.event.kind == "access" and not e.event.outcome.allowed]


@pytest.fixture(scope="module")
def node(small_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("scope")
    root = base / "node"
    shutil.copytree(small_node, root, symlinks=True)
    with start_idp(base / "idp", audience=AUDIENCE, users=USERS) as idp, \
            serve_node(ServiceSettings(node_dir=root, issuer=idp.issuer, audience=AUDIENCE, organisation=ORG)) as url:
        n = Node(url, idp, root)
        assert n.put(f"/governance/terms/{n.dataset}", "steward", TERMS).status_code == 200
        yield n


def _grant(node: Node, user: str, members: list[str]) -> str:
    r = node.post("/governance/requests", user, {"dataset": node.dataset, "purpose": "ai-development",
                                                 "project": "scope"})
    assert r.status_code == 201, r.text
    r = node.post(f"/governance/requests/{r.json()['request_id']}/approve", "steward",
                  {"days": 30, "members": members})
    assert r.status_code == 200, r.text
    return str(r.json()["grant_id"])


def test_without_a_grant_nothing_is_readable_and_each_refusal_is_ledgered(node: Node) -> None:
    some_study = node.study_of[node.consenting[0]][0]
    before = len(node.denials())
    r = node.get("/dicomweb/studies", "annotator")
    assert r.status_code == 403 and "no grant" in r.json()["error"]
    assert node.get(f"/dicomweb/studies/{some_study}/metadata", "annotator").status_code == 403
    assert node.get(f"/dicomweb/studies/{some_study}/series", "annotator").status_code == 403
    r = node.get("/fhir/Patient", "annotator")
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    # a study that does not exist gets the same answer (nothing about existence leaks)
    assert node.get("/dicomweb/studies/2.25.1234/metadata", "annotator").status_code == 403
    denials = node.denials()[before:]
    assert len(denials) == 5 and all(e.outcome.reason == "no-grant" for e in denials)
    assert {e.details.get("study") for e in denials} >= {some_study, "2.25.1234"}


def test_a_grant_opens_its_cohort_only_for_its_purpose(node: Node) -> None:
    cohort = node.consenting[:2]
    _grant(node, "researcher", cohort)
    mine = sorted(s for p in cohort for s in node.study_of[p])
    others = [s for p, ss in node.study_of.items() if p not in cohort for s in ss]
    assert sorted(node.studies()) == mine
    # paging is cut after the scope: one study per page, every page inside the cohort
    paged = [uid for i in range(len(mine) + 1) for uid in node.studies(limit="1", offset=str(i))]
    assert sorted(paged) == mine
    assert node.studies(PatientID=next(p for p in node.study_of if p not in cohort)) == []
    series = node.get("/dicomweb/series").json()
    assert {s["0020000D"]["Value"][0] for s in series} <= set(mine)
    assert node.get(f"/dicomweb/studies/{mine[0]}/metadata").status_code == 200
    r = node.get(f"/dicomweb/studies/{others[0]}/metadata")
    assert r.status_code == 403 and "not within your grants" in r.json()["error"]
    assert node.get(f"/dicomweb/studies/{others[0]}").status_code == 403
    assert node.fhir_patients() == set(cohort)
    observations = node.get("/fhir/Observation", params={"_count": "200"}).json()
    assert {e["resource"]["subject"]["reference"] for e in observations.get("entry", [])} <= {
        f"Patient/{p}" for p in cohort}
    outside = next(p for p in node.study_of if p not in cohort)
    assert node.get(f"/fhir/Patient/{outside}").status_code == 403
    assert node.get(f"/fhir/Patient/{cohort[0]}").status_code == 200
    # another purpose than the grant's: nothing
    r = node.get("/dicomweb/studies", purpose="education")
    assert r.status_code == 403
    assert node.denials()[-1].outcome.reason == "purpose-not-permitted"


def test_train_only_datasets_are_never_viewable_even_under_a_grant(node: Node) -> None:
    assert node.put(f"/governance/terms/{node.dataset}", "steward", {**TERMS, "visibility": "train-only"}).status_code == 200
    try:
        r = node.get("/dicomweb/studies")
        assert r.status_code == 403 and "train-only" in r.json()["error"]
        assert node.denials()[-1].outcome.reason == "train-only"
        assert node.get("/fhir/Patient").status_code == 403
        # counting is still allowed (suppressed answers), members are not
        r = node.post("/cohort/count", "researcher", {"criteria": {}, "members": True})
        (answer,) = r.json()["datasets"]
        assert isinstance(answer["count"], int) and "members" not in answer
    finally:
        assert node.put(f"/governance/terms/{node.dataset}", "steward", TERMS).status_code == 200


def test_the_node_s_steward_reads_everyone_consenting_a_foreign_steward_nothing(node: Node) -> None:
    assert node.fhir_patients("steward") == set(node.consenting)
    assert sorted(node.studies("steward")) == sorted(s for p in node.consenting for s in node.study_of[p])
    assert node.get("/dicomweb/studies", "steward-b").status_code == 403
    r = node.put(f"/governance/terms/{node.dataset}", "steward-b", TERMS)
    assert r.status_code == 403 and "another organisation" in r.json()["message"]
    assert node.get("/governance/requests", "steward-b", params={"status": "pending"}).json() == []


def test_a_withdrawal_takes_effect_on_the_next_request_everywhere(node: Node) -> None:
    cohort = node.consenting[:3]
    _grant(node, "researcher", cohort)
    _grant(node, "annotator", cohort)
    patient = cohort[0]
    study = node.study_of[patient][0]
    query = {"criteria": {}, "members": True}
    before = node.post("/cohort/count", "researcher", query).json()["datasets"][0]
    assert node.get(f"/dicomweb/studies/{study}/metadata").status_code == 200
    assert study in {m["study_uid"] for m in before["members"]}

    r = node.post("/governance/withdrawals", "steward", {"dataset": node.dataset, "patient": patient})
    assert r.status_code == 200, r.text

    # the same query again would tell the researcher who withdrew: the differencing guard refuses it
    again = node.post("/cohort/count", "researcher", query)
    assert again.status_code == 403 and again.json()["error"] == "differencing"
    # a user who never asked sees the new count, and members without the patient
    after = node.post("/cohort/count", "annotator", query).json()["datasets"][0]
    assert after["count"] == before["count"] - 1
    assert study not in {m["study_uid"] for m in after["members"]} and after["members"]
    assert study not in node.studies()
    assert node.get(f"/dicomweb/studies/{study}/metadata").status_code == 403
    assert node.get(f"/dicomweb/studies/{study}").status_code == 403
    assert patient not in node.fhir_patients()
    assert node.get(f"/fhir/Patient/{patient}").status_code == 403
    assert patient not in node.fhir_patients("steward"), "withdrawn is withdrawn for the node's staff too"
    grants = node.get("/governance/grants").json()
    assert all(g["members"] < 3 for g in grants if g["dataset"] == node.dataset)
