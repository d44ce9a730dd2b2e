"""The issuer's keys: discovery, caching, rotation by kid, the single-key JWKS, outages."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from incisive_lab.access import JwksCache, JwksError, Reason, TokenError, TokenVerifier

from .conftest import Keys
from .idp import AUDIENCE, FakeClock, LoopbackIssuer, claims, loopback_issuer


def _reason(verifier: TokenVerifier, token: str) -> Reason:
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    return info.value.reason


def test_rotation_new_kid_is_fetched_and_accepted(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, clock: FakeClock
) -> None:
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    assert idp.jwks_hits == 1
    idp.publish(keys.rsa, keys.rsa_next)  # the IdP rotates in k2 and signs with it
    clock.advance(verifier.jwks.refetch_interval)
    assert verifier.verify(keys.rsa_next.sign(claims(idp.issuer))).subject == "user-4711"
    assert idp.jwks_hits == 2
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))  # the old key still works
    verifier.verify(keys.rsa_next.sign(claims(idp.issuer)))
    assert idp.jwks_hits == 2
    assert idp.hits[idp.DISCOVERY] == 1  # discovery runs once


def test_forged_kids_cause_no_refetch_storm(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, clock: FakeClock
) -> None:
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    for n in range(200):
        token = keys.attacker.sign(claims(idp.issuer), kid=f"forged-{n}")
        assert _reason(verifier, token) is Reason.UNKNOWN_KID
        clock.advance(0.1)  # 20 s in all: less than one refetch interval
    assert idp.jwks_hits == 1
    clock.advance(verifier.jwks.refetch_interval)
    for n in range(200):
        _reason(verifier, keys.attacker.sign(claims(idp.issuer), kid=f"forged-again-{n}"))
    assert idp.jwks_hits == 2  # one refetch per interval, however many forgeries


def test_rotation_within_the_refetch_interval_waits(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, clock: FakeClock
) -> None:
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    idp.publish(keys.rsa, keys.rsa_next)
    clock.advance(1)
    assert _reason(verifier, keys.rsa_next.sign(claims(idp.issuer))) is Reason.UNKNOWN_KID
    clock.advance(verifier.jwks.refetch_interval)
    verifier.verify(keys.rsa_next.sign(claims(idp.issuer)))


def test_concurrent_new_kid_is_fetched_once(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, clock: FakeClock
) -> None:
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    idp.publish(keys.rsa, keys.rsa_next)
    clock.advance(verifier.jwks.refetch_interval)
    token = keys.rsa_next.sign(claims(idp.issuer))
    start = threading.Barrier(32)
    results: list[str] = []

    def worker() -> None:
        start.wait()
        results.append(verifier.verify(token).subject)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == ["user-4711"] * 32
    assert idp.jwks_hits == 2


def test_ttl_expiry_refetches(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, clock: FakeClock
) -> None:
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    clock.advance(verifier.jwks.ttl + 1)
    idp.publish(keys.rsa_next)  # k1 withdrawn (e.g. compromised)
    verifier.verify(keys.rsa_next.sign(claims(idp.issuer)))
    assert idp.jwks_hits == 2
    assert _reason(verifier, keys.rsa.sign(claims(idp.issuer))) is Reason.UNKNOWN_KID


def test_single_key_jwks_without_kid(keys: Keys) -> None:
    """oidc-provider-mock style: one key, no kid anywhere."""
    with loopback_issuer() as idp, JwksCache.for_issuer(idp.issuer) as jwks:
        idp.publish(keys.rsa, with_kid=False)
        v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
        assert v.verify(keys.rsa.sign(claims(idp.issuer), kid=False)).subject == "user-4711"
        assert _reason(v, keys.attacker.sign(claims(idp.issuer), kid=False)) is Reason.BAD_SIGNATURE
        # a token naming a kid must find it: the key without kid is no wildcard
        assert _reason(v, keys.rsa.sign(claims(idp.issuer), kid="k1")) is Reason.UNKNOWN_KID


def test_two_keys_without_kid_are_ambiguous(keys: Keys) -> None:
    with loopback_issuer() as idp, JwksCache.for_issuer(idp.issuer) as jwks:
        idp.publish(keys.rsa, keys.rsa_next, with_kid=False)
        v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
        assert _reason(v, keys.rsa.sign(claims(idp.issuer), kid=False)) is Reason.UNKNOWN_KID
        assert _reason(v, keys.rsa_next.sign(claims(idp.issuer), kid=False)) is Reason.UNKNOWN_KID


def test_duplicate_kid_is_ambiguous(keys: Keys) -> None:
    with loopback_issuer() as idp, JwksCache.for_issuer(idp.issuer) as jwks:
        idp.jwks = {"keys": [keys.rsa.jwk(), keys.attacker.jwk()]}  # both kid k1
        v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
        assert _reason(v, keys.rsa.sign(claims(idp.issuer))) is Reason.UNKNOWN_KID


def test_issuer_down_before_first_fetch(keys: Keys) -> None:
    with loopback_issuer() as idp, JwksCache.for_issuer(idp.issuer, clock=FakeClock()) as jwks:
        idp.status = 500
        v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
        with pytest.raises(TokenError) as info:
            v.verify(keys.rsa.sign(claims(idp.issuer)))
        assert info.value.reason is Reason.JWKS_UNAVAILABLE and info.value.status == 503
        for _ in range(50):  # failures are rate-limited too
            _reason(v, keys.rsa.sign(claims(idp.issuer)))
        assert sum(idp.hits.values()) == 1


def test_issuer_down_later_serves_stale_keys_then_fails(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, clock: FakeClock
) -> None:
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    idp.status = 503
    clock.advance(verifier.jwks.ttl + 10)
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))  # stale but within max_stale
    clock.advance(verifier.jwks.max_stale)
    assert _reason(verifier, keys.rsa.sign(claims(idp.issuer))) is Reason.JWKS_UNAVAILABLE
    idp.status = None
    clock.advance(verifier.jwks.refetch_interval)
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))


def test_discovery_must_name_the_same_issuer(keys: Keys) -> None:
    with loopback_issuer() as idp, JwksCache.for_issuer(idp.issuer) as jwks:
        idp.publish(keys.rsa)
        idp.claimed_issuer = "https://evil.test/realms/incisive"
        v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
        assert _reason(v, keys.rsa.sign(claims(idp.issuer))) is Reason.JWKS_UNAVAILABLE
        with pytest.raises(JwksError, match="evil"):
            jwks.refresh(force=True)


def test_direct_jwks_uri(keys: Keys) -> None:
    with loopback_issuer() as idp, JwksCache(idp.base + idp.JWKS) as jwks:
        idp.publish(keys.ec)
        v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
        v.verify(keys.ec.sign(claims(idp.issuer)))
        assert idp.hits[idp.DISCOVERY] == 0


@pytest.mark.parametrize(
    "url", ["http://idp.example/jwks", "ftp://127.0.0.1/jwks", "file:///etc/jwks.json", "jwks"]
)
def test_plain_http_only_on_loopback(url: str) -> None:
    with pytest.raises(JwksError, match="https"):
        JwksCache(url)
    with pytest.raises(JwksError, match="https"):
        JwksCache.for_issuer(url)


def test_mock_transport_and_private_members_dropped(keys: Keys) -> None:
    """The I/O seam: an httpx transport. A JWKS leaking private members is read as public."""
    leaked = keys.rsa.jwk() | {"d": "AAAA", "p": "AAAA", "q": "AAAA"}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=json.dumps({"keys": [leaked, {"kty": "RSA"}]}))

    with JwksCache("https://idp.test/jwks", http=httpx.MockTransport(handler)) as jwks:
        (key,) = jwks.refresh()
        assert key.kid == "k1" and not hasattr(key.key, "private_bytes")
        v = TokenVerifier("https://idp.test", AUDIENCE, jwks=jwks)
        v.verify(keys.rsa.sign(claims("https://idp.test")))
    assert seen == ["https://idp.test/jwks"]


def test_jwks_without_usable_keys(keys: Keys) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})

    with (
        JwksCache("https://idp.test/jwks", http=httpx.MockTransport(handler)) as jwks,
        pytest.raises(JwksError, match="no usable"),
    ):
        jwks.refresh()
