"""Running the gateway outside Jupyter for tests: on its own event loop in a thread.

>>> with GatewayThread(Gateway(config, socket_path=..., token_source=..., user="rita",
...                            ledger_dir=...)) as gw:      # doctest: +SKIP
...     httpx.get("http://gateway/gateway/info", transport=httpx.HTTPTransport(uds=gw.socket_path))

Also: :func:`short_dir` (a socket path must stay under 107 bytes, and pytest's tmp paths
can be longer), :func:`gateway_events` (the gateway's ledger, read only) and
:class:`CachedTokens` (one IdP login per user, reused).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from incisive_lab.ledger import Ledger
from incisive_lab_server.gateway import Gateway

__all__ = ["CachedTokens", "GatewayThread", "gateway_events", "short_dir"]


class GatewayThread:
    """A :class:`Gateway` served on a private event loop in a daemon thread."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def socket_path(self) -> str:
        return self.gateway.socket_path

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            self.gateway.start()
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def start(self) -> GatewayThread:
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None or not loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self.gateway.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def short_dir(prefix: str = "gw-") -> Iterator[Path]:
    """A fresh directory with a short path under /tmp (for Unix sockets), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def gateway_events(ledger_dir: Path, since: int = 0) -> list[Any]:
    """The gateway's ledger entries (events) from index ``since``."""
    with Ledger.open(ledger_dir, read_only=True) as ledger:
        return [e.event for e in ledger.entries(since)]


def ledger_size(ledger_dir: Path) -> int:
    with Ledger.open(ledger_dir, read_only=True) as ledger:
        return ledger.size


class CachedTokens:
    """``token(user)`` through a real IdP login, once per user; counts the logins."""

    def __init__(self, login: Callable[[str], str]) -> None:
        self._login = login
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self.logins = 0

    def __call__(self, user: str) -> str:
        with self._lock:
            if user not in self._tokens:
                self._tokens[user] = self._login(user)
                self.logins += 1
            return self._tokens[user]

    def source(self, user: str) -> Callable[[], str]:
        """A token source for a gateway acting for ``user``."""
        return lambda: self(user)
