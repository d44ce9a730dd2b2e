"""The authenticator's decisions without a hub: the ID token, the level, the roles.

ID tokens are signed here with keys generated for the test and served as the issuer's
JWKS through an ``httpx.MockTransport`` (discovery + JWKS), so every way a token can be
wrong is made on purpose. The real IdP and the real hub are in ``test_hub.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from incisive_hub import IncisiveAuthenticator, LoginRefused
from incisive_lab.access import JwksCache

ISSUER = "https://idp.incisive.test"
CLIENT = "incisive-hub"
EIDAS = "http://eidas.europa.eu/LoA/"


class Keys:
    """Signing keys; ``published`` is what the JWKS endpoint serves now."""

    def __init__(self) -> None:
        self.rsa = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048)
                    for kid in ("k1", "k2")}
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.published = ["k1", "e1"]
        self.fetches = 0

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            if kid == "e1":
                jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
                jwk.update(kid="e1", alg="ES256", use="sig")
            else:
                jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa[kid].public_key()))
                jwk.update(kid=kid, alg="RS256", use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/.well-known/openid-configuration":
                return httpx.Response(200, json={"issuer": ISSUER,
                                                 "jwks_uri": ISSUER + "/jwks"})
            if request.url.path == "/jwks":
                self.fetches += 1
                return httpx.Response(200, json=self.jwks())
            return httpx.Response(404)
        return httpx.MockTransport(handle)


@pytest.fixture
def keys() -> Keys:
    return Keys()


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(keys: Keys, clock: Clock) -> IncisiveAuthenticator:
    class Authenticator(IncisiveAuthenticator):
        def make_jwks(self) -> JwksCache:
            return JwksCache.for_issuer(self.issuer, http=keys.transport(), clock=clock,
                                        refetch_interval=self.jwks_refetch_interval)

    return Authenticator(issuer=ISSUER, client_id=CLIENT, client_secret="x" * 32,
                         jwks_refetch_interval=30)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "sub": "u-1", "aud": CLIENT, "iat": now, "exp": now + 300,
            "nonce": "n-1", "acr": EIDAS + "substantial", "preferred_username": "rita",
            "groups": ["/incisive/researcher"]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(keys: Keys, body: dict[str, Any], *, kid: str = "k1", alg: str = "RS256",
         typ: str | None = "JWT") -> str:
    headers: dict[str, Any] = {"kid": kid}
    if typ:
        headers["typ"] = typ
    key: Any = keys.ec if kid == "e1" else keys.rsa.get(kid, keys.rsa["k1"])
    if alg.startswith("HS"):
        key = "a-shared-secret-that-is-long-enough-for-hs256"
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def verify(auth: IncisiveAuthenticator, token: str, nonce: str | None = "n-1",
           sub: str | None = None) -> dict[str, Any]:
    return asyncio.run(auth.verify_id_token(token, nonce=nonce, sub=sub))


def refused(auth: IncisiveAuthenticator, token: object, nonce: str | None = "n-1") -> LoginRefused:
    with pytest.raises(LoginRefused) as err:
        asyncio.run(auth.verify_id_token(token, nonce=nonce))
    assert err.value.reason == "bad-id-token"
    return err.value


def test_a_good_id_token_verifies_rs256_and_es256(auth: IncisiveAuthenticator, keys: Keys) -> None:
    assert verify(auth, sign(keys, claims()))["preferred_username"] == "rita"
    assert verify(auth, sign(keys, claims(), kid="e1", alg="ES256"))["sub"] == "u-1"
    assert keys.fetches == 1


@pytest.mark.parametrize(("body", "why"), [
    (lambda: claims(nonce="n-other"), "nonce"),
    (lambda: claims(nonce=None), "nonce"),
    (lambda: claims(aud="another-client"), "wrong-audience"),
    (lambda: claims(iss="https://evil.test"), "wrong-issuer"),
    (lambda: claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000), "expired"),
    (lambda: claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200), "not-yet-valid"),
    (lambda: claims(iat=None), "missing-claim"),
    (lambda: claims(sub=None), "missing-claim"),
    (lambda: claims(aud=[CLIENT, "other"]), "azp"),
    (lambda: claims(aud=[CLIENT, "other"], azp="other"), "azp"),
    (lambda: claims(azp="other"), "azp"),
])
def test_a_wrong_id_token_is_refused(auth: IncisiveAuthenticator, keys: Keys,
                                     body: Callable[[], dict[str, Any]], why: str) -> None:
    # the claims are made when the test runs (times made at collection expire in a long suite)
    assert why in refused(auth, sign(keys, body())).message


def test_signature_algorithm_and_type_are_checked(auth: IncisiveAuthenticator, keys: Keys) -> None:
    forged = jwt.encode(claims(), keys.rsa["k2"], algorithm="RS256",
                        headers={"kid": "k1", "typ": "JWT"})  # k1's name, k2's signature
    assert "bad-signature" in refused(auth, forged).message
    assert "alg" in refused(auth, sign(keys, claims(), alg="HS256")).message
    assert "alg" in refused(auth, sign(keys, claims(), alg="RS384")).message
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})  # type: ignore[arg-type]
    refused(auth, unsigned)
    assert "wrong-type" in refused(auth, sign(keys, claims(), typ="at+jwt")).message
    refused(auth, "")
    refused(auth, None)
    refused(auth, "not.a.jwt")


def test_an_unknown_kid_refetches_the_jwks_once(auth: IncisiveAuthenticator, keys: Keys,
                                               clock: Clock) -> None:
    assert verify(auth, sign(keys, claims()))  # first fetch
    assert keys.fetches == 1
    clock.now += 31  # past the refetch interval, within the JWKS's ttl
    keys.published = ["k2"]  # the IdP rotated its key
    assert verify(auth, sign(keys, claims(), kid="k2"))["sub"] == "u-1"
    assert keys.fetches == 2
    # a forged kid: no second refetch within the interval
    assert "unknown-kid" in refused(auth, sign(keys, claims(), kid="forged")).message
    assert keys.fetches == 2


def test_refresh_checks_the_subject(auth: IncisiveAuthenticator, keys: Keys) -> None:
    token = sign(keys, claims(nonce=None))
    assert verify(auth, token, nonce=None, sub="u-1")["sub"] == "u-1"
    with pytest.raises(LoginRefused, match="another subject"):
        verify(auth, token, nonce=None, sub="u-2")


@pytest.mark.parametrize(("acr", "minimum", "reason"), [
    (EIDAS + "low", "substantial", "loa-too-low"),
    (EIDAS + "substantial", "high", "loa-too-low"),
    ("urn:mace:incommon:iap:silver", "substantial", "loa-unknown"),
    (None, "substantial", "loa-unknown"),
    (3, "low", "loa-unknown"),
])
def test_level_of_assurance_below_the_minimum_is_refused(
        auth: IncisiveAuthenticator, acr: Any, minimum: str, reason: str) -> None:
    auth.minimum_loa = minimum
    with pytest.raises(LoginRefused) as err:
        auth.check_loa(claims(acr=acr))
    assert err.value.reason == reason
    assert err.value.needed_loa == minimum
    if reason == "loa-too-low":
        assert str(err.value.given_loa) in err.value.message and minimum in err.value.message


def test_levels_at_or_above_the_minimum_pass(auth: IncisiveAuthenticator) -> None:
    assert auth.check_loa(claims(acr=EIDAS + "high")).name == "HIGH"
    auth.minimum_loa = "http://eidas.europa.eu/LoA/low"
    assert auth.check_loa(claims(acr=EIDAS + "low")).name == "LOW"
    with pytest.raises(Exception, match="unknown eIDAS level"):
        auth.minimum_loa = "medium"


def test_groups_map_to_roles_and_unknown_groups_are_ignored(auth: IncisiveAuthenticator) -> None:
    assert auth.roles_for(["/incisive/steward", "/other/x", "/incisive/researcher"]) == [
        "researcher", "steward"]
    with pytest.raises(LoginRefused) as err:
        auth.roles_for(["/other/x", "/incisive/researchers"])
    assert err.value.reason == "no-allowed-group"
    assert err.value.groups == ("/other/x", "/incisive/researchers")
    assert "/incisive/researcher" in err.value.allowed_groups
    assert auth.idp_groups({"groups": "/incisive/auditor"}) == ["/incisive/auditor"]
    assert auth.idp_groups({"groups": [1, None, "/a"]}) == ["/a"]
    assert auth.idp_groups({}) == []
    auth.group_roles = {"staff": "admin"}
    assert auth.roles_for(["staff"]) == ["admin"]
    with pytest.raises(Exception, match="not one of"):
        auth.group_roles = {"staff": "superuser"}


def test_auth_model_carries_roles_as_groups_and_admin(auth: IncisiveAuthenticator) -> None:
    info = {"access_token": "at", "refresh_token": "rt", "id_token": "it", "expires_in": 600}
    model = asyncio.run(auth.build_auth_model(info, claims(), nonce="n-1"))
    assert model["name"] == "rita" and model["groups"] == ["researcher"]
    assert model["admin"] is False
    state = model["auth_state"]
    assert state["access_token"] == "at" and state["refresh_token"] == "rt"
    assert state["acr"] == EIDAS + "substantial" and state["roles"] == ["researcher"]
    assert 590 <= state["expires_at"] - time.time() <= 600
    admin = asyncio.run(auth.build_auth_model(
        info, claims(groups=["/incisive/admin"], preferred_username="Ada"), nonce="n-1"))
    assert admin["admin"] is True and admin["name"] == "ada"
    with pytest.raises(LoginRefused) as err:
        asyncio.run(auth.build_auth_model(info, claims(preferred_username="../root"), nonce="n"))
    assert err.value.reason == "bad-username"
    with pytest.raises(LoginRefused, match="expires_in"):
        asyncio.run(auth.build_auth_model({"access_token": "at"}, claims(), nonce="n"))


def test_check_allowed_is_closed(auth: IncisiveAuthenticator) -> None:
    assert asyncio.run(auth.check_allowed("rita", None)) is False
    assert asyncio.run(auth.check_allowed("rita", {"groups": []})) is False
    assert asyncio.run(auth.check_allowed("rita", {"groups": ["hackers"]})) is False
    assert asyncio.run(auth.check_allowed("rita", {"groups": ["auditor"]})) is True
    auth.allow_all = True  # no shortcut around the roles
    assert asyncio.run(auth.check_allowed("rita", {"groups": []})) is False


def test_defaults_turn_on_pkce_auth_state_and_groups(auth: IncisiveAuthenticator) -> None:
    assert auth.enable_pkce and auth.enable_auth_state and auth.manage_groups
    assert auth.basic_auth  # client_secret_basic
    assert auth.allowed_groups == {"researcher", "annotator", "steward", "auditor", "admin"}
    assert auth.id_token_algorithms == ["RS256", "ES256"]
    assert auth.refresh_margin == 120
    assert not auth.validate_username("Bad Name") and auth.validate_username("a.b-c_d")
