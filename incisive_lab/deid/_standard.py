"""Loaders for the standard-derived tables in ``standard/`` (see its PROVENANCE.md)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.datadict import DicomDictionary, RepeatersDictionary, tag_for_keyword

from incisive_lab.errors import IncisiveLabError

#: the tables ship inside the package (a plain folder: the package is never imported from a zip)
_DIR = Path(__file__).with_name("standard")

#: Every Value Representation of PS3.5.
ALL_VRS: tuple[str, ...] = (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
    "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
)

#: PS3.15 action codes that appear in Table E.1-1.
ACTION_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})


def _read_text(name: str) -> str:
    return (_DIR / name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class TableRow:
    """One row of PS3.15 Table E.1-1."""

    tag: str  #: as printed in the standard, e.g. "(0010,0010)" or "(60XX,3000)"
    name: str
    basic: str  #: Basic Profile action code
    options: Mapping[str, str] = field(default_factory=dict)  #: option column -> action code


@dataclass(frozen=True, slots=True)
class ConfidentialityTable:
    """Table E.1-1 indexed for lookup."""

    rows: tuple[TableRow, ...]
    by_tag: Mapping[int, TableRow]
    #: (mask, value, row) for repeating groups such as (60XX,3000) and (50XX,XXXX)
    repeating: tuple[tuple[int, int, TableRow], ...]
    private: TableRow  #: the "(GGGG,EEEE) where GGGG is odd" row

    def lookup(self, tag: int) -> TableRow | None:
        """The row for a standard (even-group) tag, or None if the table does not name it."""
        row = self.by_tag.get(tag)
        if row is not None:
            return row
        for mask, value, rep in self.repeating:
            if tag & mask == value:
                return rep
        return None


_TAG_RE = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")


@cache
def confidentiality_table() -> ConfidentialityTable:
    """Load and validate PS3.15 Table E.1-1 from the package."""
    rows_json: list[dict[str, Any]] = json.loads(_read_text("ps315_table_e1_1.json"))
    rows: list[TableRow] = []
    by_tag: dict[int, TableRow] = {}
    repeating: list[tuple[int, int, TableRow]] = []
    private: TableRow | None = None
    for i, r in enumerate(rows_json):
        basic = r["basicProfile"]
        if basic not in ACTION_CODES:
            raise IncisiveLabError(f"ps315_table_e1_1.json row {i}: unknown action code {basic!r}")
        options = {k: v for k, v in r.items() if k.endswith("Opt")}
        row = TableRow(tag=r["tag"], name=r["name"], basic=basic, options=options)
        rows.append(row)
        m = _TAG_RE.match(r["tag"].upper())
        if m is None:
            if "ODD" in r["tag"].upper():
                private = row
                continue
            raise IncisiveLabError(f"ps315_table_e1_1.json row {i}: unreadable tag {r['tag']!r}")
        text = m.group(1) + m.group(2)
        if "X" in text:
            mask = int("".join("0" if c == "X" else "F" for c in text), 16)
            value = int(text.replace("X", "0"), 16)
            repeating.append((mask, value, row))
        else:
            by_tag[int(text, 16)] = row
    if private is None:
        raise IncisiveLabError("ps315_table_e1_1.json has no row for private attributes")
    return ConfidentialityTable(tuple(rows), by_tag, tuple(repeating), private)


@dataclass(frozen=True, slots=True)
class SafePrivateAttribute:
    """One private attribute retained under the Retain Safe Private Option."""

    group: int
    creator: str
    element: int  #: the low byte of the element number
    vr: str
    name: str
    source: str


def load_safe_private(extra: Path | None = None) -> dict[tuple[int, str, int], SafePrivateAttribute]:
    """The safe private attributes: the packaged table plus an optional operator file.

    The key is ``(group, creator, low byte of element)``; creators are compared after
    stripping trailing spaces, as DICOM pads them.
    """
    sources: list[tuple[str, dict[str, Any]]] = [("package", json.loads(_read_text("safe_private.json")))]
    if extra is not None:
        try:
            sources.append((str(extra), json.loads(Path(extra).read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            raise IncisiveLabError(f"cannot read safe-private table {extra}: {exc}") from None
    table: dict[tuple[int, str, int], SafePrivateAttribute] = {}
    for source, doc in sources:
        for i, a in enumerate(doc.get("attributes", [])):
            try:
                group = int(a["group"], 16)
                element = int(a["element"], 16)
                creator = str(a["creator"]).rstrip()
                vr = str(a["vr"])
            except (KeyError, ValueError, TypeError) as exc:
                raise IncisiveLabError(
                    f"safe-private table {source}: attribute {i} is malformed ({exc}); "
                    "each needs group, creator, element (hex low byte) and vr"
                ) from None
            if group % 2 == 0 or not 0 <= element <= 0xFF:
                raise IncisiveLabError(
                    f"safe-private table {source}: attribute {i} is not a private element "
                    f"(group {a['group']}, element {a['element']})"
                )
            table[(group, creator, element)] = SafePrivateAttribute(
                group, creator, element, vr, str(a.get("name", "")), source
            )
    return table


@cache
def retained_attributes() -> frozenset[int]:
    """Tags of the reviewed non-identifying text attributes outside Table E.1-1."""
    doc = json.loads(_read_text("retained_attributes.json"))
    tags = set()
    for kw in doc["keywords"]:
        tag = tag_for_keyword(kw)
        if tag is None:
            raise IncisiveLabError(f"retained_attributes.json: unknown keyword {kw!r}")
        tags.add(tag)
    return frozenset(tags)


@cache
def descriptor_vocabulary() -> frozenset[str]:
    """Words a cleaned descriptor may keep (lower case)."""
    words = set()
    for line in _read_text("descriptor_vocabulary.txt").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words.add(line.lower())
    return frozenset(words)


# --- IOD attribute types ---------------------------------------------------------------

_TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


_IOD_ARCHIVE = "iod_attribute_types.zip"
_IOD_FORMAT = "incisive-iod-attribute-types/3"


@cache
def _iod_archive() -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO((_DIR / _IOD_ARCHIVE).read_bytes()))


@cache
def _iod_document() -> dict[str, Any]:
    """The archive's index: SOP Class -> IOD, IOD -> modules (all, and mandatory)."""
    doc: dict[str, Any] = json.loads(_iod_archive().read("index.json"))
    if doc.get("format") != _IOD_FORMAT:
        raise IncisiveLabError(f"{_IOD_ARCHIVE}: unknown format {doc.get('format')!r} (expected {_IOD_FORMAT})")
    return doc


