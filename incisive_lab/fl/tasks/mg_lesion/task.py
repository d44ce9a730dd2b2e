"""Mammography lesion classifier: does this image show a mass? (2D, one image per sample)

Samples are the node's For-Presentation mammograms (every view, every study of the patients
in scope). Labels come only from what the node holds:

* the patient's ``lesion_label`` Observation (FHIR; ``present``/``absent``),
* the primary cancer's laterality (the Condition's mCODE laterality qualifier),
* the image's ``ImageLaterality`` (DICOM).

An image is positive when the patient's lesion is present and the image shows that breast;
patients without a ``lesion_label`` (or, with a lesion, without a laterality) are left out.
Images are mirrored so the chest wall is on the left (by ``PatientOrientation``, else by
laterality), area-downsampled by ``downsample`` (default 4: 640x512 -> 160x128) and
high-passed (minus a ``highpass`` x ``highpass`` local mean, scaled by 1/500: a mass stands
out from the breast around it) — or, with ``highpass`` 0, standardised per image. Patients are split into train and test by a hash of their
pseudonym (:func:`incisive_lab.fl.task.split_by_patient`).

Config keys (besides the trainer's; defaults in ``DEFAULTS``): ``test_fraction``,
``split_salt`` (""), ``downsample``, ``highpass``, ``width`` (8), ``seed`` (model
initialisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from incisive_lab.fl.task import LocalData, Samples, split_by_patient

NAME = "mg-lesion"
VERSION = "1.0.0"
#: The config this task was tuned with (a run's config overrides any key).
DEFAULTS = {"epochs": 8, "lr": 3e-3, "batch_size": 8, "test_fraction": 0.4, "downsample": 4,
            "highpass": 13}
CLASSES = ("no-lesion", "lesion")
SCALE = 500.0


class LesionNet(nn.Module):
    """Three strided convolutions, global max and mean pooling, a linear head (~6k weights)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(8 * w, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        out: torch.Tensor = self.head(pooled)
        return out


def build_model(config: Mapping[str, Any]) -> nn.Module:
    torch.manual_seed(int(config.get("seed", 0)))
    return LesionNet(int(config.get("width", 8)))


def _image(ds: Any, downsample: int, highpass: int) -> torch.Tensor:
    pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    orientation = [str(v) for v in (ds.get("PatientOrientation") or [])]
    if orientation and orientation[0]:
        mirror = orientation[0].startswith("P")  # columns run towards the chest wall
    else:
        mirror = str(ds.get("ImageLaterality") or ds.get("Laterality") or "") == "R"
    x = torch.from_numpy(np.ascontiguousarray(pixels[:, ::-1] if mirror else pixels))[None, None]
    x = F.avg_pool2d(x, downsample)
    if highpass:
        local = F.avg_pool2d(x, highpass, stride=1, padding=highpass // 2, count_include_pad=False)
        return ((x - local) / SCALE)[0]
    return ((x - x.mean()) / (x.std() + 1e-6))[0]


def load_data(reader: Any, config: Mapping[str, Any]) -> LocalData:
    downsample = int(config.get("downsample", 4))
    lesion = reader.observations("lesion_label")
    side = reader.laterality()
    items: list[tuple[torch.Tensor, int, tuple[str, str]]] = []
    shape: tuple[int, ...] = (1, 640 // downsample, 512 // downsample)
    for series in reader.series(modality="MG"):
        key = (series.dataset, series.patient)
        if key not in lesion or (lesion[key] == "present" and key not in side):
            continue
        for ref in series.instances:
            ds = reader.read(ref)
            intent = str(ds.get("PresentationIntentType") or "FOR PRESENTATION")
            laterality = str(ds.get("ImageLaterality") or ds.get("Laterality") or "")
            if intent != "FOR PRESENTATION" or laterality not in ("L", "R"):
                continue
            shown = "right" if laterality == "R" else "left"
            label = int(lesion[key] == "present" and side.get(key) == shown)
            x = _image(ds, downsample, int(config.get("highpass", 0)))
            shape = tuple(x.shape)
            items.append((x, label, key))
    train_keys, _ = split_by_patient(sorted({k for _, _, k in items}),
                                     float(config.get("test_fraction", 0.25)),
                                     salt=str(config.get("split_salt", "")))
    train = [i for i in items if i[2] in train_keys]
    test = [i for i in items if i[2] not in train_keys]
    return LocalData(train=Samples.stack(train, shape), test=Samples.stack(test, shape),
                     patients=frozenset(p for _, _, (_, p) in items),
                     datasets=frozenset(d for _, _, (d, _) in items), classes=CLASSES)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random vertical flips, shifts of up to 8 pixels and a small intensity jitter."""
    out = []
    for img in x:
        if torch.rand(1, generator=generator).item() < 0.5:
            img = img.flip(-2)
        dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=generator))
        img = torch.roll(img, shifts=(dy, dx), dims=(-2, -1))
        scale = 1.0 + 0.1 * (torch.rand(1, generator=generator).item() - 0.5)
        out.append(img * scale)
    return torch.stack(out)
