"""The running part of ``incisive-lab demo``: identity provider, nodes, broker and hub.

After the demo data is ingested (``incisive_lab._demo``), :func:`prepare` writes what the
services need under ``DIR/stack`` — generated secrets (never committed: the IdP's signing
key, the hub's client secret and crypt key, demo users' passwords), the IdP's accounts
and clients, the broker's node list, the gateway's destinations and the hub's settings —
and sets the demo's sharing terms and grants at each node (through the node's own
governance store, ledgered like any steward action). :class:`Stack` then starts

1. the OIDC provider (``hub/idp/server.mjs``, npm ``oidc-provider``), password login;
2. the nodes (``incisive-lab node serve``): two federated hospitals (pseudonymised) and the
   central node (anonymised), each verifying the provider's RFC 9068 access tokens;
3. the broker (``incisive-lab broker serve``) over the three nodes;
4. JupyterHub (``hub/jupyterhub_config.py``): OIDC login, sandboxed single-user servers.

and writes ``.incisive/demo.json`` (URLs, ports, demo users and passwords, pids; mode 0600).
``incisive-lab demo stop`` stops them in reverse order. The library does not import the
hub: it runs it as a process, like any other service.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from incisive_lab._processes import ServiceError, ServiceProcess, free_port, pid_alive, stop_group

__all__ = ["DEMO_USERS", "NODES", "Stack", "prepare", "read_state", "stop_running", "write_state"]

#: The repository's root (hub/, extensions/, kernels/ sit beside the library).
REPO = Path(__file__).resolve().parents[1]

#: The demo's federation: site folder → node name, hosting, organisation, country.
NODES: tuple[Mapping[str, str], ...] = (
    {"site": "a", "name": "hospital-a", "hosting": "federated", "organisation": "hospital-a.example",
     "dataset": "site-a", "port": "8681"},
    {"site": "b", "name": "hospital-b", "hosting": "federated", "organisation": "hospital-b.example",
     "dataset": "site-b", "port": "8682"},
    {"site": "c", "name": "central", "hosting": "central", "organisation": "incisive-central.example",
     "dataset": "site-c", "port": "8683"},
)

#: The federation's resource identifier: the audience of the access tokens the nodes and
#: the broker accept.
AUDIENCE = "https://federation.incisive.demo/"

#: Demo users: one per role at LoA substantial, one at LoA low (refused by the hub), one
#: outside every allowed group (refused by the hub).
DEMO_USERS: tuple[Mapping[str, Any], ...] = (
    {"username": "researcher", "name": "Rita Researcher", "roles": ["researcher"],
     "groups": ["/incisive/researcher"], "loa": "substantial", "organisation": "uni-a.example"},
    {"username": "annotator", "name": "Anna Annotator", "roles": ["annotator"],
     "groups": ["/incisive/annotator"], "loa": "substantial", "organisation": "uni-a.example"},
    {"username": "steward", "name": "Stefan Steward", "roles": ["steward"],
     "groups": ["/incisive/steward"], "loa": "high", "organisation": "hospital-a.example"},
    {"username": "auditor", "name": "Audrey Auditor", "roles": ["auditor"],
     "groups": ["/incisive/auditor"], "loa": "substantial", "organisation": "incisive-central.example"},
    {"username": "admin", "name": "Adam Admin", "roles": ["admin"],
     "groups": ["/incisive/admin"], "loa": "high", "organisation": "incisive-central.example"},
    {"username": "lowloa", "name": "Lou Low", "roles": ["researcher"],
     "groups": ["/incisive/researcher"], "loa": "low", "organisation": "uni-a.example"},
    {"username": "outsider", "name": "Otto Outsider", "roles": [],
     "groups": ["/elsewhere/visitors"], "loa": "substantial", "organisation": "elsewhere.example"},
)

#: The demo's sharing terms: site-a and central visible to researchers and annotators;
#: site-b train-only (counts and training, no pixels in kernels).
_TERMS: Mapping[str, Mapping[str, Any]] = {
    "site-a": {"visibility": "visible"},
    "site-b": {"visibility": "train-only"},
    "site-c": {"visibility": "visible"},
}
_PURPOSE = "ai-development"


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state (all under ``DIR/stack``)."""

    demo: Path

    @property
    def root(self) -> Path:
        return self.demo / "stack"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    def node_dir(self, site: str) -> Path:
        return self.demo / "nodes" / site


