"""Per-file inspection: what the series- and patient-level checks need, and the file's own checks.

One call of :func:`inspect_file` reads one file once (its bytes, then pydicom on them) and returns
an :class:`InstanceInfo`: a small picklable record that a worker process sends back to the parent.

Pixel data policy (why it stays cheap yet catches corrupt data)
---------------------------------------------------------------
* Native (uncompressed) pixel data is *checked*, not decoded: its length must be at least
  Rows x Columns x Samples per Pixel x Number of Frames x bytes per sample (1-bit data packed).
  For native data the value is the pixel matrix itself, so a complete value is decodable; the
  only way it can fail is being short (truncated file), which this catches.
* Encapsulated (compressed) pixel data of *every* file is structurally verified: the item
  sequence parses to its delimiter, the Basic Offset Table points inside the data, the number of
  frames matches Number of Frames, and each frame's codestream starts and ends with its
  syntax's markers (JPEG/JPEG-LS/JPEG 2000 SOI/SOC ... EOI/EOC; RLE header with 1-15 segments whose
  offsets lie inside the fragment). Truncation — the common corruption of interrupted copies and
  transfers — always breaks one of these.
* In addition the first frame is *fully decoded* (pydicom with the pylibjpeg, pyjpegls and gdcm
  plug-ins) for the first encapsulated file of each (series, transfer syntax), for every file
  whose structure check failed (to confirm and report the decoder's message) and for every file
  when ``decode="all"``. Full decoding is the only way to catch bit errors inside an entropy-coded
  segment, which the structural check cannot see; the sample shows that the series' encoding
  decodes at all (unsupported syntax, wrong Bits Allocated, wrong photometric interpretation).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from incisive_lab.deid import _standard

__all__ = ["InstanceInfo", "RawFinding", "inspect_file", "iod_required_types"]

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float
_PIXEL_TAG_BYTES = b"\xe0\x7f\x10\x00"
_TAGS: dict[str, int] = {}

#: Attributes whose value splits one series into several volumes (multi-b-value DWI, multi-echo,
#: dynamic and cardiac phases): slices are stacked per distinct combination.
STACK_KEYS = ("DiffusionBValue", "DiffusionGradientOrientation", "EchoTime", "EchoNumbers",
              "InversionTime", "TemporalPositionIdentifier", "TriggerTime")

# Transfer syntaxes and the marker pairs their codestreams start and end with.
_JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
}
_J2K_FAMILY = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
               "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_RLE = "1.2.840.10008.1.2.5"


@dataclass(frozen=True)
class RawFinding:
    """A file-level finding before the parent adds the patient's label."""

    check: str
    message: str
    attribute: str | None = None


@dataclass
class InstanceInfo:
    """What one file contributes to curation (picklable; no pixel data)."""

    path: str
    size: int
    digest: str
    readable: bool = False
    skipped: bool = False
    sop_class: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    patient_id: str = ""
    accession: str = ""
    modality: str = ""
    body_part: str = ""
    region: tuple[str, str, str] | None = None
    study_date: str = ""
    series_date: str = ""
    birth_date: str = ""
    transfer_syntax: str = ""
    image_type: tuple[str, ...] = ()
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing: tuple[float, ...] | None = None
    stack_key: tuple[str, ...] = ()
    instance_number: int | None = None
    may_show_text: bool = False
    decoded: bool = False
    pixel_ok: bool = True
    findings: list[RawFinding] = field(default_factory=list)


@cache
def iod_required_types(iod: str) -> tuple[dict[int, str], dict[int, tuple[tuple[tuple[int, ...], str], ...]]]:
    """Type 1 and Type 2 attributes of the IOD's *mandatory* modules.

    Built from :mod:`incisive_lab.deid._standard`'s per-module tables (DICOM PS3.3 via highdicom,
    attributes of identifying-capable VRs: see its provenance). Only modules whose usage is M in
    the IOD count: attributes of optional (U) and conditional (C) modules are required only when
    their module is present, which the table cannot tell. Where modules overlap the strictest
    Type wins.

    Returns
    -------
    (top, nested)
        ``top``: tag -> ``"1"``/``"2"`` for top-level attributes; ``nested``: sequence tag ->
        (path inside its items, Type) for attributes required inside items of a present sequence.
    """
    doc = _standard._iod_document()
    rank = _standard._TYPE_RANK
    merged: dict[tuple[int, ...], str] = {}
    for module in doc["iod_mandatory_modules"].get(iod, ()):
        for path, kind in _standard._module_types(module):
            old = merged.get(path)
            if old is None or rank[kind] < rank[old]:
                merged[path] = kind
    top: dict[int, str] = {}
    nested: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    for path, kind in merged.items():
        if kind not in ("1", "2"):
            continue
        if len(path) == 1:
            top[path[0]] = kind
        else:
            nested.setdefault(path[0], []).append((path[1:], kind))
    return top, {k: tuple(v) for k, v in nested.items()}


