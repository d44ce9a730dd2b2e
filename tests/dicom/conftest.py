"""The small session-scoped synthetic set (8 patients); the full-size one is in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from incisive_lab.dicom.synth import generate
from tests.dicom._helpers import SMALL


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-small") / "set"
    generate(out, progress=False, **SMALL)  # type: ignore[arg-type]
    return out
