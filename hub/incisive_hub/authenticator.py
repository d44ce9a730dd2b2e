"""OIDC login at an eIDAS level of assurance, roles from IdP groups.

:class:`IncisiveAuthenticator` is oauthenticator's :class:`GenericOAuthenticator` with
what it leaves out done here:

* a ``nonce`` in every authorization request, kept in the (signed) OAuth state cookie and
  checked against the ID token;
* the ID token verified fully against the issuer's JWKS (signature with ``RS256`` or
  ``ES256``, ``iss``, ``aud`` = the client id, ``azp``, ``exp``, ``iat``, ``nonce``; a
  ``kid`` the cached JWKS lacks makes one refetch) — by
  :class:`incisive_lab.access.TokenVerifier`, the nodes' own verifier;
* the eIDAS level of assurance from ``acr`` (``http://eidas.europa.eu/LoA/low`` <
  ``substantial`` < ``high``), at least :attr:`~IncisiveAuthenticator.minimum_loa`; a
  missing or unknown ``acr`` is refused;
* the IdP's ``groups`` mapped to the five roles by :attr:`~IncisiveAuthenticator.group_roles`
  (unknown groups ignored); each role is a hub group of the same name (``manage_groups``),
  which ``load_roles`` binds to a hub role; ``admin`` makes a hub admin; no role: refused;
* refusals answered with a page saying why (HTTP 403, ``hub/templates/incisive-refused.html``);
* the user's access token (for the federation audience) kept in the encrypted auth state
  and refreshed with the refresh token when it expires within
  :attr:`~IncisiveAuthenticator.refresh_margin` seconds; handed to the user's running
  server only by :class:`TokenHandler` (``GET /hub/api/incisive/token``);
* every login decision, refresh and logout written to the hub ledger
  (:mod:`incisive_hub.events`); a logout also drops the tokens from the auth state.

PKCE (S256) and auth state are on; auth state needs ``JUPYTERHUB_CRYPT_KEY``.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from jinja2 import TemplateNotFound
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import url_path_join
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import (
    OAuthCallbackHandler,
    OAuthLoginHandler,
    OAuthLogoutHandler,
    _deserialize_state,
    _serialize_state,
)
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Dict, Float, Integer, List, Unicode, default, validate

from incisive_lab.access import JwksCache, LoA, TokenError, TokenVerifier
from incisive_lab.ledger import Outcome

from .events import HubLedger, account
from .settings import DEFAULT_GROUP_ROLES, DEFAULT_SCOPES, ROLES

__all__ = [
    "IncisiveAuthenticator",
    "IncisiveCallbackHandler",
    "IncisiveLoginHandler",
    "IncisiveLogoutHandler",
    "LoginRefused",
    "TokenHandler",
]

#: The page template of a refusal (in ``hub/templates``, on ``JupyterHub.template_paths``).
REFUSED_TEMPLATE = "incisive-refused.html"


class LoginRefused(Exception):
    """A login that must not go through; the callback answers with a page saying why.

    Attributes
    ----------
    reason
        A stable code: ``loa-too-low``, ``loa-unknown``, ``no-allowed-group``,
        ``bad-id-token``, ``bad-username``, ``blocked``, ``token-exchange``, ``wrong-issuer``.
    message
        One sentence for the person.
    """

    def __init__(self, reason: str, message: str, *, given_loa: str | None = None,
                 needed_loa: str | None = None, groups: Sequence[str] = (),
                 allowed_groups: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.given_loa = given_loa
        self.needed_loa = needed_loa
        self.groups = tuple(groups)
        self.allowed_groups = tuple(allowed_groups)


class IncisiveLoginHandler(OAuthLoginHandler):
    """Adds a fresh ``nonce`` (kept in the signed state cookie) and the federation
    ``resource`` to the authorization request."""

    _nonce: str | None = None

    def set_state_cookie(self, state_cookie_value: str) -> None:
        state = _deserialize_state(state_cookie_value)
        self._nonce = secrets.token_urlsafe(32)
        state["nonce"] = self._nonce
        super().set_state_cookie(_serialize_state(state))

    def authorize_redirect(self, *args: Any, **kwargs: Any) -> None:
        if self._nonce is None:  # set_state_cookie always runs first in OAuthLoginHandler.get
            raise web.HTTPError(500, "no nonce was made for this login")
        extra = dict(kwargs.get("extra_params") or {})
        extra["nonce"] = self._nonce
        authenticator: IncisiveAuthenticator = self.authenticator
        if authenticator.audience:
            extra.setdefault("resource", authenticator.audience)
        kwargs["extra_params"] = extra
        super().authorize_redirect(*args, **kwargs)


class IncisiveCallbackHandler(OAuthCallbackHandler):
    """Checks the RFC 9207 ``iss`` parameter and answers refusals with a page (403)."""

    def check_arguments(self) -> None:
        super().check_arguments()
        iss = self.get_argument("iss", None)
        authenticator: IncisiveAuthenticator = self.authenticator
        if iss is not None and iss.rstrip("/") != authenticator.issuer.rstrip("/"):
            raise LoginRefused("wrong-issuer", "The answer to this login came from another "
                               "identity provider than the one this hub uses.")

    def nonce(self) -> str | None:
        """The nonce sent with this login's authorization request."""
        nonce = _deserialize_state(self.get_state_cookie()).get("nonce")
        return nonce if isinstance(nonce, str) and nonce else None

    async def get(self) -> None:
        try:
            await super().get()
        except LoginRefused as refusal:
            await self.refuse(refusal)

    async def refuse(self, refusal: LoginRefused) -> None:
        """Answer 403 with the refusal page."""
        self.set_status(403)
        self.set_header("Cache-Control", "no-store")
        login_url = url_path_join(self.hub.base_url, "login")
        try:
            html = await self.render_template(REFUSED_TEMPLATE, refusal=refusal,
                                              login_url=login_url)
        except TemplateNotFound:
            self.log.warning("%s is not on JupyterHub.template_paths; plain refusal page",
                             REFUSED_TEMPLATE)
            html = _plain_page(refusal, login_url)
        self.finish(html)


