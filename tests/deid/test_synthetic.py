"""The de-identifier over the full synthetic federation: nothing planted survives, in either mode.

Every site of the default synthetic set (50 patients, ~2,150 files) is de-identified
with the Basic Profile, and with a rich set of options that keeps as much as PS3.15
allows (modified dates, safe private attributes, cleaned descriptors and structured
content, cleaned pixels). The generator's ground truth lists every planted PHI string,
every real date and every burned-in line; the leak scanner looks for all of them in
every byte, every decoded element, every output path, the clinical spreadsheet, and
(OCR) the pixels of every image that had text burned in.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from incisive_lab.cdm.spreadsheet import read_workbook
from incisive_lab.deid import (
    LeakScanner,
    Profile,
    Pseudonymizer,
    RunReport,
    Secret,
    Vault,
    deidentify_tree,
    write_secret_file,
)

warnings.filterwarnings("ignore", module="pydicom")

RICH = [
    "retain-longitudinal-modified-dates", "retain-safe-private", "retain-patient-characteristics",
    "clean-descriptors", "clean-structured-content", "clean-graphics", "clean-pixel-data",
]
PROFILES = {"basic": [], "rich": RICH}


@dataclass
class Run:
    mode: str
    profile: str
    out: Path  # out/<site>/...
    reports: dict[str, RunReport]
    vault: Path | None


@cache
def truth(full_set: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((full_set / "truth" / "index.json").read_text())
    return {site: json.loads((full_set / "truth" / f"{site}.json").read_text()) for site in index["sites"]}


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secret_file(tmp_path_factory.mktemp("key") / "provider.key")


_runs: dict[tuple[str, str, str], Run] = {}


@pytest.fixture(scope="module")
def deid_run(full_set: Path, secret_file: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """run(mode, profile, tag="") -> Run, computed once per module."""

    def run(mode: str, profile: str, tag: str = "") -> Run:
        key = (mode, profile, tag)
        if key not in _runs:
            out = tmp_path_factory.mktemp(f"deid-{mode}-{profile}{tag}")
            vault = out / "vault.sqlite" if mode == "pseudonymize" else None
            secret = Secret.from_file(secret_file) if mode == "pseudonymize" else None
            reports = {}
            for site in truth(full_set):
                reports[site] = deidentify_tree(
                    full_set / site, out / site, profile=Profile(PROFILES[profile], mode=mode), secret=secret,
                    vault=vault, jobs=2, report=out / f"{site}-report.json", progress=False,
                )
            _runs[key] = Run(mode, profile, out, reports, vault)
        return _runs[key]

    yield run
    _runs.clear()


def _accession_owners(out: Path, report: RunReport, t: dict[str, Any]) -> dict[str, str]:
    """Accession pseudonym -> original patient ID, through the output files and the truth."""
    owners = {}
    for rec in report.files:
        if rec.status == "ok":
            ds = pydicom.dcmread(out / (rec.output or ""), stop_before_pixels=True)
            owners[str(ds.AccessionNumber)] = t["files"][rec.source]["patient_id"]
    return owners


def _scanners(t: dict[str, Any]) -> tuple[LeakScanner, dict[str, LeakScanner], dict[str, str]]:
    tokens = list(t["site_phi_tokens"]) + [tok for p in t["patients"] for tok in p["phi_tokens"]]
    uids = {f[k] for f in t["files"].values() for k in ("sop_instance_uid", "series_instance_uid", "study_instance_uid")}
    everywhere = LeakScanner([x for x in tokens if len(x) >= 4] + sorted(uids))
    dates = {p["patient_id"]: LeakScanner([], p["phi_dates"]) for p in t["patients"]}
    owner = {rel: f["patient_id"] for rel, f in t["files"].items()}
    return everywhere, dates, owner


@pytest.mark.parametrize("mode", ["pseudonymize", "anonymize"])
@pytest.mark.parametrize("profile", ["basic", "rich"])
def test_nothing_planted_survives(full_set: Path, deid_run, mode: str, profile: str) -> None:  # type: ignore[no-untyped-def]
    run = deid_run(mode, profile)
    scanned = ocr_checked = 0
    for site, t in truth(full_set).items():
        everywhere, dates, owner = _scanners(t)
        report = run.reports[site]
        assert report.counts["failed"] == 0
        for rec in report.files:
            if rec.status != "ok":
                continue
            data = (run.out / site / (rec.output or "")).read_bytes()
            leaks = everywhere.scan_file(rec.source, data, relpath=rec.output)
            leaks += dates[owner[rec.source]].scan_file(rec.source, data)
            assert leaks == [], "\n".join(map(str, leaks[:10]))
            scanned += 1
            if t["files"][rec.source]["burned_in_text"]:
                ocr = everywhere.scan_pixels(rec.source, data)
                assert ocr == [], "\n".join(map(str, ocr))
                ocr_checked += 1
        sheet = read_workbook(run.out / site / "clinical.xlsx")
        cells = json.dumps(sheet, default=str)
        assert everywhere.scan_text("clinical.xlsx", cells, "cells") == []
        if profile == "basic":  # dates removed: no real date of anyone
            all_dates = LeakScanner([], sorted({d for p in t["patients"] for d in p["phi_dates"]}))
            assert all_dates.scan_text("clinical.xlsx", cells, "cells") == []
        else:  # dates shifted: no row shows a real date of its own patient
            patient_of = _accession_owners(run.out / site, report, t)
            for row in sheet:
                first_acc = (row["accession_numbers"] or "").split(";")[0]
                own = dates[patient_of[first_acc]]
                assert own.scan_text("clinical.xlsx", json.dumps(row, default=str), "row") == []
    assert scanned > 2000
    if profile == "rich":
        assert ocr_checked > 20  # burned-in images were cleaned and released, then read by OCR


def test_burned_in_images_are_quarantined_or_cleaned(full_set: Path, deid_run) -> None:  # type: ignore[no-untyped-def]
    basic, rich = deid_run("pseudonymize", "basic"), deid_run("pseudonymize", "rich")
    for site, t in truth(full_set).items():
        burned = {rel for rel, f in t["files"].items() if f["burned_in_text"]}
        status = {r.source: r.status for r in basic.reports[site].files}
        assert {rel for rel, s in status.items() if s == "quarantined"} == burned  # basic: never passed through
        assert all(status[rel] == "ok" for rel in t["files"] if rel not in burned)
        for rec in rich.reports[site].files:
            if rec.source not in burned:
                continue
            assert rec.status in ("ok", "quarantined")
            if rec.status != "ok":
                continue
            assert rec.pixels_cleaned
            ds = pydicom.dcmread(rich.out / site / (rec.output or ""))
            assert ds.BurnedInAnnotation == "NO"
            pixels = np.asarray(ds.pixel_array)
            frame = pixels if pixels.ndim == 2 else pixels.mean(axis=-1)
            top = frame.max()
            for r0, c0, r1, c1 in t["files"][rec.source]["burned_in_boxes"]:
                box = frame[r0:r1, c0:c1]
                assert (box >= top).sum() == 0 or box.size == 0, f"{rec.source}: text pixels left in {r0, c0, r1, c1}"


def test_uids_are_remapped_consistently_and_links_hold(full_set: Path, deid_run) -> None:  # type: ignore[no-untyped-def]
    run = deid_run("pseudonymize", "basic")
    for site, t in truth(full_set).items():
        new: dict[str, tuple[str, str, str, str]] = {}
        for rec in run.reports[site].files:
            if rec.status == "ok":
                ds = pydicom.dcmread(run.out / site / (rec.output or ""), stop_before_pixels=True)
                new[rec.source] = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.get("FrameOfReferenceUID", ""))
        by_series: dict[str, set[str]] = {}
        by_study: dict[str, set[str]] = {}
        for rel, f in t["files"].items():
            if rel in new:
                by_series.setdefault(f["series_instance_uid"], set()).add(new[rel][1])
                by_study.setdefault(f["study_instance_uid"], set()).add(new[rel][0])
                assert new[rel][2] != f["sop_instance_uid"]
        assert all(len(v) == 1 for v in by_series.values()), "one new series UID per original series"
        assert all(len(v) == 1 for v in by_study.values()), "one new study UID per original study"
        assert len({next(iter(v)) for v in by_series.values()}) == len(by_series), "distinct series stay distinct"
        assert len({n[2] for n in new.values()}) == len(new), "instances stay distinct"
        # every reference that remains points at an instance of the output
        sop_uids = {n[2] for n in new.values()}
        for rec in run.reports[site].files:
            if rec.status != "ok":
                continue
            ds = pydicom.dcmread(run.out / site / (rec.output or ""), stop_before_pixels=True)
            refs: list[str] = []
            ds.walk(lambda _d, e: refs.append(str(e.value)) if e.tag == 0x00081155 else None)  # noqa: B023
            assert set(refs) <= sop_uids, f"{rec.source}: dangling reference"


def test_pseudonyms_are_stable_and_shared_between_dicom_and_spreadsheet(full_set: Path, deid_run, secret_file: Path) -> None:  # type: ignore[no-untyped-def]
    first, again = deid_run("pseudonymize", "basic"), deid_run("pseudonymize", "basic", tag="-again")

    def digests(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.dcm"))}

    pseudo = Pseudonymizer(Secret.from_file(secret_file))
    for site, t in truth(full_set).items():
        assert digests(first.out / site) == digests(again.out / site), "a rerun gives the same bytes"
        sheet = read_workbook(first.out / site / "clinical.xlsx")
        assert sheet == read_workbook(again.out / site / "clinical.xlsx")
        expected = {pseudo.patient(p["patient_id"]) for p in t["patients"]}
        dicom_ids = {r.patient for r in first.reports[site].files if r.status == "ok"}
        assert {row["patient_id"] for row in sheet} == expected == dicom_ids
        # accession numbers link the sheet's rows to their own patient's studies
        acc_owner = {}
        for rec in first.reports[site].files:
            if rec.status == "ok":
                ds = pydicom.dcmread(first.out / site / (rec.output or ""), stop_before_pixels=True)
                acc_owner[str(ds.AccessionNumber)] = str(ds.PatientID)
        for row in sheet:
            for acc in (row["accession_numbers"] or "").split(";"):
                assert acc_owner[acc] == row["patient_id"]


def test_reidentification_round_trip(full_set: Path, deid_run, secret_file: Path) -> None:  # type: ignore[no-untyped-def]
    run = deid_run("pseudonymize", "basic")
    assert run.vault is not None
    with Vault(run.vault, Secret.from_file(secret_file)) as vault:
        for site, t in truth(full_set).items():
            pseudonyms = sorted({r.patient for r in run.reports[site].files if r.patient})
            originals = vault.lookup(pseudonyms)
            assert None not in originals
            back = {o["PatientID"] for o in originals if o}
            assert back == {p["patient_id"] for p in t["patients"]}
            with_names = [o for o in originals if o and o.get("clinical.family_name")]
            assert len(with_names) == len(t["patients"])  # the spreadsheet's identity joined the DICOM's


def test_anonymised_output_cannot_be_reidentified(full_set: Path, deid_run, secret_file: Path) -> None:  # type: ignore[no-untyped-def]
    pseud, anon = deid_run("pseudonymize", "basic"), deid_run("anonymize", "basic")
    anon_again = deid_run("anonymize", "basic", tag="-again")
    secret = Secret.from_file(secret_file)
    keyed = Pseudonymizer(secret)
    assert pseud.vault is not None
    with Vault(pseud.vault, secret) as vault:
        for site, t in truth(full_set).items():
            ids = sorted({r.patient for r in anon.reports[site].files if r.patient})
            assert ids and all(i.startswith("ANO-") for i in ids)
            assert vault.lookup(ids) == [None] * len(ids)
            assert not set(ids) & {keyed.patient(p["patient_id"]) for p in t["patients"]}
            assert not set(ids) & {r.patient for r in anon_again.reports[site].files if r.patient}
            some = next(r for r in anon.reports[site].files if r.status == "ok")
            ds = pydicom.dcmread(anon.out / site / (some.output or ""), stop_before_pixels=True)
            assert vault.lookup([str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.AccessionNumber)]) == [None] * 3


def test_jobs_2_output_is_identical_to_jobs_1(full_set: Path, secret_file: Path, tmp_path: Path) -> None:
    site = "b"
    secret = Secret.from_file(secret_file)
    one = deidentify_tree(full_set / site, tmp_path / "one", profile=Profile(["retain-safe-private"]), secret=secret, jobs=1)
    two = deidentify_tree(full_set / site, tmp_path / "two", profile=Profile(["retain-safe-private"]), secret=secret, jobs=2)

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert one.as_json(timing=False) == two.as_json(timing=False)


def test_safe_private_never_keeps_a_decoy_creators_block(full_set: Path, deid_run) -> None:  # type: ignore[no-untyped-def]
    """Some GE series put a decoy creator at block 0x10 with the patient's ID where the safe elements would sit."""
    run = deid_run("pseudonymize", "rich")
    decoys = kept = 0
    for site in truth(full_set):
        for rec in run.reports[site].files:
            if rec.status != "ok":
                continue
            ds = pydicom.dcmread(io.BytesIO((run.out / site / (rec.output or "")).read_bytes()), stop_before_pixels=True)
            creators = {e.tag.element: str(e.value) for e in ds if e.tag.group == 0x0019 and 0x10 <= e.tag.element <= 0xFF}
            decoys += "GEMS_GENIE_1" in creators.values()
            for block, creator in creators.items():
                kept += 1
                assert creator in ("GEMS_ACQU_01", "SIEMENS MR HEADER"), creator
                assert any(e.tag.group == 0x0019 and e.tag.element >> 8 == block for e in ds if e.tag.element > 0xFF)
    assert decoys == 0 and kept > 0
