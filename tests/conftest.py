"""Fixtures shared by every area's tests.

``full_set`` is the default-size synthetic federation (50 patients, ~2,150 files, three
sites, seed 0): generated once per test session and shared (read-only) by the
generator's tests, the de-identification tests and later the ingest and node tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from incisive_lab.dicom.synth import generate

FULL = {"patients": 50, "seed": 0, "sites": ("a", "b", "c")}


@pytest.fixture(scope="session")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full-size synthetic set (do not modify it: copy what a test must change)."""
    out = tmp_path_factory.mktemp("synth-full") / "set"
    generate(out, progress=False, **FULL)  # type: ignore[arg-type]
    return out
