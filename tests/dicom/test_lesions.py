"""Lesions: consistent with the manifest and the clinical data, and learnable.

Learnability is shown with one simple blob statistic per modality (a difference of box means,
maximised over the organ), whose AUC between lesion and lesion-free images must be clearly above
chance; and with a logistic regression on downsampled mammograms of the full set.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from incisive_lab.dicom.synth import _phantoms as ph
from incisive_lab.dicom.synth._render import SOP_CLASSES
from tests.dicom._helpers import iter_entries, load_truth, read


def box_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows (same shape, edges replicated), via an integral image."""
    pad = k // 2
    p = np.pad(img.astype(np.float64), ((pad + 1, pad), (pad + 1, pad)), mode="edge")
    s = p.cumsum(0).cumsum(1)
    out = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    return out[: img.shape[0], : img.shape[1]] / (k * k)


def auc(pos: list[float], neg: list[float]) -> float:
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def test_manifest_lesions_are_consistent(small_set: Path) -> None:
    for truth in load_truth(small_set).values():
        lesion_of = {p["patient_id"]: p["lesion"] for p in truth["patients"]}
        by_series: dict[str, list[dict]] = defaultdict(list)
        for entry in truth["files"].values():
            by_series[entry["series_instance_uid"]].append(entry)
            if entry["lesion"]:
                assert lesion_of[entry["patient_id"]], "lesion in a lesion-free patient"
                r0, c0, r1, c1 = entry["lesion_box"]
                assert 0 <= r0 < r1 and 0 <= c0 < c1
            else:
                assert entry["lesion_box"] is None
        for files in by_series.values():
            slices = sorted(e["slice_index"] for e in files if e["lesion"] and "slice_index" in e)
            if slices and files[0]["modality"] in ("CT", "MR"):
                first = files[0]["lesion_slices"]
                assert first is not None and slices[0] >= first[0] and slices[-1] <= first[1]
                assert set(range(min(slices), max(slices) + 1)) == set(slices)  # contiguous
        for p in truth["patients"]:
            flagged = [e for e in truth["files"].values() if e["patient_id"] == p["patient_id"]
                       and e["lesion"]]
            assert bool(flagged) == p["lesion"], p["patient_id"]


@pytest.mark.slow
def test_mammography_lesion_on_one_breast_in_both_views(full_set: Path) -> None:
    for truth in load_truth(full_set).values():
        for p in truth["patients"]:
            if p["cancer_type"] != "breast":
                continue
            views = {e["view"] for e in truth["files"].values()
                     if e["patient_id"] == p["patient_id"] and e.get("view") and e["lesion"]}
            if p["lesion"]:
                side = "R" if p["lesion_geometry"]["side"] == "right" else "L"
                assert views == {f"{side}CC", f"{side}MLO"}
            else:
                assert not views


def _blob_auc(images_pos: list[np.ndarray], images_neg: list[np.ndarray], small: int,
              large: int, sign: float, mask_fn) -> float:  # type: ignore[no-untyped-def]
    def stat(img: np.ndarray) -> float:
        d = sign * (box_mean(img, small) - box_mean(img, large))
        mask = mask_fn(img)
        return float(d[mask].max()) if mask.any() else 0.0

    return auc([stat(i) for i in images_pos], [stat(i) for i in images_neg])


