"""The hub's settings: one JSON file, named by ``INCISIVE_HUB_CONFIG``, strictly validated.

``hub/jupyterhub_config.py`` reads the file with :func:`load_settings` and turns the
:class:`HubSettings` into JupyterHub configuration. Parsing is pure (no JupyterHub import),
so every rule here is tested without a hub.

Keys (``*`` required)::

    issuer*              OIDC issuer URL (https, or http on loopback)
    client_id*           the hub's client id at the issuer
    client_secret_file*  file holding the client secret (mode 0600 or stricter)
    audience*            the federation audience: the resource indicator the hub asks
                         for, i.e. the ``aud`` the nodes and the broker verify
    state_dir*           the hub's state (database, cookie secret, ledger, workspaces)
    gateway_config       the gateway's destinations (default: <state_dir>/gateway.json)
    ip, port             where the proxy listens for browsers (127.0.0.1, 8000)
    hub_port             the hub's internal API port (0: a free port at start)
    proxy_api_port       the proxy's REST API port (0: a free port at start)
    scopes               OAuth scopes to ask for
    username_claim       ID token claim that names the hub user (preferred_username)
    minimum_loa          low | substantial | high (default substantial)
    group_roles          IdP group -> role (researcher, annotator, steward, auditor, admin)
    sandbox              true: bubblewrap sandbox (default); false: the unsandboxed peer
                         used only by the benchmark
    mem_limit            bytes or "512M", "2G" (default "2G")
    cpu_limit            CPUs (default 1.0)
    pids_limit           processes in one user's sandbox (default 512)
    allow_rlimit_fallback  allow RLIMIT_AS/NPROC when no cgroup is writable (false)
    idle_timeout         seconds of inactivity before a server is culled (3600)
    cull_every           seconds between culler passes (300)
    start_timeout        seconds a server may take to start (120)
    ledger_origin        the hub ledger's origin (default "incisive-hub.local/ledger")
    debug                verbose logs (false)
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from incisive_lab.access import LoA

__all__ = [
    "DEFAULT_GROUP_ROLES",
    "DEFAULT_SCOPES",
    "ENV_VAR",
    "ROLES",
    "HubSettings",
    "SettingsError",
    "load_settings",
    "parse_settings",
]

#: The environment variable naming the settings file.
ENV_VAR = "INCISIVE_HUB_CONFIG"

#: The hub roles, in the order the docs list them.
ROLES: tuple[str, ...] = ("researcher", "annotator", "steward", "auditor", "admin")

#: IdP group -> hub role (Keycloak-style group paths).
DEFAULT_GROUP_ROLES: Mapping[str, str] = MappingProxyType(
    {f"/incisive/{role}": role for role in ROLES})

#: What the hub asks the IdP for: identity claims in the ID token, node scopes in the
#: access token.
DEFAULT_SCOPES: tuple[str, ...] = ("openid", "profile", "email", "groups", "node:read",
                                   "node:write")

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)B?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class SettingsError(ValueError):
    """The settings file is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class HubSettings:
    """The validated settings (see the module docstring for each key)."""

    source: Path
    issuer: str
    client_id: str
    client_secret_file: Path
    audience: str
    state_dir: Path
    gateway_config: Path
    ip: str = "127.0.0.1"
    port: int = 8000
    hub_port: int = 0
    proxy_api_port: int = 0
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    username_claim: str = "preferred_username"
    minimum_loa: LoA = LoA.SUBSTANTIAL
    group_roles: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_GROUP_ROLES))
    sandbox: bool = True
    mem_limit: int = 2 * 1024**3
    cpu_limit: float = 1.0
    pids_limit: int = 512
    allow_rlimit_fallback: bool = False
    idle_timeout: int = 3600
    cull_every: int = 300
    start_timeout: int = 120
    ledger_origin: str = "incisive-hub.local/ledger"
    debug: bool = False

    @property
    def public_url(self) -> str:
        """The URL browsers use (the proxy's)."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"

    @property
    def callback_url(self) -> str:
        """The OAuth redirect URI to register at the IdP."""
        return self.public_url + "/hub/oauth_callback"

    def client_secret(self) -> str:
        """The client secret, read from :attr:`client_secret_file`."""
        return _read_secret(self.client_secret_file, self.source)


_KEYS = {f for f in HubSettings.__dataclass_fields__ if f != "source"}
_REQUIRED = ("issuer", "client_id", "client_secret_file", "audience", "state_dir")


def load_settings(path: str | os.PathLike[str] | None = None) -> HubSettings:
    """Read and validate the settings file (default: ``$INCISIVE_HUB_CONFIG``).

    Raises
    ------
    SettingsError
        No file named, unreadable, not a JSON object, an unknown or missing key, a value
        of the wrong type or out of range; the message names the file and the key.
    """
    if path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise SettingsError(f"{ENV_VAR} is not set: name the hub's JSON settings file")
        path = env
    source = Path(path)
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read the hub settings {source}: {exc.strerror}") from exc
    except ValueError as exc:
        raise SettingsError(f"{source} is not valid JSON: {exc}") from exc
    return parse_settings(raw, source=source)


def parse_settings(raw: Any, *, source: str | os.PathLike[str] = "<settings>") -> HubSettings:
    """Validate a decoded settings object (see :func:`load_settings`)."""
    src = Path(source)
    where = str(src)
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: the settings must be a JSON object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown setting {unknown[0]!r} "
                            f"(known: {', '.join(sorted(_KEYS))})")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise SettingsError(f"{where}: missing required setting {missing[0]!r}")

    def text(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{where}: {key} must be a non-empty string")
        return value.strip()

    def integer(key: str, default: int, low: int, high: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SettingsError(f"{where}: {key} must be an integer from {low} to {high}")
        return value

    def boolean(key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: {key} must be true or false")
        return value

    def path(key: str, default: str | None = None) -> Path:
        value = Path(text(key, default)).expanduser()
        return value if value.is_absolute() else (src.parent / value).resolve()

    issuer = text("issuer").rstrip("/")
    _check_url(issuer, "issuer", where)
    audience = text("audience")
    parts = urlsplit(audience)
    if not parts.scheme or "#" in audience:
        raise SettingsError(f"{where}: audience must be an absolute URI without fragment")
    state_dir = path("state_dir")
    secret_file = path("client_secret_file")
    _read_secret(secret_file, src)  # fail at start, not at the first login
    gateway = path("gateway_config", str(state_dir / "gateway.json"))
    _check_gateway(gateway, where)

    scopes = raw.get("scopes", list(DEFAULT_SCOPES))
    if (not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s
                                                for s in scopes)):
        raise SettingsError(f"{where}: scopes must be a list of scope names")
    if "openid" not in scopes:
        raise SettingsError(f"{where}: scopes must include 'openid' (the hub needs an ID token)")

    try:
        loa = LoA.parse(text("minimum_loa", "substantial"))
    except ValueError as exc:
        raise SettingsError(f"{where}: minimum_loa: {exc}") from exc

    group_roles = raw.get("group_roles", dict(DEFAULT_GROUP_ROLES))
    if not isinstance(group_roles, dict) or not group_roles:
        raise SettingsError(f"{where}: group_roles must be a non-empty object "
                            "(IdP group -> role)")
    for group, role in group_roles.items():
        if not group or not isinstance(role, str) or role not in ROLES:
            raise SettingsError(f"{where}: group_roles[{group!r}] must be one of "
                                f"{', '.join(ROLES)}, not {role!r}")

    cpu = raw.get("cpu_limit", 1.0)
    if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0.01 <= cpu <= 1024:
        raise SettingsError(f"{where}: cpu_limit must be a number of CPUs from 0.01 to 1024")

    ip = text("ip", "127.0.0.1")
    claim = text("username_claim", "preferred_username")
    origin = text("ledger_origin", "incisive-hub.local/ledger")
    if any(c.isspace() or c == "+" for c in origin):
        raise SettingsError(f"{where}: ledger_origin must not contain spaces or '+'")
    return HubSettings(
        source=src,
        issuer=issuer,
        client_id=text("client_id"),
        client_secret_file=secret_file,
        audience=audience,
        state_dir=state_dir,
        gateway_config=gateway,
        ip=ip,
        port=integer("port", 8000, 1, 65535),
        hub_port=integer("hub_port", 0, 0, 65535),
        proxy_api_port=integer("proxy_api_port", 0, 0, 65535),
        scopes=tuple(scopes),
        username_claim=claim,
        minimum_loa=loa,
        group_roles=dict(group_roles),
        sandbox=boolean("sandbox", True),
        mem_limit=_size(raw.get("mem_limit", "2G"), where),
        cpu_limit=float(cpu),
        pids_limit=integer("pids_limit", 512, 16, 1_000_000),
        allow_rlimit_fallback=boolean("allow_rlimit_fallback", False),
        idle_timeout=integer("idle_timeout", 3600, 5, 30 * 86400),
        cull_every=integer("cull_every", 300, 1, 86400),
        start_timeout=integer("start_timeout", 120, 5, 3600),
        ledger_origin=origin,
        debug=boolean("debug", False),
    )


def _size(value: Any, where: str) -> int:
    """Bytes from an integer or a string like ``"512M"`` / ``"2G"`` (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        number = int(m.group(1)) * _UNITS[m.group(2).upper()]
    else:
        raise SettingsError(f"{where}: mem_limit must be bytes or a size like '512M' or '2G'")
    if number < 64 * 1024**2:
        raise SettingsError(f"{where}: mem_limit must be at least 64M (a server needs it)")
    return number


def _check_url(url: str, key: str, where: str) -> None:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if not parts.hostname or parts.scheme not in ("https", "http") or (
            parts.scheme == "http" and not loopback):
        raise SettingsError(f"{where}: {key} must be an https URL (http only on loopback), "
                            f"not {url!r}")


def _read_secret(path: Path, source: Path) -> str:
    try:
        info = path.stat()
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{source}: client_secret_file {path}: {exc.strerror}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(f"{source}: client_secret_file {path} is readable by others "
                            f"(mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it")
    if len(value) < 16:
        raise SettingsError(f"{source}: client_secret_file {path} holds no secret "
                            "(at least 16 characters)")
    return value


def _check_gateway(path: Path, where: str) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{where}: gateway_config {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise SettingsError(f"{where}: gateway_config {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict) or "broker" not in doc:
        raise SettingsError(f"{where}: gateway_config {path} must be an object with "
                            "'broker' and 'nodes'")