def _keyword(tag: int) -> str:
    entry = _standard.dictionary_entry(tag)
    return entry[2] if entry and entry[2] else f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _value(ds: Dataset, keyword: str) -> Any:
    """The value of `keyword` in `ds`, or None; no exception raised for absent attributes."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = int(tag_for_keyword(keyword) or 0)
    if tag not in ds._dict:
        return None
    return ds[tag].value


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    value = _value(ds, keyword)
    if value is None or value == "":
        return None
    try:
        items = value if isinstance(value, pydicom.multival.MultiValue | list | tuple) else [value]
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _is_empty(ds: Dataset, tag: int) -> bool:
    elem = ds.get_item(BaseTag(tag))
    if elem is None:
        return True
    value = elem.value
    if value is None:
        return True
    if isinstance(value, bytes):
        return len(value.strip(b"\x00 ")) == 0
    if isinstance(value, str):
        return len(value.strip("\x00 ")) == 0
    if isinstance(value, pydicom.sequence.Sequence | list | tuple):
        return len(value) == 0
    return False


def _check_required(ds: Dataset, info: InstanceInfo, nested_too: bool) -> None:
    iod = _standard.iod_for_sop_class(info.sop_class)
    if iod is None:
        info.findings.append(RawFinding("sop-class-unknown", f"SOP Class {info.sop_class} is not in the "
                                        "IOD tables", "SOPClassUID"))
        return
    top, nested = iod_required_types(iod)
    present = ds._dict
    for tag, kind in top.items():
        if tag not in present:
            check = "required-type1" if kind == "1" else "required-type2"
            info.findings.append(RawFinding(check, f"Type {kind} attribute {_keyword(tag)} missing",
                                            _keyword(tag)))
        elif kind == "1" and _is_empty(ds, tag):
            info.findings.append(RawFinding("required-type1", f"Type 1 attribute {_keyword(tag)} empty",
                                            _keyword(tag)))
    if not nested_too:
        return
    for seq_tag, inner in nested.items():
        if seq_tag not in ds._dict:
            continue
        _check_items(ds, seq_tag, inner, _keyword(seq_tag), info)


def _check_items(ds: Dataset, seq_tag: int, inner: tuple[tuple[tuple[int, ...], str], ...],
                 where: str, info: InstanceInfo) -> None:
    try:
        items = ds[seq_tag].value
    except Exception:
        info.findings.append(RawFinding("required-type1", f"sequence {where} cannot be parsed", where))
        return
    if not isinstance(items, pydicom.sequence.Sequence):
        return
    for n, item in enumerate(items, 1):
        deeper: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for path, kind in inner:
            if len(path) > 1:
                deeper.setdefault(path[0], []).append((path[1:], kind))
                continue
            tag = path[0]
            name = f"{where}[{n}]>{_keyword(tag)}"
            if tag not in item:
                check = "required-type1" if kind == "1" else "required-type2"
                info.findings.append(RawFinding(check, f"Type {kind} attribute {name} missing", name))
            elif kind == "1" and _is_empty(item, tag):
                info.findings.append(RawFinding("required-type1", f"Type 1 attribute {name} empty", name))
        for sub, rest in deeper.items():
            if sub in item:
                _check_items(item, sub, tuple(rest), f"{where}[{n}]>{_keyword(sub)}", info)


def _expected_native_length(ds: Dataset) -> tuple[int | None, str | None]:
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
                           "PhotometricInterpretation") if k not in ds]
    if missing:
        return None, ", ".join(missing)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _int(ds, "NumberOfFrames") or 1
    spp, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
    if bits == 1:
        return (rows * cols * frames * spp + 7) // 8, None
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        return rows * cols * frames * 2 * (bits // 8), None
    return rows * cols * frames * spp * ((bits + 7) // 8), None


def _codestream_problem(ts: str, frame: bytes) -> str | None:
    """Why a frame's codestream is structurally broken, or None."""
    if not frame:
        return "empty frame"
    if ts in _JPEG_FAMILY or ts in _J2K_FAMILY:
        start = b"\xff\xd8" if ts in _JPEG_FAMILY else b"\xff\x4f"
        if not frame.startswith(start):
            return f"codestream does not start with marker {start.hex().upper()}"
        end = frame.rstrip(b"\x00")
        if not end.endswith(b"\xff\xd9"):
            return "codestream has no end marker FFD9 (truncated?)"
        return None
    if ts == _RLE:
        if len(frame) < 64:
            return "RLE header shorter than 64 bytes"
        segments = int.from_bytes(frame[:4], "little")
        if not 1 <= segments <= 15:
            return f"RLE header declares {segments} segments"
        offsets = [int.from_bytes(frame[4 + 4 * i:8 + 4 * i], "little") for i in range(segments)]
        if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)) \
                or offsets[-1] >= len(frame):
            return "RLE segment offsets point outside the fragment (truncated?)"
    return None


