"""Named doubles for the gateway's tests: a destination with one route per behaviour
(:class:`Upstream`) and the hub's token endpoint (:class:`Hub`). Serve them with
``tests._support.node_server.serve_app(double.app(), port, what)``."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["TOKEN", "Hub", "Upstream"]

#: A token-shaped string the doubles hand out and look for.
TOKEN = "eyJ0eXAiOiJhdCtqd3QifQ.eyJzdWIiOiJyaXRhIn0.c2lnbmF0dXJl"


class Upstream:
    """One destination with a route per behaviour (the gateway sees a real HTTP server):

    ``/echo`` (what arrived: headers, body length and sha256), ``/trickle`` (one chunk, then
    the rest once :attr:`release` is set), ``/big`` (``n`` MiB), ``/redirect`` (302 with
    Location and Set-Cookie), ``/gzip`` (a gzip-encoded body), ``/silent`` (never answers in
    time), ``/unauthorized`` (401).
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def echo(request: Request) -> Response:
            digest, size = hashlib.sha256(), 0
            async for chunk in request.stream():
                digest.update(chunk)
                size += len(chunk)
            seen = {"headers": dict(request.headers), "bytes": size, "sha256": digest.hexdigest(),
                    "path": request.url.path, "query": request.url.query}
            self.requests.append(seen)
            return JSONResponse(seen, headers={"Set-Cookie": "session=1", "X-Token": TOKEN})

        async def trickle(request: Request) -> Response:
            async def body() -> AsyncIterator[bytes]:
                yield b"first"
                while not self.release.is_set():
                    await asyncio.sleep(0.01)  # waiting for the test to have seen the first chunk
                yield b"-rest"
            return StreamingResponse(body(), media_type="application/octet-stream")

        async def big(request: Request) -> Response:
            n = int(request.query_params.get("n", "8"))

            async def body() -> AsyncIterator[bytes]:
                for i in range(n * 16):
                    yield bytes([i % 256]) * 65536
            return StreamingResponse(body(), media_type="application/octet-stream",
                                     headers={"Content-Length": str(n << 20)})

        async def redirect(request: Request) -> Response:
            return Response(status_code=302, headers={"Location": "http://evil.example.org/", "Set-Cookie": "a=b"})

        async def gzipped(request: Request) -> Response:
            return Response(gzip.compress(b"x" * 10000), media_type="text/plain",
                            headers={"Content-Encoding": "gzip"})

        async def silent(request: Request) -> Response:
            for _ in range(300):  # until the gateway gives up and hangs up (or 30 s)
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.1)
            return Response(b"too late")

        async def unauthorized(request: Request) -> Response:
            return JSONResponse({"error": "expired"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

        return Starlette(routes=[
            Route("/healthz", healthz), Route("/echo", echo, methods=["GET", "POST"]), Route("/trickle", trickle),
            Route("/big", big), Route("/redirect", redirect), Route("/gzip", gzipped), Route("/silent", silent),
            Route("/unauthorized", unauthorized)])


class Hub:
    """A hub double answering ``GET /hub/api/incisive/token`` for one server token."""

    def __init__(self, api_token: str, lifetime: float = 600.0) -> None:
        self.api_token, self.lifetime = api_token, lifetime
        self.calls = 0
        self.status = 200
        self.body: Any = None

    def app(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            return JSONResponse({})

        async def token(request: Request) -> Response:
            self.calls += 1
            await asyncio.sleep(0.05)  # concurrent callers overlap
            if request.headers.get("authorization") != f"token {self.api_token}":
                return JSONResponse({"message": "not your server"}, status_code=403)
            if self.body is not None:
                return Response(self.body, status_code=self.status)
            return JSONResponse({"access_token": f"{TOKEN}{self.calls}", "expires_at": time.time() + self.lifetime},
                                status_code=self.status)

        return Starlette(routes=[Route("/healthz", healthz), Route("/hub/api/incisive/token", token)])
