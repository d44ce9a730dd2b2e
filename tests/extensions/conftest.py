"""One real ``jupyter lab`` for the refusal tests, configured by ``extensions/jupyter-config``.

Its workspace holds a DICOM-like binary file, a CSV file and a notebook; next to the
workspace (outside it) lies a directory with a secret file that links in the workspace point
to. The test-only route dump extension (:mod:`tests.extensions._route_dump`) is enabled
through an extra configuration directory so the tests can read the server's routes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.extensions._lab import (
    Lab,
    make_workspace,
    route_dump_config,
    running_lab,
    running_singleuser,
)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The configured server over a fresh workspace (tests may write in the workspace)."""
    root = tmp_path_factory.mktemp("lab")
    workspace, _ = make_workspace(root)
    runtime = root / "runtime"
    runtime.mkdir()
    config = route_dump_config(root / "test-config")
    with running_lab(workspace, runtime, config_path=[config],
                     extra_env={"INCISIVE_TEST_ROUTES": str(root / "routes.json")}) as server:
        yield server


def read_routes(server: Lab) -> list[dict[str, Any]]:
    """The running server's routes, in routing order, as the dump extension wrote them."""
    path = server.runtime.parent / "routes.json"
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"no route dump:\n{server.log_text()[-3000:]}"
        time.sleep(0.1)  # the dump is written once the server's event loop runs
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def routes(lab: Lab) -> list[dict[str, Any]]:
    """The routes of :func:`lab`."""
    return read_routes(lab)


@pytest.fixture(scope="session")
def singleuser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """``jupyterhub-singleuser`` (as the hub spawns it) over the same kind of workspace."""
    root = tmp_path_factory.mktemp("singleuser")
    workspace, _ = make_workspace(root)
    runtime = root / "runtime"
    runtime.mkdir()
    config = route_dump_config(root / "test-config")
    with running_singleuser(workspace, runtime, config_path=[config],
                            extra_env={"INCISIVE_TEST_ROUTES": str(root / "routes.json")}
                            ) as server:
        yield server


@pytest.fixture
def outside(lab: Lab) -> Path:
    """The directory beside the workspace (outside it) holding ``secret.txt``."""
    return lab.workspace.parent / "outside"
