"""The bubblewrap command line of a user's single-user server (pure: builds lists).

Inside the sandbox (see ``docs/hub.md``):

* its own user namespace (uid/gid 1000, no system account needed on the host), PID, IPC,
  UTS and cgroup namespaces; the network namespace is the host's (the proxy reaches the
  server on loopback, the server reaches the hub's API); ``--die-with-parent``,
  ``--new-session``;
* read-only: ``/usr`` (``/bin``, ``/lib``... as the host has them: symlinks into ``/usr`` on
  merged-/usr systems), a short list of ``/etc`` files, the Python prefixes, and the
  sources the server needs (the library, the extension, the kernel provisioner) at their
  host paths;
* read-write: ``/workspace`` (the user's workspace) and ``/run/incisive`` (the user's
  runtime directory); ``/etc/incisive/gateway.json`` read-only; a private ``/tmp``, a
  fresh ``/proc`` and a minimal ``/dev``.

Nothing else of the host exists there: not the repository root, not ``.incisive/``, not the
hub's state directory (database, cookie secret, crypt key, other users' workspaces).

Why ``/etc`` is a list and not the whole directory: running bwrap as root, the sandbox's
uid 1000 *is* the host's uid 0 (the user namespace maps one onto the other), so a file the
host's root owns with mode 0600 (``/etc/shadow``, ``/etc/ssl/private``, SSH host keys)
would be readable inside. Only files without secrets are bound.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "DEFAULT_ETC",
    "GATEWAY_CONFIG",
    "RUNTIME",
    "WORKSPACE",
    "SandboxLayout",
    "bwrap_argv",
    "host_path",
    "passwd_lines",
    "template_sha256",
]

WORKSPACE = "/workspace"
RUNTIME = "/run/incisive"
GATEWAY_CONFIG = "/etc/incisive/gateway.json"

#: /etc entries bound read-only when they exist: name resolution of loopback, time zone,
#: the dynamic linker, CA certificates, MIME types, fonts, the alternatives symlinks.
DEFAULT_ETC: tuple[str, ...] = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "debian_version", "fonts",
    "gai.conf", "host.conf", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
    "localtime", "mime.types", "nsswitch.conf", "os-release", "protocols", "services",
    "ssl/certs", "ssl/openssl.cnf", "timezone",
)

#: Top-level names that are symlinks into /usr on merged-/usr systems (else bound ro).
_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class SandboxLayout:
    """What the sandbox of one server is made of (host paths)."""

    workspace: str
    runtime: str
    gateway_config: str
    passwd: str
    group: str
    read_only: tuple[str, ...] = ()
    etc: tuple[str, ...] = DEFAULT_ETC
    uid: int = 1000
    gid: int = 1000
    hostname: str = "incisive"
    root: str = "/"
    extra: tuple[str, ...] = field(default=())

    def templated(self) -> SandboxLayout:
        """The same layout with the per-user paths replaced by placeholders."""
        return replace(self, workspace="{workspace}", runtime="{runtime}")


def _exists(root: str, path: str) -> bool:
    return os.path.lexists(os.path.join(root, path.lstrip("/")))


def bwrap_argv(bwrap: str, layout: SandboxLayout, command: Sequence[str]) -> list[str]:
    """The full ``bwrap ... -- command`` argument list."""
    argv = [
        bwrap,
        "--unshare-user", "--uid", str(layout.uid), "--gid", str(layout.gid),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", layout.hostname,
        "--die-with-parent", "--new-session",
        # /tmp first: later binds may live under the host's /tmp
        "--tmpfs", "/tmp",
        "--proc", "/proc",
        "--dev", "/dev",
        "--ro-bind", "/usr", "/usr",
    ]
    for name in _USR_LINKS:
        host = os.path.join(layout.root, name)
        if os.path.islink(host):
            argv += ["--symlink", os.readlink(host), "/" + name]
        elif os.path.isdir(host):
            argv += ["--ro-bind", "/" + name, "/" + name]
    for name in layout.etc:
        path = "/etc/" + name
        if _exists(layout.root, path):
            argv += ["--ro-bind", path, path]
    argv += ["--ro-bind", layout.passwd, "/etc/passwd", "--ro-bind", layout.group, "/etc/group"]
    for path in _unique(layout.read_only):
        argv += ["--ro-bind", path, path]
    argv += [
        "--bind", layout.workspace, WORKSPACE,
        "--bind", layout.runtime, RUNTIME,
        "--ro-bind", layout.gateway_config, GATEWAY_CONFIG,
        *layout.extra,
        "--chdir", RUNTIME,  # not the workspace: nothing the user wrote is on sys.path
        "--",
        *command,
    ]
    return argv


def _unique(paths: Iterable[str]) -> list[str]:
    """Paths without duplicates or paths already under another one, in order."""
    out: list[str] = []
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(path == kept or path.startswith(kept.rstrip("/") + "/") for kept in out):
            out.append(path)
    return sorted(out)


def template_sha256(bwrap: str, layout: SandboxLayout) -> str:
    """SHA-256 of the argument list with the per-user paths and the command left out:
    the same for every user of a hub, different when the sandbox profile changes."""
    argv = bwrap_argv(bwrap, layout.templated(), ["{command}"])
    return hashlib.sha256(json.dumps(argv, separators=(",", ":")).encode()).hexdigest()


def passwd_lines(layout_uid: int, layout_gid: int, user: str = "jovyan") -> tuple[str, str]:
    """``/etc/passwd`` and ``/etc/group`` text for the sandbox (one account, no secrets)."""
    passwd = (f"{user}:x:{layout_uid}:{layout_gid}:INCISIVE Lab user:{WORKSPACE}:/bin/sh\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    group = f"{user}:x:{layout_gid}:\nnogroup:x:65534:\n"
    return passwd, group


def host_path(path: str | os.PathLike[str]) -> str:
    """An absolute, symlink-free host path (what bwrap binds)."""
    return str(Path(path).resolve())
