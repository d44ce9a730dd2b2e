"""The processes a test left behind: those running in a folder, or naming it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from incisive_lab._processes import pid_alive


def running_in(folder: str | os.PathLike[str]) -> dict[int, str]:
    """pid -> command line of the live processes whose working folder is ``folder`` or below
    it, or whose command line names it (zombies and processes we cannot inspect left out)."""
    root = Path(folder).resolve()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = Path(os.readlink(entry / "cwd").removesuffix(" (deleted)"))
        except OSError:
            continue  # exited, or not ours to read
        if cmdline and (cwd == root or root in cwd.parents or str(root) in cmdline) \
                and pid_alive(int(entry.name)):
            found[int(entry.name)] = cmdline.strip()
    return found


def wait_none_running_in(folder: str | os.PathLike[str], *, timeout: float = 10.0) -> dict[int, str]:
    """What still runs in ``folder`` after up to ``timeout`` seconds (empty once all exited)."""
    deadline = time.monotonic() + timeout
    while (left := running_in(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)  # processes exiting, being reaped
    return left
