"""JupyterLab's page: the download and export plugins are disabled and locked, nothing can
re-enable them or install an extension, and the plugin ids are the installed Lab's own."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from incisive_lab_server.config import DEFAULT_LOCKED_PLUGINS
from tests.extensions._lab import CONFIG_DIR, Lab, page_config, tree

#: The three plugins the issue names, and the two that open a file's download URL in a tab.
REQUIRED = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/notebook-extension:export",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
)

LAB_STATIC = Path(sys.prefix) / "share" / "jupyter" / "lab" / "static"


def installed_plugin_ids() -> set[str]:
    """Every plugin id in the installed JupyterLab's bundles."""
    ids: set[str] = set()
    for bundle in LAB_STATIC.glob("*.js"):
        ids.update(re.findall(r'id:"(@jupyterlab/[\w-]+:[\w-]+)"', bundle.read_text(errors="replace")))
    return ids


def test_the_lab_page_carries_the_plugins_disabled_and_locked(lab: Lab) -> None:
    with lab.client() as client:
        page = client.get("/lab")
    assert page.status_code == 200
    config = page_config(page.text)
    for plugin in REQUIRED:
        assert plugin in config["disabledExtensions"], plugin
        assert plugin in config["lockedExtensions"], plugin
    assert config["terminalsAvailable"] is False
    assert config["extensionManager"]["can_install"] is False
    assert config["news"] == {"disabled": True}


def test_the_checked_list_is_the_configured_list() -> None:
    configured = json.loads((CONFIG_DIR / "labconfig" / "page_config.json").read_text())
    assert set(REQUIRED) == set(DEFAULT_LOCKED_PLUGINS)
    for plugin in REQUIRED:
        assert configured["disabledExtensions"][plugin] is True
        assert configured["lockedExtensions"][plugin] is True


def test_the_plugin_ids_exist_in_the_installed_jupyterlab() -> None:
    ids = installed_plugin_ids()
    assert len(ids) > 100, "no plugin ids found in the installed JupyterLab's bundles"
    for plugin in REQUIRED:
        assert plugin in ids, f"{plugin} is not a plugin of the installed JupyterLab"


def test_no_other_download_or_export_plugin_is_left_enabled() -> None:
    """A later JupyterLab that adds such a plugin fails here until it is reviewed."""
    leaking = {i for i in installed_plugin_ids()
               if re.search(r"download|export|browser-tab", i.split(":", 1)[1])}
    assert leaking == set(REQUIRED)


def test_a_locked_plugin_cannot_be_enabled_from_the_browser(lab: Lab) -> None:
    config_dirs = [Path(sys.prefix) / "etc" / "jupyter", CONFIG_DIR,
                   lab.runtime / "jupyter-data", lab.runtime / "lab-settings"]
    before = [tree(d) for d in config_dirs]
    with lab.client() as client:
        locks = client.get("/lab/api/plugins").json()
        assert locks["allLocked"] is True
        assert set(REQUIRED) <= set(locks["lockRules"])
        for plugin in REQUIRED:
            r = client.post("/lab/api/plugins", json={"cmd": "enable", "plugin_name": plugin})
            assert r.status_code == 500, r.text
            assert "locked" in r.json()["message"]
        page = page_config(client.get("/lab").text)
    assert set(REQUIRED) <= set(page["disabledExtensions"])
    assert [tree(d) for d in config_dirs] == before  # nothing written anywhere


@pytest.mark.parametrize("cmd", ["install", "uninstall"])
def test_no_extension_can_be_installed_from_the_browser(lab: Lab, cmd: str) -> None:
    with lab.client() as client:
        r = client.post("/lab/api/extensions", json={"cmd": cmd, "extension_name": "jupyterlab-git"})
    assert r.status_code >= 400, r.text


def test_every_page_carries_the_content_security_policy(lab: Lab) -> None:
    configured = json.loads((CONFIG_DIR / "jupyter_server_config.json").read_text())
    policy = configured["ServerApp"]["tornado_settings"]["headers"]["Content-Security-Policy"]
    assert "img-src 'self' data: blob:" in policy and "connect-src 'self'" in policy
    with lab.client() as client:
        for path in ("/lab", "/lab/tree/analysis.ipynb", "/files/data/cohort.csv",
                     "/static/favicons/favicon.ico"):
            r = client.get(path)
            assert r.headers["content-security-policy"].startswith(policy), path
        # API answers keep jupyter_server's stricter addition
        api = client.get("/api/contents")
        assert api.headers["content-security-policy"].startswith(policy)
