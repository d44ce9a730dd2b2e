"""A central node on loopback for tests: the node service plus the central removal route.

The service module does not register ``POST /central/removals`` yet; this builds the app
with :func:`~incisive_lab.node.service.create_app` and adds the route with
:func:`~incisive_lab.node.central_api.add_central_routes`, as the service will.

>>> with serve_central(ServiceSettings(node_dir=node, issuer=idp.issuer, audience=AUD)) as url:  # doctest: +SKIP
...     httpx.post(url + "/central/removals", json={"handle": h}, headers=steward)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from incisive_lab.node.service import ServiceSettings, create_app
from tests._support.orthanc import free_port

__all__ = ["central_app", "serve_central"]


def central_app(settings: ServiceSettings) -> Any:
    """The node app of ``settings`` with the central routes added (unless the service has them)."""
    from incisive_lab.node.central_api import add_central_routes
    from incisive_lab.node.removal import REMOVALS_PATH
    from incisive_lab.node.service import _principal

    app = create_app(settings)
    if not any(getattr(r, "path", None) == REMOVALS_PATH for r in app.routes):
        add_central_routes(app, app.state.store, app.state.ledger, _principal)
    return app


@contextlib.contextmanager
def serve_central(settings: ServiceSettings) -> Iterator[str]:
    """Serve a central node (its port replaced by a free one) until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    settings = dataclasses.replace(settings, port=port)
    server = uvicorn.Server(uvicorn.Config(central_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        server.should_exit = True
        raise RuntimeError(f"the central node did not start on {url}")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
