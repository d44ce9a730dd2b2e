"""Hub events written to the hub's ledger: logins, refreshes, spawns, stops, culls, admin.

One :class:`HubLedger` per hub process (a traitlets ``SingletonConfigurable``, created by
``hub/jupyterhub_config.py`` with the ledger directory) appends :class:`~incisive_lab.ledger.Event`
entries to ``Ledger.open(<state_dir>/ledger, origin=...)``:

============  =========================  =========================================
kind          action                     written by
============  =========================  =========================================
``login``     ``login`` (allowed/denied)  the authenticator, after every login decision
``login``     ``refresh``                the authenticator, when it refreshes tokens
``spawn``     ``spawn`` / ``fail``       the spawner, when a server starts or fails to
``spawn``     ``stop``                   the spawner, when a server stops
``spawn``     ``cull``                   :func:`log_request`: the idle culler's stop
``admin``     create/modify/delete/...   :func:`log_request`: admin API requests
============  =========================  =========================================

Actors: an IdP account is ``user:<sub>@<issuer>``; a hub account ``hub-user:<name>``; a
hub service ``service:<name>``; the hub itself ``hub``. Resources name hub accounts and
servers as ``hub-user:<name>/server:<server>`` (the default server is ``default``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Unicode
from traitlets.config import SingletonConfigurable

from incisive_lab.ledger import EntryRef, Event, Ledger, Outcome

__all__ = ["HubLedger", "account", "hub_user", "log_request", "server_resource"]

log = logging.getLogger(__name__)

#: API paths that are not administration: a server's own reports and the OAuth handshake.
_NOT_ADMIN = re.compile(r"^(users/[^/]+/activity|oauth2/.*|incisive/.*|authorizations/.*)$")
_SERVER = re.compile(r"^users/(?P<user>[^/]+)/servers?(/(?P<name>[^/]*))?$")
_ACTIONS = {"POST": "create", "PUT": "modify", "PATCH": "modify", "DELETE": "delete"}


def account(sub: str, issuer: str) -> str:
    """The ledger actor of an IdP account."""
    return f"user:{sub}@{issuer}"


def hub_user(name: str) -> str:
    """The ledger id of a hub account."""
    return f"hub-user:{name}"


def server_resource(user: str, server: str = "") -> str:
    """The ledger resource of one of a user's servers (``""`` is ``default``)."""
    return f"{hub_user(user)}/server:{server or 'default'}"


