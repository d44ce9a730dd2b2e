"""What a sandboxed kernel can and cannot reach: one real kernel (bubblewrap, ipc transport)
started by jupyter_client from the ``incisive`` kernelspec, probed cell by cell. Each denial
has a control showing that the thing denied is really there for the host."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import incisive_lab
from tests._support.sandbox_roots import allowed_root
from tests.kernels.conftest import (
    SECRETS,
    GatewayDouble,
    Kernel,
    World,
    make_world,
    require_bwrap,
    serve_gateway,
    started_kernel,
)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_bwrap()
    w = make_world()
    try:
        yield w
    finally:
        import shutil

        shutil.rmtree(w.root, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(world: World) -> Iterator[GatewayDouble]:
    with serve_gateway(str(world.gateway_socket)) as double:
        yield double


@pytest.fixture(scope="module")
def kernel(world: World, gateway: GatewayDouble) -> Iterator[Kernel]:
    with started_kernel(world) as k:
        yield k


@contextlib.contextmanager
def tcp_server(host: str) -> Iterator[tuple[int, list[object]]]:
    """A TCP listener on ``host`` that records every connection it accepts."""
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(8)
    sock.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, peer = sock.accept()
                accepted.append(peer)
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(2)
        sock.close()


CONNECT = """
import socket, json
try:
    socket.create_connection(({host!r}, {port}), timeout=5).close()
    result = ({{"connected": True}})
except OSError as e:
    result = ({{"connected": False, "errno": e.errno, "error": str(e)}})
"""


def test_a_cell_runs_in_the_workspace_as_the_kernels_own_process(kernel: Kernel, world: World) -> None:
    got = kernel.json("import os, json, sys; result = ({'cwd': os.getcwd(), "
                      "'home': os.environ['HOME'], 'sum': 1 + 1, 'exe': sys.executable})")
    assert got == {"cwd": str(world.workspace), "home": str(world.workspace), "sum": 2,
                   "exe": sys.executable}


def test_no_outbound_tcp_to_a_loopback_service_of_the_host(kernel: Kernel) -> None:
    with tcp_server("127.0.0.1") as (port, accepted):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # control: it is there
        got = kernel.json(CONNECT.format(host="127.0.0.1", port=port))
        assert got["connected"] is False and got["errno"] == errno.ECONNREFUSED, got
        assert len(accepted) == 1  # only the control's connection arrived


def test_no_outbound_tcp_to_the_hosts_other_addresses(kernel: Kernel) -> None:
    host_ip = _host_address()
    with tcp_server("0.0.0.0") as (port, accepted):
        socket.create_connection((host_ip, port), timeout=5).close()  # control
        got = kernel.json(CONNECT.format(host=host_ip, port=port))
        assert got["connected"] is False and got["errno"] == errno.ENETUNREACH, got
        assert len(accepted) == 1


def test_no_outbound_tcp_to_a_public_address(kernel: Kernel) -> None:
    for host, port in (("1.1.1.1", 443), ("8.8.8.8", 53), ("2606:4700:4700::1111", 443)):
        got = kernel.json(CONNECT.format(host=host, port=port))
        assert got["connected"] is False, (host, got)
        assert got["errno"] in (errno.ENETUNREACH, errno.EADDRNOTAVAIL), (host, got)


def test_no_dns(kernel: Kernel) -> None:
    got = kernel.json("""
import socket, json, os
out = {"resolv_conf": os.path.exists("/etc/resolv.conf"), "hosts": os.path.exists("/etc/hosts")}
for name in ("example.com", "pypi.org", "hub"):
    try:
        out[name] = socket.getaddrinfo(name, 443)
    except socket.gaierror as e:
        out[name] = "gaierror"
