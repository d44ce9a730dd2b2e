"""Vectorised anatomical phantoms with optional lesions: CT chest, CT abdomen, MR prostate, MG.

Every phantom is drawn from soft-edged ellipses (and a few line segments) painted into
``float32`` arrays, restricted to their bounding boxes so that a whole CT volume costs tens of
milliseconds. Physical units: CT in Hounsfield units, MR and MG in arbitrary detector units.
Lesion-free phantoms use exactly the same anatomy generator and noise; only the lesion differs.

Coordinates: arrays are ``(slice, row, column)``; rows run anterior -> posterior, columns run
patient right -> left (radiological convention), slices run superior -> inferior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

__all__ = ["LesionTruth", "Volume", "ct_abdomen", "ct_chest", "mg_view", "mr_prostate", "noise",
           "smooth_noise"]

F32 = np.float32


@dataclass
class LesionTruth:
    """Where the lesion is: per slice index, its bounding box ``[r0, c0, r1, c1]`` (exclusive)."""

    boxes: dict[int, list[int]] = field(default_factory=dict)

    def merge(self, other: LesionTruth) -> None:
        """Union with another lesion component."""
        for k, box in other.boxes.items():
            if k in self.boxes:
                a = self.boxes[k]
                self.boxes[k] = [min(a[0], box[0]), min(a[1], box[1]),
                                 max(a[2], box[2]), max(a[3], box[3])]
            else:
                self.boxes[k] = list(box)

    @property
    def slices(self) -> list[int] | None:
        """``[first, last]`` slice index containing the lesion (``None`` if none)."""
        if not self.boxes:
            return None
        return [min(self.boxes), max(self.boxes)]


@dataclass
class Volume:
    """A rendered phantom: one or more channels and the lesion truth."""

    channels: dict[str, np.ndarray]
    lesion: LesionTruth | None
    info: dict[str, Any] = field(default_factory=dict)


def _arr(value: Any, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=F32), (n,)).astype(F32)


def paint(
    vols: Sequence[np.ndarray],
    values: Sequence[float],
    cy: Any,
    cx: Any,
    ry: Any,
    rx: Any,
    *,
    edge: float = 1.0,
    add: bool = False,
    want_truth: bool = False,
) -> LesionTruth | None:
    """Paint per-slice ellipses (centre/radii in pixels, scalars or one value per slice).

    A slice whose radius is below 0.3 px is left untouched. With ``add`` the value is added
    (weighted by the soft mask) instead of replacing the content.
    """
    nz, h, w = vols[0].shape
    cy, cx, ry, rx = (_arr(a, nz) for a in (cy, cx, ry, rx))
    active = np.nonzero((ry > 0.3) & (rx > 0.3))[0]
    if active.size == 0:
        return LesionTruth() if want_truth else None
    z0, z1 = int(active[0]), int(active[-1]) + 1
    cy, cx, ry, rx = cy[z0:z1], cx[z0:z1], ry[z0:z1], rx[z0:z1]
    on = (ry > 0.3) & (rx > 0.3)
    y0 = max(0, math.floor(float((cy - ry)[on].min()) - 2 * edge))
    y1 = min(h, math.ceil(float((cy + ry)[on].max()) + 2 * edge) + 1)
    x0 = max(0, math.floor(float((cx - rx)[on].min()) - 2 * edge))
    x1 = min(w, math.ceil(float((cx + rx)[on].max()) + 2 * edge) + 1)
    if y0 >= y1 or x0 >= x1:
        return LesionTruth() if want_truth else None
    rys, rxs = np.maximum(ry, 0.3), np.maximum(rx, 0.3)
    dy = (np.arange(y0, y1, dtype=F32)[None, :] - cy[:, None]) / rys[:, None]
    dx = (np.arange(x0, x1, dtype=F32)[None, :] - cx[:, None]) / rxs[:, None]
    r = np.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)
    scale = (np.minimum(rys, rxs) / edge)[:, None, None]
    m = np.clip((1.0 - r) * scale + 0.5, 0.0, 1.0)
    if not on.all():
        m[~on] = 0.0
    for vol, val in zip(vols, values, strict=True):
        sub = vol[z0:z1, y0:y1, x0:x1]
        if add:
            sub += F32(val) * m
        else:
            sub += (F32(val) - sub) * m
    if not want_truth:
        return None
    truth = LesionTruth()
    inside = m > 0.5
    for k in range(inside.shape[0]):
        rows = np.nonzero(inside[k].any(axis=1))[0]
        if rows.size == 0:
            continue
        cols = np.nonzero(inside[k].any(axis=0))[0]
        truth.boxes[z0 + k] = [y0 + int(rows[0]), x0 + int(cols[0]),
                               y0 + int(rows[-1]) + 1, x0 + int(cols[-1]) + 1]
    return truth


def paint_segment(img: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                  width: float, value: float) -> None:
    """Add a soft line segment (row, col endpoints) of `width` px to a 2-D image."""
    h, w = img.shape
    y0 = max(0, int(min(p0[0], p1[0]) - width - 2))
    y1 = min(h, int(max(p0[0], p1[0]) + width + 3))
    x0 = max(0, int(min(p0[1], p1[1]) - width - 2))
    x1 = min(w, int(max(p0[1], p1[1]) + width + 3))
    if y0 >= y1 or x0 >= x1:
        return
    yy = np.arange(y0, y1, dtype=F32)[:, None]
    xx = np.arange(x0, x1, dtype=F32)[None, :]
    vy, vx = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(vy * vy + vx * vx, 1e-6)
    t = np.clip(((yy - p0[0]) * vy + (xx - p0[1]) * vx) / length2, 0.0, 1.0)
    d = np.sqrt((yy - p0[0] - t * vy) ** 2 + (xx - p0[1] - t * vx) ** 2)
    taper = 1.0 - 0.7 * t
    m = np.clip((width * taper / 2 - d) + 0.5, 0.0, 1.0)
    img[y0:y1, x0:x1] += F32(value) * m


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth 2-D noise of unit standard deviation and correlation length ~`cell` pixels."""
    h, w = shape
    f = max(1, cell // 2)  # work on a coarser grid, Gaussian-filter in Fourier space, upsample
    gh, gw = h // f + 2, w // f + 2
    g = rng.standard_normal((gh, gw), dtype=F32)
    sigma = cell / f
    ky = np.fft.fftfreq(gh).astype(F32)[:, None]
    kx = np.fft.rfftfreq(gw).astype(F32)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (ky**2 + kx**2)).astype(F32)
    g = np.fft.irfft2(np.fft.rfft2(g) * kernel, s=(gh, gw)).astype(F32)
    ys = np.arange(h, dtype=F32) / f
    xs = np.arange(w, dtype=F32) / f
    iy, ix = ys.astype(np.int64), xs.astype(np.int64)
    wy, wx = (ys - iy)[:, None], (xs - ix)[None, :]
    rows = g[iy] * (1 - wy) + g[iy + 1] * wy
    out = rows[:, ix] * (1 - wx) + rows[:, ix + 1] * wx
    std = float(out.std()) or 1.0
    return ((out - out.mean()) / F32(std)).astype(F32)


