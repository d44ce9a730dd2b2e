"""Frame extraction from stored objects (WADO-RS ``/frames/{list}``, PS3.18 §9.5.1.2.2).

Native pixel data: a frame is a byte range of the Pixel Data value, read from the file
with one seek (Rows * Columns * SamplesPerPixel * BitsAllocated / 8 bytes; BitsAllocated 1
frames are decoded and re-packed). Encapsulated pixel data:
the frame's fragments as stored (the compressed bitstream), or decoded to native bytes
when the client asks for ``application/octet-stream`` without ``transfer-syntax=*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_frames
from pydicom.pixels import pack_bits, pixel_array

from incisive_lab.node.dicomweb._http import DicomwebError

__all__ = ["MAX_FRAMES", "FrameSource", "compressed_media_type", "parse_frame_list"]

_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: Most frames one request may name.
MAX_FRAMES = 10_000


def compressed_media_type(transfer_syntax: str) -> str:
    """The media type of a compressed frame of ``transfer_syntax`` (PS3.18 Table 8.7.3-3)."""
    return _MEDIA.get(transfer_syntax, "application/octet-stream")


def parse_frame_list(text: str, count: int) -> list[int]:
    """Parse ``1,2,5`` into frame numbers (1-based), each within 1..``count``.

    Raises
    ------
    DicomwebError
        400 for a malformed list, 404 for a frame the instance does not have.
    """
    if not re.fullmatch(r"\d{1,9}(,\d{1,9})*", text):
        raise DicomwebError(400, f"frames: {text[:80]!r} is not a comma-separated list of "
                                 "frame numbers")
    numbers = [int(n) for n in text.split(",")]
    if len(numbers) > MAX_FRAMES:
        raise DicomwebError(413, f"frames: more than {MAX_FRAMES} frames in one request")
    for n in numbers:
        if n < 1 or n > count:
            raise DicomwebError(404, f"frames: frame {n} does not exist (the instance has "
                                     f"{count} frame{'s' if count != 1 else ''})")
    return numbers


@dataclass
class FrameSource:
    """The pixel data of one stored object, for frame access.

    Use :meth:`open` (reads the header and locates Pixel Data without loading it).
    """

    path: Path
    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int
    value_offset: int
    value_length: int

    @classmethod
    def open(cls, path: Path) -> FrameSource:
        """Locate the Pixel Data of the object at ``path``.

        Raises
        ------
        DicomwebError
            404 when the object has no pixel data.
        """
        ds = pydicom.dcmread(path, defer_size=256)
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
        if raw is None or "Rows" not in ds:
            raise DicomwebError(404, "the instance has no pixel data (no frames)")
        if isinstance(raw, RawDataElement):
            offset, length = raw.value_tell, raw.length
        else:  # a small value pydicom read eagerly
            offset, length = -1, len(raw.value or b"")
        return cls(path, str(ds.file_meta.TransferSyntaxUID), int(ds.Rows), int(ds.Columns),
                   int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated),
                   int(ds.get("NumberOfFrames", 1) or 1), offset, length)

    @property
    def encapsulated(self) -> bool:
        """Whether the pixel data is compressed (stored as fragments)."""
        return self.transfer_syntax not in _NATIVE

    @property
    def frame_bits(self) -> int:
        """The size of one native frame in bits."""
        return self.rows * self.columns * self.samples * self.bits_allocated

    def _value(self) -> bytes:
        if self.value_offset < 0:
            ds = pydicom.dcmread(self.path)
            return bytes(ds.PixelData)
        with open(self.path, "rb") as fh:
            fh.seek(self.value_offset)
            return fh.read(self.value_length)

    def native_frame(self, number: int) -> bytes:
        """Frame ``number`` (1-based) of native pixel data, as stored (little endian)."""
        bits = self.frame_bits
        if bits % 8 == 0 and self.value_offset >= 0 and self.transfer_syntax != _NATIVE[2]:
            size = bits // 8
            with open(self.path, "rb") as fh:
                fh.seek(self.value_offset + (number - 1) * size)
                data = fh.read(size)
            if len(data) != size:
                raise DicomwebError(404, f"frame {number} is cut short in the stored object")
            return data
        return self.decoded_frame(number)

    def stored_frame(self, number: int) -> bytes:
        """Frame ``number`` of encapsulated pixel data: its fragments joined, as stored."""
        for i, frame in enumerate(generate_frames(self._value(), number_of_frames=self.frames),
                                  start=1):
            if i == number:
                return frame
        raise DicomwebError(404, f"frame {number} is missing from the encapsulated pixel data")

    def decoded_frame(self, number: int) -> bytes:
        """Frame ``number`` decoded to native little-endian bytes (BitsAllocated kept)."""
        arr = pixel_array(self.path, index=number - 1, raw=True)
        if self.bits_allocated == 1:
            return pack_bits(arr)
        dtype = np.dtype(arr.dtype).newbyteorder("<")
        return np.ascontiguousarray(arr, dtype=dtype).tobytes()