result = (out)
""")
    assert got == {"resolv_conf": False, "hosts": False, "example.com": "gaierror",
                   "pypi.org": "gaierror", "hub": "gaierror"}


def test_only_its_own_loopback_interface(kernel: Kernel) -> None:
    got = kernel.json("import socket, json; result = ([n for _, n in socket.if_nameindex()])")
    assert got == ["lo"]


def test_no_abstract_unix_socket_of_the_host(kernel: Kernel) -> None:
    name = f"\0incisive-kernel-test-{id(kernel)}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(name)
    srv.listen(1)
    try:
        socket.socket(socket.AF_UNIX).connect(name)  # control
        got = kernel.json(f"""
import socket, json
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({name!r}); result = ("connected")
except OSError as e:
    result = (e.errno)
""")
        assert got == errno.ECONNREFUSED
    finally:
        srv.close()


def test_environment_holds_no_secret_of_the_parent(kernel: Kernel) -> None:
    import os

    for name, value in SECRETS.items():
        assert os.environ[name] == value  # control: planted in the parent
    env = kernel.json("import os, json; result = (dict(os.environ))")
    assert not [k for k in env if k.startswith(("JUPYTERHUB_", "JPY_API"))]
    leaked = [v for v in SECRETS.values() if any(v in x for x in env.values())]
    assert leaked == []
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL", "INCISIVE_GATEWAY", "PYTHONNOUSERSITE",
                        "JPY_PARENT_PID", "JPY_SESSION_NAME",
                        # set by ipykernel itself at start
                        "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "GIT_PAGER", "MPLBACKEND", "PAGER",
                        "PWD", "PYDEVD_USE_FRAME_EVAL", "TERM"}, sorted(env)


def test_no_process_environment_or_command_line_holds_a_secret(kernel: Kernel) -> None:
    got = kernel.json("""
import os, json
out = {}
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for what in ("environ", "cmdline"):
        try:
            out[pid + "/" + what] = open(f"/proc/{pid}/{what}", "rb").read().decode("latin-1")
        except OSError as e:
            out[pid + "/" + what] = "error " + str(e.errno)
result = (out)
""")
    assert got, "the kernel sees its own processes"
    pids = {k.split("/")[0] for k in got}
    assert len(pids) <= 3, f"more processes than bwrap's init and the kernel: {sorted(pids)}"
    for where, text in got.items():
        for secret in SECRETS.values():
            assert secret not in text, where


def test_cannot_read_outside_the_workspace(kernel: Kernel, world: World) -> None:
    repo = Path(incisive_lab.__file__).resolve().parents[1]
    targets = {**{k: str(v) for k, v in world.planted.items()},
               "repo_pyproject": str(repo / "pyproject.toml"),
               "repo_tests": str(Path(__file__).resolve()),
               "host_shadow": "/etc/shadow", "host_root_home": "/root/.bashrc",
               "runtime_dir_listing": str(world.runtime)}
    for name, path in targets.items():
        if name != "runtime_dir_listing":
            assert Path(path).exists() or name.startswith("host_"), name  # control
    got = kernel.json(f"""
import os, json
out = {{}}
for name, path in {targets!r}.items():
    try:
        out[name] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
    except OSError as e:
        out[name] = e.errno
result = (out)
""")
    own = {p.name for p in world.runtime.iterdir() if p.name.startswith(("k-", "kernel-"))
           and p.name != world.planted["other_connection_file"].name}
    listing = got.pop("runtime_dir_listing")
    assert set(listing) <= own and "kernel-00000000-other.json" not in listing, listing
    assert got == {name: errno.ENOENT for name in got}, got


def test_sees_only_its_own_sandbox_tree(kernel: Kernel, world: World) -> None:
    got = kernel.json("import os, json; result = (sorted(os.listdir('/')))")
    assert set(got) <= allowed_root("root", "home", "opt", "srv"), got
    assert "sys" not in got and "var" not in got


def test_writes_only_to_the_workspace_and_its_own_tmp(kernel: Kernel, world: World) -> None:
    lib = str(Path(incisive_lab.__file__).resolve().parent)
    targets = ["/usr/incisive-x", "/etc/incisive-x", "/incisive-x", "/run/incisive/x",
               f"{sys.prefix}/incisive-x", f"{sys.base_prefix}/incisive-x", f"{lib}/incisive-x",
               "/dev/shm-not-there/x"]
    # the runtime dir here is under /tmp: a write lands in the sandbox's own tmpfs, never on the host
    in_tmp = f"{world.runtime}/incisive-x"
    got = kernel.json(f"""
