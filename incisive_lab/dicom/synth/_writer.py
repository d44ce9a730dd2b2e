"""Fast DICOM file writing with pydicom's element encoder.

A series shares most of its elements; :class:`SeriesEncoder` encodes those *static* elements once
(with :func:`pydicom.filewriter.write_data_element`) and, per instance, only the few *dynamic*
ones (UIDs, positions, pixel data), then joins all elements in tag order. The result is the same
byte stream :func:`pydicom.dcmwrite` produces for the merged dataset, at a fraction of the cost.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue

__all__ = ["Encapsulated", "MetaEncoder", "SeriesEncoder", "assemble"]

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT = "1.2.840.10008.1.2"

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                       "TM", "UC", "UT"})
_NUMERIC = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_SIMPLE_VRS = _TEXT_VRS | {"UI"} | set(_NUMERIC)
_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


class Encapsulated(bytes):
    """Encapsulated (compressed) pixel data: written with an undefined length."""


#: A dynamic element given as ``(tag, VR, value)``.
Simple = tuple[int, str, object]


def _fast(tag: int, vr: str, value: object, implicit: bool, codec: str = "ascii") -> bytes:
    """Encode an element with a plain text, numeric or byte value (no pydicom objects)."""
    undefined = False
    if vr in _TEXT_VRS:
        if isinstance(value, list | tuple | MultiValue):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        data = text.encode(codec)
        if len(data) % 2:
            data += b" "
    elif vr == "UI":
        data = str(value).encode("ascii")
        if len(data) % 2:
            data += b"\0"
    elif vr in _NUMERIC:
        values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        data = struct.pack("<" + _NUMERIC[vr] * len(values), *values)
    elif isinstance(value, bytes):
        undefined = isinstance(value, Encapsulated)
        data = bytes(value)
        if len(data) % 2:
            data += b"\0"
    else:
        raise TypeError(f"cannot fast-encode {vr} value of type {type(value).__name__}")
    group, elem = tag >> 16, tag & 0xFFFF
    length = 0xFFFFFFFF if undefined else len(data)
    if implicit:
        head = struct.pack("<HHI", group, elem, length)
    elif vr in _LONG_VRS:
        head = struct.pack("<HH2s2xI", group, elem, vr.encode("ascii"), length)
    else:
        head = struct.pack("<HH2sH", group, elem, vr.encode("ascii"), length)
    return head + data + (_DELIMITER if undefined else b"")


_CODECS = {"iso8859": "ascii", "latin_1": "latin_1", "UTF8": "utf_8"}


def _encode(elem: DataElement, implicit: bool, encodings: list[str]) -> bytes:
    codec = _CODECS.get(encodings[0]) if len(encodings) == 1 else None
    value = elem.value
    if (codec and not elem.is_empty and elem.VR in _SIMPLE_VRS
            and not isinstance(value, bytearray)):
        try:
            return _fast(int(elem.tag), elem.VR, value, implicit, codec)
        except (TypeError, UnicodeEncodeError, struct.error):
            pass
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _charset(ds: Dataset) -> list[str]:
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return ["iso8859"]
    from pydicom.charset import convert_encodings

    values = [value] if isinstance(value, str) else list(value)
    return list(convert_encodings(values))


class SeriesEncoder:
    """Encode the data set (no file meta) of every instance of one series.

    Parameters
    ----------
    static : Dataset
        Elements shared by every instance (must include ``SpecificCharacterSet`` if any text is
        not ASCII).
    transfer_syntax : str
        Transfer syntax UID of the series; implicit VR is honoured, everything else is written
        explicit VR little endian (compressed pixel data arrives encapsulated).
    """

    def __init__(self, static: Dataset, transfer_syntax: str) -> None:
        self._implicit = transfer_syntax == IMPLICIT
        self._deflate = transfer_syntax == DEFLATED
        self._encodings = _charset(static)
        self._static = {int(elem.tag): _encode(elem, self._implicit, self._encodings)
                        for elem in static}

    def encode(self, dynamic: Iterable[DataElement | Simple]) -> bytes:
        """The encoded data set of one instance: static elements plus `dynamic` ones.

        Dynamic elements are pydicom data elements (any VR) or ``(tag, VR, value)`` tuples with
        ASCII text, numbers or bytes (:class:`Encapsulated` for compressed pixel data).
        """
        parts = dict(self._static)
        for elem in dynamic:
            if isinstance(elem, tuple):
                tag, vr, value = elem
                parts[tag] = _fast(tag, vr, value, self._implicit)
            else:
                parts[int(elem.tag)] = _encode(elem, self._implicit, self._encodings)
        body = b"".join(parts[tag] for tag in sorted(parts))
        if self._deflate:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = compressor.compress(body) + compressor.flush()
        return body


class MetaEncoder:
    """Encode the file meta information group; only the SOP Instance UID varies."""

    def __init__(self, sop_class_uid: str, transfer_syntax: str, implementation_uid: str,
                 implementation_version: str, source_ae: str | None) -> None:
        meta = Dataset()
        meta.add_new(0x00020001, "OB", b"\x00\x01")
        meta.add_new(0x00020002, "UI", sop_class_uid)
        meta.add_new(0x00020010, "UI", transfer_syntax)
        meta.add_new(0x00020012, "UI", implementation_uid)
        meta.add_new(0x00020013, "SH", implementation_version)
        if source_ae:
            meta.add_new(0x00020016, "AE", source_ae)
        self._head = _encode(meta[0x00020001], False, ["iso8859"]) + _encode(
            meta[0x00020002], False, ["iso8859"])
        self._tail = b"".join(_encode(meta[t], False, ["iso8859"])
                              for t in (0x00020010, 0x00020012, 0x00020013, 0x00020016)
                              if t in meta)

    def encode(self, sop_instance_uid: str) -> bytes:
        """The whole group 0002, group length included."""
        middle = _encode(DataElement(0x00020003, "UI", sop_instance_uid), False, ["iso8859"])
        rest = self._head + middle + self._tail
        return b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(rest)) + rest


def assemble(preamble: bytes, meta: bytes, body: bytes) -> bytes:
    """Preamble (128 bytes), ``DICM``, file meta, data set."""
    if len(preamble) != 128:
        raise ValueError("the preamble must be 128 bytes")
    return preamble + b"DICM" + meta + body
