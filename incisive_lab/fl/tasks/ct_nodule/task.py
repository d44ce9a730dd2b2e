"""CT chest nodule classifier: does this lung show a nodule? (3D, one lung per sample)

Samples are the node's axial CT chest series (``BodyPartExamined`` CHEST, at least
``min_slices`` slices; localizers are left out), every study of the patients in scope. Each
volume is converted to Hounsfield units (``RescaleSlope``/``RescaleIntercept``), ordered
head to feet by ``ImagePositionPatient``, put in the lung window, area-resampled to
``depth`` x ``size`` x ``size`` voxels and cut at the midline into the patient's right and
left halves (by ``ImageOrientationPatient``); the left half is mirrored so both face the
same way. Only the lungs are kept (air inside the body, with what it encloses: vessels and
nodules); the rest of the slice is set to the window's floor. Labels come only from what the node holds:

* the patient's ``lesion_label`` Observation (FHIR; ``present``/``absent``),
* the primary cancer's laterality (the Condition's mCODE laterality qualifier).

A half is positive when the patient's lesion is present and on that side; patients without
a ``lesion_label`` (or, with a lesion, without a laterality) are left out. Patients are
split into train and test by a hash of their pseudonym.

Config keys (besides the trainer's; defaults in ``DEFAULTS``): ``test_fraction``,
``split_salt`` (""), ``depth``, ``size``, ``min_slices`` (8), ``width`` (8), ``seed`` (model
initialisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from incisive_lab.fl.task import LocalData, Samples, split_by_patient

NAME = "ct-nodule"
VERSION = "1.0.0"
#: The config this task was tuned with (a run's config overrides any key).
DEFAULTS = {"epochs": 3, "lr": 3e-3, "batch_size": 8, "test_fraction": 0.4, "depth": 24,
            "size": 64}
CLASSES = ("no-nodule", "nodule")
#: The lung window (HU) the volume is clipped to before scaling to [0, 1].
WINDOW = (-1000.0, 200.0)
#: Below this (HU) a voxel is air: the lungs are the air inside the body.
AIR_HU = -400.0


class NoduleNet(nn.Module):
    """Three 3D convolutions with pooling, global max pooling, a linear head (~18k weights)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv3d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(8 * w, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.amax(dim=(2, 3, 4)), f.mean(dim=(2, 3, 4))], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out


def build_model(config: Mapping[str, Any]) -> nn.Module:
    torch.manual_seed(int(config.get("seed", 0)))
    return NoduleNet(int(config.get("width", 8)))


def _lungs(hu: np.ndarray) -> np.ndarray:
    """The lungs of one axial slice, with what lies inside them (vessels, nodules).

    Air (< -400 HU) not connected to the image border, holes filled; the body wall,
    mediastinum and abdomen fall outside.
    """
    air = hu < AIR_HU
    labels, _ = ndimage.label(air)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = air & ~np.isin(labels, border[border > 0])
    return np.asarray(ndimage.binary_fill_holes(inside))


def _volume(slices: list[Any], depth: int, size: int) -> torch.Tensor:
    """Lung-window volume (depth, size, size), head first, column 0 on the patient's right."""
    def z(ds: Any) -> float:
        return float(ds.ImagePositionPatient[2])

    slices = sorted(slices, key=z, reverse=True)
    planes = []
    for ds in slices:
        hu = (np.asarray(ds.pixel_array, dtype=np.float32) * float(ds.get("RescaleSlope", 1) or 1)
              + float(ds.get("RescaleIntercept", 0) or 0))
        planes.append(np.where(_lungs(hu), np.clip(hu, *WINDOW), WINDOW[0]))
    vol = np.stack(planes)
    row_x = float(slices[0].ImageOrientationPatient[0])
    if row_x < 0:  # columns run towards the patient's right: mirror
        vol = vol[:, :, ::-1]
    t = torch.from_numpy(np.ascontiguousarray(vol))
    t = (t - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    return F.adaptive_avg_pool3d(t[None, None], (depth, size, size))[0, 0]


def load_data(reader: Any, config: Mapping[str, Any]) -> LocalData:
    depth, size = int(config.get("depth", 24)), int(config.get("size", 64))
    min_slices = int(config.get("min_slices", 8))
    lesion = reader.observations("lesion_label")
    side = reader.laterality()
    items: list[tuple[torch.Tensor, int, tuple[str, str]]] = []
    half = size // 2
    for series in reader.series(modality="CT", body_part="CHEST"):
        key = (series.dataset, series.patient)
        if len(series.instances) < min_slices or key not in lesion:
            continue
        if lesion[key] == "present" and key not in side:
            continue
        slices = [reader.read(ref) for ref in series.instances]
        slices = [ds for ds in slices if "ImagePositionPatient" in ds and "PixelData" in ds]
        if len(slices) < min_slices:
            continue
        vol = _volume(slices, depth, size)
        halves = {"right": vol[:, :, :half], "left": vol[:, :, size - half:].flip(-1)}
        for name, part in halves.items():
            label = int(lesion[key] == "present" and side.get(key) == name)
            items.append((part[None].contiguous(), label, key))
    train_keys, _ = split_by_patient(sorted({k for _, _, k in items}),
                                     float(config.get("test_fraction", 0.25)),
                                     salt=str(config.get("split_salt", "")))
    shape = (1, depth, size, half)
    train = [i for i in items if i[2] in train_keys]
    test = [i for i in items if i[2] not in train_keys]
    return LocalData(train=Samples.stack(train, shape), test=Samples.stack(test, shape),
                     patients=frozenset(p for _, _, (_, p) in items),
                     datasets=frozenset(d for _, _, (d, _) in items), classes=CLASSES)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random head-feet shifts of up to 2 slices, in-plane shifts of up to 3 voxels and
    front-back flips."""
    out = []
    for vol in x:
        if torch.rand(1, generator=generator).item() < 0.5:
            vol = vol.flip(-2)
        dz, dy, dx = (int(v) for v in torch.randint(-2, 3, (3,), generator=generator))
        vol = torch.roll(vol, shifts=(dz, dy + dx % 2, dx), dims=(-3, -2, -1))
        out.append(vol)
    return torch.stack(out)
