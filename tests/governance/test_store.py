"""Governance records on a node: terms versions, the request life cycle, grants that only
shrink, consent withdrawal — each step in the node's ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.access import LoA, Role
from incisive_lab.governance.policy import Action, Requester
from incisive_lab.governance.store import Governance, GovernanceError
from incisive_lab.ledger import Ledger
from incisive_lab.node.store import NodeStore

TERMS = {"dataset": "site-a", "hosting": "federated", "visibility": "visible", "organisations": ["*"],
         "roles": ["researcher"], "purposes": ["ai-development"], "min_loa": "substantial", "floor": 10,
         "expires": None}
ALICE = Requester("alice", frozenset({Role.RESEARCHER}), LoA.SUBSTANTIAL, "uni-a.example")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def gov(tmp_path: Path) -> Iterator[tuple[Governance, Ledger, Clock]]:
    store = NodeStore.open(tmp_path / "node")
    ledger = Ledger.open(tmp_path / "node")
    clock = Clock()
    yield Governance(store.engine, ledger, clock=clock), ledger, clock
    ledger.close()
    store.close()


def events(ledger: Ledger, kind: str) -> list[Any]:
    return [e.event for e in ledger.entries() if e.event.kind == kind]


def test_terms_are_versioned_and_each_change_ledgered(gov: tuple[Governance, Ledger, Clock]) -> None:
    g, ledger, _ = gov
    assert g.terms("site-a") is None
    first = g.set_terms(TERMS, actor="steward")
    assert first.version == 1
    assert g.set_terms(TERMS, actor="steward").version == 1  # unchanged: no new version, nothing ledgered
    second = g.set_terms({**TERMS, "floor": 20}, actor="steward")
    assert second.version == 2 and g.terms("site-a") == second
    assert [t.floor for t in g.terms_history("site-a")] == [10, 20]
    logged = events(ledger, "terms")
    assert [(e.action, e.details["terms_version"], e.details["terms_sha256"]) for e in logged] == [
        ("set", 1, first.sha256), ("update", 2, second.sha256)]


def test_request_life_cycle_and_a_grant_that_only_shrinks(gov: tuple[Governance, Ledger, Clock]) -> None:
    g, ledger, clock = gov
    g.set_terms(TERMS, actor="steward")
    req = g.submit_request(ALICE, "site-a", purpose="ai-development", project="lung nodules")
    assert [r.request_id for r in g.pending()] == [req.request_id]
    grant = g.approve(req.request_id, steward="steward", members={"PSN-1", "PSN-2", "PSN-3"}, days=30)
    assert grant.members == {"PSN-1", "PSN-2", "PSN-3"}
    with pytest.raises(GovernanceError, match="not pending"):
        g.approve(req.request_id, steward="steward", members={"PSN-9"})
    assert g.decide(ALICE, Action.VIEW, "site-a", purpose="ai-development", patient="PSN-2").allowed
    # withdrawal: at once, the grant shrinks, the decision follows
    assert g.withdraw_patient("site-a", "PSN-2", steward="steward") == [grant.grant_id]
    assert g.withdraw_patient("site-a", "PSN-2", steward="steward") == []  # idempotent
    (now_grant,) = g.grants_for("alice", dataset="site-a")
    assert now_grant.members == {"PSN-1", "PSN-3"}
    d = g.decide(ALICE, Action.VIEW, "site-a", purpose="ai-development", patient="PSN-2")
    assert not d.allowed and d.reason == "consent-withdrawn"
    # a new approval never brings a withdrawn patient back
    req2 = g.submit_request(ALICE, "site-a", purpose="ai-development", project="lung nodules 2")
    g2 = g.approve(req2.request_id, steward="steward", members={"PSN-1", "PSN-2"})
    assert g2.members == {"PSN-1"}
    # expiry
    clock.now += timedelta(days=31)
    assert [x.grant_id for x in g.grants_for("alice", dataset="site-a")] == [g2.grant_id]
    d = g.decide(ALICE, Action.VIEW, "site-a", purpose="ai-development", patient="PSN-3")
    assert not d.allowed and d.reason in ("outside-cohort", "no-grant")
    kinds = [(e.kind, e.action) for e in (x.event for x in ledger.entries())]
    for step in [("request", "submit"), ("request", "approve"), ("grant", "grant"), ("consent", "withdraw"),
                 ("grant", "modify")]:
        assert step in kinds, step
    modify = [e for e in events(ledger, "grant") if e.action == "modify"]
    assert modify[0].details["members"] == 2 and modify[0].details["removed"] == 1


def test_requests_refused_by_the_terms_are_ledgered_and_rejections_need_a_reason(
        gov: tuple[Governance, Ledger, Clock]) -> None:
    g, ledger, _ = gov
    with pytest.raises(GovernanceError) as err:
        g.submit_request(ALICE, "site-a", purpose="ai-development", project="p")
    assert err.value.reason == "no-terms"
    g.set_terms(TERMS, actor="steward")
    with pytest.raises(GovernanceError) as err:
        g.submit_request(ALICE, "site-a", purpose="education", project="p")
    assert err.value.reason == "purpose-not-permitted"
    denied = [e for e in events(ledger, "request") if not e.outcome.allowed]
    assert [e.outcome.reason for e in denied] == ["no-terms", "purpose-not-permitted"]
    req = g.submit_request(ALICE, "site-a", purpose="ai-development", project="p")
    with pytest.raises(GovernanceError, match="needs a reason"):
        g.reject(req.request_id, steward="steward", reason=" ")
    done = g.reject(req.request_id, steward="steward", reason="cohort too broad")
    assert done.status == "rejected" and done.reason == "cohort too broad"
    other = g.submit_request(ALICE, "site-a", purpose="ai-development", project="q")
    with pytest.raises(GovernanceError, match="not yours"):
        g.withdraw_request(other.request_id, requester="mallory")
    assert g.withdraw_request(other.request_id, requester="alice").status == "withdrawn"


def test_revoked_grants_allow_nothing(gov: tuple[Governance, Ledger, Clock]) -> None:
    g, ledger, _ = gov
    g.set_terms(TERMS, actor="steward")
    req = g.submit_request(ALICE, "site-a", purpose="ai-development", project="p")
    grant = g.approve(req.request_id, steward="steward", members={"PSN-1"})
    g.revoke(grant.grant_id, steward="steward", reason="project ended")
    d = g.decide(ALICE, Action.LIST_MEMBERS, "site-a", purpose="ai-development")
    assert not d.allowed and d.reason == "no-grant"
    assert any(e.action == "revoke" for e in events(ledger, "grant"))


def _patients(store_engine: Any, dataset: str, patients: list[str]) -> None:
    from sqlalchemy import insert

    from incisive_lab.node._db import datasets_table, patients_table

    with store_engine.begin() as conn:
        conn.execute(insert(datasets_table).values(name=dataset, hosting="federated"))
        conn.execute(insert(patients_table), [{"dataset": dataset, "patient_id": p} for p in patients])


def test_read_scopes_follow_grants_withdrawals_and_expiry_at_once_despite_the_cache(
        gov: tuple[Governance, Ledger, Clock]) -> None:
    g, _, clock = gov
    _patients(g._engine, "site-a", ["P1", "P2", "P3", "P4"])
    assert not g.read_scope(ALICE, "ai-development")
    assert g.read_scope(ALICE, "ai-development").reason == "no-grant"
    g.set_terms(TERMS, actor="steward")
    whole = g.approve(g.submit_request(ALICE, "site-a", purpose="ai-development", project="p").request_id,
                      steward="steward", members=["P1", "P2", "P3", "P4"], days=10)
    scope = g.read_scope(ALICE, "ai-development")
    assert scope.cohorts == {"site-a": frozenset({"P1", "P2", "P3", "P4"})}
    assert scope.whole == {"site-a": frozenset()}, "a grant of every patient is said as the dataset"
    assert not g.read_scope(ALICE, "education") and g.read_scope(ALICE, "education").reason == "purpose-not-permitted"
    # a withdrawal counts on the next call (the cache sees the change)
    g.withdraw_patient("site-a", "P2", steward="steward")
    scope = g.read_scope(ALICE, "ai-development")
    assert scope.cohorts["site-a"] == {"P1", "P3", "P4"} and scope.whole == {"site-a": frozenset({"P2"})}
    assert not scope.allows("site-a", "P2") and scope.allows("site-a", "P3")
    # a partial cohort is listed, never widened to the dataset
    g.revoke(whole.grant_id, steward="steward", reason="test")
    assert not g.read_scope(ALICE, "ai-development")
    g.approve(g.submit_request(ALICE, "site-a", purpose="ai-development", project="q").request_id,
              steward="steward", members=["P1"], days=1)
    scope = g.read_scope(ALICE, "ai-development")
    assert scope.cohorts == {"site-a": frozenset({"P1"})} and scope.whole == {}
    # expiry is honoured though nothing in the database changed
    clock.now += timedelta(days=1, seconds=1)
    assert not g.read_scope(ALICE, "ai-development")
    # train-only terms: never viewable
    g.approve(g.submit_request(ALICE, "site-a", purpose="ai-development", project="r").request_id,
              steward="steward", members=["P1"], days=5)
    assert g.read_scope(ALICE, "ai-development")
    g.set_terms({**TERMS, "visibility": "train-only"}, actor="steward")
    scope = g.read_scope(ALICE, "ai-development")
    assert not scope and scope.reason == "train-only"
    # the node's staff: everyone consenting, whatever the grants
    staff = g.read_scope(Requester("sam", frozenset({Role.STEWARD}), LoA.SUBSTANTIAL, None), None, staff=True)
    assert staff.cohorts == {"site-a": frozenset({"P1", "P3", "P4"})} and staff.staff
