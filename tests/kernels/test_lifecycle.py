"""A sandboxed kernel's life: interrupt (by message), restart, a crash noticed and restarted,
kill and terminate reaching every process of the sandbox, and start-up refusals that name
the setting at fault. Real bubblewrap, real jupyter_client managers (blocking and async)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import AsyncKernelManager, KernelManager
from traitlets.config import Config

from incisive_kernels.sandbox import SandboxError
from tests.kernels.conftest import (
    KERNEL_NAME,
    Kernel,
    World,
    host_processes_with,
    started_kernel,
    wait_until,
)

#: Sent with stop_on_error=False: ipykernel would otherwise abort the cells queued right after
#: the interrupted one (its error), which is not the sandbox's doing.
SLEEP_CELL = "import time; print('sleeping', flush=True); time.sleep(60)"

SPAWN_SLEEPER = """
import subprocess
# a grandchild in a session of its own: outside the kernel's process group, still in the sandbox
subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
result = "spawned"
"""


def _sleeper(kernel: Kernel) -> str:
    marker = str(900000 + uuid.uuid4().int % 99999)
    assert kernel.json(SPAWN_SLEEPER.format(marker=marker)) == "spawned"
    wait_until(lambda: host_processes_with(f"sleep\0{marker}"), what="the sleeper to start")
    return f"sleep\0{marker}"


def test_interrupt_stops_a_sleeping_cell_and_the_kernel_lives_on(world: World) -> None:
    with started_kernel(world) as k:
        assert k.km.kernel_spec is not None and k.km.kernel_spec.interrupt_mode == "message"
        k.run("state = 'kept'")
        pid = k.km.provisioner.pid  # type: ignore[union-attr]
        msg_id = k.kc.execute(SLEEP_CELL, stop_on_error=False)
        _wait_for_output(k, "sleeping", msg_id)
        k.km.interrupt_kernel()
        reply = _shell_reply(k, msg_id)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert k.json("result = state") == "kept"
        assert k.km.is_alive() and k.km.provisioner.pid == pid  # type: ignore[union-attr]


def test_sigint_through_the_provisioner_interrupts_instead_of_killing(world: World) -> None:
    with started_kernel(world) as k:
        msg_id = k.kc.execute(SLEEP_CELL, stop_on_error=False)
        _wait_for_output(k, "sleeping", msg_id)
        k.km.signal_kernel(signal.SIGINT)
        reply = _shell_reply(k, msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert k.km.is_alive()
        assert k.json("result = 6 * 7") == 42


def test_restart_gives_a_fresh_kernel_and_ends_the_old_sandbox(world: World) -> None:
    with started_kernel(world) as k:
        k.run("x = 41")
        sleeper = _sleeper(k)
        old_pid = k.km.provisioner.pid  # type: ignore[union-attr]
        k.km.restart_kernel(now=True)
        k.kc.wait_for_ready(timeout=60)
        assert k.km.provisioner.pid != old_pid  # type: ignore[union-attr]
        with pytest.raises(AssertionError, match="NameError"):
            k.run("x")
        assert k.json("result = 1 + 1") == 2
        wait_until(lambda: not host_processes_with(sleeper), what="the old sandbox to end")


def test_graceful_restart_keeps_the_connection_file_and_socket_dir(world: World) -> None:
    with started_kernel(world) as k:
        cf, ip = k.km.connection_file, k.km.ip
        k.km.restart_kernel()
        k.kc.wait_for_ready(timeout=60)
        assert (k.km.connection_file, k.km.ip) == (cf, ip)
        assert k.json("result = 'again'") == "again"


def test_a_crash_is_noticed_and_a_restart_works(world: World) -> None:
    with started_kernel(world) as k:
        k.kc.execute("import os; os._exit(3)")
        wait_until(lambda: not k.km.is_alive(), what="the crash to be noticed")
        assert k.km.provisioner.process.poll() == 3  # type: ignore[union-attr]
        k.km.restart_kernel(now=True)
        k.kc.wait_for_ready(timeout=60)
        assert k.km.is_alive()
        assert k.json("result = 'back'") == "back"


def test_kill_reaches_every_process_of_the_sandbox(world: World) -> None:
    with started_kernel(world) as k:
        sleeper = _sleeper(k)
        bwrap = k.km.provisioner.pid  # type: ignore[union-attr]
        k.km.shutdown_kernel(now=True)
        assert not k.km.has_kernel
        wait_until(lambda: not host_processes_with(sleeper), what="the sandbox's processes to end")
        assert not Path(f"/proc/{bwrap}").exists()


def test_terminate_reaches_every_process_of_the_sandbox(world: World) -> None:
    with started_kernel(world) as k:
        sleeper = _sleeper(k)
        provisioner = k.km.provisioner
        assert provisioner is not None
        asyncio.run(provisioner.terminate())
        wait_until(lambda: provisioner.process.poll() is not None,  # type: ignore[attr-defined]
                   what="bubblewrap to exit")
        assert asyncio.run(provisioner.poll()) is not None
        wait_until(lambda: not host_processes_with(sleeper), what="the sandbox's processes to end")


def test_graceful_shutdown_removes_the_sockets_and_their_dir(world: World) -> None:
    with started_kernel(world) as k:
        ipc_dir = os.path.dirname(k.km.ip)
        assert sorted(os.listdir(ipc_dir)) == ["group", "k-1", "k-2", "k-3", "k-4", "k-5", "passwd"]
        k.kc.stop_channels()
        k.km.shutdown_kernel()
        assert not os.path.exists(ipc_dir)
        assert not os.path.exists(k.km.connection_file)


def test_async_manager_start_crash_and_restart(world: World) -> None:
    async def scenario() -> dict[str, Any]:
        config = Config({"SandboxProvisioner": {"workspace": str(world.workspace)}})
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, config=config)
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            reply = await kc.execute_interactive("print('async ok')", timeout=30)
            first = reply["content"]["status"]
            kc.execute("import os; os._exit(7)")
            for _ in range(400):
                if not await km.is_alive():
                    break
                await asyncio.sleep(0.05)  # polling the provisioner
            alive_after_crash = await km.is_alive()
            await km.restart_kernel(now=True)
            await kc.wait_for_ready(timeout=60)
            second = (await kc.execute_interactive("1", timeout=30))["content"]["status"]
            return {"first": first, "alive_after_crash": alive_after_crash, "second": second,
                    "alive": await km.is_alive()}
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    with pytest.MonkeyPatch.context() as mp:
        for name, value in world.env().items():
            mp.setenv(name, value)
        got = asyncio.run(scenario())
    assert got == {"first": "ok", "alive_after_crash": False, "second": "ok", "alive": True}


# ------------------------------------------------------------------ refusals at start

def _start(world: World, kernel_name: str = KERNEL_NAME, **provisioner: Any) -> KernelManager:
    config = Config({"SandboxProvisioner": {"workspace": str(world.workspace), **provisioner}})
    km = KernelManager(kernel_name=kernel_name, config=config)
    km.start_kernel()
    return km


def test_a_missing_bwrap_is_an_error_naming_the_apt_get_line(world: World,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SandboxError, match=r"apt-get install -y bubblewrap"):
        _start(world, bwrap=str(world.root / "no-such-bwrap"))


def test_a_gateway_path_that_is_not_a_socket_is_refused(world: World,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INCISIVE_GATEWAY_SOCKET", "/etc")
    with pytest.raises(SandboxError, match="INCISIVE_GATEWAY_SOCKET"):
        _start(world)


def test_a_kernelspec_with_signal_interrupts_is_refused(world: World,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = world.root / "share" / "kernels" / "signalled"
    spec_dir.mkdir(parents=True)
    spec = json.loads((Path(__file__).resolve().parents[2] / "kernels" / "share" / "jupyter" / "kernels"
                       / KERNEL_NAME / "kernel.json").read_text())
    spec["interrupt_mode"] = "signal"
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JUPYTER_PATH", str(world.root / "share"))
    with pytest.raises(SandboxError, match="interrupt_mode"):
        _start(world, kernel_name="signalled")


def test_a_runtime_dir_too_long_for_ipc_sockets_is_refused(world: World,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    long_dir = world.root / ("r" * 90)
    long_dir.mkdir()
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(long_dir))
    with pytest.raises(SandboxError, match="JUPYTER_RUNTIME_DIR"):
        _start(world)


def test_a_workspace_that_is_root_is_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SandboxError, match="workspace"):
        _start(world, workspace="/")


def _shell_reply(k: Kernel, msg_id: str) -> dict[str, Any]:
    """The reply to ``msg_id`` (skipping late replies to wait_for_ready's kernel_info requests)."""
    while True:
        reply: dict[str, Any] = k.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def _wait_for_output(k: Kernel, text: str, msg_id: str) -> None:
    """Wait until the cell ``msg_id`` has printed ``text`` (it is then inside the sleep)."""
    while True:
        msg = k.kc.get_iopub_msg(timeout=30)
        if (msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id
                and text in msg["content"]["text"]):
            return


def test_a_runtime_dir_inside_the_workspace_is_refused(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(world.workspace / ".rt"))
    with pytest.raises(SandboxError, match="JUPYTER_RUNTIME_DIR"):
        _start(world)
    assert not (world.workspace / ".rt").exists()  # refused before anything was written
