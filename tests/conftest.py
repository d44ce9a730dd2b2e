"""Fixtures shared by every area's tests.

``full_set`` is the default-size synthetic federation (50 patients, ~2,150 files, three
sites, seed 0): generated once per test session and shared (read-only) by the
generator's tests, the de-identification tests and later the ingest and node tests.
``small_node`` is one site (6 synthetic patients, seed 3) ingested by the real ingest into
a federated node, once per session: read it, or copy it (``shutil.copytree``) to write.
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


@pytest.fixture(scope="session")
def small_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node directory built from site a of a 6-patient synthetic set (read-only: copy to write)."""
    from incisive_lab.deid import write_secret_file
    from incisive_lab.node.ingest import ingest

    root = tmp_path_factory.mktemp("small-node")
    generate(root / "raw", patients=6, seed=3, sites=("a",), progress=False)
    key = write_secret_file(root / "keys" / "provider.key")
    ingest(root / "node", dataset="site-a", dicom=root / "raw" / "a" / "dicom",
           clinical=root / "raw" / "a" / "clinical.xlsx", hosting="federated",
           secret_file=key, country="GR", progress=False)
    return root / "node"
