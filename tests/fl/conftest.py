"""Fixtures shared by the Flower app's tests (test_app, test_runner, test_dp, test_secagg)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fl._app_env import AppEnv, app_env, federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shared 18-patient, three-site federation (built once per session)."""
    return federation(tmp_path_factory)


@pytest.fixture
def env(tmp_path: Path, fed: Any) -> Iterator[AppEnv]:
    """A writable copy of it, with an issuer and the tiny task approved at every node."""
    with app_env(tmp_path, fed) as e:
        yield e
