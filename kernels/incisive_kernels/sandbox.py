"""The kernel sandbox as data: the bubblewrap command line for one kernel, built by pure functions.

:func:`build_argv` turns a :class:`SandboxSpec` (what the kernel may see) and a
:class:`HostLayout` (how this machine's system directories look) into the ``bwrap`` argv.
Nothing here starts a process or touches the file system except :func:`host_layout` and
:func:`find_bwrap`, which read the machine once; the provisioner
(:mod:`incisive_kernels.provisioner`) is the glue that runs the result.

What the sandbox holds, and nothing else:

* every namespace unshared (``--unshare-all`` and an explicit user namespace in which no
  further user namespace can be made): no network namespace is shared, so the kernel has
  only its own loopback interface (no route to the host's loopback services, no DNS, no
  public address), its own PID, IPC, UTS and cgroup namespaces, and no capabilities;
* the system directories read-only (``/usr`` and the ``/bin``, ``/lib``… links or
  directories, a few files of ``/etc``), the Python prefixes and the named library
  sources read-only, at their own paths;
* the workspace read-write at its own path (``HOME`` and the working directory);
* the kernel's own ipc socket directory (read-write) and connection file (read-only);
* the gateway's Unix socket at :data:`GATEWAY_PATH`, when there is a gateway;
* a fresh ``/tmp`` (tmpfs), a minimal ``/dev``, and a fresh ``/proc`` — or an empty
  tmpfs at ``/proc`` when the kernel is started inside another bubblewrap sandbox, where a
  fresh procfs cannot be mounted (the outer ``/proc`` is never bound: it would show the
  server's environment, which holds the hub's API token);
* a cleared environment (:func:`kernel_env`); the root file system is read-only.

Example
-------
>>> layout = HostLayout(links=(("usr/bin", "/bin"),), dirs=("/usr",), etc=())
>>> spec = SandboxSpec(command=("/venv/bin/python", "-m", "ipykernel_launcher"),
...                    workspace="/workspace", ipc_dir="/run/j/k-1", connection_file="/run/j/c.json",
...                    env={"HOME": "/workspace"})
>>> argv = build_argv("/usr/bin/bwrap", spec, layout)
>>> argv[:3]
['/usr/bin/bwrap', '--unshare-all', '--unshare-user']
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = [
    "GATEWAY_PATH",
    "HostLayout",
    "SandboxError",
    "SandboxSpec",
    "build_argv",
    "find_bwrap",
    "host_layout",
    "ipc_prefix",
    "kernel_env",
    "namespace_args",
]

#: Where the gateway's Unix socket appears inside the kernel's sandbox.
GATEWAY_PATH = "/run/incisive/gateway.sock"

#: The longest ipc socket path ZeroMQ can bind (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107

#: The system directories bound read-only (directories) or recreated (symbolic links).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

#: The files and directories of ``/etc`` a Python kernel needs (dynamic loader, time zone,
#: certificates, fonts, MIME types, name-service switch); bound read-only when present.
#: ``/etc/passwd`` and ``/etc/group`` are not the host's: the provisioner writes one-line files.
ETC_ENTRIES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone",
    "/etc/ssl/certs", "/etc/ca-certificates", "/etc/alternatives", "/etc/fonts",
    "/etc/mime.types", "/etc/nsswitch.conf", "/etc/os-release",
)

#: The variables a kernel may take from the server's environment (values unchanged).
ENV_KEEP = ("LANG", "LC_ALL", "JPY_SESSION_NAME")

#: The interpreter placeholder a kernelspec's ``argv[0]`` may use; the provisioner replaces it.
PYTHON_PLACEHOLDER = "python"

INSTALL_HINT = "apt-get install -y bubblewrap"

_KERNEL_FS = ("/proc", "/dev")  # the sandbox's own


class SandboxError(RuntimeError):
    """The sandbox cannot be built or started as configured (the message says which setting)."""


@dataclass(frozen=True)
class HostLayout:
    """How this machine's system directories look (see :func:`host_layout`).

    Attributes
    ----------
    links
        ``(target, path)`` pairs: ``path`` is a symbolic link to ``target`` on the host and is
        recreated as the same link in the sandbox (e.g. ``("usr/bin", "/bin")`` on merged-/usr
        systems).
    dirs
        System directories bound read-only at their own paths.
    etc
        Files and directories of ``/etc`` bound read-only (``--ro-bind-try``: absent ones are
        skipped).
    """

    links: tuple[tuple[str, str], ...]
    dirs: tuple[str, ...]
    etc: tuple[str, ...] = ETC_ENTRIES


@dataclass(frozen=True)
class SandboxSpec:
    """What one kernel's sandbox holds.

    Attributes
    ----------
    command
        The kernel's argv inside the sandbox (an absolute interpreter path first).
    workspace
        The user's workspace: bound read-write at the same path; ``HOME``.
    ipc_dir
        The kernel's own ipc socket directory: bound read-write at the same path.
    connection_file
        The kernel's connection file: bound read-only at the same path.
    env
        The kernel's whole environment (the sandbox starts from an empty one).
    cwd
        The kernel's working directory; inside ``workspace`` (default: ``workspace``).
    ro_paths
        Further directories bound read-only at their own paths (Python prefixes, the library's
        source directory).
    ro_files
        ``(source, destination)`` files bound read-only (the generated ``/etc/passwd``).
    gateway_socket
        The host path of the gateway's Unix socket, bound at :data:`GATEWAY_PATH`; ``None``:
        the kernel has no gateway.
    fresh_proc
        ``True``: mount a fresh procfs at ``/proc`` (the kernel's own PID namespace);
        ``False``: an empty tmpfs at ``/proc`` (nested in another sandbox).
    hostname
        The kernel's host name (its own UTS namespace).
    """

    command: Sequence[str]
    workspace: str
    ipc_dir: str
    connection_file: str
    env: Mapping[str, str]
    cwd: str | None = None
    ro_paths: Sequence[str] = ()
    ro_files: Sequence[tuple[str, str]] = ()
    gateway_socket: str | None = None
    fresh_proc: bool = True
    hostname: str = "incisive-kernel"


def _clean(path: str, what: str) -> str:
    """``path`` as an absolute, normalised path, or a :class:`SandboxError` naming ``what``."""
    if not isinstance(path, str) or not path:
        raise SandboxError(f"{what}: a path is required, got {path!r}")
    if "\0" in path or "\n" in path:
        raise SandboxError(f"{what}: the path {path!r} holds a NUL or newline character")
    if not path.startswith("/"):
        raise SandboxError(f"{what}: the path {path!r} is not absolute")
    if ".." in PurePosixPath(path).parts:
        raise SandboxError(f"{what}: the path {path!r} has a '..' component")
    clean = os.path.normpath(path)
    return "/" + clean.lstrip("/")  # normpath keeps a leading '//'


def _depth(path: str) -> int:
    return len(PurePosixPath(path).parts)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def ipc_prefix(ipc_dir: str) -> str:
    """The ZeroMQ ipc ``ip`` for a kernel whose sockets live in ``ipc_dir`` (``<dir>/k``).

    jupyter_client names the five sockets ``<ip>-<n>`` with small ``n``; the result is
    checked against :data:`MAX_SOCKET_PATH` with room for ``-99999``.

    >>> ipc_prefix("/run/incisive/jupyter/k-abc")
    '/run/incisive/jupyter/k-abc/k'
    """
    prefix = _clean(ipc_dir, "ipc_dir") + "/k"
    if len((prefix + "-99999").encode()) > MAX_SOCKET_PATH:
        raise SandboxError(
            f"ipc_dir: the socket paths under {ipc_dir!r} would exceed {MAX_SOCKET_PATH} bytes "
            "(the Unix socket path limit); use a shorter JUPYTER_RUNTIME_DIR")
    return prefix


def namespace_args() -> list[str]:
    """The namespace and process options every sandbox starts with (also used by the probe).

    Every namespace is unshared, including the network; a user namespace is made explicitly
    so that the kernel cannot make further ones; all capabilities are dropped (as root,
    bubblewrap would otherwise keep them inside the sandbox); the sandbox dies with the
    process that started it and runs in its own session (no ``TIOCSTI`` on the server's tty).
    """
    return ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session"]


def system_args(layout: HostLayout) -> list[str]:
    """The read-only system mounts of ``layout`` (links, directories, ``/etc`` entries)."""
    args: list[str] = []
    for target, path in layout.links:
        args += ["--symlink", target, _clean(path, "layout.links")]
    for path in layout.dirs:
        args += ["--ro-bind", _clean(path, "layout.dirs"), _clean(path, "layout.dirs")]
    for path in layout.etc:
        args += ["--ro-bind-try", _clean(path, "layout.etc"), _clean(path, "layout.etc")]
    return args


def build_argv(bwrap: str, spec: SandboxSpec, layout: HostLayout) -> list[str]:
    """The complete ``bwrap`` argv that runs ``spec.command`` in the sandbox ``spec`` describes.

    Mounts are ordered parents first, so that a bind inside another lands on top of it (a
    read-only library inside a read-write workspace stays read-only; ``/tmp`` is a tmpfs
    before anything is bound under it). The root file system is made read-only last.

    Raises
    ------
    SandboxError
        A path is relative, holds ``..``, is ``/``, or the working directory lies outside the
        workspace; the command is empty.
    """
    if not spec.command:
        raise SandboxError("command: the kernel command is empty")
    bwrap = _clean(bwrap, "bwrap")
    system = (*layout.dirs, *(path for _, path in layout.links))
    workspace = _clean(spec.workspace, "workspace")
    if workspace in ("/", "/tmp") or any(_inside(workspace, p) for p in (*system, *_KERNEL_FS)):
        raise SandboxError(f"workspace: {workspace!r} cannot be a workspace (the root, /tmp, or "
                           "a system, /proc or /dev directory)")
    cwd = _clean(spec.cwd, "cwd") if spec.cwd else workspace
    if not _inside(cwd, workspace):
        raise SandboxError(f"cwd: {cwd!r} is outside the workspace {workspace!r}")
    ipc_dir = _clean(spec.ipc_dir, "ipc_dir")
    ipc_prefix(ipc_dir)
    connection_file = _clean(spec.connection_file, "connection_file")
    for what, path in (("ipc_dir", ipc_dir), ("connection_file", connection_file)):
        if _inside(path, workspace):
            raise SandboxError(
                f"{what}: {path!r} lies inside the workspace {workspace!r}: every kernel could read "
                "the others' connection files and sockets; set JUPYTER_RUNTIME_DIR outside it")
    # (destination, argv fragment); sorted by destination depth, stable
    mounts: list[tuple[str, list[str]]] = [("/tmp", ["--tmpfs", "/tmp"])]
    ro: list[str] = []
    for raw in spec.ro_paths:
        path = _clean(raw, "ro_paths")
        if path in ("/", "/tmp") or any(_inside(path, p) for p in _KERNEL_FS):
            raise SandboxError(f"ro_paths: {path!r} cannot be bound (the root, /tmp, /proc or /dev)")
        if any(_inside(path, other) for other in (*system, *ro)):
            continue  # already visible, read-only
        ro = [p for p in ro if not _inside(p, path)] + [path]
    mounts += [(p, ["--ro-bind", p, p]) for p in ro]
    for src, dest in spec.ro_files:
        mounts.append((_clean(dest, "ro_files"), ["--ro-bind", _clean(src, "ro_files"),
                                                  _clean(dest, "ro_files")]))
    mounts.append((workspace, ["--bind", workspace, workspace]))
    mounts.append((ipc_dir, ["--bind", ipc_dir, ipc_dir]))
    mounts.append((connection_file, ["--ro-bind", connection_file, connection_file]))
    if spec.gateway_socket is not None:
        socket = _clean(spec.gateway_socket, "gateway_socket")
        mounts.append((GATEWAY_PATH, ["--ro-bind", socket, GATEWAY_PATH]))
    mounts.sort(key=lambda m: _depth(m[0]))

    argv = [bwrap, *namespace_args(), "--hostname", spec.hostname]
    argv += system_args(layout)
    argv += ["--proc", "/proc"] if spec.fresh_proc else ["--tmpfs", "/proc"]
    argv += ["--dev", "/dev"]
    for _, fragment in mounts:
        argv += fragment
    argv += ["--remount-ro", "/", "--chdir", cwd, "--clearenv"]
    for name, value in sorted(spec.env.items()):
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise SandboxError(f"env: {name!r} is not a valid environment variable")
        argv += ["--setenv", name, value]
    argv += ["--", *spec.command]
    return argv


def kernel_env(parent: Mapping[str, str], *, workspace: str, python: str, gateway: bool,
               spec_env: Iterable[str] = ()) -> dict[str, str]:
    """The kernel's whole environment: an allow-list, nothing else from ``parent``.

    Parameters
    ----------
    parent
        The environment the server would have given the kernel (after the kernelspec's
        ``env`` substitutions).
    workspace
        ``HOME``.
    python
        The interpreter; its directory leads ``PATH``.
    gateway
        Whether the gateway socket is bound (sets ``INCISIVE_GATEWAY``).
    spec_env
        The names the kernelspec's own ``env`` stanza sets (kept: the operator wrote them).

    >>> env = kernel_env({"JUPYTERHUB_API_TOKEN": "x", "LANG": "C.UTF-8"}, workspace="/w",
    ...                  python="/v/bin/python", gateway=True)
    >>> sorted(env)
    ['HOME', 'INCISIVE_GATEWAY', 'JPY_PARENT_PID', 'LANG', 'PATH', 'PYTHONNOUSERSITE']
    """
    env = {name: parent[name] for name in (*ENV_KEEP, *spec_env) if name in parent}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin"
    env["HOME"] = workspace
    env["PYTHONNOUSERSITE"] = "1"
    if gateway:
        env["INCISIVE_GATEWAY"] = GATEWAY_PATH
    else:
        env.pop("INCISIVE_GATEWAY", None)
    # The server's PID means nothing in the kernel's PID namespace (ipykernel would take its
    # parent for dead and exit); 1 is bubblewrap's init there, which ipykernel does not poll.
    # The sandbox dies with the server anyway (--die-with-parent).
    env["JPY_PARENT_PID"] = "1"
    return env


def host_layout(root: str = "/") -> HostLayout:
    """Read how this machine's :data:`SYSTEM_DIRS` look (links or directories).

    ``root`` is for tests: the layout of a directory tree standing in for ``/``.
    """
    links: list[tuple[str, str]] = []
    dirs: list[str] = []
    for path in SYSTEM_DIRS:
        host = os.path.join(root, path.lstrip("/"))
        if os.path.islink(host):
            links.append((os.readlink(host), path))
        elif os.path.isdir(host):
            dirs.append(path)
    if "/usr" not in dirs:
        raise SandboxError(f"host layout: {os.path.join(root, 'usr')} is not a directory")
    return HostLayout(links=tuple(links), dirs=tuple(dirs))


def find_bwrap(configured: str | None = None) -> str:
    """The absolute path of ``bwrap`` (``configured``, else the one on ``PATH``).

    Raises
    ------
    SandboxError
        bubblewrap is not installed, naming the ``apt-get`` line.
    """
    found = shutil.which(configured or "bwrap")
    if found is None:
        where = f"{configured!r} is not an executable" if configured else "bwrap is not on PATH"
        raise SandboxError(f"bubblewrap is required for the sandboxed kernel ({where}); "
                           f"install it: {INSTALL_HINT}")
    return os.path.abspath(found)