class IncisiveLogoutHandler(OAuthLogoutHandler):
    """Ends the session: the tokens leave the auth state (the user's server gets no access
    token until the next login) and the logout is ledgered."""

    async def handle_logout(self) -> None:
        await super().handle_logout()
        user = self.current_user
        authenticator = self.authenticator
        if user is None or not isinstance(authenticator, IncisiveAuthenticator):
            return
        state = await user.get_auth_state() or {}
        claims = state.get(authenticator.user_auth_state_key)
        for key in ("access_token", "refresh_token", "id_token", "token_response"):
            state.pop(key, None)
        state["expires_at"] = 0
        await user.save_auth_state(state)
        authenticator._ledger_login(claims, Outcome.allow("logged out"), self, action="logout")


def _plain_page(refusal: LoginRefused, login_url: str) -> str:
    from html import escape

    extra = ""
    if refusal.needed_loa:
        extra = (f"<p>Level of assurance of this login: {escape(refusal.given_loa or 'none')}; "
                 f"needed: {escape(refusal.needed_loa)} or higher.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Login refused</title>"
            f"</head><body><h1>Login refused</h1><p role='alert'>{escape(refusal.message)}</p>"
            f"{extra}<p><a href='{escape(login_url)}'>Log in again</a></p></body></html>")


