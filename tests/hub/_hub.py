"""A real JupyterHub (``hub/jupyterhub_config.py``) against the real development IdP.

Used by the hub's tests and the end-to-end tests::

    from tests.hub._hub import HubClient, start_hub, start_hub_idp, hub_login

    client = HubClient.new()                       # the hub's port and client secret
    with start_hub_idp(tmp_path / "idp", client=client, audience=AUDIENCE) as idp, \\
            start_hub(tmp_path / "hub", idp, gateway_config, client=client) as hub:
        http, page = hub_login(hub.url, "researcher")

The IdP must know the hub as a confidential client whose redirect URI names the hub's
port: :class:`HubClient` picks the port first and gives the IdP's ``clients[]`` entry
(:meth:`HubClient.idp_entry`). :func:`start_hub_idp` starts ``hub/idp/server.mjs`` with
that client, the tests' public client and :data:`HUB_USERS`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from incisive_lab._processes import free_port, stop_detached
from tests._support.idp import CLIENT_ID, DEFAULT_SCOPES, REDIRECT_URI, Idp

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "hub" / "jupyterhub_config.py"

#: One user per role (LoA substantial or high), one at LoA low in an allowed group, one
#: outside every allowed group.
HUB_USERS: tuple[Mapping[str, Any], ...] = (
    {"username": "researcher", "roles": ["researcher"], "groups": ["/incisive/researcher"],
     "loa": "substantial", "organisation": "uni-a.example"},
    {"username": "annotator", "roles": ["annotator"], "groups": ["/incisive/annotator"],
     "loa": "high", "organisation": "uni-a.example"},
    {"username": "steward", "roles": ["steward"], "groups": ["/incisive/steward"],
     "loa": "substantial", "organisation": "hospital-a.example"},
    {"username": "auditor", "roles": ["auditor"], "groups": ["/incisive/auditor"],
     "loa": "substantial"},
    {"username": "admin", "roles": ["admin"], "groups": ["/incisive/admin", "/other/club"],
     "loa": "high"},
    {"username": "lowloa", "roles": ["researcher"], "groups": ["/incisive/researcher"],
     "loa": "low"},
    {"username": "outsider", "roles": [], "groups": ["/elsewhere/visitors"],
     "loa": "substantial"},
)


@dataclass(frozen=True)
class HubClient:
    """The hub's port and its OAuth client at the IdP."""

    port: int
    client_id: str = "incisive-hub"
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @classmethod
    def new(cls, port: int = 0) -> HubClient:
        """A client for a hub on ``port`` (0: a free port)."""
        return cls(port=port or free_port())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def idp_entry(self) -> dict[str, Any]:
        """The IdP configuration's ``clients[]`` entry for this hub."""
        return {"client_id": self.client_id, "client_secret": self.secret,
                "redirect_uris": [self.url + "/hub/oauth_callback"]}


def start_hub_idp(tmp_dir: str | os.PathLike[str], *, client: HubClient, audience: str,
                  users: Sequence[Mapping[str, Any]] = HUB_USERS,
                  extra_audiences: Sequence[str] = (), scopes: Sequence[str] = DEFAULT_SCOPES,
                  access_token_ttl: int = 600, timeout: float = 30.0) -> Idp:
    """``hub/idp/server.mjs`` (dev login) knowing the hub's client and the tests' client."""
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    audiences = [audience, *extra_audiences]
    config = {
        "resources": [{"audience": a, "scopes": list(scopes), "access_token_ttl": access_token_ttl}
                      for a in audiences],
        "default_audience": audience,
        "clients": [{"client_id": CLIENT_ID, "redirect_uris": [REDIRECT_URI]},
                    client.idp_entry()],
        "users": [dict(u) for u in users],
    }
    config_file = root / "idp-config.json"
    config_file.write_text(json.dumps(config, indent=2))
    config_file.chmod(0o600)
    idp = Idp(root=root, config_file=config_file, audience=audience, jwks_file=None,
              timeout=timeout)
    idp._scopes = {a: tuple(scopes) for a in audiences}
    try:
        idp.start(0)
    except BaseException:
        idp.stop()
        raise
    return idp


