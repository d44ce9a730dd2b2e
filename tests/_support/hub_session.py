"""A scripted user at the hub: OIDC login, the single-user server's REST API, kernels.

:class:`HubSession` is what a browser does, without the rendering: it logs in at the hub
through the identity provider's password form (the real authorization-code + PKCE flow,
the hub's real callback), starts the user's single-user server, and talks to it as the
JupyterLab front end does — REST with the ``_xsrf`` cookie, and the kernel's WebSocket
channel for ``execute_request``. The end-to-end tests and the workbench benchmark use it
for everything the browser is not needed for (the browser tests cover the pages).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["ExecResult", "HubSession", "LoginRefused"]


class LoginRefused(RuntimeError):
    """The hub refused the login; ``status`` and ``page`` hold its answer."""

    def __init__(self, status: int, page: str) -> None:
        super().__init__(f"the hub refused the login ({status})")
        self.status = status
        self.page = page


@dataclass
class ExecResult:
    """What one cell did: its stdout/stderr text, rich outputs, and error (if any)."""

    stdout: str = ""
    stderr: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    status: str = ""

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


class HubSession:
    """One user's browser-less session at the hub ``hub_url``."""

    def __init__(self, hub_url: str, username: str, password: str, *, timeout: float = 120) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.username = username
        self.password = password
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)
        self.timeout = timeout

    # -- login ---------------------------------------------------------------------------

    def login(self) -> httpx.Response:
        """Log in through the IdP's form; returns the hub's final answer (200 home page).
        :class:`LoginRefused` when the hub answers with a refusal page."""
        resp = self.http.get(f"{self.hub_url}/hub/oauth_login", params={"next": "/hub/home"})
        for _ in range(20):
            if resp.status_code in (301, 302, 303, 307):
                location = str(resp.next_request.url) if resp.next_request else resp.headers["location"]
                path = urlsplit(location).path
                if path.startswith("/interaction/") and not path.endswith("/login"):
                    page = self.http.get(location)
                    if page.status_code != 200:
                        raise RuntimeError(f"the IdP's login page answered {page.status_code}: {page.text[:300]}")
                    base = f"{urlsplit(location).scheme}://{urlsplit(location).netloc}"
                    resp = self.http.post(f"{base}{path}/login",
                                          data={"login": self.username, "password": self.password})
                    if resp.status_code == 401:
                        raise RuntimeError(f"the IdP refused the password of {self.username!r}")
                    continue
                resp = self.http.get(location)
                continue
            if resp.status_code == 200 and urlsplit(str(resp.url)).path.startswith("/hub/"):
                if "/hub/oauth_callback" in str(resp.url):
                    raise LoginRefused(resp.status_code, resp.text)
                return resp
            raise LoginRefused(resp.status_code, resp.text)
        raise RuntimeError("too many redirects while logging in")

    # -- the single-user server ----------------------------------------------------------

    @property
    def server_url(self) -> str:
        return f"{self.hub_url}/user/{self.username}"

    def _xsrf(self, prefix: str | None = None) -> dict[str, str]:
        """The ``_xsrf`` cookie of the server (or of the hub, ``prefix="/hub/"``)."""
        prefix = prefix or f"/user/{self.username}/"
        token = next((c.value for c in self.http.cookies.jar
                      if c.name == "_xsrf" and c.value and prefix.startswith(c.path.rstrip("/") + "/")
                      and c.path.rstrip("/") != ""), None)
        return {"X-XSRFToken": token} if token else {}

    def _cookie_header(self) -> str:
        """The cookies a browser would send to the server's paths."""
        prefix = f"/user/{self.username}/"
        return "; ".join(f"{c.name}={c.value}" for c in self.http.cookies.jar
                         if prefix.startswith(c.path.rstrip("/") + "/") or c.path in ("", "/"))

    def _hub_xsrf(self) -> str:
        return self._xsrf("/hub/").get("X-XSRFToken", "")

    def start_server(self) -> None:
        """Start (or find running) the user's server and pass its OAuth handshake."""
        xsrf = self._hub_xsrf()
        resp = self.http.post(f"{self.hub_url}/hub/api/users/{self.username}/server",
                              headers={"X-XSRFToken": xsrf, "Referer": f"{self.hub_url}/hub/home"})
        if resp.status_code not in (201, 202, 400):  # 400: already running
            raise RuntimeError(f"starting the server answered {resp.status_code}: {resp.text[:500]}")
        deadline = time.monotonic() + self.timeout
        while True:
            model = self.http.get(f"{self.hub_url}/hub/api/user",
                                  headers={"X-XSRFToken": xsrf, "Referer": f"{self.hub_url}/hub/home"})
            if model.status_code == 200:
                server = (model.json().get("servers") or {}).get("")
                if server and server.get("ready"):
                    break
                if not server and not model.json().get("pending") and time.monotonic() > deadline - self.timeout + 5:
                    raise RuntimeError(f"the server of {self.username} stopped while starting: {model.text[:500]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server of {self.username} did not become ready")
            time.sleep(0.2)  # waiting for the spawn
        self._server_oauth()

    def _server_oauth(self) -> None:
        """The single-user server's own OAuth handshake with the hub (sets its cookie)."""
        resp = self.http.get(f"{self.server_url}/api/status")
        for _ in range(10):
            if resp.status_code not in (301, 302, 303):
                break
            resp = self.http.get(str(resp.next_request.url) if resp.next_request else resp.headers["location"])
        resp = self.http.get(f"{self.server_url}/lab")
        for _ in range(10):
            if resp.status_code not in (301, 302, 303):
                break
            resp = self.http.get(str(resp.next_request.url) if resp.next_request else resp.headers["location"])
        if self.api("GET", "/api/status").status_code != 200:
            raise RuntimeError("no session at the single-user server after its OAuth handshake")

    def stop_server(self) -> None:
        xsrf = self._hub_xsrf()
        self.http.delete(f"{self.hub_url}/hub/api/users/{self.username}/server",
                         headers={"X-XSRFToken": xsrf, "Referer": f"{self.hub_url}/hub/home"})
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            model = self.http.get(f"{self.hub_url}/hub/api/user", headers={"X-XSRFToken": xsrf})
            if model.status_code == 200 and not (model.json().get("servers") or {}) and not model.json().get("pending"):
                return
            time.sleep(0.2)  # waiting for the stop

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request to the single-user server (``path`` below ``/user/NAME``) with the session."""
        headers = {**self._xsrf(), **kw.pop("headers", {})}
        return self.http.request(method, self.server_url + path, headers=headers, **kw)

    # -- kernels ----------------------------------------------------------------------------

    def start_kernel(self, name: str | None = None) -> str:
        body = {"name": name} if name else {}
        resp = self.api("POST", "/api/kernels", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"starting a kernel answered {resp.status_code}: {resp.text[:500]}")
        return str(resp.json()["id"])

    def execute(self, kernel_id: str, code: str, *, timeout: float = 120) -> ExecResult:
        """Run ``code`` in the kernel over its WebSocket channel; returns what it printed."""
        return asyncio.run(self._execute(kernel_id, code, timeout))

    async def _channel(self, kernel_id: str, msg_type: str, content: dict[str, Any]) -> tuple[Any, str]:
        """Open the kernel's WebSocket channel (with the browser's cookies) and send one shell
        request; returns the connection and the request's message id."""
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = self.server_url.replace("http://", "ws://").replace("https://", "wss://")
        ws = await websocket_connect(HTTPRequest(
            f"{url}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}",
            headers={"Cookie": self._cookie_header(), **self._xsrf()}))
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": self.username, "session": uuid.uuid4().hex,
                       "msg_type": msg_type, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "content": content}))
        return ws, msg_id

    async def _execute(self, kernel_id: str, code: str, timeout: float) -> ExecResult:
        ws, msg_id = await self._channel(kernel_id, "execute_request", {
            "code": code, "silent": False, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True})
        result = ExecResult()
        got_reply = got_idle = False
        try:
            while not (got_reply and got_idle):
                raw = await asyncio.wait_for(ws.read_message(), timeout)
                if raw is None:
                    raise RuntimeError("the kernel's channel closed")
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                content = msg["content"]
                if kind == "stream":
                    if content["name"] == "stdout":
                        result.stdout += content["text"]
                    else:
                        result.stderr += content["text"]
                elif kind in ("execute_result", "display_data"):
                    result.outputs.append(content)
                elif kind == "error":
                    result.error = content
                elif kind == "status" and content["execution_state"] == "idle":
                    got_idle = True
                elif kind == "execute_reply":
                    result.status = content["status"]
                    got_reply = True
        finally:
            ws.close()
        return result

    def kernel_info(self, kernel_id: str, *, timeout: float = 60) -> dict[str, Any]:
        """Wait for the kernel's ``kernel_info_reply`` over its channel (the kernel is up)."""
        return asyncio.run(self._kernel_info(kernel_id, timeout))

    async def _kernel_info(self, kernel_id: str, timeout: float) -> dict[str, Any]:
        ws, msg_id = await self._channel(kernel_id, "kernel_info_request", {})
        try:
            deadline = time.monotonic() + timeout
            while True:
                raw = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
                if raw is None:
                    raise RuntimeError("the kernel's channel closed")
                msg = json.loads(raw)
                if msg["header"]["msg_type"] == "kernel_info_reply" and \
                        msg.get("parent_header", {}).get("msg_id") == msg_id:
                    return dict(msg["content"])
        finally:
            ws.close()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HubSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

