"""Nodes for the cohort tests.

``cohort_node`` is a private copy of the session's ``small_node`` (6 patients, site a): the
guard writes its tables into the node database, so the shared node is never opened here.
``full_node`` is site a of the session's ``full_set`` (50-patient federation) ingested once
for this package.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from incisive_lab.cohort import QueryGuard
from incisive_lab.node.store import NodeStore


@pytest.fixture(scope="module")
def cohort_node(small_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStore]:
    """A writable copy of the small node, open (one per test module)."""
    copy = tmp_path_factory.mktemp("cohort-node") / "node"
    shutil.copytree(small_node, copy, symlinks=True)
    with NodeStore.open(copy) as store:
        yield store


@pytest.fixture
def fresh_node(small_node: Path, tmp_path: Path) -> Iterator[NodeStore]:
    """A writable copy of the small node for one test (to add studies or change resources)."""
    copy = tmp_path / "node"
    shutil.copytree(small_node, copy, symlinks=True)
    with NodeStore.open(copy) as store:
        yield store


@pytest.fixture(scope="session")
def full_node_dir(full_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site a of the full synthetic set, ingested into a federated node (read-only)."""
    from incisive_lab.deid import write_secret_file
    from incisive_lab.node.ingest import ingest

    root = tmp_path_factory.mktemp("cohort-full-node")
    key = write_secret_file(root / "keys" / "provider.key")
    ingest(root / "node", dataset="site-a", dicom=full_set / "a" / "dicom",
           clinical=full_set / "a" / "clinical.xlsx", hosting="federated",
           secret_file=key, country="GR", progress=False)
    return root / "node"


@pytest.fixture(scope="module")
def full_node(full_node_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStore]:
    """A writable copy of the ingested full site a, open."""
    copy = tmp_path_factory.mktemp("cohort-full-copy") / "node"
    shutil.copytree(full_node_dir, copy, symlinks=True)
    with NodeStore.open(copy) as store:
        yield store


@pytest.fixture
def guard(cohort_node: NodeStore) -> QueryGuard:
    """A guard on the module's node with a generous budget."""
    return QueryGuard(cohort_node.engine, daily_budget=10_000)
