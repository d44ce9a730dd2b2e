"""The engine on PHI-planted pydicom test files: nothing leaks, structure and links survive."""

from __future__ import annotations

import copy
import datetime as dt
import io
import os
import warnings
import zlib

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from incisive_lab.deid import Engine, LeakScanner, Profile, Secret, audit
from tests.deid import phi

warnings.filterwarnings("ignore", module="pydicom")

SECRET = Secret(bytes(range(32)))
PLANTED = {p.name: p for p in phi.all_planted()}

# option sets whose output must contain none of the planted tokens
LEAK_FREE_OPTION_SETS = {
    "basic": [],
    "modified-dates": ["retain-longitudinal-modified-dates"],
    "cleaning": ["clean-descriptors", "clean-structured-content", "clean-graphics"],
    "everything-safe": [
        "retain-longitudinal-modified-dates", "retain-patient-characteristics", "retain-safe-private",
        "clean-descriptors", "clean-structured-content", "clean-graphics",
    ],
}


def engine(options: list[str] | None = None, mode: str = "pseudonymize", secret: Secret | None = None) -> Engine:
    key = secret or (Secret.generate(ephemeral=True) if mode == "anonymize" else SECRET)
    return Engine(Profile(options or [], mode=mode), key)


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def scanner_for(p: phi.Planted) -> LeakScanner:
    return LeakScanner(phi.TOKENS + list(p.original_uids), phi.DATES)


@pytest.mark.parametrize("name", phi.BASE_FILES)
def test_the_scanner_finds_the_planted_phi_in_the_sources(name: str) -> None:
    p = PLANTED[name]
    found = {f.token for f in scanner_for(p).scan_file(name, p.data)}
    # every kind of planted token is found in the source: the scanner can fail
    assert {"VANDERBERG", "MRN-77120934", "Sint Maartensgasthuis", "19580217", "Oosterhuis", "Wielewaal"} <= found


@pytest.mark.parametrize("mode", ["pseudonymize", "anonymize"])
@pytest.mark.parametrize("options", LEAK_FREE_OPTION_SETS, ids=list(LEAK_FREE_OPTION_SETS))
@pytest.mark.parametrize("name", phi.BASE_FILES)
def test_no_planted_phi_survives(name: str, options: str, mode: str) -> None:
    p = PLANTED[name]
    opts = LEAK_FREE_OPTION_SETS[options]
    result = engine(opts, mode).process(p.data)
    assert result.status == "ok", result.reason
    assert result.output is not None and result.relpath is not None
    leaks = scanner_for(p).scan_file(name, result.output, relpath=result.relpath)
    assert leaks == [], "\n".join(map(str, leaks))
    problems = audit(result.output, allowed_names=[result.patient or ""], safe_private_allowed="retain-safe-private" in opts)
    assert problems == []


def test_structure_survives_and_pixels_pass_through_untouched() -> None:
    for name in phi.BASE_FILES:
        src = read(PLANTED[name].data)
        out = read(engine().process(PLANTED[name].data).output or b"")
        assert out.SOPClassUID == src.SOPClassUID
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != src.SOPInstanceUID
        if "PixelData" in src:
            assert out.PixelData == src.PixelData, name
        for kw in ("Rows", "Columns", "BitsAllocated", "PixelSpacing", "ImagePositionPatient", "Modality", "Manufacturer"):
            if kw in src:
                assert out[kw].value == src[kw].value, (name, kw)


def test_file_meta_is_rebuilt_and_the_preamble_zeroed() -> None:
    p = PLANTED["CT_small.dcm"]
    assert p.data[:4] != b"\x00\x00\x00\x00"
    out = engine().process(p.data).output or b""
    assert out[:128] == b"\x00" * 128
    meta = read(out).file_meta
    assert "SourceApplicationEntityTitle" not in meta
    assert meta.ImplementationVersionName.startswith("INCISIVE_")
    assert meta.ImplementationClassUID.startswith("2.25.")


def test_deidentification_record_attributes() -> None:
    out = read(engine(["retain-longitudinal-modified-dates", "clean-descriptors"]).process(PLANTED["CT_small.dcm"].data).output or b"")
    assert out.PatientIdentityRemoved == "YES"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113105", "113107"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    basic = read(engine().process(PLANTED["CT_small.dcm"].data).output or b"")
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"
    full = read(engine(["retain-longitudinal-full-dates"]).process(PLANTED["CT_small.dcm"].data).output or b"")
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_conditional_codes_follow_the_iod_in_real_files() -> None:
    sr = read(engine().process(PLANTED["test-SR.dcm"].data).output or b"")
    ct = read(engine().process(PLANTED["CT_small.dcm"].data).output or b"")
    assert sr.ContentDate == "19000101"  # Z/D: Type 1 in an SR document -> dummy
    assert ct.ContentDate == ""  # Z/D: Type 2C in a CT image -> empty
    assert "InstitutionName" not in ct  # X/Z/D, Type 3 -> removed
    assert ct.PatientName == ct.PatientID and ct.PatientID.startswith("PSN-")