@dataclass
class RunningHub:
    """A running ``jupyterhub -f hub/jupyterhub_config.py``."""

    url: str
    root: Path
    settings_file: Path
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_file(self) -> Path:
        return self.root / "hub.log"

    def log(self) -> str:
        """The hub's output so far (read it when a test fails)."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    @property
    def api_url(self) -> str:
        return self.url + "/hub/api"

    def ledger_events(self) -> list[Any]:
        """The hub ledger's events so far (opened read-only)."""
        from incisive_lab.ledger import Ledger

        with Ledger.open(self.state_dir / "ledger", read_only=True) as ledger:
            return [entry.event for entry in ledger.entries()]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the hub stops the servers and the proxy), then SIGKILL. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        stop_detached(self.state_dir / "proxy.pid", "configurable-http-proxy")  # orphaned proxy
        _remove_hub_cgroups(self.state_dir)

    def __enter__(self) -> RunningHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove_hub_cgroups(state_dir: Path) -> None:
    """The hub's (empty) parent cgroups, left when the servers are gone."""
    from incisive_hub._cgroups import CgroupUnavailable, find_driver
    from incisive_hub.spawner import SandboxSpawner

    group = SandboxSpawner(hub_state=str(state_dir)).cgroup_group
    try:
        driver = find_driver(group)
    except CgroupUnavailable:
        return
    for base in driver.bases.values():
        with contextlib.suppress(OSError):
            (base / group).rmdir()


def write_settings(root: Path, idp: Any, gateway_config: str | os.PathLike[str] | Mapping[str, Any],
                   *, client: HubClient, audience: str | None = None,
                   settings: Mapping[str, Any] | None = None) -> Path:
    """Write the client secret, the gateway file (if given as a mapping) and the settings."""
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "client-secret"
    secret.write_text(client.secret + "\n")
    secret.chmod(0o600)
    state = root / "state"
    if isinstance(gateway_config, Mapping):
        gateway = root / "gateway.json"
        gateway.write_text(json.dumps(gateway_config, indent=2))
    else:
        gateway = Path(gateway_config)
    values = {
        "issuer": idp.issuer, "client_id": client.client_id, "client_secret_file": str(secret),
        "audience": audience or idp.audience, "state_dir": str(state), "ip": "127.0.0.1",
        "port": client.port, "gateway_config": str(gateway), "mem_limit": "1G",
        "cpu_limit": 1.0, "pids_limit": 256, "start_timeout": 60,
        **(settings or {}),
    }
    path = root / "settings.json"
    path.write_text(json.dumps(values, indent=2))
    return path


