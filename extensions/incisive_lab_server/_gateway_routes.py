"""The gateway's rules as plain functions: its configuration, which requests go where, and
which headers pass (no HTTP server, no I/O; see :mod:`incisive_lab_server.gateway`).

A kernel may ask the gateway for exactly three things (HTTP/1.1 over its Unix socket):

=====================================  ============================================
request                                answer
=====================================  ============================================
``GET /gateway/info``                  who the gateway acts for and where it goes
``GET|POST /broker/<path>``            forwarded to ``{broker}<path>`` (query kept)
``GET|POST /nodes/<name>/<path>``      forwarded to ``{nodes[name]}<path>``
=====================================  ============================================

Everything else is a :class:`Refusal` with a sentence saying why: another method, a
request target that is not a plain absolute path (``http://host/...``, ``host:443``,
``*``), an unknown prefix or node, an empty segment (``//``), a ``.`` or ``..`` segment,
percent-encoded separators or dots in disguise (``%2e%2e``, ``%2f``, ``%5c``, ``%252e``),
characters outside RFC 3986, and duplicated or malformed forwarded headers.

The path forwarded is rebuilt from the decoded, checked segments, so what the destination
receives is exactly what was checked.

Example
-------
>>> cfg = parse_config({"broker": "http://127.0.0.1:8090/", "nodes": {"hospital-a": "http://127.0.0.1:8081/"}})
>>> route("GET", "/nodes/hospital-a/dicomweb/studies?limit=5", cfg).url
'http://127.0.0.1:8081/dicomweb/studies?limit=5'
>>> route("GET", "/nodes/hospital-a/../../etc/passwd", cfg).reason
'dot-segment'
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "FORWARDED_REQUEST_HEADERS",
    "PASSED_RESPONSE_HEADERS",
    "ConfigError",
    "Forward",
    "GatewayConfig",
    "Info",
    "Refusal",
    "forward_headers",
    "load_config",
    "parse_config",
    "response_headers",
    "route",
]

#: Request headers a kernel may send on (lower case -> the name sent). The gateway adds
#: ``Authorization`` itself; anything else (``Authorization``, ``Cookie``, ``Host``,
#: ``X-Forwarded-*``...) is dropped.
FORWARDED_REQUEST_HEADERS: Mapping[str, str] = {
    "accept": "Accept", "content-type": "Content-Type", "x-purpose": "X-Purpose", "range": "Range"}
#: Response headers passed back to the kernel (lower case -> the name sent). ``Warning``
#: carries the DICOMweb "more results" notice; ``Set-Cookie``, ``Location`` and the rest
#: are dropped.
PASSED_RESPONSE_HEADERS: Mapping[str, str] = {
    "content-type": "Content-Type", "content-length": "Content-Length",
    "content-range": "Content-Range", "warning": "Warning"}

METHODS = ("GET", "POST")
MAX_TARGET = 8192
MAX_HEADER_VALUE = 4096
#: Node names: as in the broker's node list.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TOP_KEYS = frozenset({"broker", "nodes", "token", "timeout", "connect_timeout"})
_TOKEN_SOURCES = ("hub",)
_LOOPBACK_NAMES = ("localhost",)
#: RFC 3986 pchar without "%" (checked separately) and without ";" (path parameters:
#: some servers read "..;" as "..", so the gateway takes none).
_PCHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@%]*")
_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEGMENT_SAFE = "-._~!$&'()*+,=:@"


class ConfigError(ValueError):
    """The gateway's destinations file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway may forward (see :func:`parse_config`).

    ``broker`` and each of ``nodes`` are base URLs ending in ``/``; ``token`` names the
    token source (``"hub"``: ask JupyterHub); ``timeout`` bounds each read from a
    destination and ``connect_timeout`` each connection (seconds).
    """

    broker: str | None
    nodes: Mapping[str, str] = field(default_factory=dict)
    token: str = "hub"
    timeout: float = 60.0
    connect_timeout: float = 10.0

    def info(self, user: str) -> dict[str, Any]:
        """The body of ``GET /gateway/info``."""
        return {"user": user, "broker": self.broker is not None, "nodes": sorted(self.nodes)}


@dataclass(frozen=True)
class Forward:
    """A request to send on: to the broker (``node is None``) or to node ``node``."""

    method: str
    node: str | None
    path: str     #: the canonical path at the destination, without a leading "/"
    query: str    #: the query string as sent ("" when none)
    url: str      #: the full URL to send to

    @property
    def destination(self) -> str:
        """``"broker"`` or the node's name."""
        return "broker" if self.node is None else self.node

    @property
    def resource(self) -> str:
        """The ledger resource: ``broker:<path>`` or ``node:<name>/<path>``."""
        return f"broker:{self.path}" if self.node is None else f"node:{self.node}/{self.path}"