class HubLedger(SingletonConfigurable):
    """The hub's ledger (one per process); thread-safe appends.

    Create it once with the directory (``HubLedger.instance(directory=...)``); the
    authenticator, the spawner and :func:`log_request` use ``HubLedger.instance()``.
    Without a directory every append fails: a hub that cannot ledger must not let anyone in.
    """

    directory = Unicode(
        "",
        config=True,
        help="""The hub ledger's directory, given to ``Ledger.open`` (the SQLite log lives in
        ``<directory>/ledger/``). Required: appends fail while it is empty.""",
    )
    origin = Unicode(
        "incisive-hub.local/ledger",
        config=True,
        help="The ledger's origin (the first line of its checkpoints).",
    )
    culler = Unicode(
        "idle-culler",
        config=True,
        help="""The hub service that culls idle servers: its server stops are ledgered as
        ``spawn``/``cull`` rather than as administration.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()

    # -- the ledger ---------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        """The open ledger (opened on first use)."""
        with self._lock:
            if self._ledger is None:
                if not self.directory:
                    raise RuntimeError("HubLedger.directory is not set: the hub has no ledger "
                                       "to write its events to")
                Path(self.directory).mkdir(parents=True, exist_ok=True, mode=0o700)
                self._ledger = Ledger.open(self.directory, origin=self.origin)
            return self._ledger

    def append(self, event: Event) -> EntryRef:
        """Append one event (validated by its schema)."""
        ledger = self.ledger
        with self._lock:
            return ledger.append(event)

    def close(self) -> None:
        """Close the ledger (appends reopen it)."""
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    # -- the events ---------------------------------------------------------------------

    def login(self, *, actor: str, outcome: Outcome, action: str = "login",
              details: Mapping[str, Any] | None = None) -> EntryRef:
        """A login decision or a token refresh (``action="refresh"``)."""
        clean = {k: v for k, v in (details or {}).items() if v not in (None, "", [])}
        return self.append(Event(kind="login", actor=actor, action=action, outcome=outcome,
                                 details=clean))

    def spawn(self, action: str, *, user: str, server: str = "", outcome: Outcome | None = None,
              actor: str = "hub", details: Mapping[str, Any] | None = None) -> EntryRef:
        """A server's ``spawn``, ``stop``, ``cull`` or ``fail``."""
        clean = {k: v for k, v in (details or {}).items() if v not in (None, "")}
        return self.append(Event(kind="spawn", actor=actor, action=action,
                                 resource=server_resource(user, server),
                                 outcome=outcome or Outcome.allow(), details=clean))

    def admin(self, action: str, *, actor: str, resource: str, outcome: Outcome,
              details: Mapping[str, Any]) -> EntryRef:
        """An administration request."""
        return self.append(Event(kind="admin", actor=actor, action=action, resource=resource,
                                 outcome=outcome, details=dict(details)))

    # -- API requests -------------------------------------------------------------------

    def api_request(self, *, method: str, path: str, status: int, actor_kind: str,
                    actor_name: str, address: str | None = None) -> EntryRef | None:
        """Ledger an API request if it is an administration or a cull; else nothing.

        ``path`` is below the hub's API prefix (``users/alice/server``); ``actor_kind`` is
        ``"user"``, ``"service"`` or ``"anonymous"``. A user's requests about their own account are not
        administration (their server's start and stop are ``spawn`` events).
        """
        if method not in _ACTIONS or _NOT_ADMIN.match(path):
            return None
        parts = path.split("/")
        target = parts[1] if len(parts) > 1 and parts[0] == "users" else None
        if actor_kind == "user" and target == actor_name:
            return None
        actor = {"user": hub_user(actor_name), "service": f"service:{actor_name}"}.get(
            actor_kind, "anonymous")
        outcome = (Outcome.allow(f"HTTP {status}") if status < 400
                   else Outcome.deny(f"HTTP {status}"))
        server = _SERVER.match(path)
        if server and method == "DELETE" and actor_kind == "service" and actor_name == self.culler:
            return self.spawn("cull", user=server["user"], server=server["name"] or "",
                              actor=actor, outcome=outcome)
        action = _ACTIONS[method]
        if server:
            action = {"POST": "start", "DELETE": "stop"}.get(method, action)
        if target is not None:
            resource = hub_user(target) + ("/" + "/".join(parts[2:]) if len(parts) > 2 else "")
        else:
            resource = "hub-api:" + path
        details: dict[str, Any] = {"method": method, "path": path, "status": status}
        if address:
            details["address"] = address
        return self.admin(action, actor=actor, resource=resource.rstrip("/"), outcome=outcome,
                          details=details)


def log_request(handler: Any) -> None:
    """JupyterHub's request logger, then the ledger for administration requests.

    Set as ``c.JupyterHub.tornado_settings = {"log_function": log_request}``; tornado
    calls it when each request finishes.
    """
    from jupyterhub.log import log_request as jupyterhub_log_request

    jupyterhub_log_request(handler)
    request = handler.request
    prefix = _api_prefix(handler)
    if prefix is None or not request.path.startswith(prefix):
        return
    who = getattr(handler, "_jupyterhub_user", None)
    if who is None:
        kind, name = "anonymous", "anonymous"
    elif getattr(who, "kind", None) == "service":
        kind, name = "service", who.name
    else:
        kind, name = "user", who.name
    if kind == "anonymous" and request.method not in _ACTIONS:
        return
    try:
        HubLedger.instance().api_request(
            method=request.method, path=request.path[len(prefix):].strip("/"),
            status=handler.get_status(), actor_kind=kind, actor_name=name,
            address=request.remote_ip)
    except Exception:  # the request has been answered; say loudly that it was not ledgered
        log.exception("could not ledger %s %s", request.method, request.path)


def _api_prefix(handler: Any) -> str | None:
    hub = getattr(handler, "hub", None)
    base = getattr(hub, "base_url", None) if hub is not None else None
    if not isinstance(base, str):
        settings = getattr(handler, "settings", {}) or {}
        base = settings.get("hub_prefix")
    return None if not isinstance(base, str) else base.rstrip("/") + "/api/"