def _series(n: int = 3) -> list[bytes]:
    """n instances of one series; each references the previous (Source Image and Referenced Image)."""
    base = read(PLANTED["CT_small.dcm"].data)
    out = []
    prev = None
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.99.77.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        if prev is not None:
            ref = Dataset()
            ref.ReferencedSOPClassUID = base.SOPClassUID
            ref.ReferencedSOPInstanceUID = prev
            ds.SourceImageSequence = Sequence([ref])  # X/Z/U*, Type 3 in a CT image: removed
            series = Dataset()  # Referenced Series Sequence: outside the table, kept, UIDs remapped
            series.SeriesInstanceUID = base.SeriesInstanceUID
            series.ReferencedInstanceSequence = Sequence([copy.deepcopy(ref)])
            ds.ReferencedSeriesSequence = Sequence([series])
        prev = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("mode", ["pseudonymize", "anonymize"])
def test_uids_are_replaced_consistently_and_references_still_resolve(mode: str) -> None:
    eng = engine(mode=mode)
    outs = [read(eng.process(d).output or b"") for d in _series(4)]
    srcs = [read(d) for d in _series(4)]
    assert len({o.StudyInstanceUID for o in outs}) == 1 and outs[0].StudyInstanceUID != srcs[0].StudyInstanceUID
    assert len({o.SeriesInstanceUID for o in outs}) == 1
    assert len({o.FrameOfReferenceUID for o in outs}) == 1
    assert len({o.SOPInstanceUID for o in outs}) == 4
    for k in range(1, 4):
        series = outs[k].ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == outs[k - 1].SeriesInstanceUID
        assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == outs[k - 1].SOPInstanceUID
        assert series.ReferencedInstanceSequence[0].ReferencedSOPClassUID == srcs[k].SOPClassUID  # class UIDs kept
        assert "SourceImageSequence" not in outs[k]  # X/Z/U* resolved by Type 3
    kept = [read(engine(["retain-uids"]).process(d).output or b"") for d in _series(2)]
    assert kept[1].SourceImageSequence[0].ReferencedSOPInstanceUID == kept[0].SOPInstanceUID
    for o in outs:
        assert o.SOPInstanceUID.startswith("2.25.") and len(o.SOPInstanceUID) <= 64
        assert pydicom.uid.UID(o.SOPInstanceUID).is_valid


def test_pseudonyms_are_stable_for_a_secret_and_differ_between_secrets() -> None:
    data = PLANTED["MR_small_implicit.dcm"].data
    a1, a2 = engine().process(data), engine().process(data)
    b = engine(secret=Secret(bytes(range(1, 33)))).process(data)
    assert a1.output == a2.output  # byte-identical reruns
    assert a1.patient == a2.patient != b.patient
    assert read(a1.output or b"").StudyInstanceUID != read(b.output or b"").StudyInstanceUID


def test_anonymisation_is_consistent_within_a_run_and_unlinkable_between_runs() -> None:
    data = PLANTED["MR_small_implicit.dcm"].data
    run1 = engine(mode="anonymize")
    r1a, r1b = run1.process(data), run1.process(data)
    r2 = engine(mode="anonymize").process(data)
    assert r1a.patient == r1b.patient and r1a.patient.startswith("ANO-")
    assert r2.patient != r1a.patient
    assert read(r2.output or b"").SOPInstanceUID != read(r1a.output or b"").SOPInstanceUID
    assert r1a.vault == []  # nothing to reverse it with
    with pytest.raises(ValueError, match="ephemeral"):
        Engine(Profile([], mode="anonymize"), SECRET)


def _with(ds_edit, name: str = "CT_small.dcm") -> bytes:  # type: ignore[no-untyped-def]
    ds = read(PLANTED[name].data)
    ds_edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_modified_dates_shift_per_patient_and_keep_intervals() -> None:
    eng = engine(["retain-longitudinal-modified-dates"])
    def second(ds: Dataset) -> None:
        ds.StudyDate = "20200101"
        ds.AcquisitionDateTime = "20200101101010.5"
    o1 = read(eng.process(PLANTED["CT_small.dcm"].data).output or b"")
    o2 = read(eng.process(_with(second)).output or b"")
    d = lambda s: dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))  # noqa: E731
    shift = d(o1.StudyDate) - d("20190314")
    assert -3650 <= shift.days <= -400
    assert d(o2.StudyDate) - d("20200101") == shift  # same patient, same shift
    assert o2.AcquisitionDateTime.endswith("101010.5")  # time kept, date shifted
    assert d(o1.InstanceCreationDate) - d(o1.StudyDate) == d("20190302") - d("20190314")  # interval kept
    assert o1.PatientBirthDate == ""  # birth date is not a longitudinal date in the table
    other = read(eng.process(_with(lambda ds: setattr(ds, "PatientID", "MRN-00000001"))).output or b"")
    assert d(other.StudyDate) - d("20190314") != shift  # another patient, another shift (keyed)


