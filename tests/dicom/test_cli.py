"""The ``incisive-lab synth`` sub-command."""

from __future__ import annotations

from pathlib import Path

import pytest

from incisive_lab.cli import build_parser, main


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["synth", "out"])
    assert args.patients == 50 and args.seed == 0 and args.sites == "a,b,c"
    assert args.out == Path("out")


def test_synth_writes_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    assert main(["synth", str(out), "--patients", "2", "--seed", "4", "--sites", "x,y"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:2] == ["site", "patients"]
    assert "total" in printed and str(out) in printed
    assert (out / "x" / "clinical.xlsx").is_file() and (out / "truth" / "y.json").is_file()
    # same parameters: regenerated; other parameters: refused with exit status 2
    assert main(["synth", str(out), "--patients", "2", "--seed", "4", "--sites", "x,y"]) == 0
    assert main(["synth", str(out), "--patients", "3", "--seed", "4", "--sites", "x,y"]) == 2
    assert "other parameters" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--patients", "0"], ["--sites", "a,,b"], ["--seed", "-3"]])
def test_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["synth", str(tmp_path / "set"), *argv]) == 2
    assert capsys.readouterr().err.startswith("incisive-lab: error:")
    assert not (tmp_path / "set").exists()
