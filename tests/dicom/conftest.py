"""Session-scoped synthetic sets: a small one (8 patients) and the full-size one (50)."""

from __future__ import annotations

from pathlib import Path

import pytest

from incisive_lab.dicom.synth import generate
from tests.dicom._helpers import FULL, SMALL


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-small") / "set"
    generate(out, progress=False, **SMALL)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-full") / "set"
    generate(out, progress=False, **FULL)  # type: ignore[arg-type]
    return out