import os, json, sys
out = {{}}
for path in {[*targets, in_tmp]!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        out[path] = "written"
    except OSError as e:
        out[path] = e.errno
cf = [a for a in sys.argv if a.endswith(".json")][0]
try:
    open(cf, "a").write("x"); out["connection_file"] = "written"
except OSError as e:
    out["connection_file"] = e.errno
open("in-workspace.txt", "w").write("from the kernel")
open("/tmp/in-tmp.txt", "w").write("from the kernel")
result = (out)
""")
    assert got.pop(in_tmp) == "written"
    assert all(v in (errno.EROFS, errno.EACCES, errno.ENOENT, errno.EPERM) for v in got.values()), \
        json.dumps(got)
    assert got["/usr/incisive-x"] == errno.EROFS and got["/incisive-x"] == errno.EROFS
    assert got["connection_file"] == errno.EROFS
    assert (world.workspace / "in-workspace.txt").read_text() == "from the kernel"
    assert not Path("/tmp/in-tmp.txt").exists()
    for path in [*targets, in_tmp]:
        assert not Path(path).exists(), path


def test_the_gateway_socket_is_the_door(kernel: Kernel, gateway: GatewayDouble) -> None:
    got = kernel.json("""
import os, json, httpx
path = os.environ["INCISIVE_GATEWAY"]
with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://gateway") as c:
    r = c.get("/gateway/info", headers={"X-Purpose": "test"})
result = ({"path": path, "status": r.status_code, "body": r.json()})
""")
    assert got == {"path": "/run/incisive/gateway.sock", "status": 200,
                   "body": {"user": "gateway-double", "path": "/gateway/info"}}
    assert gateway.requests[-1]["path"] == "/gateway/info"
    assert gateway.requests[-1]["headers"]["X-Purpose"] == "test"


def test_without_a_gateway_the_kernel_has_no_door() -> None:
    require_bwrap()
    w = make_world()
    try:
        with started_kernel(w, gateway=False) as k:
            got = k.json("import os, json; result = ([os.environ.get('INCISIVE_GATEWAY'), "
                         "os.path.exists('/run/incisive/gateway.sock'), os.path.exists('/run')])")
            assert got == [None, False, False]
    finally:
        import shutil

        shutil.rmtree(w.root, ignore_errors=True)


def test_no_capabilities_and_no_new_user_namespace(kernel: Kernel) -> None:
    # unshare(2) of a user namespace needs a single-threaded caller: ask a fresh interpreter
    probe = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
             "rc = libc.unshare(0x10000000); print(rc, ctypes.get_errno())")  # CLONE_NEWUSER
    got = kernel.json(f"""
import json, subprocess, sys
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
rc, err = subprocess.run([sys.executable, "-c", {probe!r}], capture_output=True, text=True).stdout.split()
result = ({{"cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip(), "unshare": int(rc), "errno": int(err)}})
""")
    assert got["cap_eff"] == "0000000000000000" and got["cap_bnd"] == "0000000000000000"
    assert got["no_new_privs"] == "1"
    assert got["unshare"] == -1 and got["errno"] in (errno.EPERM, errno.ENOSPC), got


def _host_address() -> str:
    """A non-loopback address of this host (the route to a public address picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address: str = s.getsockname()[0]
        except OSError:
            pytest.fail("this host has no non-loopback IPv4 route; the test needs one")
    assert not address.startswith("127."), address
    return address
