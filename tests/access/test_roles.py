"""Roles and levels of assurance from claims, the Bearer header, refusals as HTTP answers."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from incisive_lab.access import (
    AccessDenied,
    LoA,
    Reason,
    Role,
    RoleMapper,
    TokenError,
    TokenVerifier,
    bearer_token,
)

from .conftest import Keys
from .idp import AUDIENCE, LoopbackIssuer, claims


def test_roles_from_roles_and_groups_claims_unknown_ignored(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys
) -> None:
    token = keys.rsa.sign(
        claims(
            idp.issuer,
            roles=["steward", "superuser", "Admin", "ADMIN ", 42],
            groups=["/incisive/auditor", "/other/admin", "/incisive/admin/x", "staff"],
        )
    )
    principal = verifier.verify(token)
    assert principal.roles == {Role.STEWARD, Role.AUDITOR}
    assert "superuser" in principal.groups  # raw names kept for logs, not roles
    assert principal.has_role(Role.STEWARD) and not principal.has_role("admin")
    principal.require_role(Role.RESEARCHER, Role.STEWARD)
    with pytest.raises(AccessDenied) as info:
        principal.require_role(Role.ADMIN)
    assert info.value.reason is Reason.ROLE_MISSING and info.value.status == 403


def test_no_role_claims_no_roles(verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys) -> None:
    principal = verifier.verify(keys.rsa.sign(claims(idp.issuer, roles=None, groups="researcher")))
    assert principal.roles == {Role.RESEARCHER}  # a single string counts as one name
    bare = verifier.verify(keys.rsa.sign(claims(idp.issuer, roles=None, groups=None)))
    assert bare.roles == frozenset() and bare.groups == frozenset()
    odd = verifier.verify(keys.rsa.sign(claims(idp.issuer, roles={"admin": True}, groups=None)))
    assert odd.roles == frozenset()  # an object is not a list of names: fail closed


def test_keycloak_claims_and_custom_names(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys
) -> None:
    kc = TokenVerifier(
        idp.issuer,
        AUDIENCE,
        jwks=verifier.jwks,
        roles_claims=("realm_access.roles", "groups"),
        role_mapper=RoleMapper({"INCISIVE Radiologists": [Role.ANNOTATOR, "researcher"]}),
    )
    token = keys.rsa.sign(
        claims(
            idp.issuer,
            roles=["admin"],  # not a configured claim here
            realm_access={"roles": ["offline_access", "steward"]},
            groups=["INCISIVE Radiologists"],
            azp="node-ui",
            client_id=None,
            scope=None,
            scp=["dicomweb.read"],
        )
    )
    principal = kc.verify(token)
    assert principal.roles == {Role.STEWARD, Role.ANNOTATOR, Role.RESEARCHER}
    assert principal.client_id == "node-ui" and principal.scopes == {"dicomweb.read"}


def test_role_mapper_rejects_unknown_target_roles() -> None:
    with pytest.raises(ValueError):
        RoleMapper({"root": "superuser"})
    strict = RoleMapper(exact_names=False, group_prefixes=())
    assert strict.map(["admin", "/incisive/admin"]) == frozenset()


def test_loa_parsing() -> None:
    assert LoA.parse("Substantial") is LoA.SUBSTANTIAL
    assert LoA.parse("http://eidas.europa.eu/LoA/low") is LoA.LOW
    assert LoA.LOW < LoA.SUBSTANTIAL < LoA.HIGH
    assert LoA.from_acr("http://eidas.europa.eu/LoA/HIGH") is None  # exact match only
    assert LoA.from_acr(["http://eidas.europa.eu/LoA/high"]) is None
    assert LoA.from_acr("urn:idp:mfa", {"urn:idp:mfa": LoA.SUBSTANTIAL}) is LoA.SUBSTANTIAL
    with pytest.raises(ValueError):
        LoA.parse("medium")


def test_acr_map_extends_the_levels(
    verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys
) -> None:
    v = TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, acr_map={"urn:idp:mfa": "high"})
    assert v.verify(keys.rsa.sign(claims(idp.issuer, acr="urn:idp:mfa"))).loa is LoA.HIGH


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, Reason.MISSING),
        ("", Reason.MISSING),
        ("   ", Reason.MISSING),
        ("Bearer", Reason.MISSING),
        ("Bearer    ", Reason.MISSING),
        ("Basic dXNlcjpwYXNz", Reason.MALFORMED),
        ("Token abc", Reason.MALFORMED),
        ("Bearer a b", Reason.MALFORMED),
        ('Bearer abc"def', Reason.MALFORMED),
        ("Bearer abc\r\nX-Evil: 1", Reason.MALFORMED),
        ("Bearer ===", Reason.MALFORMED),
    ],
)
def test_bearer_header_refusals(header: str | None, reason: Reason) -> None:
    with pytest.raises(TokenError) as info:
        bearer_token(header)
    assert info.value.reason is reason and info.value.status == 401


def test_bearer_header_accepted() -> None:
    assert bearer_token("Bearer abc.DEF-_~+/.x==") == "abc.DEF-_~+/.x=="
    assert bearer_token("bearer   abc  ") == "abc"


def test_verify_header_end_to_end(verifier: TokenVerifier, idp: LoopbackIssuer, keys: Keys) -> None:
    token = keys.rsa.sign(claims(idp.issuer))
    assert verifier.verify_header(f"Bearer {token}").subject == "user-4711"
    with pytest.raises(TokenError) as info:
        verifier.verify_header(None)
    assert verifier.www_authenticate(info.value, "node-a") == 'Bearer realm="node-a"'


def test_challenges_carry_no_token_content() -> None:
    err = TokenError("wrong-issuer", "iss 'https://evil\"x' is not ...")
    assert err.www_authenticate() == (
        'Bearer error="invalid_token", error_description="wrong-issuer"'
    )
    assert "evil" in str(err)
    assert TokenError(Reason.JWKS_UNAVAILABLE, "down").status == 503
    with pytest.raises(ValueError):
        TokenError("no-such-reason", "x")
    with pytest.raises(ValueError):
        err.www_authenticate('a"b')


def test_configuration_errors(verifier: TokenVerifier, idp: LoopbackIssuer) -> None:
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, leeway=3600)
    with pytest.raises(ValueError, match="exp"):
        TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, required_claims=("iss", "aud"))
    with pytest.raises(ValueError):
        TokenVerifier(idp.issuer, AUDIENCE, jwks=verifier.jwks, min_loa="medium")
    with pytest.raises(ValueError):
        TokenVerifier(idp.issuer, "", jwks=verifier.jwks)


def test_access_imports_nothing_else_of_the_project() -> None:
    code = (
        "import sys, incisive_lab.access; "
        "print(sorted(m for m in sys.modules if m.startswith(('incisive_lab', 'hub', 'extensions'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mods = ast.literal_eval(out.stdout)
    assert all(
        m == "incisive_lab" or m.startswith(("incisive_lab.access", "incisive_lab.errors"))
        for m in mods
    ), mods
