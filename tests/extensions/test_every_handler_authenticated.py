"""Every route of the running server refuses a request that carries no credentials.

Two servers are checked: ``jupyter lab`` (token login) and ``jupyterhub-singleuser`` as the
hub spawns it (base URL ``/user/<name>/``, the hub's OAuth). The routes come from the running
server itself (the test-only route dump extension walks
the web application's routers once every extension has loaded), so a handler added by any
installed extension is covered without being named here. For each route a concrete path
is generated from its pattern and each HTTP method the handler implements is requested
without a token or cookie (with a matching XSRF cookie and header, so that what answers is
the authentication check, not the XSRF one). The answer must be 401 or 403, or a redirect to
the login page (the hub's OAuth authorisation for the single-user server).

A short allow-list names the handlers that answer anonymous requests by design; a second
test shows that each serves nothing from the workspace.
"""

from __future__ import annotations

import re
import re._constants as sre  # the regular-expression parser's node types
import re._parser as sre_parse
from typing import Any

import httpx
import pytest

from tests.extensions._lab import SECRET, Lab
from tests.extensions.conftest import read_routes

#: Handlers that answer an anonymous request by design, and why that is harmless.
ALLOWED_ANONYMOUS = {
    "jupyter_server.base.handlers.APIVersionHandler": "GET /api: the server's version only",
    "jupyter_server.auth.login.LoginFormHandler": "the login page",
    "jupyter_server.auth.logout.LogoutHandler": "the logout page",
    "jupyter_server.base.handlers.FileFindHandler":
        "static assets of installed packages (/static/, /lab/extensions/, favicon)",
    "jupyter_server.base.handlers.PublicStaticFileHandler": "favicon.ico and robots.txt",
    "jupyterlab_server.themes_handler.ThemesHandler": "JupyterLab's theme style sheets",
    "jupyter_server.base.handlers.RedirectWithParams": "redirects / to /lab",
    "jupyter_server.base.handlers.TrailingSlashHandler": "redirects to the path without '/'",
    "jupyter_server.services.contents.handlers.NotebooksRedirectHandler":
        "redirects /api/notebooks/... to /api/contents/...",
    "jupyterhub.singleuser.extension.JupyterHubOAuthCallbackHandler":
        "completes the hub's OAuth login; without the state cookie and a code it answers 400",
    "jupyterhub.singleuser.extension.JupyterHubLogoutHandler":
        "clears the login cookie and redirects to the hub's logout",
}

#: Handlers that give an anonymous request no answer at all (nothing served either).
NO_ANSWER_ANONYMOUS = {
    "jupyterlab_server.licenses_handler.LicensesHandler":
        "jupyterlab_server 2.28 overrides finish() with an extra argument, so the 403 of "
        "@web.authenticated raises in send_error and the connection hangs unanswered",
}

STATIC = ("jupyter_server.base.handlers.FileFindHandler",
          "jupyter_server.base.handlers.PublicStaticFileHandler",
          "jupyterlab_server.themes_handler.ThemesHandler")
REDIRECTS = ("jupyter_server.base.handlers.RedirectWithParams",
             "jupyter_server.base.handlers.TrailingSlashHandler",
             "jupyter_server.services.contents.handlers.NotebooksRedirectHandler")

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def _generate(items: Any, group_value: str | None) -> str:
    """A string the parsed pattern ``items`` matches; the first capture group gets
    ``group_value`` when one is given."""
    out: list[str] = []
    for op, av in items:
        if op is sre.LITERAL:
            out.append(chr(av))
        elif op is sre.NOT_LITERAL:
            out.append("b" if chr(av) == "a" else "a")
        elif op is sre.ANY:
            out.append("a")
        elif op is sre.AT:
            continue
        elif op is sre.IN:
            out.append(_pick(av))
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, sub = av
            out.append(_generate(sub, group_value) * (max(low, 1) if high else 0))
        elif op is sre.SUBPATTERN:
            group = av[0]
            if group is not None and group_value is not None:
                out.append(group_value)
                group_value = None
            else:
                out.append(_generate(av[-1], group_value))
        elif op is sre.BRANCH:
            out.append(_generate(av[1][0], group_value))
        else:
            raise AssertionError(f"no sample for regular-expression node {op}")
    return "".join(out)


