"""The authorisation matrix over HTTP: role x sharing terms x grant state x action, at a real
node service with tokens from the real identity provider — every cell allowed or denied as
the specification (``tests/governance/test_policy.py::expected``) says, and every answer in
the node's ledger with the same outcome.

Actions reachable over HTTP today: ``count`` and ``list-members`` (``POST /cohort/count``)
and ``view`` (WADO-RS metadata of a study in the grant's cohort); ``train`` comes with the
Flower tasks and is covered by the pure matrix. Terms change through the steward's API;
grant states are written into the governance tables directly (a grant a role may not ask
for, an expired one, cannot be made through the API, which is the point).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update

from incisive_lab.governance._tables import grant_members_table, grants_table
from incisive_lab.governance.store import Governance
from incisive_lab.ledger import Ledger
from incisive_lab.node.service import ServiceSettings
from incisive_lab.node.store import NodeStore
from tests._support.idp import DEFAULT_USERS, Idp, start_idp
from tests._support.node_server import serve_node
from tests.governance.test_policy import GRANTS, PURPOSE, expected

AUDIENCE = "https://node-a.test/"
#: the node's own steward sets the terms; the matrix's steward is another organisation's
USERS = (*DEFAULT_USERS,
         {"username": "steward-b", "roles": ["steward"], "groups": [], "loa": "substantial",
          "organisation": "hospital-b.example"})
ROLE_USERS = {"researcher": "researcher", "annotator": "annotator", "steward": "steward-b"}
TERM_STATES = ("none", "visible", "train-only", "expired")
HTTP_ACTIONS = ("count", "list-members", "view")


def _terms(state: str) -> dict[str, Any]:
    return {"hosting": "federated", "visibility": "train-only" if state == "train-only" else "visible",
            "organisations": ["uni-a.example"], "roles": ["researcher", "annotator"],
            "purposes": [PURPOSE, "cancer-research"], "min_loa": "substantial", "floor": 3,
            "expires": (date.today() - timedelta(days=2)).isoformat() if state == "expired" else None}


class Matrix:
    def __init__(self, url: str, idp: Idp, root: Path) -> None:
        self.url, self.idp, self.root = url, idp, root
        self.tokens = {u: idp.token(u) for u in (*ROLE_USERS.values(), "steward")}
        with NodeStore.open(root) as store:
            self.dataset = store.index.datasets()[0].name
            consenting = sorted({s.patient_id for s in store.index.studies(dataset=self.dataset)}
                                - Governance(store.engine, None).withdrawn(self.dataset))
            self.members = consenting[:2]
            self.study = next(s.study_uid for s in store.index.studies(dataset=self.dataset)
                              if s.patient_id == self.members[0])

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}", "X-Purpose": PURPOSE}

    def set_grant_state(self, subject: str, state: str) -> None:
        """Revoke what ``subject`` holds, then give them a grant in ``state`` (never deleting:
        the node's read-scope cache sees every change)."""
        now = datetime.now(UTC)
        with NodeStore.open(self.root) as store, store.engine.begin() as conn:
            conn.execute(update(grants_table).where(grants_table.c.grantee == subject).values(revoked=1))
            if state == "none":
                return
            gid = f"grant-{uuid.uuid4().hex[:16]}"
            expires = now - timedelta(days=1) if state == "expired" else now + timedelta(days=30)
            conn.execute(insert(grants_table).values(
                grant_id=gid, request_id=f"req-{gid}", dataset=self.dataset, grantee=subject,
                purpose="cancer-research" if state == "other-purpose" else PURPOSE, project="matrix",
                expires=expires.isoformat().replace("+00:00", "Z"), revoked=int(state == "revoked"),
                terms_version=1, created_at=now.isoformat().replace("+00:00", "Z")))
            conn.execute(insert(grant_members_table), [{"grant_id": gid, "patient_id": p} for p in self.members])

    def ledger_size(self) -> int:
        with Ledger.open(self.root, read_only=True) as ledger:
            return ledger.size

    def new_entries(self, since: int) -> list[Any]:
        with Ledger.open(self.root, read_only=True) as ledger:
            return [e.event for e in ledger.entries(since)]

    def act(self, user: str, action: str) -> bool:
        """Do ``action`` as ``user``; whether it was allowed (read from the answer)."""
        if action == "view":
            r = httpx.get(f"{self.url}/dicomweb/studies/{self.study}/metadata", headers=self.headers(user), timeout=30)
            assert r.status_code in (200, 403), r.text
            return r.status_code == 200
        body = {"criteria": {}, "datasets": [self.dataset], "members": action == "list-members"}
        r = httpx.post(f"{self.url}/cohort/count", json=body, headers=self.headers(user), timeout=30)
        assert r.status_code == 200, r.text
        answer = r.json()
        if action == "count":
            return bool(answer["datasets"])
        return bool(answer["datasets"]) and "members" in answer["datasets"][0]


@pytest.fixture(scope="module")
def matrix(small_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    base = tmp_path_factory.mktemp("matrix")
    root = base / "node"
    shutil.copytree(small_node, root, symlinks=True)
    with start_idp(base / "idp", audience=AUDIENCE, users=USERS) as idp, \
            serve_node(ServiceSettings(node_dir=root, issuer=idp.issuer, audience=AUDIENCE,
                                       organisation="hospital-a.example")) as url:
        yield Matrix(url, idp, root)


def test_every_cell_over_http_is_as_specified_and_ledgered(matrix: Matrix) -> None:
    cells = 0
    seen: dict[str, set[bool]] = {a: set() for a in HTTP_ACTIONS}
    for term in TERM_STATES:  # "none" first: terms cannot be taken back once set
        if term != "none":
            r = httpx.put(f"{matrix.url}/governance/terms/{matrix.dataset}", json=_terms(term),
                          headers=matrix.headers("steward"), timeout=30)
            assert r.status_code == 200, r.text
        for grant_state in GRANTS:
            for user in ROLE_USERS.values():
                matrix.set_grant_state(user, grant_state)
            for role, user in ROLE_USERS.items():
                for action in HTTP_ACTIONS:
                    want = expected(role, term, grant_state, action) == "allow"
                    before = matrix.ledger_size()
                    got = matrix.act(user, action)
                    assert got == want, (role, term, grant_state, action)
                    seen[action].add(got)
                    logged = [e for e in matrix.new_entries(before)
                              if e.actor == f"user:{user}" and e.kind in ("query", "access")]
                    assert logged, ("not ledgered", role, term, grant_state, action)
                    if action == "view":
                        assert all(e.outcome.allowed == want for e in logged), (role, term, grant_state, action)
                    else:  # the cohort query is allowed when the count is; members follow the grant
                        assert logged[-1].outcome.allowed == expected(role, term, grant_state, "count").startswith(
                            "allow"), (role, term, grant_state, action)
                    cells += 1
    assert cells == len(TERM_STATES) * len(GRANTS) * len(ROLE_USERS) * len(HTTP_ACTIONS)
    assert all(outcomes == {True, False} for outcomes in seen.values()), seen
