"""Shared helpers for the synthetic-data tests: manifests, file iteration, element walking."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

SMALL = {"patients": 8, "seed": 7, "sites": ("a", "b", "c")}


def load_truth(out: Path) -> dict[str, dict[str, Any]]:
    """Site name -> parsed ``truth/<site>.json``."""
    index = json.loads((out / "truth" / "index.json").read_text("utf-8"))
    return {site: json.loads((out / rel).read_text("utf-8")) for site, rel in index["truth"].items()}


def iter_entries(out: Path) -> Iterator[tuple[str, str, dict[str, Any], Path]]:
    """(site, relative path, manifest entry, absolute path) for every DICOM file of the set."""
    for site, truth in load_truth(out).items():
        for rel, entry in sorted(truth["files"].items()):
            yield site, rel, entry, out / site / rel


@cache
def read(path: Path) -> Dataset:
    """Read (and cache) a file of a session-scoped set; large values are read on access."""
    return pydicom.dcmread(path, defer_size="256 KB")


def walk(ds: Dataset, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], DataElement, str | None]]:
    """Every element, nested ones included, with the private creator of private elements."""
    for elem in ds:
        creator = None
        tag = elem.tag
        if tag.is_private and not tag.is_private_creator:
            ctag = Tag(tag.group, tag.element >> 8)
            if ctag in ds:
                value = ds[ctag].value
                creator = value.decode("latin-1").strip() if isinstance(value, bytes) else str(value).strip()
        yield path, elem, creator
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from walk(item, (*path, f"{elem.keyword or elem.tag}[{i}]"))


def text_of(elem: DataElement, codec: str) -> list[str]:
    """The element's value(s) as strings (bytes decoded with the file's character set)."""
    value = elem.value
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value.decode(codec, errors="replace").strip("\x00 ")]
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def codec_of(ds: Dataset) -> str:
    """Python codec of the file's Specific Character Set (UTF-8 or Latin-1)."""
    return "utf-8" if "192" in str(ds.get("SpecificCharacterSet", "")) else "latin-1"


WORD = re.compile(r"[^\W\d_]{4,}")
