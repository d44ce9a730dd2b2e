"""The token attack matrix: forged and defective tokens against a real JWKS over HTTP.

Every refusal must name its reason code (the node ledgers it) and map to HTTP 401; every
refusal costs the issuer at most the fetches the verifier needed anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from incisive_lab.access import LoA, Reason, Role, TokenError, TokenVerifier

from .conftest import Keys
from .idp import (
    AUDIENCE,
    LoopbackIssuer,
    b64json,
    claims,
    forge_hmac,
    forge_unsigned,
)

Forge = Callable[[LoopbackIssuer, Keys], str]


def now() -> int:
    """The current time, in whole seconds."""
    return int(time.time())


def _tamper(token: str) -> str:
    """The same header and signature over a payload that grants more."""
    header, _, sig = token.split(".")
    return f"{header}.{b64json({'sub': 'user-4711', 'roles': ['admin']})}.{sig}"


# fmt: off
MATRIX: list[tuple[str, Forge, Reason]] = [
    ("bad signature: attacker's key, issuer's kid",
     lambda i, k: k.attacker.sign(claims(i.issuer)), Reason.BAD_SIGNATURE),
    ("bad signature: payload swapped under a real signature",
     lambda i, k: _tamper(k.rsa.sign(claims(i.issuer))), Reason.BAD_SIGNATURE),
    ("bad signature: ES256 by another EC key",
     lambda i, k: type(k.ec).ec("ec1").sign(claims(i.issuer)), Reason.BAD_SIGNATURE),
    ("alg none",
     lambda i, k: forge_unsigned(claims(i.issuer), kid="k1"), Reason.ALG_NOT_ALLOWED),
    ("alg None (capitalised)",
     lambda i, k: forge_unsigned(claims(i.issuer), kid="k1", alg="None"), Reason.ALG_NOT_ALLOWED),
    ("HS256 signed with the issuer's public key PEM",
     lambda i, k: forge_hmac(claims(i.issuer), k.rsa.public_pem(), kid="k1"),
     Reason.ALG_NOT_ALLOWED),
    ("HS512 signed with the public key PEM, no kid",
     lambda i, k: forge_hmac(claims(i.issuer), k.rsa.public_pem(), kid=None, alg="HS512"),
     Reason.ALG_NOT_ALLOWED),
    ("ES256 header naming the RSA key",
     lambda i, k: k.ec.sign(claims(i.issuer), kid="k1"), Reason.ALG_NOT_ALLOWED),
    ("RS384: a valid RSA algorithm that is off the allow-list",
     lambda i, k: k.rsa.sign(claims(i.issuer), alg="RS384"), Reason.ALG_NOT_ALLOWED),
    ("wrong iss",
     lambda i, k: k.rsa.sign(claims("https://evil.test/realms/incisive")), Reason.WRONG_ISSUER),
    ("iss with a trailing slash",
     lambda i, k: k.rsa.sign(claims(i.issuer + "/")), Reason.WRONG_ISSUER),
    ("iss as a list",
     lambda i, k: k.rsa.sign(claims(i.issuer, iss=[i.issuer])), Reason.WRONG_ISSUER),
    ("wrong aud",
     lambda i, k: k.rsa.sign(claims(i.issuer, aud="https://node-b.test/")), Reason.WRONG_AUDIENCE),
    ("aud list without ours",
     lambda i, k: k.rsa.sign(claims(i.issuer, aud=["a", "b"])), Reason.WRONG_AUDIENCE),
    ("aud as a prefix of ours",
     lambda i, k: k.rsa.sign(claims(i.issuer, aud=AUDIENCE[:-1])), Reason.WRONG_AUDIENCE),
    ("expired",
     lambda i, k: k.rsa.sign(claims(i.issuer, exp=now() - 120, iat=now() - 600)), Reason.EXPIRED),
    ("not yet valid (nbf)",
     lambda i, k: k.rsa.sign(claims(i.issuer, nbf=now() + 600)), Reason.NOT_YET_VALID),
    ("issued in the future (iat)",
     lambda i, k: k.rsa.sign(claims(i.issuer, iat=now() + 600, exp=now() + 900)), Reason.NOT_YET_VALID),
    ("no exp",
     lambda i, k: k.rsa.sign(claims(i.issuer, exp=None)), Reason.MISSING_CLAIM),
    ("no sub",
     lambda i, k: k.rsa.sign(claims(i.issuer, sub=None)), Reason.MISSING_CLAIM),
    ("empty sub",
     lambda i, k: k.rsa.sign(claims(i.issuer, sub="")), Reason.MISSING_CLAIM),
    ("no aud",
     lambda i, k: k.rsa.sign(claims(i.issuer, aud=None)), Reason.MISSING_CLAIM),
    ("exp not a number",
     lambda i, k: k.rsa.sign(claims(i.issuer, exp="tomorrow")), Reason.MALFORMED),
    ("unknown kid",
     lambda i, k: k.attacker.sign(claims(i.issuer), kid="forged-kid"), Reason.UNKNOWN_KID),
    ("no kid with a three-key JWKS",
     lambda i, k: k.rsa.sign(claims(i.issuer), kid=False), Reason.UNKNOWN_KID),
    ("LoA low",
     lambda i, k: k.rsa.sign(claims(i.issuer, acr="http://eidas.europa.eu/LoA/low")),
     Reason.LOA_TOO_LOW),
    ("acr missing",
     lambda i, k: k.rsa.sign(claims(i.issuer, acr=None)), Reason.LOA_TOO_LOW),
    ("acr unknown",
     lambda i, k: k.rsa.sign(claims(i.issuer, acr="urn:mace:incommon:iap:gold")),
     Reason.LOA_TOO_LOW),
    ("acr as the bare word 'high'",
     lambda i, k: k.rsa.sign(claims(i.issuer, acr="high")), Reason.LOA_TOO_LOW),
    ("typ JWT (an ID token)",
     lambda i, k: k.rsa.sign(claims(i.issuer), typ="JWT"), Reason.WRONG_TYPE),
    ("no typ",
     lambda i, k: k.rsa.sign(claims(i.issuer), typ=None), Reason.WRONG_TYPE),
    ("unknown critical header",
     lambda i, k: k.rsa.sign(claims(i.issuer), headers={"crit": ["exp-ext"], "exp-ext": 1}),
     Reason.MALFORMED),
    ("opaque access token (oidc-provider-mock style)",
     lambda i, k: "Zm9vYmFyYmF6cXV4", Reason.MALFORMED),
    ("garbage in three parts",
     lambda i, k: "not.a.jwt", Reason.MALFORMED),
    ("JWE (five parts)",
     lambda i, k: "a.b.c.d.e", Reason.MALFORMED),
    ("header not JSON",
     lambda i, k: "bm90IGpzb24." + b64json({}) + ".c2ln", Reason.MALFORMED),
    ("oversized token",
     lambda i, k: k.rsa.sign(claims(i.issuer, pad="x" * 20000)), Reason.MALFORMED),
    ("alg as a list",
     lambda i, k: b64json({"alg": ["RS256"], "typ": "at+jwt", "kid": "k1"}) + "."
     + b64json(claims(i.issuer)) + ".c2ln", Reason.ALG_NOT_ALLOWED),
    ("kid as a number",
     lambda i, k: b64json({"alg": "RS256", "typ": "at+jwt", "kid": 1}) + "."
     + b64json(claims(i.issuer)) + ".c2ln", Reason.MALFORMED),
    ("empty token",
     lambda i, k: "", Reason.MISSING),
]
# fmt: on


@pytest.mark.parametrize(
    ("forge", "reason"), [(f, r) for _, f, r in MATRIX], ids=[name for name, _, _ in MATRIX]
)
def test_attack_is_refused_with_its_reason(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, forge: Forge, reason: Reason
) -> None:
    token = forge(idp, keys)
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.reason is reason, info.value
    assert info.value.status == 401
    assert idp.jwks_hits <= 2  # the initial fetch, plus at most one for an unknown kid


def test_valid_token_is_accepted(verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys) -> None:
    token = keys.rsa.sign(claims(idp.issuer))
    principal = verifier.verify(token)
    assert principal.subject == "user-4711"
    assert principal.issuer == idp.issuer
    assert principal.username == "alice"
    assert principal.email == "alice@example.test"
    assert principal.loa is LoA.SUBSTANTIAL
    assert principal.roles == {Role.RESEARCHER, Role.ANNOTATOR}
    assert principal.client_id == "incisive-hub"
    assert principal.scopes == {"openid", "dicomweb", "fhir"}
    assert principal.token_id == principal.claims["jti"]
    assert idp.hits[idp.DISCOVERY] == 1 and idp.jwks_hits == 1
    verifier.verify(keys.rsa.sign(claims(idp.issuer)))
    assert idp.jwks_hits == 1  # cached


@pytest.mark.parametrize("which", ["PS256", "ES256", "EdDSA"])
def test_other_allowed_algorithms(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys, which: str
) -> None:
    key = {"PS256": keys.rsa, "ES256": keys.ec, "EdDSA": keys.ed}[which]
    assert verifier.verify(key.sign(claims(idp.issuer), alg=which)).subject == "user-4711"


def test_accepted_edge_cases(verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys) -> None:
    # expired 10 s ago: inside the 30 s leeway
    verifier.verify(keys.rsa.sign(claims(idp.issuer, exp=now() - 10, iat=now() - 300)))
    # aud as a list holding ours; typ with its media-type prefix; LoA high
    verifier.verify(
        keys.rsa.sign(claims(idp.issuer, aud=["x", AUDIENCE]), typ="application/at+jwt")
    )
    high = verifier.verify(keys.rsa.sign(claims(idp.issuer, acr="http://eidas.europa.eu/LoA/high")))
    assert high.loa is LoA.HIGH


def test_min_loa_high_refuses_substantial(
    idp: LoopbackIssuer, keys: Keys, verifier: TokenVerifier
) -> None:
    strict = TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, min_loa="high")
    with pytest.raises(TokenError) as info:
        strict.verify(keys.rsa.sign(claims(idp.issuer)))
    assert info.value.reason is Reason.LOA_TOO_LOW
    challenge = strict.www_authenticate(info.value, "node-a")
    assert 'error="insufficient_user_authentication"' in challenge
    assert 'acr_values="http://eidas.europa.eu/LoA/high"' in challenge


def test_without_min_loa_acr_is_optional(
    idp: LoopbackIssuer, keys: Keys, verifier: TokenVerifier
) -> None:
    lax = TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, min_loa=None)
    assert lax.verify(keys.rsa.sign(claims(idp.issuer, acr=None))).loa is None


def test_typ_optional_when_configured(
    idp: LoopbackIssuer, keys: Keys, verifier: TokenVerifier
) -> None:
    lax = TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, require_type=False)
    lax.verify(keys.rsa.sign(claims(idp.issuer), typ=None))
    with pytest.raises(TokenError) as info:  # a typ that is present must still be at+jwt
        lax.verify(keys.rsa.sign(claims(idp.issuer), typ="JWT"))
    assert info.value.reason is Reason.WRONG_TYPE


def test_jwk_alg_narrows_the_key(keys: Keys) -> None:
    from incisive_lab.access import JwksCache

    from .idp import loopback_issuer

    with loopback_issuer() as idp:
        idp.jwks = {"keys": [keys.rsa.jwk(alg="PS256")]}
        with JwksCache.for_issuer(idp.issuer) as jwks:
            v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
            v.verify(keys.rsa.sign(claims(idp.issuer), alg="PS256"))
            with pytest.raises(TokenError) as info:
                v.verify(keys.rsa.sign(claims(idp.issuer), alg="RS256"))
            assert info.value.reason is Reason.ALG_NOT_ALLOWED


@pytest.mark.parametrize("algs", [("HS256",), ("RS256", "none"), ("HS512", "RS256"), ()])
def test_symmetric_or_none_algorithms_cannot_be_configured(
    idp: LoopbackIssuer, verifier: TokenVerifier, algs: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, algorithms=algs)


def test_symmetric_key_in_jwks_is_ignored(keys: Keys) -> None:
    """An IdP that (wrongly) publishes an ``oct`` key does not enable HMAC tokens."""
    from incisive_lab.access import JwksCache

    from .idp import b64url, loopback_issuer

    secret = b"shared-secret-shared-secret-0123"
    with loopback_issuer() as idp:
        idp.jwks = {"keys": [{"kty": "oct", "kid": "h1", "k": b64url(secret)}, keys.rsa.jwk()]}
        with JwksCache.for_issuer(idp.issuer) as jwks:
            v = TokenVerifier(idp.issuer, AUDIENCE, jwks=jwks)
            assert [k.kid for k in jwks.refresh()] == ["k1"]
            with pytest.raises(TokenError) as info:
                v.verify(forge_hmac(claims(idp.issuer), secret, kid="h1"))
            assert info.value.reason is Reason.ALG_NOT_ALLOWED
