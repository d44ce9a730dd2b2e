"""Each user's single-user server in a bubblewrap sandbox with kernel-enforced limits.

:class:`SandboxSpawner` is JupyterHub's :class:`LocalProcessSpawner` that

* runs ``python -m jupyterhub.singleuser`` under ``bwrap`` (:mod:`incisive_hub._sandbox`):
  own user, PID, IPC, UTS and cgroup namespaces, uid 1000 inside without a system account
  per user; the host network (the proxy reaches the server on loopback); read-only system,
  Python prefixes and the sources the server needs; read-write ``/workspace``
  (``{hub_state}/workspaces/{user}``, mode 0700) and ``/run/incisive``
  (``{hub_state}/runtime/{user}``); ``/etc/incisive/gateway.json`` read-only; nothing else;
* clears the environment: only what the single-user server needs (``JUPYTERHUB_*`` from
  :meth:`get_env`), the Jupyter paths of the contract (``JUPYTER_CONFIG_DIR`` ...),
  ``INCISIVE_GATEWAY_SOCKET`` and ``INCISIVE_GATEWAY_CONFIG`` — no hub secret
  (``JUPYTERHUB_CRYPT_KEY``, the proxy's token, the database, the cookie secret) is
  reachable;
* puts the process in per-user cgroups *before exec* (``preexec_fn``) with ``mem_limit``,
  ``cpu_limit`` and :attr:`pids_limit` (cgroup v2 when usable, else v1), removes them when
  the server stops, and refuses to spawn when no cgroup is writable unless
  :attr:`allow_rlimit_fallback` (RLIMIT_AS only, with a warning);
* ledgers ``spawn``/``fail``/``stop`` events with ``sandbox_sha256`` (the hash of the bwrap
  argument template).

``sandbox = False`` runs the same server, limits and environment without bwrap: it exists
only as the unsandboxed peer of the workbench benchmark. Never serve users with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import resource
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from subprocess import DEVNULL, Popen
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Bool, Integer, List, Unicode, default

from incisive_lab.ledger import Outcome

from ._cgroups import CgroupSet, CgroupUnavailable, Driver, Limits, find_driver
from ._sandbox import (
    DEFAULT_ETC,
    GATEWAY_CONFIG,
    RUNTIME,
    WORKSPACE,
    SandboxLayout,
    bwrap_argv,
    host_path,
    passwd_lines,
    template_sha256,
)
from .events import HubLedger

__all__ = ["SandboxError", "SandboxSpawner"]

_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_BWRAP_HINT = "install it: sudo apt-get install -y --no-install-recommends bubblewrap"


class SandboxError(RuntimeError):
    """The sandbox cannot be set up; the message says what is missing."""


def _package_dir(name: str) -> Path | None:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


class SandboxSpawner(LocalProcessSpawner):
    """Spawns single-user servers in bubblewrap sandboxes (see the module docstring)."""

    hub_state = Unicode(
        "",
        config=True,
        help="""The hub's state directory (required): workspaces live in
        ``<hub_state>/workspaces/<user>``, runtime directories in
        ``<hub_state>/runtime/<user>``. Never bound into a sandbox itself.""",
    )
    sandbox = Bool(
        True,
        config=True,
        help="""Run the server under bubblewrap. ``False`` only for the benchmark's
        unsandboxed peer: the server then runs as the hub's user with the host's view.""",
    )
    bwrap = Unicode("bwrap", config=True, help="The bubblewrap executable (name or path).")
    pids_limit = Integer(
        512,
        config=True,
        help="Most processes (and threads) in one server's sandbox, kernels included.",
    )
    allow_rlimit_fallback = Bool(
        False,
        config=True,
        help="""When no cgroup hierarchy is writable, spawn anyway with RLIMIT_AS as the only
        limit (a warning is logged; CPU and process limits are then not enforced). Default:
        refuse to spawn.""",
    )
    gateway_config = Unicode(
        "",
        config=True,
        help="""Host path of the gateway's destinations, bound read-only at
        ``/etc/incisive/gateway.json``. Default ``<hub_state>/gateway.json``.""",
    )
    source_dirs = List(
        Unicode(),
        config=True,
        help="""Host directories bound read-only at the same path: the library, the server
        extension and the kernel provisioner (default: where they are installed from).""",
    )
    python_prefixes = List(
        Unicode(),
        config=True,
        help="Python prefixes bound read-only (default ``sys.prefix``, ``sys.base_prefix``).",
    )
    jupyter_config_dir = Unicode(
        config=True, help="JUPYTER_CONFIG_DIR of the server (default extensions/jupyter-config).")
    jupyter_path = Unicode(
        config=True, help="JUPYTER_PATH of the server (default kernels/share/jupyter).")
    etc_files = List(
        Unicode(),
        list(DEFAULT_ETC),
        config=True,
        help="Entries of /etc bound read-only (no file a host root keeps private).",
    )
    sandbox_uid = Integer(1000, config=True, help="The uid inside the sandbox.")
    sandbox_gid = Integer(1000, config=True, help="The gid inside the sandbox.")
    cgroup_group = Unicode(
        config=True,
        help="""The hub's directory below its own cgroups (default ``incisive-hub-`` and 8 hex
        digits of the state directory's hash, so hubs on one machine never share one).""",
    )

    _cgroups: CgroupSet | None = None

    # -- defaults -----------------------------------------------------------------------

    @default("cmd")
    def _cmd_default(self) -> list[str]:
        return [sys.executable, "-m", "jupyterhub.singleuser"]

    @default("default_url")
    def _default_url_default(self) -> str:
        return "/lab"

    @default("env_keep")
    def _env_keep_default(self) -> list[str]:
        return []

    @default("disable_user_config")
    def _disable_user_config_default(self) -> bool:
        return True

    @default("mem_limit")
    def _mem_limit_default(self) -> int:
        return 2 * 1024**3

    @default("cpu_limit")
    def _cpu_limit_default(self) -> float:
        return 1.0

    @default("gateway_config")
    def _gateway_config_default(self) -> str:
        return os.path.join(self.hub_state, "gateway.json") if self.hub_state else ""

    @default("source_dirs")
    def _source_dirs_default(self) -> list[str]:
        out = []
        lib = _package_dir("incisive_lab")
        if lib is not None:
            out.append(str(lib))
        for package in ("incisive_lab_server", "incisive_kernels"):
            found = _package_dir(package)
            if found is not None:
                out.append(str(found.parent))  # extensions/, kernels/: config and kernelspec too
        return out

    @default("python_prefixes")
    def _python_prefixes_default(self) -> list[str]:
        return sorted({host_path(sys.prefix), host_path(sys.base_prefix)})

    @default("jupyter_config_dir")
    def _jupyter_config_dir_default(self) -> str:
        found = _package_dir("incisive_lab_server")
        return str(found.parent / "jupyter-config") if found is not None else ""

    @default("jupyter_path")
    def _jupyter_path_default(self) -> str:
        found = _package_dir("incisive_kernels")
        return str(found.parent / "share" / "jupyter") if found is not None else ""

    @default("cgroup_group")
    def _cgroup_group_default(self) -> str:
        digest = hashlib.sha256(host_path(self.hub_state or ".").encode()).hexdigest()
        return f"incisive-hub-{digest[:8]}"

    # -- paths --------------------------------------------------------------------------

    @property
    def server_id(self) -> str:
        """``user`` or ``user--server``: the server's cgroup name."""
        name = self.user.name
        if not _SAFE_NAME.fullmatch(name):
            raise SandboxError(f"user name {name!r} cannot name a sandbox (lowercase letters, "
                               "digits, '.', '_', '-')")
        if self.name:
            if not _SAFE_NAME.fullmatch(self.name):
                raise SandboxError(f"server name {self.name!r} cannot name a sandbox")
            return f"{name}--{self.name}"
        return name

    def _state(self) -> Path:
        if not self.hub_state:
            raise SandboxError("SandboxSpawner.hub_state is not configured")
        return Path(self.hub_state)

    @property
    def workspace_dir(self) -> Path:
        """The user's workspace on the host."""
        return self._state() / "workspaces" / self.server_id.split("--")[0]

    @property
    def runtime_dir(self) -> Path:
        """The server's runtime directory on the host."""
        return self._state() / "runtime" / self.server_id

    def _inside(self) -> dict[str, str]:
        """Where the server sees its workspace, runtime dir and gateway config."""
        if self.sandbox:
            return {"workspace": WORKSPACE, "runtime": RUNTIME, "gateway": GATEWAY_CONFIG}
        return {"workspace": str(self.workspace_dir), "runtime": str(self.runtime_dir),
                "gateway": host_path(self.gateway_config)}

    def layout(self) -> SandboxLayout:
        """The sandbox of this server (host paths)."""
        etc = self._state() / "sandbox"
        return SandboxLayout(
            workspace=host_path(self.workspace_dir), runtime=host_path(self.runtime_dir),
            gateway_config=host_path(self.gateway_config),
            passwd=str(etc / "passwd"), group=str(etc / "group"),
            read_only=tuple(host_path(p) for p in [*self.python_prefixes, *self.source_dirs]),
            etc=tuple(self.etc_files), uid=self.sandbox_uid, gid=self.sandbox_gid)

    def sandbox_sha256(self) -> str:
        """SHA-256 of the bwrap argument template (the same for every user of this hub)."""
        return template_sha256(self.bwrap, self.layout())

    # -- environment --------------------------------------------------------------------

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """No system account: HOME is the workspace, USER the hub user name."""
        env["USER"] = env["LOGNAME"] = self.user.name
        env["HOME"] = self._inside()["workspace"]
        return env

    def get_env(self) -> dict[str, str]:
        """Only what the server needs; nothing of the hub's own environment.

        Kept from :meth:`Spawner.get_env`: ``JUPYTERHUB_*``, ``MEM_LIMIT``/``CPU_LIMIT`` and
        what ``Spawner.environment`` sets; ``env_keep`` is empty by default.
        """
        full = super().get_env()
        configured = set(self.environment)  # Spawner.environment: the operator's own choice
        keep = {k: v for k, v in full.items()
                if k.startswith("JUPYTERHUB_") or k in ("MEM_LIMIT", "CPU_LIMIT")
                or k in configured}
        inside = self._inside()
        runtime = inside["runtime"]
        keep.update({
            "HOME": inside["workspace"],
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "PATH": os.pathsep.join([os.path.join(sys.prefix, "bin"), "/usr/local/bin",
                                     "/usr/bin", "/bin"]),
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "PYTHONNOUSERSITE": "1",  # the workspace is HOME: no ~/.local site-packages
            "PYTHONSAFEPATH": "1",  # no working directory on sys.path: no user modules
            "PYTHONDONTWRITEBYTECODE": "1",
            "IPYTHONDIR": f"{runtime}/ipython",  # not ~/.ipython in the workspace
            "SHELL": "/bin/sh",
            "JUPYTERHUB_ROOT_DIR": inside["workspace"],
            "JUPYTER_CONFIG_DIR": self.jupyter_config_dir,
            "JUPYTER_DATA_DIR": f"{runtime}/jupyter-data",
            "JUPYTER_PATH": self.jupyter_path,
            "JUPYTER_RUNTIME_DIR": f"{runtime}/jupyter",
            "JUPYTERLAB_SETTINGS_DIR": f"{runtime}/lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": f"{runtime}/lab-workspaces",
            "INCISIVE_GATEWAY_SOCKET": f"{runtime}/gateway.sock",
            "INCISIVE_GATEWAY_CONFIG": inside["gateway"],
        })
        keep.pop("JPY_API_TOKEN", None)
        return keep

    # -- limits -------------------------------------------------------------------------

    def limits(self) -> Limits:
        """The enforced limits (``mem_limit``, ``cpu_limit``, :attr:`pids_limit`)."""
        if not self.mem_limit or not self.cpu_limit or not self.pids_limit:
            raise SandboxError("mem_limit, cpu_limit and pids_limit must all be set: a server "
                               "without limits is not spawned")
        return Limits(memory=int(self.mem_limit), cpu=float(self.cpu_limit),
                      pids=int(self.pids_limit))

    def cgroup_driver(self) -> Driver:
        """The machine's cgroup driver (override in tests to point at a fake tree)."""
        return find_driver(self.cgroup_group)

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        """Runs in the child before exec: into the cgroups (or the rlimit fallback)."""
        cgroups = self._cgroups
        if cgroups is not None:
            return cgroups.attach
        memory = self.limits().memory

        def rlimits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        return rlimits

    def _setup_limits(self) -> None:
        limits = self.limits()
        try:
            driver = self.cgroup_driver()
        except CgroupUnavailable as exc:
            if not self.allow_rlimit_fallback:
                raise SandboxError(f"cannot enforce the server's limits: {exc}. Give the hub "
                                   "a writable cgroup hierarchy, or set "
                                   "SandboxSpawner.allow_rlimit_fallback = True") from exc
            self.log.warning("%s; falling back to RLIMIT_AS=%d for %s (CPU and process limits "
                             "are NOT enforced)", exc, limits.memory, self._log_name)
            self._cgroups = None
            return
        self._cgroups = driver.create(self.server_id, limits)
        self.log.info("cgroups v%d for %s: memory %d bytes, %.2f CPU, %d processes",
                      driver.version, self._log_name, limits.memory, limits.cpu, limits.pids)

    def _remove_limits(self) -> None:
        cgroups = self._cgroups
        if cgroups is None:
            try:
                cgroups = self.cgroup_driver().cgroups(self.server_id)
            except (CgroupUnavailable, SandboxError, ValueError):
                return
        try:
            cgroups.remove()
        except OSError as exc:
            self.log.error("could not remove the cgroups of %s: %s", self._log_name, exc)
        self._cgroups = None

    # -- start and stop -----------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        state = self._state()
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        for directory in (state / "workspaces", state / "runtime", state / "sandbox",
                          self.workspace_dir, self.runtime_dir):
            directory.mkdir(exist_ok=True, mode=0o700)
            directory.chmod(0o700)
        passwd, group = passwd_lines(self.sandbox_uid, self.sandbox_gid)
        for name, text in (("passwd", passwd), ("group", group)):
            target = state / "sandbox" / name
            if not target.exists() or target.read_text() != text:
                target.write_text(text)
                target.chmod(0o644)
        gateway = Path(self.gateway_config)
        if not gateway.is_file():
            raise SandboxError(f"the gateway's destinations {gateway} do not exist "
                               "(SandboxSpawner.gateway_config)")

    def _argv(self) -> list[str]:
        command = [*self.cmd, *self.get_args()]
        if not self.sandbox:
            # the peer runs as the hub's own user, root on these machines (in the sandbox the
            # server is uid 1000 of its own user namespace)
            return [*command, "--allow-root"] if os.geteuid() == 0 else command
        bwrap = shutil.which(self.bwrap)
        if bwrap is None:
            raise SandboxError(f"bubblewrap ({self.bwrap}) is not installed: {_BWRAP_HINT}")
        for path in (self.jupyter_config_dir, self.jupyter_path):
            if path and not any(path == d or path.startswith(d.rstrip("/") + "/")
                                for d in self.source_dirs):
                raise SandboxError(f"{path} is not inside a bound source directory "
                                   f"({', '.join(self.source_dirs)})")
        return bwrap_argv(bwrap, self.layout(), command)

    async def start(self) -> tuple[str, int]:
        """Start the server in its sandbox; ledger ``spawn`` (or ``fail``)."""
        ledger = HubLedger.instance()
        try:
            if not self.port:  # type: ignore[has-type]
                self.port = int(random_port())
            self._prepare_dirs()
            argv = self._argv()
            env = self.get_env()
            self._setup_limits()
            if not self.sandbox:
                self.log.warning("%s runs WITHOUT the sandbox (benchmark peer only)",
                                 self._log_name)
            self.log.info("Spawning %s", " ".join(shlex.quote(a) for a in argv))
            try:
                self.proc = Popen(argv, env=env, cwd=str(self.runtime_dir), stdin=DEVNULL,
                                  preexec_fn=self.make_preexec_fn(self.user.name),
                                  start_new_session=True, close_fds=True)
                self.pid = self.proc.pid
                await self._wait_listening()
            except BaseException:
                if self.proc is not None and self.proc.poll() is None:
                    self.proc.kill()
                    await asyncio.to_thread(self.proc.wait)
                self.clear_state()
                self._remove_limits()
                raise
        except Exception as exc:
            ledger.spawn("fail", user=self.user.name, server=self.name,
                         outcome=Outcome.deny(f"{type(exc).__name__}: {exc}"),
                         details=self._event_details())
            raise
        ledger.spawn("spawn", user=self.user.name, server=self.name,
                     outcome=Outcome.allow(f"pid {self.pid}"), details=self._event_details())
        return (self.ip or "127.0.0.1", int(self.port))

    async def _wait_listening(self) -> None:
        """Return when the server accepts connections; raise if it exits first (JupyterHub
        itself would wait ``http_timeout`` for a server that is already gone)."""
        assert self.proc is not None
        host = self.ip or "127.0.0.1"
        while True:
            status = self.proc.poll()
            if status is not None:
                raise SandboxError(f"the single-user server of {self._log_name} exited with "
                                   f"status {status} while starting (its log is in the hub's)")
            try:
                _, writer = await asyncio.open_connection(host, int(self.port))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def _event_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"server": self.name or "default",
                                   "profile": "sandbox" if self.sandbox else "unsandboxed",
                                   "image": f"python{sys.version_info[0]}.{sys.version_info[1]}"}
        if self.sandbox:
            with contextlib.suppress(SandboxError):
                details["sandbox_sha256"] = self.sandbox_sha256()
        return details

    def server_pid(self) -> int | None:
        """The single-user server's own process (below bwrap's two), if alive."""
        if not self.pid:
            return None
        if not self.sandbox:
            return self.pid
        pid = self.pid
        for _ in range(3):
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    comm = fh.read().strip()
                if comm != "bwrap":
                    return pid
                with open(f"/proc/{pid}/task/{pid}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
            except (OSError, ValueError):
                return None
            if not children:
                return None
            pid = children[0]
        return None

    async def stop(self, now: bool = False) -> None:
        """Stop the server (SIGTERM to the server itself, so it shuts its kernels down;
        then SIGKILL to the sandbox), remove its cgroups, ledger ``stop``."""
        status = await self.poll()
        reason = f"exited with status {status}" if status is not None else "stopped"
        try:
            if status is None:
                inner = self.server_pid()
                if inner is not None and not now:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(inner, signal.SIGTERM)
                    await self.wait_for_death(self.term_timeout)
                if self.pid and await self.poll() is None:
                    await self._signal(signal.SIGKILL)
                    await self.wait_for_death(self.kill_timeout)
                if await self.poll() is None:
                    self.log.warning("the sandbox of %s (pid %s) did not die", self._log_name,
                                     self.pid)
        finally:
            await asyncio.to_thread(self._remove_limits)
            HubLedger.instance().spawn("stop", user=self.user.name, server=self.name,
                                       outcome=Outcome.allow(reason),
                                       details={"server": self.name or "default",
                                                "profile": "sandbox" if self.sandbox
                                                else "unsandboxed"})
