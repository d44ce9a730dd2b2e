"""A node service on loopback for tests: real uvicorn in a thread, real HTTP clients.

>>> with serve_node(ServiceSettings(node_dir=node, issuer=idp.issuer, audience=AUD)) as url:  # doctest: +SKIP
...     httpx.get(url + "/healthz")
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator

import httpx

from incisive_lab.node.service import ServiceSettings, create_app
from tests._support.orthanc import free_port

__all__ = ["serve_node"]


@contextlib.contextmanager
def serve_node(settings: ServiceSettings) -> Iterator[str]:
    """Serve ``settings`` (its port replaced by a free one) until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    settings = dataclasses.replace(settings, port=port)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
        raise RuntimeError(f"the node service did not start on {url}")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