class IncisiveAuthenticator(GenericOAuthenticator):
    """OIDC login for INCISIVE Lab (see the module docstring).

    Configure :attr:`issuer`, ``client_id``, ``client_secret``, :attr:`audience`; the
    authorization and token endpoints come from the issuer's discovery document unless
    set. Subclasses may override :meth:`roles_for` (groups to roles) and
    :meth:`check_loa`.
    """

    login_handler = IncisiveLoginHandler
    callback_handler = IncisiveCallbackHandler
    logout_handler = IncisiveLogoutHandler
    user_auth_state_key = "id_token_claims"

    issuer = Unicode(
        config=True,
        help="""The OIDC issuer (https, or http on loopback). The ID token's ``iss`` must equal
        it; its discovery document gives the endpoints and the JWKS.""",
    )
    audience = Unicode(
        "",
        config=True,
        help="""The federation audience: sent as ``resource`` (RFC 8707) in the authorization
        request, so the access token is for the nodes and the broker. Empty: none sent.""",
    )
    minimum_loa = Unicode(
        "substantial",
        config=True,
        help="""The least eIDAS level of assurance (``low``, ``substantial``, ``high`` or the
        eIDAS URI) a login's ``acr`` must assert; lower, missing or unknown is refused.""",
    )
    group_roles = Dict(
        dict(DEFAULT_GROUP_ROLES),
        config=True,
        help="""IdP group -> role (researcher, annotator, steward, auditor, admin). Each role
        becomes a hub group of the same name; groups not listed are ignored; a user with no
        role is refused.""",
    )
    groups_claim = Unicode(
        "groups",
        config=True,
        help="The ID token claim holding the user's IdP groups (a list of strings).",
    )
    id_token_algorithms = List(
        Unicode(),
        ["RS256", "ES256"],
        config=True,
        help="The JWS algorithms an ID token may be signed with (asymmetric only).",
    )
    refresh_margin = Integer(
        120,
        config=True,
        help="""Seconds before the access token's expiry at which it is refreshed (with the
        refresh token) when the hub is asked for it.""",
    )
    jwks_refetch_interval = Float(
        30.0,
        config=True,
        help="""Least seconds between two JWKS fetches caused by an unknown ``kid`` (bounds
        the traffic forged tokens can cause).""",
    )
    http_timeout = Float(10.0, config=True, help="Seconds for discovery requests.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._discovery: dict[str, Any] | None = None
        self._verifier: TokenVerifier | None = None
        self._refresh_locks: dict[str, asyncio.Lock] = {}

    # -- defaults -----------------------------------------------------------------------

    @default("login_service")
    def _login_service_default(self) -> str:
        return "INCISIVE (eIDAS)"

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("basic_auth")
    def _basic_auth_default(self) -> bool:
        return True  # client_secret_basic, what the IdP registers confidential clients with

    @default("username_claim")
    def _username_claim_default(self) -> str:
        return "preferred_username"

    @default("username_pattern")
    def _username_pattern_default(self) -> str:
        # a name that is safe as a directory, a cgroup and a URL path segment
        return r"^[a-z0-9][a-z0-9._-]{0,63}$"

    @default("username_regex")
    def _username_regex_default(self) -> Any:
        # JupyterHub compiles username_pattern only when it is set, not for a default
        return re.compile(self.username_pattern) if self.username_pattern else None

    @default("scope")
    def _scope_default(self) -> list[str]:
        return list(DEFAULT_SCOPES)

    @default("allowed_groups")
    def _allowed_groups_default(self) -> set[str]:
        return set(self.group_roles.values())

    @default("authorize_url")
    def _authorize_url_default(self) -> str:
        return str(self.discovery()["authorization_endpoint"])

    @default("token_url")
    def _token_url_default(self) -> str:
        return str(self.discovery()["token_endpoint"])

    @validate("minimum_loa")
    def _validate_minimum_loa(self, proposal: Any) -> str:
        LoA.parse(proposal.value)  # ValueError names the level
        return str(proposal.value)

    @validate("group_roles")
    def _validate_group_roles(self, proposal: Any) -> dict[str, str]:
        for group, role in proposal.value.items():
            if role not in ROLES:
                raise ValueError(f"group_roles[{group!r}] = {role!r} is not one of "
                                 f"{', '.join(ROLES)}")
        return dict(proposal.value)

    # -- discovery and the ID token -----------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The issuer's OIDC discovery document (fetched once; its ``issuer`` must match)."""
        if self._discovery is None:
            if not self.issuer:
                raise ValueError("IncisiveAuthenticator.issuer is not configured")
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                resp = httpx.get(url, timeout=self.http_timeout, follow_redirects=False)
                resp.raise_for_status()
                doc = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise RuntimeError(f"cannot read the issuer's discovery document {url}: {exc}"
                                   ) from exc
            if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
                raise RuntimeError(f"{url} names issuer {doc.get('issuer')!r}, "
                                   f"not {self.issuer!r}")
            self._discovery = doc
        return self._discovery

    @property
    def verifier(self) -> TokenVerifier:
        """The ID token verifier (the project's JWT verifier, set for ID tokens)."""
        if self._verifier is None:
            jwks = self.make_jwks()
            self._verifier = TokenVerifier(
                self.issuer, self.client_id, jwks=jwks, algorithms=self.id_token_algorithms,
                min_loa=None, require_type=False, accepted_types=("jwt",),
                required_claims=("iss", "sub", "aud", "exp", "iat"))
        return self._verifier

    def make_jwks(self) -> JwksCache:
        """The issuer's key cache (found by discovery; tests override the transport)."""
        return JwksCache.for_issuer(self.issuer, refetch_interval=self.jwks_refetch_interval)

    async def verify_id_token(self, id_token: object, *, nonce: str | None,
                              sub: str | None = None) -> dict[str, Any]:
        """The verified claims of an ID token.

        Parameters
        ----------
        id_token
            The token endpoint's ``id_token``.
        nonce
            The nonce sent with the authorization request: the token must carry it.
            ``None`` for a refresh (:meth:`refresh_user` compares the nonce itself).
        sub
            The subject the token must name (a refresh: the logged-in subject).

        Raises
        ------
        LoginRefused
            ``bad-id-token`` with what failed.
        """
        if not isinstance(id_token, str) or not id_token:
            raise LoginRefused("bad-id-token", "The identity provider sent no ID token.")
        try:
            principal = await asyncio.to_thread(self.verifier.verify, id_token)
        except TokenError as err:
            raise LoginRefused("bad-id-token", f"The ID token was refused ({err.reason.value}): "
                               f"{err}.") from err
        claims = dict(principal.claims)
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.client_id:
            raise LoginRefused("bad-id-token", "The ID token is for several audiences and its "
                               "azp is not this hub.")
        if "azp" in claims and claims["azp"] != self.client_id:
            raise LoginRefused("bad-id-token", "The ID token's azp is not this hub.")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise LoginRefused("bad-id-token", "The ID token does not carry this login's "
                                   "nonce (a replayed or substituted token).")
        if sub is not None and claims.get("sub") != sub:
            raise LoginRefused("bad-id-token", "The refreshed ID token names another subject.")
        return claims

    # -- decisions ----------------------------------------------------------------------

    def check_loa(self, claims: Mapping[str, Any]) -> LoA:
        """The login's level of assurance, if at least :attr:`minimum_loa`.

        Raises
        ------
        LoginRefused
            ``loa-unknown`` (no or an unknown ``acr``) or ``loa-too-low``.
        """
        needed = LoA.parse(self.minimum_loa)
        acr = claims.get("acr")
        level = LoA.from_acr(acr)
        if level is None:
            raise LoginRefused(
                "loa-unknown",
                f"This login carries no eIDAS level of assurance this hub recognises "
                f"(acr {acr!r}); it needs at least {needed.name.lower()}.",
                given_loa=None if acr is None else str(acr), needed_loa=needed.name.lower())
        if level < needed:
            raise LoginRefused(
                "loa-too-low",
                f"This login was made at eIDAS level of assurance {level.name.lower()}; this "
                f"workbench needs at least {needed.name.lower()}.",
                given_loa=level.name.lower(), needed_loa=needed.name.lower())
        return level

    def idp_groups(self, claims: Mapping[str, Any]) -> list[str]:
        """The user's IdP groups from :attr:`groups_claim` (non-strings dropped)."""
        value = claims.get(self.groups_claim)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return []
        return [g for g in value if isinstance(g, str) and g]

    def roles_for(self, groups: Sequence[str]) -> list[str]:
        """The roles of these IdP groups (unknown groups map to nothing), sorted.

        Raises
        ------
        LoginRefused
            ``no-allowed-group`` when no group maps to a role.
        """
        roles = sorted({self.group_roles[g] for g in groups if g in self.group_roles})
        if not roles:
            raise LoginRefused(
                "no-allowed-group",
                "This account is in no group that may use this workbench.",
                groups=groups, allowed_groups=sorted(self.group_roles))
        return roles

    async def build_auth_model(self, token_info: dict[str, Any], claims: dict[str, Any],
                               *, nonce: str | None) -> dict[str, Any]:
        """The JupyterHub auth model of a verified login or refresh."""
        loa = self.check_loa(claims)
        groups = self.idp_groups(claims)
        roles = self.roles_for(groups)
        username = self.user_info_to_username(claims)
        username = self.normalize_username(str(username))
        if not self.validate_username(username):
            raise LoginRefused("bad-username", f"The account name {username!r} cannot be used "
                               "at this hub (lowercase letters, digits, '.', '_', '-').")
        expires_in = token_info.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise LoginRefused("token-exchange", "The identity provider did not say when the "
                               "access token expires (expires_in).")
        auth_state = self.build_auth_state_dict(token_info, claims)
        auth_state.update(
            expires_at=int(time.time() + float(expires_in)), nonce=nonce, issuer=self.issuer,
            sub=claims["sub"], acr=loa.uri, roles=roles, idp_groups=groups)
        return {
            "name": username,
            "admin": "admin" in roles or username in self.admin_users,
            "auth_state": auth_state,
            "groups": roles,
        }

    # -- JupyterHub's authenticator API -------------------------------------------------

    async def authenticate(self, handler: Any, data: Any = None, **kwargs: Any
                           ) -> dict[str, Any]:
        params = self.build_access_tokens_request_params(handler, data)
        try:
            token_info = await self.get_token_info(handler, params)
        except HTTPClientError as exc:
            self._ledger_login(None, Outcome.deny(f"token exchange failed: HTTP {exc.code}"),
                               handler)
            raise LoginRefused("token-exchange", "The identity provider did not issue tokens "
                               f"for this login (HTTP {exc.code}); please log in again."
                               ) from exc
        nonce = handler.nonce() if isinstance(handler, IncisiveCallbackHandler) else None
        if nonce is None:
            raise LoginRefused("bad-id-token", "This login's nonce is missing from its state "
                               "cookie; please log in again.")
        claims: dict[str, Any] | None = None
        try:
            claims = await self.verify_id_token(token_info.get("id_token"), nonce=nonce)
            return await self.build_auth_model(token_info, claims, nonce=nonce)
        except LoginRefused as refusal:
            self._ledger_login(claims, Outcome.deny(f"{refusal.reason}: {refusal.message}"),
                               handler)
            raise

    def check_blocked_users(self, username: str, authentication: Any = None) -> bool:
        if not super().check_blocked_users(username, authentication):
            claims = (authentication or {}).get("auth_state", {}).get(self.user_auth_state_key)
            self._ledger_login(claims, Outcome.deny("blocked: the account is blocked"), None)
            raise LoginRefused("blocked", "This account is blocked at this hub.")
        return True

    async def check_allowed(self, username: str, auth_model: Any) -> bool:
        """Allowed exactly when the login mapped to at least one role (fail closed: no
        ``allow_all`` or ``allowed_users`` shortcut)."""
        if not auth_model:
            return False
        groups = auth_model.get("groups") or []
        return bool(groups) and all(g in ROLES for g in groups)

    async def run_post_auth_hook(self, handler: Any, authentication: dict[str, Any]
                                 ) -> dict[str, Any]:
        state = authentication.get("auth_state") or {}
        self._ledger_login(state.get(self.user_auth_state_key),
                           Outcome.allow("roles " + ",".join(authentication.get("groups", []))),
                           handler)
        result: dict[str, Any] = await super().run_post_auth_hook(handler, authentication)
        return result

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        """Keep the user's access token fresh: ``True`` while it has more than
        :attr:`refresh_margin` seconds left; else refresh it with the refresh token and
        return the new auth model (roles and level re-checked); ``False`` (log in again) when
        that is impossible."""
        lock = self._refresh_locks.setdefault(user.name, asyncio.Lock())
        async with lock:
            state = await user.get_auth_state()
            if not state:
                return False
            if state.get("expires_at", 0) - time.time() > self.refresh_margin:
                return True
            refresh_token = state.get("refresh_token")
            claims = state.get(self.user_auth_state_key) or {}
            if not refresh_token:
                return False
            params = self.build_refresh_token_request_params(refresh_token)
            try:
                token_info = await self.get_token_info(handler, params)
                if not token_info.get("refresh_token"):
                    token_info["refresh_token"] = refresh_token
                new_claims = claims
                if token_info.get("id_token"):
                    new_claims = await self.verify_id_token(
                        token_info["id_token"], nonce=None, sub=state.get("sub"))
                    previous = state.get("nonce")
                    got = new_claims.get("nonce")
                    if got is not None and previous is not None and got != previous:
                        raise LoginRefused("bad-id-token", "The refreshed ID token carries "
                                           "another nonce.")
                model = await self.build_auth_model(token_info, new_claims,
                                                    nonce=state.get("nonce"))
            except (HTTPClientError, LoginRefused, web.HTTPError) as exc:
                self.log.warning("refreshing the tokens of %s failed: %s", user.name, exc)
                self._ledger_login(claims, Outcome.deny(f"refresh failed: {exc}"), handler,
                                   action="refresh")
                return False
            if model["name"] != user.name:
                self._ledger_login(claims, Outcome.deny("refresh names another user"), handler,
                                   action="refresh")
                return False
            await user.save_auth_state(model["auth_state"])
            self._ledger_login(new_claims, Outcome.allow("access token refreshed"), handler,
                               action="refresh")
            return model

    # -- ledger -------------------------------------------------------------------------

    def _ledger_login(self, claims: Mapping[str, Any] | None, outcome: Outcome, handler: Any,
                      *, action: str = "login") -> None:
        claims = claims or {}
        sub = claims.get("sub")
        actor = account(str(sub), self.issuer) if isinstance(sub, str) and sub else "anonymous"
        amr = claims.get("amr")
        address = None
        request = getattr(handler, "request", None)
        if request is not None:
            address = getattr(request, "remote_ip", None)
        details = {
            "issuer": self.issuer, "client": self.client_id,
            "acr": claims.get("acr") if isinstance(claims.get("acr"), str) else None,
            "amr": [a for a in amr if isinstance(a, str)] if isinstance(amr, list) else None,
            "session": claims.get("sid") if isinstance(claims.get("sid"), str) else None,
            "address": address,
        }
        HubLedger.instance().login(actor=actor, outcome=outcome, action=action,
                                   details=details)

    # -- the token handler --------------------------------------------------------------

    async def fresh_access_token(self, user: Any, handler: Any) -> tuple[str, int]:
        """The user's access token and its expiry, refreshed first if it expires within
        :attr:`refresh_margin` seconds.

        Raises
        ------
        tornado.web.HTTPError
            401 when it cannot be refreshed (the user must log in again).
        """
        state = await user.get_auth_state() or {}
        if state.get("expires_at", 0) - time.time() <= self.refresh_margin:
            model = await self.refresh_user(user, handler)
            if model is False:
                raise web.HTTPError(401, "the access token cannot be refreshed: log in again")
            if isinstance(model, dict):
                await handler.auth_to_user(model, user)
            state = await user.get_auth_state() or {}
        token, expires_at = state.get("access_token"), state.get("expires_at")
        if not isinstance(token, str) or not isinstance(expires_at, int):
            raise web.HTTPError(401, "no access token in the auth state: log in again")
        if expires_at <= time.time():
            raise web.HTTPError(401, "the access token has expired: log in again")
        return token, expires_at


class TokenHandler(APIHandler):
    """``GET /hub/api/incisive/token``: the user's access token, for their running server.

    Only the API token of one of the user's running servers is accepted (compared in
    constant time with the spawner's ``api_token``); cookies and any other token are
    refused. Answers ``{"access_token": ..., "expires_at": <epoch seconds>}``.
    """

    _accept_cookie_auth = False  # a browser's cookie never gets the token

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        presented = self.get_auth_token()
        user = self.current_user
        if not presented or user is None:
            raise web.HTTPError(401, "a running server's API token is required")
        if getattr(user, "kind", None) != "user":
            raise web.HTTPError(403, "only a user's own running server may ask for the token")
        if not _is_running_server_token(user, presented):
            raise web.HTTPError(403, "this token is not the API token of the user's running "
                                "server")
        authenticator = self.authenticator
        if not isinstance(authenticator, IncisiveAuthenticator):
            raise web.HTTPError(500, "the hub's authenticator keeps no access tokens")
        token, expires_at = await authenticator.fresh_access_token(user, self)
        self.finish({"access_token": token, "expires_at": expires_at})


def _is_running_server_token(user: Any, presented: str) -> bool:
    given = presented.encode()
    match = False
    for spawner in user.spawners.values():
        expected = getattr(spawner, "api_token", None)
        if not expected or not spawner.active:
            continue
        # no early exit: every running server's token is compared
        match = hmac.compare_digest(given, str(expected).encode()) or match
    return match