def test_full_dates_keep_dates() -> None:
    out = read(engine(["retain-longitudinal-full-dates"]).process(PLANTED["CT_small.dcm"].data).output or b"")
    assert out.StudyDate == "20190314" and out.AcquisitionDateTime == "20190314093015"


def test_retain_options_keep_what_they_name() -> None:
    data = PLANTED["CT_small.dcm"].data
    src = read(data)
    dev = read(engine(["retain-device-identity"]).process(data).output or b"")
    assert dev.StationName == "RTMCT07"
    inst = read(engine(["retain-institution-identity"]).process(data).output or b"")
    assert inst.InstitutionName == "Sint Maartensgasthuis" and "InstitutionalDepartmentName" in inst
    chars = read(engine(["retain-patient-characteristics"]).process(data).output or b"")
    assert (chars.PatientSex, chars.PatientAge) == ("F", "061Y")
    plain = read(engine().process(data).output or b"")
    assert plain.PatientSex == "" and "PatientAge" not in plain and "StationName" not in plain
    uids = read(engine(["retain-uids"]).process(data).output or b"")
    assert uids.SOPInstanceUID == src.SOPInstanceUID and uids.StudyInstanceUID == src.StudyInstanceUID


def test_safe_private_keeps_exactly_the_listed_attributes_found_by_creator() -> None:
    def move_block(ds: Dataset) -> None:
        # put GEMS_ACQU_01 at block 0x11 instead of 0x10: it must still be found by its creator
        for tag in [e.tag for e in ds if e.tag.group == 0x0019]:
            del ds[tag]
        ds.add_new(0x00190010, "LO", "ACME PACS 2.1")
        ds.add_new(0x00191023, "DS", "99.9")  # same element byte, other creator: not safe
        ds.add_new(0x00190011, "LO", "GEMS_ACQU_01")
        ds.add_new(0x00191123, "DS", "12.5")
        ds.add_new(0x00191130, "LO", "Dagny Mertensson")
    out = read(engine(["retain-safe-private"]).process(_with(move_block)).output or b"")
    private = {(e.tag.group, e.tag.element): e.value for e in out if e.tag.is_private}
    assert private[(0x0019, 0x0011)] == "GEMS_ACQU_01" and private[(0x0019, 0x1123)] == "12.5"
    assert (0x0019, 0x1023) not in private and (0x0019, 0x0010) not in private
    assert (0x0019, 0x1130) not in private
    assert not any(g in (0x0009, 0x0011, 0x0029) for g, _ in private)
    assert read(engine().process(_with(move_block)).output or b"").get((0x0019, 0x1123)) is None


def test_clean_descriptors_keeps_imaging_words_only() -> None:
    out = read(engine(["clean-descriptors"]).process(PLANTED["CT_small.dcm"].data).output or b"")
    assert out.StudyDescription == "CT THORAX follow-up"
    assert out.SeriesDescription == "AXIAL 1.25mm for"
    assert out.ProtocolName == "lung protocol"
    assert "MRN" not in out.ImageComments and "4417" not in out.ImageComments
    basic = read(engine().process(PLANTED["CT_small.dcm"].data).output or b"")
    assert "StudyDescription" not in basic and "ProtocolName" not in basic


def test_clean_structured_content_keeps_the_tree_and_cleans_it() -> None:
    out = read(engine(["clean-structured-content"]).process(PLANTED["CT_small.dcm"].data).output or b"")
    inner = out.ContentSequence[0].ContentSequence[0]
    assert inner.ValueType == "PNAME" and inner.PersonName == "ANONYMIZED"
    assert inner.TextValue == "" and inner.Date == "19000101"  # Date (0040,A121) is D in the table
    sr = read(engine(["clean-structured-content"]).process(PLANTED["test-SR.dcm"].data).output or b"")
    assert len(sr.ContentSequence) == len(read(PLANTED["test-SR.dcm"].data).ContentSequence)


def test_overlays_go_unless_clean_graphics() -> None:
    data = PLANTED["examples_overlay.dcm"].data
    assert not [e for e in read(engine().process(data).output or b"") if e.tag.group == 0x6000]
    kept = read(engine(["clean-graphics"]).process(data).output or b"")
    assert (0x6000, 0x3000) in kept and (0x6000, 0x0022) not in kept  # description (free text) removed
    assert (0x6000, 0x4000) in kept and "Mertensson" not in str(kept[0x60004000].value)


