"""The real hub (``hub/jupyterhub_config.py``) against the real IdP (``hub/idp/server.mjs``).

Logins go through the authorization-code + PKCE flow with the IdP's dev-login form and the
hub's real callback (httpx, no browser); servers are real ``jupyterhub.singleuser``
processes in bubblewrap sandboxes. One IdP and one hub serve the whole module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import jwt
import pytest

from incisive_hub.spawner import SandboxSpawner
from incisive_lab.access import JwksCache, LoA, Role, TokenVerifier
from tests._support.idp import Idp

from ._hub import (
    HubClient,
    RunningHub,
    hub_login,
    server_env,
    start_hub,
    start_hub_idp,
    start_server,
    xsrf_headers,
)

AUDIENCE = "https://federation.incisive.test/"
GATEWAY = {"broker": "http://127.0.0.1:9/", "nodes": {"hospital-a": "http://127.0.0.1:9/"},
           "token": "hub"}
ROLES = ("researcher", "annotator", "steward", "auditor", "admin")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Idp, RunningHub]]:
    root = tmp_path_factory.mktemp("hub-stack")
    client = HubClient.new()
    # access tokens live 60 s: less than the hub's 120 s margin, so every request for the
    # token refreshes it (the refresh path is exercised on every call)
    with start_hub_idp(root / "idp", client=client, audience=AUDIENCE,
                       access_token_ttl=60) as idp, \
            start_hub(root / "hub", idp, GATEWAY, client=client) as hub:
        yield idp, hub


@pytest.fixture
def hub(stack: tuple[Idp, RunningHub]) -> RunningHub:
    return stack[1]


def events(hub: RunningHub, kind: str, **match: Any) -> list[Any]:
    return [e for e in hub.ledger_events() if e.kind == kind
            and all(getattr(e, k) == v for k, v in match.items())]


def test_the_login_page_offers_the_identity_provider(hub: RunningHub) -> None:
    page = httpx.get(hub.url + "/hub/login")
    assert page.status_code == 200 and "INCISIVE (eIDAS)" in page.text


@pytest.mark.parametrize("role", ROLES)
def test_every_role_logs_in_with_its_hub_group(hub: RunningHub, role: str) -> None:
    http, page = hub_login(hub.url, role)
    assert page.status_code == 200 and urlsplit(str(page.url)).path == "/hub/home", page.text
    model = http.get(hub.api_url + "/user").json()
    assert model["name"] == role
    assert model["groups"] == [role]
    assert model["admin"] is (role == "admin")
    scopes = set(model["scopes"])
    assert ("read:users" in scopes) is (role in ("auditor", "admin"))
    assert ("admin:users" in scopes) is (role == "admin")
    (login,) = [e for e in events(hub, "login", action="login")
                if e.actor.startswith(f"user:{role}@")]
    assert login.outcome.allowed and login.details["acr"].startswith("http://eidas.europa.eu/LoA/")
    assert login.details["client"] == "incisive-hub" and login.details["address"] == "127.0.0.1"


def test_auth_state_holds_the_tokens_encrypted(hub: RunningHub) -> None:
    hub_login(hub.url, "steward")
    admin, _ = hub_login(hub.url, "admin")
    state = admin.get(hub.api_url + "/users/steward").json()["auth_state"]
    assert state["refresh_token"] and state["sub"] == "steward"
    assert state["acr"] == LoA.SUBSTANTIAL.uri and state["roles"] == ["steward"]
    assert jwt.get_unverified_header(state["access_token"])["typ"] == "at+jwt"
    db = (hub.state_dir / "jupyterhub.sqlite").read_bytes()
    assert state["refresh_token"].encode() not in db  # encrypted with JUPYTERHUB_CRYPT_KEY


def test_loa_low_is_refused_with_a_page_saying_why(hub: RunningHub) -> None:
    http, page = hub_login(hub.url, "lowloa")
    assert page.status_code == 403
    assert "/hub/oauth_callback" in str(page.url)
    assert 'data-reason="loa-too-low"' in page.text and "Login refused" in page.text
    assert '<td data-loa="given">low</td>' in page.text
    assert '<td data-loa="needed">substantial or higher</td>' in page.text
    assert "Traceback" not in page.text
    assert http.get(hub.api_url + "/user").status_code == 403  # not logged in
    (refusal,) = [e for e in events(hub, "login") if e.actor.startswith("user:lowloa@")]
    assert refusal.outcome.decision == "denied" and "loa-too-low" in refusal.outcome.reason
    assert refusal.details["acr"] == LoA.LOW.uri


def test_a_user_outside_the_allowed_groups_is_refused(hub: RunningHub) -> None:
    http, page = hub_login(hub.url, "outsider")
    assert page.status_code == 403
    assert 'data-reason="no-allowed-group"' in page.text
    assert "/elsewhere/visitors" in page.text and "/incisive/researcher" in page.text
    assert http.get(hub.api_url + "/user").status_code == 403
    (refusal,) = [e for e in events(hub, "login") if e.actor.startswith("user:outsider@")]
    assert "no-allowed-group" in refusal.outcome.reason


def test_an_answer_from_another_issuer_is_refused(hub: RunningHub) -> None:
    http = httpx.Client(timeout=30, follow_redirects=False)
    resp = http.get(hub.url + "/hub/oauth_login")
    assert "nonce=" in resp.headers["location"] and "resource=" in resp.headers["location"]
    assert "code_challenge_method=S256" in resp.headers["location"]
    for _ in range(10):  # to the redirect back to the hub, without following it
        location = urljoin(str(resp.request.url), resp.headers["location"])
        if location.startswith(hub.url):
            break
        path = urlsplit(location).path
        if path.startswith("/interaction/") and not path.endswith("/login"):
            http.get(location)
            resp = http.post(location + "/login", data={"login": "researcher"})
        else:
            resp = http.get(location)
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["iss"] = "https://mix-up.example"
    page = http.get(urlunsplit(parts._replace(query=urlencode(query))))
    assert page.status_code == 403 and 'data-reason="wrong-issuer"' in page.text


def test_the_server_gets_the_users_access_token_and_nothing_else_does(
        stack: tuple[Idp, RunningHub]) -> None:
    idp, hub = stack
    http, _ = hub_login(hub.url, "researcher")
    start_server(hub, http, "researcher")
    # JupyterLab's server answers through the proxy, in its sandbox
    assert http.get(hub.url + "/user/researcher/api").json()["version"]
    env = server_env(hub, "researcher")
    assert env["HOME"] == "/workspace" and "JUPYTERHUB_CRYPT_KEY" not in env
    server_token = env["JUPYTERHUB_API_TOKEN"]
    url = hub.api_url + "/incisive/token"

    first = httpx.get(url, headers={"Authorization": f"token {server_token}"})
    assert first.status_code == 200, first.text
    assert first.headers["Cache-Control"] == "no-store"
    body = first.json()
    assert set(body) == {"access_token", "expires_at"}
    verifier = TokenVerifier(idp.issuer, AUDIENCE, jwks=JwksCache.for_issuer(idp.issuer))
    principal = verifier.verify(body["access_token"])
    assert principal.subject == "researcher" and principal.roles == frozenset({Role.RESEARCHER})
    assert abs(principal.expires_at - body["expires_at"]) <= 2
    refreshes = len(events(hub, "login", action="refresh"))
    second = httpx.get(url, headers={"Authorization": f"Bearer {server_token}"}).json()
    assert second["access_token"] != body["access_token"]  # within 120 s of expiry: refreshed
    assert verifier.verify(second["access_token"]).subject == "researcher"
    assert len(events(hub, "login", action="refresh")) == refreshes + 1

    # the user's own API token, the browser's cookie, no token, a made-up token: refused
    own = http.post(hub.api_url + "/users/researcher/tokens", headers=xsrf_headers(http),
                    json={"note": "mine"}).json()["token"]
    assert httpx.get(url, headers={"Authorization": f"token {own}"}).status_code == 403
    assert http.get(url).status_code == 401
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "token made-up"}).status_code == 401

    # logging out ends the session: the server gets no token until the next login
    assert http.get(hub.url + "/hub/logout").status_code == 302
    gone = httpx.get(url, headers={"Authorization": f"token {server_token}"})
    assert gone.status_code == 401 and "log in again" in gone.text
    (logout,) = events(hub, "login", action="logout")
    assert logout.actor.startswith("user:researcher@") and logout.outcome.allowed

    # an administrator stops the server: ledgered as administration, then as a stop
    cgroups = SandboxSpawner(hub_state=str(hub.state_dir)).cgroup_driver().cgroups("researcher")
    assert cgroups.pids()
    admin, _ = hub_login(hub.url, "admin")
    stopped = admin.delete(hub.api_url + "/users/researcher/server", headers=xsrf_headers(admin))
    assert stopped.status_code in (202, 204)
    deadline = time.monotonic() + 30
    while http.get(hub.api_url + "/user").json().get("servers"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not any(d.exists() for d in cgroups.dirs.values())
    assert httpx.get(url, headers={"Authorization": f"token {server_token}"}).status_code == 401
    spawn = events(hub, "spawn", resource="hub-user:researcher/server:default")
    assert [e.action for e in spawn] == ["spawn", "stop"]
    assert len(spawn[0].details["sandbox_sha256"]) == 64
    (stop_by_admin,) = events(hub, "admin", action="stop")
    assert stop_by_admin.actor == "hub-user:admin"
    assert stop_by_admin.resource == "hub-user:researcher/server"


def test_admin_actions_are_ledgered_allowed_or_denied(hub: RunningHub) -> None:
    admin, _ = hub_login(hub.url, "admin")
    created = admin.post(hub.api_url + "/groups/reviewers", headers=xsrf_headers(admin))
    assert created.status_code == 201
    researcher, _ = hub_login(hub.url, "researcher")
    tried = researcher.post(hub.api_url + "/groups/mine", headers=xsrf_headers(researcher))
    assert tried.status_code == 403
    # the hub ledgers an API call as it logs it, just after the answer: wait for both
    deadline = time.monotonic() + 15
    while len(made := events(hub, "admin", action="create")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(e.actor, e.resource, e.outcome.decision) for e in made] == [
        ("hub-user:admin", "hub-api:groups/reviewers", "allowed"),
        ("hub-user:researcher", "hub-api:groups/mine", "denied")]
    assert made[0].details == {"method": "POST", "path": "groups/reviewers", "status": 201,
                               "address": "127.0.0.1"}


def test_the_hub_ledger_verifies(hub: RunningHub) -> None:
    from incisive_lab.ledger import Ledger

    with Ledger.open(hub.state_dir / "ledger", read_only=True) as ledger:
        assert ledger.verify().ok
        assert ledger.origin == "incisive-hub.local/ledger"
    assert Path(hub.state_dir / "ledger").stat().st_mode & 0o077 == 0


def test_a_bad_settings_file_stops_the_hub_naming_the_key(
        stack: tuple[Idp, RunningHub], tmp_path: Path) -> None:
    idp, _ = stack
    with pytest.raises(RuntimeError, match="unknown setting 'memory'"):
        start_hub(tmp_path, idp, GATEWAY, client=HubClient.new(), settings={"memory": "2G"},
                  timeout=30)
