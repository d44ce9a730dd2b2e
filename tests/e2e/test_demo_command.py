"""`incisive-lab demo` as a user runs it: a second start finds the running demo; status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx


def test_a_second_start_reuses_the_running_demo_and_status_shows_it(workbench: dict[str, Any]) -> None:
    demo = workbench["dir"]
    state = Path(demo).parent / "demo.json"
    assert state.stat().st_mode & 0o777 == 0o600  # it holds the demo users' passwords
    again = subprocess.run([sys.executable, "-m", "incisive_lab.cli", "demo", "--detach", "--dir", demo],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and workbench["hub_url"] in again.stdout
    status = subprocess.run([sys.executable, "-m", "incisive_lab.cli", "demo", "status", "--dir", demo],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "researcher" in status.stdout
    # every service answers
    assert httpx.get(workbench["hub_url"] + "hub/health", timeout=10).status_code == 200
    assert httpx.get(workbench["broker_url"] + "healthz", timeout=10).status_code == 200
    for url in workbench["nodes"].values():
        assert httpx.get(url + "healthz", timeout=10).status_code == 200
