"""A stopped hub leaves nothing running, even when it was started with SIGINT ignored.

``nohup``, or a script's background job, starts the hub with SIGINT ignored. The proxy and
the culler it starts before handling signals itself would inherit that, and on a clean
stop JupyterHub interrupts the culler and waits 10 s before SIGTERM: whoever stops the hub
sooner kills it with its proxy and culler still running, orphaned (as `incisive-lab demo
stop` once did). The hub's configuration restores SIGINT.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from incisive_lab._processes import pid_alive, stop_detached
from tests._support.procs import running_in, wait_none_running_in

from ._hub import HubClient, start_hub, start_hub_idp

AUDIENCE = "https://federation.incisive.test/"


def _ignores_sigint(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError(f"no SigIgn line for {pid}")


def test_a_hub_started_with_sigint_ignored_leaves_no_proxy_or_culler(tmp_path: Path) -> None:
    client = HubClient.new()
    with start_hub_idp(tmp_path / "idp", client=client, audience=AUDIENCE) as idp:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as nohup would start it
        try:
            hub = start_hub(tmp_path / "hub", idp, {"broker": "http://127.0.0.1:9/", "nodes": {}},
                            client=client)
        finally:
            signal.signal(signal.SIGINT, old)
        with hub:
            children = running_in(tmp_path / "hub")
            culler = [p for p, cmd in children.items() if "jupyterhub_idle_culler" in cmd]
            proxy = [p for p, cmd in children.items() if "configurable-http-proxy" in cmd]
            assert len(culler) == 1 and len(proxy) == 1, children
            assert not _ignores_sigint(culler[0])
            # below JupyterHub's 10 s wait for an interrupted culler: only a culler that
            # stops on SIGINT lets the hub stop its proxy and exit in time
            hub.stop(timeout=8)
        assert wait_none_running_in(tmp_path / "hub") == {}


def test_stop_detached_stops_only_the_process_its_pid_file_names(tmp_path: Path) -> None:
    code = "import time; print('up', flush=True); time.sleep(60)  # incisive-marker"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # its command line set
        pid_file = tmp_path / "x.pid"
        pid_file.write_text(f"{proc.pid}\n")
        assert stop_detached(pid_file, "not-its-command") is False  # a reused pid is left alone
        assert proc.poll() is None
        assert stop_detached(pid_file, "incisive-marker") is True
        assert not pid_alive(proc.pid)
        assert stop_detached(pid_file, "incisive-marker") is False  # gone: nothing to do
        assert stop_detached(tmp_path / "missing.pid", "incisive-marker") is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
