"""Test-only server extension: writes the running server's URL routes to a JSON file.

Enabled only by the tests' own configuration directory (``jupyter_server_config.d``), never
by ``extensions/jupyter-config``. Once the event loop runs (every extension loaded, every
handler added) it walks the web application's routers and writes, in routing order, each
path pattern with its handler class, the HTTP methods the class implements, whether it
is a WebSocket handler and the directories a static handler serves from, to the file named by ``INCISIVE_TEST_ROUTES``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from tornado.routing import PathMatches, Router
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "tests.extensions._route_dump"}]


def _walk(router: Any) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    for rule in router.rules:
        target = rule.target
        if isinstance(target, Router) and hasattr(target, "rules"):
            yield from _walk(target)
        elif isinstance(rule.matcher, PathMatches):
            yield rule.matcher.regex.pattern, target, rule.target_kwargs or {}


def _plain(value: Any) -> Any:
    """Directories and URLs a handler was given (strings and lists of strings only)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def routes(web_app: Any) -> list[dict[str, Any]]:
    """Every (pattern, handler) of ``web_app``, in routing order."""
    out = []
    for pattern, handler, kwargs in _walk(web_app.default_router):
        is_class = isinstance(handler, type) and issubclass(handler, RequestHandler)
        methods = [m for m in METHODS
                   if is_class and getattr(handler, m.lower()) is not getattr(RequestHandler, m.lower())]
        out.append({
            "pattern": pattern,
            "handler": f"{handler.__module__}.{handler.__qualname__}" if is_class else repr(handler),
            "methods": methods,
            "websocket": is_class and issubclass(handler, WebSocketHandler),
            "paths": {k: _plain(v) for k, v in kwargs.items() if k in ("path", "themes_url")
                      and _plain(v) is not None},
        })
    return out


def _load_jupyter_server_extension(serverapp: Any) -> None:
    target = os.environ["INCISIVE_TEST_ROUTES"]

    def dump() -> None:
        with open(target + ".tmp", "w") as f:
            json.dump(routes(serverapp.web_app), f, indent=1)
        os.replace(target + ".tmp", target)

    serverapp.io_loop.add_callback(dump)
