"""A deployment whose settings would reopen a download path does not start.

Each case plays a misconfigured deployment: a configuration directory ahead of
``extensions/jupyter-config`` (``JUPYTER_CONFIG_PATH`` takes precedence) weakens one setting,
or the environment points a Jupyter directory into the workspace. The server must exit with
a non-zero status and a message naming the setting; it must never answer a request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.extensions._lab import failed_start, make_workspace, write_config

CASES: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]] = {
    "terminals on": (
        {"ServerApp": {"terminals_enabled": True}}, None,
        ["ServerApp.terminals_enabled is True"]),
    "stock contents manager": (
        {"ServerApp": {"contents_manager_class":
                       "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager"}},
        None,
        ["ServerApp.contents_manager_class is", "AsyncLargeFileManager",
         "ContentsManager.files_handler_class is"]),
    "stock files handler": (
        {"ContentsManager": {"files_handler_class":
                             "jupyter_server.base.handlers.AuthenticatedFileHandler"}},
        None, ["ContentsManager.files_handler_class is", "AuthenticatedFileHandler"]),
    "unauthenticated access": (
        {"ServerApp": {"allow_unauthenticated_access": True}}, None,
        ["ServerApp.allow_unauthenticated_access is True"]),
    "every kernel allowed": (
        {"KernelSpecManager": {"allowed_kernelspecs": [], "ensure_native_kernel": True}}, None,
        ["KernelSpecManager.allowed_kernelspecs is empty",
         "KernelSpecManager.ensure_native_kernel is True"]),
    "unsandboxed default provisioner": (
        {"KernelProvisionerFactory": {"default_provisioner_name": "local-provisioner"}}, None,
        ["KernelProvisionerFactory.default_provisioner_name is 'local-provisioner'"]),
    "extension manager installs": (
        {"LabApp": {"extension_manager": "pypi"}}, None,
        ["LabApp.extension_manager is 'pypi'"]),
    "download plugin unlocked": (
        {"LabApp": {"lock_all_plugins": False}},
        {"lockedExtensions": {"@jupyterlab/notebook-extension:export": False}},
        ["'@jupyterlab/notebook-extension:export' is not locked"]),
    "no content security policy": (
        {"ServerApp": {"tornado_settings": {"headers": {
            "Content-Security-Policy": "frame-ancestors 'self'"}}}}, None,
        ["Content-Security-Policy has no default-src"]),
    "download plugin enabled": (
        None, {"disabledExtensions": {"@jupyterlab/filebrowser-extension:download": False}},
        ["'@jupyterlab/filebrowser-extension:download' is not disabled"]),
}


def _assert_refused(code: int, output: str, expected: list[str]) -> None:
    assert code != 0, output[-3000:]
    assert "incisive_lab_server refuses to start" in output, output[-3000:]
    for text in expected:
        assert text in output, (text, output[-3000:])
    assert "is running at" not in output


def _merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value
    return into


def test_every_weakened_setting_is_named(tmp_path: Path) -> None:
    """All the cases at once (one start-up): each is named in the refusal."""
    server: dict[str, Any] = {}
    page: dict[str, Any] = {}
    for case_server, case_page, _ in CASES.values():
        _merge(server, case_server or {})
        _merge(page, case_page or {})
    workspace, _ = make_workspace(tmp_path)
    weaken = write_config(tmp_path / "weaken", server=server, page_config=page)
    code, output = failed_start(workspace, tmp_path / "runtime", config_path=[weaken])
    _assert_refused(code, output, [text for *_, texts in CASES.values() for text in texts])


@pytest.mark.parametrize("case", ["terminals on", "download plugin enabled"])
def test_one_weakened_setting_is_enough_to_stop_the_server(tmp_path: Path, case: str) -> None:
    server, page, expected = CASES[case]
    workspace, _ = make_workspace(tmp_path)
    weaken = write_config(tmp_path / "weaken", server=server, page_config=page)
    code, output = failed_start(workspace, tmp_path / "runtime", config_path=[weaken])
    _assert_refused(code, output, expected)
    assert output.count("\n  - ") == 1, output[-2000:]  # the only problem named


def test_an_unsandboxed_kernelspec_stops_the_server(tmp_path: Path) -> None:
    workspace, _ = make_workspace(tmp_path)
    kernels = tmp_path / "share" / "jupyter"
    spec = kernels / "kernels" / "incisive"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "not sandboxed", "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}}}))
    code, output = failed_start(workspace, tmp_path / "runtime",
                                extra_env={"JUPYTER_PATH": str(kernels)})
    _assert_refused(code, output, ["kernelspec 'incisive'", "uses provisioner 'local-provisioner'"])


def test_jupyter_directories_in_the_workspace_stop_the_server(tmp_path: Path) -> None:
    """Configuration, data, IPython, Lab settings and import directories in the workspace
    (one start-up, each named)."""
    workspace, _ = make_workspace(tmp_path)
    inside = {name: workspace / f".{name.lower()}" for name in
              ("JUPYTER_DATA_DIR", "IPYTHONDIR", "JUPYTERLAB_SETTINGS_DIR", "PYTHONPATH")}
    for path in inside.values():
        path.mkdir()
    config = write_config(workspace / ".config-here", server={})
    code, output = failed_start(workspace, tmp_path / "runtime", config_path=[config],
                                extra_env={k: str(v) for k, v in inside.items()})
    _assert_refused(code, output, [
        f"data (kernelspecs, Lab extensions) from '{inside['JUPYTER_DATA_DIR']}'",
        f"kernelspecs are read from '{inside['IPYTHONDIR']}/kernels'",
        f"LabApp.user_settings_dir is '{inside['JUPYTERLAB_SETTINGS_DIR']}'",
        f"Python modules (sys.path) from '{inside['PYTHONPATH']}'",
        f"configuration from '{config}'",
    ])


def test_ipython_kernels_in_the_workspace_alone_stop_the_server(tmp_path: Path) -> None:
    """IPython's own kernels/ directory is easy to forget: ~/.ipython is in the workspace."""
    workspace, _ = make_workspace(tmp_path)
    code, output = failed_start(workspace, tmp_path / "runtime",
                                extra_env={"IPYTHONDIR": str(workspace / ".ipython")})
    _assert_refused(code, output, [f"'{workspace}/.ipython/kernels', inside the workspace",
                                   "IPYTHONDIR"])
