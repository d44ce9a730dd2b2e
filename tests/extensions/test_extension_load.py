"""The extension's glue without a server: the gateway import guard and the route check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tornado.web import Application, RequestHandler

from incisive_lab_server import _jupyter_server_extension_points, extension
from incisive_lab_server.config import check_csp, check_routes
from incisive_lab_server.extension import IncisiveLabServer, _gateway_function
from incisive_lab_server.refusal import REFUSED_PATTERNS


def test_the_extension_point_is_the_app() -> None:
    assert _jupyter_server_extension_points() == [
        {"module": "incisive_lab_server", "app": IncisiveLabServer}]


def test_a_missing_gateway_module_is_tolerated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extension, "_GATEWAY_MODULE", "incisive_lab_server._no_such_gateway")
    assert _gateway_function("start_gateway") is None


def test_a_gateway_that_fails_to_import_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the absence of the gateway module itself is tolerated: a gateway whose own
    import fails (a missing dependency) must stop the server, not start it without a door."""
    (tmp_path / "broken_gateway_for_test.py").write_text("import a_module_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(extension, "_GATEWAY_MODULE", "broken_gateway_for_test")
    with pytest.raises(ModuleNotFoundError, match="a_module_that_is_not_there"):
        _gateway_function("start_gateway")
    sys.modules.pop("broken_gateway_for_test", None)


def test_the_installed_gateway_provides_start_and_stop() -> None:
    assert callable(_gateway_function("start_gateway"))
    assert callable(_gateway_function("stop_gateway"))


class _Leaky(RequestHandler):
    def get(self, *args: str) -> None:
        self.write("bytes")


def test_check_routes_finds_a_download_path_not_refused() -> None:
    leaky = Application([(r"/files/(.*)", _Leaky), (r"/api/nbconvert", _Leaky)])
    problems = check_routes(leaky)
    assert any("/files/data/scan.dcm" in p and "_Leaky" in p for p in problems)
    assert any("/api/nbconvert" in p for p in problems)


def test_check_routes_passes_when_refusals_come_first() -> None:
    app = Application([(r"/files/(.*)", _Leaky), (r"/view/(.*)", _Leaky)])
    app.add_handlers(".*$", list(REFUSED_PATTERNS))
    assert check_routes(app) == []


def test_check_routes_honours_the_base_url() -> None:
    app = Application([(r"/user/alice" + p, h) for p, h in REFUSED_PATTERNS])
    assert check_routes(app, "/user/alice/") == []
    assert check_routes(app, "/") != []


def _configured_csp() -> str:
    from tests.extensions._lab import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "jupyter_server_config.json").read_text())
    policy: str = config["ServerApp"]["tornado_settings"]["headers"]["Content-Security-Policy"]
    return policy


def test_the_configured_csp_passes() -> None:
    assert check_csp({"Content-Security-Policy": _configured_csp()}) == []


@pytest.mark.parametrize(("policy", "named"), [
    (None, "is not set"),
    ("frame-ancestors 'self'", "has no default-src"),
    ("default-src 'self'; base-uri 'self'", "has no form-action"),
    ("default-src 'self'; form-action 'self'; base-uri 'self'; img-src 'self' *", "img-src allows *"),
    ("default-src 'self'; form-action 'self'; base-uri 'self'; connect-src 'self' https:",
     "connect-src allows https:"),
    ("default-src 'self' https://cdn.example.org; form-action 'self'; base-uri 'self'",
     "default-src allows https://cdn.example.org"),
    ("default-src 'self'; form-action 'self'; base-uri 'self'; script-src 'self' ws://x",
     "script-src allows ws://x"),
])
def test_a_csp_that_lets_the_page_reach_other_hosts_is_refused(policy: str | None, named: str) -> None:
    headers = {} if policy is None else {"Content-Security-Policy": policy}
    problems = check_csp(headers)
    assert any(named in p for p in problems), problems


def test_the_read_only_config_folder_stops_jupyter_cores_migration(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """The sandbox binds extensions/jupyter-config read-only: without jupyter_core's
    ``migrated`` marker there, a server whose IPython folder exists tries to write the marker
    and exits (EROFS) — the first sandboxed spawn on a clean checkout did."""
    from jupyter_core import migrate
    from jupyter_core.application import JupyterApp

    config = Path(__file__).resolve().parents[2] / "extensions" / "jupyter-config"
    assert (config / "migrated").is_file()
    (tmp_path / "ipython").mkdir()
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))

    def refuse() -> None:
        pytest.fail("jupyter_core would migrate, writing into the read-only config folder")

    monkeypatch.setattr(migrate, "migrate", refuse)
    JupyterApp().migrate_config()
    # and without the marker it would: the check above is live
    bare = tmp_path / "bare-config"
    bare.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(bare))
    with pytest.raises(pytest.fail.Exception, match="would migrate"):
        JupyterApp().migrate_config()
