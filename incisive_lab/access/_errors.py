"""Errors raised by access control, each with a stable reason code.

A refusal carries a :class:`Reason`: a short, stable, machine-readable code that the node
writes to its ledger, and from which it derives the HTTP status and the
``WWW-Authenticate`` challenge (RFC 6750 §3, RFC 9470 §3). The human message says what
was wrong; it may quote (truncated, ``repr``-escaped) values taken from the token, so it
belongs in logs and the ledger, never in a response header.
"""

from __future__ import annotations

from enum import StrEnum

from incisive_lab.errors import IncisiveLabError


class Reason(StrEnum):
    """Why a request was refused (stable codes: they are written to the ledger)."""

    MISSING = "missing"
    """No token: no ``Authorization`` header, an empty one, or an empty token."""
    MALFORMED = "malformed"
    """Not a compact JWS, bad base64/JSON, a wrong scheme, a bad claim type, unknown ``crit``."""
    BAD_SIGNATURE = "bad-signature"
    """The signature does not verify with the issuer's key named by the token."""
    ALG_NOT_ALLOWED = "alg-not-allowed"
    """``none``, any HMAC, or an algorithm that is off the allow-list or does not fit the key."""
    UNKNOWN_KID = "unknown-kid"
    """No key of the issuer's JWKS matches the token's ``kid`` (or, without ``kid``, no single key)."""
    WRONG_ISSUER = "wrong-issuer"
    """``iss`` is not exactly the configured issuer."""
    WRONG_AUDIENCE = "wrong-audience"
    """``aud`` does not contain the configured audience."""
    EXPIRED = "expired"
    """``exp`` is in the past (beyond the leeway)."""
    NOT_YET_VALID = "not-yet-valid"
    """``nbf`` or ``iat`` is in the future (beyond the leeway)."""
    LOA_TOO_LOW = "loa-too-low"
    """The eIDAS level of assurance from ``acr`` is below the minimum, unknown, or absent."""
    MISSING_CLAIM = "missing-claim"
    """A required claim (``iss``, ``sub``, ``aud``, ``exp``, ``iat`` by default) is absent."""
    WRONG_TYPE = "wrong-type"
    """The JOSE ``typ`` header is not ``at+jwt`` (RFC 9068), e.g. an ID token."""
    JWKS_UNAVAILABLE = "jwks-unavailable"
    """The issuer's keys could not be fetched (a server-side problem, not the client's)."""
    ROLE_MISSING = "role-missing"
    """The token is valid but carries none of the roles the operation needs."""

    @property
    def status(self) -> int:
        """The HTTP status a service answers with for this reason.

        401 for anything wrong with the token (including a level of assurance that is too
        low: RFC 9470 asks for a 401 so that the client can step up), 403 for a valid
        token without the needed role, 503 when the issuer's keys are unavailable.
        """
        if self is Reason.ROLE_MISSING:
            return 403
        if self is Reason.JWKS_UNAVAILABLE:
            return 503
        return 401

    @property
    def oauth_error(self) -> str | None:
        """The RFC 6750 / RFC 9470 ``error`` code for the challenge (``None``: no error code)."""
        if self is Reason.MISSING:
            return None  # RFC 6750 §3.1: no error code when no credentials were sent
        if self is Reason.LOA_TOO_LOW:
            return "insufficient_user_authentication"
        if self is Reason.ROLE_MISSING:
            return "insufficient_scope"
        if self is Reason.JWKS_UNAVAILABLE:
            return None
        return "invalid_token"


class AccessError(IncisiveLabError):
    """Base class of every refusal raised by :mod:`incisive_lab.access`.

    Parameters
    ----------
    reason
        The stable reason code (a :class:`Reason` or its string value).
    message
        What was wrong, for people (logs, ledger).
    """

    def __init__(self, reason: Reason | str, message: str) -> None:
        self.reason = Reason(reason)
        self.message = message
        super().__init__(f"{self.reason.value}: {message}")

    @property
    def status(self) -> int:
        """The HTTP status to answer with (see :attr:`Reason.status`)."""
        return self.reason.status

    def www_authenticate(self, realm: str | None = None, *, acr_values: str | None = None) -> str:
        """The value of the ``WWW-Authenticate`` response header for this refusal.

        Only fixed text derived from the reason code goes into the header (never the
        message, which may quote token content).

        Parameters
        ----------
        realm
            Optional protection-space name (must not contain ``"`` or ``\\``).
        acr_values
            For ``loa-too-low``: the acceptable ``acr`` values, space-separated (RFC 9470).

        Examples
        --------
        >>> TokenError("expired", "token expired at 1700000000").www_authenticate("node-a")
        'Bearer realm="node-a", error="invalid_token", error_description="expired"'
        """
        params: list[str] = []
        if realm is not None:
            if '"' in realm or "\\" in realm:
                raise ValueError("realm must not contain quotes or backslashes")
            params.append(f'realm="{realm}"')
        error = self.reason.oauth_error
        if error is not None:
            params.append(f'error="{error}"')
            params.append(f'error_description="{self.reason.value}"')
        if self.reason is Reason.LOA_TOO_LOW and acr_values:
            params.append(f'acr_values="{acr_values}"')
        return "Bearer" + (" " + ", ".join(params) if params else "")


class TokenError(AccessError):
    """An access token was refused (missing, forged, expired, wrong audience, LoA too low...).

    Examples
    --------
    >>> err = TokenError("wrong-audience", "aud ['other'] does not contain 'node-a'")
    >>> err.reason.value, err.status
    ('wrong-audience', 401)
    """


class AccessDenied(AccessError):
    """A valid principal lacks what an operation needs (reason ``role-missing``, HTTP 403)."""


class JwksError(IncisiveLabError):
    """The issuer's discovery document or JWKS cannot be fetched or is unusable.

    :class:`TokenVerifier` turns it into a :class:`TokenError` with reason
    ``jwks-unavailable``.
    """
