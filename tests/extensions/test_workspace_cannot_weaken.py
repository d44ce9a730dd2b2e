"""A user who writes Jupyter configuration into the workspace changes nothing.

The workspace is ``HOME`` and the working directory, and the user (or a kernel) can write
anything there. This test fills it with every configuration file Jupyter could be made to
read from a home or working directory, each trying to turn terminals back on, put back the
stock contents manager, switch the extension off, re-enable the download plugins, allow
unauthenticated access, add an unsandboxed kernel, and run Python code in the server. The
server started as the spawner starts it must ignore all of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.extensions._lab import Lab, make_workspace, page_config, running_lab

PLUGINS = ("@jupyterlab/docmanager-extension:download",
           "@jupyterlab/filebrowser-extension:download",
           "@jupyterlab/notebook-extension:export")

WEAKENED_SERVER = {
    "ServerApp": {
        "terminals_enabled": True,
        "allow_unauthenticated_access": True,
        "contents_manager_class":
            "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager",
        "jpserver_extensions": {"incisive_lab_server": False, "jupyter_server_terminals": True},
        "extra_services": [],
    },
    "ContentsManager": {"files_handler_class": "jupyter_server.base.handlers.AuthenticatedFileHandler"},
    "KernelSpecManager": {"allowed_kernelspecs": [], "ensure_native_kernel": True},
    "KernelProvisionerFactory": {"default_provisioner_name": "local-provisioner"},
    "LabApp": {"extension_manager": "pypi", "lock_all_plugins": False},
}
UNLOCKED_PAGE = {"disabledExtensions": dict.fromkeys(PLUGINS, False),
                 "lockedExtensions": dict.fromkeys(PLUGINS, False)}
KERNEL = {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "unsandboxed", "language": "python",
          "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner"}}}


def plant(workspace: Path, marker: Path) -> None:
    """Configuration in every place a home or working directory could supply it."""
    code = (f"open({str(marker)!r}, 'a').write(__file__ + '\\n')\n"
            "c.ServerApp.terminals_enabled = True\n")
    for d in (workspace / ".jupyter", workspace, workspace / ".local" / "etc" / "jupyter",
              workspace / "etc" / "jupyter"):
        d.mkdir(parents=True, exist_ok=True)
        for name in ("jupyter_server_config", "jupyter_lab_config", "jupyter_config",
                     "jupyter_notebook_config", "jupyter_incisive_lab_server_config"):
            (d / f"{name}.json").write_text(json.dumps(WEAKENED_SERVER))
            (d / f"{name}.py").write_text(code)
        confd = d / "jupyter_server_config.d"
        confd.mkdir(exist_ok=True)
        (confd / "weaken.json").write_text(json.dumps(WEAKENED_SERVER))
        (d / "labconfig").mkdir(exist_ok=True)
        (d / "labconfig" / "page_config.json").write_text(json.dumps(UNLOCKED_PAGE))
        (d / "serverconfig").mkdir(exist_ok=True)
        (d / "serverconfig" / "jupyter_server_config.json").write_text(json.dumps(WEAKENED_SERVER))
    for kernels in (workspace / ".local" / "share" / "jupyter" / "kernels",
                    workspace / ".ipython" / "kernels", workspace / "kernels",
                    workspace / "share" / "jupyter" / "kernels"):
        for name in ("incisive", "python3", "unsandboxed"):
            (kernels / name).mkdir(parents=True, exist_ok=True)
            (kernels / name / "kernel.json").write_text(json.dumps(KERNEL))
    settings = workspace / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "plugin.jupyterlab-settings").write_text("{}")
    # Python modules the server would import if the workspace were on its path
    for module in ("sitecustomize", "usercustomize", "incisive_lab_server", "jupyter_server"):
        (workspace / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}\\n')\n")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    root = tmp_path_factory.mktemp("hostile")
    workspace, _ = make_workspace(root)
    marker = root / "executed.txt"
    plant(workspace, marker)
    runtime = root / "runtime"
    runtime.mkdir()
    with running_lab(workspace, runtime) as server:
        yield server, marker


def test_workspace_code_never_runs_in_the_server(hostile: tuple[Lab, Path]) -> None:
    _, marker = hostile
    assert not marker.exists(), marker.read_text()


def test_the_extension_is_loaded_and_checked(hostile: tuple[Lab, Path]) -> None:
    lab, _ = hostile
    log = lab.log_text()
    assert "incisive_lab_server: downloads refused" in log
    assert "jupyter_server_terminals | extension was successfully loaded" not in log


@pytest.mark.parametrize("path", ["/api/terminals", "/terminals/websocket/1",
                                  "/files/data/cohort.csv?download=1",
                                  "/api/contents/data/scan.dcm",
                                  "/api/contents/data/cohort.csv?format=base64",
                                  "/nbconvert/html/analysis.ipynb?download=true", "/view/analysis.ipynb"])
def test_downloads_and_terminals_stay_refused(hostile: tuple[Lab, Path], path: str) -> None:
    lab, _ = hostile
    with lab.client() as client:
        r = client.get(path)
    assert r.status_code == 403
    assert "the data terms forbid downloading data" in r.text


def test_terminals_cannot_be_created(hostile: tuple[Lab, Path]) -> None:
    lab, _ = hostile
    with lab.client() as client:
        r = client.post("/api/terminals")
        page = page_config(client.get("/lab").text)
    assert r.status_code == 403
    assert page["terminalsAvailable"] is False


def test_anonymous_access_stays_refused(hostile: tuple[Lab, Path]) -> None:
    lab, _ = hostile
    with lab.client(authenticated=False) as client:
        assert client.get("/api/contents/data/cohort.csv").status_code == 403
        assert client.get("/api/kernelspecs").status_code == 403


def test_only_the_sandboxed_kernel_is_offered(hostile: tuple[Lab, Path]) -> None:
    lab, _ = hostile
    with lab.client() as client:
        specs = client.get("/api/kernelspecs").json()
    assert set(specs["kernelspecs"]) == {"incisive"}
    spec = specs["kernelspecs"]["incisive"]["spec"]
    assert spec["display_name"] != "unsandboxed"
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "incisive-sandbox"


def test_the_download_plugins_stay_disabled_and_locked(hostile: tuple[Lab, Path]) -> None:
    lab, _ = hostile
    with lab.client() as client:
        config = page_config(client.get("/lab").text)
        locks = client.get("/lab/api/plugins").json()
    for plugin in PLUGINS:
        assert plugin in config["disabledExtensions"]
        assert plugin in config["lockedExtensions"]
    assert locks["allLocked"] is True
    assert config["extensionManager"]["can_install"] is False
    assert config["userSettingsDir"] == str(lab.runtime / "lab-settings")