def state_file(demo_dir: Path) -> Path:
    """``.incisive/demo.json`` for the default ``.incisive/demo``: beside the demo folder."""
    return demo_dir.parent / "demo.json"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _secret(path: Path, make: Any) -> str:
    """The secret stored at ``path``, generated by ``make()`` on first use."""
    if path.exists():
        return path.read_text().strip()
    value = str(make())
    _write_private(path, value + "\n")
    return value


def _passwords(paths: StackPaths) -> dict[str, str]:
    path = paths.secrets / "passwords.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for user in DEMO_USERS:
        if user["username"] not in known:
            known[user["username"]] = secrets.token_urlsafe(9)
            changed = True
    if changed:
        _write_private(path, json.dumps(known, indent=2))
    return known


def _set_governance(paths: StackPaths) -> None:
    """Sharing terms on every demo dataset and the demo researcher's and annotator's grants
    (ai-development, every consenting patient), as the node's steward would; idempotent."""
    from incisive_lab.access import LoA, Role
    from incisive_lab.governance.policy import Requester
    from incisive_lab.governance.store import Governance
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.store import NodeStore

    for node in NODES:
        with NodeStore.open(paths.node_dir(node["site"])) as store, \
                Ledger.open(paths.node_dir(node["site"])) as ledger:
            gov = Governance(store.engine, ledger)
            dataset = node["dataset"]
            steward = f"steward@{node['organisation']}"
            terms = {"hosting": node["hosting"], "organisations": ["*"],
                     "roles": ["researcher", "annotator"], "purposes": [_PURPOSE],
                     "min_loa": "substantial", "floor": 5, "expires": None, **_TERMS[dataset]}
            current = gov.terms(dataset)
            if current is None or current.visibility.value != terms["visibility"]:
                gov.set_terms(terms, actor=steward, dataset=dataset)
            _approve_tasks(paths.node_dir(node["site"]), ledger, steward)
            for user in ("researcher", "annotator"):
                if gov.grants_for(user, dataset=dataset):
                    continue
                role = Role(user)
                who = Requester(subject=user, roles=frozenset({role}), loa=LoA.SUBSTANTIAL,
                                organisation="uni-a.example")
                request = gov.submit_request(who, dataset, purpose=_PURPOSE, project="demo")
                gov.approve(request.request_id, steward=steward,
                            members=gov.dataset_patients(dataset), days=365)


def _approve_tasks(node_dir: Path, ledger: Any, steward: str) -> None:
    """The node's steward approves the built-in training tasks by hash (idempotent; needs the
    ``fl`` extra — without it the demo has no training)."""
    try:
        from incisive_lab.fl.approvals import TaskApprovals
        from incisive_lab.fl.task import builtin, builtin_names
    except ImportError:  # torch/flwr not installed
        return
    approvals = TaskApprovals(node_dir, ledger=ledger)
    for name in builtin_names():
        code = builtin(name)
        if not approvals.is_approved(code.sha256):
            approvals.approve(code, steward=steward)


def _training_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("flwr", "torch"))


class _Flower:
    """A SuperLink or SuperNode (:mod:`incisive_lab.fl.deploy`) as one of the stack's services."""

    def __init__(self, name: str, service: Any) -> None:
        self.name, self.service = name, service

    @property
    def proc(self) -> Any:
        return self.service.process.proc

    @property
    def pid(self) -> int | None:
        pid: int | None = self.service.process.pid
        return pid

    def start(self) -> None:
        self.service.start()

    def stop(self) -> None:
        self.service.stop()

    def alive(self) -> bool:
        return bool(self.service.alive())


def prepare(demo_dir: Path, *, hub_port: int = 8000, idp_port: int = 8700,
            broker_port: int = 8690) -> dict[str, Any]:
    """Secrets, configurations and governance for the stack; returns the plan (ports, URLs,
    files). Ports are the preferred ones when free; reruns reuse the secrets."""
    paths = StackPaths(demo_dir)
    for d in (paths.root, paths.secrets, paths.logs, paths.hub):
        d.mkdir(parents=True, exist_ok=True)
    paths.secrets.chmod(0o700)
    host = "127.0.0.1"
    ports = {"hub": free_port(hub_port), "idp": free_port(idp_port), "broker": free_port(broker_port)}
    if _training_available():
        ports["superlink"] = free_port(9092)
    for node in NODES:
        ports[node["name"]] = free_port(int(node["port"]))
    issuer = f"http://{host}:{ports['idp']}"
    hub_url = f"http://{host}:{ports['hub']}"
    client_secret = _secret(paths.secrets / "hub-client-secret", lambda: secrets.token_urlsafe(32))
    crypt_key = _secret(paths.secrets / "hub-crypt-key", lambda: secrets.token_hex(32))
    passwords = _passwords(paths)
    jwks = paths.secrets / "idp-jwks.json"
    if not jwks.exists():
        write_jwks(jwks)

    idp_config = {
        "resources": [{"audience": AUDIENCE, "scopes": ["node:read", "node:write"], "access_token_ttl": 600}],
        "default_audience": AUDIENCE,
        "clients": [{"client_id": "incisive-hub", "client_secret": client_secret,
                     "redirect_uris": [f"{hub_url}/hub/oauth_callback"]}],
        "users": [{**{k: v for k, v in u.items()}, "password": passwords[u["username"]],
                   "email": f"{u['username']}@incisive.demo"} for u in DEMO_USERS],
    }
    _write_private(paths.secrets / "idp-config.json", json.dumps(idp_config, indent=2))

    nodes_url = {n["name"]: f"http://{host}:{ports[n['name']]}/" for n in NODES}
    broker_nodes = {"timeout": 5.0, "catalogue_ttl": 30,
                    "nodes": [{"name": n["name"], "url": nodes_url[n["name"]]} for n in NODES]}
    (paths.root / "nodes.json").write_text(json.dumps(broker_nodes, indent=2))
    gateway = {"broker": f"http://{host}:{ports['broker']}/", "nodes": nodes_url, "token": "hub"}
    (paths.root / "gateway.json").write_text(json.dumps(gateway, indent=2))

    hub_settings = {
        "issuer": issuer, "client_id": "incisive-hub",
        "client_secret_file": str(paths.secrets / "hub-client-secret"),
        "audience": AUDIENCE, "state_dir": str(paths.hub), "ip": host, "port": ports["hub"],
        "gateway_config": str(paths.root / "gateway.json"), "minimum_loa": "substantial",
    }
    _write_private(paths.hub / "settings.json", json.dumps(hub_settings, indent=2))
    _set_governance(paths)
    return {"paths": paths, "ports": ports, "issuer": issuer, "hub_url": hub_url,
            "crypt_key": crypt_key, "passwords": passwords, "nodes": nodes_url,
            "broker": gateway["broker"]}


