"""Flower's deployment engine as local processes: a SuperLink, SuperNodes, and runs.

flwr 1.41 serves the SuperLink's Fleet API (SuperNodes), Control API (``flwr`` CLI) and
Runtime API (its ServerApp processes) on **one** HTTP(S) port (``--host``/``--port``);
a SuperNode has its own local Runtime API port for its ClientApp processes and dials the
SuperLink outbound only. This module wraps both as :class:`~incisive_lab._processes.
ServiceProcess` processes (own process group, output appended to a log file, readiness
waits, clean stop) and talks to the Control API through Flower's own CLI (``flwr run``,
``flwr ls``, ``flwr stop``, ``flwr supernode register|ls`` with ``--format json``) against a
connection written into a private ``FLWR_HOME`` (never ``~/.flwr``).

Every flwr process runs with ``FLWR_DISABLE_UPDATE_CHECK=1``, ``FLWR_TELEMETRY_ENABLED=0``
and without runtime dependency installation: nothing reaches the network but the SuperLink.

Examples
--------
>>> with SuperLink(tmp / "link") as link, \\
...         SuperNode(link.address, tmp / "a", node_config={"node-dir": "/data/a"}):
...     run_id = link.control().submit(app_dir, {"rounds": 1})
...     link.control().wait(run_id).ok                      # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import tomli_w

from incisive_lab._files import write_atomic
from incisive_lab._processes import ServiceError, ServiceProcess, free_port, pid_alive, stop_group
from incisive_lab.errors import IncisiveLabError
from incisive_lab.fl._pki import NodeKey, Pki

__all__ = [
    "Control", "FlowerCliError", "NodeInfo", "RunStatus", "SuperLink", "SuperNode",
    "SuperNodeRefused", "flower_env", "parse_flwr_time", "run_status", "stop_run", "submit", "wait",
]

ConfigValue = str | int | float | bool
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CONNECTION = "incisive"


class FlowerCliError(IncisiveLabError):
    """A ``flwr`` command failed (the message holds what it said)."""


class SuperNodeRefused(ServiceError):
    """A SuperNode exited before the SuperLink accepted it (e.g. an unregistered key)."""

    def __init__(self, message: str, *, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


def _bin(name: str) -> str:
    """The flwr executable installed beside this interpreter (else on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (install the 'fl' extra: flwr 1.41)")
    return found


def flower_env(flwr_home: str | os.PathLike[str],
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a flwr process: offline, no telemetry, its own ``FLWR_HOME``.

    Parameters
    ----------
    flwr_home : path
        Where flwr keeps its configuration and installed apps (created 0700).
    base : mapping, optional
        The environment to start from (default: this process's); inherited ``FLWR_*``
        variables are dropped.
    """
    home = Path(flwr_home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("FLWR_")}
    bindir = str(Path(sys.executable).parent)   # flower-superexec is found on PATH by flwr
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    env.update(FLWR_HOME=str(home.resolve()), FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PYTHONUNBUFFERED="1")
    return env


def _config_toml(config: Mapping[str, ConfigValue], what: str) -> bytes:
    """Validate a flat key -> value mapping and render it as TOML."""
    if not isinstance(config, Mapping):
        raise TypeError(f"{what} must be a mapping of str to str/int/float/bool")
    for key, value in config.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"{what}: key {key!r} must be letters, digits, '_' or '-'")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"{what}: value of {key!r} must be str, int, float or bool, "
                             f"not {type(value).__name__}")
    return tomli_w.dumps(dict(config)).encode()


def _children_of(pid: int) -> list[int]:
    """Processes flwr started detached with ``--parent-pid <pid>`` (its SuperExec)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            for i, arg in enumerate(argv[:-1]):
                if arg == b"--parent-pid" and argv[i + 1] == str(pid).encode():
                    found.append(int(entry.name))
    return found


@dataclass
class _FlowerProcess(ServiceProcess):
    """A :class:`ServiceProcess` that also stops the SuperExec flwr starts detached (it
    watches ``--parent-pid``)."""

    detached: list[int] = field(default_factory=list, repr=False)

    def stop(self, timeout: float | None = None) -> None:
        pid = self.pid
        if pid is not None and self.proc is not None and self.proc.poll() is None:
            self.detached = _children_of(pid)
        super().stop(timeout)
        for child in self.detached:       # they exit by themselves once their parent is gone
            deadline = time.monotonic() + 5
            while pid_alive(child) and time.monotonic() < deadline:
                time.sleep(0.1)  # waiting for the detached SuperExec to notice
            if pid_alive(child):
                stop_group(child, timeout=5)


class _Service:
    """Context-manager plumbing shared by SuperLink and SuperNode."""

    process: _FlowerProcess

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL) and flwr's detached SuperExec."""
        self.process.stop()

    def alive(self) -> bool:
        return self.process.alive()

    @property
    def log(self) -> Path:
        """The log file (stdout and stderr, appended)."""
        return self.process.log

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class SuperLink(_Service):
    """A ``flower-superlink`` process: Fleet, Control and Runtime APIs on one port.

    Parameters
    ----------
    state_dir : path
        Holds ``superlink.db`` (runs and nodes survive a restart), ``superlink.log`` and the
        process's ``flwr-home``.
    port : int, optional
        The SuperLink's port (default: a free one).
    host : str
        Bind address. ``127.0.0.1`` for the loopback demo; in production the SuperNodes'
        address, behind TLS (the Runtime API shares this port, see docs/fl-deployment.md).
    tls : Pki, optional
        Serve HTTPS with ``tls.server_cert``/``server_key``; ``None`` serves plain HTTP
        (``--insecure``, loopback demo only).
    node_auth : bool
        ``--enable-supernode-auth``: only SuperNodes whose public key was registered through
        the Control API (:meth:`Control.register_node`) may connect. Requires ``tls``.
    timeout : float
        Seconds to wait for readiness.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, port: int | None = None,
                 host: str = "127.0.0.1", tls: Pki | None = None, node_auth: bool = False,
                 timeout: float = 60.0) -> None:
        if node_auth and tls is None:
            raise ValueError("node_auth=True needs tls (a Pki): flwr refuses SuperNode "
                             "authentication over plain HTTP")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {port}")
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.port = port or free_port(host="127.0.0.1" if host in ("0.0.0.0", "::") else host)
        self.tls = tls
        self.node_auth = node_auth
        dial = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.address = f"[{dial}]:{self.port}" if ":" in dial else f"{dial}:{self.port}"
        argv = [_bin("flower-superlink"), "--host", host, "--port", str(self.port),
                "--database", str(self.state_dir / "superlink.db"),
                "--disable-runtime-dependency-installation"]
        if tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-certfile", str(tls.server_cert.resolve()),
                     "--ssl-keyfile", str(tls.server_key.resolve()),
                     "--ssl-ca-certfile", str(tls.ca_cert.resolve())]
        if node_auth:
            argv.append("--enable-supernode-auth")
        scheme = "http" if tls is None else "https"
        self.process = _FlowerProcess(
            name="flower-superlink", argv=argv, ready_url=f"{scheme}://{self.address}/health",
            log=self.state_dir / "superlink.log", env=flower_env(self.state_dir / "flwr-home"),
            cwd=self.state_dir, timeout=timeout,
            verify=(ssl.create_default_context(cafile=str(tls.ca_cert)) if tls is not None
                    else True))

    @property
    def fleet_address(self) -> str:
        """What a SuperNode passes as ``--superlink`` (the same port as the Control API)."""
        return self.address

    @property
    def control_address(self) -> str:
        """What the ``flwr`` CLI dials (the same port as the Fleet API)."""
        return self.address

    def start(self) -> Self:
        """Start the SuperLink and wait until its ``/health`` answers; :class:`ServiceError`
        with the end of its log if it does not."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.process.start()
        return self

    def control(self, flwr_home: str | os.PathLike[str] | None = None) -> Control:
        """A Control API client for this SuperLink (trusting its CA when it has TLS)."""
        return Control(self.control_address, tls_root=self.tls.ca_cert if self.tls else None,
                       flwr_home=flwr_home)


class SuperNode(_Service):
    """A ``flower-supernode`` process inside one node: connects outbound to the SuperLink.

    Parameters
    ----------
    superlink_address : str
        ``host:port`` of the SuperLink's Fleet API.
    state_dir : path
        Holds ``supernode.log``, ``node-config.toml`` and the process's ``flwr-home`` (where it
        unpacks the apps it runs).
    node_config : mapping, optional
        ``--node-config``: what the ClientApp reads as ``context.node_config`` (e.g.
        ``node-dir``, ``node-name``, ``issuer``, ``audience``, ``jwks-url``). Passed as a TOML
        file so values need no shell quoting.
    tls_root : path, optional
        CA certificate to verify the SuperLink with; ``None`` dials plain HTTP (``--insecure``).
    auth_key : NodeKey or path, optional
        The node's authentication key (OpenSSH EC private key); ``None`` lets flwr make an
        ephemeral one, which a SuperLink with ``node_auth`` refuses.
    clientappio_port : int, optional
        The SuperNode's local Runtime API port (default: a free one on 127.0.0.1).
    trusted_entities : path, optional
        ``--trusted-entities``: a YAML file mapping public-key IDs to Ed25519 OpenSSH public
        keys; the SuperNode then runs only FABs carrying a valid signature by one of them.
        In flwr 1.41 only apps fetched from Flower Hub carry signatures, so a SuperNode with
        this set refuses every locally submitted app (see docs/fl-deployment.md).
    timeout : float
        Seconds to wait until the SuperLink has accepted the node.
    """

    _NODE_ID = re.compile(rb"SuperNode ID: (\d+)")

    def __init__(self, superlink_address: str, state_dir: str | os.PathLike[str], *,
                 node_config: Mapping[str, ConfigValue] | None = None,
                 tls_root: str | os.PathLike[str] | None = None,
                 auth_key: NodeKey | str | os.PathLike[str] | None = None,
                 clientappio_port: int | None = None,
                 trusted_entities: str | os.PathLike[str] | None = None,
                 timeout: float = 60.0) -> None:
        if not superlink_address or "://" in superlink_address:
            raise ValueError(f"superlink_address must be host:port, not {superlink_address!r}")
        self.superlink_address = superlink_address
        self.state_dir = Path(state_dir).resolve()
        self.node_config = dict(node_config or {})
        self._node_config_toml = _config_toml(self.node_config, "node_config")
        self.tls_root = Path(tls_root) if tls_root is not None else None
        if self.tls_root is not None and not self.tls_root.is_file():
            raise FileNotFoundError(f"tls_root {self.tls_root} is not a file")
        key = auth_key.private_key if isinstance(auth_key, NodeKey) else auth_key
        self.auth_key = Path(key) if key is not None else None
        if self.auth_key is not None and not self.auth_key.is_file():
            raise FileNotFoundError(f"auth_key {self.auth_key} is not a file")
        self.port = clientappio_port or free_port()
        self.node_id: int | None = None
        argv = [_bin("flower-supernode"), "--superlink", superlink_address,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--node-config", str((self.state_dir / "node-config.toml").resolve())]
        argv += (["--insecure"] if self.tls_root is None
                 else ["--root-certificates", str(self.tls_root.resolve())])
        if self.auth_key is not None:
            argv += ["--auth-supernode-private-key", str(self.auth_key.resolve())]
        if trusted_entities is not None:
            if not Path(trusted_entities).is_file():
                raise FileNotFoundError(f"trusted_entities {trusted_entities} is not a file")
            argv += ["--trusted-entities", str(Path(trusted_entities).resolve())]
        self.timeout = timeout
        self.process = _FlowerProcess(
            name=f"flower-supernode ({self.state_dir.name})", argv=argv,
            ready_url=f"http://127.0.0.1:{self.port}/health", log=self.state_dir / "supernode.log",
            env=flower_env(self.state_dir / "flwr-home"), cwd=self.state_dir, timeout=timeout)

    def start(self) -> Self:
        """Start the SuperNode and wait until the SuperLink has accepted it (its node ID
        appears in the log). :class:`SuperNodeRefused` if it exits first."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.state_dir / "node-config.toml", self._node_config_toml, private=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        try:
            self.process.start()
        except ServiceError as exc:
            proc = self.process.proc
            if proc is not None and proc.poll() is not None:
                raise SuperNodeRefused(str(exc), returncode=proc.returncode,
                                       log_tail=self.process.tail()) from exc
            raise
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(OSError), self.log.open("rb") as fh:
                fh.seek(offset)
                found = self._NODE_ID.search(fh.read())
                if found:
                    self.node_id = int(found.group(1))
                    return self
            proc = self.process.proc
            if proc is not None and proc.poll() is not None:
                tail = self.process.tail()
                raise SuperNodeRefused(
                    f"{self.process.name} exited with status {proc.returncode} before the "
                    f"SuperLink accepted it; the end of {self.log}:\n{tail}",
                    returncode=proc.returncode, log_tail=tail)
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.process.name} was not accepted by the SuperLink at "
                                   f"{self.superlink_address} after {self.timeout:.0f} s; the "
                                   f"end of {self.log}:\n{self.process.tail()}")
            time.sleep(0.2)  # waiting for the node ID in the log


@dataclass(frozen=True)
class RunStatus:
    """A run as ``flwr ls --run-id`` reports it.

    Attributes
    ----------
    run_id : int
    status : str
        ``pending``, ``starting``, ``running`` or ``finished``.
    sub_status : str
        When finished: ``completed``, ``failed`` or ``stopped``; else ``""``.
    details : str
        Flower's status details (an error message for a failed run).
    elapsed, serverapp_seconds, clientapp_seconds : float
        Flower's own accounting: wall time since running, the ServerApp's wall time, and the
        ClientApp processes' summed run time (the benchmark's overhead split).
    raw : dict
        The whole JSON entry.
    """

    run_id: int
    status: str
    sub_status: str
    details: str
    elapsed: float
    serverapp_seconds: float
    clientapp_seconds: float
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def ok(self) -> bool:
        """Finished and completed (not failed, not stopped)."""
        return self.finished and self.sub_status == "completed"

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> RunStatus:
        status, _, sub = str(entry.get("status", "")).partition(":")
        details = str(entry.get("status-details", ""))
        compute = entry.get("compute-time") or {}
        return cls(run_id=int(entry["run-id"]), status=status, sub_status=sub,
                   details="" if details == "N/A" else details,
                   elapsed=float(entry.get("elapsed") or 0.0),
                   serverapp_seconds=float(compute.get("serverapp-seconds") or 0.0),
                   clientapp_seconds=float(compute.get("clientapp-seconds") or 0.0),
                   raw=dict(entry))


@dataclass(frozen=True)
class NodeInfo:
    """A SuperNode as ``flwr supernode ls`` reports it (``status``: online/offline/…)."""

    node_id: int
    status: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)


def _last_json(text: str) -> dict[str, Any] | None:
    """The last top-level JSON object in ``text`` (flwr may print other lines before it)."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found = obj
        i = text.find("{", end)
    return found


class Control:
    """The SuperLink's Control API through Flower's CLI, with a private ``FLWR_HOME``.

    Parameters
    ----------
    address : str
        ``host:port`` of the SuperLink (its Control API).
    tls_root : path, optional
        CA certificate to verify the SuperLink with; ``None`` means plain HTTP (insecure).
    flwr_home : path, optional
        Where to write the CLI's connection (``config.toml``); default a temporary
        directory removed with this object.
    timeout : float
        Seconds one ``flwr`` command may take.
    """

    def __init__(self, address: str, *, tls_root: str | os.PathLike[str] | None = None,
                 flwr_home: str | os.PathLike[str] | None = None, timeout: float = 120.0) -> None:
        if not address or "://" in address:
            raise ValueError(f"address must be host:port, not {address!r}")
        self.address = address
        self.tls_root = Path(tls_root).resolve() if tls_root is not None else None
        if self.tls_root is not None and not self.tls_root.is_file():
            raise FileNotFoundError(f"tls_root {self.tls_root} is not a file")
        if flwr_home is None:
            self.flwr_home = Path(tempfile.mkdtemp(prefix="incisive-flwr-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.flwr_home, True)
        else:
            self.flwr_home = Path(flwr_home)
        self.timeout = timeout
        self.env = flower_env(self.flwr_home)
        conn: dict[str, Any] = {"address": address}
        if self.tls_root is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.tls_root)
        write_atomic(self.flwr_home / "config.toml", tomli_w.dumps(
            {"superlink": {"default": _CONNECTION, _CONNECTION: conn}}).encode(), private=True)

    def close(self) -> None:
        """Remove the temporary ``FLWR_HOME`` (if this object made it)."""
        if hasattr(self, "_cleanup"):
            self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _flwr(self, *args: str) -> dict[str, Any]:
        argv = [_bin("flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(argv, env=self.env, cwd=self.flwr_home, capture_output=True,
                                  text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise FlowerCliError(f"`flwr {' '.join(args)}` took longer than "
                                 f"{self.timeout:.0f} s") from exc
        doc = _last_json(done.stdout)
        if doc is None or not doc.get("success", False) or done.returncode != 0:
            said = (doc or {}).get("error-message") or (done.stdout + done.stderr).strip()
            raise FlowerCliError(f"`flwr {' '.join(args)}` failed (status {done.returncode}): "
                                 f"{said[-2000:]}")
        return doc

    def submit(self, app_dir: str | os.PathLike[str],
               run_config: Mapping[str, ConfigValue] | None = None) -> int:
        """Start a run of the Flower app in ``app_dir`` (``flwr run``); returns its run ID.

        ``run_config`` overrides keys of the app's ``[tool.flwr.app.config]``; it is passed
        as a TOML file readable by its owner only (it may hold the user's access token) and
        removed afterwards.
        """
        app = Path(app_dir)
        if not (app / "pyproject.toml").is_file():
            raise FileNotFoundError(f"app_dir {app} has no pyproject.toml")
        args = ["run", str(app.resolve()), _CONNECTION]
        with tempfile.TemporaryDirectory(prefix="run-config-", dir=self.flwr_home) as tmp:
            if run_config:
                path = Path(tmp) / "run-config.toml"
                write_atomic(path, _config_toml(run_config, "run_config"), private=True)
                args += ["--run-config", str(path)]
            doc = self._flwr(*args)
        try:
            return int(doc["run-id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FlowerCliError(f"`flwr run` answered without a run ID: {doc}") from exc

    def run_status(self, run_id: int) -> RunStatus:
        """The run's status (``flwr ls --run-id``)."""
        doc = self._flwr("ls", _CONNECTION, "--run-id", str(int(run_id)))
        runs = [r for r in doc.get("runs", []) if str(r.get("run-id")) == str(run_id)]
        if not runs:
            raise FlowerCliError(f"the SuperLink at {self.address} knows no run {run_id}")
        return RunStatus.from_json(runs[0])

    def stop_run(self, run_id: int) -> None:
        """Stop a pending or running run (``flwr stop``)."""
        self._flwr("stop", str(int(run_id)), _CONNECTION)

    def wait(self, run_id: int, *, timeout: float = 600.0, poll: float = 2.0) -> RunStatus:
        """Poll until the run has finished; ``TimeoutError`` after ``timeout`` seconds.

        Each poll runs ``flwr ls`` (about a second of CPU): keep ``poll`` at seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.run_status(run_id)
            if status.finished:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {status.status} after {timeout:.0f} s")
            time.sleep(poll)  # polling the Control API

    def logs(self, run_id: int) -> str:
        """The ServerApp's log of a run as the SuperLink kept it (``flwr log --show``)."""
        done = subprocess.run([_bin("flwr"), "log", str(int(run_id)), _CONNECTION, "--show"],
                              env=self.env, cwd=self.flwr_home, capture_output=True, text=True,
                              timeout=self.timeout, check=False)
        return done.stdout

    def register_node(self, key: NodeKey | str | os.PathLike[str], *,
                      name: str | None = None) -> int:
        """Register a SuperNode's public key (``flwr supernode register``); returns the node ID
        the SuperLink assigned. Only needed, and only allowed, with node authentication."""
        public = key.public_key if isinstance(key, NodeKey) else Path(key)
        if not public.is_file():
            raise FileNotFoundError(f"public key {public} is missing")
        args = ["supernode", "register", str(public.resolve()), _CONNECTION]
        if name:
            args += ["--name", name]
        doc = self._flwr(*args)
        return int(doc["node-id"])

    def nodes(self) -> list[NodeInfo]:
        """The SuperNodes the SuperLink knows (``flwr supernode ls``)."""
        doc = self._flwr("supernode", "ls", _CONNECTION)
        return [NodeInfo(node_id=int(n["node-id"]), status=str(n.get("status", "")), raw=dict(n))
                for n in doc.get("nodes", [])]

    def wait_for_nodes(self, count: int, *, timeout: float = 60.0, poll: float = 1.0) -> list[int]:
        """Wait until at least ``count`` SuperNodes are online; returns their node IDs."""
        deadline = time.monotonic() + timeout
        while True:
            online = [n.node_id for n in self.nodes() if n.status == "online"]
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(online)} of {count} SuperNodes online after "
                                   f"{timeout:.0f} s")
            time.sleep(poll)  # polling the Control API


def submit(app_dir: str | os.PathLike[str], control_address: str,
           run_config: Mapping[str, ConfigValue] | None = None, *,
           tls_root: str | os.PathLike[str] | None = None) -> int:
    """Start a run of the Flower app in ``app_dir`` on the SuperLink at ``control_address``.

    See :meth:`Control.submit`.
    """
    with Control(control_address, tls_root=tls_root) as control:
        return control.submit(app_dir, run_config)


def run_status(run_id: int, control_address: str, *,
               tls_root: str | os.PathLike[str] | None = None) -> RunStatus:
    """The status of run ``run_id`` (see :meth:`Control.run_status`)."""
    with Control(control_address, tls_root=tls_root) as control:
        return control.run_status(run_id)


def stop_run(run_id: int, control_address: str, *,
             tls_root: str | os.PathLike[str] | None = None) -> None:
    """Stop run ``run_id`` (see :meth:`Control.stop_run`)."""
    with Control(control_address, tls_root=tls_root) as control:
        control.stop_run(run_id)


def wait(run_id: int, control_address: str, *, tls_root: str | os.PathLike[str] | None = None,
         timeout: float = 600.0, poll: float = 2.0) -> RunStatus:
    """Wait until run ``run_id`` has finished (see :meth:`Control.wait`)."""
    with Control(control_address, tls_root=tls_root) as control:
        return control.wait(run_id, timeout=timeout, poll=poll)


def parse_flwr_time(value: str) -> datetime.datetime | None:
    """A timestamp from ``flwr ls`` JSON (``"2026-01-01 12:00:00Z"``: ``pending-at``,
    ``running-at``, ``finished-at`` in :attr:`RunStatus.raw`), or ``None`` for ``N/A``."""
    if not value or value == "N/A":
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