@cache
def _bank() -> np.ndarray:
    """A fixed block of white noise; phantoms add randomly offset windows of it (fast)."""
    return np.random.default_rng(20240517).standard_normal((112, 352, 352), dtype=F32)


def noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A view of white noise of `shape` (up to 112 x 352 x 352 or 2-D up to 704 x 704)."""
    bank = _bank()
    if len(shape) == 2:
        h, w = shape
        flat = bank.reshape(-1, 704, 352)  # 2-D panes of 704 x 352, two side by side
        k = int(rng.integers(0, flat.shape[0] - 2))
        pane = flat[k]
        if w > 352:
            pane = np.concatenate([flat[k], flat[k + 1]], axis=1)
        y0 = int(rng.integers(0, pane.shape[0] - h + 1))
        x0 = int(rng.integers(0, pane.shape[1] - w + 1))
        return pane[y0:y0 + h, x0:x0 + w]
    n, h, w = shape
    z0 = int(rng.integers(0, bank.shape[0] - n + 1))
    y0 = int(rng.integers(0, bank.shape[1] - h + 1))
    x0 = int(rng.integers(0, bank.shape[2] - w + 1))
    return bank[z0:z0 + n, y0:y0 + h, x0:x0 + w]


def _tprofile(t: np.ndarray, start: float, end: float, shape: str = "dome") -> np.ndarray:
    """0 outside [start, end]; inside, a smooth bump (``dome``) or 1 (``flat``)."""
    u = (t - start) / max(end - start, 1e-6)
    inside = (u >= 0) & (u <= 1)
    if shape == "flat":
        return inside.astype(F32)
    return np.where(inside, np.sqrt(np.clip(np.sin(np.pi * u), 0, 1)), 0).astype(F32)


# ----------------------------------------------------------------------------------------------
# CT


def ct_chest(rng: np.random.Generator, n: int, size: int, ps: float, thickness: float,
             geometry: dict[str, Any], lesion_scale: float, female: bool) -> Volume:
    """CT chest (lung window anatomy): body, ribs, spine, heart, lungs with vessels, nodule."""
    hu = np.empty((n, size, size), F32)
    base = np.full((1, size, size), -1000.0, F32)
    c0y, c0x = size / 2 + 6, size / 2
    mm = 1.0 / ps
    t = np.linspace(0.0, 1.0, n, dtype=F32)
    width = rng.uniform(0.92, 1.06)
    # z-invariant shell: skin/soft tissue, subcutaneous fat, chest wall, spine, table
    paint([base], [35.0], c0y, c0x, 112 * mm * width, 162 * mm * width, edge=1.2)
    paint([base], [-95.0], c0y, c0x, 104 * mm * width, 152 * mm * width, edge=1.5)
    paint([base], [42.0], c0y, c0x, 95 * mm * width, 141 * mm * width, edge=1.5)
    vy = c0y + 62 * mm
    paint([base], [720.0], vy, c0x, 19 * mm, 19 * mm)
    paint([base], [260.0], vy, c0x, 16 * mm, 16 * mm)
    paint([base], [25.0], vy + 24 * mm, c0x, 7 * mm, 7 * mm)
    paint([base], [620.0], vy + 35 * mm, c0x, 7 * mm, 22 * mm)
    table_y = c0y + 122 * mm * width
    base[0, int(table_y):int(table_y + 5 * mm), int(c0x - 170 * mm):int(c0x + 170 * mm)] = 120.0
    hu[:] = base
    # lungs (z-varying): apex small, base large
    grow = np.clip(0.35 + 1.6 * t, 0, 1).astype(F32)
    lungs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cx = c0x + sign * 68 * mm * width * np.ones(n, F32)
        cy = c0y - 4 * mm + 6 * mm * t
        rx = 58 * mm * width * (0.45 + 0.55 * grow)
        ry = 80 * mm * (0.45 + 0.55 * grow)
        if side == "right":
            ry = ry * (1 - 0.5 * np.clip((t - 0.85) / 0.15, 0, 1))
        lungs[side] = (cy, cx, ry, rx)
        paint([hu], [-860.0], cy, cx, ry, rx, edge=1.5)
    # mediastinum: heart, aorta, trachea / bronchi, mediastinal fat
    heart = _tprofile(t, 0.42, 1.25)
    paint([hu], [-80.0], c0y - 25 * mm, c0x, 40 * mm * (t < 0.5), 30 * mm * (t < 0.5))
    paint([hu], [38.0], c0y - 18 * mm, c0x + 14 * mm, 50 * mm * heart, 58 * mm * heart, edge=1.5)
    paint([hu], [40.0], c0y + 38 * mm, c0x + 22 * mm, 13 * mm, 13 * mm)
    paint([hu], [-990.0], c0y - 32 * mm, c0x, 9 * mm * (t < 0.36), 9 * mm * (t < 0.36))
    bron = ((t >= 0.36) & (t < 0.5)).astype(F32)
    for sign in (-1.0, 1.0):
        paint([hu], [-990.0], c0y - 24 * mm, c0x + sign * 18 * mm, 6 * mm * bron, 6 * mm * bron)
    # scapulae (upper) and liver dome (right base)
    scap = (t < 0.45).astype(F32)
    for sign in (-1.0, 1.0):
        paint([hu], [560.0], c0y + 58 * mm, c0x + sign * 108 * mm * width, 6 * mm * scap,
              30 * mm * scap)
    dome = np.clip((t - 0.8) / 0.2, 0, 1).astype(F32)
    paint([hu], [58.0], c0y + 8 * mm, c0x - 60 * mm * width, 62 * mm * np.sqrt(dome),
          64 * mm * np.sqrt(dome), edge=2.0)
    # ribs: intermittent small ellipses along the chest wall
    for i in range(14):
        ang = (i + 0.5) / 14 * 2 * math.pi + rng.uniform(-0.08, 0.08)
        phase = rng.uniform(0, 1)
        on = (((t * 5.0 + phase) % 1.0) < 0.55).astype(F32)
        ry_c, rx_c = 98 * mm, 145 * mm * width
        cy = c0y + ry_c * math.sin(ang) + 4 * mm * t
        cx = c0x + rx_c * math.cos(ang) * np.ones(n, F32)
        if abs(math.sin(ang)) > 0.93 and math.sin(ang) > 0:  # no rib through the spine
            continue
        paint([hu], [700.0], cy, cx, 4.5 * mm * on, 6.5 * mm * on)
    # pulmonary vessels: tubes moving slowly through the slices, inside the lungs
    for _ in range(34):
        side = "right" if rng.random() < 0.5 else "left"
        ly, lx, lry, lrx = lungs[side]
        t0 = rng.uniform(0.0, 0.9)
        t1 = min(1.0, t0 + rng.uniform(0.1, 0.45))
        on = ((t >= t0) & (t <= t1)).astype(F32)
        ang, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.85)
        du, dv = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)
        u = rad * math.cos(ang) + du * (t - t0)
        v = rad * math.sin(ang) + dv * (t - t0)
        radius = (1.1 + 2.2 * (1 - rad) * rng.uniform(0.6, 1.0)) * mm
        paint([hu], [35.0], ly + v * lry, lx + u * lrx, radius * on, radius * on, edge=0.8)
    truth = None
    g = geometry
    if g.get("present"):
        ly, lx, lry, lrx = lungs[g["side"]]
        zc = g["z"] * (n - 1)
        k = round(zc)
        r_mm = g["radius_mm"] * lesion_scale
        lcy, lcx = float(ly[k] + g["v"] * lry[k]), float(lx[k] + g["u"] * lrx[k])
        truth = _ellipsoid(hu, 32.0, zc, lcy, lcx, r_mm / thickness, r_mm * mm, r_mm * mm)
        lob = g["radius_mm"] * 0.55 * lesion_scale
        other = _ellipsoid(hu, 30.0, zc + 0.3, lcy + 0.5 * r_mm * mm, lcx - 0.4 * r_mm * mm,
                           lob / thickness, lob * mm, lob * mm)
        truth.merge(other)
    hu += noise(rng, hu.shape) * F32(16.0)
    return Volume({"hu": hu}, truth, {"width": width})


def _ellipsoid(vol: np.ndarray, value: float, zc: float, cy: float, cx: float, rz: float,
               ry: float, rx: float) -> LesionTruth:
    n = vol.shape[0]
    z = np.arange(n, dtype=F32)
    f = np.clip(1 - ((z - zc) / max(rz, 0.5)) ** 2, 0, 1)
    s = np.sqrt(f)
    truth = paint([vol], [value], cy, cx, ry * s, rx * s, edge=1.0, want_truth=True)
    assert truth is not None
    return truth


_COLON = {
    # segment: (x mm, y mm, lumen radius mm, t range, content HU)
    "ascending": (-95.0, 5.0, 15.0, (0.35, 0.78), -900.0),
    "cecum": (-88.0, 14.0, 19.0, (0.7, 0.86), -300.0),
    "descending": (100.0, 12.0, 12.0, (0.2, 0.76), -700.0),
    "sigmoid": (30.0, 12.0, 13.0, (0.76, 0.95), -500.0),
    "rectum": (0.0, 72.0, 14.0, (0.88, 1.0), -400.0),
}
_SEGMENT_OF_SITE = {"C18.0": ("cecum", 0.79), "C18.2": ("ascending", 0.55),
                    "C18.7": ("sigmoid", 0.86), "C20.9": ("rectum", 0.94)}


def ct_abdomen(rng: np.random.Generator, n: int, size: int, ps: float, thickness: float,
               geometry: dict[str, Any], lesion_scale: float, female: bool) -> Volume:
    """CT abdomen-pelvis, portal venous phase: organs, bowel, colon with an optional mass."""
    hu = np.empty((n, size, size), F32)
    base = np.full((1, size, size), -1000.0, F32)
    c0y, c0x = size / 2 + 4, size / 2
    mm = 1.0 / ps
    t = np.linspace(0.0, 1.0, n, dtype=F32)
    width = rng.uniform(0.92, 1.06)
    paint([base], [35.0], c0y, c0x, 118 * mm * width, 165 * mm * width, edge=1.2)
    paint([base], [-100.0], c0y, c0x, 108 * mm * width, 153 * mm * width, edge=1.5)
    paint([base], [48.0], c0y, c0x, 98 * mm * width, 142 * mm * width, edge=1.5)
    paint([base], [-95.0], c0y - 4 * mm, c0x, 88 * mm * width, 130 * mm * width, edge=2.0)
    vy = c0y + 66 * mm
    paint([base], [720.0], vy, c0x, 21 * mm, 21 * mm)
    paint([base], [240.0], vy, c0x, 18 * mm, 18 * mm)
    paint([base], [25.0], vy + 26 * mm, c0x, 7 * mm, 7 * mm)
    paint([base], [600.0], vy + 37 * mm, c0x, 8 * mm, 24 * mm)
    table_y = c0y + 128 * mm * width
    base[0, int(table_y):int(table_y + 5 * mm), int(c0x - 170 * mm):int(c0x + 170 * mm)] = 120.0
    hu[:] = base
    # solid organs
    liver = _tprofile(t, -0.3, 0.5)
    paint([hu], [105.0], c0y - 6 * mm, c0x - 55 * mm * width, 72 * mm * liver, 82 * mm * liver,
          edge=2.0)
    spleen = _tprofile(t, -0.2, 0.32)
    paint([hu], [112.0], c0y + 38 * mm, c0x + 92 * mm * width, 40 * mm * spleen,
          28 * mm * spleen, edge=1.5)
    stomach = _tprofile(t, -0.2, 0.3)
    paint([hu], [12.0], c0y - 38 * mm, c0x + 48 * mm, 32 * mm * stomach, 42 * mm * stomach)
    paint([hu], [-950.0], c0y - 56 * mm, c0x + 48 * mm, 10 * mm * stomach, 30 * mm * stomach)
    kidney = _tprofile(t, 0.18, 0.58)
    for sign in (-1.0, 1.0):
        paint([hu], [175.0], c0y + 48 * mm, c0x + sign * 70 * mm, 36 * mm * kidney,
              26 * mm * kidney, edge=1.5)
        paint([hu], [15.0], c0y + 44 * mm, c0x + sign * 62 * mm, 8 * mm * kidney,
              6 * mm * kidney)
    pancreas = _tprofile(t, 0.15, 0.38)
    paint([hu], [92.0], c0y + 8 * mm, c0x + 10 * mm, 11 * mm * pancreas, 58 * mm * pancreas)
    above = (t < 0.62).astype(F32)
    paint([hu], [165.0], c0y + 44 * mm, c0x + 15 * mm, 12 * mm * above, 12 * mm * above)
    paint([hu], [130.0], c0y + 42 * mm, c0x - 22 * mm, 9 * mm * above, 13 * mm * above)
    below = 1 - above
    for sign in (-1.0, 1.0):
        paint([hu], [160.0], c0y + 46 * mm, c0x + sign * (15 + 25 * t) * mm, 7 * mm * below,
              7 * mm * below)
    psoas = _tprofile(t, 0.25, 1.1)
    for sign in (-1.0, 1.0):
        paint([hu], [50.0], c0y + 64 * mm, c0x + sign * 40 * mm, 17 * mm * psoas,
              19 * mm * psoas)
    ilium = _tprofile(t, 0.58, 0.9)
    for sign in (-1.0, 1.0):
        paint([hu], [620.0], c0y + 52 * mm, c0x + sign * 112 * mm * width, 14 * mm * ilium,
              32 * mm * ilium)
    fem = (t > 0.92).astype(F32)
    for sign in (-1.0, 1.0):
        paint([hu], [520.0], c0y + 28 * mm, c0x + sign * 96 * mm * width, 22 * mm * fem,
              22 * mm * fem)
    bladder = _tprofile(t, 0.82, 1.15)
    paint([hu], [10.0], c0y - 35 * mm, c0x, 34 * mm * bladder, 46 * mm * bladder, edge=1.5)
    # small bowel loops
    for _ in range(14):
        t0 = rng.uniform(0.25, 0.75)
        on = ((t >= t0) & (t <= t0 + rng.uniform(0.08, 0.25))).astype(F32)
        y = c0y + rng.uniform(-70, 5) * mm
        x = c0x + rng.uniform(-60, 60) * mm
        r = rng.uniform(9, 13) * mm
        paint([hu], [48.0], y, x, r * on, r * on)
        paint([hu], [rng.choice([20.0, 240.0])], y, x, (r - 2.5 * mm) * on, (r - 2.5 * mm) * on)
    # colon: wall then lumen
    centres: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for name, (x, y, r, (ta, tb), content) in _COLON.items():
        on = ((t >= ta) & (t <= tb)).astype(F32)
        drift = (t - ta) * (-30.0 if name == "sigmoid" else 0.0)
        cx = c0x + (x + drift) * mm * width
        cy = c0y + (y + (25.0 * (t - ta) if name == "sigmoid" else 0.0)) * mm
        cx, cy = _arr(cx, n), _arr(cy, n)
        centres[name] = (cy, cx, r)
        paint([hu], [45.0], cy, cx, (r + 3) * mm * on, (r + 3) * mm * on)
        paint([hu], [content], cy, cx, r * mm * on, r * mm * on)
    transverse = _tprofile(t, 0.28, 0.46, "flat")
    paint([hu], [45.0], c0y - 62 * mm, c0x, 16 * mm * transverse, 70 * mm * transverse)
    paint([hu], [-900.0], c0y - 62 * mm, c0x, 12 * mm * transverse, 64 * mm * transverse)
    truth = None
    g = geometry
    if g.get("present"):
        seg, tz = _SEGMENT_OF_SITE[g["segment"]]
        zc = tz * (n - 1)
        k = round(zc)
        cy_arr, cx_arr, r_lumen = centres[seg]
        r_mm = g["radius_mm"] * lesion_scale
        off = r_lumen * 0.8 * mm
        lcy = float(cy_arr[k] + off * math.sin(g["angle"]))
        lcx = float(cx_arr[k] + off * math.cos(g["angle"]))
        truth = _ellipsoid(hu, 52.0, zc, lcy, lcx, r_mm / thickness, r_mm * mm, r_mm * 0.9 * mm)
    hu += noise(rng, hu.shape) * F32(12.0)
    return Volume({"hu": hu}, truth, {"width": width})


def ct_localizer(volume_hu: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A coronal projection radiograph (``rows`` along z, ``cols`` along x) of a CT volume."""
    att = np.clip(volume_hu + 1000.0, 0, None).mean(axis=1)  # (z, x)
    z_idx = np.clip((np.arange(rows) * volume_hu.shape[0] / rows).astype(np.int64), 0,
                    volume_hu.shape[0] - 1)
    x_idx = np.clip((np.arange(cols) * volume_hu.shape[2] / cols).astype(np.int64), 0,
                    volume_hu.shape[2] - 1)
    img = att[z_idx][:, x_idx]
    img = img / max(float(img.max()), 1.0) * 3000.0 - 1000.0
    return img.astype(F32)


