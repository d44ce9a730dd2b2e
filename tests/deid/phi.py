"""PHI-bearing test instances built in code on top of pydicom's public test files.

Nothing here is real patient data: every identifying value is invented and planted by
:func:`plant`, which puts it wherever PHI hides in practice (names, IDs, dates, free
text, nested sequences two levels deep, private blocks of several vendors — one at a
non-standard block number, one inside a sequence item — file meta, preamble, overlay
text). :data:`TOKENS` and :data:`DATES` list what a leak scanner must not find.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

TEST_FILES = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")

# Invented identities (the family and given names do not belong to anyone we know of).
PATIENT_NAME = "VANDERBERG^ELOISE^MARGRIET"
TOKENS = [
    "VANDERBERG", "ELOISE", "MARGRIET", "MRN-77120934", "77120934", "STMARTIN-HOSP", "NHS-4410-9921",
    "Kastanienallee", "Rotterdam", "4417 2290", "Oosterhuis", "ACC99817265", "STU-55128", "Brandvold",
    "Torstein", "Hallgrimsson", "Mertensson", "Dagny", "Sint Maartensgasthuis", "Maartensgasthuis",
    "Ziekenhuisweg", "Noordvleugel", "RTMCT07", "RP-8812345", "SPS-44718", "SMG_CT7", "Quarleton",
    "Wielewaal", "eloise.vdb@example.org",
]
DATES = ["19580217", "20190314", "20190301", "20190302"]
SAFE_PRIVATE_VALUES = ["12.5", "3.25"]  # GEMS_ACQU_01 (0019,xx23) and (0019,xx24)


@dataclass(frozen=True)
class Planted:
    """A PHI-laden instance: its bytes, its name, and the original UIDs that must not survive."""

    name: str
    data: bytes
    original_uids: tuple[str, ...]


def _private_block(ds: Dataset, group: int, block: int, creator: str, elements: list[tuple[int, str, object]]) -> None:
    ds.add_new((group << 16) | block, "LO", creator)
    for low, vr, value in elements:
        ds.add_new((group << 16) | (block << 8) | low, vr, value)


def plant(ds: Dataset) -> Dataset:
    """Plant invented PHI everywhere it hides; returns the same dataset."""
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "MRN-77120934"
    ds.IssuerOfPatientID = "STMARTIN-HOSP"
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = "NHS-4410-9921"
    ds.OtherPatientIDsSequence[0].IssuerOfPatientID = "NATREG"
    ds.PatientBirthDate = "19580217"
    ds.PatientSex = "F"
    ds.PatientAge = "061Y"
    ds.PatientAddress = "Kastanienallee 42, Rotterdam"
    ds.PatientTelephoneNumbers = "+31 6 4417 2290"
    ds.PatientMotherBirthName = "Oosterhuis"
    ds.AccessionNumber = "ACC99817265"
    ds.StudyID = "STU-55128"
    ds.ReferringPhysicianName = "Brandvold^Torstein"
    ds.PerformingPhysicianName = "Hallgrimsson^Ylva"
    ds.OperatorsName = "Mertensson^Dagny"
    ds.NameOfPhysiciansReadingStudy = "Quarleton^Aldous"
    ds.InstitutionName = "Sint Maartensgasthuis"
    ds.InstitutionAddress = "Ziekenhuisweg 9, Rotterdam"
    ds.InstitutionalDepartmentName = "Radiologie Noordvleugel"
    ds.StationName = "RTMCT07"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20190314"
    ds.InstanceCreationDate = "20190302"
    ds.StudyTime = ds.SeriesTime = "093012"
    ds.AcquisitionDateTime = "20190314093015"
    ds.StudyDescription = "CT THORAX Vanderberg follow-up"
    ds.SeriesDescription = "AXIAL 1.25mm for Eloise"
    ds.ProtocolName = "VANDERBERG_lung_protocol"
    ds.ImageComments = "Patient MRN-77120934 moved; call +31 6 4417 2290"
    ds.PatientComments = "Lives at Kastanienallee, mail eloise.vdb@example.org"
    ds.AdditionalPatientHistory = "Referred by Brandvold after 20190301 visit"
    ds.BurnedInAnnotation = "NO"
    ds.RequestAttributesSequence = Sequence([Dataset()])
    req = ds.RequestAttributesSequence[0]
    req.RequestedProcedureID = "RP-8812345"
    req.ScheduledProcedureStepID = "SPS-44718"
    req.AccessionNumber = "ACC99817265"
    ds.ReferencedPatientSequence = Sequence([Dataset()])
    ds.ReferencedPatientSequence[0].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    ds.ReferencedPatientSequence[0].ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.4417.1"
    # a sequence two levels deep holding a person name, a date and free text
    outer = Dataset()
    outer.ValueType = "CONTAINER"
    inner = Dataset()
    inner.ValueType = "PNAME"
    inner.PersonName = "Wielewaal^Joost"
    inner.Date = "20190314"
    inner.TextValue = "seen by Wielewaal"
    outer.ContentSequence = Sequence([inner])
    ds.ContentSequence = Sequence([outer])
    # private blocks: GE-like (safe and unsafe mixed), Siemens-like CSA blob, an unknown
    # PACS at block 0x11, and one private element inside a sequence item
    _private_block(ds, 0x0009, 0x10, "GEMS_IDEN_01", [(0x02, "SH", "RTMCT07"), (0x03, "LO", "VANDERBERG^ELOISE")])
    _private_block(ds, 0x0019, 0x10, "GEMS_ACQU_01", [(0x23, "DS", "12.5"), (0x24, "DS", "3.25"), (0x30, "LO", "Dagny Mertensson")])
    _private_block(ds, 0x0029, 0x10, "SIEMENS CSA HEADER", [(0x10, "OB", b"SV10\x04\x03\x02\x01PatientName\x00VANDERBERG^ELOISE\x00")])
    _private_block(ds, 0x0011, 0x11, "ACME PACS 2.1", [(0x01, "LO", "MRN-77120934"), (0x02, "DA", "19580217"), (0x03, "UI", str(ds.get("StudyInstanceUID", "1.2.3")))])
    item = ds.OtherPatientIDsSequence[0]
    _private_block(item, 0x0033, 0x10, "ACME PACS 2.1", [(0x01, "LO", "Oosterhuis")])
    # overlay with identifying description
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000022, "LO", "Vanderberg ROI")
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", b"\xff" * 8)
    ds.add_new(0x60004000, "LT", "drawn by Mertensson")
    # an attribute unknown to the data dictionary (even group: public), holding a name
    ds.add_new(0x02020010, "LO", "VANDERBERG")
    return ds


def _file_meta(ds: Dataset) -> None:
    meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    meta.SourceApplicationEntityTitle = "SMG_CT7"
    meta.ImplementationVersionName = "RTMCT07"
    ds.file_meta = meta


def build(name: str) -> Planted:
    """Read a pydicom test file, plant PHI, return it encoded in its own transfer syntax."""
    ds = pydicom.dcmread(os.path.join(TEST_FILES, name))
    plant(ds)
    _file_meta(ds)
    uids = tuple(
        str(ds[kw].value)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
        if kw in ds and str(ds[kw].value)
    )
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    junk = b"Sint Maartensgasthuis RTMCT07"
    data[: len(junk)] = junk  # non-zero preamble naming the site
    return Planted(name, bytes(data), uids)


#: pydicom test files covering the transfer syntaxes and IOD kinds the engine must handle.
BASE_FILES = [
    "CT_small.dcm",  # explicit VR LE, GE private tags
    "MR_small_implicit.dcm",  # implicit VR LE
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_jp2klossless.dcm",  # JPEG 2000 (encapsulated)
    "MR_small_RLE.dcm",  # RLE
    "image_dfl.dcm",  # deflated explicit VR LE
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, secondary capture
    "liver_1frame.dcm",  # segmentation (functional groups)
    "test-SR.dcm",  # comprehensive SR (content tree)
    "rtplan.dcm",  # RT plan (deep sequences)
    "rtdose.dcm",  # RT dose, implicit
    "waveform_ecg.dcm",  # waveform
    "examples_overlay.dcm",  # overlay planes
]


def all_planted() -> list[Planted]:
    """Every base file with PHI planted."""
    return [build(name) for name in BASE_FILES]