def _check_pixels(ds: Dataset, data: bytes, info: InstanceInfo, decode_now: bool) -> None:
    iod = _standard.iod_for_sop_class(info.sop_class)
    present = [t for t in _PIXEL_TAGS if t in ds]
    if not present:
        if data.rfind(_PIXEL_TAG_BYTES) > 132:
            info.findings.append(RawFinding("pixel-undecodable", "Pixel Data truncated: the file ends "
                                            "inside the element", "PixelData"))
            info.pixel_ok = False
        elif iod is not None and _standard.iod_requires_pixels(iod):
            info.findings.append(RawFinding("pixel-missing", "Pixel Data missing", "PixelData"))
            info.pixel_ok = False
        return
    if present[0] != 0x7FE00010:
        return  # float pixel data: native, no codec involved
    ts = info.transfer_syntax
    uid = pydicom.uid.UID(ts)
    problem: str | None = None
    if not uid.is_encapsulated:
        expected, missing = _expected_native_length(ds)
        if missing:
            problem = f"cannot interpret pixels: {missing} missing"
        elif expected is not None and len(ds.PixelData) < expected:
            problem = f"Pixel Data has {len(ds.PixelData)} bytes, {expected} expected (truncated)"
    else:
        problem = _check_encapsulated(ds, ts)
        if problem is not None or decode_now:
            decode_problem = _decode_first_frame(ds)
            info.decoded = True
            if decode_problem is not None:
                problem = f"{problem}; decoder: {decode_problem}" if problem else f"decoder: {decode_problem}"
    if problem is not None:
        info.pixel_ok = False
        info.findings.append(RawFinding("pixel-undecodable", f"PixelData: {problem}", "PixelData"))


def _check_encapsulated(ds: Dataset, ts: str) -> str | None:
    value = bytes(ds.PixelData)
    frames = _int(ds, "NumberOfFrames") or 1
    fragments: list[bytes] = []
    offset = 0
    while offset + 8 <= len(value):
        tag = value[offset:offset + 4]
        length = int.from_bytes(value[offset + 4:offset + 8], "little")
        if tag == b"\xfe\xff\xdd\xe0":
            break
        if tag != b"\xfe\xff\x00\xe0":
            return f"item tag expected at byte {offset}, found {tag.hex()}"
        if length == 0xFFFFFFFF or offset + 8 + length > len(value):
            return f"item at byte {offset} declares {length} bytes, {len(value) - offset - 8} left (truncated)"
        fragments.append(value[offset + 8:offset + 8 + length])
        offset += 8 + length
    else:
        if offset != len(value):
            return f"{len(value) - offset} stray bytes after the last item (truncated?)"
    if len(fragments) < 2:
        return "no fragment after the Basic Offset Table"
    bot = fragments[0]
    data_frags = fragments[1:]
    total = sum(len(f) + 8 for f in data_frags)
    if bot:
        offsets = [int.from_bytes(bot[i:i + 4], "little") for i in range(0, len(bot) - 3, 4)]
        if len(offsets) != frames:
            return f"Basic Offset Table has {len(offsets)} entries for {frames} frames"
        if any(o >= total for o in offsets):
            return "Basic Offset Table points past the end of the data (truncated?)"
    if frames == 1:
        frame_bytes = [b"".join(data_frags)]
    elif len(data_frags) == frames:
        frame_bytes = data_frags
    else:
        frame_bytes = [data_frags[0], data_frags[-1]]
    for n, frame in enumerate(frame_bytes):
        why = _codestream_problem(ts, frame)
        if why is not None:
            return f"frame {n + 1}: {why}"
    return None


def _decode_first_frame(ds: Dataset) -> str | None:
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=0)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if arr.size == 0:
        return "decoded to an empty array"
    return None


