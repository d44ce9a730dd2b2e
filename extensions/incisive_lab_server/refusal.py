"""Handlers that refuse every download path of the single-user server.

The data terms forbid taking data out of the platform. A Jupyter server offers several ways
to hand a file's bytes to the browser; each one is answered here with ``403`` and a sentence
saying why, and each refusal is logged with the user and the URL:

``/files/<path>`` (``?download=1`` too)
    the raw file (``ContentsManager.files_handler_class`` is :class:`RefusedFiles`);
``/nbconvert/<format>/<path>`` and ``POST /nbconvert/<format>``
    a notebook exported to HTML, PDF, a script... (``?download=true`` too);
``/api/nbconvert``
    the exporters the server offers;
``/view/<path>``
    a page framing ``/files/<path>``;
``/terminals/...`` and ``/api/terminals/...``
    a shell outside the kernel's sandbox (terminals are also switched off).

Base64 reads through ``/api/contents`` are refused by the contents manager
(:mod:`incisive_lab_server.contents`), not here.

The handlers are listed in :data:`default_handlers`, the form ``ServerApp.extra_services``
loads (services named there are routed before the server's own), and the extension also adds
them to the web application ahead of everything else
(:class:`incisive_lab_server.IncisiveLabServer`). Either alone refuses; both are configured.

Every method first requires a logged-in user (``@web.authenticated``): an anonymous request
gets the server's usual answer (a redirect to the login page or ``403``) and learns nothing
about what exists.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web

__all__ = [
    "REFUSAL",
    "REFUSED_PATTERNS",
    "REFUSED_SAMPLES",
    "RefusedAPI",
    "RefusedFiles",
    "RefusedPage",
    "default_handlers",
    "is_refusing_handler",
]

#: The sentence every refusal carries (HTML pages and JSON bodies alike).
REFUSAL = (
    "Refused: the data terms forbid downloading data from the workbench; "
    "results leave the platform only through the airlock (not yet available)."
)

#: The reason phrase of the ``403`` status line.
REASON = "Download refused"


class _Refusal:
    """The refusal itself, shared by the page and API handlers."""

    def _refuse(self: Any) -> None:
        user = self.current_user
        name = getattr(user, "username", None) or str(user)
        self.log.warning(
            "incisive_lab_server: refused %s %s for user %r (data terms forbid downloads)",
            self.request.method,
            self.request.uri,
            name,
        )
        raise web.HTTPError(403, REFUSAL, reason=REASON)

    def initialize(self, **kwargs: Any) -> None:
        """Accept and ignore the keyword arguments the replaced handler was given."""

    @web.authenticated
    def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse."""
        self._refuse()

    @web.authenticated
    def head(self, *args: Any, **kwargs: Any) -> None:
        """Refuse."""
        self._refuse()

    @web.authenticated
    def post(self, *args: Any, **kwargs: Any) -> None:
        """Refuse."""
        self._refuse()

    @web.authenticated
    def put(self, *args: Any, **kwargs: Any) -> None:
        """Refuse."""
        self._refuse()

    @web.authenticated
    def patch(self, *args: Any, **kwargs: Any) -> None:
        """Refuse."""
        self._refuse()

    @web.authenticated
    def delete(self, *args: Any, **kwargs: Any) -> None:
        """Refuse."""
        self._refuse()


class RefusedPage(_Refusal, JupyterHandler):
    """Refuse a browser-facing download path with an HTML error page."""


class RefusedFiles(RefusedPage):
    """``ContentsManager.files_handler_class``: ``/files/<path>`` refused, ``?download`` or not."""


class RefusedAPI(_Refusal, APIHandler):
    """Refuse an ``/api/...`` path with a JSON body ``{"message": ..., "reason": ...}``."""

#: URL patterns (without the base URL) that are refused, with their handler. Each pattern also
#: covers everything below it, so a new sub-route of a refused service stays refused.
REFUSED_PATTERNS: tuple[tuple[str, type[JupyterHandler]], ...] = (
    (r"/files(?:/.*)?", RefusedFiles),
    (r"/nbconvert(?:/.*)?", RefusedPage),
    (r"/view(?:/.*)?", RefusedPage),
    (r"/terminals(?:/.*)?", RefusedPage),
    (r"/api/nbconvert(?:/.*)?", RefusedAPI),
    (r"/api/terminals(?:/.*)?", RefusedAPI),
)

#: One concrete path per refused route, checked against the running router at start-up.
REFUSED_SAMPLES: tuple[str, ...] = (
    "/files/data/scan.dcm",
    "/files/",
    "/nbconvert/html/analysis.ipynb",
    "/nbconvert/html",
    "/api/nbconvert",
    "/view/data/scan.dcm",
    "/terminals/websocket/1",
    "/api/terminals",
    "/api/terminals/1",
)

#: The form ``ServerApp.extra_services`` loads: routed before the server's own services.
default_handlers: list[tuple[str, type[JupyterHandler]]] = list(REFUSED_PATTERNS)


def is_refusing_handler(handler: object) -> bool:
    """Whether ``handler`` (a class) is one of the refusing handlers.

    Parameters
    ----------
    handler
        A request handler class, as a router resolves it.
    """
    return isinstance(handler, type) and issubclass(handler, _Refusal)
