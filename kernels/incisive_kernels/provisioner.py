"""The sandboxed kernel's provisioner: ipykernel under bubblewrap, ZeroMQ over ipc sockets.

:class:`SandboxProvisioner` is the ``incisive-sandbox`` entry point of
``jupyter_client.kernel_provisioners``; a kernelspec names it in
``metadata.kernel_provisioner.provisioner_name`` (``kernels/share/jupyter/kernels/incisive``).
It is :class:`~jupyter_client.provisioning.LocalProvisioner` with three changes:

``pre_launch``
    forces the ipc transport with the sockets in a short directory of their own beside the
    connection file (in ``JUPYTER_RUNTIME_DIR``) and checks the kernelspec asks for
    ``interrupt_mode: message`` (a signal would reach bubblewrap, not the kernel);
``launch_kernel``
    runs the kernel command inside the sandbox :mod:`incisive_kernels.sandbox` describes,
    as a new process group, so that ``kill``/``terminate`` reach bubblewrap, whose death takes
    the whole sandbox (its PID namespace) with it;
``send_signal``
    turns ``SIGINT`` into an ``interrupt_request`` on the control channel.

``poll``, ``wait``, ``kill`` and ``terminate`` are the local provisioner's: they watch and
signal the ``bwrap`` process, whose exit status is the kernel's.

The sandbox sees the workspace (read-write), the gateway socket (from the server's
``INCISIVE_GATEWAY_SOCKET``, at ``/run/incisive/gateway.sock``), its own sockets and
connection file, ``/tmp`` (a tmpfs), and read-only system directories, Python prefixes and
the library's source; see ``docs/kernels.md``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import List, Unicode, default

from .sandbox import (
    HostLayout,
    SandboxError,
    SandboxSpec,
    build_argv,
    find_bwrap,
    host_layout,
    ipc_prefix,
    kernel_env,
    namespace_args,
    system_args,
)

__all__ = ["SandboxProvisioner"]

#: The server's environment variable naming the gateway's Unix socket (host path).
GATEWAY_ENV = "INCISIVE_GATEWAY_SOCKET"


class SandboxProvisioner(LocalProvisioner):
    """Start a kernel under bubblewrap: no network, ipc transport, a cleared environment.

    Configure it as ``c.SandboxProvisioner.<trait>`` or in the kernelspec's
    ``metadata.kernel_provisioner.config``. The kernelspec's ``argv[0]`` should be
    ``python`` (jupyter_client replaces it by this server's interpreter, whose prefixes are
    bound read-only), and its ``interrupt_mode`` must be ``message``.
    """

    workspace = Unicode(
        config=True,
        help="""The directory the kernel may read and write (bound at the same path; HOME and
        the default working directory). Default: the kernel manager's ``root_dir`` when it has
        one (jupyter_server), else this process's working directory. It cannot be ``/``,
        ``/tmp`` or a system directory.""",
    )

    bwrap = Unicode(
        "bwrap",
        config=True,
        help="""The bubblewrap executable (a name looked up on PATH, or a path). Missing: the
        kernel does not start (``apt-get install -y bubblewrap``).""",
    )

    library_packages = List(
        Unicode(),
        default_value=["incisive_lab"],
        config=True,
        help="""Top-level packages whose source directories are bound read-only when they lie
        outside the Python prefixes (editable installs). Found from the installed package,
        never the repository root; a package that is not installed is skipped with a
        warning.""",
    )

    _ipc_dir: str | None = None

    @default("workspace")
    def _workspace_default(self) -> str:
        root = getattr(getattr(self.parent, "parent", None), "root_dir", None)
        return os.path.abspath(root) if isinstance(root, str) and root else os.getcwd()

    # ------------------------------------------------------------------ launch

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Force the ipc transport in a short socket directory, then prepare as locally."""
        km = self.parent
        if km is None:
            raise SandboxError("the sandbox provisioner needs a KernelManager as its parent")
        mode = getattr(self.kernel_spec, "interrupt_mode", "signal")
        if mode != "message":
            raise SandboxError(
                f"kernelspec {getattr(km, 'kernel_name', '?')!r}: interrupt_mode is {mode!r}; the "
                "sandboxed kernel needs 'message' (a signal would stop bubblewrap, not interrupt "
                "the kernel)")
        find_bwrap(self.bwrap)  # fail before anything is written
        workspace = self._checked_workspace()
        if km.connection_file:
            runtime = os.path.dirname(os.path.realpath(km.connection_file))
        else:
            runtime = os.path.realpath(jupyter_runtime_dir())
        if runtime == workspace or runtime.startswith(workspace.rstrip("/") + "/"):
            raise SandboxError(
                f"JUPYTER_RUNTIME_DIR {runtime!r} lies inside the workspace {workspace!r}: every "
                "kernel could read the others' connection files and sockets")
        os.makedirs(runtime, mode=0o700, exist_ok=True)
        if not km.connection_file:
            km.connection_file = os.path.join(runtime, f"kernel-{self.kernel_id}.json")
        if self._ipc_dir is None or not os.path.isdir(self._ipc_dir):
            try:
                ipc_prefix(os.path.join(runtime, "k-xxxxxxxx"))
            except SandboxError as e:
                raise SandboxError(f"JUPYTER_RUNTIME_DIR {runtime!r}: {e}") from None
            self._ipc_dir = tempfile.mkdtemp(prefix="k-", dir=runtime)
        km.transport = "ipc"
        km.cache_ports = False
        km.ip = ipc_prefix(self._ipc_dir)
        return await super().pre_launch(**kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Run ``cmd`` (the kernel) inside a new sandbox; the process is ``bwrap``."""
        km = self.parent
        assert km is not None and self._ipc_dir is not None, "pre_launch comes first"
        bwrap = find_bwrap(self.bwrap)
        layout = _layout()
        workspace = self._checked_workspace()
        cwd = os.path.abspath(kwargs.get("cwd") or workspace)
        if not (cwd == workspace or cwd.startswith(workspace.rstrip("/") + "/")):
            raise SandboxError(f"cwd: the kernel's directory {cwd!r} is outside the workspace "
                               f"{workspace!r} (SandboxProvisioner.workspace)")
        if not cmd:
            raise SandboxError("kernelspec argv: the kernel command is empty")
        python = cmd[0]
        roots = _python_roots(python)
        found = dict(zip(self.library_packages, _library_dirs(tuple(self.library_packages)),
                         strict=True))
        libraries = [d for d in found.values() if d]
        missing = [name for name, d in found.items() if not d]
        if missing:
            self.log.warning("sandbox: package(s) %s not installed; the kernel will not have them",
                             ", ".join(missing))
        bound = [*layout.dirs, *roots]
        real = os.path.realpath(python)
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in bound):
            raise SandboxError(
                f"kernelspec argv[0]: the interpreter {python!r} is not under a read-only path "
                f"of the sandbox ({', '.join(bound)}); use 'python' (this server's interpreter)")
        gateway = self._gateway_socket()
        env = kernel_env(kwargs.get("env") or {}, workspace=workspace, python=python,
                         gateway=gateway is not None, spec_env=tuple(self.kernel_spec.env or ()))
        files = self._identity_files(workspace)
        spec = SandboxSpec(
            command=tuple(cmd), workspace=workspace, cwd=cwd, ipc_dir=self._ipc_dir,
            connection_file=os.path.realpath(km.connection_file), env=env,
            ro_paths=(*roots, *libraries), ro_files=files, gateway_socket=gateway,
            fresh_proc=_fresh_proc(bwrap, layout))
        argv = build_argv(bwrap, spec, layout)
        self.log.debug("sandbox argv: %s", argv)
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=kwargs.get("stdout"),
            stderr=kwargs.get("stderr"), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/", start_new_session=True, close_fds=True)
        self.pid = self.process.pid
        try:
            self.pgid = os.getpgid(self.process.pid)
        except OSError:
            self.pgid = None
        self.cwd = cwd
        return self.connection_info

    # ------------------------------------------------------------------ lifecycle

    async def send_signal(self, signum: int) -> None:
        """``SIGINT`` becomes an ``interrupt_request`` message; other signals go to bubblewrap.

        A signal to the ``bwrap`` process cannot interrupt the kernel inside its PID
        namespace; ``SIGTERM``/``SIGKILL`` stop bubblewrap, which takes the sandbox with it.
        """
        km = self.parent
        if signum == signal.SIGINT and self.process is not None and km is not None:
            msg = km.session.msg("interrupt_request", content={})
            km._connect_control_socket()  # what KernelManager does for interrupt_mode 'message'
            km.session.send(km._control_socket, msg)
            return
        await super().send_signal(signum)

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the socket directory (kept across restarts: the connection file names it)."""
        await super().cleanup(restart=restart)
        if not restart and self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        """The local provisioner's information and the socket directory."""
        info = await super().get_provisioner_info()
        info["ipc_dir"] = self._ipc_dir
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Inverse of :meth:`get_provisioner_info`."""
        await super().load_provisioner_info(provisioner_info)
        self._ipc_dir = provisioner_info.get("ipc_dir")

    def resolve_path(self, path_str: str) -> str | None:
        """Resolve ``path_str`` only inside the workspace (the kernel sees nothing else)."""
        resolved = super().resolve_path(path_str)
        workspace = os.path.realpath(self.workspace)
        if resolved is None:
            return None
        real = os.path.realpath(resolved)
        return resolved if real == workspace or real.startswith(workspace + "/") else None

    # ------------------------------------------------------------------ helpers

    def _checked_workspace(self) -> str:
        workspace = os.path.abspath(self.workspace)
        if os.path.realpath(workspace) == "/":
            raise SandboxError("SandboxProvisioner.workspace: '/' cannot be a workspace (it would "
                               "expose the whole host)")
        if not os.path.isdir(workspace):
            raise SandboxError(f"SandboxProvisioner.workspace: {workspace!r} is not a directory")
        return workspace

    def _gateway_socket(self) -> str | None:
        """The gateway's socket from the server's environment, checked; ``None``: no gateway."""
        path = os.environ.get(GATEWAY_ENV)
        if not path:
            return None
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            self.log.warning("sandbox: %s=%s does not exist; the kernel starts without a gateway",
                             GATEWAY_ENV, path)
            return None
        if not stat.S_ISSOCK(mode):
            raise SandboxError(f"{GATEWAY_ENV}: {path!r} is not a Unix socket; refusing to bind it "
                               "into the kernel")
        return os.path.abspath(path)

    def _identity_files(self, workspace: str) -> tuple[tuple[str, str], ...]:
        """One-line ``/etc/passwd`` and ``/etc/group`` for the kernel's user (not the host's)."""
        assert self._ipc_dir is not None
        uid, gid = os.getuid(), os.getgid()
        passwd = os.path.join(self._ipc_dir, "passwd")
        group = os.path.join(self._ipc_dir, "group")
        with open(passwd, "w") as f:
            f.write(f"jovyan:x:{uid}:{gid}:INCISIVE kernel:{workspace}:/bin/sh\n")
        with open(group, "w") as f:
            f.write(f"jovyan:x:{gid}:\n")
        return ((passwd, "/etc/passwd"), (group, "/etc/group"))


# ---------------------------------------------------------------------- cached host facts

@functools.cache
def _layout() -> HostLayout:
    return host_layout()


@functools.cache
def _python_roots(python: str) -> tuple[str, ...]:
    """The prefixes of ``python`` (as given and resolved), for read-only binds."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    else:
        out = subprocess.run(
            [python, "-I", "-c", "import sys; print(sys.prefix); print(sys.exec_prefix); "
             "print(sys.base_prefix); print(sys.base_exec_prefix)"],
            capture_output=True, text=True, check=False, timeout=60)
        if out.returncode != 0:
            raise SandboxError(f"kernelspec argv[0]: {python!r} does not run: {out.stderr.strip()}")
        prefixes = out.stdout.split()
    roots: list[str] = []
    for p in prefixes:
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in roots:
                roots.append(q)
    return tuple(roots)


