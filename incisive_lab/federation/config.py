"""The broker's node list: a small, strictly validated JSON or TOML file.

Every key is known; anything else is an error naming the field (``nodes[1].urll: unknown
field``), never ignored. A node is a name (lower case, digits, ``.``, ``_``, ``-``), a base
URL (``https://``; plain ``http://`` only on loopback, for development), an optional country
(ISO 3166-1 alpha-2 or alpha-3: used for the country facet when a record has no
``dct:spatial``) and an optional per-node timeout.

Fields
------
``timeout``
    Seconds the broker waits for each node (default 5; a node's own ``timeout`` wins).
``catalogue_ttl``
    Seconds a node's catalogue is served from the cache before it is fetched again
    (default 30; 0 fetches on every request).
``floor``
    A broker-wide small-count floor (optional, at least 3): it raises every node's floor
    for answers relayed by this broker; it can never lower one.
``nodes``
    The list of nodes (at least one; names and URLs unique).

Examples
--------
A TOML file::

    timeout = 2.0
    catalogue_ttl = 30

    [[nodes]]
    name = "hospital-a"
    url = "https://node-a.example.org"
    country = "GR"

    [[nodes]]
    name = "hospital-b"
    url = "https://node-b.example.org"
    timeout = 4.0

>>> cfg = parse_config({"nodes": [{"name": "a", "url": "http://127.0.0.1:8081"}]})
>>> cfg.nodes[0].timeout, cfg.catalogue_ttl
(5.0, 30.0)
>>> parse_config({"nodes": [{"name": "a", "urll": "x"}]})
Traceback (most recent call last):
...
incisive_lab.federation.config.ConfigError: nodes[0].urll: unknown field (fields: country, name, timeout, url)
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from incisive_lab.cohort.disclosure import MIN_FLOOR
from incisive_lab.errors import IncisiveLabError

__all__ = ["DEFAULT_CATALOGUE_TTL", "DEFAULT_TIMEOUT", "BrokerConfig", "ConfigError", "NodeConfig",
           "load_config", "parse_config"]

#: Seconds the broker waits for a node unless configured otherwise.
DEFAULT_TIMEOUT = 5.0
#: Seconds a node catalogue is cached unless configured otherwise.
DEFAULT_CATALOGUE_TTL = 30.0
MAX_TIMEOUT = 300.0

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TOP = frozenset({"timeout", "catalogue_ttl", "floor", "nodes"})
_NODE = frozenset({"name", "url", "country", "timeout"})
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ConfigError(IncisiveLabError):
    """A configuration that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class NodeConfig:
    """One node the broker fans out to."""

    name: str
    url: str  #: base URL without a trailing slash
    timeout: float = DEFAULT_TIMEOUT
    country: str | None = None  #: ISO 3166-1 as written in the file (upper case)


@dataclass(frozen=True)
class BrokerConfig:
    """The nodes and the broker-wide settings (see the module doc)."""

    nodes: tuple[NodeConfig, ...]
    timeout: float = DEFAULT_TIMEOUT
    catalogue_ttl: float = DEFAULT_CATALOGUE_TTL
    floor: int | None = None

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``.

        Raises
        ------
        KeyError
            When there is none.
        """
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def with_overrides(self, *, timeout: float | None = None, floor: int | None = None,
                       catalogue_ttl: float | None = None) -> BrokerConfig:
        """A copy with command-line overrides applied (``timeout`` replaces every node's)."""
        cfg = self
        if timeout is not None:
            t = _seconds(timeout, "--timeout", positive=True)
            cfg = replace(cfg, timeout=t, nodes=tuple(replace(n, timeout=t) for n in cfg.nodes))
        if floor is not None:
            cfg = replace(cfg, floor=_floor(floor, "--floor"))
        if catalogue_ttl is not None:
            cfg = replace(cfg, catalogue_ttl=_seconds(catalogue_ttl, "--catalogue-ttl", positive=False))
        return cfg


def _seconds(value: object, where: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number of seconds (got {value!r})")
    v = float(value)
    if not (v > 0 if positive else v >= 0) or v > MAX_TIMEOUT:
        low = "above 0" if positive else "at least 0"
        raise ConfigError(f"{where}: must be {low} and at most {MAX_TIMEOUT:g} seconds (got {value!r})")
    return v


def _floor(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_FLOOR:
        raise ConfigError(f"{where}: must be an integer of at least {MIN_FLOOR} (got {value!r})")
    return value


def _url(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a URL string")
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{where}: {value!r} is not an http(s) URL")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ConfigError(f"{where}: {value!r}: tokens travel to nodes, so a node URL must be https "
                          "(plain http only on loopback, for development)")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: {value!r}: a base URL has no query or fragment")
    return text


def _country(value: object, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{2,3}", value.strip()):
        raise ConfigError(f"{where}: must be an ISO 3166-1 alpha-2 or alpha-3 code (got {value!r})")
    return value.strip().upper()


def parse_config(doc: Any, *, where: str = "config") -> BrokerConfig:
    """Validate a configuration document (already parsed from JSON or TOML).

    Raises
    ------
    ConfigError
        Naming the first unknown, missing or malformed field.
    """
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: the configuration must be an object/table")
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field (fields: {', '.join(sorted(_TOP))})")
    timeout = _seconds(doc.get("timeout", DEFAULT_TIMEOUT), "timeout", positive=True)
    ttl = _seconds(doc.get("catalogue_ttl", DEFAULT_CATALOGUE_TTL), "catalogue_ttl", positive=False)
    floor = _floor(doc["floor"], "floor") if doc.get("floor") is not None else None
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError("nodes: required, a non-empty list of nodes")
    nodes: list[NodeConfig] = []
    for i, raw in enumerate(raw_nodes):
        at = f"nodes[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{at}: must be an object/table")
        unknown = sorted(set(raw) - _NODE)
        if unknown:
            raise ConfigError(f"{at}.{unknown[0]}: unknown field (fields: {', '.join(sorted(_NODE))})")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{at}.name: required, lower case letters, digits, '.', '_' or '-' "
                              f"(got {name!r})")
        if "url" not in raw:
            raise ConfigError(f"{at}.url: required")
        nodes.append(NodeConfig(
            name=name, url=_url(raw["url"], f"{at}.url"),
            timeout=_seconds(raw["timeout"], f"{at}.timeout", positive=True) if "timeout" in raw else timeout,
            country=_country(raw["country"], f"{at}.country") if raw.get("country") is not None else None))
    for attr in ("name", "url"):
        seen: set[str] = set()
        for i, n in enumerate(nodes):
            value = getattr(n, attr)
            if value in seen:
                raise ConfigError(f"nodes[{i}].{attr}: {value!r} appears twice")
            seen.add(value)
    return BrokerConfig(nodes=tuple(nodes), timeout=timeout, catalogue_ttl=ttl, floor=floor)


def load_config(path: str | Path) -> BrokerConfig:
    """Read a ``.toml`` or ``.json`` configuration file (see the module doc).

    Raises
    ------
    ConfigError
        An unreadable file, a syntax error or an invalid field (named with the file).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--nodes {p}: cannot read the file ({exc.strerror})") from None
    try:
        doc = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"--nodes {p}: not valid {kind}: {exc}") from None
    try:
        return parse_config(doc)
    except ConfigError as exc:
        raise ConfigError(f"--nodes {p}: {exc}") from None
