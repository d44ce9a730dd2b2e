"""Fixtures for the identity provider's tests: one real ``oidc-provider`` process per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from incisive_lab.access import JwksCache, TokenVerifier
from tests._support.idp import Idp, start_idp

AUDIENCE = "https://node-a.incisive.test/"
OTHER_AUDIENCE = "https://node-b.incisive.test/"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    """The development IdP (``hub/idp/server.mjs``) with the default test users."""
    with start_idp(tmp_path_factory.mktemp("idp"), audience=AUDIENCE,
                   extra_audiences=(OTHER_AUDIENCE,)) as running:
        yield running


def verifier_for(idp: Idp, audience: str = AUDIENCE, *, min_loa: str = "substantial",
                 refetch_interval: float = 30.0) -> TokenVerifier:
    """The project's verifier over the IdP's JWKS, found by discovery (as a node builds it)."""
    jwks = JwksCache.for_issuer(idp.issuer, refetch_interval=refetch_interval)
    return TokenVerifier(idp.issuer, audience, jwks=jwks, min_loa=min_loa)
