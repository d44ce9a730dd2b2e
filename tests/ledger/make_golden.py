"""Write the golden ledger: ``python -m tests.ledger.make_golden`` (from the repository root).

The golden ledger freezes the stored format: ``test_golden.py`` checks that this version
of the code still verifies it, reads every entry back, and writes exactly the same
entries, leaves, nodes and checkpoint bodies for the same events. Regenerate it only
when the format version changes on purpose (and keep the old one as a second golden).

The node key and the witness key are generated for this file only, used once, and
deleted: only their public keys are kept (``node.pub``, ``witness.pub``). They are TEST
KEYS with no value; nothing signed by them is trusted anywhere.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from incisive_lab.ledger import FORMAT, Event, Ledger, Outcome, Witness, event_kinds, event_schema

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden"
ORIGIN = "golden.test.incisive-lab.example/ledger"
WITNESS = "golden.test.incisive-lab.example/witness"
CHECKPOINT_SIZES = (1, 16, 25)

_SAMPLE: dict[str, Any] = {
    "string": "x-1 ✓ zoë", "integer": -(2**53 - 1), "boolean": True, "strings": ["a", "β"],
    "sha256": "0123456789abcdef" * 4, "time": "2024-02-29T23:59:59.999999+01:00",
}


#: The kinds the golden ledger was made from (frozen: a kind added later must not change
#: the golden bytes; tests/ledger checks every current kind against its schema separately).
GOLDEN_KINDS: tuple[str, ...] = ('access', 'airlock', 'annotate', 'consent', 'deidentify', 'erase', 'fl-run', 'grant', 'ingest', 'key', 'login', 'query', 'reidentify', 'request', 'spawn', 'task', 'terms', 'witness')


def golden_events() -> list[Event]:
    """The fixed events of the golden ledger: every kind, action and detail type."""
    out: list[Event] = []
    n = 0
    assert set(GOLDEN_KINDS) <= set(event_kinds())
    for kind in GOLDEN_KINDS:
        schema = event_schema(kind, 1)
        for action in schema.actions:
            details = {k: (spec.values[-1] if spec.type == "enum" else _SAMPLE[spec.type])
                       for k, spec in schema.details.items()} if n % 2 == 0 else {}
            out.append(Event(
                kind=kind, version=1, actor=f"user:golden{n % 4}@idp.example", action=action,
                resource=f"dataset:golden-{n % 3}/series:1.2.3.{n}",
                purpose="research:golden" if n % 5 else None if not (
                    schema.fields["purpose"].required) else "care:golden",
                outcome=Outcome.allow(f"rule {n}") if n % 6 else Outcome.deny("no grant — 拒否"),
                details=details, time=f"2025-0{1 + n % 9}-1{n % 10}T0{n % 10}:30:00.{n:06d}Z"))
            n += 1
    return out


def main() -> int:
    events = golden_events()
    with tempfile.TemporaryDirectory() as tmp:
        node = Path(tmp) / "node"
        with Ledger.open(node, origin=ORIGIN) as ledger:
            witness = Witness.open(Path(tmp) / "witness", name=WITNESS)
            witness.trust(ledger.public_key)
            done = 0
            for size in (*CHECKPOINT_SIZES, len(events)):
                ledger.append_many(events[done:size])
                done = size
                ledger.collect_cosignatures([witness])
            assert ledger.verify().ok
            checkpoints = [str(cp) for cp in ledger.checkpoints()]
            root = ledger.root()
            leaves = [e.leaf_hash.hex() for e in ledger.entries()]
        db = node / "ledger" / "ledger.sqlite"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.close()
        if GOLDEN.exists():
            shutil.rmtree(GOLDEN)
        (GOLDEN / "node" / "ledger").mkdir(parents=True)
        shutil.copy2(db, GOLDEN / "node" / "ledger" / "ledger.sqlite")
        shutil.copy2(node / "ledger" / "node.pub", GOLDEN / "node" / "ledger" / "node.pub")
        shutil.copy2(Path(tmp) / "witness" / "witness.pub", GOLDEN / "witness.pub")
        # node.key and witness.key are deleted with the temporary directory
    expected = {
        "about": "Golden ledger written by tests/ledger/make_golden.py with TEST KEYS that were "
                 "deleted after use; only their public keys are kept. Do not edit.",
        "format": FORMAT, "origin": ORIGIN, "witness": WITNESS, "size": len(events),
        "root": base64.b64encode(root).decode(), "leaf_hashes": leaves,
        "checkpoints": checkpoints,
    }
    (GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False)
                                          + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN} ({len(events)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
