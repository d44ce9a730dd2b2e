"""The stored format is frozen: a ledger written by an earlier version verifies forever."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.ledger import FORMAT, Checkpoint, Ledger, VerifierKey, leaf_hash

from . import make_golden

GOLDEN = Path(__file__).parent / "data" / "golden"
EXPECTED: dict[str, Any] = json.loads((GOLDEN / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """A scratch copy (SQLite writes its -wal/-shm files next to the database)."""
    node = tmp_path / "node"
    shutil.copytree(GOLDEN / "node", node)
    return node


def test_golden_ledger_verifies(golden: Path) -> None:
    assert not (golden / "ledger" / "node.key").exists()  # only public keys are kept
    trusted = [Checkpoint.parse(note) for note in EXPECTED["checkpoints"]]
    with Ledger.open(golden, read_only=True) as ledger:
        assert ledger.origin == EXPECTED["origin"]
        result = ledger.verify(trusted=trusted)
        assert result.ok, result.summary()
        assert result.size == ledger.size == EXPECTED["size"]
        assert base64.b64encode(ledger.root()).decode() == EXPECTED["root"]
        assert [str(cp) for cp in ledger.checkpoints()] == EXPECTED["checkpoints"]
        witness = VerifierKey.parse((GOLDEN / "witness.pub").read_text())
        for cp in ledger.checkpoints():
            cp.verify_witnessed(ledger.verifier, [witness], quorum=1)
        result = ledger.query(resource="dataset:golden-1")
        result.verify(ledger.verifier, [witness], quorum=1)
        assert len(result) > 10


def test_golden_entries_read_back_exactly(golden: Path) -> None:
    with Ledger.open(golden, read_only=True) as ledger:
        entries = list(ledger.entries())
    assert [e.leaf_hash.hex() for e in entries] == EXPECTED["leaf_hashes"]
    events = make_golden.golden_events()
    for entry, event in zip(entries, events, strict=True):
        assert leaf_hash(entry.data) == entry.leaf_hash
        assert entry.event == event  # still valid under the v1 schemas
        assert entry.event.to_bytes() == entry.data  # and still canonical


def _layout(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {
            "tables": {t: [(c[1], c[2], c[3], c[5]) for c in conn.execute(
                f"PRAGMA table_info({t})")] for t in tables},
            "indexes": sorted(r[0] for r in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")),
            "meta": dict(conn.execute("SELECT key, value FROM ledger_meta WHERE key = 'format'")),
        }
    finally:
        conn.close()


def test_this_version_writes_the_same_format(golden: Path, tmp_path: Path) -> None:
    """Same events -> same bytes, leaves, nodes, roots and checkpoint bodies as the golden."""
    events = make_golden.golden_events()
    fresh = tmp_path / "fresh"
    with Ledger.open(fresh, origin=EXPECTED["origin"]) as ledger:
        done = 0
        for size in (*make_golden.CHECKPOINT_SIZES, len(events)):
            ledger.append_many(events[done:size])
            done = size
            ledger.checkpoint()
        bodies = [cp.body for cp in ledger.checkpoints()]
    assert bodies == [Checkpoint.parse(n).body for n in EXPECTED["checkpoints"]]
    old_db, new_db = golden / "ledger" / "ledger.sqlite", fresh / "ledger" / "ledger.sqlite"
    assert _layout(new_db) == _layout(old_db)
    assert _layout(old_db)["meta"] == {"format": FORMAT}
    query = {"entries": "SELECT idx, leaf, data, kind, actor, resource, time FROM ledger_entries "
                        "ORDER BY idx",
             "nodes": "SELECT key, hash FROM ledger_nodes ORDER BY key",
             "head": "SELECT id, size FROM ledger_head"}
    for name, sql in query.items():
        old, new = sqlite3.connect(old_db), sqlite3.connect(new_db)
        try:
            assert old.execute(sql).fetchall() == new.execute(sql).fetchall(), name
        finally:
            old.close()
            new.close()


def test_golden_tamper_is_still_caught(golden: Path) -> None:
    conn = sqlite3.connect(golden / "ledger" / "ledger.sqlite")
    conn.execute("DROP TRIGGER ledger_entries_no_update")
    conn.execute("UPDATE ledger_entries SET data = CAST(replace(CAST(data AS TEXT), 'golden2', "
                 "'golden3') AS BLOB) WHERE idx = 30")
    conn.commit()
    conn.close()
    with Ledger.open(golden, read_only=True) as ledger:
        result = ledger.verify()
    assert not result.ok and result.first_bad_index == 30
