"""Stored objects' headers as DICOM JSON, cached by content hash.

Objects in the node store are named by the sha256 of their bytes and never change, so a
header read once stays true: the cache needs no invalidation. Each entry is the
instance's DICOM JSON (PS3.18 F.2) without Pixel Data, serialised once; WADO-RS metadata
splices it into its response and QIDO-RS reads attributes the index does not keep
(``BitsAllocated``, ``includefield`` of other attributes) from it.

Headers are converted by :func:`header_json`, a direct reader of the usual files (explicit
VR little endian data sets, the character sets ISO_IR 6, 100 and 192, standard
attributes) that gives exactly what pydicom's ``Dataset.to_json_dict`` gives, about
ten to twenty times faster; anything else (implicit VR, big endian, deflate, other
character sets, ``UN`` elements, values pydicom would reinterpret) is read with pydicom.
The tests compare both on every file they have.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from incisive_lab.node.dicomweb._http import DicomwebError

__all__ = ["HeaderCache", "StoredHeader", "header_json"]

_ENCAPSULATED_EXCEPT = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                        "1.2.840.10008.1.2.1.99")


@dataclass(frozen=True, slots=True)
class StoredHeader:
    """One object's header: its DICOM JSON (no Pixel Data) and what pixel data it has.

    ``json_text`` is a JSON object (``{...}``) with keys in tag order; ``pixel_vr`` is the
    VR of its Pixel Data (``OB``/``OW``) or ``None`` when it has none.
    """

    json_text: str
    pixel_vr: str | None

    def attributes(self) -> dict[str, Any]:
        """The header as a DICOM JSON dictionary (a fresh copy; safe to change)."""
        parsed: dict[str, Any] = json.loads(self.json_text)
        return parsed


def _is_encapsulated(transfer_syntax: str) -> bool:
    return bool(transfer_syntax) and transfer_syntax not in _ENCAPSULATED_EXCEPT


class HeaderCache:
    """A thread-safe LRU cache of :class:`StoredHeader` by object sha256.

    Parameters
    ----------
    objects_dir
        The node's ``objects`` directory.
    size
        How many headers to keep at most (a CT or MR slice's is a few kilobytes of JSON).
    max_bytes
        How many characters of JSON to keep at most (enhanced multi-frame headers can be
        megabytes each); the least recently used go first.
    """

    def __init__(self, objects_dir: Path, size: int = 32768, max_bytes: int = 128 << 20) -> None:
        self._dir = objects_dir
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[str, StoredHeader] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        """The object file of ``sha256``."""
        return self._dir / sha256[:2] / f"{sha256}.dcm"

    def get(self, sha256: str) -> StoredHeader:
        """The header of the object ``sha256``, read and converted on first use.

        Raises
        ------
        DicomwebError
            404 when the object file is missing or unreadable (the index names an object
            the store cannot serve).
        """
        with self._lock:
            found = self._items.get(sha256)
            if found is not None:
                self._items.move_to_end(sha256)
                return found
        header = self._read(sha256)
        with self._lock:
            old = self._items.pop(sha256, None)  # read twice by two threads at once
            if old is not None:
                self._bytes -= len(old.json_text)
            self._items[sha256] = header
            self._bytes += len(header.json_text)
            while self._items and (len(self._items) > self._size or self._bytes > self._max_bytes):
                _sha, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped.json_text)
        return header

    def _read(self, sha256: str) -> StoredHeader:
        path = self.path(sha256)
        try:
            with open(path, "rb") as fh:
                data = fh.read(_HEAD)
                complete = len(data) < _HEAD
                fast = header_json(data, complete=complete)
                if fast is None and not complete:  # a long header: read it all
                    fast = header_json(data + fh.read())
        except OSError as exc:
            raise DicomwebError(404, f"object {sha256} cannot be read: {exc}") from None
        if fast is not None:
            doc, ts = fast  # in tag order already (the reader refuses any other order)
        else:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, InvalidDicomError, EOFError, ValueError) as exc:
                raise DicomwebError(404, f"object {sha256} cannot be read: {exc}") from None
            ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
            doc = dict(sorted(ds.to_json_dict(bulk_data_threshold=1 << 62).items()))
        pixel_vr: str | None = None
        if "00280010" in doc and "00280011" in doc and "00280100" in doc:
            bits = int((doc["00280100"].get("Value") or [0])[0] or 0)
            pixel_vr = "OB" if _is_encapsulated(ts) or bits <= 8 else "OW"
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        return StoredHeader(text, pixel_vr)


# --------------------------------------------------------------------------- fast reader

#: Bytes read first: enough for almost any header; more is read when it is not.
_HEAD = 1 << 16
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_EXPLICIT_LE = (_IMPLICIT_LE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                    "1.2.840.10008.1.2.8.1")
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UR", b"UT",
                       b"UV"))
_SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
                        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
_VR_NAMES = {vr: vr.decode("ascii") for vr in _LONG_VRS | _SHORT_VRS}
_BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW"))
_NUMBER_VRS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4), "FL": ("f", 4),
               "FD": ("d", 8), "SV": ("q", 8), "UV": ("Q", 8)}
_SPLIT_VRS = frozenset(("AS", "CS", "DA", "DT", "TM", "UI"))  # latin-1, rstrip, split
_TEXT_MULTI_VRS = frozenset(("SH", "LO", "UC"))   # character set, split, rstrip per value
_TEXT_SINGLE_VRS = frozenset(("ST", "LT", "UT"))  # character set, one value, rstrip
_ENCODINGS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
              "ISO_IR 192": "utf-8"}
_NUMBER = r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
_DS = re.compile(rf"{_NUMBER}(?:\\{_NUMBER})*")
_IS = re.compile(r" *[+-]?[0-9]+ *(?:\\ *[+-]?[0-9]+ *)*")
_HEADER = struct.Struct("<HH2sH")
_ITEM_HEADER = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_KEYS: dict[int, str] = {}


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < 1 << 16:
            _KEYS[tag] = key
    return key


class _Unsupported(Exception):
    """The file needs pydicom."""


def header_json(data: bytes, *, complete: bool = True) -> tuple[dict[str, Any], str] | None:
    """The DICOM JSON of a file's data set up to Pixel Data, and its transfer syntax.

    Gives what ``pydicom.dcmread(..., stop_before_pixels=True).to_json_dict(...)`` gives
    with every binary value inline, for explicit VR little endian data sets in the
    character sets ISO_IR 6, 100 or 192 (private attributes kept as their VR says); for
    anything else it returns ``None`` and the caller reads the file with pydicom.

    Parameters
    ----------
    data
        The file's bytes, or its beginning.
    complete
        Whether ``data`` is the whole file. When it is not, ``None`` is also returned when
        the data set does not reach Pixel Data within ``data`` (read more and try again).
    """
    try:
        return _header_json(data, complete)
    except (_Unsupported, struct.error, UnicodeDecodeError, ValueError, IndexError,
            OverflowError):
        return None


def _header_json(data: bytes, complete: bool) -> tuple[dict[str, Any], str]:
    if len(data) < 144 or data[128:132] != b"DICM":
        raise _Unsupported
    pos = 132
    ts = None
    end = len(data)
    while pos + 8 <= end and data[pos] == 2 and data[pos + 1] == 0:
        _group, elem, vr, length = _HEADER.unpack_from(data, pos)
        if vr in _LONG_VRS or vr == b"UN":
            length = _U32.unpack_from(data, pos + 8)[0]
            pos += 12
        else:
            pos += 8
        if length == _UNDEFINED or pos + length > end:
            raise _Unsupported
        if elem == 0x0010:
            ts = data[pos:pos + length].decode("latin-1").rstrip("\0 ")
        pos += length
    if not ts or ts in _NOT_EXPLICIT_LE:
        raise _Unsupported
    doc, stop = _Reader(data).dataset(pos, end, 0)
    if stop >= end and not complete:
        raise _Unsupported  # no Pixel Data within what was read: there may be more header
    return doc, ts


class _Reader:
    """Walks explicit VR little endian elements of ``data``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.encoding = "latin-1"

    def dataset(self, pos: int, end: int, depth: int) -> tuple[dict[str, Any], int]:
        """Elements from ``pos`` to ``end``: the data set up to Pixel Data (``depth`` 0), a
        defined-length item (``end`` its end) or an undefined-length item (``end`` the end of
        the data; it stops after its delimiter)."""
        if depth > 16:
            raise _Unsupported
        data = self.data
        size = len(data)
        unpack = _HEADER.unpack_from
        out: dict[str, Any] = {}
        last = -1
        while pos < end:
            if pos + 8 > size:
                raise _Unsupported  # the header runs past what was read
            group, elem, vr, length = unpack(data, pos)
            tag = (group << 16) | elem
            if depth == 0:
                if tag in _PIXEL_TAGS:
                    return out, pos
            elif tag == _ITEM_END:
                if end != size:
                    raise _Unsupported  # a delimiter inside a defined-length item
                return out, pos + 8
            if tag <= last or elem == 0 or group == 0x0002 or group == 0xFFFE:
                raise _Unsupported  # out of order, group length, stray delimiter
            last = tag
            if vr in _SHORT_VRS:
                pos += 8
            elif vr in _LONG_VRS:
                length = _U32.unpack_from(data, pos + 8)[0]
                pos += 12
            else:
                raise _Unsupported  # UN (pydicom may reinterpret it by the dictionary), bad VR
            name = _VR_NAMES[vr]
            if name == "SQ":
                items, pos = self.sequence(pos, length, depth)
                out[_key(tag)] = {"vr": name, "Value": items}
                continue
            if length == _UNDEFINED or pos + length > size:
                raise _Unsupported
            raw = data[pos:pos + length]
            pos += length
            if tag == 0x00080005:
                if depth:
                    raise _Unsupported  # a character set of its own inside an item
                charset = raw.decode("latin-1").rstrip("\0 ")
                if charset not in _ENCODINGS:
                    raise _Unsupported
                self.encoding = _ENCODINGS[charset]
            out[_key(tag)] = self.element(name, raw)
        if depth and end == size:
            raise _Unsupported  # an undefined-length item without its delimiter
        return out, pos

    def sequence(self, pos: int, length: int, depth: int) -> tuple[list[dict[str, Any]], int]:
        data = self.data
        items: list[dict[str, Any]] = []
        stop = None if length == _UNDEFINED else pos + length
        while True:
            if stop is not None and pos >= stop:
                if pos != stop:
                    raise _Unsupported
                return items, pos
            if pos + 8 > len(data):
                raise _Unsupported
            group, elem, item_len = _ITEM_HEADER.unpack_from(data, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == _SEQ_END and stop is None:
                return items, pos
            if tag != _ITEM:
                raise _Unsupported
            if item_len == _UNDEFINED:
                item, pos = self.dataset(pos, len(data), depth + 1)
            else:
                if pos + item_len > len(data) or (stop is not None and pos + item_len > stop):
                    raise _Unsupported
                item, pos = self.dataset(pos, pos + item_len, depth + 1)
            items.append(item)

    def element(self, vr: str, raw: bytes) -> dict[str, Any]:
        out: dict[str, Any] = {"vr": vr}
        if vr in _SPLIT_VRS:
            text = raw.decode("latin-1").rstrip(" \0")
            if text:
                out["Value"] = text.split("\\")
        elif vr == "DS":
            text = raw.decode("latin-1").rstrip(" \0")
            if text:
                if not _DS.fullmatch(text):
                    raise _Unsupported
                out["Value"] = [float(v) for v in text.split("\\")]
        elif vr == "IS":
            text = raw.decode("latin-1").rstrip(" \0")
            if text:
                if not _IS.fullmatch(text):
                    raise _Unsupported
                out["Value"] = [int(v) for v in text.split("\\")]
        elif vr in _TEXT_MULTI_VRS:
            values = [v.decode(self.encoding).rstrip("\0 ") for v in raw.split(b"\\")]
            if len(values) > 1 or values[0]:
                out["Value"] = values
        elif vr in _NUMBER_VRS:
            fmt, size = _NUMBER_VRS[vr]
            if len(raw) % size:
                raise _Unsupported
            if raw:
                out["Value"] = list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))
        elif vr == "PN":
            text = raw.rstrip(b"\0 ").decode(self.encoding)
            if "\\" in text or "=" in text:
                raise _Unsupported
            if text:
                out["Value"] = [{"Alphabetic": text}]
        elif vr in _TEXT_SINGLE_VRS:
            text = raw.decode(self.encoding).rstrip("\0 ")
            if text:
                out["Value"] = [text]
        elif vr in _BINARY_VRS:
            if raw:
                out["InlineBinary"] = base64.b64encode(raw).decode("ascii")
        elif vr == "AT":
            if len(raw) % 4:
                raise _Unsupported
            pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
            if pairs:
                out["Value"] = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
        elif vr == "AE":
            values = [v.strip() for v in raw.decode("latin-1").split("\\")]
            if len(values) > 1 or values[0]:
                out["Value"] = values
        elif vr == "UR":
            text = raw.decode("latin-1").rstrip()
            if text:
                out["Value"] = [text]
        else:
            raise _Unsupported
        return out
