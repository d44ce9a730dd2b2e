"""A provider's site ingested twice from the same raw export: federated into the provider's node
(``small_node``: pseudonymised with the provider's secret) and central into a central node
(anonymised, with ``--removal-key`` the same secret). Read-only: copy what a test changes."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from incisive_lab.node.ingest import IngestSummary, ingest

CENTRAL_DATASET = "site-a-central"


@dataclass(frozen=True)
class Pair:
    """The two nodes made from one raw site, and what made them."""

    provider: Path        #: the provider's federated node (small_node; do not write)
    central: Path         #: the central node (do not write: copy it)
    raw: Path             #: the raw site (dicom/, clinical.xlsx)
    key: Path             #: the provider's secret file
    vault: Path           #: a copy of the provider's vault (safe to open)
    summary: IngestSummary

    def copy_central(self, dst: Path) -> Path:
        """A private copy of the central node."""
        shutil.copytree(self.central, dst, symlinks=True)
        return dst


@pytest.fixture(scope="session")
def pair(small_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    root = small_node.parent
    raw, key = root / "raw" / "a", root / "keys" / "provider.key"
    base = tmp_path_factory.mktemp("central-pair")
    vault = base / "vault.sqlite"
    shutil.copy2(small_node / "private" / "vault.sqlite", vault)
    summary = ingest(base / "central", dataset=CENTRAL_DATASET, dicom=raw / "dicom", clinical=raw / "clinical.xlsx",
                     hosting="central", removal_key=key, country="GR", progress=False)
    return Pair(provider=small_node, central=base / "central", raw=raw, key=key, vault=vault, summary=summary)
