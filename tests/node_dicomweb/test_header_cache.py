"""The fast header reader gives exactly what pydicom gives, or hands the file to pydicom.

:func:`header_json` must agree with ``pydicom.dcmread(stop_before_pixels=True)
.to_json_dict()`` on every file it accepts: the node's stored objects, pydicom's own test
files, and files built here to hit each value representation and each corner (empty and
multi-valued values, nested sequences of both length forms, character sets, a header longer
than the first read). Whatever it does not handle it must refuse (``None``), never guess.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from incisive_lab.node.dicomweb._headers import HeaderCache, header_json
from incisive_lab.node.store import NodeStore


def _pydicom_json(data: bytes) -> dict[str, Any]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    doc: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 62)
    return doc


def _same(data: bytes) -> None:
    fast = header_json(data)
    assert fast is not None, "expected the fast reader to handle this file"
    assert json.dumps(fast[0], sort_keys=True) == json.dumps(_pydicom_json(data), sort_keys=True)


def _file(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "2.25.1234"
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _base(**values: Any) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "2.25.1234"
    ds.PatientID = "PSN-000001"
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def test_every_value_representation_matches_pydicom() -> None:
    item = Dataset()
    item.CodeValue = "113100"
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "Basic Application Confidentiality Profile"
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "2.25.99"
    item.ReferencedSOPSequence = Sequence([inner])
    ds = _base(
        ImageType=["ORIGINAL", "PRIMARY", "", "AXIAL"],   # CS with an empty value
        StudyDate="20200101", StudyTime="101010.5", AcquisitionDateTime="20200101101010",
        PatientAge="063Y", AccessionNumber="", ReferringPhysicianName="",
        PatientName="PSN^Bench", StudyDescription="Étude — ütf8 ✓",
        SeriesDescription=" leading space kept", ImageComments="line one\r\nline two  ",
        SliceThickness="1.25", PixelSpacing=["0.5", "0.5"], ImagePositionPatient=[-1e2, 0, 3.5],
        InstanceNumber="7", SeriesNumber=2, Rows=4, Columns=4, BitsAllocated=16,
        SmallestImagePixelValue=0, RescaleIntercept="-1024",
        RetrieveAETitle=["  AE1 ", "AE2"], RetrieveURL="https://pacs.example/x  ",
        FrameIncrementPointer=[0x00181063, 0x00181065],
        SpacingBetweenSlices="2", ExposureTime="100",
        ReferencedFrameNumber=["1", "2"],
    )
    ds.add_new(0x00181063, "DS", "33.3")
    ds.add_new(0x00460040, "FL", [0.1, 2.5])                  # FL, multi-valued
    ds.add_new(0x00189087, "FD", 1000.25)                      # FD
    ds.add_new(0x00281041, "SS", -5)                           # SS
    ds.add_new(0x00181310, "US", [0, 256, 256, 0])             # US, multi-valued
    ds.DeidentificationMethodCodeSequence = Sequence([item, Dataset()])
    ds.add_new(0x00420011, "OB", b"\x01\x02\x03")              # OB, odd length
    ds.add_new(0x00640009, "OF", b"\x00\x00\x80\x3f")          # OF
    ds.OtherPatientIDsSequence = Sequence()                    # an empty sequence
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")               # a retained private block
    ds.add_new(0x00191023, "DS", "39.375")
    _same(_file(ds))


def test_undefined_length_sequences_and_items_match_pydicom() -> None:
    item = Dataset()
    item.CodeValue = "A"
    item.CodeMeaning = "nested"
    ds = _base()
    ds.ProcedureCodeSequence = Sequence([item, item])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    for it in ds.ProcedureCodeSequence:
        it.is_undefined_length_sequence_item = True
    _same(_file(ds))


def test_latin1_and_default_character_sets_match_pydicom() -> None:
    ds = _base(SpecificCharacterSet="ISO_IR 100", StudyDescription="Röntgen Thorax")
    _same(_file(ds))
    ds = _base(StudyDescription="plain")
    del ds.SpecificCharacterSet
    _same(_file(ds))


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    ds = _base()
    ds.add_new(0x0040A160, "UT", "x" * 70_000)  # the header runs past the first 64 KiB read
    data = _file(ds)
    assert header_json(data[:1 << 16], complete=False) is None
    _same(data)
    sha = "ab" * 32
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / f"{sha}.dcm").write_bytes(data)
    header = HeaderCache(tmp_path).get(sha)
    assert json.loads(header.json_text) == _pydicom_json(data)


@pytest.mark.parametrize("change", ["implicit", "charset", "un", "ds", "is", "pn"])
def test_what_it_does_not_handle_is_left_to_pydicom(change: str) -> None:
    ds = _base()
    syntax = ExplicitVRLittleEndian
    if change == "implicit":
        syntax = ImplicitVRLittleEndian
    elif change == "charset":
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    elif change == "ds":
        ds.SliceThickness = "1.0\\"          # an empty number: pydicom's own business
    elif change == "is":
        ds.add_new(0x00200013, "IS", "1.5")  # not an integer string
    elif change == "pn":
        ds.PatientName = "Yamada^Tarou=山田^太郎"
    data = _file(ds, syntax)
    if change == "un":  # pydicom writes a known attribute with its own VR: append it raw
        data += b"\x18\x00\x30\x10UN\x00\x00" + struct.pack("<I", 8) + b"PROTOCOL"
    assert header_json(data) is None


def test_pixel_data_ends_the_header() -> None:
    ds = _base(Rows=2, Columns=2, BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=0,
               SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2")
    ds.PixelData = b"\x00\x01" * 4
    ds.add_new(0xFFFCFFFC, "OB", b"\x00\x00")  # after Pixel Data: not part of the header
    data = _file(ds)
    fast = header_json(data)
    assert fast is not None and "7FE00010" not in fast[0] and "FFFCFFFC" not in fast[0]
    _same(data)


def test_pydicom_test_files_match_or_are_refused() -> None:
    from pydicom.data import get_testdata_files

    handled = 0
    for name in get_testdata_files("*.dcm"):
        data = Path(name).read_bytes()
        try:
            expected = _pydicom_json(data)
        except Exception:  # pydicom cannot read or convert it: nothing to compare
            continue
        fast = header_json(data)
        if fast is not None:
            handled += 1
            assert json.dumps(fast[0], sort_keys=True) == json.dumps(expected, sort_keys=True), name
    assert handled >= 20


def test_every_stored_object_of_the_node_matches_pydicom(small_node: Path) -> None:
    with NodeStore.open(small_node) as store:
        objects = [store.object_path(sha) for sha, _ in store.iter_objects()]
    handled = 0
    for path in objects:
        data = path.read_bytes()
        fast = header_json(data)
        if fast is not None:
            handled += 1
            assert json.dumps(fast[0], sort_keys=True) == json.dumps(_pydicom_json(data), sort_keys=True), path
    assert handled >= len(objects) * 0.9  # de-identified output is the usual explicit VR LE


def test_the_cache_keeps_the_most_recent_headers_within_its_count_and_bytes(tmp_path: Path) -> None:
    shas = []
    for i in range(4):
        data = _file(_base(StudyDescription=f"study {i}"))
        sha = f"{i:02x}" * 32
        (tmp_path / sha[:2]).mkdir()
        (tmp_path / sha[:2] / f"{sha}.dcm").write_bytes(data)
        shas.append(sha)
    by_count = HeaderCache(tmp_path, size=2)
    for sha in shas:
        by_count.get(sha)
    assert list(by_count._items) == shas[2:]
    one = len(by_count.get(shas[3]).json_text)
    by_bytes = HeaderCache(tmp_path, size=100, max_bytes=one * 3 - 1)
    for sha in shas:
        by_bytes.get(sha)
    by_bytes.get(shas[2])  # used again: the oldest is dropped, not it
    assert list(by_bytes._items) == [shas[3], shas[2]]
    assert by_bytes._bytes == sum(len(h.json_text) for h in by_bytes._items.values())
