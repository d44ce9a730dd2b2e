"""Fixtures shared by every area's tests.

``full_set`` is the default-size synthetic federation (50 patients, ~2,150 files, three
sites, seed 0): generated once per test session and shared (read-only) by the
generator's tests, the de-identification tests and later the ingest and node tests.
``pg_cluster`` is one throw-away PostgreSQL cluster for the session (each test asks it
for a fresh database; see :mod:`tests._support.postgres`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from incisive_lab.dicom.synth import generate
from tests._support.postgres import PostgresCluster, start_postgres

FULL = {"patients": 50, "seed": 0, "sites": ("a", "b", "c")}


@pytest.fixture(scope="session")
def full_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full-size synthetic set (do not modify it: copy what a test must change)."""
    out = tmp_path_factory.mktemp("synth-full") / "set"
    generate(out, progress=False, **FULL)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL cluster for the whole test session."""
    cluster = start_postgres()
    try:
        yield cluster
    finally:
        cluster.stop()
