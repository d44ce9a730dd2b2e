"""Which hub API requests are administration, culls, or nothing; a hub without a ledger."""

from __future__ import annotations

import pytest

from incisive_hub import HubLedger
from incisive_lab.ledger import event_schema


@pytest.mark.parametrize(("method", "path", "status", "kind", "name", "expected"), [
    ("POST", "users/bob/server", 201, "user", "bob", None),          # own server: a spawn event
    ("POST", "users/bob/activity", 200, "user", "bob", None),        # the server's report
    ("GET", "users/bob", 200, "user", "alice", None),                # reads are not changes
    ("POST", "incisive/token", 200, "user", "bob", None),
    ("POST", "oauth2/token", 200, "user", "bob", None),
    ("DELETE", "users/bob/server", 204, "service", "idle-culler",
     ("spawn", "cull", "service:idle-culler", "hub-user:bob/server:default", "allowed")),
    ("DELETE", "users/bob/server", 204, "user", "alice",
     ("admin", "stop", "hub-user:alice", "hub-user:bob/server", "allowed")),
    ("POST", "users/bob/server", 403, "user", "alice",
     ("admin", "start", "hub-user:alice", "hub-user:bob/server", "denied")),
    ("PATCH", "users/bob", 200, "user", "alice",
     ("admin", "modify", "hub-user:alice", "hub-user:bob", "allowed")),
    ("POST", "users/bob/tokens", 201, "service", "provisioner",
     ("admin", "create", "service:provisioner", "hub-user:bob/tokens", "allowed")),
    ("DELETE", "groups/reviewers", 204, "user", "alice",
     ("admin", "delete", "hub-user:alice", "hub-api:groups/reviewers", "allowed")),
    ("POST", "shutdown", 403, "anonymous", "anonymous",
     ("admin", "create", "anonymous", "hub-api:shutdown", "denied")),
])
def test_api_requests_are_classified(hub_ledger: HubLedger, method: str, path: str,
                                     status: int, kind: str, name: str,
                                     expected: tuple[str, ...] | None) -> None:
    ref = hub_ledger.api_request(method=method, path=path, status=status, actor_kind=kind,
                                 actor_name=name, address="10.0.0.1")
    if expected is None:
        assert ref is None and hub_ledger.ledger.size == 0
        return
    assert ref is not None
    event = hub_ledger.ledger.entry(ref.index).event
    assert (event.kind, event.action, event.actor, event.resource,
            event.outcome.decision) == expected
    if event.kind == "admin":
        assert event.details == {"method": method, "path": path, "status": status,
                                 "address": "10.0.0.1"}
        assert {"resource", "details.path", "details.address"} <= event_schema(
            "admin").personal_fields  # account names are marked personal


def test_a_hub_without_a_ledger_directory_refuses_to_record() -> None:
    HubLedger.clear_instance()
    try:
        with pytest.raises(RuntimeError, match=r"HubLedger\.directory is not set"):
            HubLedger.instance().spawn("spawn", user="bob")
    finally:
        HubLedger.clear_instance()
