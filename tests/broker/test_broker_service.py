"""The broker over HTTP with three real nodes and the real identity provider: partial answers
with a stopped, a slow and a silent node; floors that only go up; no relayed count below a
floor; member lists only under a grant; the requests API; malformed bodies; the ledger."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.ledger import Ledger
from incisive_lab.node.service import ServiceSettings
from tests._support.node_server import serve_node
from tests.broker.conftest import AUDIENCE, TERMS, Federation
from tests.broker.doubles import BlackholeNode, SlowNode, serve_broker

#: Per-node timeout of the broker that meets failing nodes (seconds).
TIMEOUT = 1.0


class Broker:
    def __init__(self, url: str, fed: Federation, state: Path) -> None:
        self.url, self.fed, self.state = url, fed, state

    def post(self, path: str, user: str | None = "researcher", purpose: str = "ai-development",
             **kw: Any) -> httpx.Response:
        headers = self.fed.h(user, purpose) if user else {}
        return httpx.post(self.url + path, headers=headers, timeout=60, **kw)

    def get(self, path: str, user: str | None = "researcher", purpose: str = "ai-development",
            **kw: Any) -> httpx.Response:
        headers = self.fed.h(user, purpose) if user else {}
        return httpx.get(self.url + path, headers=headers, timeout=60, **kw)

    def events(self) -> list[Any]:
        with Ledger.open(self.state, read_only=True) as ledger:
            return [e.event for e in ledger.entries()]


@pytest.fixture(scope="module")
def broker(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    state = tmp_path_factory.mktemp("broker-state")
    with serve_broker(federation.settings(state, timeout=20)) as url:
        yield Broker(url, federation, state)


def _numbers(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in answer["datasets"] if isinstance(d["count"], int)]


# ---------------------------------------------------------------------------- failing nodes

def test_a_stopped_a_slow_and_a_silent_node_give_a_partial_answer_on_time(
        federation: Federation, tmp_path: Path) -> None:
    # a node that was running and was stopped: its URL now refuses connections
    with serve_node(ServiceSettings(node_dir=federation.dirs["node-b"], issuer=federation.idp.issuer,
                                    audience=AUDIENCE)) as stopped_url:
        assert httpx.get(stopped_url + "/healthz").status_code == 200
    with SlowNode(federation.urls["node-c"], delay=TIMEOUT * 5) as slow, BlackholeNode() as silent:
        urls = {"node-a": federation.urls["node-a"], "node-b": stopped_url, "node-c": slow.url,
                "node-x": silent.url}
        with serve_broker(federation.settings(tmp_path / "state", urls, timeout=TIMEOUT)) as url:
            start = time.monotonic()
            r = httpx.post(url + "/cohort/count", json={"criteria": {}}, headers=federation.h("researcher"),
                           timeout=30)
            took = time.monotonic() - start
    assert r.status_code == 200, r.text
    answer = r.json()
    # behaviour, not speed: the timeout works (the slow node would need 5x the timeout)
    assert took < 3 * TIMEOUT, took
    status = {n["node"]: n for n in answer["nodes"]}
    assert {k: v["status"] for k, v in status.items()} == {
        "node-a": "ok", "node-b": "error", "node-c": "timeout", "node-x": "timeout"}
    assert answer["partial"] is True and answer["total"]["complete"] is False
    assert "connect" in status["node-b"]["message"]
    assert "1 s" in status["node-c"]["message"]
    # the node that answered is all there
    assert [d["ref"] for d in answer["datasets"]] == ["node-a/site-a"]
    assert status["node-a"]["datasets"][0]["floor"] >= TERMS["site-a"]["floor"]


def test_without_failures_the_answer_is_complete_with_every_node(broker: Broker) -> None:
    r = broker.post("/cohort/count", json={"criteria": {"imaging": {"modality": ["CT", "MR", "MG"]}}})
    answer = r.json()
    assert r.status_code == 200 and answer["partial"] is False
    assert [n["status"] for n in answer["nodes"]] == ["ok", "ok", "ok"]
    # site-c's terms allow neither ai-development nor an unnamed organisation: denied at the node
    node_c = next(n for n in answer["nodes"] if n["node"] == "node-c")
    assert node_c["datasets"] == [] and set(node_c["denied"]) == {"site-c"}
    assert {d["ref"] for d in answer["datasets"]} == {"node-a/site-a", "node-b/site-b"}


# ---------------------------------------------------------------------------- floors

def test_a_broker_floor_raises_the_node_floors_and_a_lower_one_never_lowers_them(
        broker: Broker, federation: Federation, tmp_path: Path) -> None:
    query = {"criteria": {}}
    plain = broker.post("/cohort/count", json=query).json()
    node_floor = {d["ref"]: d["floor"] for d in plain["datasets"]}
    assert node_floor == {"node-a/site-a": TERMS["site-a"]["floor"], "node-b/site-b": TERMS["site-b"]["floor"]}
    assert _numbers(plain), "with the node floors some counts show (the rest of this test needs one)"
    high = broker.post("/cohort/count", json={**query, "broker_floor": 50}).json()
    assert high["broker_floor"] == 50
    assert all(d["floor"] == 50 and d["suppressed"] and d["count"] == "<50" for d in high["datasets"])
    low = broker.post("/cohort/count", json={**query, "broker_floor": 1}).json()
    assert {d["ref"]: d["floor"] for d in low["datasets"]} == node_floor
    # a broker configured with a floor: a caller's lower one changes nothing
    with serve_broker(federation.settings(tmp_path / "state", floor=20)) as url:
        r = httpx.post(url + "/cohort/count", json={**query, "broker_floor": 5}, headers=federation.h("researcher"),
                       timeout=60)
    answer = r.json()
    assert answer["broker_floor"] == 20
    assert answer["datasets"] and all(d["floor"] == 20 and d["suppressed"] for d in answer["datasets"])


CRITERIA: list[dict[str, Any]] = [
    {},
    *[{"imaging": {"modality": list(m)}} for n in (1, 2) for m in itertools.combinations(["CT", "MR", "MG"], n)],
    *[{"clinical": {"cancer_type": [code]}} for code in ("363346000", "363358000", "254837009", "399068003",
                                                          "363510005")],
    {"clinical": {"sex": "female"}}, {"clinical": {"sex": "male"}},
    {"clinical": {"sex": "male"}, "imaging": {"modality": ["CT"]}},
    {"clinical": {"age_at_diagnosis": {"min": 50}}},
    {"clinical": {"age_at_diagnosis": {"max": 70}}},
]


@pytest.mark.parametrize("broker_floor", [None, 4, 6])
def test_no_relayed_count_is_below_a_floor(broker: Broker, broker_floor: int | None) -> None:
    """A sweep over criteria and broker floors: every number relayed is at least every floor
    that applies; a suppressed count is a '<floor' string with no member list."""
    for criteria in CRITERIA:
        body: dict[str, Any] = {"criteria": criteria, "members": True}
        if broker_floor is not None:
            body["broker_floor"] = broker_floor
        for purpose in ("ai-development", "cancer-research"):
            r = broker.post("/cohort/count", json=body, user="sweeper", purpose=purpose)
            assert r.status_code == 200, r.text
            answer = r.json()
            for d in answer["datasets"]:
                terms_floor = TERMS[d["dataset"]]["floor"]
                assert d["floor"] >= max(terms_floor, broker_floor or 0)
                if d["suppressed"]:
                    assert d["count"] == f"<{d['floor']}" and "members" not in d
                else:
                    assert isinstance(d["count"], int) and d["count"] >= d["floor"]
            for n in answer["nodes"]:  # a refusal (differencing) carries no number at all
                if n["status"] != "ok":
                    assert "datasets" not in n, n


# ---------------------------------------------------------------------------- requests and members

def test_requests_via_the_broker_and_member_lists_only_under_a_grant(broker: Broker, federation: Federation) -> None:
    query = {"criteria": {}, "members": True}
    before = broker.post("/cohort/count", json=query, user="requester").json()
    assert all("members" not in d for d in before["datasets"]), "no grant yet: no member lists"
    # the researcher asks through the broker; the broker finds the node from the catalogue
    r = broker.post("/requests", user="requester", json={"dataset": "site-a", "purpose": "ai-development", "project": "nodules"})
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["node"] == "node-a" and req["dataset"] == "site-a"
    # a request the node refuses comes back as the node's answer
    r = broker.post("/requests", json={"dataset": "node-b/site-b", "purpose": "education", "project": "course"})
    assert r.status_code == 403 and r.json()["error"] == "purpose-not-permitted" and r.json()["node"] == "node-b"
    mine = broker.get("/requests", user="requester").json()
    assert mine["partial"] is False
    assert [(i["node"], i["request_id"]) for i in mine["items"] if i["status"] == "pending"] == [
        ("node-a", req["request_id"])]
    # the steward sees everyone's pending requests through the broker; the researcher sees only theirs
    pending = broker.get("/requests", user="steward", params={"status": "pending"}).json()
    assert [(i["node"], i["request_id"]) for i in pending["items"]] == [("node-a", req["request_id"])]
    assert [n["status"] for n in pending["nodes"]] == ["ok", "ok", "ok"]
    # approval happens at the node
    r = httpx.post(f"{federation.urls['node-a']}/governance/requests/{req['request_id']}/approve",
                   headers=federation.h("steward"), json={"days": 30}, timeout=30)
    assert r.status_code == 200, r.text
    grants = broker.get("/grants", user="requester").json()
    assert [(g["node"], g["dataset"], g["purpose"]) for g in grants["items"]] == [
        ("node-a", "site-a", "ai-development")]
    assert broker.get("/grants", user="researcher").json()["items"] == []
    after = broker.post("/cohort/count", json=query, user="requester").json()
    by_ref = {d["ref"]: d for d in after["datasets"]}
    assert "node-a/site-a" in by_ref, after["nodes"]
    site_a = by_ref["node-a/site-a"]
    assert not site_a["suppressed"] and site_a["members"], "granted and shown: members listed"
    assert "members" not in by_ref["node-b/site-b"], "no grant at node-b: no members"
    # the annotator holds no grant: no members anywhere
    other = broker.post("/cohort/count", json=query, user="annotator").json()
    assert other["datasets"] and all("members" not in d for d in other["datasets"])
    # a purpose other than the grant's: no members either
    cancer = broker.post("/cohort/count", json=query, user="requester", purpose="cancer-research").json()
    assert all("members" not in d for d in cancer["datasets"])


def test_requests_that_cannot_be_routed_are_refused_with_a_message(broker: Broker) -> None:
    cases = [
        ({"dataset": "no-such", "purpose": "ai-development", "project": "p"}, 404, "no-such"),
        ({"dataset": "site-a", "purpose": "ai-development"}, 400, "project"),
        ({"dataset": "site-a", "purpose": "ai-development", "project": "p", "colour": 1}, 400, "colour"),
        ({"dataset": "nowhere/site-a", "purpose": "ai-development", "project": "p"}, 404, "nowhere"),
        ({"dataset": "node-a/site-a", "node": "node-b", "purpose": "ai-development", "project": "p"}, 400, "node"),
    ]
    for body, status, word in cases:
        r = broker.post("/requests", json=body)
        assert r.status_code == status and word in r.json()["message"], (body, r.text)
    r = httpx.post(broker.url + "/requests", content=b"{not json", headers=broker.fed.h("researcher"))
    assert r.status_code == 400 and "JSON" in r.json()["message"]


# ---------------------------------------------------------------------------- malformed, tokens, ledger

@pytest.mark.parametrize(("body", "word"), [
    (b"{not json", "JSON"),
    (b"[1, 2]", "object"),
    (b'{"criteria": {}, "colour": "red"}', "colour"),
    (b'{"criteria": {"imaging": {"modality": ["XX"]}}}', "modality"),
    (b'{"criteria": []}', "criteria"),
    (b'{"criteria": {}, "members": "yes"}', "members"),
    (b'{"criteria": {}, "rounding": 0}', "rounding"),
    (b'{"criteria": {}, "broker_floor": -1}', "broker_floor"),
    (b'{"criteria": {}, "nodes": ["node-z"]}', "node-z"),
    (b'{"criteria": {}, "datasets": ["site-a"]}', "node/dataset"),
    (b'{"criteria": {}, "datasets": ["node-z/site-a"]}', "node-z"),
])
def test_malformed_count_bodies_are_refused_with_a_message(broker: Broker, body: bytes, word: str) -> None:
    r = httpx.post(broker.url + "/cohort/count", content=body,
                   headers={**broker.fed.h("researcher"), "content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert word in r.json()["message"]


def test_a_count_can_name_nodes_and_datasets(broker: Broker) -> None:
    r = broker.post("/cohort/count", json={"criteria": {}, "datasets": ["node-b/site-b"]})
    answer = r.json()
    assert [n["node"] for n in answer["nodes"]] == ["node-b"]
    assert [d["ref"] for d in answer["datasets"]] == ["node-b/site-b"]
    r = broker.post("/cohort/count", json={"criteria": {}, "nodes": ["node-a", "node-c"]})
    assert [n["node"] for n in r.json()["nodes"]] == ["node-a", "node-c"]


def test_every_broker_query_is_ledgered_allowed_or_denied(broker: Broker) -> None:
    before = len(broker.events())
    assert broker.post("/cohort/count", json={"criteria": {}}).status_code == 200
    assert broker.post("/cohort/count", json={"criteria": {"colour": 1}}).status_code == 400
    assert broker.post("/cohort/count", user=None, json={"criteria": {}}).status_code == 401
    bad = httpx.post(broker.url + "/cohort/count", json={"criteria": {}},
                     headers={"Authorization": "Bearer not.a.token"}, timeout=30)
    assert bad.status_code == 401 and "WWW-Authenticate" in bad.headers
    assert broker.get("/catalogue").status_code == 200
    assert broker.get("/catalogue/search", params={"modality": "CT"}).status_code == 200
    assert broker.get("/catalogue/search", params={"colour": "red"}).status_code == 400
    assert broker.get("/catalogue", user=None).status_code == 401
    assert broker.get("/grants", user=None).status_code == 401
    new = broker.events()[before:]
    seen = [(e.kind, e.action, e.outcome.allowed, e.actor == "anonymous") for e in new]
    assert seen == [
        ("query", "count", True, False), ("query", "count", False, False), ("query", "count", False, True),
        ("query", "count", False, True), ("query", "catalogue", True, False), ("query", "catalogue", True, False),
        ("query", "catalogue", False, False), ("query", "catalogue", False, True), ("access", "read", False, True)]
    allowed = new[0]
    assert allowed.details["nodes"] == ["node-a:ok", "node-b:ok", "node-c:ok"]
    assert allowed.purpose == "ai-development" and len(allowed.details["query_sha256"]) == 64
    assert new[2].outcome.reason == "missing" and new[3].outcome.reason == "malformed"


def test_nodes_and_health(broker: Broker, federation: Federation) -> None:
    assert httpx.get(broker.url + "/healthz").json()["status"] == "ok"
    assert broker.get("/nodes", user=None).status_code == 401
    body = broker.get("/nodes").json()
    assert body["partial"] is False
    assert [(n["node"], n["status"], n["url"]) for n in body["nodes"]] == [
        (name, "ok", url) for name, url in federation.urls.items()]

