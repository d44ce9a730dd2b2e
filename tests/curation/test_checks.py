"""Each curation check with an input that fails it, built in code from a small synthetic set."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from incisive_lab.curation import (
    CHECKS,
    CurationResult,
    body_part_code,
    modality_code,
    read_clinical,
    run_curation,
)
from incisive_lab.dicom.synth import generate

TODAY = dt.date(2026, 1, 1)


def _label(pid: str) -> str:
    return "PSEUDO-" + str(sum(map(ord, pid)) % 9973)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three patients, one per site (site a: one CT chest study, 41 files)."""
    out = tmp_path_factory.mktemp("cur-synth") / "set"
    generate(out, patients=3, seed=11, progress=False)
    return out


@pytest.fixture
def site(small_set: Path, tmp_path: Path) -> Path:
    """A private copy of site a (dicom/ and clinical.xlsx) that a test may break."""
    dst = tmp_path / "a"
    shutil.copytree(small_set / "a", dst)
    return dst


def _series_files(site: Path) -> list[list[Path]]:
    folders = sorted({p.parent for p in (site / "dicom").rglob("*.dcm")})
    return [sorted(f.glob("*.dcm")) for f in folders]


def _volume(site: Path) -> list[Path]:
    """The files of the largest series (the axial CT volume)."""
    return max(_series_files(site), key=len)


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _run(site: Path, clinical: object = "default", **kw: object) -> CurationResult:
    source = site / "clinical.xlsx" if clinical == "default" else clinical
    return run_curation(site / "dicom", source, label=_label, today=TODAY, **kw)  # type: ignore[arg-type]


def _checks(result: CurationResult) -> set[str]:
    return {f.check for f in result.findings}


def _rel(site: Path, path: Path) -> str:
    return path.relative_to(site / "dicom").as_posix()


def test_clean_synthetic_sets_have_no_errors(small_set: Path) -> None:
    for name in ("a", "b", "c"):
        result = run_curation(small_set / name / "dicom", small_set / name / "clinical.xlsx",
                              label=_label, today=TODAY)
        assert result.errors == (), [f.message for f in result.errors]
        assert result.quarantine == ()
        assert result.files_checked == len(list((small_set / name / "dicom").rglob("*.dcm")))
        for series in result.series.values():
            assert series.modality is not None and series.body_part is not None


def test_series_codes_are_normalised(site: Path) -> None:
    result = _run(site)
    codes = {(s.modality_value, s.body_part_value, s.modality, s.body_part) for s in result.series.values()}
    assert ("CT", "CHEST", modality_code("CT"), body_part_code("CHEST")) in codes
    assert body_part_code("CHEST") is not None and body_part_code("CHEST").code == "816094009"  # type: ignore[union-attr]


def test_truncated_native_pixel_data_quarantines_the_series(site: Path) -> None:
    victim = _volume(site)[3]
    data = victim.read_bytes()
    victim.write_bytes(data[:-5000])
    result = _run(site)
    found = [f for f in result.findings if f.check == "pixel-undecodable"]
    assert found and found[0].file == _rel(site, victim) and "truncated" in found[0].message
    assert all(result.is_quarantined(_rel(site, p)) for p in _volume(site))
    assert any("pixel-undecodable" in r for r in result.reasons(_rel(site, victim)))


def test_truncated_compressed_pixel_data_is_caught(site: Path) -> None:
    files = _volume(site)
    for p in files[:3]:
        _edit(p, lambda ds: ds.compress(RLELossless))
    victim = files[1]
    data = victim.read_bytes()
    victim.write_bytes(data[:-3000])
    result = _run(site)
    found = [f for f in result.findings if f.check == "pixel-undecodable"]
    assert [f.file for f in found] == [_rel(site, victim)]
    assert result.is_quarantined(_rel(site, files[0]))


def test_corrupt_compressed_stream_is_caught_by_decoding(site: Path) -> None:
    victim = _volume(site)[0]
    _edit(victim, lambda ds: ds.compress(RLELossless))
    ds = pydicom.dcmread(victim)
    raw = bytearray(ds.PixelData)
    raw[16 + 4:16 + 8] = (10).to_bytes(4, "little")  # RLE header: segment count 10 for 16-bit mono
    ds.PixelData = bytes(raw)
    ds.save_as(victim)
    result = _run(site, decode="all")
    assert "pixel-undecodable" in _checks(result)