def iod_for_sop_class(sop_class_uid: str) -> str | None:
    """The IOD name (e.g. ``ct-image``) for a SOP Class UID, or None if unknown."""
    iod: str | None = _iod_document()["sop_class_iod"].get(sop_class_uid)
    return iod


@cache
def iod_requires_pixels(iod: str) -> bool:
    """Whether the Image Pixel module is mandatory in the IOD (an image without pixels is broken)."""
    return "image-pixel" in _iod_document()["iod_mandatory_modules"].get(iod, ())


@cache
def iod_attribute_types(iod: str) -> Mapping[tuple[int, ...], str]:
    """For one IOD: path of tags (sequence tags, then the attribute) -> Type.

    Where an attribute appears in several modules the strictest Type wins (1 before 1C
    before 2 before 2C before 3), which keeps the de-identified instance conformant.
    """
    out: dict[tuple[int, ...], str] = {}
    for module in _iod_document()["iod_modules"].get(iod, ()):
        for key, kind in _module_types(module):
            old = out.get(key)
            if old is None or _TYPE_RANK[kind] < _TYPE_RANK[old]:
                out[key] = kind
    return out


@cache
def _module_types(module: str) -> tuple[tuple[tuple[int, ...], str], ...]:
    """One module's (tag path, Type) pairs, parsed once for every IOD that uses the module."""
    return tuple(
        (tuple(int(p, 16) for p in path.split(">")), kind)
        for path, kind in json.loads(_iod_archive().read(f"modules/{module}.json")).items()
    )


# --- data dictionary ---------------------------------------------------------------------


@cache
def dictionary_entry(tag: int) -> tuple[str, str, str] | None:
    """(VR, name, keyword) of a standard tag, including repeating groups; None if unknown."""
    entry = DicomDictionary.get(tag)
    if entry is None:
        text = f"{tag:08X}"
        for mask_text, rep in RepeatersDictionary.items():
            if all(m == "x" or m.upper() == t for m, t in zip(mask_text, text, strict=True)):
                entry = rep
                break
    if entry is None:
        return None
    vr = entry[0].split(" or ")[0]
    return vr, entry[2], entry[4]


def preload_tables() -> None:
    """Load every table now (e.g. in a parent process before it forks workers)."""
    confidentiality_table()
    retained_attributes()
    descriptor_vocabulary()
    doc = _iod_document()
    for iod in ("ct-image", "mr-image", "digital-mammography-x-ray-image", "secondary-capture-image"):
        if iod in doc["iod_modules"]:
            iod_attribute_types(iod)