def _pick(av: Any) -> str:
    negate = any(op is sre.NEGATE for op, _ in av)
    for c in "abcxyz019-_.":
        hit = False
        for op, a in av:
            if (op is sre.LITERAL and chr(a) == c) or (op is sre.RANGE and a[0] <= ord(c) <= a[1]) or (op is sre.CATEGORY and (
                    (a is sre.CATEGORY_WORD and re.match(r"\w", c))
                    or (a is sre.CATEGORY_DIGIT and c.isdigit()))):
                hit = True
        if hit != negate:
            return c
    raise AssertionError(f"no sample character for class {av}")


def sample_path(pattern: str, group_value: str | None = None) -> str:
    """A URL path the route ``pattern`` matches (checked), e.g. ``/api/kernels/a-a-a-a-a``."""
    path = _generate(sre_parse.parse(pattern), group_value)
    if not path.startswith("/"):
        path = "/" + path
    if group_value is None:
        assert re.fullmatch(pattern, path) or re.fullmatch(pattern, path[1:]), (pattern, path)
    return path


@pytest.fixture(params=["lab", "singleuser"])
def server(request: pytest.FixtureRequest) -> Lab:
    """Each server in turn."""
    lab: Lab = request.getfixturevalue(request.param)
    return lab


@pytest.fixture
def server_routes(server: Lab) -> list[dict[str, Any]]:
    return read_routes(server)


def anonymous(lab: Lab) -> httpx.Client:
    return httpx.Client(base_url=lab.origin, follow_redirects=False, timeout=30,
                        cookies={"_xsrf": "anonymous-xsrf"},
                        headers={"X-XSRFToken": "anonymous-xsrf"})


LOGIN = ("/login", "/hub/api/oauth2/authorize")


def refused(r: httpx.Response) -> bool:
    """401/403, or a redirect to the login page (or the hub's OAuth authorisation)."""
    if r.status_code in (401, 403):
        return True
    location = r.headers.get("location", "").split("?")[0]
    return r.status_code in (301, 302, 303, 307, 308) and location.endswith(LOGIN)


def request(client: httpx.Client, method: str, path: str, websocket: bool) -> httpx.Response:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, path, content=body, headers=UPGRADE if websocket else None)


def test_the_route_dump_is_the_running_server(server: Lab,
                                              server_routes: list[dict[str, Any]]) -> None:
    routes = server_routes
    prefix = server.url[len(server.origin):]
    patterns = {r["pattern"] for r in routes}
    for expected in ("/api/kernels$", "/api/sessions$", "/logout$", "/api/kernelspecs$"):
        assert prefix + expected in patterns
    handlers = {r["handler"] for r in routes}
    assert "jupyterlab_server.handlers.LabHandler" in handlers
    # our refusals come first, ahead of the server's own handlers for the same paths
    assert routes[0]["handler"].startswith("incisive_lab_server.refusal.")
    # every allow-list entry names a handler that is really there (no stale entries)
    if server.token:
        assert set(ALLOWED_ANONYMOUS) - handlers == {
            "jupyterhub.singleuser.extension.JupyterHubOAuthCallbackHandler",
            "jupyterhub.singleuser.extension.JupyterHubLogoutHandler"}
    else:
        assert set(ALLOWED_ANONYMOUS) - handlers == {"jupyter_server.auth.login.LoginFormHandler",
                                                     "jupyter_server.auth.logout.LogoutHandler"}
    assert set(NO_ANSWER_ANONYMOUS) <= handlers


