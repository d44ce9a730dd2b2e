"""Real sandboxed kernels for the kernel tests: real bubblewrap, real jupyter_client managers
with ``JUPYTER_PATH`` at ``kernels/share/jupyter``, a gateway double on a Unix socket, and
secrets planted in the parent environment that must not reach the kernel.

Every directory lives under a short ``/tmp/ik-*`` folder (ipc socket paths must stay under
107 bytes; pytest's own tmp paths can be long).
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import json
import os
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager
from traitlets.config import Config

import incisive_kernels

KERNELS = Path(incisive_kernels.__file__).resolve().parent.parent
KERNEL_PATH = KERNELS / "share" / "jupyter"
KERNEL_NAME = "incisive"

#: Planted in the parent's environment; none may reach the kernel.
SECRETS = {
    "JUPYTERHUB_API_TOKEN": "hub-api-token-5f1e9c",
    "JUPYTERHUB_USER": "alice-planted",
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
    "JPY_API_TOKEN": "jpy-token-77aa01",
    "INCISIVE_CLIENT_SECRET": "client-secret-c0ffee",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-d00d",
}


def require_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        pytest.fail("bubblewrap is not installed: apt-get install -y bubblewrap")
    return path


# ------------------------------------------------------------------ gateway double

@dataclass
class GatewayDouble:
    """An HTTP server on a Unix socket standing in for the gateway; it records each request."""

    path: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def serve_gateway(path: str) -> Iterator[GatewayDouble]:
    double = GatewayDouble(path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            double.requests.append({"path": self.path, "headers": dict(self.headers)})
            body = json.dumps({"user": "gateway-double", "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

        def address_string(self) -> str:  # a Unix peer has no (host, port)
            return "uds"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = Server(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# ------------------------------------------------------------------ the test world

@dataclass
class World:
    """One short root with a workspace, a runtime dir, neighbours' files and a gateway socket."""

    root: Path
    workspace: Path
    runtime: Path
    gateway_socket: Path
    planted: dict[str, Path]

    def env(self, gateway: bool = True) -> dict[str, str]:
        env = {"JUPYTER_PATH": str(KERNEL_PATH), "JUPYTER_RUNTIME_DIR": str(self.runtime),
               **SECRETS}
        if gateway:
            env["INCISIVE_GATEWAY_SOCKET"] = str(self.gateway_socket)
        return env


def make_world() -> World:
    root = Path(tempfile.mkdtemp(prefix="ik-", dir="/tmp"))
    workspace = root / "workspaces" / "alice"
    workspace.mkdir(parents=True)
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700)
    planted = {
        "other_workspace": root / "workspaces" / "bob" / "notes.txt",
        "node_store": root / "node" / "private" / "node.sqlite",
        "vault": root / "node" / "private" / "vault.key",
        "other_connection_file": runtime / "kernel-00000000-other.json",
    }
    for name, path in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"planted {name}\n")
    return World(root, workspace, runtime, root / "gw.sock", planted)


@pytest.fixture
def world() -> Iterator[World]:
    require_bwrap()
    w = make_world()
    try:
        yield w
    finally:
        shutil.rmtree(w.root, ignore_errors=True)


# ------------------------------------------------------------------ a kernel and a client

class Kernel:
    """A started sandboxed kernel (blocking manager and client) with a cell runner."""

    def __init__(self, workspace: Path, kernel_name: str = KERNEL_NAME) -> None:
        config = Config({"SandboxProvisioner": {"workspace": str(workspace)}})
        self.km = KernelManager(kernel_name=kernel_name, config=config)
        self.km.start_kernel()
        self.connect()

    def connect(self) -> None:
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> dict[str, Any]:
        """Run a cell; its execute reply's content, or AssertionError if the cell failed."""
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

        reply = self.kc.execute_interactive(
            code, output_hook=hook, timeout=timeout,
            user_expressions={"result": "__import__('json').dumps(globals().get('result'))"})
        content: dict[str, Any] = reply["content"]
        if content["status"] != "ok" or errors:
            raise AssertionError(f"cell failed: {errors or content}\n{code}")
        return content

    def json(self, code: str) -> Any:
        """Run a cell that sets ``result`` (JSON-able); return ``result``.

        The value comes back in the execute reply (``user_expressions``), not through printed
        output, which may reach the client after the reply.
        """
        expression = self.run(code)["user_expressions"]["result"]
        if expression["status"] != "ok":
            raise AssertionError(f"reading result failed: {expression}")
        return json.loads(ast.literal_eval(expression["data"]["text/plain"]))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=True)


@contextlib.contextmanager
def started_kernel(world: World, gateway: bool = True) -> Iterator[Kernel]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in world.env(gateway).items():
            mp.setenv(name, value)
        if not gateway:
            mp.delenv("INCISIVE_GATEWAY_SOCKET", raising=False)
        kernel = Kernel(world.workspace)
        try:
            yield kernel
        finally:
            kernel.stop()


def host_processes_with(marker: str) -> list[int]:
    """PIDs on the host whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def wait_until(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling a process table / kernel state
