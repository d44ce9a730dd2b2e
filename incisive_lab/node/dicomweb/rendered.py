"""Rendered images (WADO-RS ``/rendered``, PS3.18 §9.5.1.2.3 and §8.3.5.1): PNG or JPEG.

One frame is decoded (pydicom, with the pylibjpeg/pyjpegls/gdcm plug-ins for compressed
syntaxes), passed through the Modality LUT (Rescale Slope/Intercept), then a VOI
transform: the ``window`` parameter when given, else the header's window or VOI LUT, else
the frame's full range. MONOCHROME1 is inverted so that the output is always "higher is
brighter". Colour images are rendered as RGB. ``viewport=vw,vh`` scales the image to fit
inside vw x vh, keeping its aspect ratio (either value may be left out).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from incisive_lab.node.dicomweb._http import DicomwebError

__all__ = ["MAX_VIEWPORT", "RenderOptions", "parse_render_params", "render_frame"]

#: The largest viewport side accepted (pixels).
MAX_VIEWPORT = 4096
_FUNCTIONS = ("linear", "linear_exact", "sigmoid")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Parsed ``window``, ``viewport`` and ``quality`` parameters."""

    window: tuple[float, float, str] | None = None
    viewport: tuple[int | None, int | None] | None = None
    quality: int = 90


def _one(values: list[str], name: str) -> str:
    if len(values) > 1:
        raise DicomwebError(400, f"{name}: given {len(values)} times; give it once")
    return values[0]


def parse_render_params(pairs: Sequence[tuple[str, str]]) -> RenderOptions:
    """Parse the query of a rendered request.

    Accepted: ``window=center,width[,linear|linear-exact|sigmoid]``, ``viewport=vw,vh``
    (``vw,`` or ``,vh`` keep the aspect), ``quality=1..100`` (JPEG). Other parameters —
    including ``annotation``, ``region``, ``iccprofile`` — are refused.

    Raises
    ------
    DicomwebError
        400 naming the parameter.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    window = viewport = None
    quality = 90
    for name, values in grouped.items():
        value = _one(values, name)
        if name == "window":
            parts = value.split(",")
            if len(parts) not in (2, 3):
                raise DicomwebError(400, f"window: {value!r} is not center,width[,function]")
            try:
                center, width = float(parts[0]), float(parts[1])
            except ValueError:
                raise DicomwebError(400, f"window: {value!r}: center and width must be "
                                         "numbers") from None
            if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
                raise DicomwebError(400, f"window: width must be a positive number "
                                         f"(got {parts[1]!r})")
            function = (parts[2] if len(parts) == 3 else "linear").lower().replace("-", "_")
            if function not in _FUNCTIONS:
                raise DicomwebError(400, f"window: function {parts[2]!r} is not linear, "
                                         "linear-exact or sigmoid")
            window = (center, width, function)
        elif name == "viewport":
            m = re.fullmatch(r"(\d{0,5}),(\d{0,5})", value)
            if not m or not (m.group(1) or m.group(2)):
                raise DicomwebError(400, f"viewport: {value!r} is not vw,vh")
            vw = int(m.group(1)) if m.group(1) else None
            vh = int(m.group(2)) if m.group(2) else None
            for side in (vw, vh):
                if side is not None and not 1 <= side <= MAX_VIEWPORT:
                    raise DicomwebError(400, f"viewport: sides must be 1..{MAX_VIEWPORT} "
                                             f"(got {value!r})")
            viewport = (vw, vh)
        elif name == "quality":
            if not re.fullmatch(r"\d{1,3}", value) or not 1 <= int(value) <= 100:
                raise DicomwebError(400, f"quality: {value!r} is not 1..100")
            quality = int(value)
        else:
            raise DicomwebError(400, f"{name}: not a supported parameter of rendered "
                                     "resources (window, viewport, quality)")
    return RenderOptions(window, viewport, quality)


def _window(arr: np.ndarray[Any, Any], center: float, width: float,
            function: str) -> np.ndarray[Any, Any]:
    """PS3.3 C.11.2.1.2 windowing to 0..1."""
    x = arr.astype(np.float64)
    if function == "linear_exact":
        out = (x - (center - width / 2)) / width
    elif function == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        if width < 1:
            raise DicomwebError(400, "window: a linear window needs width >= 1")
        out = ((x - (center - 0.5)) / (width - 1)) + 0.5
    return np.clip(out, 0.0, 1.0)


def rendered_media(accept: str | None) -> str:
    """The rendered media type the client accepts: PNG (also for ``*/*``/``image/*``) or JPEG."""
    from incisive_lab.node.dicomweb._http import DicomwebError, parse_accept

    for r in parse_accept(accept):
        if r.media_type in ("image/png", "image/jpeg"):
            return r.media_type
        if r.media_type in ("*/*", "image/*"):
            return "image/png"
    raise DicomwebError(406, f"Accept: rendered images are image/png or image/jpeg (got {accept!r})")


def render_frame(path: Path, frame: int, options: RenderOptions, media_type: str) -> bytes:
    """Render frame ``frame`` (1-based) of the object at ``path`` as PNG or JPEG bytes.

    Raises
    ------
    DicomwebError
        404 when the object has no such frame or no pixel data.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in ds or "BitsAllocated" not in ds:
        raise DicomwebError(404, "the instance has no pixel data to render")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise DicomwebError(404, f"frame {frame} does not exist (the instance has {count})")
    try:
        arr = pixel_array(path, index=frame - 1)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise DicomwebError(406, f"the frame cannot be decoded for rendering: {exc}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1:
        values = apply_modality_lut(arr, ds)
        if options.window is not None:
            scaled = _window(values, *options.window)
        elif "WindowCenter" in ds or "VOILUTSequence" in ds:
            voi = apply_voi_lut(values, ds, index=0).astype(np.float64)
            lo, hi = float(voi.min()), float(voi.max())
            wc = ds.get("WindowCenter")
            if wc is not None and "VOILUTSequence" not in ds:
                # windowed values span the output range of the window: 0..2**bits-1
                bits = int(ds.get("BitsStored", ds.BitsAllocated))
                lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if (
                    int(ds.get("PixelRepresentation", 0)) == 1) else (0, 2 ** bits - 1)
            scaled = np.clip((voi - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
        else:
            v = values.astype(np.float64)
            lo, hi = float(v.min()), float(v.max())
            scaled = (v - lo) / ((hi - lo) or 1.0)
        if photometric == "MONOCHROME1":
            scaled = 1.0 - scaled
        image = Image.fromarray(np.round(scaled * 255.0).astype(np.uint8), mode="L")
    else:
        rgb = arr  # pydicom converts YBR colour spaces to RGB when decoding
        if rgb.dtype != np.uint8:
            top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
            rgb = np.clip(rgb.astype(np.float64) / top * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(rgb, mode="RGB")
    if options.viewport is not None:
        vw, vh = options.viewport
        w, h = image.size
        scale = min(vw / w if vw else math.inf, vh / h if vh else math.inf)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(out, format="JPEG", quality=options.quality)
    else:
        image.save(out, format="PNG")
    return out.getvalue()
