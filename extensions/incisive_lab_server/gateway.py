"""The kernel gateway: the only door out of a sandboxed kernel.

The single-user Jupyter server runs it on its own event loop (tornado), outside every
kernel: an HTTP/1.1 server on a Unix socket (``INCISIVE_GATEWAY_SOCKET``, mode 0600) that
the kernel sandbox binds in. It forwards exactly what :mod:`._gateway_routes` allows —
``GET /gateway/info``, ``GET|POST /broker/<path>``, ``GET|POST /nodes/<name>/<path>`` — to
the destinations of ``INCISIVE_GATEWAY_CONFIG``, adding ``Authorization: Bearer <the
user's access token>``; everything else is refused with a 403 and a sentence. Every
request, forwarded or refused, is an entry (kind ``gateway``) in the gateway's ledger
(``INCISIVE_GATEWAY_LEDGER``, default ``gateway-ledger`` beside the socket), written before
the answer goes back to the kernel.

What the kernel never sees: the access token (taken from the hub, cached here), the
destinations' other headers (``Set-Cookie``, ``Location``...), redirects (not followed).
Bodies stream both ways (a series may be hundreds of MB): nothing is buffered whole.

The server extension calls :func:`start_gateway` when it loads and :func:`stop_gateway` when
the server stops. Tests and other hosts build a :class:`Gateway` directly, with any token
source (a callable).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import getpass
import hashlib
import http.cookiejar
import inspect
import json
import logging
import os
import re
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import tornado.httpserver
import tornado.iostream
import tornado.web

from ._gateway_routes import (
    ConfigError,
    Forward,
    GatewayConfig,
    Info,
    Refusal,
    forward_headers,
    load_config,
    response_headers,
    route,
)
from ._gateway_tokens import HubTokenSource, TokenSource, TokenUnavailable, check_token

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "HubTokenSource",
    "TokenUnavailable",
    "gateway_from_env",
    "start_gateway",
    "stop_gateway",
]

log = logging.getLogger("incisive_lab_server.gateway")

#: Environment variables the gateway reads.
ENV_SOCKET = "INCISIVE_GATEWAY_SOCKET"
ENV_CONFIG = "INCISIVE_GATEWAY_CONFIG"
ENV_LEDGER = "INCISIVE_GATEWAY_LEDGER"
#: The longest Unix socket path Linux takes (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
#: The largest request body a kernel may send (an annotation upload; the node's own limit
#: is 512 MiB).
DEFAULT_MAX_BODY = 520 * 1024 * 1024
#: A refused POST whose declared body is at most this many bytes is answered after the body
#: is read, keeping the connection; a larger one at once, closing it.
_EARLY_BODY = 1 << 20
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class GatewayError(RuntimeError):
    """The gateway cannot start (the sentence names the setting or file)."""


# ---------------------------------------------------------------------------- the socket

def bind_socket(path: str | os.PathLike[str]) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path`` with mode 0600.

    A socket file left by a gateway that is gone (nothing accepts on it) is replaced; a
    socket something still listens on, or any other kind of file, is an error (never
    removed). The parent directory is created (0700) when missing.
    """
    target = os.fspath(path)
    if len(os.fsencode(target)) > MAX_SOCKET_PATH:
        raise GatewayError(f"{ENV_SOCKET}: {target!r} is longer than {MAX_SOCKET_PATH} bytes, the "
                           "limit of a Unix socket path")
    Path(target).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise GatewayError(f"{ENV_SOCKET}: {target} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(target)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # stale: its server is gone
        except OSError as exc:
            raise GatewayError(f"{ENV_SOCKET}: cannot check the existing socket {target}: {exc}") from None
        else:
            raise GatewayError(f"{ENV_SOCKET}: another process listens on {target}; not replacing it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        old = os.umask(0o177)  # the socket file is born 0600: no moment where others may connect
        try:
            sock.bind(target)
        finally:
            os.umask(old)
        os.chmod(target, 0o600)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise GatewayError(f"{ENV_SOCKET}: cannot listen on {target}: {exc}") from None
    return sock


# ---------------------------------------------------------------------------- request bodies

class _BodyPipe:
    """Chunks of a request body from the kernel to the destination, a few at a time
    (back-pressure: the writer waits while the reader is behind; a reader that stopped
    makes further writes no-ops)."""

    def __init__(self, depth: int = 8) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._depth = depth
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        while len(self._chunks) >= self._depth and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if not self._closed:
            self._chunks.append(chunk)
            self._readable.set()

    def end(self) -> None:
        self._eof = True
        self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._chunks.clear()
        self._writable.set()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                while not self._chunks and not self._eof:
                    self._readable.clear()
                    await self._readable.wait()
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._writable.set()
                    yield chunk
                elif self._eof:
                    return
        finally:
            self.close()


# ---------------------------------------------------------------------------- the handler

class _AnyMethod(tuple[str, ...]):
    """Every method reaches :meth:`_GatewayHandler.prepare`, so that every refusal is ledgered
    (tornado would answer an unlisted method 405 on its own)."""

    def __contains__(self, item: object) -> bool:
        return True


def _printable(text: str, limit: int) -> str:
    return _UNSAFE.sub("?", text[:limit])


@tornado.web.stream_request_body
class _GatewayHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = _AnyMethod(("GET", "POST"))

    def initialize(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._forward: Forward | None = None
        self._pipe: _BodyPipe | None = None
        self._upstream: asyncio.Future[httpx.Response] | None = None
        self._started = time.monotonic()
        self._gone = False
        self._purpose = ""
        self._prepared = False
        self._early: tuple[int, Mapping[str, Any], str] | None = None

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.clear_header("Content-Type")

    def compute_etag(self) -> None:
        return None

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def _reply(self, status: int, body: Mapping[str, Any], kind: str) -> None:
        """An answer of the gateway's own; ``X-Incisive-Gateway`` says which kind (``info``,
        ``refused``, ``failed``), so a client can tell it from a destination's.

        Decided in :meth:`prepare`, before the request body is read: a GET, or a POST with a
        small declared body, is answered once the body is in (the connection stays open for
        the next request); anything else at once, closing the connection (tornado must, or
        it would read the whole body), which ``Connection: close`` announces.
        """
        if self._prepared or self._early is not None:
            self._send_reply(status, body, kind)
            return
        length = self.request.headers.get("Content-Length", "0" if self.request.method == "GET" else "")
        small = length.isdigit() and int(length) <= _EARLY_BODY and "Transfer-Encoding" not in self.request.headers
        if self.request.method in ("GET", "POST") and small:
            self._early = (status, body, kind)
            return
        self.set_header("Connection", "close")
        self._send_reply(status, body, kind)

    def _send_reply(self, status: int, body: Mapping[str, Any], kind: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Incisive-Gateway", kind)
        self.finish(json.dumps(body))

    async def _refuse(self, refusal: Refusal, *, destination: str | None = None) -> None:
        details: dict[str, Any] = {"method": _printable(self.request.method or "", 20),
                                   "target": _printable(self.request.uri or "", 500),
                                   "status": refusal.status, "message": refusal.message[:1000]}
        if destination is not None:
            details["destination"] = destination
        try:
            await self.gw.record("refuse", f"gateway:refused/{refusal.reason}", refusal.reason, details,
                                 purpose=self._purpose, allowed=False)
        except Exception:  # the refusal stands whether or not it could be written
            log.exception("the gateway could not ledger a refusal")
        self._reply(refusal.status, refusal.body(), "refused")

    async def prepare(self) -> None:
        req = self.request
        self._purpose = _printable((req.headers.get("X-Purpose") or "").strip(), 200)
        decision = route(req.method or "", req.uri or "", self.gw.config)
        if isinstance(decision, Refusal):
            await self._refuse(decision)
            return
        headers = forward_headers(req.headers.get_all())
        if isinstance(headers, Refusal):
            await self._refuse(headers)
            return
        if isinstance(decision, Info):
            try:
                await self.gw.record("info", "gateway:info", "gateway", {"method": "GET", "status": 200},
                                     purpose=self._purpose)
            except Exception as exc:
                log.exception("the gateway could not ledger a request")
                self._reply(503, {"error": f"the gateway's ledger cannot be written ({exc}); "
                                           "nothing is answered unledgered"}, "failed")
                return
            self._reply(200, self.gw.config.info(self.gw.user), "info")
            return
        self._forward = decision
        streaming = False
        if req.method == "POST":
            length = req.headers.get("Content-Length")
            if length is not None and "Transfer-Encoding" in req.headers:
                await self._refuse(Refusal("bad-length", "a request with both Content-Length and "
                                                         "Transfer-Encoding is ambiguous"))
                return
            if length is not None:
                if not length.strip().isdigit():
                    await self._refuse(Refusal("bad-length", "the Content-Length header is not a number"))
                    return
                headers["Content-Length"] = str(int(length))
            streaming = int(length) > 0 if length is not None else "Transfer-Encoding" in req.headers
        try:
            token = await self.gw.token()
        except TokenUnavailable as exc:
            await self._refuse(Refusal("no-token", f"the gateway has no access token for you: {exc}", 502),
                               destination=decision.destination)
            return
        body: _BodyPipe | bytes = b""
        if streaming:
            self._pipe = body = _BodyPipe()
        self._upstream = asyncio.ensure_future(self.gw.send(decision, headers, token, body))

    async def data_received(self, chunk: bytes) -> None:
        if self._pipe is not None:
            await self._pipe.write(chunk)

    def on_connection_close(self) -> None:
        self._gone = True
        if self._pipe is not None:
            self._pipe.close()
            self._pipe.end()
        if self._upstream is not None and not self._upstream.done():
            self._upstream.cancel()

    async def get(self) -> None:
        self._prepared = True
        if self._early is not None:
            self._send_reply(*self._early)
            return
        await self._relay()

    async def post(self) -> None:
        self._prepared = True
        if self._early is not None:
            self._send_reply(*self._early)
            return
        if self._pipe is not None:
            self._pipe.end()
        await self._relay()

    async def _failed(self, fwd: Forward, status: int, message: str) -> None:
        details = {"destination": fwd.destination, "method": fwd.method, "path": fwd.path,
                   "status": status, "elapsed_ms": self._elapsed_ms(), "message": message}
        if fwd.query:
            details["query_sha256"] = hashlib.sha256(fwd.query.encode()).hexdigest()
        try:
            await self.gw.record("forward", fwd.resource, "forwarded", details, purpose=self._purpose)
        except Exception:
            log.exception("the gateway could not ledger a failed forward")
        self._reply(status, {"error": message}, "failed")

    async def _relay(self) -> None:
        fwd, upstream = self._forward, self._upstream
        assert fwd is not None and upstream is not None
        try:
            response = await upstream
        except asyncio.CancelledError:
            if self._gone:
                return  # the kernel went away before the answer came
            raise
        except httpx.TimeoutException:
            await self._failed(fwd, 504, f"{fwd.destination} did not answer within "
                                         f"{self.gw.config.timeout:g} s")
            return
        except httpx.HTTPError as exc:
            await self._failed(fwd, 502, f"cannot reach {fwd.destination}: {type(exc).__name__}: {exc}")
            return
        try:
            await self._send_back(fwd, response)
        finally:
            await response.aclose()

    async def _send_back(self, fwd: Forward, response: httpx.Response) -> None:
        status = response.status_code
        if status == 401:
            self.gw.token_refused()
        headers = response_headers(response.headers.multi_items())
        encoded = response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
        no_body = status < 200 or status in (204, 304)
        if encoded or no_body:  # the body goes back decoded (or not at all): its length differs
            headers = [(n, v) for n, v in headers if n != "Content-Length"]
        declared = next((v for n, v in headers if n == "Content-Length"), None)
        details: dict[str, Any] = {"destination": fwd.destination, "method": fwd.method, "path": fwd.path,
                                   "status": status, "elapsed_ms": self._elapsed_ms()}
        if declared is not None and declared.strip().isdigit():
            details["bytes"] = int(declared)
        if fwd.query:
            details["query_sha256"] = hashlib.sha256(fwd.query.encode()).hexdigest()
        try:
            await self.gw.record("forward", fwd.resource, "forwarded", details, purpose=self._purpose)
        except Exception as exc:
            log.exception("the gateway could not ledger a forwarded request")
            self._reply(503, {"error": f"the gateway's ledger cannot be written ({exc}); the answer of "
                                       f"{fwd.destination} is not passed on unledgered"}, "failed")
            return
        reason = response.reason_phrase if re.fullmatch(r"[ -~]{1,80}", response.reason_phrase or "") else None
        self.set_status(status, reason)
        for name, value in headers:
            self.add_header(name, value)
        if no_body:
            return
        # as the bytes arrive (a chunk size would hold them back until it fills)
        chunks = response.aiter_bytes() if encoded else response.aiter_raw()
        try:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return  # the kernel stopped reading
        except httpx.HTTPError as exc:
            # headers are out: cut the connection, so the kernel sees a broken answer rather
            # than a complete-looking short one
            log.warning("%s broke off its answer to %s %s: %s: %s", fwd.destination, fwd.method, fwd.path,
                        type(exc).__name__, exc)
            assert self.request.connection is not None
            self.request.connection.close()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- the gateway

def _actor(user: str) -> str:
    return "user:" + _printable(user, 200)


class Gateway:
    """An HTTP server on a Unix socket forwarding a kernel's requests (see the module doc).

    Parameters
    ----------
    config
        The destinations (:func:`._gateway_routes.parse_config`).
    socket_path
        Where to listen (mode 0600; a stale socket there is replaced, a live one is an error).
    token_source
        A callable giving the user's access token (or an awaitable of it), e.g. a
        :class:`HubTokenSource`. A plain function is run in a thread, never on the loop.
    user
        The user the gateway acts for (the hub user name): the ledger's actor and
        ``/gateway/info``'s ``user``.
    ledger_dir
        Where the gateway's ledger lives (:meth:`incisive_lab.ledger.Ledger.open`).
    transport
        An httpx async transport to the destinations (tests); default: the network.
    max_body_size
        The largest request body a kernel may send, bytes.

    Call :meth:`start` on the thread of the event loop it is to run on; :meth:`stop` (or
    ``await`` :meth:`aclose`) to stop.
    """

    def __init__(self, config: GatewayConfig, *, socket_path: str | os.PathLike[str],
                 token_source: TokenSource, user: str, ledger_dir: str | os.PathLike[str],
                 transport: httpx.AsyncBaseTransport | None = None,
                 max_body_size: int = DEFAULT_MAX_BODY) -> None:
        if not user:
            raise GatewayError("user: the gateway must know whom it acts for (JUPYTERHUB_USER)")
        self.config = config
        self.socket_path = os.fspath(socket_path)
        self.user = user
        self.actor = _actor(user)
        self.ledger_dir = Path(ledger_dir)
        self._token_source = token_source
        self._transport = transport
        self._max_body_size = max_body_size
        self._server: tornado.httpserver.HTTPServer | None = None
        self._socket: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None
        self._client: httpx.AsyncClient | None = None
        self._ledger: Any = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Gateway({self.socket_path!r}, user={self.user!r}, nodes={sorted(self.config.nodes)})"

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Open the ledger, listen on the socket and serve on the current event loop."""
        from incisive_lab.ledger import Ledger, LedgerError

        if self._server is not None:
            raise GatewayError("the gateway is already started")
        origin = "incisive-lab.local/gateway/" + re.sub(r"[^A-Za-z0-9._@-]", "_", self.user)[:100]
        try:
            self.ledger_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._ledger = Ledger.open(self.ledger_dir, origin=origin)
        except (LedgerError, OSError) as exc:
            raise GatewayError(f"{ENV_LEDGER}: cannot open the gateway's ledger at {self.ledger_dir}: "
                               f"{exc}") from None
        try:
            self._socket = bind_socket(self.socket_path)
        except BaseException:
            self._ledger.close()
            self._ledger = None
            raise
        st = os.stat(self.socket_path)
        self._socket_id = (st.st_dev, st.st_ino)
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-ledger")
        timeout = httpx.Timeout(self.config.timeout, connect=self.config.connect_timeout)
        # no cookie jar: a cookie one destination sets must never travel with later requests
        no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx.AsyncClient(transport=self._transport, timeout=timeout, follow_redirects=False,
                                         trust_env=False, cookies=no_cookies,
                                         headers={"User-Agent": "incisive-lab-gateway"})
        app = tornado.web.Application([(r".*", _GatewayHandler, {"gateway": self})],
                                      log_function=self._log_request, compress_response=False)
        self._server = tornado.httpserver.HTTPServer(app, max_body_size=self._max_body_size,
                                                     idle_connection_timeout=600)
        self._server.add_socket(self._socket)
        log.info("the gateway listens on %s for %s (broker: %s; nodes: %s)", self.socket_path, self.user,
                 "yes" if self.config.broker else "no", ", ".join(sorted(self.config.nodes)) or "none")

    @staticmethod
    def _log_request(handler: tornado.web.RequestHandler) -> None:
        log.debug("%s %s -> %d", handler.request.method, _printable(handler.request.uri or "", 200),
                  handler.get_status())

    def _unlink_socket(self) -> None:
        """Remove the socket file if it is still the one this gateway made."""
        if self._socket_id is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.socket_path)
        self._socket_id = None

    def stop_listening(self) -> tornado.httpserver.HTTPServer | None:
        """Stop accepting connections and remove the socket file; return the server (if it ran)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._unlink_socket()
        return server

    def stop(self) -> None:
        """Stop listening and remove the socket file; open connections, the client and the
        ledger close on the loop if it runs (as :meth:`aclose`), else at once. Safe twice."""
        server = self.stop_listening()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and server is not None:
            self._closing = loop.create_task(self._close_rest(server))
        else:
            self._close_sync()

    async def aclose(self) -> None:
        """Stop; close open connections, the client, then the ledger."""
        server = self.stop_listening()
        if server is not None:
            await self._close_rest(server)
        else:
            await asyncio.get_running_loop().run_in_executor(None, self._close_sync)

    async def _close_rest(self, server: tornado.httpserver.HTTPServer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.close_all_connections(), 10)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self._close_sync)

    def _close_sync(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger.close()

    # ------------------------------------------------------------------ work
    async def token(self) -> str:
        """The user's access token from the token source (never on the loop if it blocks)."""
        source = self._token_source
        try:
            if inspect.iscoroutinefunction(source) or inspect.iscoroutinefunction(
                    getattr(source, "__call__", None)):  # noqa: B004 (a callable object's method)
                value: Any = await source()  # type: ignore[misc]
            else:
                value = await asyncio.get_running_loop().run_in_executor(None, source)
                if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                    value = await value
        except TokenUnavailable:
            raise
        except Exception as exc:
            raise TokenUnavailable(f"the token source failed: {type(exc).__name__}: {exc}") from None
        return check_token(value, "the token source")

    def token_refused(self) -> None:
        """A destination refused the token (401): forget a cached one."""
        invalidate: Callable[[], None] | None = getattr(self._token_source, "invalidate", None)
        if invalidate is not None:
            invalidate()

    async def send(self, fwd: Forward, headers: Mapping[str, str], token: str,
                   body: _BodyPipe | bytes) -> httpx.Response:
        """Send ``fwd`` on with the user's token; the response is streamed (close it)."""
        client = self._client
        if client is None:
            raise httpx.ConnectError("the gateway is stopping")
        sent = {**headers, "Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
        request = client.build_request(fwd.method, fwd.url, headers=sent, content=body)
        return await client.send(request, stream=True)

    async def record(self, action: str, resource: str, reason: str, details: Mapping[str, Any], *,
                     purpose: str = "", allowed: bool = True) -> None:
        """Append one ``gateway`` entry to the ledger (off the loop); raises if it cannot."""
        from incisive_lab.ledger import Event, Outcome

        ledger, writer = self._ledger, self._writer
        if ledger is None or writer is None:
            raise GatewayError("the gateway's ledger is closed")
        event = Event(kind="gateway", actor=self.actor, action=action, resource=_printable(resource, 1000),
                      purpose=purpose or None, details=dict(details),
                      outcome=Outcome.allow(reason) if allowed else Outcome.deny(reason))
        await asyncio.get_running_loop().run_in_executor(writer, ledger.append, event)


# ---------------------------------------------------------------------------- the extension's hooks

def gateway_from_env(environ: Mapping[str, str] | None = None, *,
                     token_source: TokenSource | None = None) -> Gateway:
    """A :class:`Gateway` from ``INCISIVE_GATEWAY_SOCKET``, ``INCISIVE_GATEWAY_CONFIG``,
    ``INCISIVE_GATEWAY_LEDGER`` (default: ``gateway-ledger`` beside the socket),
    ``JUPYTERHUB_USER`` and — for ``"token": "hub"`` — ``JUPYTERHUB_API_URL`` and
    ``JUPYTERHUB_API_TOKEN``.

    Raises
    ------
    GatewayError
        A variable is missing or the configuration is malformed (the message names it).
    """
    env = os.environ if environ is None else environ
    missing = [k for k in (ENV_SOCKET, ENV_CONFIG) if not env.get(k)]
    if missing:
        raise GatewayError(f"{' and '.join(missing)} not set")
    try:
        config = load_config(env[ENV_CONFIG])
    except ConfigError as exc:
        raise GatewayError(f"{ENV_CONFIG}: {exc}") from None
    socket_path = env[ENV_SOCKET]
    if not os.path.isabs(socket_path):
        raise GatewayError(f"{ENV_SOCKET}: {socket_path!r} must be an absolute path")
    ledger_dir = env.get(ENV_LEDGER) or os.path.join(os.path.dirname(socket_path), "gateway-ledger")
    if token_source is None:
        try:
            token_source = HubTokenSource.from_env(dict(env))
        except (TokenUnavailable, ValueError) as exc:
            raise GatewayError(str(exc)) from None
    user = env.get("JUPYTERHUB_USER") or getpass.getuser()
    return Gateway(config, socket_path=socket_path, token_source=token_source, user=user,
                   ledger_dir=ledger_dir)


_running: Gateway | None = None


def start_gateway(serverapp: Any = None) -> Gateway | None:
    """Start the gateway on the Jupyter server's event loop (called when the server
    extension loads).

    Missing ``INCISIVE_GATEWAY_SOCKET``/``INCISIVE_GATEWAY_CONFIG`` or any problem
    (malformed configuration, no token source, a socket path in use) leaves the gateway
    off and says so in the server's log: kernels then have no door out, never an open
    one. Never raises, so the rest of the extension (download refusal) still loads.
    """
    global _running
    logger = getattr(serverapp, "log", None) or log
    if _running is not None:
        logger.warning("INCISIVE gateway: already running on %s", _running.socket_path)
        return _running
    missing = [k for k in (ENV_SOCKET, ENV_CONFIG) if not os.environ.get(k)]
    if missing:
        logger.warning("INCISIVE gateway disabled: %s not set. Kernels have no door to the broker or the "
                       "nodes.", " and ".join(missing))
        return None
    try:
        gateway = gateway_from_env()
        gateway.start()
    except (GatewayError, ConfigError) as exc:
        logger.error("INCISIVE gateway disabled: %s. Kernels have no door to the broker or the nodes.", exc)
        return None
    except Exception:
        logger.exception("INCISIVE gateway disabled: it failed to start. Kernels have no door to the "
                         "broker or the nodes.")
        return None
    _running = gateway
    atexit.register(gateway._unlink_socket)
    web_app = getattr(serverapp, "web_app", None)
    if web_app is not None:
        web_app.settings["incisive_gateway"] = gateway
    logger.info("INCISIVE gateway: listening on %s for %s", gateway.socket_path, gateway.user)
    return gateway


def stop_gateway() -> None:
    """Stop the gateway started by :func:`start_gateway` (no-op if none)."""
    global _running
    gateway, _running = _running, None
    if gateway is not None:
        gateway.stop()