def test_missing_type1_is_an_error_and_type2_a_warning(site: Path) -> None:
    victim = _volume(site)[5]
    _edit(victim, lambda ds: delattr(ds, "FrameOfReferenceUID"))
    other = _volume(site)[6]
    _edit(other, lambda ds: delattr(ds, "StudyID"))
    result = _run(site)
    t1 = [f for f in result.findings if f.check == "required-type1"]
    assert t1 and t1[0].attribute == "FrameOfReferenceUID" and t1[0].file == _rel(site, victim)
    assert t1[0].severity == "error" and result.is_quarantined(_rel(site, other))
    t2 = [f for f in result.findings if f.check == "required-type2"]
    assert t2 and t2[0].attribute == "StudyID" and t2[0].severity == "warning"


def test_empty_type1_is_an_error(site: Path) -> None:
    victim = _volume(site)[2]

    def blank(ds: pydicom.Dataset) -> None:
        ds.FrameOfReferenceUID = ""

    _edit(victim, blank)
    result = _run(site)
    assert any(f.check == "required-type1" and "empty" in f.message for f in result.findings)


def test_irregular_slice_spacing(site: Path) -> None:
    victim = _volume(site)[10]

    def shift(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.0]

    _edit(victim, shift)
    result = _run(site)
    found = [f for f in result.findings if f.check == "geometry-spacing"]
    assert found and found[0].attribute == "ImagePositionPatient"
    assert all(result.is_quarantined(_rel(site, p)) for p in _volume(site))


def test_missing_slice_is_a_gap(site: Path) -> None:
    _volume(site)[10].unlink()
    result = _run(site)
    assert any(f.check == "geometry-spacing" and "gap" in f.message for f in result.findings)


def test_duplicate_position(site: Path) -> None:
    files = _volume(site)
    pos = pydicom.dcmread(files[4]).ImagePositionPatient

    def same(ds: pydicom.Dataset) -> None:
        ds.ImagePositionPatient = pos

    _edit(files[5], same)
    result = _run(site)
    assert "geometry-duplicate-position" in _checks(result)


