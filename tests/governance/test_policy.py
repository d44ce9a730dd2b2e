"""The authorisation matrix: role x sharing terms x grant state x action, each cell as specified.

The expected answers are written out as a table here, independently of the policy code.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from incisive_lab.access import LoA, Role
from incisive_lab.governance.policy import Action, Grant, Requester, decide
from incisive_lab.governance.terms import SharingTerms, TermsError, Visibility

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PURPOSE = "ai-development"


def terms(state: str) -> SharingTerms | None:
    if state == "none":
        return None
    return SharingTerms(dataset="site-a", hosting="federated",
                        visibility=Visibility.TRAIN_ONLY if state == "train-only" else Visibility.VISIBLE,
                        organisations=frozenset({"uni-a.example"}), roles=frozenset({Role.RESEARCHER, Role.ANNOTATOR}),
                        purposes=frozenset({PURPOSE, "cancer-research"}), min_loa=LoA.SUBSTANTIAL, floor=10,
                        expires=date(2026, 1, 1) if state == "expired" else date(2027, 1, 1))


def grant(state: str, subject: str) -> Grant | None:
    if state == "none":
        return None
    return Grant(grant_id="g1", dataset="site-a", grantee=subject,
                 purpose="cancer-research" if state == "other-purpose" else PURPOSE,
                 expires=NOW - timedelta(days=1) if state == "expired" else NOW + timedelta(days=30),
                 members=frozenset({"PSN-1", "PSN-2"}), revoked=state == "revoked")


ROLES = {"researcher": {Role.RESEARCHER}, "annotator": {Role.ANNOTATOR}, "steward": {Role.STEWARD}, "none": set()}
TERMS = ("visible", "train-only", "none", "expired")
GRANTS = ("none", "active", "expired", "revoked", "other-purpose")
ACTIONS = ("count", "list-members", "view", "train")


def expected(role: str, term: str, grant_state: str, action: str) -> str:
    """The specification, as a table walk: 'allow' or the reason code."""
    if term == "none":
        return "no-terms"
    if term == "expired":
        return "terms-expired"
    if role not in ("researcher", "annotator"):
        return "role-not-allowed"
    if action == "count":
        return "allow"
    if action in ("list-members", "view") and term == "train-only":
        return "train-only"
    return {"none": "no-grant", "expired": "grant-expired", "revoked": "grant-revoked",
            "other-purpose": "purpose-not-granted", "active": "allow"}[grant_state]


CELLS = [(r, t, g, a) for r in ROLES for t in TERMS for g in GRANTS for a in ACTIONS]


@pytest.mark.parametrize(("role", "term", "grant_state", "action"), CELLS,
                         ids=["-".join(c) for c in CELLS])
def test_matrix_cell(role: str, term: str, grant_state: str, action: str) -> None:
    who = Requester("alice", frozenset(ROLES[role]), LoA.SUBSTANTIAL, "uni-a.example")
    d = decide(who, action, terms(term), purpose=PURPOSE, now=NOW, grant=grant(grant_state, "alice"),
               patient="PSN-1" if action in ("view", "train") else None)
    want = expected(role, term, grant_state, action)
    assert (d.allowed, "allow" if d.allowed else d.reason) == (want == "allow", want)


def test_discovery_needs_nothing_but_a_token() -> None:
    who = Requester("x", frozenset(), None, None)
    assert decide(who, Action.DISCOVER, None, purpose=None, now=NOW).allowed


@pytest.mark.parametrize(("change", "reason"), [
    ({"loa": LoA.LOW}, "loa-too-low"),
    ({"loa": None}, "loa-too-low"),
    ({"organisation": "uni-b.example"}, "organisation-not-allowed"),
    ({"organisation": None}, "organisation-not-allowed"),
    ({"purpose": "education"}, "purpose-not-permitted"),
    ({"purpose": None}, "purpose-not-permitted"),
    ({"patient": "PSN-9"}, "outside-cohort"),
    ({"grantee": "mallory"}, "grant-mismatch"),
])
def test_each_other_condition_denies_on_its_own(change: dict[str, object], reason: str) -> None:
    who = Requester("alice", frozenset({Role.RESEARCHER}), change.get("loa", LoA.HIGH),  # type: ignore[arg-type]
                    change.get("organisation", "uni-a.example"))  # type: ignore[arg-type]
    g = grant("active", str(change.get("grantee", "alice")))
    d = decide(who, Action.VIEW, terms("visible"), purpose=change.get("purpose", PURPOSE),  # type: ignore[arg-type]
               now=NOW, grant=g, patient=change.get("patient", "PSN-1"))  # type: ignore[arg-type]
    assert not d.allowed and d.reason == reason


def test_any_organisation_when_the_terms_say_star() -> None:
    t = SharingTerms.from_json({**terms("visible").to_json(), "organisations": ["*"]})  # type: ignore[union-attr]
    who = Requester("alice", frozenset({Role.RESEARCHER}), LoA.SUBSTANTIAL, None)
    assert decide(who, Action.COUNT, t, purpose=PURPOSE, now=NOW).allowed


@pytest.mark.parametrize(("change", "message"), [
    ({"roles": ["researcher", "wizard"]}, "unknown role 'wizard'"),
    ({"purposes": ["marketing"]}, "unknown purpose 'marketing'"),
    ({"floor": 2}, "floor must be an integer of at least 3"),
    ({"floor": True}, "floor must be"),
    ({"visibility": "public"}, "visibility must be"),
    ({"min_loa": "medium"}, "min_loa must be"),
    ({"hosting": "cloud"}, "hosting must be"),
    ({"expires": "next year"}, "expires must be a date"),
    ({"colour": "blue"}, "unknown field 'colour'"),
    ({"organisations": []}, "organisations must be a non-empty list"),
])
def test_terms_are_validated_and_unknown_terms_refused(change: dict[str, object], message: str) -> None:
    doc = {**terms("visible").to_json(), **change}  # type: ignore[union-attr]
    with pytest.raises(TermsError, match=message):
        SharingTerms.from_json(doc)


def test_terms_round_trip_and_hash_is_stable() -> None:
    t = terms("visible")
    assert t is not None
    again = SharingTerms.from_json(t.to_json())
    assert again == t and again.sha256 == t.sha256
