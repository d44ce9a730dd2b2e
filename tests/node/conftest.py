"""Fixtures of the node store tests: back-ends (SQLite, PostgreSQL) and synthetic DICOM.

``backend`` parametrizes a test over ``sqlite`` and ``postgresql``; ``open_store`` opens a
:class:`NodeStore` in a fresh directory on that back-end (a fresh database per store on
the session's throw-away PostgreSQL cluster). A missing PostgreSQL is an error, never a skip
(see :mod:`tests._support.postgres`).

``make_dicom`` builds small de-identified-looking DICOM files in code (no real data).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from incisive_lab.node import NodeStore
from tests._support.postgres import PostgresCluster

BACKENDS = ("sqlite", "postgresql")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"



@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database back-end of the test."""
    return str(request.param)


OpenStore = Callable[..., NodeStore]


@pytest.fixture
def open_store(tmp_path: Path, backend: str, request: pytest.FixtureRequest
               ) -> Iterator[OpenStore]:
    """Open a store on the test's back-end: ``open_store(name="node", **open_kwargs)``.

    Each store name gets its own directory and, on PostgreSQL, its own fresh database
    (opening the same name again reuses both).
    """
    opened: list[NodeStore] = []
    urls: dict[str, str | None] = {}

    def _open(name: str = "node", **kwargs: object) -> NodeStore:
        if name not in urls:
            if backend == "sqlite":
                urls[name] = None
            else:
                cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
                urls[name] = cluster.create_database()
        store = NodeStore.open(tmp_path / name, urls[name], **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


def uid(*parts: int) -> str:
    """A deterministic UID under the 2.25 root (test values only)."""
    return "2.25." + "".join(f"{p:04d}" for p in parts).lstrip("0") + "1"


def make_dicom(*, patient: int = 1, study: int = 1, series: int = 1, instance: int = 1,
               modality: str = "CT", body_part: str = "CHEST", sex: str = "F",
               description: str = "Axial", pixel: int = 0) -> bytes:
    """A tiny explicit-VR little-endian DICOM instance with pseudonymised identifiers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE)
    meta.MediaStorageSOPInstanceUID = UID(uid(patient, study, series, instance))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = f"2020{study:02d}{patient % 28 + 1:02d}"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{patient:03d}{study:02d}"
    ds.Modality = modality
    ds.StudyDescription = "CT THORAX"
    ds.SeriesDescription = description
    ds.PatientName = ""
    ds.PatientID = f"PSN-{patient:04d}"
    ds.PatientSex = sex
    ds.PatientAge = "061Y"
    ds.BodyPartExamined = body_part
    ds.StudyInstanceUID = uid(patient, study)
    ds.SeriesInstanceUID = uid(patient, study, series)
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes([pixel % 256, 1, 2, 3])
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_files(folder: Path, n_patients: int = 3, n_series: int = 2, n_instances: int = 3,
                **kwargs: object) -> list[Path]:
    """Write a small tree of instances under ``folder``; return the paths in order."""
    out: list[Path] = []
    for p in range(1, n_patients + 1):
        for s in range(1, n_series + 1):
            for i in range(1, n_instances + 1):
                path = folder / f"p{p}" / f"s{s}" / f"{i}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(make_dicom(patient=p, series=s, instance=i,
                                            modality="CT" if s == 1 else "MR",
                                            **kwargs))  # type: ignore[arg-type]
                out.append(path)
    return out