# ----------------------------------------------------------------------------------------------
# MR prostate (T2, DWI, ADC from one anatomical model evaluated on any grid)


def mr_prostate(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
                z_top: float, z_len: float, geometry: dict[str, Any], lesion_scale: float,
                b_values: Sequence[int] = ()) -> Volume:
    """T2, ADC and diffusion-weighted channels of a pelvis with prostate on the given grid.

    Parameters
    ----------
    xs, ys : ndarray
        Column and row coordinates in mm (0 at the prostate centre).
    zs : ndarray
        Slice positions in mm.
    z_top, z_len : float
        Superior end and length of the anatomical coverage (defines the normalised depth t).
    b_values : sequence of int
        b-values for which diffusion-weighted channels ``b<value>`` are made.
    """
    n, h, w = len(zs), len(ys), len(xs)
    ps_y, ps_x = float(ys[1] - ys[0]), float(xs[1] - xs[0])
    t = ((z_top - zs) / z_len).astype(F32)
    t2 = np.full((n, h, w), 820.0, F32)   # fat
    adc = np.full((n, h, w), 420.0, F32)
    s0 = np.full((n, h, w), 90.0, F32)
    chans = [t2, adc, s0]

    def px(x_mm: float, y_mm: float) -> tuple[float, float]:
        return (y_mm - float(ys[0])) / ps_y, (x_mm - float(xs[0])) / ps_x

    def put(values: tuple[float, float, float], x_mm: float, y_mm: float, ry_mm: Any,
            rx_mm: Any, edge: float = 1.0) -> None:
        cy, cx = px(x_mm, y_mm)
        paint(chans, values, cy, cx, np.asarray(ry_mm, F32) / ps_y,
              np.asarray(rx_mm, F32) / ps_x, edge=edge)

    ones = np.ones(n, F32)
    for sign in (-1.0, 1.0):
        put((290.0, 1400.0, 320.0), sign * 52, 0, 36 * ones, 13 * ones)      # obturator int.
        put((90.0, 500.0, 60.0), sign * 82, -6, 27 * ones, 27 * ones)         # cortex
        put((600.0, 450.0, 70.0), sign * 82, -6, 24 * ones, 24 * ones)        # femoral head
        put((520.0, 450.0, 70.0), sign * 13, -56, 9 * ones, 9 * ones)         # pubic bone
    put((130.0, 1100.0, 150.0), 0, -56, 8 * ones, 6 * ones)                   # symphysis
    put((230.0, 1500.0, 280.0), 0, 40, 17 * ones, 22 * ones)                  # rectal wall
    put((40.0, 800.0, 40.0), 0, 40, 9 * ones, 13 * ones)                      # rectal lumen
    for sign in (-1.0, 1.0):
        put((260.0, 1500.0, 300.0), sign * 30, 22, 6 * ones, 18 * ones)       # levator ani
    gland = _tprofile(t, 0.12, 0.88)
    bladder = np.clip((0.25 - t) / 0.25, 0, 1).astype(F32)
    sv = _tprofile(t, 0.02, 0.3)
    put((1650.0, 3000.0, 1500.0), 0, -18, 30 * np.sqrt(bladder), 42 * np.sqrt(bladder), 1.5)
    for sign in (-1.0, 1.0):
        put((1250.0, 2300.0, 1100.0), sign * 16, 20, 6 * sv, 15 * sv)         # seminal ves.
    put((170.0, 1300.0, 250.0), 0, 0, 19 * gland, 26 * gland, 1.2)            # capsule
    put((740.0, 1750.0, 720.0), 0, 0, 17.5 * gland, 24.5 * gland, 1.2)        # peripheral zone
    put((400.0, 1250.0, 520.0), 0, -4, 12 * gland, 16 * gland, 1.5)           # transition zone
    for _ in range(5):                                                         # BPH nodules
        zx, zy = rng.uniform(-9, 9), rng.uniform(-9, 2)
        r = rng.uniform(2.5, 4.5)
        put((rng.uniform(300, 520), 1150.0, 500.0), zx, zy, r * gland, r * gland, 1.0)
    truth = None
    g = geometry
    if g.get("present"):
        sign = -1.0 if g["side"] == "right" else 1.0
        tz = g["z"]
        k = int(np.argmin(np.abs(t - tz)))
        prof = float(gland[k])
        cx_mm, cy_mm = sign * 15.0 * prof, 8.0 * prof
        r_mm = g["radius_mm"] * lesion_scale
        z_mm = z_top - tz * z_len
        dz = float(abs(zs[1] - zs[0])) if n > 1 else 3.0
        zc = float((zs[0] - z_mm) / dz) if n > 1 else 0.0
        cy, cx = px(cx_mm, cy_mm)
        f = np.clip(1 - ((np.arange(n, dtype=F32) - zc) / max(r_mm / dz, 0.5)) ** 2, 0, 1)
        s = np.sqrt(f)
        truth = paint(chans, (250.0, 780.0, 640.0), cy, cx, r_mm / ps_y * s, r_mm / ps_x * s,
                      want_truth=True)
    bias = (1.0 + 0.22 * (np.asarray(ys, F32) / 90.0))[None, :, None]
    n1, n2 = noise(rng, (n, h, w)), noise(rng, (n, h, w))
    out: dict[str, np.ndarray] = {}
    t2b = t2 * bias
    out["t2"] = np.sqrt((t2b + 22 * n1) ** 2 + (22 * n2) ** 2)
    out["adc"] = np.clip(adc + 60 * n1, 0, 4000)
    for b in b_values:
        sig = s0 * np.exp(-F32(b) * adc * F32(1e-6)) * bias * F32(1.6)
        n3, n4 = noise(rng, (n, h, w)), noise(rng, (n, h, w))
        out[f"b{b}"] = np.sqrt((sig + 18 * n3) ** 2 + (18 * n4) ** 2)
    return Volume(out, truth, {})