def start_hub(tmp_dir: str | os.PathLike[str], idp: Any,
              gateway_config: str | os.PathLike[str] | Mapping[str, Any], *, client: HubClient,
              audience: str | None = None, settings: Mapping[str, Any] | None = None,
              env: Mapping[str, str] | None = None, timeout: float = 60.0) -> RunningHub:
    """Start the hub on ``client.port``; returns when ``/hub/health`` answers.

    Parameters
    ----------
    tmp_dir
        Its folder: ``settings.json``, ``client-secret``, ``hub.log``, ``state/``.
    idp
        The running IdP (anything with ``issuer`` and ``audience``) that knows ``client``.
    gateway_config
        The gateway's destinations: a file, or a mapping written to ``gateway.json``.
    client
        The hub's port and client (:class:`HubClient`).
    audience
        The federation audience (default: the IdP's ``audience``).
    settings
        Further settings (``{"sandbox": False}``, ``{"minimum_loa": "high"}``...).
    env
        Extra environment for the hub process.
    timeout
        Seconds to wait for ``/hub/health``.
    """
    root = Path(tmp_dir)
    settings_file = write_settings(root, idp, gateway_config, client=client, audience=audience,
                                   settings=settings)
    hub = RunningHub(url=client.url, root=root, settings_file=settings_file,
                     state_dir=root / "state")
    process_env = {**os.environ, "INCISIVE_HUB_CONFIG": str(settings_file),
                   "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32), **(env or {})}
    jupyterhub = Path(sys.executable).with_name("jupyterhub")
    with hub.log_file.open("ab") as log:
        hub.proc = subprocess.Popen([str(jupyterhub), "-f", str(CONFIG)], cwd=root,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=process_env)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if hub.proc.poll() is not None:
                raise RuntimeError(f"the hub exited with {hub.proc.returncode}:\n{hub.log()[-6000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(hub.url + "/hub/health", timeout=2).status_code == 200:
                    return hub
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not answer within {timeout} s:\n"
                                   f"{hub.log()[-6000:]}")
            time.sleep(0.1)
    except BaseException:
        hub.stop()
        raise


def hub_login(hub_url: str, username: str, *, http: httpx.Client | None = None,
              next_url: str = "/hub/home") -> tuple[httpx.Client, httpx.Response]:
    """Log ``username`` in at the hub through the IdP's dev-login form (the real
    authorization-code + PKCE flow and the hub's real callback).

    Returns the cookie-holding client and the last response: the hub's ``next_url`` page
    (200) after a login, or the hub's answer to the callback (e.g. the 403 refusal page).
    """
    http = http or httpx.Client(timeout=30, follow_redirects=False)
    resp = http.get(hub_url + "/hub/oauth_login", params={"next": next_url})
    posted = False
    for _ in range(20):
        if resp.status_code not in (301, 302, 303, 307):
            return http, resp
        location = urljoin(str(resp.request.url), resp.headers["location"])
        path = urlsplit(location).path
        if path.startswith("/interaction/") and not posted:
            page = http.get(location)
            if page.status_code != 200:
                return http, page
            resp = http.post(location.split("?")[0] + "/login", data={"login": username})
            posted = True
            continue
        resp = http.get(location)
    raise RuntimeError("too many redirects while logging in")


def xsrf_headers(http: httpx.Client) -> dict[str, str]:
    """The ``X-XSRFToken`` header a cookie-authenticated POST/DELETE to the hub needs."""
    token = next((c.value for c in http.cookies.jar
                  if c.name == "_xsrf" and c.path == "/hub/" and c.value), "")
    return {"X-XSRFToken": token}


def start_server(hub: RunningHub, http: httpx.Client, user: str, timeout: float = 90.0) -> None:
    """Start ``user`` 's server with their logged-in client; return when the hub says ready."""
    resp = http.post(f"{hub.api_url}/users/{user}/server", headers=xsrf_headers(http),
                     timeout=timeout)
    if resp.status_code not in (201, 202):
        raise RuntimeError(f"starting {user}'s server answered {resp.status_code}: {resp.text}\n"
                           f"{hub.log()[-4000:]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = http.get(f"{hub.api_url}/user").json()
        server = (model.get("servers") or {}).get("")
        if server and server.get("ready"):
            return
        if not server and not model.get("pending"):
            raise RuntimeError(f"{user}'s server stopped while starting:\n{hub.log()[-4000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{user}'s server was not ready within {timeout} s")


def server_env(hub: RunningHub, user: str) -> dict[str, str]:
    """The environment of ``user`` 's running single-user server process, read from /proc
    (the test runs as the hub's user, root): how a test gets the server's API token."""
    from incisive_hub.spawner import SandboxSpawner

    cgroups = SandboxSpawner(hub_state=str(hub.state_dir)).cgroup_driver().cgroups(user)
    for pid in cgroups.pids():
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                       if "=" in item)
            if "JUPYTERHUB_API_TOKEN" in env:
                return env
    raise RuntimeError(f"no running server process of {user} found")
