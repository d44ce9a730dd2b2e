"""A node service on loopback for tests: real uvicorn in a thread, real HTTP clients.

>>> with serve_node(ServiceSettings(node_dir=node, issuer=idp.issuer, audience=AUD)) as url:  # doctest: +SKIP
...     httpx.get(url + "/healthz")
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from incisive_lab.node.service import ServiceSettings, create_app
from tests._support.orthanc import free_port

__all__ = ["OPEN_TERMS", "grant_access", "serve_app", "serve_node", "serve_process"]

#: Sharing terms that let researchers and annotators of any organisation view, for tests
#: whose subject is not governance itself.
OPEN_TERMS: dict[str, Any] = {
    "hosting": "federated", "visibility": "visible", "organisations": ["*"],
    "roles": ["researcher", "annotator"], "purposes": ["ai-development"], "min_loa": "substantial",
    "floor": 10, "expires": None}


@contextlib.contextmanager
def serve_app(app: Any, port: int, what: str) -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn in a thread on loopback ``port`` until the block
    ends, once its ``/healthz`` answers; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            if time.monotonic() > deadline or not thread.is_alive():
                server.should_exit = True
                raise RuntimeError(f"{what} did not start on {url}") from None
            time.sleep(0.05)  # polling the readiness check
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_process(cmd: Sequence[str], url: str, log: Path, what: str, *, timeout: float = 60) -> Iterator[str]:
    """Run ``cmd`` (a server in its own process, output to ``log``) until the block ends,
    once ``url``'s ``/healthz`` answers; yields ``url`` (benchmarks measure real processes)."""
    from incisive_lab._processes import ServiceProcess

    log.unlink(missing_ok=True)
    service = ServiceProcess(what, cmd, url + "/healthz", log, timeout=timeout).start()
    try:
        yield url
    finally:
        service.stop()


@contextlib.contextmanager
def serve_node(settings: ServiceSettings) -> Iterator[str]:
    """Serve ``settings`` (its port replaced by a free one) until the block ends; yields the base URL."""
    port = free_port()
    with serve_app(create_app(dataclasses.replace(settings, port=port)), port, "the node service") as url:
        yield url


def grant_access(url: str, token: Callable[[str], str], *, users: Sequence[str] = ("researcher",),
                 purpose: str = "ai-development", terms: dict[str, Any] | None = None,
                 steward: str = "steward", datasets: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Through the node's own API: the steward sets ``terms`` on every dataset (those of the
    node's catalogue, or ``datasets``), each user asks for each dataset for ``purpose``, and
    the steward approves with every consenting patient.

    Returns the grant ids per user. ``token(user)`` gives a user's access token.
    """
    def call(method: str, path: str, user: str, **kw: Any) -> Any:
        r = httpx.request(method, url + path, timeout=30, **kw, headers={
            "Authorization": f"Bearer {token(user)}", "X-Purpose": purpose})
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path} as {user}: {r.status_code} {r.text}")
        return r.json()

    if datasets is None:
        datasets = [d["dct:identifier"] for d in call("GET", "/catalogue", steward)["datasets"]]
    out: dict[str, list[str]] = {}
    for dataset in datasets:
        call("PUT", f"/governance/terms/{dataset}", steward, json={**OPEN_TERMS, **(terms or {}),
                                                                  "purposes": [purpose]})
        for user in users:
            req = call("POST", "/governance/requests", user,
                       json={"dataset": dataset, "purpose": purpose, "project": "tests"})
            grant = call("POST", f"/governance/requests/{req['request_id']}/approve", steward, json={"days": 30})
            out.setdefault(user, []).append(grant["grant_id"])
    return out
