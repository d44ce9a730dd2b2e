"""docs/synthetic-data.md stays in step with the generator."""

from __future__ import annotations

from pathlib import Path

from incisive_lab.dicom.synth import PRIVATE_TAGS

DOC = Path(__file__).parents[2] / "docs" / "synthetic-data.md"


def test_private_tag_table_is_documented() -> None:
    rows = [line for line in DOC.read_text("utf-8").splitlines() if line.startswith("| `")]
    for t in PRIVATE_TAGS:
        prefix = f"| `{t.creator}` | {t.group:04X} | xx{t.offset:02X} | {t.vr} |"
        row = next((r for r in rows if r.startswith(prefix)), None)
        assert row is not None, prefix
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-2:] == ["yes" if t.safe else "no", "yes" if t.identifying else "no"], row
