"""`incisive-lab demo` (the README's first command, without the make wrapper) on a small federation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_generates_deidentifies_and_finds_no_leaks(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    cmd = [sys.executable, "-m", "incisive_lab.cli", "demo", "--dir", str(demo), "--patients", "6", "--seed", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "leaks found in de-identified output: 0" in first.stdout
    for site, mode in (("a", "pseudonymize"), ("b", "pseudonymize"), ("c", "anonymize")):
        report = json.loads((demo / "reports" / f"{site}.json").read_text())
        assert report["mode"] == mode and report["summary"]["failed"] == 0
        assert "<img src='data:image/png;base64," in (demo / "reports" / f"{site}.html").read_text()
        assert any((demo / "deid" / site).rglob("*.dcm"))
    assert (demo / "vaults" / "a.sqlite").exists() and not (demo / "vaults" / "c.sqlite").exists()
    key_mode = (demo / "keys" / "a.key").stat().st_mode & 0o777
    assert key_mode == 0o600
    # a second run reuses the synthetic set and the keys, and gives the same pseudonymised data
    before = sorted(p.relative_to(demo).as_posix() for p in (demo / "deid" / "a").rglob("*.dcm"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(p.relative_to(demo).as_posix() for p in (demo / "deid" / "a").rglob("*.dcm")) == before
