"""Clean Pixel Data: find burned-in text in images and blank it (PS3.15 E.3.1).

Three detectors, then a check:

1. **Region rules** (``pixel_rules.json``): areas where a modality or vendor is known to
   burn in text (e.g. the ultrasound header band), blanked unconditionally.
2. **Glyph lines**: burned-in annotations are drawn at the brightest value the image
   can hold; clusters of such pixels with the size and alignment of characters on a
   line are blanked, and so are glyph pieces that a blanked box cut off. Fast
   (numpy/scipy), independent of OCR.
3. **OCR** (Debian ``tesseract`` through pytesseract) on the windowed image and on its
   brightest pixels: every word it reads (two letters or digits or more, legible size,
   sufficient confidence) is blanked. Steps 2 and 3 repeat until a round finds nothing
   (at most three rounds).
4. **Check**: if OCR still reads text after the rounds, the image is quarantined
   (:class:`~incisive_lab.deid._engine.Quarantine`), never passed through.

Blanked areas take the darkest value of the image (MONOCHROME1: the brightest). The
cleaned image is written uncompressed (Explicit VR Little Endian) and its Burned In
Annotation set to NO.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from incisive_lab.deid._engine import Quarantine

__all__ = ["Box", "TextDetector", "blank", "clean_burned_in", "find_text"]

Box = tuple[int, int, int, int]  # row0, col0, row1, col1 (exclusive)

_MIN_CONFIDENCE = 45.0
_VERIFY_CONFIDENCE = 60.0
#: Words shorter than this (pixels) are not legible text: separator lines, edges, texture.
_MIN_GLYPH_HEIGHT = 6
_MAX_ROUNDS = 3


@cache
def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = json.loads(
        resources.files("incisive_lab.deid").joinpath("pixel_rules.json").read_text(encoding="utf-8")
    )["rules"]
    return rules


def rule_regions(modality: str, manufacturer: str, rows: int, cols: int) -> list[Box]:
    """Regions that the rules blank for this kind of image."""
    boxes: list[Box] = []
    for rule in _rules():
        if rule.get("modality") not in (None, "*", modality):
            continue
        if rule.get("manufacturer") not in (None, "*") and rule["manufacturer"].lower() not in manufacturer.lower():
            continue
        if rule.get("rows") not in (None, rows) or rule.get("columns") not in (None, cols):
            continue
        for r0, c0, r1, c1 in rule["regions"]:  # fractions of the image
            boxes.append((int(r0 * rows), int(c0 * cols), int(np.ceil(r1 * rows)), int(np.ceil(c1 * cols))))
    return boxes


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    """Window a frame to 8 bits (robust percentiles), text dark on light for OCR."""
    f = frame.astype(np.float32)
    lo, hi = np.percentile(f, (0.5, 99.95))
    if hi <= lo:
        hi = lo + 1
    img = np.clip((f - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return 255 - img


def _bright_mask(frame: np.ndarray, max_value: float) -> np.ndarray:
    return frame >= max_value - max(1.0, 0.002 * abs(max_value))


def _glyphs(frame: np.ndarray, max_value: float) -> tuple[np.ndarray, list[tuple[slice, slice]], int]:
    """Labelled saturated components of character size, their slices, and the median glyph height."""
    from scipy import ndimage

    mask = _bright_mask(frame, max_value)
    if not mask.any() or mask.mean() > 0.2:
        return np.zeros(frame.shape[:2], np.int32), [], 0
    labels, _n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    keep: list[tuple[slice, slice]] = []
    heights = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        h = sl[0].stop - sl[0].start
        w = sl[1].stop - sl[1].start
        if h <= 80 and w <= 80:
            keep.append(sl)
            if h >= 4:
                heights.append(h)
        else:
            labels[sl][labels[sl] == i] = 0
    return labels, keep, int(np.median(heights)) if heights else 0


def glyph_lines(frame: np.ndarray, max_value: float) -> list[Box]:
    """Boxes of text-like lines of saturated pixels (two or more characters in a row)."""
    from scipy import ndimage

    labels, _slices, char_h = _glyphs(frame, max_value)
    if char_h < 4:
        return []
    glyph = labels > 0
    # join the glyphs of a line: dilate by about a character in height and two in width
    joined = ndimage.binary_dilation(glyph, structure=np.ones((max(1, char_h // 3), 2 * char_h), bool))
    lab2, _n2 = ndimage.label(joined)
    boxes: list[Box] = []
    for i, sl in enumerate(ndimage.find_objects(lab2), start=1):
        h = sl[0].stop - sl[0].start
        if h > 3 * char_h:
            continue  # a block taller than a few lines of text is not a line
        inside = glyph[sl] & (lab2[sl] == i)
        pieces = ndimage.label(inside)[1]
        rows = np.nonzero(inside.any(axis=1))[0]
        cols = np.nonzero(inside.any(axis=0))[0]
        if len(rows) < 4 or pieces < 2:
            continue
        # the tight box of the glyphs themselves, not of the dilated region
        r0, r1 = sl[0].start + int(rows[0]), sl[0].start + int(rows[-1]) + 1
        c0, c1 = sl[1].start + int(cols[0]), sl[1].start + int(cols[-1]) + 1
        if (c1 - c0) >= 1.2 * (r1 - r0):
            boxes.append((r0, c0, r1, c1))
    return boxes


def remnants(frame: np.ndarray, max_value: float, boxes: list[Box], reach: int = 4) -> list[Box]:
    """Saturated glyph pieces touching a blanked box: the parts of characters a box cut off."""
    if not boxes:
        return []
    _labels, slices, _h = _glyphs(frame, max_value)
    out: list[Box] = []
    for sl in slices:
        r0, c0, r1, c1 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        for b0, a0, b1, a1 in boxes:
            if r0 < b1 + reach and r1 > b0 - reach and c0 < a1 + reach and c1 > a0 - reach:
                out.append((r0, c0, r1, c1))
                break
    return out


@dataclass
class TextDetector:
    """OCR words (text, confidence, box) in an 8-bit image, via Debian tesseract."""

    min_confidence: float = _MIN_CONFIDENCE

    def words(self, img: np.ndarray) -> list[tuple[str, float, Box]]:
        import pytesseract
        from PIL import Image

        scale = 2 if max(img.shape) < 1024 else 1
        pil = Image.fromarray(img)
        if scale != 1:
            pil = pil.resize((img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.LANCZOS)
        try:
            data = pytesseract.image_to_data(pil, config="--oem 1 --psm 11", output_type=pytesseract.Output.DICT)
        except pytesseract.TesseractNotFoundError:
            raise Quarantine("clean-pixel-data needs tesseract (Debian package tesseract-ocr), which is not installed") from None
        out = []
        for text, conf, left, top, width, height in zip(
            data["text"], data["conf"], data["left"], data["top"], data["width"], data["height"], strict=True
        ):
            text = (text or "").strip()
            alnum = sum(ch.isalnum() for ch in text)
            if alnum < 2 or float(conf) < self.min_confidence or height < _MIN_GLYPH_HEIGHT * scale:
                continue
            box = (top // scale, left // scale, (top + height) // scale + 1, (left + width) // scale + 1)
            out.append((text, float(conf), box))
        return out


def find_text(frame: np.ndarray, max_value: float, detector: TextDetector | None = None) -> list[tuple[str, float, Box]]:
    """Words OCR reads in a frame: in the windowed image and in its brightest pixels."""
    det = detector or TextDetector()
    words = det.words(_to_uint8(frame))
    bright = _bright_mask(frame, max_value)
    if bright.any() and bright.mean() < 0.2:
        words += det.words(np.where(bright, 0, 255).astype(np.uint8))
    return words


def blank(frame: np.ndarray, boxes: list[Box], fill: float, margin: int = 3) -> int:
    """Set each box (grown by ``margin``) to ``fill``; returns the number of pixels changed."""
    rows, cols = frame.shape[:2]
    changed = 0
    for r0, c0, r1, c1 in boxes:
        r0, c0 = max(0, r0 - margin), max(0, c0 - margin)
        r1, c1 = min(rows, r1 + margin), min(cols, c1 + margin)
        if r1 > r0 and c1 > c0:
            frame[r0:r1, c0:c1] = fill
            changed += (r1 - r0) * (c1 - c0)
    return changed


def clean_frame(frame: np.ndarray, *, max_value: float, fill: float, rules: list[Box],
                detector: TextDetector | None = None) -> list[Box]:
    """Clean one 2D frame in place; returns the boxes blanked. Raises Quarantine if text remains.

    Rounds of: text-like lines of saturated glyphs, glyph pieces that a previous box cut
    off, and words OCR reads — until a round finds nothing (at most three), then a last
    OCR check.
    """
    det = detector or TextDetector()
    boxes = list(rules)
    blank(frame, rules, fill, margin=0)
    for _round in range(_MAX_ROUNDS):
        found = glyph_lines(frame, max_value)
        blank(frame, found, fill)
        cut = remnants(frame, max_value, boxes + found)
        blank(frame, cut, fill, margin=1)
        words = [b for _t, _c, b in find_text(frame, max_value, det)]
        blank(frame, words, fill, margin=4)
        boxes += found + cut + words
        if not (found or cut or words):
            return boxes
    remaining = [w for w in find_text(frame, max_value, det) if w[1] >= _VERIFY_CONFIDENCE]
    if remaining:
        shown = ", ".join(repr(t) for t, _c, _b in remaining[:3])
        raise Quarantine(f"text still readable after cleaning the pixels ({shown}): not released")
    return boxes


def clean_burned_in(data: bytes, info: dict[str, Any]) -> bytes:
    """Clean the burned-in text of a de-identified instance's pixels (the engine's hook).

    Parameters
    ----------
    data : bytes
        A complete DICOM Part 10 file whose attributes are already de-identified.
    info : dict
        ``modality``, ``manufacturer``, ``sop_class`` of the original.

    Returns
    -------
    bytes
        The file with cleaned, uncompressed pixels and Burned In Annotation = NO.

    Raises
    ------
    Quarantine
        If the pixels cannot be decoded or text remains readable.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # any decoder failure means we cannot look at the pixels
        raise Quarantine(f"pixel data cannot be decoded for cleaning ({type(exc).__name__}: {exc})") from None
    arr = np.array(arr, copy=True)
    frames_n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = arr if frames_n > 1 else arr[None, ...]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    bits_stored = int(getattr(ds, "BitsStored", 8) or 8)
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    rows, cols = int(ds.Rows), int(ds.Columns)
    rules = rule_regions(str(info.get("modality", "")), str(info.get("manufacturer", "")), rows, cols)
    detector = TextDetector()
    for k in range(frames.shape[0]):
        frame = frames[k]
        if samples > 1:
            gray = frame.astype(np.float32).mean(axis=-1)
            top = float(gray.max())
            boxes = clean_frame(gray, max_value=top, fill=0.0, rules=rules, detector=detector)
            for r0, c0, r1, c1 in boxes:
                frame[max(0, r0 - 4) : r1 + 4, max(0, c0 - 4) : c1 + 4, :] = 0
            continue
        representable = (2 ** (bits_stored - 1) - 1) if signed else (2**bits_stored - 1)
        top = float(frame.max())
        # text is usually drawn at the top of the range; if the frame reaches it, use it
        max_value = float(representable) if top >= representable else top
        fill = float(frame.max()) if photometric == "MONOCHROME1" else float(frame.min())
        work = frame.astype(np.float64)
        clean_frame(work, max_value=max_value, fill=fill, rules=rules, detector=detector)
        frames[k] = work.astype(frame.dtype)
    cleaned = frames if frames_n > 1 else frames[0]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if samples > 1:
        if photometric.startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom hands colour pixels over as RGB
        ds.PlanarConfiguration = 0
    ds.PixelData = np.ascontiguousarray(cleaned).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds.BurnedInAnnotation = "NO"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
