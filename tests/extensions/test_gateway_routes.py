"""The gateway's rules without a server: the destinations file, the routing of request
targets (traversal, encodings, absolute forms, unknown nodes) and the header allow-lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from incisive_lab_server._gateway_routes import (
    ConfigError,
    Forward,
    Info,
    Refusal,
    forward_headers,
    load_config,
    parse_config,
    response_headers,
    route,
)

CONFIG = parse_config({"broker": "http://127.0.0.1:8090", "token": "hub",
                       "nodes": {"hospital-a": "http://127.0.0.1:8081/", "hospital-b": "https://node-b.example.org/base"}})


def forward(method: str, target: str) -> Forward:
    decision = route(method, target, CONFIG)
    assert isinstance(decision, Forward), decision
    return decision


def refused(method: str, target: str) -> Refusal:
    decision = route(method, target, CONFIG)
    assert isinstance(decision, Refusal), f"{method} {target} was not refused: {decision}"
    assert decision.status == 403 and decision.message
    return decision


# ---------------------------------------------------------------------------- configuration

def test_the_configuration_normalises_base_urls() -> None:
    assert CONFIG.broker == "http://127.0.0.1:8090/"
    assert dict(CONFIG.nodes) == {"hospital-a": "http://127.0.0.1:8081/",
                                  "hospital-b": "https://node-b.example.org/base/"}
    assert CONFIG.info("rita") == {"user": "rita", "broker": True, "nodes": ["hospital-a", "hospital-b"]}
    no_broker = parse_config({"nodes": {}})
    assert no_broker.broker is None and no_broker.info("rita")["broker"] is False
    assert parse_config({"nodes": {}, "timeout": 5, "connect_timeout": 1.5}).timeout == 5.0


@pytest.mark.parametrize(("doc", "names"), [
    ([], "JSON object"),
    ({"broker": "http://127.0.0.1:1/"}, "nodes: required"),
    ({"nodes": {}, "brokr": "http://127.0.0.1:1/"}, "brokr: unknown key"),
    ({"nodes": {"a": "ftp://127.0.0.1/"}}, "nodes.a"),
    ({"nodes": {"a": "file:///etc/passwd"}}, "only http:// and https://"),
    ({"nodes": {"a": "http://node-a.example.org/"}}, "must be https"),
    ({"nodes": {"a": "https://user:pw@node-a.example.org/"}}, "credentials"),
    ({"nodes": {"a": "https://node-a.example.org/?x=1"}}, "no query"),
    ({"nodes": {"a": "https:///nohost"}}, "names no host"),
    ({"nodes": {"a": "http://127.0.0.1:99999/"}}, "not a valid URL"),
    ({"nodes": {"A": "http://127.0.0.1:1/"}}, "'A' is not a node name"),
    ({"nodes": {"../x": "http://127.0.0.1:1/"}}, "is not a node name"),
    ({"nodes": {"": "http://127.0.0.1:1/"}}, "is not a node name"),
    ({"nodes": []}, "nodes: must be an object"),
    ({"nodes": {}, "token": "static"}, "token: must be 'hub'"),
    ({"nodes": {}, "timeout": 0}, "timeout: must be more than 0"),
    ({"nodes": {}, "timeout": True}, "timeout: must be a number"),
    ({"broker": 5, "nodes": {}}, "broker: must be a URL string"),
])
def test_a_malformed_configuration_is_refused_naming_the_key(doc: Any, names: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(doc)
    assert names in str(err.value)


def test_loopback_may_be_plain_http_in_every_spelling() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "[::1]", "localhost"):
        assert parse_config({"nodes": {"a": f"http://{host}:9/"}}).nodes["a"] == f"http://{host}:9/"


def test_load_config_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "gateway.json"
    good.write_text(json.dumps({"broker": "http://127.0.0.1:1/", "nodes": {}}))
    assert load_config(good).broker == "http://127.0.0.1:1/"
    bad = tmp_path / "bad.json"
    bad.write_text("{nodes")
    with pytest.raises(ConfigError, match=r"bad\.json: not JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read"):
        load_config(tmp_path / "missing.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"nodes": {"a": "gopher://127.0.0.1/"}}))
    with pytest.raises(ConfigError, match=r"wrong\.json: nodes\.a"):
        load_config(wrong)


# ---------------------------------------------------------------------------- routing

def test_the_three_routes() -> None:
    assert isinstance(route("GET", "/gateway/info", CONFIG), Info)
    f = forward("POST", "/broker/cohort/count")
    assert (f.url, f.node, f.destination, f.resource) == (
        "http://127.0.0.1:8090/cohort/count", None, "broker", "broker:cohort/count")
    f = forward("GET", "/broker/catalogue/search?q=lung%20cancer&modality=CT&modality=MR")
    assert f.url == "http://127.0.0.1:8090/catalogue/search?q=lung%20cancer&modality=CT&modality=MR"
    assert f.query == "q=lung%20cancer&modality=CT&modality=MR"
    f = forward("GET", "/nodes/hospital-a/dicomweb/studies/1.2.840.113619.2/series/1.2.3.4")
    assert f.url == "http://127.0.0.1:8081/dicomweb/studies/1.2.840.113619.2/series/1.2.3.4"
    assert f.resource == "node:hospital-a/dicomweb/studies/1.2.840.113619.2/series/1.2.3.4"
    # a base URL with a path keeps it
    assert forward("GET", "/nodes/hospital-b/fhir/Patient").url == "https://node-b.example.org/base/fhir/Patient"
    # harmless escapes are decoded and written back canonically
    assert forward("GET", "/nodes/hospital-a/fhir/Patient%3A1").url == "http://127.0.0.1:8081/fhir/Patient:1"
    assert forward("GET", "/nodes/hospital-a/a%20b").url == "http://127.0.0.1:8081/a%20b"


@pytest.mark.parametrize(("target", "reason"), [
    # traversal, plain and in disguise
    ("/nodes/hospital-a/../hospital-b/dicomweb/studies", "dot-segment"),
    ("/nodes/hospital-a/dicomweb/..", "dot-segment"),
    ("/broker/../nodes/hospital-a/x", "dot-segment"),
    ("/nodes/hospital-a/./x", "dot-segment"),
    ("/nodes/hospital-a/%2e%2e/x", "dot-segment"),
    ("/nodes/hospital-a/%2E%2E/x", "dot-segment"),
    ("/nodes/hospital-a/.%2e/x", "dot-segment"),
    ("/nodes/hospital-a/%2e/x", "dot-segment"),
    ("/nodes/hospital-a/.../x", "dot-segment"),
    ("/nodes/hospital-a/%252e%252e/x", "double-encoding"),
    ("/nodes/hospital-a/%25/x", "double-encoding"),
    ("/nodes/hospital-a/..%2fx", "encoded-separator"),
    ("/nodes/hospital-a/a%2F..%2F..%2Fb", "encoded-separator"),
    ("/nodes/hospital-a/a%5c..%5cb", "encoded-separator"),
    ("/nodes/hospital-a/..\\x", "bad-character"),
    ("/nodes/hospital-a/..;/x", "bad-character"),
    ("/nodes/hospital-a/x;jsessionid=1", "bad-character"),
    ("/nodes/hospital-a/a%00b", "bad-character"),
    ("/nodes/hospital-a/a%0d%0aHost:%20evil", "bad-character"),
    ("/nodes/hospital-a/a%zz", "bad-encoding"),
    ("/nodes/hospital-a/a%ff", "bad-encoding"),
    ("/nodes/hospital-a/a b", "bad-character"),
    ("/nodes/hospital-a/\u00e9", "bad-character"),
    # double and trailing slashes
    ("//nodes/hospital-a/x", "not-a-path"),
    ("/nodes//hospital-a/x", "empty-segment"),
    ("/nodes/hospital-a//x", "empty-segment"),
    ("/nodes/hospital-a/x/", "empty-segment"),
    ("/", "empty-segment"),
    # absolute-form, authority-form, asterisk-form
    ("http://127.0.0.1:8081/dicomweb/studies", "not-a-path"),
    ("https://evil.example.org/", "not-a-path"),
    ("127.0.0.1:22", "not-a-path"),
    ("*", "not-a-path"),
    ("", "not-a-path"),
    # unknown prefixes and nodes
    ("/nodes/hospital-z/dicomweb/studies", "unknown-node"),
    ("/nodes/HOSPITAL-A/dicomweb/studies", "unknown-node"),
    ("/nodes/%68ospital-z/x", "unknown-node"),
    ("/nodes/hospital-a", "unknown-path"),
    ("/nodes", "unknown-path"),
    ("/broker", "unknown-path"),
    ("/hub/api/users", "unknown-path"),
    ("/api/contents", "unknown-path"),
    ("/gateway/config", "unknown-path"),
    ("/gateway/info/x", "unknown-path"),
    ("/gateway/info?x=1", "unknown-path"),
    # query strings and fragments
    ("/broker/catalogue?q=a b", "bad-query"),
    ("/broker/catalogue?q=\"x\"", "bad-query"),
    ("/broker/catalogue?q=%zz", "bad-query"),
    ("/broker/catalogue#frag", "fragment"),
    ("/broker/" + "a" * 9000, "too-long"),
])
def test_targets_outside_the_protocol_are_refused(target: str, reason: str) -> None:
    assert refused("GET", target).reason == reason


def test_an_encoded_node_name_is_decoded_before_the_check() -> None:
    f = forward("GET", "/nodes/%68ospital-a/healthz")
    assert f.node == "hospital-a" and f.url == "http://127.0.0.1:8081/healthz"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
                                    "get", "PROPFIND", "X" * 100])
def test_other_methods_are_refused(method: str) -> None:
    assert refused(method, "/broker/catalogue").reason == "method"


def test_info_answers_get_only_and_a_missing_broker_is_refused() -> None:
    assert refused("POST", "/gateway/info").reason == "method"
    no_broker = parse_config({"nodes": {"hospital-a": "http://127.0.0.1:8081/"}})
    decision = route("GET", "/broker/catalogue", no_broker)
    assert isinstance(decision, Refusal) and decision.reason == "no-broker"


def test_a_refusal_body_is_a_sentence() -> None:
    r = refused("GET", "/nodes/hospital-z/x")
    assert r.body() == {"error": r.message, "reason": "unknown-node"}
    assert "hospital-z" in r.message and "hospital-a, hospital-b" in r.message


# ---------------------------------------------------------------------------- headers

def test_only_allowed_request_headers_pass_and_the_kernels_credentials_are_dropped() -> None:
    out = forward_headers([
        ("Accept", "application/json"), ("content-type", "application/json"),
        ("X-Purpose", "ai-development"), ("Range", "bytes=0-99"),
        ("Authorization", "Bearer stolen"), ("Cookie", "_xsrf=1"), ("Host", "evil.example.org"),
        ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Host", "evil"), ("Proxy-Authorization", "x"),
        ("Transfer-Encoding", "chunked"), ("Connection", "upgrade"), ("Upgrade", "websocket"),
        ("X-Central-Authorization", "Bearer x"), ("Content-Length", "5"),
    ])
    assert out == {"Accept": "application/json", "Content-Type": "application/json",
                   "X-Purpose": "ai-development", "Range": "bytes=0-99"}


@pytest.mark.parametrize("pairs", [
    [("X-Purpose", "ai-development"), ("x-purpose", "education")],
    [("Accept", "a"), ("ACCEPT", "b")],
    [("X-Purpose", "ai-development\r\nAuthorization: Bearer x")],
    [("Accept", "application/json\nHost: evil")],
    [("Content-Type", "text/plain\x00")],
    [("X-Purpose", "x" * 5000)],
])
def test_smuggled_or_repeated_headers_are_refused(pairs: list[tuple[str, str]]) -> None:
    out = forward_headers(pairs)
    assert isinstance(out, Refusal) and out.reason in ("duplicate-header", "bad-header")


def test_only_allowed_response_headers_come_back() -> None:
    out = response_headers([
        ("content-type", "multipart/related; type=\"application/dicom\"; boundary=abc"),
        ("content-length", "123"), ("Content-Range", "bytes 0-1/2"), ("Warning", "299 node \"more\""),
        ("Set-Cookie", "session=1"), ("Location", "http://evil/"), ("Authorization", "Bearer x"),
        ("WWW-Authenticate", "Bearer"), ("Server", "uvicorn"), ("X-Token", "secret"),
        ("Content-Type", "text/plain\r\nSet-Cookie: x"),
    ])
    assert out == [("Content-Type", "multipart/related; type=\"application/dicom\"; boundary=abc"),
                   ("Content-Length", "123"), ("Content-Range", "bytes 0-1/2"), ("Warning", "299 node \"more\"")]
