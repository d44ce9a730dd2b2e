"""The development IdP is a real OpenID Provider whose access tokens the nodes verify.

Every token here comes from the ``hub/idp/server.mjs`` process through the real
authorization-code + PKCE flow and is checked with :class:`incisive_lab.access.TokenVerifier`
exactly as a node checks it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import jwt
import pytest

from incisive_lab.access import LoA, Reason, Role, TokenError
from tests._support import idp as idp_support
from tests._support.idp import (
    CLIENT_ID,
    Idp,
    IdpUnavailable,
    LoginError,
    start_idp,
    write_jwks,
)

from .conftest import AUDIENCE, OTHER_AUDIENCE, verifier_for

EIDAS = "http://eidas.europa.eu/LoA/"


def test_discovery_and_jwks_are_served(idp: Idp) -> None:
    doc = idp.discovery()
    assert doc["issuer"] == idp.issuer
    assert idp.issuer.startswith("http://127.0.0.1:")
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {EIDAS + "low", EIDAS + "substantial", EIDAS + "high"} <= set(doc["acr_values_supported"])
    keys = httpx.get(doc["jwks_uri"], timeout=5).json()["keys"]
    assert [k["kid"] for k in keys] == list(idp.kids)
    for key in keys:
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private key material published"


def test_steward_token_is_an_rfc9068_jwt_for_the_node(idp: Idp) -> None:
    token = idp.token("steward")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": idp.kids[0]}
    principal = verifier_for(idp).verify(token)
    assert principal.issuer == idp.issuer
    assert principal.subject == "steward"
    assert principal.username == "steward"
    assert principal.roles == frozenset({Role.STEWARD})
    assert principal.groups == frozenset({"steward", "/incisive/steward"})
    assert principal.loa is LoA.SUBSTANTIAL
    assert principal.client_id == CLIENT_ID
    assert principal.scopes == frozenset({"node:read", "node:write"})
    claims = principal.claims
    assert claims["aud"] == AUDIENCE
    assert claims["acr"] == EIDAS + "substantial"
    assert {"iss", "sub", "exp", "iat", "jti", "client_id"} <= claims.keys()
    assert 0 < claims["exp"] - claims["iat"] <= 600


def test_researcher_token_verifies_with_its_role(idp: Idp) -> None:
    principal = verifier_for(idp).verify(idp.token("researcher"))
    assert principal.roles == frozenset({Role.RESEARCHER})
    assert principal.loa is LoA.SUBSTANTIAL
    assert principal.subject == "researcher"


def test_annotator_at_high_passes_a_high_minimum_that_the_steward_fails(idp: Idp) -> None:
    strict = verifier_for(idp, min_loa="high")
    assert strict.verify(idp.token("annotator")).loa is LoA.HIGH
    with pytest.raises(TokenError) as err:
        strict.verify(idp.token("steward"))
    assert err.value.reason is Reason.LOA_TOO_LOW


def test_user_at_loa_low_is_refused_by_a_substantial_minimum(idp: Idp) -> None:
    token = idp.token("lowloa")
    assert jwt.decode(token, options={"verify_signature": False})["acr"] == EIDAS + "low"
    with pytest.raises(TokenError) as err:
        verifier_for(idp, min_loa="substantial").verify(token)
    assert err.value.reason is Reason.LOA_TOO_LOW
    assert err.value.status == 401


def test_scopes_narrow_to_what_was_asked(idp: Idp) -> None:
    principal = verifier_for(idp).verify(idp.token("researcher", scope="openid node:read"))
    assert principal.scopes == frozenset({"node:read"})


def test_token_for_another_node_is_refused_here_and_accepted_there(idp: Idp) -> None:
    token = idp.token("researcher", resource=OTHER_AUDIENCE)
    with pytest.raises(TokenError) as err:
        verifier_for(idp, AUDIENCE).verify(token)
    assert err.value.reason is Reason.WRONG_AUDIENCE
    assert verifier_for(idp, OTHER_AUDIENCE).verify(token).roles == frozenset({Role.RESEARCHER})


def test_id_token_is_not_an_access_token(idp: Idp) -> None:
    body = idp.login("steward")
    id_claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_claims["acr"] == EIDAS + "substantial"
    assert id_claims["aud"] == CLIENT_ID
    with pytest.raises(TokenError) as err:
        verifier_for(idp).verify(body["id_token"])
    assert err.value.reason is Reason.WRONG_TYPE


def test_unknown_resource_and_unknown_user_are_refused(idp: Idp) -> None:
    with pytest.raises(LoginError, match="invalid_target"):
        idp.token("steward", resource="https://elsewhere.test/")
    with pytest.raises(LoginError, match="refused the login"):
        idp.token("mallory")


def test_key_rotation_restart_with_a_new_key_file(tmp_path: Path) -> None:
    first, second = tmp_path / "keys-1.json", tmp_path / "keys-2.json"
    kid1, kid2 = write_jwks(first), write_jwks(second)
    assert kid1 != kid2
    with start_idp(tmp_path / "idp", audience=AUDIENCE, jwks_file=first) as idp:
        assert idp.kids == (kid1,)
        verifier = verifier_for(idp, refetch_interval=0)
        jwks = verifier.jwks
        old = idp.token("steward")
        assert jwt.get_unverified_header(old)["kid"] == kid1
        assert verifier.verify(old).roles == frozenset({Role.STEWARD})

        issuer = idp.issuer
        idp.restart(jwks_file=second)
        assert idp.issuer == issuer and idp.kids == (kid2,)
        new = idp.token("steward")
        assert jwt.get_unverified_header(new)["kid"] == kid2
        # The verifier has only kid1 cached: kid2 makes it fetch the JWKS again.
        assert verifier.verify(new).roles == frozenset({Role.STEWARD})
        assert [k.kid for k in jwks.keys] == [kid2]
        with pytest.raises(TokenError) as err:
            verifier.verify(old)
        assert err.value.reason is Reason.UNKNOWN_KID


def test_password_login_without_dev_mode(tmp_path: Path) -> None:
    users = [{"username": "steward", "roles": ["steward"], "loa": "substantial",
              "password": "correct horse battery staple"}]
    with start_idp(tmp_path, audience=AUDIENCE, users=users, dev_login=False) as idp:
        assert verifier_for(idp).verify(idp.token("steward")).roles == frozenset({Role.STEWARD})
        idp._passwords["steward"] = "wrong"
        with pytest.raises(LoginError, match="refused the login"):
            idp.token("steward")


def _run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(idp_support.SERVER), *args], capture_output=True,
                          text=True, timeout=30, cwd=idp_support.IDP_DIR, check=False)


def test_server_refuses_bad_configuration_loudly(tmp_path: Path) -> None:
    config = tmp_path / "idp.json"
    config.write_text(json.dumps({
        "resources": [{"audience": AUDIENCE}], "clients": [{"client_id": "c", "redirect_uris": ["http://127.0.0.1/cb"]}],
        "users": [{"username": "u", "loa": "medium"}]}))
    proc = _run_server("--config", str(config), "--port", "0")
    assert proc.returncode == 2 and "unknown loa" in proc.stderr
    config.write_text(json.dumps({"resources": [{"audience": AUDIENCE}], "clients": [],
                                  "users": [], "secret_backdoor": True}))
    proc = _run_server("--config", str(config))
    assert proc.returncode == 2 and 'unknown key "secret_backdoor"' in proc.stderr
    proc = _run_server("--config", str(config), "--host", "0.0.0.0")
    assert proc.returncode == 2 and "loopback only" in proc.stderr


def test_missing_node_modules_or_node_is_an_error_naming_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idp_support, "IDP_DIR", tmp_path)
    with pytest.raises(IdpUnavailable, match=r"npm ci --prefix hub/idp"):
        start_idp(tmp_path / "run", audience=AUDIENCE)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IdpUnavailable, match=r"apt-get install .*nodejs npm"):
        start_idp(tmp_path / "run", audience=AUDIENCE)
