"""A real ``jupyter lab`` in its own process, configured as the spawner configures it.

The environment follows the workbench contract: ``JUPYTER_CONFIG_DIR`` is the repository's
``extensions/jupyter-config``, ``JUPYTER_PATH`` the kernels' share directory, data, runtime,
Lab settings and workspaces in a private runtime directory outside the workspace,
``HOME`` and the working directory the workspace. Tests add configuration directories of
their own through ``JUPYTER_CONFIG_PATH`` (which takes precedence over ``JUPYTER_CONFIG_DIR``)
to play a misconfigured deployment, or write files into the workspace to play a user.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat

from incisive_lab._processes import ServiceProcess
from tests._support.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "extensions" / "jupyter-config"
KERNEL_PATH = REPO / "kernels" / "share" / "jupyter"
JUPYTER = Path(sys.executable).with_name("jupyter")


@dataclass
class Lab:
    """One running server: its URL (with the base URL), token, workspace, runtime directory
    and log; ``origin`` is the URL without the base URL (route patterns include it)."""

    url: str
    token: str
    workspace: Path
    runtime: Path
    log: Path
    proc: subprocess.Popen[bytes]
    origin: str = ""

    def __post_init__(self) -> None:
        self.origin = self.origin or self.url

    def client(self, *, authenticated: bool = True) -> httpx.Client:
        """An HTTP client for the server, with the token or without any credentials."""
        headers = {"Authorization": f"token {self.token}"} if authenticated else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30,
                            follow_redirects=False)

    def log_text(self) -> str:
        """The server's output so far."""
        return self.log.read_text(errors="replace")


