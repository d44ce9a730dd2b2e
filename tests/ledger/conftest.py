"""Fixtures for the ledger tests: both storage back-ends, for real."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests._support.postgres import PostgresCluster

from .helpers import BACKENDS, Site


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once on SQLite and once on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def make_site(backend: str, tmp_path: Path,
              request: pytest.FixtureRequest) -> Callable[[str], Site]:
    """Factory of fresh, empty ledger locations on the test's back-end."""

    def make(name: str = "a") -> Site:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        if backend == "sqlite":
            return Site("sqlite", str(root / "node"), None, root)
        pg: PostgresCluster = request.getfixturevalue("pg_cluster")
        return Site("postgres", pg.create_database(), root / "keys", root)

    return make


@pytest.fixture
def site(make_site: Callable[[str], Site]) -> Site:
    """One fresh ledger location on the test's back-end."""
    return make_site("a")
