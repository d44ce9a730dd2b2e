"""Verifying OIDC access tokens (RFC 9068 JWTs) into a :class:`Principal`.

:class:`TokenVerifier` checks, in this order, and refuses with the first failing reason:

1. a token is present (``missing``) and is a compact JWS of sane size (``malformed``);
2. the header's ``alg`` is on the allow-list — never ``none``, never HMAC (``alg-not-allowed``);
3. the header's ``typ`` is ``at+jwt`` (``wrong-type``; see ``require_type``);
4. the ``kid`` names exactly one of the issuer's keys, or the token has no ``kid`` and the
   issuer's JWKS holds exactly one key (``unknown-kid``), and ``alg`` fits that key's type
   (``alg-not-allowed``);
5. the signature verifies with that key (``bad-signature``) — always, by PyJWT;
6. required claims are present (``missing-claim``), ``iat``/``nbf`` not in the future and
   ``exp`` not in the past, each with ``leeway`` (``not-yet-valid``, ``expired``), ``iss``
   equals the issuer exactly (``wrong-issuer``), ``aud`` contains the audience
   (``wrong-audience``);
7. ``acr`` asserts an eIDAS level at least ``min_loa`` (``loa-too-low``; absent or unknown
   ``acr`` is too low).

Roles come from the claims named by ``roles_claims`` through a :class:`RoleMapper`: names
it does not know grant nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt
from jwt import exceptions as jwt_errors

from ._errors import AccessDenied, Reason, TokenError
from ._jwks import ASYMMETRIC_ALGORITHMS, JwksCache
from ._roles import LoA, Role, RoleMapper

__all__ = ["DEFAULT_ALGORITHMS", "Principal", "TokenVerifier", "bearer_token"]

#: The algorithms accepted unless configured otherwise.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1 b64token


def _q(value: object, limit: int = 80) -> str:
    """Quote an untrusted value for a message: repr-escaped and truncated."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def bearer_token(header_value: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value (RFC 6750 §2.1).

    The scheme is matched case-insensitively; the token must be one RFC 6750 ``b64token``.

    Raises
    ------
    TokenError
        ``missing`` when the header is absent or empty or carries an empty token;
        ``malformed`` for another scheme or a token with illegal characters or spaces.

    Examples
    --------
    >>> bearer_token("Bearer eyJ.eyJ.sig")
    'eyJ.eyJ.sig'
    >>> bearer_token("Basic dXNlcjpwYXNz")
    Traceback (most recent call last):
    ...
    incisive_lab.access._errors.TokenError: malformed: expected the Bearer scheme, got 'Basic'
    """
    if header_value is None or not header_value.strip():
        raise TokenError(Reason.MISSING, "no Authorization header")
    scheme, _, rest = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenError(Reason.MALFORMED, f"expected the Bearer scheme, got {_q(scheme, 20)}")
    token = rest.strip()
    if not token:
        raise TokenError(Reason.MISSING, "the Bearer header carries no token")
    if not _B64TOKEN.fullmatch(token):
        raise TokenError(
            Reason.MALFORMED, "the bearer token holds characters outside RFC 6750's b64token"
        )
    return token


@dataclass(frozen=True)
class Principal:
    """Who a verified access token speaks for, and what it allows.

    ``(issuer, subject)`` identifies the person; ``username`` and ``email`` are for display
    and logs. Decide with :attr:`roles` (mapped, fail closed) and :attr:`loa`; never with
    :attr:`groups`, which are the raw IdP names.

    Attributes
    ----------
    subject
        The ``sub`` claim.
    issuer
        The ``iss`` claim (equal to the verifier's issuer).
    username
        ``preferred_username``, if the token carries one.
    email
        ``email``, if the token carries one (not checked against ``email_verified``).
    roles
        The project roles granted by the token's role/group names.
    groups
        Every role/group name found in the ``roles_claims``, mapped or not.
    loa
        The eIDAS level asserted by ``acr`` (``None`` only when no minimum is configured
        and ``acr`` asserts no known level).
    client_id
        ``client_id`` (RFC 9068) or else ``azp``: the client the token was issued to.
    scopes
        The ``scope`` claim split on spaces (or an ``scp`` list).
    token_id
        ``jti``, if present.
    expires_at
        ``exp``, seconds since the epoch.
    claims
        Every claim of the token (read-only).
    """

    subject: str
    issuer: str
    username: str | None
    email: str | None
    roles: frozenset[Role]
    groups: frozenset[str]
    loa: LoA | None
    client_id: str | None
    scopes: frozenset[str]
    token_id: str | None
    expires_at: int
    claims: Mapping[str, Any] = field(repr=False)

    def has_role(self, *roles: Role | str) -> bool:
        """Whether the principal holds at least one of ``roles``."""
        return any(Role(r) in self.roles for r in roles)

    def require_role(self, *roles: Role | str) -> None:
        """Refuse unless the principal holds at least one of ``roles``.

        Raises
        ------
        AccessDenied
            Reason ``role-missing`` (HTTP 403).
        """
        if not self.has_role(*roles):
            wanted = " or ".join(Role(r).value for r in roles)
            raise AccessDenied(Reason.ROLE_MISSING, f"{self.subject!r} is not {wanted}")


def _claim_path(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``); a literal key with dots wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _names(value: Any) -> list[str]:
    """Role/group names from a claim value: a list of strings or one string; else none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _normalise_typ(value: str) -> str:
    text = value.strip().lower()
    return text.removeprefix("application/")


class TokenVerifier:
    """Verifies access tokens of one issuer for one audience (a node, the broker...).

    Thread-safe; one instance serves a whole service. ``verify`` does no I/O unless the
    JWKS must be fetched (first use, ``ttl`` expiry, a new ``kid``).

    Parameters
    ----------
    issuer
        The issuer identifier; ``iss`` must equal it exactly.
    audience
        This service's audience (resource indicator); ``aud`` must contain it.
    jwks
        The issuer's keys (:meth:`JwksCache.for_issuer`).
    algorithms
        The JWS algorithm allow-list (default ``RS256 PS256 ES256 EdDSA``); each must be an
        asymmetric algorithm — ``none`` and ``HS*`` are refused here. A token's ``alg``
        must also fit the key its ``kid`` selects.
    leeway
        Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (default 30,
        at most 300).
    min_loa
        The least eIDAS level of assurance (``"low"``, ``"substantial"``, ``"high"``, a
        :class:`LoA` or its URI); ``None`` switches the check off. Default ``substantial``.
    roles_claims
        Claims (dotted paths allowed, e.g. ``realm_access.roles``) holding role or group
        names; default ``("roles", "groups")``.
    role_mapper
        Maps those names to :class:`Role` (default :class:`RoleMapper` ``()``).
    require_type
        Whether the ``typ`` header must be present (default ``True``, as RFC 9068 §4
        requires). A ``typ`` that is present must always be one of ``accepted_types``.
    accepted_types
        Accepted ``typ`` values, compared case-insensitively with an optional
        ``application/`` prefix (default ``at+jwt``).
    required_claims
        Claims that must be present (default ``iss sub aud exp iat``).
    acr_map
        Extra ``acr`` values the IdP uses, mapped to levels.
    max_token_bytes
        Longer tokens are refused as ``malformed`` before parsing (default 16384).

    Raises
    ------
    ValueError
        An algorithm that is not asymmetric, an unknown level, a negative or excessive
        leeway, or ``exp``/``iss``/``aud`` left out of ``required_claims``.

    Examples
    --------
    >>> verifier = TokenVerifier(  # doctest: +SKIP
    ...     "https://idp.example/realms/incisive", "https://node-a.example/",
    ...     jwks=JwksCache.for_issuer("https://idp.example/realms/incisive"))
    >>> principal = verifier.verify_header(request.headers.get("authorization"))  # doctest: +SKIP
    """

    @classmethod
    def for_service(cls, issuer: str, audience: str, *, jwks_url: str | None = None,
                    min_loa: LoA | str | None = "substantial", roles_claims: Sequence[str] = ("roles", "groups"),
                    http: Any = None) -> TokenVerifier:
        """The verifier a service (node, broker) builds from its settings: the JWKS at
        ``jwks_url``, else found through the issuer's discovery document; ``http`` is an
        httpx transport for the JWKS fetches (tests)."""
        jwks = JwksCache(jwks_url, http=http) if jwks_url else JwksCache.for_issuer(issuer, http=http)
        return cls(issuer, audience, jwks=jwks, min_loa=min_loa, roles_claims=roles_claims)

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks: JwksCache,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        min_loa: LoA | str | None = "substantial",
        roles_claims: Sequence[str] = ("roles", "groups"),
        role_mapper: RoleMapper | None = None,
        require_type: bool = True,
        accepted_types: Collection[str] = ("at+jwt",),
        required_claims: Collection[str] = ("iss", "sub", "aud", "exp", "iat"),
        acr_map: Mapping[str, LoA | str] | None = None,
        max_token_bytes: int = 16384,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        bad = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not algorithms:
            raise ValueError(
                f"algorithms {bad or '(empty)'} refused: only asymmetric JWS algorithms "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}) may verify access tokens"
            )
        if not 0 <= leeway <= 300:
            raise ValueError(f"leeway must be between 0 and 300 seconds, got {leeway}")
        missing = {"iss", "aud", "exp"} - set(required_claims)
        if missing:
            raise ValueError(f"required_claims must include {sorted(missing)}")
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self.algorithms = frozenset(algorithms)
        self.leeway = float(leeway)
        self.min_loa = None if min_loa is None else LoA.parse(min_loa)
        self.roles_claims = tuple(roles_claims)
        self.role_mapper = role_mapper if role_mapper is not None else RoleMapper()
        self.require_type = require_type
        self.accepted_types = frozenset(_normalise_typ(t) for t in accepted_types)
        self.required_claims = tuple(dict.fromkeys(required_claims))
        self.acr_map = MappingProxyType({k: LoA.parse(v) for k, v in (acr_map or {}).items()})
        self.max_token_bytes = max_token_bytes

    def __repr__(self) -> str:
        return (
            f"TokenVerifier(issuer={self.issuer!r}, audience={self.audience!r}, "
            f"min_loa={self.min_loa.name.lower() if self.min_loa else None!r})"
        )

    # -- public -----------------------------------------------------------------------

    def verify_header(self, authorization: str | None) -> Principal:
        """Verify the token of an ``Authorization`` header value (see :func:`bearer_token`)."""
        return self.verify(bearer_token(authorization))

    def verify(self, token: str) -> Principal:
        """Verify an access token and return whom it speaks for.

        Raises
        ------
        TokenError
            With the reason code of the first check that fails (see the module docstring).
        """
        if not isinstance(token, str) or not token.strip():
            raise TokenError(Reason.MISSING, "no access token")
        if len(token) > self.max_token_bytes:
            raise TokenError(Reason.MALFORMED, f"token longer than {self.max_token_bytes} bytes")
        if token.count(".") != 2:
            raise TokenError(
                Reason.MALFORMED,
                "not a compact JWS (three dot-separated parts); an opaque or encrypted "
                "access token cannot be verified locally",
            )
        header = self._header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenError(
                Reason.ALG_NOT_ALLOWED,
                f"alg {_q(alg)} is not allowed (allowed: {', '.join(sorted(self.algorithms))})",
            )
        self._check_type(header)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError(Reason.MALFORMED, "the kid header is not a string")
        key = self.jwks.key_for(kid)
        if alg not in key.algorithms:
            raise TokenError(
                Reason.ALG_NOT_ALLOWED,
                f"alg {alg} does not fit key kid={key.kid!r} ({key.kty}: "
                f"{', '.join(sorted(key.algorithms))})",
            )
        claims = self._decode(token, key.key, alg)
        return self._principal(claims)

    def www_authenticate(self, error: TokenError, realm: str | None = None) -> str:
        """The ``WWW-Authenticate`` header for ``error``; for ``loa-too-low`` it lists the
        acceptable ``acr`` values (RFC 9470 §3) so that the client can step up."""
        acr_values = None
        if self.min_loa is not None:
            acr_values = " ".join(level.uri for level in LoA if level >= self.min_loa)
        return error.www_authenticate(realm, acr_values=acr_values)

    # -- steps ------------------------------------------------------------------------

    @staticmethod
    def _header(token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)  # the header only: no claims are read
        except jwt_errors.PyJWTError as exc:
            raise TokenError(Reason.MALFORMED, f"unreadable JOSE header: {exc}") from exc
        if not isinstance(header, dict):
            raise TokenError(Reason.MALFORMED, "the JOSE header is not a JSON object")
        return header

    def _check_type(self, header: Mapping[str, Any]) -> None:
        typ = header.get("typ")
        if typ is None:
            if self.require_type:
                raise TokenError(Reason.WRONG_TYPE, "no typ header (RFC 9068 requires at+jwt)")
            return
        if not isinstance(typ, str) or _normalise_typ(typ) not in self.accepted_types:
            raise TokenError(
                Reason.WRONG_TYPE,
                f"typ {_q(typ)} is not an access token type "
                f"({', '.join(sorted(self.accepted_types))})",
            )

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_iss": True,
                    "verify_aud": True,
                    "require": list(self.required_claims),
                },
            )
        except jwt_errors.InvalidSignatureError as exc:
            raise TokenError(Reason.BAD_SIGNATURE, "the signature does not verify") from exc
        except jwt_errors.ExpiredSignatureError as exc:
            raise TokenError(Reason.EXPIRED, "the token has expired") from exc
        except jwt_errors.ImmatureSignatureError as exc:
            raise TokenError(Reason.NOT_YET_VALID, str(exc)) from exc
        except jwt_errors.MissingRequiredClaimError as exc:
            raise TokenError(Reason.MISSING_CLAIM, f"claim {exc.claim!r} is missing") from exc
        except jwt_errors.InvalidIssuerError as exc:
            raise TokenError(Reason.WRONG_ISSUER, f"iss is not {self.issuer!r}") from exc
        except jwt_errors.InvalidAudienceError as exc:
            raise TokenError(
                Reason.WRONG_AUDIENCE, f"aud does not contain {self.audience!r}"
            ) from exc
        except jwt_errors.InvalidAlgorithmError as exc:
            raise TokenError(Reason.ALG_NOT_ALLOWED, str(exc)) from exc
        except (jwt_errors.PyJWTError, ValueError, TypeError) as exc:
            raise TokenError(Reason.MALFORMED, f"invalid token: {exc}") from exc
        if not isinstance(claims, dict):
            raise TokenError(Reason.MALFORMED, "the claims are not a JSON object")
        # Belt and braces over PyJWT's own checks: exact issuer, audience membership.
        if claims.get("iss") != self.issuer:
            raise TokenError(Reason.WRONG_ISSUER, f"iss is not {self.issuer!r}")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in auds:
            raise TokenError(Reason.WRONG_AUDIENCE, f"aud does not contain {self.audience!r}")
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        sub = claims.get("sub")
        if "sub" in self.required_claims and (not isinstance(sub, str) or not sub):
            raise TokenError(Reason.MISSING_CLAIM, "claim 'sub' is empty")
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise TokenError(Reason.MALFORMED, "exp is not a number")
        loa = LoA.from_acr(claims.get("acr"), self.acr_map)
        if self.min_loa is not None:
            if "acr" not in claims:
                raise TokenError(Reason.LOA_TOO_LOW, "the token carries no acr")
            if loa is None:
                raise TokenError(
                    Reason.LOA_TOO_LOW, f"acr {_q(claims.get('acr'))} is not a known level"
                )
            if loa < self.min_loa:
                raise TokenError(
                    Reason.LOA_TOO_LOW,
                    f"level of assurance {loa.name.lower()} is below {self.min_loa.name.lower()}",
                )
        names: set[str] = set()
        for path in self.roles_claims:
            names.update(_names(_claim_path(claims, path)))
        scope = claims.get("scope")
        if isinstance(scope, str):
            scopes = frozenset(scope.split())
        else:
            scopes = frozenset(_names(claims.get("scp")))
        return Principal(
            subject=sub if isinstance(sub, str) else "",
            issuer=self.issuer,
            username=_str_or_none(claims.get("preferred_username")),
            email=_str_or_none(claims.get("email")),
            roles=self.role_mapper.map(names),
            groups=frozenset(names),
            loa=loa,
            client_id=_str_or_none(claims.get("client_id")) or _str_or_none(claims.get("azp")),
            scopes=scopes,
            token_id=_str_or_none(claims.get("jti")),
            expires_at=int(exp),
            claims=MappingProxyType(claims),
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