# ----------------------------------------------------------------------------------------------
# Mammography


def mg_view(rng: np.random.Generator, rows: int, cols: int, ps: float, view: str, side: str,
            breast: dict[str, Any], geometry: dict[str, Any] | None,
            lesion_scale: float) -> Volume:
    """One For-Presentation mammogram (``view`` CC or MLO, ``side`` left or right).

    The chest wall is on the image's right for the right breast and on its left for the left
    breast; the free corners of the nipple side stay background (room for burned-in text).
    """
    # the smooth anatomy is computed on a half-resolution grid and upsampled; noise, skin line,
    # nipple and lesion are drawn at full resolution
    hr, hc = rows // 2, cols // 2
    depth = breast["depth"] * cols
    half = breast["half"] * rows
    rc = rows * (0.5 if view == "CC" else 0.47)
    flip = side == "right"  # chest wall at the right edge
    cx = cols - 1.0 if flip else 0.0
    slope = 0.0 if view == "CC" else -0.18

    def geometry_maps(nr: int, nc: int, f: float) -> tuple[np.ndarray, ...]:
        d = np.arange(nc, dtype=F32) * f + (f - 1) / 2
        dist = ((cols - 1 - d) if flip else d)[None, :]
        yy = (np.arange(nr, dtype=F32) * f + (f - 1) / 2)[:, None]
        centre = rc + slope * (depth - dist)
        r2 = (dist / depth) ** 2 + ((yy - centre) / half) ** 2
        return dist, yy, centre, r2

    dist, yy, centre, r2 = geometry_maps(hr, hc, 2.0)
    thick = np.clip(np.sqrt(np.clip(1.0 - r2, 0, 1)) * 2.6, 0, 1)
    coarse = smooth_noise(rng, (hr, hc), 11)
    fine = smooth_noise(rng, (hr, hc), 3)
    central = np.exp(-(((yy - centre) / (0.65 * half)) ** 2)) * np.clip(1.15 - dist / depth, 0, 1)
    x = 0.55 * coarse + 0.35 * fine + (breast["density"] - 0.5) * 2.0 + 1.0 * central - 0.9
    fgt = 1.0 / (1.0 + np.exp(-2.8 * x))
    tissue = (1250.0 + 750.0 * fgt) * thick
    if view == "MLO":
        pect_h = rows * breast["pect"]
        tissue = tissue + 650.0 * np.clip((1.0 - dist / (0.26 * depth) - yy / pect_h) * 30.0, 0, 1)
    tissue = np.repeat(np.repeat(tissue.astype(F32), 2, axis=0), 2, axis=1)
    dist, yy, centre, r2 = geometry_maps(rows, cols, 1.0)
    inside = np.clip((1.0 - r2) * 40.0, 0, 1)
    skin = 260.0 * np.clip((r2 - 0.93) / 0.07, 0, 1)
    img = (F32(45.0) + (tissue + skin) * inside).astype(F32)[None]
    # nipple
    nip_y = float(rc + slope * 0.0)
    nip_x = (cols - 1 - depth) if flip else depth
    paint([img], [450.0], nip_y, nip_x, 6.0, 5.0, add=True)
    truth = None
    g = geometry
    if g is not None and g.get("present") and g["side"] == side:
        down = 1.0 if (view == "CC" and g["quadrant"] == "C50.2") else -1.0
        ld = depth * (1.0 - g["depth"])
        ly = rc + slope * (depth - ld) + down * g["offset"] * half
        lx = (cols - 1 - ld) if flip else ld
        r_px = g["radius_mm"] * lesion_scale / ps
        truth = paint([img], [1000.0], ly, lx, r_px, r_px * 1.05, edge=1.5, add=True,
                      want_truth=True)
        if g["spiculated"]:
            for i in range(11):
                ang = (i + rng.uniform(-0.3, 0.3)) / 11 * 2 * math.pi
                length = r_px * rng.uniform(1.6, 2.6)
                p0 = (ly + 0.8 * r_px * math.sin(ang), lx + 0.8 * r_px * math.cos(ang))
                p1 = (ly + length * math.sin(ang), lx + length * math.cos(ang))
                paint_segment(img[0], p0, p1, 2.4, 260.0)
    out = img[0] + noise(rng, (rows, cols)) * F32(22.0)
    return Volume({"mg": np.clip(out, 0, 4095)}, truth, {"chest_wall_col": cx})
