"""Named test doubles for the ways a node fails the broker, and a broker on loopback.

* :class:`SlowNode` — a TCP proxy in front of a real node that holds the node's answer back
  for ``delay`` seconds (``delay = 0``: a transparent proxy); ``down = True`` makes it close
  every new connection at once (a node that crashed).
* :class:`BlackholeNode` — accepts TCP connections and reads forever, never answers.
* :func:`dead_url` — a loopback URL with nothing listening (a stopped node).
* :func:`serve_broker` — the broker app under real uvicorn in a thread.

Each server runs its own asyncio loop in a daemon thread; ``start()`` returns once the
socket listens (a readiness event, no sleeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from tests._support.node_server import serve_app
from tests._support.orthanc import free_port

__all__ = ["BlackholeNode", "SlowNode", "dead_url", "serve_broker"]


class _LoopServer:
    """A TCP server on 127.0.0.1 with its own event loop in a thread."""

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def start() -> None:
            self._server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def start(self) -> _LoopServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"{type(self).__name__} did not start: {self._error}")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or not loop.is_running():
            return

        def close() -> None:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(close)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SlowNode(_LoopServer):
    """A proxy to ``target`` (a node's base URL) that delays the node's answer by ``delay`` s."""

    def __init__(self, target: str, delay: float = 0.0) -> None:
        super().__init__()
        parts = urlsplit(target)
        self.target_host, self.target_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.delay = delay
        self._down = False
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def down(self) -> bool:
        """Whether the node is down: setting it closes every open connection, and new ones at once."""
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value and self._loop is not None:
            done = threading.Event()

            def cut() -> None:
                for w in list(self._open):
                    w.close()
                done.set()

            self._loop.call_soon_threadsafe(cut)
            done.wait(5)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            try:
                while data := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)  # the double's behaviour: a slow node
                        delay = 0.0
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(pipe(reader, up_writer, 0.0), pipe(up_reader, writer, self.delay))
        finally:
            self._open -= {writer, up_writer}


class BlackholeNode(_LoopServer):
    """Accepts connections, reads what comes, never answers."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while await reader.read(65536):
                pass
        writer.close()


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def serve_broker(settings: Any) -> Iterator[str]:
    """Serve a broker (``BrokerSettings``; its port replaced by a free one); yields the base URL."""
    from incisive_lab.federation.service import create_app

    port = free_port()
    with serve_app(create_app(settings), port, "the broker") as url:
        yield url
