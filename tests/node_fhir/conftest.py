"""A node built by the real ingest from a small synthetic set, shared by the FHIR API tests.

``fhir_node`` is the session's ``small_node`` (6 synthetic patients, seed 3, site a,
federated), only read; tests that write copy it first (``writable_node``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from incisive_lab.node.fhir_api import FhirApi
from incisive_lab.node.store import NodeStore

BASE = "https://node.example.test:8443/fhir"


@pytest.fixture(scope="session")
def fhir_node(small_node: Path) -> Path:
    """The node directory (read-only for tests: copy it to write)."""
    return small_node


@pytest.fixture(scope="module")
def store(fhir_node: Path) -> Iterator[NodeStore]:
    """The ingested node, open."""
    with NodeStore.open(fhir_node) as st:
        yield st


@pytest.fixture(scope="module")
def api(store: NodeStore) -> FhirApi:
    """The FHIR API over the ingested node."""
    return FhirApi(store.fhir)


@pytest.fixture
def writable_node(fhir_node: Path, tmp_path: Path) -> Iterator[NodeStore]:
    """A private copy of the ingested node, open for writing."""
    copy = tmp_path / "node"
    shutil.copytree(fhir_node, copy, symlinks=True)
    with NodeStore.open(copy) as st:
        yield st
