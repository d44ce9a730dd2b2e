"""Clean Pixel Data: burned-in text is found, blanked and checked; what stays readable is quarantined."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest

from incisive_lab.deid import Engine, LeakScanner, Profile, Secret
from incisive_lab.deid import pixels as pixmod
from incisive_lab.deid.pixels import TextDetector, glyph_lines
from incisive_lab.deid.scanner import ocr_text
from tests.deid.burned import LINES, instance, render

warnings.filterwarnings("ignore", module="pydicom")
TOKENS = ["VANDERBERG", "ELOISE", "MRN-77120934", "19580217"]


def clean(data: bytes) -> tuple[str, str, bytes | None, list]:  # type: ignore[type-arg]
    r = Engine(Profile(["clean-pixel-data"]), Secret(bytes(32))).process(data)
    return r.status, r.reason, r.output, r.actions


def test_ocr_reads_the_planted_text_in_the_source() -> None:
    img, _ = render()
    found = LeakScanner(TOKENS).scan_pixels("src", instance(img))
    assert {f.token for f in found} >= {"VANDERBERG", "MRN-77120934", "19580217"}


@pytest.mark.parametrize("compress", [None, pydicom.uid.JPEGLSLossless, pydicom.uid.RLELossless])
@pytest.mark.parametrize("corner", ["top-left", "top-right"])
def test_burned_in_text_is_removed_and_the_image_kept(compress: str | None, corner: str) -> None:
    img, boxes = render(corner=corner)
    status, reason, out, actions = clean(instance(img, compress=compress))
    assert status == "ok", reason
    assert out is not None
    assert LeakScanner(TOKENS).scan_pixels("out", out) == []
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.BurnedInAnnotation == "NO"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert ("(7FE0,0010) Pixel Data", "C", "clean-pixel-data") in actions
    arr = ds.pixel_array
    for r0, c0, r1, c1 in boxes:
        assert arr[r0:r1, c0:c1].min() == arr[r0:r1, c0:c1].max(), "the text box is blank"
    # the image itself is kept: outside the text boxes (and a halo of 12 pixels) nothing changed
    outside = np.ones(arr.shape, bool)
    for r0, c0, r1, c1 in boxes:
        outside[max(0, r0 - 12) : r1 + 12, max(0, c0 - 12) : c1 + 12] = False
    assert np.array_equal(arr[outside], img[outside])
    assert (arr != img).mean() < 0.08


def test_text_that_is_not_saturated_is_found_by_ocr() -> None:
    img, _boxes = render(value=3000, lines=["QUARLETON ALDOUS 20190314"])
    assert glyph_lines(img.astype(float), 4095.0) == []  # not at the top of the 12-bit range
    status, reason, out, _ = clean(instance(img))
    assert status == "ok", reason
    assert "QUARLETON" not in ocr_text(out or b"").upper()


def test_image_where_text_stays_readable_is_quarantined(monkeypatch: pytest.MonkeyPatch) -> None:
    class StubbornText(TextDetector):
        """A detector double: it always reads a name, even where pixels were blanked."""

        def words(self, img):  # type: ignore[no-untyped-def]
            return [("VANDERBERG", 95.0, (0, 0, 2, 2))]

    monkeypatch.setattr(pixmod, "TextDetector", StubbornText)
    img, _ = render()
    status, reason, out, _ = clean(instance(img))
    assert status == "quarantined" and out is None
    assert "text still readable after cleaning" in reason and "VANDERBERG" in reason


def test_undecodable_pixels_are_quarantined() -> None:
    img, _ = render()
    data = bytearray(instance(img, compress=pydicom.uid.JPEGLSLossless))
    start = data.index(b"\xff\xd8")  # JPEG-LS codestream
    data[start + 2 : start + 400] = b"\x00" * 398
    status, reason, _, _ = clean(bytes(data))
    assert status == "quarantined" and "cannot be decoded" in reason


def test_without_the_option_burned_in_images_never_pass() -> None:
    img, _ = render()
    r = Engine(Profile([]), Secret(bytes(32))).process(instance(img))
    assert r.status == "quarantined" and "clean-pixel-data" in r.reason


def test_secondary_capture_without_the_attribute_is_cleaned_under_the_option() -> None:
    img, _ = render(lines=LINES[:1])
    data = instance(img, burned_in=None)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    status, reason, out, _ = clean(buf.getvalue())
    assert status == "ok", reason
    assert "VANDERBERG" not in ocr_text(out or b"").upper()
