"""`incisive-lab demo` (the README's first command, without the make wrapper) on a small federation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from incisive_lab.node.store import NodeStore


def test_demo_ingests_each_site_into_its_node_and_finds_no_leaks(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    cmd = [sys.executable, "-m", "incisive_lab.cli", "demo", "--data-only", "--dir", str(demo), "--patients", "6", "--seed", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "leaks found in what the nodes hold: 0" in first.stdout
    assert "ledgers verified: yes" in first.stdout
    digests = {}
    for site, prefix in (("a", "PSN-"), ("b", "PSN-"), ("c", "ANO-")):
        node = demo / "nodes" / site
        with NodeStore.open(node) as store:
            patients = {st.patient_id for st in store.index.studies()}
            assert patients and all(p.startswith(prefix) for p in patients)
            assert store.counts().instances > 0 and store.fhir.count("Patient") == len(patients)
            digests[site] = store.digest()
        record = json.loads((node / "datasets" / f"site-{site}.json").read_text())
        assert record["dct:identifier"] == f"site-{site}"
        html = next((node / "private" / "reports").glob("curation-*.html")).read_text()
        assert "<html" in html.lower()
    assert (demo / "nodes" / "a" / "private" / "vault.sqlite").exists()
    assert not (demo / "nodes" / "c" / "private" / "vault.sqlite").exists()
    assert (demo / "keys" / "a.key").stat().st_mode & 0o777 == 0o600
    # a second run reuses the synthetic set and the keys, and adds nothing to any node
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    for site, digest in digests.items():
        with NodeStore.open(demo / "nodes" / site) as store:
            assert store.digest() == digest, site