def test_learnable_ct_lung_nodules() -> None:
    pos, neg = [], []
    for i in range(24):
        for lesion, bucket in ((True, pos), (False, neg)):
            rng = np.random.default_rng(1000 + 2 * i + lesion)
            g = {"present": lesion, "side": ["left", "right"][i % 2], "lobe": "upper",
                 "z": 0.5, "u": float(rng.uniform(-0.4, 0.4)), "v": float(rng.uniform(-0.4, 0.4)),
                 "radius_mm": float(rng.uniform(6, 16))}
            vol = ph.ct_chest(rng, 12, 256, 1.37, 5.0, g, 1.0, False).channels["hu"]
            bucket.append(vol[6])
    assert auc([_isolated_solid(x) for x in pos], [_isolated_solid(x) for x in neg]) > 0.85


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        m[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def _isolated_solid(img: np.ndarray, d: int = 16) -> float:
    """Pixels of solid tissue (5 x 5 mean > -150 HU) with lung all around at distance `d`."""
    core = box_mean(img, 5) > -150
    m7 = box_mean(img, 7)
    e = d * 7 // 10
    for dy, dx in ((d, 0), (-d, 0), (0, d), (0, -d), (e, e), (-e, e), (e, -e), (-e, -e)):
        core &= _shift(m7, dy, dx) < -500
    return float(core.sum())


def test_learnable_ct_colon_masses() -> None:
    pos, neg = [], []
    for i in range(20):
        for lesion, bucket in ((True, pos), (False, neg)):
            rng = np.random.default_rng(2000 + 2 * i + lesion)
            seg = ["C18.2", "C18.7", "C20.9", "C18.0"][i % 4]
            g = {"present": lesion, "segment": seg, "angle": float(rng.uniform(0, 6.28)),
                 "radius_mm": float(rng.uniform(11, 22))}
            vol = ph.ct_abdomen(rng, 24, 256, 1.4, 5.0, g, 1.0, False)
            bucket.append(vol.channels["hu"])
    # a soft-tissue blob next to bowel gas: soft-tissue mean over 9x9 near a gas-containing
    # 31x31 neighbourhood, maximised over the volume
    def stat(vol: np.ndarray) -> float:
        best = 0.0
        for img in vol:
            tissue = box_mean((img > 20) & (img < 90), 9)
            gas = box_mean(img < -400, 31)
            best = max(best, float((tissue * (gas > 0.05)).max()))
        return best

    assert auc([stat(v) for v in pos], [stat(v) for v in neg]) > 0.75


def test_learnable_prostate_lesions() -> None:
    pos, neg = [], []
    xs = (np.arange(128) - 63.5) * 1.4
    zs = 20 - np.arange(12) * 4.0
    for i in range(24):
        for lesion, bucket in ((True, pos), (False, neg)):
            rng = np.random.default_rng(3000 + 2 * i + lesion)
            g = {"present": lesion, "side": ["left", "right"][i % 2], "z": 0.5,
                 "radius_mm": float(rng.uniform(4.5, 9))}
            vol = ph.mr_prostate(rng, xs, xs, zs, 44.0, 88.0, g, 1.0, (800,))
            bucket.append(vol.channels["b800"].max(axis=0))
    centre = np.zeros((128, 128), bool)
    centre[40:88, 40:88] = True
    assert _blob_auc(pos, neg, 3, 15, 1.0, lambda img: centre) > 0.85


def test_learnable_mammography_masses() -> None:
    pos, neg = [], []
    breast = {"depth": 0.62, "half": 0.38, "density": 0.5, "pect": 0.4}
    for i in range(24):
        for lesion, bucket in ((True, pos), (False, neg)):
            rng = np.random.default_rng(4000 + 2 * i + lesion)
            g = {"present": lesion, "side": "right", "quadrant": ["C50.4", "C50.2"][i % 2],
                 "depth": float(rng.uniform(0.35, 0.65)), "offset": float(rng.uniform(0.12, 0.4)),
                 "radius_mm": float(rng.uniform(5, 13)), "spiculated": bool(i % 3 == 0)}
            view = ["CC", "MLO"][i % 2]
            bucket.append(ph.mg_view(rng, 640, 512, 0.4, view, "right", breast, g, 1.0)
                          .channels["mg"])
    assert _blob_auc(pos, neg, 9, 31, 1.0, lambda img: box_mean(img, 61) > 1000) > 0.85


def _logistic_cv_scores(x: np.ndarray, y: np.ndarray, folds: int = 4) -> np.ndarray:
    """Out-of-fold scores of an L2 logistic regression (plain gradient descent)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    scores = np.zeros(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xt, xe = (x[train] - mu) / sd, (x[test] - mu) / sd
        w, b = np.zeros(x.shape[1]), 0.0
        for _ in range(400):
            p = 1 / (1 + np.exp(-(xt @ w + b)))
            w -= 0.1 * (xt.T @ (p - y[train]) / len(train) + 0.05 * w)
            b -= 0.1 * float((p - y[train]).mean())
        scores[test] = xe @ w + b
    return scores


@pytest.mark.slow
def test_logistic_regression_finds_masses_in_the_shipped_mammograms(full_set: Path) -> None:
    feats, labels = [], []
    for _, _, entry, path in iter_entries(full_set):
        if entry["sop_class_uid"] != SOP_CLASSES["MG"]:
            continue
        img = read(path).pixel_array.astype(float)
        if entry["burned_in_text"]:  # text boxes are not what we are learning
            for r0, c0, r1, c1 in entry["burned_in_boxes"]:
                img[r0:r1, c0:c1] = 45.0
        d = box_mean(img, 9) - box_mean(img, 31)
        d[box_mean(img, 61) < 1000] = 0
        # 2 x 2 max-pooled blob map and its maximum as features
        pooled = d.reshape(2, 320, 2, 256).max(axis=(1, 3)).ravel()
        feats.append(np.concatenate([pooled, [pooled.max()]]))
        labels.append(1.0 if entry["lesion"] else 0.0)
    x, y = np.array(feats), np.array(labels)
    assert 10 <= y.sum() <= len(y) - 10
    scores = _logistic_cv_scores(x, y)
    assert auc(list(scores[y == 1]), list(scores[y == 0])) > 0.8


@pytest.mark.parametrize("cancer", ["lung", "colorectal", "prostate", "breast"])
def test_lesion_free_images_look_alike(cancer: str) -> None:
    """Same noise and anatomy generator with or without the lesion: only the lesion differs."""
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    if cancer in ("lung", "colorectal"):
        fn = ph.ct_chest if cancer == "lung" else ph.ct_abdomen
        g = ({"present": True, "side": "left", "lobe": "upper", "z": 0.5, "u": 0.1, "v": 0.1,
              "radius_mm": 8.0} if cancer == "lung" else
             {"present": True, "segment": "C18.2", "angle": 1.0, "radius_mm": 15.0})
        a = fn(rng_a, 16, 256, 1.4, 5.0, g, 1.0, False)
        b = fn(rng_b, 16, 256, 1.4, 5.0, {**g, "present": False}, 1.0, False)
        ka, kb = a.channels["hu"], b.channels["hu"]
    elif cancer == "prostate":
        xs = (np.arange(96) - 47.5) * 1.8
        g = {"present": True, "side": "left", "z": 0.5, "radius_mm": 7.0}
        a = ph.mr_prostate(rng_a, xs, xs, 20 - np.arange(10) * 4.0, 40.0, 80.0, g, 1.0)
        b = ph.mr_prostate(rng_b, xs, xs, 20 - np.arange(10) * 4.0, 40.0, 80.0,
                           {**g, "present": False}, 1.0)
        ka, kb = a.channels["t2"], b.channels["t2"]
    else:
        g = {"present": True, "side": "left", "quadrant": "C50.4", "depth": 0.5, "offset": 0.2,
             "radius_mm": 9.0, "spiculated": False}
        breast = {"depth": 0.6, "half": 0.38, "density": 0.5, "pect": 0.4}
        a = ph.mg_view(rng_a, 640, 512, 0.4, "CC", "left", breast, g, 1.0)
        b = ph.mg_view(rng_b, 640, 512, 0.4, "CC", "left", breast, {**g, "present": False}, 1.0)
        ka, kb = a.channels["mg"], b.channels["mg"]
    differ = np.abs(ka - kb) > 1e-3
    assert a.lesion is not None and b.lesion is None
    assert 0 < differ.mean() < 0.02  # only the lesion's neighbourhood changes
