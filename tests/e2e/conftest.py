"""The workbench end to end: `incisive-lab demo --detach` on a small federation, then a
real browser (Playwright + Debian chromium) and scripted users against it.

One demo runs for these tests (identity provider, three nodes, broker, SuperLink and
SuperNodes, JupyterHub with sandboxed servers; package-scoped fixtures, so that it does not
idle through the rest of the suite); ``incisive-lab demo stop`` ends it. Everything is real: the
tests log in through the provider's form, the hub verifies the ID token, the spawner runs
bubblewrap, kernels run in their own sandbox, the gateway forwards with the user's token.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from incisive_lab._processes import free_port
from tests._support.browser import chromium
from tests._support.hub_session import HubSession
from tests._support.procs import wait_none_running_in


@pytest.fixture(scope="package")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e") / "demo"


@pytest.fixture(scope="package")
def workbench(demo_dir: Path) -> Iterator[dict[str, Any]]:
    """The running demo's state (``demo.json``): URLs, users and passwords, logs.

    ``INCISIVE_E2E_DEMO=PATH/demo.json`` runs the tests against a demo already running
    (started with ``incisive-lab demo --detach``; left running) — for working on the tests."""
    reuse = os.environ.get("INCISIVE_E2E_DEMO")
    if reuse:
        state = json.loads(Path(reuse).read_text())
        state["dir"] = str(Path(reuse).parent / "demo")
        yield state
        return
    cmd = [sys.executable, "-m", "incisive_lab.cli", "demo", "--detach", "--dir", str(demo_dir),
           "--patients", "18", "--seed", "1", "--hub-port", str(free_port())]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    state_path = demo_dir.parent / "demo.json"
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        state: dict[str, Any] = json.loads(state_path.read_text())
        state["dir"] = str(demo_dir)
        yield state
    finally:
        subprocess.run([sys.executable, "-m", "incisive_lab.cli", "demo", "stop", "--dir", str(demo_dir)],
                       capture_output=True, text=True, timeout=300)
        # `demo stop` leaves nothing running: no node, hub, proxy, culler, server or kernel
        left = wait_none_running_in(demo_dir)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert left == {}, f"still running after `incisive-lab demo stop`: {left}"


def password(state: dict[str, Any], user: str) -> str:
    return str(next(u["password"] for u in state["users"] if u["username"] == user))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # module scope: Playwright's sync API keeps an event loop running in this thread while it
    # is open, and asyncio.run() (the kernel channel, other suites) refuses to run under it
    with chromium() as b:
        yield b


@pytest.fixture(scope="package")
def researcher(workbench: dict[str, Any]) -> Iterator[HubSession]:
    """The demo researcher, logged in, with a running server."""
    with HubSession(workbench["hub_url"], "researcher", password(workbench, "researcher")) as s:
        s.login()
        s.start_server()
        yield s