def lab_env(workspace: Path, runtime: Path, *, config_path: Sequence[Path] = (),
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment, as the sandbox spawner sets it."""
    for sub in ("jupyter", "jupyter-data", "lab-settings", "lab-workspaces", "ipython"):
        (runtime / sub).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{JUPYTER.parent}:/usr/bin:/bin",
        "HOME": str(workspace),
        "LANG": "C.UTF-8",
        "JUPYTER_CONFIG_DIR": str(CONFIG_DIR),
        "JUPYTER_PATH": str(KERNEL_PATH),
        "JUPYTER_DATA_DIR": str(runtime / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(runtime / "jupyter"),
        "JUPYTERLAB_SETTINGS_DIR": str(runtime / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(runtime / "lab-workspaces"),
        "IPYTHONDIR": str(runtime / "ipython"),
        # the test-only route dump extension is imported from the repository
        "PYTHONPATH": str(REPO),
    }
    if config_path:
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(str(p) for p in config_path)
    env.update(extra or {})
    return env


def lab_command(port: int, token: str, workspace: Path) -> list[str]:
    """``jupyter lab`` on loopback with a token; ``--allow-root`` because tests run as root
    here (the spawner runs the server as an unprivileged user)."""
    return [str(JUPYTER), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
            f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={workspace}"]


@contextlib.contextmanager
def running_lab(workspace: Path, runtime: Path, *, config_path: Sequence[Path] = (),
                extra_env: Mapping[str, str] | None = None, timeout: float = 60) -> Iterator[Lab]:
    """Start the server and yield it once ``/api`` answers; stop it at the end.

    Raises ``RuntimeError`` with the server's output if it exits or does not answer in time.
    """
    port = free_port()
    token = secrets.token_hex(16)
    env = lab_env(workspace, runtime, config_path=config_path, extra=extra_env)
    with _serving(lab_command(port, token, workspace), f"http://127.0.0.1:{port}", token,
                  workspace, runtime, env, timeout) as lab:
        yield lab


@contextlib.contextmanager
def _fake_hub_api() -> Iterator[str]:
    """A stand-in for the hub's API root, which jupyterhub-singleuser asks for its version
    at start-up; yields the API URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"version": "6.1.1"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-JupyterHub-Version", "6.1.1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    finally:
        server.shutdown()
        thread.join(10)


@contextlib.contextmanager
def running_singleuser(workspace: Path, runtime: Path, *, user: str = "alice",
                       config_path: Sequence[Path] = (),
                       extra_env: Mapping[str, str] | None = None,
                       timeout: float = 60) -> Iterator[Lab]:
    """``jupyterhub-singleuser`` as the hub's spawner starts it (base URL ``/user/<user>/``,
    the hub's OAuth), with the same Jupyter environment; the hub is a stand-in that only
    answers the start-up version check, so no request can log in (anonymous tests only)."""
    port = free_port()
    prefix = f"/user/{user}/"
    origin = f"http://127.0.0.1:{port}"
    with _fake_hub_api() as api_url:
        env = lab_env(workspace, runtime, config_path=config_path, extra={
            "JUPYTERHUB_API_TOKEN": secrets.token_hex(16),
            "JUPYTERHUB_API_URL": api_url,
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": origin + prefix,
            "JUPYTERHUB_USER": user,
            "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
            "JUPYTERHUB_OAUTH_SCOPES": json.dumps([f"access:servers!server={user}/"]),
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps([f"access:servers!server={user}/"]),
            **(extra_env or {}),
        })
        command = [str(JUPYTER.with_name("jupyterhub-singleuser")), "--allow-root",
                   "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
                   f"--ServerApp.root_dir={workspace}"]
        with _serving(command, origin + prefix.rstrip("/"), "", workspace, runtime, env,
                      timeout, origin=origin) as lab:
            yield lab


@contextlib.contextmanager
def _serving(command: list[str], url: str, token: str, workspace: Path, runtime: Path,
             env: Mapping[str, str], timeout: float, origin: str = "") -> Iterator[Lab]:
    log = runtime / "server.log"
    service = ServiceProcess(Path(command[0]).name, command, url + "/api", log, env=env, cwd=workspace,
                             timeout=timeout).start()
    assert service.proc is not None
    try:
        yield Lab(url, token, workspace, runtime, log, service.proc, origin)
    finally:
        service.stop(timeout=20)


def failed_start(workspace: Path, runtime: Path, *, config_path: Sequence[Path] = (),
                 extra_env: Mapping[str, str] | None = None, timeout: float = 60
                 ) -> tuple[int, str]:
    """Run the server expecting it to refuse to start; its exit status and output.

    Raises ``AssertionError`` if it starts (answers ``/api``) instead.
    """
    port = free_port()
    env = lab_env(workspace, runtime, config_path=config_path, extra=extra_env)
    proc = subprocess.Popen(lab_command(port, secrets.token_hex(8), workspace), cwd=workspace,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the server did not exit:\n{out.decode(errors='replace')[-3000:]}"
                             ) from None
    return proc.returncode, out.decode(errors="replace")


def write_config(directory: Path, server: Mapping[str, Any] | None = None,
                 page_config: Mapping[str, Any] | None = None) -> Path:
    """A Jupyter configuration directory with a server config and/or a Lab page config."""
    directory.mkdir(parents=True, exist_ok=True)
    if server is not None:
        (directory / "jupyter_server_config.json").write_text(json.dumps(server))
    if page_config is not None:
        (directory / "labconfig").mkdir(exist_ok=True)
        (directory / "labconfig" / "page_config.json").write_text(json.dumps(page_config))
    return directory


_CONFIG_DATA = re.compile(
    r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', re.S)


def page_config(html: str) -> dict[str, Any]:
    """The page config JupyterLab's HTML page carries."""
    match = _CONFIG_DATA.search(html)
    assert match, "no jupyter-config-data in the page"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


#: A marker in every file the tests must never see served.
SECRET = "SECRET-7f3a9c-PATIENT-DATA"


def dicom_like() -> bytes:
    """A DICOM Part 10 preamble and prefix followed by bytes that are not UTF-8."""
    return b"\0" * 128 + b"DICM" + bytes(range(256)) * 8 + SECRET.encode()


def make_workspace(root: Path) -> tuple[Path, Path]:
    """A workspace with a binary, a CSV and a notebook, and an outside directory beside it."""
    workspace = root / "workspace"
    outside = root / "outside"
    (workspace / "data").mkdir(parents=True)
    outside.mkdir()
    (workspace / "data" / "scan.dcm").write_bytes(dicom_like())
    (workspace / "data" / "cohort.csv").write_text(f"patient,age\n{SECRET},54\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    nbformat.write(nb, workspace / "analysis.ipynb")
    (outside / "secret.txt").write_text(SECRET)
    return workspace, outside


def route_dump_config(directory: Path) -> Path:
    """A configuration directory enabling only the test-only route dump extension."""
    d = directory / "jupyter_server_config.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / "route_dump.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"tests.extensions._route_dump": True}}}))
    return directory


def tree(directory: Path) -> dict[str, float]:
    """Every file under ``directory`` with its modification time (to see what changed)."""
    return {str(p): p.stat().st_mtime for p in directory.rglob("*") if p.is_file()} \
        if directory.exists() else {}