@dataclass(frozen=True)
class Info:
    """``GET /gateway/info``: answered by the gateway itself."""

    method: str = "GET"


@dataclass(frozen=True)
class Refusal:
    """A request the gateway will not forward: ``reason`` (a code for the ledger) and
    ``message`` (a sentence for the person at the notebook)."""

    reason: str
    message: str
    status: int = 403

    def body(self) -> dict[str, str]:
        """The JSON body of the refusal."""
        return {"error": self.message, "reason": self.reason}


# ------------------------------------------------------------------ configuration

def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a URL string (http:// or https://)")
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where}: {value!r}: only http:// and https:// destinations are allowed")
    if not parts.hostname:
        raise ConfigError(f"{where}: {value!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: {value!r}: credentials in a URL are not allowed")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigError(f"{where}: {value!r}: a base URL has no query or fragment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(f"{where}: {value!r}: the user's token travels there, so it must be https "
                          "(plain http only on loopback, for development)")
    if port == 0:
        raise ConfigError(f"{where}: {value!r}: port 0 is not a destination")
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ConfigError(f"{where}: {value!r} contains white space or control characters")
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _seconds(value: object, where: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a number of seconds")
    if not 0 < value <= 3600:
        raise ConfigError(f"{where}: must be more than 0 and at most 3600 seconds (got {value})")
    return float(value)


def parse_config(data: object, *, source: str = "the gateway configuration") -> GatewayConfig:
    """Check a destinations document and return a :class:`GatewayConfig`.

    ``{"broker": URL | null, "nodes": {name: URL}, "token": "hub", "timeout": S,
    "connect_timeout": S}``: ``nodes`` is required (it may be empty), the rest optional.
    Every key is checked (fail closed): an unknown key, a URL that is not http(s) (plain
    http only on loopback: the user's token travels there), a URL with credentials, query
    or fragment, a node name other than lower-case letters, digits, ``.``, ``_`` and ``-``
    (starting with a letter or digit, at most 63) is a :class:`ConfigError` naming it.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON object with 'broker' and 'nodes'")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key (keys: {', '.join(sorted(_TOP_KEYS))})")
    if "nodes" not in data:
        raise ConfigError(f"{source}: nodes: required (an object of node name -> base URL; may be empty)")
    broker = data.get("broker")
    broker_url = None if broker is None else _base_url(broker, f"{source}: broker")
    nodes_raw = data["nodes"]
    if not isinstance(nodes_raw, dict):
        raise ConfigError(f"{source}: nodes: must be an object of node name -> base URL")
    nodes: dict[str, str] = {}
    for name, url in nodes_raw.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{source}: nodes: {name!r} is not a node name (lower-case letters, "
                              "digits, '.', '_', '-'; starting with a letter or digit; at most 63)")
        nodes[name] = _base_url(url, f"{source}: nodes.{name}")
    token = data.get("token", "hub")
    if token not in _TOKEN_SOURCES:
        raise ConfigError(f"{source}: token: must be {' or '.join(map(repr, _TOKEN_SOURCES))} "
                          f"(got {token!r}); the gateway holds no token of its own")
    return GatewayConfig(broker=broker_url, nodes=nodes, token=str(token),
                         timeout=_seconds(data.get("timeout"), f"{source}: timeout", 60.0),
                         connect_timeout=_seconds(data.get("connect_timeout"),
                                                  f"{source}: connect_timeout", 10.0))


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check the destinations file at ``path`` (JSON; see :func:`parse_config`)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the gateway configuration ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{file}: not JSON ({exc})") from None
    return parse_config(data, source=str(file))


# ------------------------------------------------------------------ routing

def _refuse(reason: str, message: str) -> Refusal:
    return Refusal(reason, message)


def _segments(raw_path: str) -> list[str] | Refusal:
    """Decode and check the segments of an absolute path (without its leading "/")."""
    if not _PCHAR.fullmatch(raw_path.replace("/", "")):
        bad = next(c for c in raw_path if c != "/" and not _PCHAR.fullmatch(c))
        return _refuse("bad-character", f"the path contains {bad!r}, which the gateway does not forward "
                                        "(RFC 3986 path characters only; no ';')")
    if _PCT.search(raw_path):
        return _refuse("bad-encoding", "the path has a '%' that is not a %XX escape")
    out = []
    for raw in raw_path.split("/"):
        if raw == "":
            return _refuse("empty-segment", "the path has an empty segment ('//' or a trailing '/'); "
                                            "the gateway forwards plain paths only")
        try:
            seg = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return _refuse("bad-encoding", f"the path segment {raw!r} is not UTF-8 once decoded")
        if "%" in seg:
            return _refuse("double-encoding", f"the path segment {raw!r} is percent-encoded twice "
                                              "(the gateway refuses encoded '%')")
        if any(c in "/\\" for c in seg):
            return _refuse("encoded-separator", f"the path segment {raw!r} hides a '/' or '\\'")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg):
            return _refuse("bad-character", f"the path segment {raw!r} decodes to control characters")
        if set(seg) == {"."}:
            return _refuse("dot-segment", f"the path has a {seg!r} segment ({raw!r}); the gateway "
                                          "forwards no relative paths")
        out.append(seg)
    return out


def _join(segments: Iterable[str]) -> str:
    return "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)


def route(method: str, target: str, config: GatewayConfig) -> Forward | Info | Refusal:
    """Where a request with ``method`` and request target ``target`` (as received, e.g.
    ``/nodes/hospital-a/dicomweb/studies?limit=5``) goes: a :class:`Forward`, the
    gateway's own :class:`Info`, or a :class:`Refusal` saying why not.
    """
    if method not in METHODS:
        return _refuse("method", f"the gateway forwards GET and POST only, not {method[:20]!r}")
    if len(target) > MAX_TARGET:
        return _refuse("too-long", f"the request target is longer than {MAX_TARGET} characters")
    if not target.startswith("/") or target.startswith("//"):
        return _refuse("not-a-path", "the request target must be a path starting with '/' "
                                     "(absolute URLs, authorities and '*' are not forwarded: the "
                                     "gateway chooses the destination)")
    if "#" in target:
        return _refuse("fragment", "the request target has a fragment ('#')")
    raw_path, has_query, query = target.partition("?")
    if has_query and not _QUERY.fullmatch(query):
        return _refuse("bad-query", "the query string contains characters outside RFC 3986 "
                                    "(encode spaces and quotes as %XX)")
    if has_query and _PCT.search(query):
        return _refuse("bad-query", "the query string has a '%' that is not a %XX escape")
    segs = _segments(raw_path[1:])
    if isinstance(segs, Refusal):
        return segs
    head = segs[0]
    if head == "gateway":
        if segs == ["gateway", "info"] and not query:
            if method != "GET":
                return _refuse("method", "/gateway/info answers GET only")
            return Info()
        return _refuse("unknown-path", f"the gateway has no {_join(segs)!r}; it answers /gateway/info, "
                                       "/broker/... and /nodes/<name>/...")
    if head == "broker":
        if config.broker is None:
            return _refuse("no-broker", "no broker is configured for this workspace")
        rest = segs[1:]
        if not rest:
            return _refuse("unknown-path", "say what to ask the broker: /broker/<path>")
        path = _join(rest)
        return Forward(method, None, path, query, config.broker + path + (f"?{query}" if has_query else ""))
    if head == "nodes":
        if len(segs) < 2:
            return _refuse("unknown-path", "name a node: /nodes/<name>/<path>")
        name = segs[1]
        if name not in config.nodes:
            known = ", ".join(sorted(config.nodes)) or "none"
            return _refuse("unknown-node", f"{name[:80]!r} is not a destination of this gateway "
                                           f"(nodes: {known})")
        rest = segs[2:]
        if not rest:
            return _refuse("unknown-path", f"say what to ask node {name}: /nodes/{name}/<path>")
        path = _join(rest)
        return Forward(method, name, path, query,
                       config.nodes[name] + path + (f"?{query}" if has_query else ""))
    return _refuse("unknown-path", f"the gateway forwards to the broker (/broker/...) and the "
                                   f"nodes (/nodes/<name>/...) only, not to {('/' + head)[:80]!r}")


# ------------------------------------------------------------------ headers

def _clean(value: str) -> bool:
    return len(value) <= MAX_HEADER_VALUE and not any(
        (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value)


def forward_headers(items: Iterable[tuple[str, str]]) -> dict[str, str] | Refusal:
    """The headers to send on, from the kernel's ``(name, value)`` pairs: only
    :data:`FORWARDED_REQUEST_HEADERS`, each at most once and free of control characters
    (a second value or a CR/LF is a :class:`Refusal`, not a guess)."""
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        canonical = FORWARDED_REQUEST_HEADERS.get(key)
        if canonical is None:
            continue
        if canonical in out:
            return _refuse("duplicate-header", f"the {canonical} header is given more than once")
        if not _clean(value):
            return _refuse("bad-header", f"the {canonical} header contains control characters or is "
                                         f"longer than {MAX_HEADER_VALUE} characters")
        out[canonical] = value.strip()
    return out


def response_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The destination's response headers the kernel sees: only
    :data:`PASSED_RESPONSE_HEADERS` with clean values (no ``Set-Cookie``, no
    ``Location``, nothing naming the token)."""
    out = []
    for name, value in items:
        canonical = PASSED_RESPONSE_HEADERS.get(name.lower())
        if canonical is not None and _clean(value):
            out.append((canonical, value))
    return out
