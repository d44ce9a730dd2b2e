"""Every file is valid DICOM: reads, decodes, carries its IOD's attributes, plausible geometry,
references that resolve inside the set, and bytes equal to what pydicom itself would write."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom._standard_utils import (
    check_required_attributes,
    get_iod_module_map,
    get_sop_class_iod_map,
)

from incisive_lab.dicom.synth._render import SOP_CLASSES
from tests.dicom._helpers import iter_entries, load_truth, read

DEFLATED = "1.2.840.10008.1.2.1.99"


def test_every_file_reads_and_decodes(small_set: Path) -> None:
    n = 0
    for _, rel, entry, path in iter_entries(small_set):
        ds = read(path)
        assert ds.preamble is not None and len(ds.preamble) == 128
        assert ds.file_meta.TransferSyntaxUID == entry["transfer_syntax"], rel
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == entry["sop_instance_uid"]
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == entry["sop_class_uid"]
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        assert arr.dtype.itemsize * 8 == ds.BitsAllocated
        assert int(arr.max()) <= 2 ** ds.BitsStored - 1
        assert float(arr.std()) > 0
        n += 1
    assert n > 300


def test_writer_matches_pydicom(small_set: Path) -> None:
    """Re-encoding each file with pydicom.dcmwrite gives back the very same bytes."""
    checked = 0
    for _, rel, entry, path in iter_entries(small_set):
        if entry["transfer_syntax"] == DEFLATED:
            continue
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, read(path), enforce_file_format=True)
        assert buf.getvalue() == path.read_bytes(), rel
        checked += 1
    assert checked > 300


def test_file_meta_and_preamble(small_set: Path) -> None:
    junk = 0
    for site, truth in load_truth(small_set).items():
        ae = truth["institution"]["ae_title"]
        for rel in truth["files"]:
            ds = read(small_set / site / rel)
            meta = ds.file_meta
            assert meta.SourceApplicationEntityTitle == ae
            assert ae in meta.ImplementationVersionName
            assert meta.ImplementationClassUID.startswith("2.25.")
            if any(ds.preamble):
                junk += 1
                text = ds.preamble.decode("ascii")
                assert any(tok in text for tok in truth["site_phi_tokens"]), text
    assert junk > 0


@pytest.mark.parametrize("sop", sorted(SOP_CLASSES.values()))
def test_iod_required_attributes(small_set: Path, sop: str) -> None:
    """Type 1 and 2 attributes of every mandatory module (highdicom's standard tables)."""
    iod = get_sop_class_iod_map()[sop]
    modules = [m["key"] for m in get_iod_module_map()[iod] if m["usage"] == "M"]
    seen = 0
    for _, rel, entry, path in iter_entries(small_set):
        if entry["sop_class_uid"] != sop:
            continue
        ds = read(path)
        for module in modules:
            try:
                check_required_attributes(ds, module, recursive=True,
                                          check_optional_sequences=True)
            except AttributeError as exc:  # pragma: no cover - message for the failure
                pytest.fail(f"{rel}: module {module}: {exc}")
        seen += 1
    assert seen > 0


def _check_ct(ds: pydicom.Dataset) -> None:
    assert ds.Modality == "CT" and ds.RescaleType == "HU"
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    if "AXIAL" in ds.ImageType:
        inside = hu[hu > -1500]
        assert inside.min() >= -1100 and np.percentile(inside, 99.5) < 1500
        assert (hu < -700).mean() > 0.2  # air and lung
        assert ((hu > -150) & (hu < 150)).mean() > 0.15  # soft tissue
    assert "ReferencedImageSequence" in ds or "LOCALIZER" in ds.ImageType


def _check_mr(ds: pydicom.Dataset) -> None:
    assert ds.Modality == "MR" and ds.PatientPosition == "FFS"
    assert ds.ScanningSequence in ("SE", "EP")
    if "ADC" in ds.ImageType:
        assert ds.ImageType[0] == "DERIVED" and len(ds.SourceImageSequence) == 2
    if ds.ScanningSequence == "EP" and "ADC" not in ds.ImageType:
        private_b = ds.get((0x0019, 0x100C))
        assert "DiffusionBValue" in ds or private_b is not None


def _check_mg(ds: pydicom.Dataset) -> None:
    assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.ImageLaterality in ("L", "R") and ds.ViewPosition in ("CC", "MLO")
    code = ds.ViewCodeSequence[0]
    assert code.CodingSchemeDesignator == "SCT"
    assert code.CodeValue == {"CC": "399162004", "MLO": "399368009"}[ds.ViewPosition]
    assert ds.PatientOrientation[0] == {"R": "P", "L": "A"}[ds.ImageLaterality]
    assert len(ds.ImagerPixelSpacing) == 2 and "WindowCenter" in ds


def _check_sc(ds: pydicom.Dataset) -> None:
    assert ds.Modality == "OT" and ds.ConversionType == "WSD"
    assert ds.BurnedInAnnotation == "YES" and ds.BitsAllocated == 8
    assert "SourceImageSequence" in ds and "ContributingEquipmentSequence" in ds


def test_per_iod_checks(small_set: Path) -> None:
    checks = {SOP_CLASSES["CT"]: _check_ct, SOP_CLASSES["MR"]: _check_mr,
              SOP_CLASSES["MG"]: _check_mg, SOP_CLASSES["SC"]: _check_sc}
    seen: dict[str, int] = defaultdict(int)
    for _, _, entry, path in iter_entries(small_set):
        checks[entry["sop_class_uid"]](read(path))
        seen[entry["sop_class_uid"]] += 1
    assert set(seen) == set(checks)
    mg_per_study: dict[str, set[str]] = defaultdict(set)
    for _, _, entry, path in iter_entries(small_set):
        if entry["sop_class_uid"] == SOP_CLASSES["MG"]:
            ds = read(path)
            mg_per_study[entry["study_instance_uid"]].add(ds.ImageLaterality + ds.ViewPosition)
    assert all(v == {"RCC", "LCC", "RMLO", "LMLO"} for v in mg_per_study.values())


def test_vendor_like_headers(small_set: Path) -> None:
    manufacturers = set()
    for _, _, _, path in iter_entries(small_set):
        ds = read(path)
        manufacturers.add(ds.Manufacturer)
        for kw in ("ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
                   "StationName", "InstitutionName"):
            assert ds.get(kw), kw
    assert {"GE MEDICAL SYSTEMS", "SIEMENS"} <= manufacturers


def test_geometry_consistent_within_series(small_set: Path) -> None:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for _, _, entry, path in iter_entries(small_set):
        if entry["sop_class_uid"] in (SOP_CLASSES["CT"], SOP_CLASSES["MR"]):
            series[entry["series_instance_uid"]].append(read(path))
    checked = 0
    for uid, instances in series.items():
        first = instances[0]
        assert len({ds.FrameOfReferenceUID for ds in instances}) == 1, uid
        assert len({tuple(ds.ImageOrientationPatient) for ds in instances}) == 1
        assert len({tuple(ds.PixelSpacing) for ds in instances}) == 1
        assert len({(ds.Rows, ds.Columns) for ds in instances}) == 1
        assert sorted(ds.InstanceNumber for ds in instances) == list(range(1, len(instances) + 1))
        if len(instances) < 2:
            continue
        iop = np.array(first.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        positions = np.array([ds.ImagePositionPatient for ds in instances], float)
        distances = np.unique(np.round(positions @ normal, 3))
        in_plane = positions - np.outer(positions @ normal, normal)
        assert np.allclose(in_plane, in_plane[0], atol=1e-3), uid  # a straight stack
        steps = np.diff(distances)
        spacing = float(first.get("SpacingBetweenSlices", first.SliceThickness))
        assert np.allclose(steps, spacing, atol=1e-3), uid
        assert float(first.SliceThickness) <= spacing + 1e-6
        for ds in instances:
            assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
        checked += 1
    assert checked > 5
    # MR series of one study share the frame of reference (same session)
    for_by_study: dict[str, set[str]] = defaultdict(set)
    for _, _, entry, path in iter_entries(small_set):
        if entry["sop_class_uid"] == SOP_CLASSES["MR"]:
            for_by_study[entry["study_instance_uid"]].add(read(path).FrameOfReferenceUID)
    assert all(len(v) == 1 for v in for_by_study.values())


def test_references_resolve_inside_the_set(small_set: Path) -> None:
    sop_uids = {e["sop_instance_uid"]: e["sop_class_uid"] for _, _, e, _ in iter_entries(small_set)}
    study_uids = {e["study_instance_uid"] for _, _, e, _ in iter_entries(small_set)}
    counts: dict[str, int] = defaultdict(int)
    for _, rel, _, path in iter_entries(small_set):
        ds = read(path)
        for kw in ("SourceImageSequence", "ReferencedImageSequence"):
            for item in ds.get(kw, []):
                assert sop_uids.get(item.ReferencedSOPInstanceUID) == item.ReferencedSOPClassUID, rel
                counts[kw] += 1
        for item in ds.get("ReferencedStudySequence", []):
            assert item.ReferencedSOPInstanceUID in study_uids
            assert item.ReferencedSOPInstanceUID != ds.StudyInstanceUID
            counts["ReferencedStudySequence"] += 1
        for item in ds.get("RequestAttributesSequence", []):
            assert item.StudyInstanceUID == ds.StudyInstanceUID
            assert item.AccessionNumber == ds.AccessionNumber
            counts["RequestAttributesSequence"] += 1
    for kw in ("SourceImageSequence", "ReferencedImageSequence", "ReferencedStudySequence",
               "RequestAttributesSequence"):
        assert counts[kw] > 0, kw


def test_uids_are_unique_and_seed_derived(small_set: Path) -> None:
    sops = [e["sop_instance_uid"] for _, _, e, _ in iter_entries(small_set)]
    assert len(sops) == len(set(sops))
    for _, _, e, _ in iter_entries(small_set):
        for key in ("sop_instance_uid", "series_instance_uid", "study_instance_uid"):
            assert e[key].startswith("2.25.") and len(e[key]) <= 64
