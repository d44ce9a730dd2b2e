"""The sandboxed kernel started from inside another bubblewrap sandbox, as the hub's spawner
runs the single-user server (own user namespace as uid 1000, own PID namespace and /proc,
read-only system and Python, the workspace at /workspace, the runtime dir at /run/incisive):
the kernel gets an empty /proc (a fresh one cannot be mounted there; the outer one is never
bound), no network, the gateway through both sandboxes, interrupt and restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import incisive_lab
from incisive_kernels.sandbox import host_layout, system_args
from tests.kernels.conftest import (
    KERNEL_PATH,
    KERNELS,
    SECRETS,
    World,
    require_bwrap,
    serve_gateway,
)
from tests.kernels.test_isolation import tcp_server

PROBE = Path(__file__).resolve().parent / "_nested_probe.py"


def outer_argv(world: World, run_dir: Path) -> list[str]:
    """The single-user server's sandbox, built the way the hub's spawner builds it."""
    lib = str(Path(incisive_lab.__file__).resolve().parent)
    ro = sorted({sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix), str(KERNELS), lib,
                 str(PROBE.parent)})
    argv = [require_bwrap(), "--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-pid",
            "--die-with-parent", "--proc", "/proc", "--dev", "/dev",
            *system_args(host_layout())]
    for path in ro:
        argv += ["--ro-bind", path, path]
    argv += ["--tmpfs", "/tmp", "--bind", str(world.workspace), "/workspace",
             "--bind", str(run_dir), "/run/incisive", "--chdir", "/workspace", "--clearenv"]
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": "/workspace",
           "JUPYTER_PATH": str(KERNEL_PATH), "JUPYTER_RUNTIME_DIR": "/run/incisive/jupyter",
           "INCISIVE_GATEWAY_SOCKET": "/run/incisive/gateway.sock", **SECRETS}
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return [*argv, "--", sys.executable, str(PROBE)]


def test_kernel_inside_the_servers_sandbox(world: World) -> None:
    run_dir = world.root / "run"
    (run_dir / "jupyter").mkdir(parents=True)
    (run_dir / "gateway-ledger").mkdir()
    (run_dir / "gateway-ledger" / "ledger.sqlite").write_text("planted ledger")
    with serve_gateway(str(run_dir / "gateway.sock")) as gateway, \
            tcp_server("127.0.0.1") as (port, accepted):
        done = subprocess.run([*outer_argv(world, run_dir), str(port)], capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert accepted == []
        assert [r["path"] for r in gateway.requests] == ["/gateway/info"]
    assert got["server"] == {"uid": 1000, "own_environ_has_token": True}  # the outer /proc's danger
    kernel = got["kernel"]
    assert kernel["proc"] == [], "the kernel must get an empty /proc, never the server's"
    assert kernel["uid"] == 1000 and kernel["cwd"] == "/workspace"
    assert kernel["env_has_token"] is False
    assert kernel["run_incisive"] == ["gateway.sock", "jupyter"]  # no ledger, no other files
    assert kernel["loopback"] in (111, 101), kernel  # ECONNREFUSED: its own empty loopback
    assert kernel["gateway"]["user"] == "gateway-double"
    assert kernel["imports"] == "ok" and kernel["cpu_count"] >= 1
    assert got["interrupt"] == "KeyboardInterrupt"
    assert got["after_restart"] == "fresh"
