"""Per-user control groups: memory, CPU and process limits that the kernel enforces.

:func:`find_driver` picks cgroup v2 when a writable unified hierarchy offers the
``memory``, ``cpu`` and ``pids`` controllers to the hub's own cgroup, else cgroup v1 when
the three controllers are mounted and writable, else nothing (:class:`CgroupUnavailable`).
Every user's cgroups are created *below the hub's own cgroup* (so the hub's own limits
still bound its users, and two hubs on one machine never share one), under a directory
named after the hub (``incisive-hub-<8 hex>``), one child per server:

* v2: ``<hub cgroup>/incisive-hub-x/<server>/`` with ``memory.max``, ``memory.swap.max``
  = 0, ``cpu.max`` (``"<quota> <period>"``), ``pids.max``;
* v1: the same path in the ``memory`` (``memory.limit_in_bytes``,
  ``memory.memsw.limit_in_bytes`` when swap accounting exists), ``cpu``
  (``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) and ``pids`` (``pids.max``) hierarchies.

:meth:`CgroupSet.attach` moves the calling process into the cgroups; the spawner calls it in
the child between ``fork`` and ``exec`` (``preexec_fn``), so the sandbox and everything
it starts are limited from their first instruction. :meth:`CgroupSet.remove` kills what
is left and removes the directories.

The paths are parameters (``mountinfo``, ``self_cgroup``) so that tests can check the files
written on a fake tree as well as on the real one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupSet", "CgroupUnavailable", "Driver", "Limits", "find_driver"]

CPU_PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "pids")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


class CgroupUnavailable(RuntimeError):
    """No writable cgroup hierarchy with the needed controllers; the message says why."""


@dataclass(frozen=True)
class Limits:
    """What one server may use: bytes of memory, CPUs (a fraction or more), processes."""

    memory: int
    cpu: float
    pids: int

    def __post_init__(self) -> None:
        if self.memory <= 0 or self.cpu <= 0 or self.pids <= 0:
            raise ValueError(f"limits must be positive: {self}")

    @property
    def cpu_quota_us(self) -> int:
        """The CFS quota per :data:`CPU_PERIOD_US` (at least 1 ms)."""
        return max(1000, round(self.cpu * CPU_PERIOD_US))


@dataclass(frozen=True)
class CgroupSet:
    """One server's cgroup directories (one for v2; one per controller for v1)."""

    version: int
    dirs: Mapping[str, Path]  # controller -> directory ("unified" for v2)

    def attach(self, pid: int | None = None) -> None:
        """Move ``pid`` (default: the calling process) into every directory.

        Safe in a ``preexec_fn``: plain ``open``/``write`` of ``cgroup.procs``.
        """
        text = str(pid if pid is not None else os.getpid()).encode()
        for directory in self.dirs.values():
            fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        """The processes in the cgroups now."""
        found: set[int] = set()
        for directory in self.dirs.values():
            try:
                text = (directory / "cgroup.procs").read_text()
            except OSError:
                continue
            found.update(int(line) for line in text.split() if line.strip())
        return sorted(found)

    def read(self, name: str) -> str:
        """The text of one control file, e.g. ``"memory.max"`` or ``"cpu.cfs_quota_us"``."""
        for controller, directory in self.dirs.items():
            if controller == "unified" or name.startswith(controller + "."):
                return (directory / name).read_text().strip()
        raise KeyError(f"no cgroup directory holds {name}")

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended here (v2 ``memory.events``;
        v1 ``memory.oom_control``'s ``oom_kill``, when the kernel reports it)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = self.read(name)
        except (KeyError, OSError):
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, timeout: float = 5.0) -> None:
        """Kill every process left in the cgroups, then remove the directories (and the
        hub's directory above them when no other server's cgroups are left in it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            busy = []
            for directory in self.dirs.values():
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    busy.append(directory)
            if not busy:
                for directory in self.dirs.values():  # the hub's group, once it is empty
                    with contextlib.suppress(OSError):
                        directory.parent.rmdir()
                return
            if time.monotonic() > deadline:
                raise OSError(errno.EBUSY, f"cgroups still busy after {timeout} s: {busy}")
            time.sleep(0.05)


class Driver:
    """Creates :class:`CgroupSet` s below the hub's cgroups (see :func:`find_driver`)."""

    def __init__(self, version: int, bases: Mapping[str, Path], group: str) -> None:
        if not _NAME.fullmatch(group):
            raise ValueError(f"cgroup name {group!r} must match {_NAME.pattern}")
        self.version = version
        self.bases = dict(bases)  # controller (or "unified") -> the hub's own cgroup dir
        self.group = group

    def __repr__(self) -> str:
        return f"Driver(v{self.version}, {self.group!r}, {sorted(self.bases)})"

    def cgroups(self, name: str) -> CgroupSet:
        """The (possibly not yet created) cgroups of server ``name``."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"cgroup name {name!r} must match {_NAME.pattern}")
        return CgroupSet(self.version, {c: base / self.group / name
                                        for c, base in self.bases.items()})

    def create(self, name: str, limits: Limits) -> CgroupSet:
        """Create server ``name`` 's cgroups with ``limits`` (replacing stale ones)."""
        cgroups = self.cgroups(name)
        if any(d.exists() for d in cgroups.dirs.values()):
            cgroups.remove()
        try:
            if self.version == 2:
                self._create_v2(cgroups.dirs["unified"], limits)
            else:
                self._create_v1(cgroups.dirs, limits)
        except BaseException:
            cgroups.remove()
            raise
        return cgroups

    def _create_v2(self, directory: Path, limits: Limits) -> None:
        parent = directory.parent
        if not parent.exists():
            parent.mkdir()
        _write(parent / "cgroup.subtree_control", "+memory +cpu +pids")
        directory.mkdir()
        _write(directory / "memory.max", str(limits.memory))
        swap = directory / "memory.swap.max"
        if swap.exists():
            _write(swap, "0")
        _write(directory / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
        _write(directory / "pids.max", str(limits.pids))

    def _create_v1(self, dirs: Mapping[str, Path], limits: Limits) -> None:
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        memory = dirs["memory"]
        _write(memory / "memory.limit_in_bytes", str(limits.memory))
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # swap accounting: no swapping past the limit either
            _write(memsw, str(limits.memory))
        cpu = dirs["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(limits.cpu_quota_us))
        _write(dirs["pids"] / "pids.max", str(limits.pids))


def _write(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _mounts(mountinfo: Path) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of each cgroup mount."""
    out = []
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        out.append((root, point, rfields[0], set(rfields[2].split(","))))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _own_paths(self_cgroup: Path) -> dict[str, str]:
    """controller -> this process's cgroup path (``""`` for the v2 hierarchy)."""
    out: dict[str, str] = {}
    for line in self_cgroup.read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        names = controllers.split(",") if controllers else [""]
        for name in names:
            out[name] = path
    return out


def _inside(point: str, root: str, own: str) -> Path:
    """The directory of cgroup ``own`` in a hierarchy mounted at ``point`` from ``root``."""
    rel = own
    if root != "/" and (own == root or own.startswith(root.rstrip("/") + "/")):
        rel = own[len(root.rstrip("/")):]
    return Path(point) / rel.lstrip("/")


def _writable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK)


def find_driver(group: str, *, mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
                self_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
                versions: Iterable[int] = (2, 1)) -> Driver:
    """The cgroup driver for this machine (v2 preferred, then v1).

    Parameters
    ----------
    group
        The hub's directory name below its own cgroup (e.g. ``incisive-hub-1a2b3c4d``).
    mountinfo, self_cgroup
        ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` (tests give fakes).
    versions
        Which versions to try, in order.

    Raises
    ------
    CgroupUnavailable
        Neither works; the message says what was found.
    """
    mounts = _mounts(Path(mountinfo))
    own = _own_paths(Path(self_cgroup))
    why: list[str] = []
    for version in versions:
        if version == 2:
            v2 = [m for m in mounts if m[2] == "cgroup2"]
            if not v2:
                why.append("no cgroup2 mount")
                continue
            root, point, _, _ = v2[0]
            base = _inside(point, root, own.get("", "/"))
            try:
                available = set((base / "cgroup.controllers").read_text().split())
            except OSError as exc:
                why.append(f"cgroup2 at {base}: {exc.strerror}")
                continue
            missing = [c for c in CONTROLLERS if c not in available]
            if missing:
                why.append(f"cgroup2 at {base} offers no {', '.join(missing)} controller")
                continue
            if not _writable(base):
                why.append(f"cgroup2 at {base} is not writable")
                continue
            try:  # a child can use only what the parent's subtree_control delegates
                enabled = set((base / "cgroup.subtree_control").read_text().split())
                if not set(CONTROLLERS) <= enabled:
                    _write(base / "cgroup.subtree_control", "+memory +cpu +pids")
            except OSError as exc:
                why.append(f"cgroup2 at {base}: cannot enable memory, cpu, pids for children "
                           f"({exc.strerror}; a cgroup with processes cannot delegate: run the "
                           "hub in a leaf of a delegated subtree)")
                continue
            return Driver(2, {"unified": base}, group)
        if version == 1:
            bases: dict[str, Path] = {}
            for controller in CONTROLLERS:
                mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
                if mount is None:
                    why.append(f"no cgroup v1 {controller} hierarchy")
                    break
                root, point, _, _ = mount
                base = _inside(point, root, own.get(controller, "/"))
                if not _writable(base):
                    why.append(f"cgroup v1 {controller} at {base} is not writable")
                    break
                bases[controller] = base
            else:
                return Driver(1, bases, group)
    raise CgroupUnavailable("no writable cgroup hierarchy with memory, cpu and pids "
                            f"controllers ({'; '.join(why)})")
