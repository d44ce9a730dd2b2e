"""Where the gateway gets the user's access token: never from the kernel, never stored on disk.

A *token source* is a callable that returns the user's current access token (``str``), or
an awaitable of one. In a hub, :class:`HubTokenSource` asks JupyterHub:

``GET {JUPYTERHUB_API_URL}/incisive/token`` with ``Authorization: token
{JUPYTERHUB_API_TOKEN}`` (the single-user server's own API token) answers ``{"access_token":
"<RFC 9068 JWT>", "expires_at": <epoch seconds>}``; the hub refreshes the token at the
identity provider when it is about to expire, so the gateway never holds a refresh token.
The answer is cached until ``expires_at - margin`` (60 s).

Outside a hub (tests, a laptop) any callable will do, e.g. ``lambda: idp.token("researcher")``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

__all__ = ["HubTokenSource", "TokenSource", "TokenUnavailable"]

#: A callable giving the user's access token (or an awaitable of it).
TokenSource = Callable[[], "str | Awaitable[str]"]


class TokenUnavailable(RuntimeError):
    """The user's access token could not be obtained (the sentence says from where and why)."""


def check_token(value: object, where: str) -> str:
    """``value`` if it looks like a bearer token (a non-empty printable string), else raise."""
    if not isinstance(value, str) or not value or len(value) > 16384:
        raise TokenUnavailable(f"{where} gave no access token")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise TokenUnavailable(f"{where} gave an access token with characters a bearer token cannot have")
    return value


class HubTokenSource:
    """The user's access token from JupyterHub (see the module docstring).

    Thread- and task-safe: one request to the hub at a time per event loop (and one at a
    time across threads for :meth:`token`); concurrent callers wait for it and share the
    answer.

    Parameters
    ----------
    api_url
        The hub's API URL (``JUPYTERHUB_API_URL``, e.g. ``http://127.0.0.1:8081/hub/api``).
    api_token
        The single-user server's API token (``JUPYTERHUB_API_TOKEN``).
    margin
        Seconds before ``expires_at`` at which a cached token is no longer used.
    timeout
        Seconds to wait for the hub.
    transport, async_transport
        httpx transports (tests); default: the network.
    clock
        Epoch seconds now (tests).
    """

    def __init__(self, api_url: str, api_token: str, *, margin: float = 60.0, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url: {api_url!r} is not an http(s) URL (JUPYTERHUB_API_URL)")
        if not api_token:
            raise ValueError("api_token: empty (JUPYTERHUB_API_TOKEN)")
        self.url = api_url.rstrip("/") + "/incisive/token"
        self._api_token = api_token
        self.margin = margin
        self.timeout = timeout
        self._transport = transport
        self._async_transport = async_transport
        self._clock = clock
        self._cached: tuple[str, float] | None = None  # (token, use until)
        self._state = threading.Lock()
        self._fetching = threading.Lock()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **kwargs: Any) -> HubTokenSource:
        """A source from ``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN``.

        Raises
        ------
        TokenUnavailable
            Either variable is missing (not inside a hub-spawned server).
        """
        env = os.environ if environ is None else environ
        missing = [k for k in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN") if not env.get(k)]
        if missing:
            raise TokenUnavailable(f"{' and '.join(missing)} not set: the gateway's token source "
                                   "'hub' works only in a server spawned by JupyterHub")
        return cls(env["JUPYTERHUB_API_URL"], env["JUPYTERHUB_API_TOKEN"], **kwargs)

    def __repr__(self) -> str:  # never the API token
        return f"HubTokenSource({self.url!r})"

    # ------------------------------------------------------------------ cache
    def _fresh(self) -> str | None:
        with self._state:
            if self._cached is not None and self._clock() < self._cached[1]:
                return self._cached[0]
            return None

    def invalidate(self) -> None:
        """Forget the cached token (a destination refused it): the next call asks the hub."""
        with self._state:
            self._cached = None

    def _accept(self, response: httpx.Response) -> str:
        if response.status_code != 200:
            raise TokenUnavailable(f"the hub answered {response.status_code} at {self.url}: "
                                   f"{response.text[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise TokenUnavailable(f"the hub's answer at {self.url} is not JSON") from None
        if not isinstance(body, dict):
            raise TokenUnavailable(f"the hub's answer at {self.url} is not a JSON object")
        token = check_token(body.get("access_token"), f"the hub ({self.url})")
        expires = body.get("expires_at")
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise TokenUnavailable(f"the hub's answer at {self.url} has no numeric expires_at")
        until = float(expires) - self.margin
        with self._state:
            # a token that expires within the margin is used once and not kept
            self._cached = (token, until) if until > self._clock() else None
        return token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self._api_token}", "Accept": "application/json"}

    # ------------------------------------------------------------------ fetching
    def token(self) -> str:
        """The access token (blocking; for threads)."""
        cached = self._fresh()
        if cached is not None:
            return cached
        with self._fetching:
            cached = self._fresh()
            if cached is not None:
                return cached
            try:
                with httpx.Client(transport=self._transport, timeout=self.timeout,
                                  follow_redirects=False) as http:
                    response = http.get(self.url, headers=self._headers())
            except httpx.HTTPError as exc:
                raise TokenUnavailable(f"cannot reach the hub at {self.url}: {exc}") from None
            return self._accept(response)

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._state:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
            return lock

    async def __call__(self) -> str:
        """The access token (for an event loop; never blocks it)."""
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock():
            cached = self._fresh()
            if cached is not None:
                return cached
            try:
                async with httpx.AsyncClient(transport=self._async_transport, timeout=self.timeout,
                                             follow_redirects=False) as http:
                    response = await http.get(self.url, headers=self._headers())
            except httpx.HTTPError as exc:
                raise TokenUnavailable(f"cannot reach the hub at {self.url}: {exc}") from None
            return self._accept(response)