def write_jwks(path: str | os.PathLike[str]) -> str:
    """Generate an RS256 private JWKS file for the IdP's ``--jwks`` (mode 0600, never
    committed) and return its ``kid``: the key's RFC 7638 thumbprint, as the IdP computes it."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    jwk["kid"] = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    jwk.pop("key_ops", None)  # PyJWT writes ["sign"]; the public half must verify
    jwk.update(alg="RS256", use="sig")
    _write_private(Path(path), json.dumps({"keys": [jwk]}))
    return str(jwk["kid"])


def _services(plan: Mapping[str, Any]) -> list[Any]:
    paths: StackPaths = plan["paths"]
    ports = plan["ports"]
    issuer = plan["issuer"]
    cli = [sys.executable, "-m", "incisive_lab.cli"]
    node = shutil.which("node")
    if node is None:
        raise ServiceError("the identity provider needs Node.js >= 20 (run `make install`)")
    out: list[Any] = [ServiceProcess(
        "identity provider",
        [node, str(REPO / "hub" / "idp" / "server.mjs"), "--config", str(paths.secrets / "idp-config.json"),
         "--jwks", str(paths.secrets / "idp-jwks.json"), "--port", str(ports["idp"])],
        f"{issuer}/.well-known/openid-configuration", paths.logs / "idp.log")]
    for n in NODES:
        out.append(ServiceProcess(
            f"node {n['name']}",
            [*cli, "node", "serve", "--node-dir", str(paths.node_dir(n["site"])), "--port", str(ports[n["name"]]),
             "--issuer", issuer, "--audience", AUDIENCE, "--organisation", n["organisation"]],
            f"{plan['nodes'][n['name']]}healthz", paths.logs / f"{n['name']}.log"))
    training: list[str] = []
    if "superlink" in ports:
        # federated training: a SuperLink beside the broker, one SuperNode inside each node
        # (loopback, insecure: production uses TLS and SuperNode authentication, docs/fl-deployment.md)
        from incisive_lab.fl.deploy import SuperLink, SuperNode

        fl_dir = paths.root / "fl"
        link = SuperLink(fl_dir / "superlink", port=ports["superlink"])
        out.append(_Flower("flower superlink", link))
        for n in NODES:
            config = {"node-dir": str(paths.node_dir(n["site"])), "node-name": n["name"], "issuer": issuer,
                      "audience": AUDIENCE}
            out.append(_Flower(f"flower supernode {n['name']}",
                               SuperNode(link.fleet_address, fl_dir / f"supernode-{n['name']}", node_config=config)))
        training = ["--superlink", link.control_address]
    out.append(ServiceProcess(
        "broker",
        [*cli, "broker", "serve", "--nodes", str(paths.root / "nodes.json"), "--issuer", issuer,
         "--audience", AUDIENCE, "--port", str(ports["broker"]), "--state-dir", str(paths.root / "broker"),
         *training],
        f"{plan['broker']}healthz", paths.logs / "broker.log"))
    hub_env = {**os.environ, "INCISIVE_HUB_CONFIG": str(paths.hub / "settings.json"),
               "JUPYTERHUB_CRYPT_KEY": plan["crypt_key"]}
    out.append(ServiceProcess(
        "hub",
        [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(REPO / "hub" / "jupyterhub_config.py")],
        f"{plan['hub_url']}/hub/health", paths.logs / "hub.log", env=hub_env, cwd=paths.hub,
        # the hub stops its culler (SIGINT, 10 s, SIGTERM), its servers and its proxy first
        stop_timeout=45.0, pid_files=[(paths.hub / "proxy.pid", "configurable-http-proxy")]))
    return out


class Stack:
    """The demo's services, started in order and stopped in reverse."""

    def __init__(self, plan: Mapping[str, Any]) -> None:
        self.plan = plan
        self.services = _services(plan)

    def start(self, progress: Any = print) -> None:
        try:
            for svc in self.services:
                progress(f"  starting {svc.name} ...")
                svc.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()

    def dead(self) -> list[str]:
        return [s.name for s in self.services if s.proc is not None and not s.alive()]

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        paths: StackPaths = plan["paths"]
        return {
            "state": "running", "supervisor_pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "hub_url": plan["hub_url"] + "/", "idp_url": plan["issuer"], "broker_url": plan["broker"],
            "nodes": plan["nodes"], "ports": plan["ports"], "audience": AUDIENCE,
            "users": [{"username": u["username"], "password": plan["passwords"][u["username"]],
                       "roles": u["roles"], "loa": u["loa"],
                       "note": _user_note(u)} for u in DEMO_USERS],
            "pids": {s.name: s.pid for s in self.services},
            "logs": str(paths.logs),
        }


def _user_note(user: Mapping[str, Any]) -> str:
    if user["loa"] == "low":
        return "refused by the hub: eIDAS level of assurance low"
    if not user["roles"]:
        return "refused by the hub: in no allowed group"
    return ""


def write_state(demo_dir: Path, state: Mapping[str, Any]) -> Path:
    path = state_file(demo_dir)
    _write_private(path, json.dumps(state, indent=2) + "\n")
    return path


def read_state(demo_dir: Path) -> dict[str, Any] | None:
    """The running demo's state, or None when none runs (a stale file is ignored)."""
    path = state_file(demo_dir)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("supervisor_pid")
    if state.get("state") == "starting":
        return state if isinstance(pid, int) and pid_alive(pid) else None
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    return state


def stop_running(demo_dir: Path, *, timeout: float = 120.0) -> bool:
    """Stop a demo started with ``--detach``; returns whether one was running."""
    state = read_state(demo_dir)
    path = state_file(demo_dir)
    if state is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False
    pid = int(state["supervisor_pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)  # waiting for the supervisor to stop its services
    if pid_alive(pid):
        stop_group(pid)
    for child in (state.get("pids") or {}).values():
        if isinstance(child, int) and pid_alive(child):
            stop_group(child)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True


@contextlib.contextmanager
def signals_stop() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs (a clean stop)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
