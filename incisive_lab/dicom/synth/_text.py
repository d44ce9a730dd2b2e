"""Burned-in text: vendor-like corner annotations rendered with a FreeType font."""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FONT_SIZE", "burn_text"]

#: Font size in pixels; the capital height is about 17 px, which tesseract reads reliably.
FONT_SIZE = 24


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def burn_text(img: np.ndarray, lines: list[str], corner: str, value: float, *,
              size: int = FONT_SIZE, margin: int = 10, box_background: float | None = None,
              ) -> list[list[int]]:
    """Burn `lines` into the 2-D array `img` (in place) at a corner; return their boxes.

    Parameters
    ----------
    img : ndarray
        2-D image, modified in place.
    lines : list of str
        Text lines, top to bottom.
    corner : str
        ``tl``, ``tr``, ``bl`` or ``br``.
    value : float
        Pixel value of the text (the maximum of the image's range: high contrast).
    box_background : float, optional
        If given, each line's box is first filled with this value (screenshot style).

    Returns
    -------
    list of [row0, col0, row1, col1]
        One box per line (exclusive ends), 2 px larger than the ink.
    """
    h, w = img.shape
    font = _font(size)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    line_h = size + 12
    boxes: list[list[int]] = []
    top = margin if corner[0] == "t" else h - margin - line_h * len(lines)
    for i, line in enumerate(lines):
        x0, _, x1, _ = draw.textbbox((0, 0), line, font=font)
        x = margin - x0 if corner[1] == "l" else w - margin - x1
        y = top + i * line_h
        draw.text((x, y), line, fill=255, font=font)
        bx0, by0, bx1, by1 = draw.textbbox((x, y), line, font=font)
        boxes.append([max(0, int(by0) - 2), max(0, int(bx0) - 2), min(h, int(by1) + 2),
                      min(w, int(bx1) + 2)])
    ink = np.asarray(mask, dtype=np.float32) / 255.0
    if box_background is not None:
        for r0, c0, r1, c1 in boxes:
            img[r0:r1, c0:c1] = box_background
    np.maximum(img, (ink * value).astype(img.dtype), out=img)
    return boxes
