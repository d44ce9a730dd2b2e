"""Series to volumes without any server: sorting along the slice normal, geometry, rescale,
multi-frame instances, and every kind of mixed geometry refused with a sentence."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from incisive_lab.client import GeometryError, volume_from_datasets

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: An oblique orientation: rows along (cos 30, sin 30, 0), columns along z.
OBLIQUE = (np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0, 0.0, 0.0, -1.0)


def image(k: int, *, pos: Sequence[float] | None, iop: Sequence[float] | None = AXIAL,
          spacing: Sequence[float] | None = (0.7, 0.8), rows: int = 4, cols: int = 5, slope: float | None = None,
          intercept: float | None = None, number: int | None = None, frames: int = 1, **extra: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = f"1.2.826.0.1.{k}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "CT"
    ds.InstanceNumber = number if number is not None else k + 1
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    pixels = (np.arange(frames * rows * cols, dtype=np.uint16).reshape(frames, rows, cols) + 100 * k)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    if pos is not None:
        ds.ImagePositionPatient = [float(v) for v in pos]
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if spacing is not None:
        ds.PixelSpacing = [float(v) for v in spacing]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def stack(n: int, *, iop: Sequence[float] = AXIAL, gap: float = 2.5, start: Sequence[float] = (-10.0, 5.0, 30.0),
          **kw: Any) -> list[Dataset]:
    normal = np.cross(iop[:3], iop[3:])
    return [image(k, pos=np.asarray(start) + k * gap * normal, iop=iop, **kw) for k in range(n)]


def test_slices_are_sorted_along_the_normal_whatever_the_order_they_come_in() -> None:
    series = stack(6, iop=OBLIQUE)
    shuffled = series[:]
    random.Random(4).shuffle(shuffled)
    for ds in shuffled:  # instance numbers that disagree with the positions do not matter
        ds.InstanceNumber = random.Random(ds.SOPInstanceUID).randint(1, 99)
    vol = volume_from_datasets(shuffled, node="hospital-a")
    assert [h.SOPInstanceUID for h in vol.headers] == [ds.SOPInstanceUID for ds in series]
    assert vol.shape == (6, 4, 5) and vol.array.dtype == np.uint16
    assert np.array_equal(vol.array[2], series[2].pixel_array)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert vol.origin == pytest.approx(tuple(series[0].ImagePositionPatient))
    row, col = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    assert np.allclose(vol.direction, np.stack([np.cross(row, col), col, row], axis=1))
    # voxel (slice k, row i, column j) -> IPP_k + i * row spacing * column cosines + j * column spacing * row cosines
    expected = np.array(series[3].ImagePositionPatient) + 2 * 0.7 * col + 4 * 0.8 * row
    assert vol.position((3, 2, 4)) == pytest.approx(tuple(expected))
    assert vol.positioned and vol.node == "hospital-a" and vol.series_uid == "1.2.3.4"
    assert all("PixelData" not in h for h in vol.headers)


def test_the_rescale_is_applied_per_slice_unless_asked_not_to() -> None:
    series = stack(3, slope=2.0, intercept=-1024)
    series[1].RescaleSlope = 0.5
    vol = volume_from_datasets(series)
    assert vol.array.dtype == np.float32
    assert np.array_equal(vol.array[0], series[0].pixel_array * 2.0 - 1024)
    assert np.array_equal(vol.array[1], series[1].pixel_array * 0.5 - 1024)
    raw = volume_from_datasets(series, rescale=False)
    assert raw.array.dtype == np.uint16 and np.array_equal(raw.array[1], series[1].pixel_array)


def test_a_single_slice_takes_its_spacing_from_the_header() -> None:
    vol = volume_from_datasets([image(0, pos=(0, 0, 0), SliceThickness=3.0)])
    assert vol.shape == (1, 4, 5) and vol.spacing == pytest.approx((3.0, 0.7, 0.8))
    vol = volume_from_datasets([image(0, pos=(0, 0, 0), SliceThickness=3.0, SpacingBetweenSlices=4.0)])
    assert vol.spacing[0] == 4.0


def test_projection_images_without_positions_keep_instance_order_with_nominal_geometry() -> None:
    views = [image(k, pos=None, iop=None, spacing=None, number=2 - k, ImagerPixelSpacing=[0.1, 0.1]) for k in range(2)]
    vol = volume_from_datasets(views)
    assert not vol.positioned and vol.origin == (0.0, 0.0, 0.0) and np.array_equal(vol.direction, np.eye(3))
    assert vol.spacing == pytest.approx((1.0, 0.1, 0.1))
    assert [h.InstanceNumber for h in vol.headers] == [1, 2]


def test_a_multiframe_instance_gives_its_frames_sorted_with_per_frame_geometry() -> None:
    ds = image(0, pos=None, iop=None, spacing=None, frames=3)
    shared, orientation, measures = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    measures.PixelSpacing = [0.5, 0.5]
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for z in (20.0, 10.0, 15.0):  # frames stored out of order
        group, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, z]
        group.PlanePositionSequence = [plane]
        per.append(group)
    ds.PerFrameFunctionalGroupsSequence = per
    vol = volume_from_datasets([ds])
    frames = ds.pixel_array
    assert vol.shape == (3, 4, 5)
    assert [np.array_equal(vol.array[i], frames[j]) for i, j in enumerate((1, 2, 0))] == [True] * 3
    assert vol.spacing == pytest.approx((5.0, 0.5, 0.5)) and vol.origin == (0.0, 0.0, 10.0)
    assert len(vol.headers) == 1


@pytest.mark.parametrize(("series", "sentence"), [
    ([], "no instances"),
    (lambda: [*stack(2), image(9, pos=(0, 0, 90), iop=(0, 1, 0, 0, 0, -1))], "orientations differ"),
    (lambda: [*stack(2), image(9, pos=(-10, 5, 90), rows=8)], "different sizes"),
    (lambda: [*stack(2), image(9, pos=(-10, 5, 90), spacing=(0.7, 0.9))], "pixel spacings differ"),
    (lambda: [*stack(2), image(9, pos=None)], "1 of 3 images have no ImagePositionPatient"),
    (lambda: [*stack(3), image(9, pos=(-10, 5, 32.5))], "2 images share a position"),
    (lambda: [image(k, pos=(-10 + 4 * k, 5, 30 + 2.5 * k)) for k in range(3)], "not stacked along their normal"),
    (lambda: [image(k, pos=(-10, 5, 30 + z)) for k, z in enumerate((0, 2.5, 7.5, 10))], "uneven slice spacing"),
    (lambda: [*stack(2), _without_pixels(image(9, pos=(-10, 5, 35)))], "has no pixel data"),
])
def test_what_is_not_one_volume_is_refused_with_a_sentence(series: Any, sentence: str) -> None:
    with pytest.raises(GeometryError) as err:
        volume_from_datasets(series() if callable(series) else series)
    assert sentence in str(err.value)
    assert isinstance(err.value, ValueError)


def _without_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds
