"""Stored objects' headers as DICOM JSON, cached by content hash.

Objects in the node store are named by the sha256 of their bytes and never change, so a
header read once stays true: the cache needs no invalidation. Each entry is the
instance's DICOM JSON (PS3.18 F.2) without Pixel Data, serialised once; WADO-RS metadata
splices it into its response and QIDO-RS reads attributes the index does not keep
(``BitsAllocated``, ``includefield`` of other attributes) from it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from incisive_lab.node.dicomweb._http import DicomwebError

__all__ = ["HeaderCache", "StoredHeader"]

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
        How many headers to keep (each a few kilobytes of JSON).
    """

    def __init__(self, objects_dir: Path, size: int = 4096) -> None:
        self._dir = objects_dir
        self._size = size
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
            self._items[sha256] = header
            self._items.move_to_end(sha256)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return header

    def _read(self, sha256: str) -> StoredHeader:
        try:
            ds = pydicom.dcmread(self.path(sha256), stop_before_pixels=True)
        except (OSError, InvalidDicomError, EOFError, ValueError) as exc:
            raise DicomwebError(404, f"object {sha256} cannot be read: {exc}") from None
        ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
        pixel_vr: str | None = None
        if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            bits = int(ds.BitsAllocated or 0)
            pixel_vr = "OB" if _is_encapsulated(ts) or bits <= 8 else "OW"
        doc = ds.to_json_dict(bulk_data_threshold=1 << 62)
        text = json.dumps(dict(sorted(doc.items())), separators=(",", ":"), ensure_ascii=False)
        return StoredHeader(text, pixel_vr)
