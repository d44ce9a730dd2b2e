"""The gateway as a server on its Unix socket, against named upstream doubles for the ways a
destination behaves (streams slowly, redirects, sets cookies, compresses, never answers,
is not there) and a hub double for the token: the socket's mode and its stale or live
predecessors, bodies streamed both ways, headers filtered, timeouts, a missing token, a
broken ledger, and the extension's start and stop from the environment.

The gateway against the real broker and nodes is in ``tests/client/test_workbench.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from incisive_lab_server._gateway_routes import parse_config
from incisive_lab_server._gateway_tokens import HubTokenSource, TokenUnavailable
from incisive_lab_server.gateway import (
    Gateway,
    GatewayError,
    bind_socket,
    start_gateway,
    stop_gateway,
)
from tests._support.node_server import serve_app
from tests._support.orthanc import free_port
from tests.broker.doubles import dead_url
from tests.client.doubles import TOKEN, Hub, Upstream
from tests.client.support import GatewayThread, gateway_events, ledger_size, short_dir


class Setup:
    def __init__(self, gateway: GatewayThread, upstream: Upstream, run: Path) -> None:
        self.gateway, self.upstream, self.run = gateway, upstream, run
        self.client = httpx.Client(transport=httpx.HTTPTransport(uds=gateway.socket_path), base_url="http://gateway",
                                   timeout=30)

    @property
    def ledger(self) -> Path:
        return self.run / "ledger"


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    double = Upstream()
    port = free_port()
    with serve_app(double.app(), port, "the upstream double") as url:
        yield double, url


@pytest.fixture(scope="module")
def setup(upstream: tuple[Upstream, str]) -> Iterator[Setup]:
    double, url = upstream
    config = parse_config({"broker": url, "nodes": {"hospital-a": url, "gone": dead_url()}, "timeout": 1})
    with short_dir() as run:
        gw = Gateway(config, socket_path=str(run / "gateway.sock"), token_source=lambda: TOKEN, user="rita",
                     ledger_dir=run / "ledger")
        with GatewayThread(gw) as thread:
            s = Setup(thread, double, run)
            yield s
            s.client.close()


# ---------------------------------------------------------------------------- the socket

def test_the_socket_is_private_to_the_user(setup: Setup) -> None:
    mode = os.stat(setup.gateway.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_not() -> None:
    with short_dir() as run:
        path = str(run / "gateway.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays, nothing listens
        sock = bind_socket(path)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with pytest.raises(GatewayError, match="another process listens on"):
                bind_socket(path)
        finally:
            sock.close()
        os.unlink(path)
        Path(path).write_text("not a socket")
        with pytest.raises(GatewayError, match="exists and is not a socket; not replacing it"):
            bind_socket(path)
        assert Path(path).read_text() == "not a socket"
        with pytest.raises(GatewayError, match="longer than 107 bytes"):
            bind_socket(str(run / ("x" * 120)))


def test_stopping_removes_only_its_own_socket(upstream: tuple[Upstream, str]) -> None:
    with short_dir() as run:
        path = run / "gateway.sock"
        gw = Gateway(parse_config({"nodes": {}}), socket_path=str(path), token_source=lambda: TOKEN, user="rita",
                     ledger_dir=run / "ledger")
        with GatewayThread(gw):
            assert path.exists()
        assert not path.exists()
        # a socket someone else put there after us is left alone
        gw = Gateway(parse_config({"nodes": {}}), socket_path=str(path), token_source=lambda: TOKEN, user="rita",
                     ledger_dir=run / "ledger")
        thread = GatewayThread(gw).start()
        os.unlink(path)
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(path))
        try:
            thread.stop()
            assert path.exists()
        finally:
            other.close()


# ---------------------------------------------------------------------------- streaming

def test_answers_stream_through_without_waiting_for_the_end(setup: Setup) -> None:
    setup.upstream.release.clear()
    with setup.client.stream("GET", "/nodes/hospital-a/trickle") as r:
        chunks = r.iter_raw()
        assert next(chunks) == b"first"  # arrives while the destination still holds the rest
        setup.upstream.release.set()
        assert b"".join(chunks) == b"-rest"


def test_big_answers_and_request_bodies_stream_intact(setup: Setup) -> None:
    digest, size = hashlib.sha256(), 0
    with setup.client.stream("GET", "/nodes/hospital-a/big", params={"n": 32}) as r:
        assert r.headers["content-length"] == str(32 << 20)
        for chunk in r.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    expected = hashlib.sha256(b"".join(bytes([i % 256]) * 65536 for i in range(32 * 16))).hexdigest()
    assert (size, digest.hexdigest()) == (32 << 20, expected)
    payload = os.urandom(3 << 20)

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]

    for content in (payload, chunked()):
        seen = setup.client.post("/broker/echo", content=content).json()
        assert (seen["bytes"], seen["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())


def test_a_kernel_that_stops_reading_does_not_hurt_the_gateway(setup: Setup) -> None:
    for _ in range(3):
        with httpx.Client(transport=httpx.HTTPTransport(uds=setup.gateway.socket_path), timeout=30) as c, \
                c.stream("GET", "http://gateway/nodes/hospital-a/big", params={"n": 64}) as r:
            next(r.iter_raw())
        # closed mid-answer
    assert setup.client.get("/gateway/info").status_code == 200


# ---------------------------------------------------------------------------- headers and answers

def test_headers_are_filtered_both_ways_and_redirects_not_followed(setup: Setup) -> None:
    r = setup.client.get("/nodes/hospital-a/echo?x=1&y=%20", headers={
        "Authorization": "Bearer kernel", "Cookie": "c=1", "X-Purpose": "ai-development", "Accept": "application/json",
        "X-Forwarded-For": "10.0.0.1", "Range": "bytes=0-1"})
    seen = r.json()
    sent = seen["headers"]
    assert sent["authorization"] == f"Bearer {TOKEN}" and "cookie" not in sent and "x-forwarded-for" not in sent
    assert (sent["x-purpose"], sent["accept"], sent["range"]) == ("ai-development", "application/json", "bytes=0-1")
    assert seen["query"] == "x=1&y=%20"
    assert "set-cookie" not in r.headers and "x-token" not in r.headers and TOKEN not in str(r.headers)
    r = setup.client.get("/nodes/hospital-a/redirect")
    assert r.status_code == 302 and "location" not in r.headers and "set-cookie" not in r.headers
    r = setup.client.get("/nodes/hospital-a/unauthorized")
    assert r.status_code == 401 and "www-authenticate" not in r.headers


def test_a_compressed_answer_comes_back_decoded(setup: Setup) -> None:
    r = setup.client.get("/nodes/hospital-a/gzip", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and r.content == b"x" * 10000 and "content-encoding" not in r.headers
    sent = setup.upstream.requests  # the gateway asked for no compression in the first place
    assert all(req["headers"].get("accept-encoding") == "identity" for req in sent)


def test_a_silent_or_missing_destination_is_an_answer_with_a_sentence_and_ledgered(setup: Setup) -> None:
    before = ledger_size(setup.ledger)
    r = setup.client.get("/nodes/hospital-a/silent")
    assert r.status_code == 504 and r.json()["error"] == "hospital-a did not answer within 1 s"
    assert r.headers["x-incisive-gateway"] == "failed"
    r = setup.client.get("/nodes/gone/dicomweb/studies")
    assert r.status_code == 502 and r.json()["error"].startswith("cannot reach gone: ConnectError")
    events = gateway_events(setup.ledger, before)
    assert [(e.action, e.resource, e.details["status"]) for e in events] == [
        ("forward", "node:hospital-a/silent", 504), ("forward", "node:gone/dicomweb/studies", 502)]


def test_every_request_is_ledgered_before_its_answer(setup: Setup) -> None:
    before = ledger_size(setup.ledger)
    setup.client.get("/gateway/info", headers={"X-Purpose": "education"})
    setup.client.post("/broker/echo?q=lung", json={"a": 1}, headers={"X-Purpose": "ai-development; project=x"})
    setup.client.get("/nodes/nowhere/x")
    setup.client.request("PUT", "/broker/echo", content=b"x")
    info, forward, unknown, put = gateway_events(setup.ledger, before)
    assert (info.action, info.resource, info.purpose, info.outcome.decision) == (
        "info", "gateway:info", "education", "allowed")
    assert (forward.action, forward.resource, forward.purpose, forward.details["status"]) == (
        "forward", "broker:echo", "ai-development; project=x", 200)
    assert forward.details["query_sha256"] == hashlib.sha256(b"q=lung").hexdigest()
    assert (unknown.action, unknown.outcome.reason, unknown.details["target"]) == ("refuse", "unknown-node",
                                                                                   "/nodes/nowhere/x")
    assert (put.action, put.outcome.reason, put.details["method"]) == ("refuse", "method", "PUT")
    assert {e.actor for e in (info, forward, unknown, put)} == {"user:rita"}


def _raw(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("request_bytes", [
    # both lengths: which one ends the body is ambiguous (request smuggling)
    b"POST /broker/echo HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /nodes/hospital-a/echo HTTP/1.1\r\nHost: g\r\n\r\n",
    b"POST /broker/echo HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: 4, 5\r\n\r\nabcd",
    b"POST /broker/echo HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: -1\r\n\r\n",
    b"GET /broker/echo HTTP/1.1\r\nHost: g\r\nConnection: close\r\nX-Purpose: a\r\nX-Purpose: b\r\n\r\n",
])
def test_ambiguous_requests_are_refused_before_anything_is_sent_on(setup: Setup, request_bytes: bytes) -> None:
    seen = len(setup.upstream.requests)
    answer = _raw(setup.gateway.socket_path, request_bytes)
    status = answer.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 400 Bad Request"), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, "no second (smuggled) request was answered"
    assert len(setup.upstream.requests) == seen, "nothing reached the destination"


def test_a_refused_big_upload_is_answered_at_once_and_the_connection_closed(setup: Setup) -> None:
    body = b"x" * (5 << 20)
    r = setup.client.post("/nodes/nowhere/dicomweb/studies", content=body)
    assert r.status_code == 403 and r.headers["connection"] == "close"
    assert setup.client.get("/gateway/info").status_code == 200  # a new connection


# ---------------------------------------------------------------------------- tokens

def _serve(gateway: Gateway) -> GatewayThread:
    return GatewayThread(gateway).start()


def test_without_a_token_nothing_is_forwarded(upstream: tuple[Upstream, str]) -> None:
    double, url = upstream

    def broken() -> str:
        raise TokenUnavailable("the hub answered 403")

    for source, sentence in ((broken, "the hub answered 403"), (lambda: "two words", "characters a bearer token"),
                             (lambda: None, "gave no access token")):
        with short_dir() as run:
            gw = Gateway(parse_config({"nodes": {"hospital-a": url}}), socket_path=str(run / "g.sock"),
                         token_source=source, user="rita", ledger_dir=run / "ledger")  # type: ignore[arg-type]
            thread = _serve(gw)
            try:
                seen = len(double.requests)
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(run / "g.sock"))) as c:
                    r = c.get("http://gateway/nodes/hospital-a/echo")
                assert r.status_code == 502 and sentence in r.json()["error"]
                assert len(double.requests) == seen, "nothing reached the destination"
                [event] = gateway_events(run / "ledger")
                assert (event.action, event.outcome.reason, event.details["destination"]) == (
                    "refuse", "no-token", "hospital-a")
            finally:
                thread.stop()


def test_an_async_token_source_and_a_refused_token_is_forgotten(upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    calls: list[str] = []

    class Source:
        async def __call__(self) -> str:
            calls.append("call")
            return TOKEN

        def invalidate(self) -> None:
            calls.append("invalidate")

    with short_dir() as run:
        gw = Gateway(parse_config({"nodes": {"hospital-a": url}}), socket_path=str(run / "g.sock"),
                     token_source=Source(), user="rita", ledger_dir=run / "ledger")
        thread = _serve(gw)
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(run / "g.sock"))) as c:
                assert c.get("http://gateway/nodes/hospital-a/echo").json()["headers"]["authorization"] == \
                    f"Bearer {TOKEN}"
                assert c.get("http://gateway/nodes/hospital-a/unauthorized").status_code == 401
        finally:
            thread.stop()
    assert calls == ["call", "call", "invalidate"]


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[Hub, str]]:
    double = Hub("server-secret")
    port = free_port()
    with serve_app(double.app(), port, "the hub double") as url:
        yield double, url + "/hub/api"


def test_the_hub_token_is_cached_until_a_minute_before_it_expires(hub: tuple[Hub, str]) -> None:
    double, api = hub
    double.calls, double.lifetime = 0, 600.0
    now = [time.time()]
    source = HubTokenSource(api, "server-secret", clock=lambda: now[0])
    first = source.token()
    assert source.token() == first and asyncio.run(source()) == first and double.calls == 1
    now[0] += 600 - 61
    assert source.token() == first and double.calls == 1
    now[0] += 2  # within the minute before expiry
    assert source.token() != first and double.calls == 2
    source.invalidate()
    source.token()
    assert double.calls == 3
    assert "server-secret" not in repr(source)


def test_concurrent_callers_share_one_request_to_the_hub(hub: tuple[Hub, str]) -> None:
    double, api = hub
    double.calls, double.lifetime = 0, 600.0
    source = HubTokenSource(api, "server-secret")

    async def many() -> set[str]:
        return set(await asyncio.gather(*(source() for _ in range(20))))

    assert len(asyncio.run(many())) == 1 and double.calls == 1
    source.invalidate()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(source.token())) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and double.calls == 2
    # a token that expires within the margin is used once, not kept
    double.lifetime = 30.0
    source.invalidate()
    source.token()
    source.token()
    assert double.calls == 4


@pytest.mark.parametrize(("setup_hub", "sentence"), [
    (lambda h: setattr(h, "api_token", "another"), "the hub answered 403"),
    (lambda h: setattr(h, "body", b"<html>"), "is not JSON"),
    (lambda h: setattr(h, "body", json.dumps({"access_token": TOKEN}).encode()), "no numeric expires_at"),
    (lambda h: setattr(h, "body", json.dumps({"expires_at": 1}).encode()), "gave no access token"),
])
def test_a_hub_that_gives_no_token_is_an_error_with_a_sentence(
        hub: tuple[Hub, str], setup_hub: Callable[[Hub], None], sentence: str) -> None:
    double, api = hub
    saved = (double.api_token, double.body, double.status)
    setup_hub(double)
    try:
        with pytest.raises(TokenUnavailable, match=sentence):
            HubTokenSource(api, "server-secret").token()
        with pytest.raises(TokenUnavailable, match=sentence):
            asyncio.run(HubTokenSource(api, "server-secret")())
    finally:
        double.api_token, double.body, double.status = saved
    with pytest.raises(TokenUnavailable, match="cannot reach the hub"):
        HubTokenSource(dead_url() + "/hub/api", "server-secret", timeout=2).token()
    with pytest.raises(TokenUnavailable, match="JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN not set"):
        HubTokenSource.from_env({})


# ---------------------------------------------------------------------------- the ledger

def test_a_ledger_that_cannot_be_written_stops_answers_not_refusals(upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    with short_dir() as run:
        gw = Gateway(parse_config({"nodes": {"hospital-a": url}}), socket_path=str(run / "g.sock"),
                     token_source=lambda: TOKEN, user="rita", ledger_dir=run / "ledger")
        thread = _serve(gw)
        try:
            thread.call(lambda: gw._ledger.close())
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(run / "g.sock"))) as c:
                r = c.get("http://gateway/nodes/hospital-a/echo")
                assert r.status_code == 503 and "not passed on unledgered" in r.json()["error"]
                assert c.get("http://gateway/gateway/info").status_code == 503
                assert c.get("http://gateway/nodes/x/y").status_code == 403
        finally:
            thread.stop()


# ---------------------------------------------------------------------------- the extension's hooks

def _start_in_loop(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                   caplog: pytest.LogCaptureFixture) -> tuple[Any, SimpleNamespace, asyncio.AbstractEventLoop,
                                                              threading.Thread]:
    for key in ("INCISIVE_GATEWAY_SOCKET", "INCISIVE_GATEWAY_CONFIG", "INCISIVE_GATEWAY_LEDGER",
                "JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    serverapp = SimpleNamespace(log=logging.getLogger("test.serverapp"), web_app=SimpleNamespace(settings={}))
    loop = asyncio.new_event_loop()
    result: list[Any] = []
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        result.append(start_gateway(serverapp))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    return result[0], serverapp, loop, thread


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    async def stop() -> None:
        stop_gateway()
        await asyncio.sleep(0.2)  # the rest closes on the loop

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def test_the_extension_hook_without_settings_leaves_the_gateway_off(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        gw, _, loop, thread = _start_in_loop({}, monkeypatch, caplog)
    _stop_loop(loop, thread)
    assert gw is None
    assert "INCISIVE gateway disabled: INCISIVE_GATEWAY_SOCKET and INCISIVE_GATEWAY_CONFIG not set" in caplog.text
    assert "no door" in caplog.text


def test_the_extension_hook_with_a_bad_configuration_leaves_the_gateway_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"nodes": {"a": "ftp://127.0.0.1/"}}))
    with short_dir() as run, caplog.at_level(logging.WARNING):
        gw, _, loop, thread = _start_in_loop({"INCISIVE_GATEWAY_SOCKET": str(run / "g.sock"),
                                              "INCISIVE_GATEWAY_CONFIG": str(config),
                                              "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api",
                                              "JUPYTERHUB_API_TOKEN": "x"}, monkeypatch, caplog)
        _stop_loop(loop, thread)
        assert gw is None and not (run / "g.sock").exists()
    assert "gateway.json: nodes.a" in caplog.text and "only http:// and https://" in caplog.text


def test_the_extension_hook_starts_and_stops_the_gateway_from_the_environment(
        hub: tuple[Hub, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    double, api = hub
    double.calls, double.lifetime = 0, 600.0
    _, url = upstream
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"broker": url, "nodes": {"hospital-a": url}, "token": "hub"}))
    with short_dir() as run:
        sock = run / "gateway.sock"
        gw, serverapp, loop, thread = _start_in_loop({
            "INCISIVE_GATEWAY_SOCKET": str(sock), "INCISIVE_GATEWAY_CONFIG": str(config),
            "JUPYTERHUB_API_URL": api, "JUPYTERHUB_API_TOKEN": "server-secret", "JUPYTERHUB_USER": "rita"},
            monkeypatch, caplog)
        try:
            assert gw is not None and serverapp.web_app.settings["incisive_gateway"] is gw
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
                assert c.get("http://gateway/gateway/info").json() == {
                    "user": "rita", "broker": True, "nodes": ["hospital-a"]}
                sent = c.get("http://gateway/broker/echo").json()["headers"]["authorization"]
            assert sent == f"Bearer {TOKEN}1" and double.calls == 1
            assert (run / "gateway-ledger" / "ledger" / "ledger.sqlite").exists(), "the ledger sits beside the socket"
        finally:
            _stop_loop(loop, thread)
        assert not sock.exists()
