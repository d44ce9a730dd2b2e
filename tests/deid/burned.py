"""Images with burned-in text, made in code (for the Clean Pixel Data tests)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from tests.deid import phi

LINES = ["VANDERBERG ELOISE", "MRN-77120934", "DOB 19580217"]


def render(shape: tuple[int, int] = (640, 512), lines: list[str] | None = None, value: int = 4095,
           seed: int = 0, corner: str = "top-left") -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A mammography-like 12-bit image (breast shape, texture, noise) with text burned in a corner."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((xx / (cols * 0.75)) ** 2 + ((yy - rows / 2) / (rows * 0.45)) ** 2) < 1
    texture = rng.normal(0, 1, (rows // 8, cols // 8))
    texture = np.kron(texture, np.ones((8, 8)))[:rows, :cols]
    img = np.where(breast, 1800 + 250 * texture + rng.normal(0, 60, shape), 80 + rng.normal(0, 10, shape))
    img = np.clip(img, 0, 3900).astype(np.uint16)
    canvas = Image.fromarray(np.zeros(shape, np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=22)
    boxes = []
    y = 12
    for line in lines or LINES:
        left, top, right, bottom = draw.textbbox((0, 0), line, font=font)
        x = 12 if corner == "top-left" else cols - 12 - (right - left)
        draw.text((x - left, y - top), line, fill=255, font=font)
        boxes.append((y, x, y + bottom - top, x + right - left))
        y += bottom - top + 10
    mask = np.asarray(canvas) > 127
    img[mask] = value
    return img, boxes


def instance(pixels: np.ndarray, *, burned_in: str | None = "YES", compress: str | None = None) -> bytes:
    """A PHI-planted MG-like instance carrying ``pixels``."""
    ds = pydicom.dcmread(io.BytesIO(phi.build("CT_small.dcm").data))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography - For Presentation
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    for kw in ("RescaleIntercept", "RescaleSlope"):
        if kw in ds:
            delattr(ds, kw)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    if burned_in is None:
        del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = burned_in
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    if compress:
        ds.compress(compress)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def unused(_: Dataset) -> None:  # keeps the Dataset import meaningful for type checkers
    return None