def test_every_route_refuses_a_request_without_credentials(
        server: Lab, server_routes: list[dict[str, Any]]) -> None:
    failures = []
    checked = 0
    with anonymous(server) as client:
        for route in server_routes:
            if route["handler"] in ALLOWED_ANONYMOUS:
                continue
            path = sample_path(route["pattern"])
            for method in route["methods"] or ["GET"]:
                if route["handler"] in NO_ANSWER_ANONYMOUS:
                    try:
                        r = client.request(method, path, timeout=3)
                    except httpx.ReadTimeout:
                        continue
                else:
                    r = request(client, method, path, route["websocket"])
                checked += 1
                if not refused(r) or SECRET in r.text:
                    failures.append(f"{method} {path} ({route['handler']}): {r.status_code} "
                                    f"{r.headers.get('location', '')} {r.text[:120]!r}")
    assert checked > 60
    assert not failures, "answered without credentials:\n" + "\n".join(failures)


def test_the_same_routes_answer_a_logged_in_user(lab: Lab, routes: list[dict[str, Any]]) -> None:
    """The anonymous refusals above are authentication, not broken handlers: with the
    token, the kernelspec, contents and session routes answer."""
    with lab.client() as client:
        for path in ("/api/kernelspecs", "/api/contents/data", "/api/sessions", "/api/me",
                     "/api/status", "/lab"):
            assert client.get(path).status_code == 200, path


def _static_routes(routes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in routes if r["handler"] in STATIC]


def test_static_routes_serve_from_package_directories_only(
        server: Lab, server_routes: list[dict[str, Any]]) -> None:
    static = _static_routes(server_routes)
    assert static
    workspace = str(server.workspace.resolve())
    for route in static:
        paths = route["paths"].get("path")
        if not paths:
            # jupyter_server registers this one with no directory (an earlier route serves
            # the two names from the static directory); it matches nothing else
            assert route["handler"].endswith("PublicStaticFileHandler"), route
            assert route["pattern"].endswith(r"/(robots\.txt|favicon\.ico)$"), route
            continue
        for directory in [paths] if isinstance(paths, str) else paths:
            assert not str(directory).startswith(workspace), (route, directory)


PROBES = (
    "data/cohort.csv",
    "analysis.ipynb",
    "../../../../../../../../..{workspace}/data/cohort.csv",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e{workspace}/data/cohort.csv",
    "..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2f..{workspace}%2fdata%2fcohort.csv",
    "{workspace}/data/cohort.csv",
)


def test_allowed_routes_serve_nothing_from_the_workspace(
        server: Lab, server_routes: list[dict[str, Any]]) -> None:
    lab = server
    workspace = str(lab.workspace.resolve())
    with anonymous(lab) as client:
        for route in _static_routes(server_routes):
            if "(" not in route["pattern"]:
                continue
            for probe in PROBES:
                path = sample_path(route["pattern"], probe.format(workspace=workspace))
                r = client.get(path)
                assert SECRET not in r.text, (path, r.status_code)
                assert r.status_code != 200 or "patient,age" not in r.text, path

        version = client.get(lab.url + "/api")
        assert version.status_code == 200
        assert set(version.json()) == {"version"}

        pages = ("/login", "/logout") if lab.token else ("/logout", "/oauth_callback")
        for page in pages:
            r = client.get(lab.url + page)
            assert r.status_code in (200, 302, 400), (page, r.status_code)
            for leak in (SECRET, "cohort.csv", "analysis.ipynb", workspace):
                assert leak not in r.text, (page, leak)
            if lab.token:
                assert lab.token not in r.text


@pytest.mark.parametrize(("path", "target"), [
    ("/", "/lab"),
    ("/api/contents/data/", "/api/contents/data"),
    ("/api/notebooks/analysis.ipynb", "/api/contents/analysis.ipynb"),
])
def test_allowed_redirects_lead_to_refusals(server: Lab, path: str, target: str) -> None:
    prefix = server.url[len(server.origin):]
    with anonymous(server) as client:
        r = client.get(prefix + path)
        assert r.status_code in (301, 302, 303, 307, 308), (path, r.status_code)
        location = r.headers["location"]
        assert location.split("?")[0] == prefix + target
        assert refused(client.get(location)), location
