"""Burned-in text: flagged exactly where present, recorded exactly, and readable by tesseract."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incisive_lab.dicom.synth._render import SOP_CLASSES
from tests.dicom._helpers import iter_entries, load_truth, read


def test_burned_in_annotation_flag_matches_the_manifest(small_set: Path) -> None:
    burned = 0
    for _, rel, entry, path in iter_entries(small_set):
        ds = read(path)
        lines, boxes = entry["burned_in_text"], entry["burned_in_boxes"]
        assert ds.BurnedInAnnotation == ("YES" if lines else "NO"), rel
        assert len(lines) == len(boxes)
        for r0, c0, r1, c1 in boxes:
            assert 0 <= r0 < r1 <= ds.Rows and 0 <= c0 < c1 <= ds.Columns
        if lines:
            burned += 1
            arr = ds.pixel_array
            top = 2 ** ds.BitsStored - 1
            for r0, c0, r1, c1 in boxes:
                assert arr[r0:r1, c0:c1].max() >= 0.95 * top  # high-contrast white text
        if entry["sop_class_uid"] == SOP_CLASSES["SC"]:
            assert lines, "every secondary capture carries burned-in text"
    assert burned > 0


@pytest.mark.slow
def test_about_a_quarter_of_mammograms_have_text(full_set: Path) -> None:
    mg = [e for _, _, e, _ in iter_entries(full_set) if e["sop_class_uid"] == SOP_CLASSES["MG"]]
    fraction = sum(bool(e["burned_in_text"]) for e in mg) / len(mg)
    assert 0.2 <= fraction <= 0.3


def test_burned_in_lines_carry_the_patient_identity(small_set: Path) -> None:
    for truth in load_truth(small_set).values():
        patients = {p["patient_id"]: p for p in truth["patients"]}
        for entry in truth["files"].values():
            if not entry["burned_in_text"]:
                continue
            p = patients[entry["patient_id"]]
            text = "\n".join(entry["burned_in_text"])
            assert f"ID: {p['patient_id']}" in text
            dob = next(line for line in entry["burned_in_text"] if line.startswith("DOB: "))
            assert dob[5:].replace("-", "") in p["phi_dates"]
            tokens = [t.lower() for t in p["phi_tokens"]]
            assert entry["burned_in_text"][0].lower() in tokens  # "FAMILY, GIVEN"


def _ocr_line(arr: np.ndarray, box: list[int]) -> str:
    import pytesseract

    r0, c0, r1, c1 = box
    crop = arr[max(0, r0 - 2):r1 + 2, max(0, c0 - 8):c1 + 8]
    img = Image.fromarray((255 - crop).astype(np.uint8))  # dark text on white
    img = img.resize((img.width * 2, img.height * 2), Image.LANCZOS)
    return str(pytesseract.image_to_string(img, config="--psm 7"))


def _norm(text: str) -> str:
    return re.sub(r"[^A-Z0-9:,\-]", "", text.upper())


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_tesseract_reads_the_planted_tokens(small_set: Path) -> None:
    """Positive control for the leak scanner's OCR: name, ID and birth date read back."""
    files = [(e, p) for _, _, e, p in iter_entries(small_set) if e["burned_in_text"]]
    sc = [f for f in files if f[0]["sop_class_uid"] == SOP_CLASSES["SC"]][:2]
    mg = [f for f in files if f[0]["sop_class_uid"] == SOP_CLASSES["MG"]][:2]
    assert sc and mg
    for entry, path in sc + mg:
        ds = read(path)
        arr = np.clip(ds.pixel_array.astype(float) / (2 ** ds.BitsStored - 1) * 255, 0, 255)
        for line, box in zip(entry["burned_in_text"][:3], entry["burned_in_boxes"][:3],
                             strict=True):
            got = _norm(_ocr_line(arr, box))
            assert _norm(line) in got, (path.name, line, got)
