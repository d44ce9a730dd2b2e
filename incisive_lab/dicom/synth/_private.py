"""Vendor-like private tags: GE-like, Siemens-like and one unknown PACS.

:data:`PRIVATE_TAGS` documents every private element the generator writes; exactly the entries
with ``safe=True`` are the ones a de-identifier may keep under the *Retain Safe Private* option.
Blocks are usually ``0x10`` (GE and unknown) or ``0x10``/``0x11`` (Siemens CSA/MED), but a fraction
of series moves them (see :func:`add_vendor_private`) so that a reader must resolve blocks by
their creator, not by fixed element numbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["PRIVATE_TAGS", "SAFE_PRIVATE_TAGS", "PrivateTag", "add_private", "csa_blob"]

GE_IDEN = "GEMS_IDEN_01"
GE_ACQU = "GEMS_ACQU_01"
GE_PARM = "GEMS_PARM_01"
SIEMENS_MR = "SIEMENS MR HEADER"
SIEMENS_CSA = "SIEMENS CSA HEADER"
SIEMENS_MED = "SIEMENS MED"
ACME = "ACME PACS 2.1"
DECOY = "GEMS_GENIE_1"


@dataclass(frozen=True)
class PrivateTag:
    """One private element: creator, group, element offset in the block, VR, meaning.

    ``safe``: may be retained by a de-identifier (it holds no identity). ``identifying``: it holds
    PHI of the patient or the site. Elements that are neither are harmless but not on the safe
    list, so a fail-closed de-identifier removes them.
    """

    creator: str
    group: int
    offset: int
    vr: str
    name: str
    safe: bool
    identifying: bool
    where: str


PRIVATE_TAGS: tuple[PrivateTag, ...] = (
    PrivateTag(GE_ACQU, 0x0019, 0x23, "DS", "Table speed [mm/rotation]", True, False, "GE CT"),
    PrivateTag(GE_ACQU, 0x0019, 0x24, "DS", "Mid scan time [s]", True, False, "GE CT"),
    PrivateTag(GE_PARM, 0x0043, 0x27, "SH", "Scan pitch ratio", True, False, "GE CT"),
    PrivateTag(GE_PARM, 0x0043, 0x39, "IS", "Slop_int_6..9 (b-value in first value)", False,
               False, "GE MR DWI"),
    PrivateTag(GE_IDEN, 0x0009, 0x02, "SH", "Suite id (station name)", False, True, "GE all"),
    PrivateTag(GE_IDEN, 0x0009, 0x04, "SH", "Product id", False, False, "GE all"),
    PrivateTag(GE_IDEN, 0x0009, 0x40, "LO", "Patient name copy (free format)", False, True,
               "GE all"),
    PrivateTag(SIEMENS_MR, 0x0019, 0x0C, "IS", "B_value", True, False, "Siemens MR DWI"),
    PrivateTag(SIEMENS_MR, 0x0019, 0x0D, "CS", "DiffusionDirectionality", True, False,
               "Siemens MR DWI"),
    PrivateTag(SIEMENS_CSA, 0x0029, 0x08, "CS", "CSA Image Header Type", False, False,
               "Siemens CT/MR"),
    PrivateTag(SIEMENS_CSA, 0x0029, 0x10, "OB", "CSA Image Header Info (embeds name and ID)",
               False, True, "Siemens CT/MR"),
    PrivateTag(SIEMENS_MED, 0x0029, 0x08, "LO", "Operator name", False, True, "Siemens all"),
    PrivateTag(ACME, 0x0011, 0x10, "PN", "Patient name", False, True, "PACS-stamped patients"),
    PrivateTag(ACME, 0x0011, 0x11, "LO", "Patient ID", False, True, "PACS-stamped patients"),
    PrivateTag(ACME, 0x0011, 0x12, "DA", "Patient birth date", False, True,
               "PACS-stamped patients"),
    PrivateTag(ACME, 0x0011, 0x13, "UI", "Original Study Instance UID", False, True,
               "PACS-stamped patients"),
    PrivateTag(ACME, 0x0011, 0x20, "LO", "Patient ID and accession (inside the Request "
               "Attributes Sequence item)", False, True, "PACS-stamped patients"),
    PrivateTag(DECOY, 0x0019, 0x23, "LO", "Patient ID (decoy at block 0x10 of group 0019, "
               "where GEMS_ACQU_01 usually sits)", False, True, "GE CT, block-shifted series"),
    PrivateTag(DECOY, 0x0019, 0x24, "LO", "Patient name (decoy)", False, True,
               "GE CT, block-shifted series"),
)

#: (creator, group, element offset) of the private elements that are safe to keep.
SAFE_PRIVATE_TAGS: frozenset[tuple[str, int, int]] = frozenset(
    (t.creator, t.group, t.offset) for t in PRIVATE_TAGS if t.safe
)


def add_private(ds: Dataset, group: int, block: int, creator: str, offset: int, vr: str,
                value: Any) -> None:
    """Add (creator if missing and) one private element at ``(group, block<<8 | offset)``."""
    creator_tag = (group << 16) | block
    if creator_tag not in ds:
        ds.add_new(creator_tag, "LO", creator)
    ds.add_new((group << 16) | (block << 8) | offset, vr, value)


def csa_blob(entries: list[tuple[str, str, list[str]]]) -> bytes:
    """A Siemens CSA2-style header (``SV10``) with the given (name, VR, values) entries."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<2I", len(entries), 77)
    for name, vr, values in entries:
        out += name.encode("ascii")[:63].ljust(64, b"\0")
        out += struct.pack("<i", len(values))
        out += vr.encode("ascii").ljust(4, b"\0")
        out += struct.pack("<3i", 0, len(values), 77)
        for value in values:
            data = value.encode("utf-8") + b"\0"
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\0" * (-len(data) % 4)
    if len(out) % 2:
        out += b"\0"
    return bytes(out)