@functools.cache
def _library_dirs(names: tuple[str, ...]) -> tuple[str | None, ...]:
    """Each package's source directory (from its import spec, without importing it)."""
    dirs: list[str | None] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or ()) if spec else []
        dirs.append(os.path.realpath(locations[0]) if locations else None)
    return tuple(dirs)


@functools.cache
def _fresh_proc(bwrap: str, layout: HostLayout) -> bool:
    """Whether a fresh procfs can be mounted in a sandbox here (probed once per process).

    Inside another bubblewrap sandbox (the hub's single-user server) it cannot: the outer
    sandbox's read-only overmounts of ``/proc/sys`` and friends make the kernel refuse a new
    procfs. The kernel then gets an empty tmpfs at ``/proc``; the outer ``/proc`` is never
    bound (it shows the server's environment).
    """
    true = os.path.realpath(shutil.which("true") or "/usr/bin/true")
    base = [bwrap, *namespace_args(), *system_args(layout)]
    tries = {True: ["--proc", "/proc"], False: ["--tmpfs", "/proc"]}
    errors = []
    for fresh, proc in tries.items():
        out = subprocess.run([*base, *proc, "--dev", "/dev", "--", true],
                             capture_output=True, text=True, check=False, timeout=60,
                             env={"PATH": "/usr/bin:/bin"})
        if out.returncode == 0:
            return fresh
        errors.append(out.stderr.strip())
    raise SandboxError("bubblewrap cannot make a sandbox on this machine (are user namespaces "
                       f"allowed?): {' / '.join(errors)}")