def inspect_file(root: Path, path: Path, *, decode_all: bool, sampled: set[tuple[str, str]],
                 sampled_series: set[str]) -> InstanceInfo:
    """Read one file and run the file-level checks.

    Parameters
    ----------
    root : Path
        The DICOM root (paths in the result are relative to it).
    path : Path
        The file.
    decode_all : bool
        Fully decode the first frame of every encapsulated file.
    sampled : set of (series uid, transfer syntax)
        Combinations already decoded by this process; updated.
    sampled_series : set of str
        Series whose first file this process has already checked for the attributes required
        inside sequence items (checked once per series and process: they come from one device
        template); updated.
    """
    rel = path.relative_to(root).as_posix()
    data = path.read_bytes()
    info = InstanceInfo(rel, len(data), hashlib.blake2b(data, digest_size=16).hexdigest())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            force = data[128:132] != b"DICM"
            ds = pydicom.dcmread(io.BytesIO(data), force=force)
            if "SOPInstanceUID" not in ds and data.rfind(_PIXEL_TAG_BYTES) > 132:
                # pydicom loses elements when the file ends inside encapsulated Pixel Data:
                # read the header alone; the pixel check then reports the truncation
                ds = pydicom.dcmread(io.BytesIO(data), force=force, stop_before_pixels=True)
            sop_class = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID")
    except (InvalidDicomError, Exception) as exc:
        info.findings.append(RawFinding("file-unreadable", f"not readable as DICOM: "
                                        f"{type(exc).__name__}: {str(exc)[:160]}"))
        return info
    if sop_class == _DICOMDIR_CLASS:
        info.skipped = True
        return info
    info.sop_class = sop_class
    info.sop_uid = _text(ds, "SOPInstanceUID")
    info.study_uid = _text(ds, "StudyInstanceUID")
    info.series_uid = _text(ds, "SeriesInstanceUID")
    missing = [k for k, v in (("SOPClassUID", sop_class), ("SOPInstanceUID", info.sop_uid),
                              ("StudyInstanceUID", info.study_uid),
                              ("SeriesInstanceUID", info.series_uid)) if not v]
    if missing:
        info.findings.append(RawFinding("file-unreadable", f"{', '.join(missing)} missing: the file "
                                        "cannot be placed in a series", missing[0]))
        return info
    info.readable = True
    meta = getattr(ds, "file_meta", None)
    info.transfer_syntax = _text(meta, "TransferSyntaxUID") if meta is not None else ""
    if not info.transfer_syntax:
        info.transfer_syntax = "1.2.840.10008.1.2"
    info.patient_id = _text(ds, "PatientID")
    info.accession = _text(ds, "AccessionNumber")
    info.modality = _text(ds, "Modality")
    info.body_part = _text(ds, "BodyPartExamined")
    region = _value(ds, "AnatomicRegionSequence")
    if region:
        item = region[0]
        info.region = (_text(item, "CodingSchemeDesignator"), _text(item, "CodeValue"),
                       _text(item, "CodeMeaning"))
    info.study_date = _text(ds, "StudyDate")
    info.series_date = _text(ds, "SeriesDate")
    info.birth_date = _text(ds, "PatientBirthDate")
    image_type = _value(ds, "ImageType")
    info.image_type = tuple(str(v) for v in image_type) if isinstance(
        image_type, pydicom.multival.MultiValue | list) else ((str(image_type),) if image_type else ())
    info.position = _floats(ds, "ImagePositionPatient")
    info.orientation = _floats(ds, "ImageOrientationPatient")
    info.rows = _int(ds, "Rows")
    info.columns = _int(ds, "Columns")
    info.pixel_spacing = _floats(ds, "PixelSpacing")
    info.stack_key = tuple(_text(ds, k) for k in STACK_KEYS)
    info.instance_number = _int(ds, "InstanceNumber")
    info.may_show_text = (_text(ds, "BurnedInAnnotation").upper() != "NO"
                          or info.sop_class.startswith("1.2.840.10008.5.1.4.1.1.7"))
    _check_required(ds, info, nested_too=info.series_uid not in sampled_series)
    sampled_series.add(info.series_uid)
    key = (info.series_uid, info.transfer_syntax)
    decode_now = decode_all or key not in sampled
    try:
        _check_pixels(ds, data, info, decode_now)
    except Exception as exc:
        info.pixel_ok = False
        info.findings.append(RawFinding("pixel-undecodable", f"PixelData: {type(exc).__name__}: "
                                        f"{str(exc)[:160]}", "PixelData"))
    if decode_now and pydicom.uid.UID(info.transfer_syntax).is_encapsulated:
        sampled.add(key)
    return info
