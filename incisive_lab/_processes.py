"""Local service processes for the embedded default: start, wait until ready, stop.

A :class:`ServiceProcess` runs one command in its own session (its own process group, so
that stopping it stops whatever it started), with its output appended to a log file, and
is ready when its readiness URL answers 200. :meth:`ServiceProcess.stop` sends SIGTERM to
the group, waits, then SIGKILL. Used by ``incisive-lab demo`` to run the identity provider,
the nodes, the broker and the hub on one machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incisive_lab.errors import IncisiveLabError

__all__ = ["ServiceError", "ServiceProcess", "free_port", "pid_alive", "port_free", "stop_group"]


class ServiceError(IncisiveLabError):
    """A service did not start (the message holds the end of its log)."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` and it can be bound."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a free port the kernel picks."""
    if preferred and port_free(preferred, host):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_group(pid: int, *, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, wait up to ``timeout``, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)  # waiting for the group to exit
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stop_detached(pid_file: Path, word: str, *, timeout: float = 5.0) -> bool:
    """Stop the process named by ``pid_file`` if it is alive and ``word`` is in its command
    line (SIGTERM, then SIGKILL after ``timeout``); returns whether there was one to stop."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if word.encode() not in cmdline:
        return False  # gone, and its pid now someone else's
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)  # waiting for it to exit
    return True


@dataclass
class ServiceProcess:
    """One service: ``argv`` run in ``cwd`` with ``env``, ready when ``ready_url`` answers 200
    (``verify``: httpx's TLS verification for an https readiness URL, e.g. an
    :class:`ssl.SSLContext` trusting a private CA)."""

    name: str
    argv: Sequence[str]
    ready_url: str
    log: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    timeout: float = 90.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    verify: Any = True
    #: Seconds its clean stop may take before the group is killed.
    stop_timeout: float = 15.0
    #: What it starts in sessions of their own, as (pid file, a word of their command line):
    #: stopped after it, when its own stop left them running (checked, as a pid may be reused).
    pid_files: Sequence[tuple[Path, str]] = ()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ServiceProcess:
        """Start the process and wait until it is ready; :class:`ServiceError` if it is not."""
        import httpx

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}: "
                      f"{' '.join(self.argv)}\n".encode())
            out.flush()
            try:
                self.proc = subprocess.Popen(
                    list(self.argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=dict(self.env) if self.env is not None else None, cwd=self.cwd,
                    start_new_session=True)
            except OSError as exc:
                raise ServiceError(f"{self.name}: cannot run {self.argv[0]}: {exc}") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with status {self.proc.returncode} before it "
                                   f"was ready; the end of {self.log}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.ready_url, timeout=2, verify=self.verify).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} was not ready at {self.ready_url} after "
                                   f"{self.timeout:.0f} s; the end of {self.log}:\n{self.tail()}")
            time.sleep(0.1)  # polling the readiness URL

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float | None = None) -> None:
        """Stop the service and everything it started (its process group, then what it
        left of :attr:`pid_files`); ``timeout``: :attr:`stop_timeout` when not given."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            stop_group(self.proc.pid, timeout=self.stop_timeout if timeout is None else timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for pid_file, word in self.pid_files:
            stop_detached(pid_file, word)