def test_rotated_orientation_in_one_slice(site: Path) -> None:
    victim = _volume(site)[7]

    def rotate(ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [0.9962, 0.0872, 0, -0.0872, 0.9962, 0]

    _edit(victim, rotate)
    result = _run(site)
    found = [f for f in result.findings if f.check == "geometry-orientation"]
    assert found and found[0].file == _rel(site, victim)


def test_dimensions_differ(site: Path) -> None:
    def spacing(ds: pydicom.Dataset) -> None:
        ds.PixelSpacing = [0.5, 0.5]

    _edit(_volume(site)[3], spacing)
    assert "geometry-dimensions" in _checks(_run(site))


def test_duplicate_sop_identical_is_a_warning_different_is_an_error(site: Path) -> None:
    files = _volume(site)
    shutil.copy(files[0], files[0].parent / "copy.dcm")
    result = _run(site)
    dup = [f for f in result.findings if f.check.startswith("duplicate-sop")]
    assert [f.check for f in dup] == ["duplicate-sop-identical"] and result.errors == ()

    ds = pydicom.dcmread(files[0])
    ds.InstanceNumber = 999
    ds.save_as(files[0].parent / "copy.dcm")
    result = _run(site)
    assert "duplicate-sop-conflict" in _checks(result)
    assert result.is_quarantined(_rel(site, files[1]))


def test_unknown_body_part_is_a_warning_with_the_value(site: Path) -> None:
    for p in _volume(site):
        _edit(p, lambda ds: setattr(ds, "BodyPartExamined", "ELBOWS"))
    result = _run(site)
    found = [f for f in result.findings if f.check == "bodypart-unknown"]
    assert found and "ELBOWS" in found[0].message and found[0].severity == "warning"
    assert result.errors == () and not result.quarantine


def test_study_date_in_the_future(site: Path) -> None:
    for series in _series_files(site):
        for p in series:
            _edit(p, lambda ds: setattr(ds, "StudyDate", "20990101"))
    result = _run(site)
    found = [f for f in result.findings if f.check == "study-date-implausible"]
    assert found and "future" in found[0].message
    assert len(result.quarantined_files) == sum(len(s) for s in _series_files(site))


def test_study_before_birth(site: Path) -> None:
    for series in _series_files(site):
        for p in series:
            _edit(p, lambda ds: setattr(ds, "StudyDate", "19000102"))
    result = _run(site)
    assert any(f.check == "study-date-implausible" and "birth" in f.message for f in result.findings)


def test_series_date_before_study_and_invalid_dates(site: Path) -> None:
    for p in _volume(site):
        _edit(p, lambda ds: setattr(ds, "SeriesDate", "19910101"))
    assert "series-before-study" in _checks(_run(site))
    _edit(_volume(site)[0], lambda ds: setattr(ds, "SeriesDate", "2021-13-45"))
    assert "date-invalid" in _checks(_run(site))


def test_birth_date_in_the_future(site: Path) -> None:
    for series in _series_files(site):
        for p in series:
            _edit(p, lambda ds: setattr(ds, "PatientBirthDate", "20991231"))
    result = _run(site)
    assert "birth-date-implausible" in _checks(result)
    assert len(result.quarantined_patients) == 1


def test_clinical_row_missing_a_required_column_for_its_cancer_type(site: Path) -> None:
    rows = [r for _, r in read_clinical(site / "clinical.xlsx")]
    cancer = rows[0]["cancer_type"]
    from incisive_lab.cdm.template import COLUMNS

    specific = next(c.name for c in COLUMNS if c.required and c.applies_to == (cancer,))
    rows[0][specific] = None
    result = _run(site, clinical=rows)
    found = [f for f in result.findings if f.check == "clinical-incomplete"]
    assert [f.attribute for f in found] == [specific] and found[0].row == 2
    assert found[0].patient in result.quarantined_patients
    assert result.quarantined_files == frozenset(_rel(site, p) for s in _series_files(site) for p in s)
    assert result.quarantined_rows == {2}


def test_clinical_date_and_birth_mismatch(site: Path) -> None:
    rows = [r for _, r in read_clinical(site / "clinical.xlsx")]
    rows[0]["diagnosis_date"] = dt.date(2098, 1, 1)
    rows[0]["birth_date"] = rows[0]["birth_date"] + dt.timedelta(days=1)
    checks = _checks(_run(site, clinical=rows))
    assert {"clinical-date-implausible", "birth-date-mismatch"} <= checks


def test_study_without_clinical_row(site: Path) -> None:
    result = _run(site, clinical=[])
    found = [f for f in result.findings if f.check == "study-without-clinical"]
    assert found and found[0].severity == "error"
    assert len(result.quarantined_files) == result.files_checked


def test_clinical_row_without_study(site: Path) -> None:
    rows = [r for _, r in read_clinical(site / "clinical.xlsx")]
    extra = dict(rows[0], patient_id="NOSUCH001", accession_numbers="ACC-NONE")
    result = _run(site, clinical=[*rows, extra])
    found = [f for f in result.findings if f.check == "clinical-without-imaging"]
    assert len(found) == 1 and found[0].row == 3 and found[0].patient == _label("NOSUCH001")
    assert result.quarantined_rows == {3} and result.quarantined_files == frozenset()


def test_accession_of_another_patient_is_a_conflict(site: Path) -> None:
    rows = [r for _, r in read_clinical(site / "clinical.xlsx")]
    other = dict(rows[0], patient_id="OTHER01")
    rows[0]["accession_numbers"] = "X"
    assert "study-link-conflict" in _checks(_run(site, clinical=[other, rows[0]]))


def test_unreadable_file_and_unreadable_clinical(site: Path) -> None:
    (site / "dicom" / "notes.dcm").write_bytes(b"not dicom at all")
    (site / "broken.xlsx").write_bytes(b"PK\x03\x04 nonsense")
    result = _run(site, clinical=site / "broken.xlsx")
    assert result.is_quarantined("notes.dcm")
    assert {"file-unreadable", "clinical-unreadable", "study-without-clinical"} <= _checks(result)


def test_parallel_run_equals_serial_run(small_set: Path) -> None:
    serial = run_curation(small_set / "c" / "dicom", small_set / "c" / "clinical.xlsx", label=_label,
                          today=TODAY, thumbnails=False)
    parallel = run_curation(small_set / "c" / "dicom", small_set / "c" / "clinical.xlsx", jobs=2,
                            label=_label, today=TODAY, thumbnails=False)
    assert serial.findings == parallel.findings and serial.series == parallel.series


def test_json_round_trips_and_html_shows_the_quarantine(site: Path, tmp_path: Path) -> None:
    victim = _volume(site)[10]
    _edit(victim, lambda ds: setattr(ds, "ImagePositionPatient", [0, 0, 999]))
    result = _run(site)
    assert result.quarantine
    path = result.write_json(tmp_path / "out" / "curation.json")
    assert not list(path.parent.glob("*.tmp"))
    again = CurationResult.read_json(path)
    assert again == result
    assert again.quarantined_files == result.quarantined_files
    page = result.write_html(tmp_path / "out" / "curation.html").read_text()
    item = result.quarantine[0]
    assert "geometry-spacing" in page and item.patient in page and "data:image/png;base64," in page
    text = path.read_text()
    raw_id = pydicom.dcmread(victim).PatientID
    assert raw_id not in text.replace(f"{raw_id}/", "")  # only as a folder name of the paths
    assert str(pydicom.dcmread(victim).PatientName).split("^")[0] not in page
    assert json.loads(text)["summary"]["errors"] == len(result.errors)


def test_every_check_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "curation.md").read_text()
    for check in CHECKS:
        assert f"`{check}`" in doc, check
