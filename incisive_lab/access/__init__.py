"""Access control: verifying OIDC access tokens, the project's roles, levels of assurance.

Every service that takes requests from users (a node, the broker) verifies the caller's
OIDC access token — an RFC 9068 JWT issued by the identity provider for the service's
audience — with a :class:`TokenVerifier` over the issuer's cached keys (:class:`JwksCache`)
and gets a :class:`Principal`: subject, roles (mapped fail-closed to :class:`Role`), eIDAS
level of assurance (:class:`LoA`), scopes. Every refusal is a :class:`TokenError` (or
:class:`AccessDenied`) with a stable :class:`Reason` code for the ledger and an HTTP
status (401/403/503) for the answer.

This package is pure library code: no web framework, and nothing of INCISIVE Lab beyond
the base error class. See ``docs/access-tokens.md``.

Examples
--------
>>> from incisive_lab.access import JwksCache, Role, TokenError, TokenVerifier
>>> issuer = "https://idp.example/realms/incisive"
>>> verifier = TokenVerifier(issuer, "https://node-a.example/",
...                          jwks=JwksCache.for_issuer(issuer), min_loa="substantial")
>>> try:  # doctest: +SKIP
...     principal = verifier.verify_header(authorization_header_value)
...     principal.require_role(Role.RESEARCHER, Role.STEWARD)
... except TokenError as err:
...     ledger_reason, http_status = err.reason.value, err.status
"""

from ._errors import AccessDenied, AccessError, JwksError, Reason, TokenError
from ._jwks import ASYMMETRIC_ALGORITHMS, JwksCache, SigningKey
from ._roles import EIDAS_LOA_URIS, LoA, Role, RoleMapper
from ._tokens import DEFAULT_ALGORITHMS, Principal, TokenVerifier, bearer_token

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "EIDAS_LOA_URIS",
    "AccessDenied",
    "AccessError",
    "JwksCache",
    "JwksError",
    "LoA",
    "Principal",
    "Reason",
    "Role",
    "RoleMapper",
    "SigningKey",
    "TokenError",
    "TokenVerifier",
    "bearer_token",
]