def test_nested_private_and_unknown_public_attributes_are_removed() -> None:
    out = read(engine().process(PLANTED["rtplan.dcm"].data).output or b"")
    assert (0x0202, 0x0010) not in out
    assert "OtherPatientIDsSequence" not in out
    seen_private = []
    out.walk(lambda d, e: seen_private.append(e.tag) if e.tag.is_private else None)
    assert seen_private == []


@pytest.mark.parametrize(
    ("edit", "status", "reason"),
    [
        (lambda ds: setattr(ds, "BurnedInAnnotation", "YES"), "quarantined", "Burned In Annotation is YES"),
        (lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.104.1"), "quarantined", "Encapsulated PDF"),
        (lambda ds: delattr(ds, "PixelData"), "failed", "without Pixel Data"),
        (lambda ds: delattr(ds, "SOPInstanceUID"), "failed", "not a composite instance"),
    ],
)
def test_unsafe_or_incomplete_instances_are_held_back(edit, status: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    result = engine().process(_with(edit))
    assert (result.status, result.output) == (status, None)
    assert reason in result.reason


def test_secondary_capture_without_burned_in_attribute_is_quarantined() -> None:
    result = engine().process(_with(lambda ds: delattr(ds, "BurnedInAnnotation"), "SC_rgb_jpeg_dcmtk.dcm"))
    assert result.status == "quarantined" and "absent" in result.reason


BAD_INPUTS = {
    "empty file": b"",
    "text file": b"Patient list: Vanderberg, Eloise\n" * 10,
    "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
    "no DICM prefix": b"\x00" * 128 + b"DIXM" + b"\x00" * 100,
}


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_not_dicom_is_reported(label: str) -> None:
    result = engine().process(BAD_INPUTS[label])
    assert result.status == "failed" and "not a DICOM Part 10 file" in result.reason


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "MR_small_jp2klossless.dcm"])
def test_truncated_files_are_reported_not_written(name: str, fraction: float) -> None:
    data = PLANTED[name].data
    cut = max(140, int(len(data) * fraction))
    result = engine().process(data[:cut])
    assert result.status == "failed", (name, cut)
    assert result.output is None
    assert any(w in result.reason for w in ("truncated", "overruns", "claims", "corrupt", "missing")), result.reason


def test_corrupt_element_header_is_reported_with_its_place() -> None:
    data = bytearray(PLANTED["CT_small.dcm"].data)
    pos = data.index(b"\x10\x00\x10\x00PN")  # Patient's Name header
    data[pos + 4 : pos + 6] = b"\x01\x02"
    result = engine().process(bytes(data))
    assert result.status == "failed" and "invalid VR" in result.reason and "(0010,0010)" in result.reason


def test_missing_transfer_syntax_and_corrupt_deflate_are_reported() -> None:
    path = os.path.join(phi.TEST_FILES, "meta_missing_tsyntax.dcm")
    with open(path, "rb") as fh:
        result = engine().process(fh.read())
    assert result.status == "failed" and "Transfer Syntax" in result.reason
    data = PLANTED["image_dfl.dcm"].data
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # after (0002,0000) and its group
    broken = data[:meta_end] + zlib.compress(b"garbage")[:5] + b"\xff" * 40
    result = engine().process(broken)
    assert result.status == "failed" and ("inflated" in result.reason or "corrupt" in result.reason)


def test_dicomdir_is_skipped() -> None:
    with open(os.path.join(phi.TEST_FILES, "dicomdirtests", "DICOMDIR"), "rb") as fh:
        result = engine().process(fh.read())
    assert result.status == "skipped" and "DICOMDIR" in result.reason


def test_actions_are_recorded_per_attribute_with_their_basis() -> None:
    result = engine(["retain-safe-private"]).process(PLANTED["CT_small.dcm"].data)
    actions = {a[0]: (a[1], a[2]) for a in result.actions}
    assert actions["(0010,0010) PatientName"] == ("Z", "basic")
    assert actions["(0008,0080) InstitutionName"][0] == "X"
    assert "Type 3" in actions["(0008,0080) InstitutionName"][1]
    assert actions["(0019,xx23) GEMS_ACQU_01"] == ("K", "retain-safe-private")
    assert actions["(0009,xx02) GEMS_IDEN_01"] == ("X", "private")
    assert actions["(0012,0062) PatientIdentityRemoved"] == ("set", "de-identification record")
    nested = [a for a in result.actions if a[0].startswith("(0010,1002)>")]
    assert nested == [] or all(a[1] in "XZD" for a in nested)
