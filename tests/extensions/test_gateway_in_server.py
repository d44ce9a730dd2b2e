"""The gateway inside a real ``jupyter lab`` configured by ``extensions/jupyter-config``: the
server extension starts it from the environment (as the spawner sets it) on the server's
event loop, a slow destination does not hold the server up, and stopping the server removes
the socket. Destinations and the hub are the named doubles of ``tests/client/doubles.py``."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._support.node_server import serve_app
from tests._support.orthanc import free_port
from tests.client.doubles import TOKEN, Hub, Upstream
from tests.client.support import gateway_events, short_dir
from tests.extensions._lab import Lab, make_workspace, running_lab


@dataclass
class Served:
    lab: Lab
    socket: Path
    ledger: Path
    upstream: Upstream
    hub: Hub

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://gateway",
                            timeout=30)


def _wait_for(path: Path, lab: Lab) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"no gateway socket:\n{lab.log_text()[-3000:]}"
        time.sleep(0.05)  # the extension creates it while the server starts


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("gateway-lab")
    workspace, _ = make_workspace(root)
    runtime = root / "runtime"
    runtime.mkdir()
    upstream, hub = Upstream(), Hub("server-secret")
    with serve_app(upstream.app(), free_port(), "the upstream double") as up_url, \
            serve_app(hub.app(), free_port(), "the hub double") as hub_url, short_dir() as run:
        config = root / "gateway.json"
        config.write_text(json.dumps({"broker": up_url, "nodes": {"hospital-a": up_url}, "token": "hub"}))
        sock = run / "gateway.sock"
        env = {"INCISIVE_GATEWAY_SOCKET": str(sock), "INCISIVE_GATEWAY_CONFIG": str(config),
               "JUPYTERHUB_API_URL": hub_url + "/hub/api", "JUPYTERHUB_API_TOKEN": "server-secret",
               "JUPYTERHUB_USER": "rita"}
        with running_lab(workspace, runtime, extra_env=env) as lab:
            _wait_for(sock, lab)
            yield Served(lab, sock, run / "gateway-ledger", upstream, hub)


def test_the_server_extension_serves_the_gateway_with_the_hubs_token(served: Served) -> None:
    with served.client() as c:
        assert c.get("/gateway/info").json() == {"user": "rita", "broker": True, "nodes": ["hospital-a"]}
        seen = c.get("/nodes/hospital-a/echo", headers={"Authorization": "Bearer kernel"}).json()
        assert seen["headers"]["authorization"] == f"Bearer {TOKEN}1" and served.hub.calls == 1
        r = c.get("/nodes/elsewhere/x")
        assert r.status_code == 403 and r.json()["reason"] == "unknown-node"
    assert [e.action for e in gateway_events(served.ledger)][-3:] == ["info", "forward", "refuse"]
    assert "INCISIVE gateway: listening on" in served.lab.log_text()


def test_a_slow_destination_does_not_hold_the_server_up(served: Served) -> None:
    served.upstream.release.clear()
    got: list[bytes] = []

    def read() -> None:
        with served.client() as c, c.stream("GET", "/nodes/hospital-a/trickle") as r:
            got.extend(r.iter_raw())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any(e.resource == "node:hospital-a/trickle" for e in gateway_events(served.ledger)):
            assert time.monotonic() < deadline
            time.sleep(0.05)  # until the gateway holds the slow answer open
        # meanwhile the Jupyter server and the gateway answer
        with served.lab.client() as jupyter:
            assert jupyter.get("/api/status").status_code == 200
        with served.client() as c:
            assert c.get("/gateway/info").status_code == 200
        assert reader.is_alive(), "the slow answer is still open"
    finally:
        served.upstream.release.set()
        reader.join(20)
    assert b"".join(got) == b"first-rest"


def test_stopping_the_server_removes_the_socket(served: Served) -> None:
    # runs last in this module: the server stops
    served.lab.proc.send_signal(signal.SIGTERM)
    served.lab.proc.wait(30)
    assert not served.socket.exists(), served.lab.log_text()[-3000:]
