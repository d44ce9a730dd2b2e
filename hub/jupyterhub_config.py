"""JupyterHub configuration of INCISIVE Lab.

Everything deployment-specific comes from one JSON settings file named by the environment
variable ``INCISIVE_HUB_CONFIG`` (keys and rules: ``incisive_hub.settings`` and
``docs/hub.md``); an unknown key, a missing file or a bad value stops the hub with a
message naming it. Start with::

    INCISIVE_HUB_CONFIG=/srv/hub/settings.json jupyterhub -f hub/jupyterhub_config.py

``JUPYTERHUB_CRYPT_KEY`` (auth state encryption) is taken from the environment, else
read from (or generated into) ``<state_dir>/crypt-key`` (mode 0600).
"""

# ruff: noqa: F821  (get_config is provided by JupyterHub when it loads this file)

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
from pathlib import Path

from incisive_hub import (
    HubLedger,
    IncisiveAuthenticator,
    SandboxSpawner,
    TokenHandler,
    load_settings,
    log_request,
)
from incisive_hub.settings import ROLES, SettingsError

c = get_config()  # type: ignore[name-defined]

HERE = Path(__file__).resolve().parent
PROXY = HERE / "proxy" / "node_modules" / ".bin" / "configurable-http-proxy"

settings = load_settings()
state = settings.state_dir
state.mkdir(parents=True, exist_ok=True, mode=0o700)
state.chmod(0o700)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _crypt_key() -> str:
    path = state / "crypt-key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


if not os.environ.get("JUPYTERHUB_CRYPT_KEY"):
    os.environ["JUPYTERHUB_CRYPT_KEY"] = _crypt_key()
if not PROXY.exists():
    raise SettingsError(f"{PROXY} is missing: run `npm ci --prefix hub/proxy --no-audit --no-fund`")

# -- where things listen and live -----------------------------------------------------------
c.JupyterHub.bind_url = settings.public_url
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings.hub_port or _free_port()}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port or _free_port()}"
c.ConfigurableHTTPProxy.command = [str(PROXY)]
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.template_paths = [str(HERE / "templates")]
c.JupyterHub.log_level = "DEBUG" if settings.debug else "INFO"
c.JupyterHub.allow_named_servers = False  # one runtime dir (and gateway socket) per user
c.JupyterHub.cleanup_servers = True

# -- ledger ---------------------------------------------------------------------------------
HubLedger.instance(directory=str(state / "ledger"), origin=settings.ledger_origin)
c.JupyterHub.tornado_settings = {"log_function": log_request}  # admin actions, culls

# -- login ----------------------------------------------------------------------------------
c.JupyterHub.authenticator_class = IncisiveAuthenticator
c.IncisiveAuthenticator.issuer = settings.issuer
c.IncisiveAuthenticator.client_id = settings.client_id
c.IncisiveAuthenticator.client_secret = settings.client_secret()
c.IncisiveAuthenticator.audience = settings.audience
c.IncisiveAuthenticator.oauth_callback_url = settings.callback_url
c.IncisiveAuthenticator.scope = list(settings.scopes)
c.IncisiveAuthenticator.username_claim = settings.username_claim
c.IncisiveAuthenticator.minimum_loa = settings.minimum_loa.name.lower()
c.IncisiveAuthenticator.group_roles = dict(settings.group_roles)
c.JupyterHub.extra_handlers = [(r"/api/incisive/token", TokenHandler)]

# -- servers --------------------------------------------------------------------------------
c.JupyterHub.spawner_class = SandboxSpawner
c.SandboxSpawner.hub_state = str(state)
c.SandboxSpawner.sandbox = settings.sandbox
c.SandboxSpawner.gateway_config = str(settings.gateway_config)
c.SandboxSpawner.mem_limit = settings.mem_limit
c.SandboxSpawner.cpu_limit = settings.cpu_limit
c.SandboxSpawner.pids_limit = settings.pids_limit
c.SandboxSpawner.allow_rlimit_fallback = settings.allow_rlimit_fallback
c.Spawner.default_url = "/lab"  # JupyterLab is the user interface
c.Spawner.start_timeout = settings.start_timeout
c.Spawner.http_timeout = settings.start_timeout

# -- signals: a hub started with SIGINT ignored (by nohup, or as a script's background job)
# would pass that on to the proxy and the culler it starts before handling signals itself;
# on a clean stop JupyterHub interrupts the culler and gives it 10 s before SIGTERM, and
# whoever stops the hub may not wait that long: both would outlive it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# -- idle culling -----------------------------------------------------------------------------
c.JupyterHub.services = [{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                f"--timeout={settings.idle_timeout}", f"--cull-every={settings.cull_every}"],
}]

# -- roles: the IdP groups become hub groups named after the roles -------------------------
_ROLE_SCOPES = {
    "researcher": ["self"],
    "annotator": ["self"],
    "steward": ["self", "read:users:name", "read:users:activity", "read:servers"],
    "auditor": ["self", "read:users", "read:servers", "read:groups", "read:roles"],
}
c.JupyterHub.load_roles = [
    {"name": "idle-culler", "description": "Culls idle servers",
     "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
     "services": ["idle-culler"]},
    *({"name": role, "description": f"INCISIVE Lab {role}", "scopes": _ROLE_SCOPES[role],
       "groups": [role]} for role in ROLES if role != "admin"),
    # "admin": the authenticator sets the user's admin flag, which gives JupyterHub's own admin
    # role (binding that role to a group in load_roles crashes JupyterHub 6.1 when the group
    # does not exist yet)
]
