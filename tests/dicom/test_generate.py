"""Layout, determinism, idempotent regeneration, refusal and atomicity of :func:`generate`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from incisive_lab.dicom.synth import (
    GENERATOR_VERSION,
    INDEX_FORMAT,
    TRUTH_FORMAT,
    distribute_patients,
    generate,
)
from incisive_lab.errors import IncisiveLabError
from tests.dicom._helpers import SMALL, load_truth


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == ["a", "b", "c", "truth"]
    for site in SMALL["sites"]:
        assert (small_set / site / "clinical.xlsx").is_file()
        assert (small_set / site / "dicom").is_dir()
        assert (small_set / "truth" / f"{site}.json").is_file()
    index = json.loads((small_set / "truth" / "index.json").read_text())
    assert index["format"] == INDEX_FORMAT
    assert index["seed"] == SMALL["seed"] and index["patients"] == SMALL["patients"]
    assert index["sites"] == list(SMALL["sites"])
    assert index["generator_version"] == GENERATOR_VERSION
    # the manifest lists exactly the DICOM files on disk
    for site, truth in load_truth(small_set).items():
        assert truth["format"] == TRUTH_FORMAT and truth["site"] == site
        on_disk = {str(p.relative_to(small_set / site)) for p in (small_set / site).rglob("*.dcm")}
        assert on_disk == set(truth["files"])
        listed = {f for p in truth["patients"] for st in p["studies"] for se in st["series"]
                  for f in se["files"]}
        assert listed == on_disk
    assert not list(small_set.parent.glob(".set.synth-*"))  # no temp or old folders left


@pytest.mark.slow
def test_patients_are_distributed_and_types_balanced(full_set: Path) -> None:
    assert distribute_patients(50, ("a", "b", "c")) == {"a": 17, "b": 17, "c": 16}
    types: dict[str, int] = {}
    lesions: dict[tuple[str, bool], int] = {}
    for truth in load_truth(full_set).values():
        site_lesions = [p["lesion"] for p in truth["patients"]]
        assert abs(sum(site_lesions) - len(site_lesions) / 2) <= 1  # balanced per site
        for p in truth["patients"]:
            types[p["cancer_type"]] = types.get(p["cancer_type"], 0) + 1
            lesions[(p["cancer_type"], p["lesion"])] = lesions.get((p["cancer_type"], p["lesion"]), 0) + 1
    assert set(types) == {"lung", "colorectal", "prostate", "breast"}
    assert max(types.values()) - min(types.values()) <= 2
    for cancer in types:
        assert abs(lesions.get((cancer, True), 0) - lesions.get((cancer, False), 0)) <= 2


@pytest.mark.slow
def test_full_size_counts(full_set: Path) -> None:
    n_files = sum(len(t["files"]) for t in load_truth(full_set).values())
    size = sum(p.stat().st_size for p in full_set.rglob("*") if p.is_file())
    assert 1700 <= n_files <= 2600
    assert size < 300e6


def test_deterministic_byte_identical(tmp_path: Path, small_set: Path) -> None:
    again = tmp_path / "again"
    generate(again, progress=False, **SMALL)  # type: ignore[arg-type]
    assert tree_digest(again) == tree_digest(small_set)


def test_deterministic_across_processes(tmp_path: Path) -> None:
    """No hash randomisation, clock or entropy leaks in: other processes, same bytes."""
    import os
    import subprocess
    import sys

    code = ("import sys; from incisive_lab.dicom.synth import generate; "
            "generate(sys.argv[1], patients=5, seed=9, sites=('a', 'b', 'c', 'd', 'e'), "
            "progress=False)")
    digests = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env)
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]


def test_seed_changes_everything(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    generate(one, patients=2, seed=1, sites=("x",), progress=False)
    generate(two, patients=2, seed=2, sites=("x",), progress=False)
    a, b = tree_digest(one), tree_digest(two)
    assert not set(a.values()) & set(b.values())


def test_regenerates_same_parameters_idempotently(tmp_path: Path) -> None:
    out = tmp_path / "set"
    generate(out, patients=2, seed=3, sites=("x", "y"), progress=False)
    first = tree_digest(out)
    generate(out, patients=2, seed=3, sites=("x", "y"), progress=False)
    assert tree_digest(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_refuses_other_parameters_or_foreign_folders(tmp_path: Path) -> None:
    out = tmp_path / "set"
    generate(out, patients=2, seed=3, sites=("x",), progress=False)
    before = tree_digest(out)
    with pytest.raises(IncisiveLabError, match="other parameters"):
        generate(out, patients=2, seed=4, sites=("x",), progress=False)
    assert tree_digest(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(IncisiveLabError, match="not produced by the generator"):
        generate(foreign, patients=1, seed=0, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(IncisiveLabError, match="not a folder"):
        generate(a_file, patients=1, seed=0, progress=False)


def test_accepts_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    generate(out, patients=1, seed=0, sites=("x",), progress=False)
    assert (out / "truth" / "index.json").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patients": 0, "seed": 0}, "patients"),
        ({"patients": 2, "seed": -1}, "seed"),
        ({"patients": 2, "seed": 0, "sites": ()}, "at least one site"),
        ({"patients": 2, "seed": 0, "sites": ("a", "A")}, "duplicates"),
        ({"patients": 2, "seed": 0, "sites": ("truth",)}, "bad site name"),
        ({"patients": 2, "seed": 0, "sites": ("../x",)}, "bad site name"),
    ],
)
def test_rejects_bad_parameters(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(IncisiveLabError, match=message):
        generate(tmp_path / "set", progress=False, **kwargs)
    assert not (tmp_path / "set").exists()


def test_a_failed_run_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import incisive_lab.dicom.synth._render as render

    real = render.render_site
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_site", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "set", patients=2, seed=0, sites=("x", "y"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_regeneration_keeps_the_old_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import incisive_lab.dicom.synth._render as render

    out = tmp_path / "set"
    generate(out, patients=1, seed=0, sites=("x",), progress=False)
    before = tree_digest(out)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(render, "render_site", broken)
    with pytest.raises(RuntimeError):
        generate(out, patients=1, seed=0, sites=("x",), progress=False)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_stale_temp_folder_from_a_killed_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".set.synth-tmp-99999"
    (stale / "a").mkdir(parents=True)
    generate(tmp_path / "set", patients=1, seed=0, sites=("x",), progress=False)
    assert not stale.exists()


def test_summary(tmp_path: Path) -> None:
    summary = generate(tmp_path / "set", patients=3, seed=5, sites=("x", "y"), progress=False)
    assert summary.sites == ("x", "y") and summary.patients == 3 and summary.seed == 5
    assert summary.per_site["x"].patients == 2 and summary.per_site["y"].patients == 1
    total = summary.total
    files = list((tmp_path / "set").rglob("*.dcm"))
    assert total.files == len(files)
    assert total.bytes == sum(p.stat().st_size for p in (tmp_path / "set").rglob("*")
                              if p.is_file() and p.parent.name != "truth")
    assert summary.elapsed_seconds > 0
    table = summary.table()
    assert table.splitlines()[0].split()[:3] == ["site", "patients", "studies"]
    assert table.splitlines()[-1].startswith("total")
