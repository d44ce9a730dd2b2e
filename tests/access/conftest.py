"""Fixtures for the token tests: generated keys, a loopback issuer, a verifier over it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from incisive_lab.access import JwksCache, TokenVerifier

from .idp import AUDIENCE, FakeClock, LoopbackIssuer, TestKey


@dataclass
class Keys:
    """The keys of one test session (generated, never stored)."""

    rsa: TestKey  # the issuer's current key, kid k1
    rsa_next: TestKey  # the key rotated in, kid k2
    ec: TestKey  # kid ec1
    ed: TestKey  # kid ed1
    attacker: TestKey  # an RSA key the issuer never published


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Fresh keys, generated once per test session."""
    return Keys(
        rsa=TestKey.rsa("k1"),
        rsa_next=TestKey.rsa("k2"),
        ec=TestKey.ec("ec1"),
        ed=TestKey.ed25519("ed1"),
        attacker=TestKey.rsa("k1"),
    )


@pytest.fixture
def idp(keys: Keys) -> Iterator[LoopbackIssuer]:
    """A loopback issuer publishing the RSA, EC and Ed25519 keys."""
    issuer = LoopbackIssuer()
    issuer.publish(keys.rsa, keys.ec, keys.ed)
    try:
        yield issuer
    finally:
        issuer.close()


@pytest.fixture
def clock() -> FakeClock:
    """The JWKS cache's clock."""
    return FakeClock()


@pytest.fixture
def jwks(idp: LoopbackIssuer, clock: FakeClock) -> Iterator[JwksCache]:
    """The issuer's keys, found by OIDC discovery over HTTP."""
    with JwksCache.for_issuer(idp.issuer, clock=clock) as cache:
        yield cache


@pytest.fixture
def verifier(idp: LoopbackIssuer, jwks: JwksCache) -> TokenVerifier:
    """A verifier with the defaults (min LoA substantial, typ at+jwt required)."""
    return TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
