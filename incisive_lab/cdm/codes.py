"""Code tables of the common data model (SNOMED CT, LOINC, ICD-O-3, FHIR value sets).

The concepts live in ``data/codes.json`` (with their provenance in ``data/README.md``); this
module loads them once and gives them out as :class:`Code` values by a stable key such as
``"sct:lung-cancer"`` or ``"loinc:psa"``.

Examples
--------
>>> from incisive_lab.cdm.codes import concept
>>> concept("loinc:psa").code
'2857-1'
>>> concept("sct:lung-cancer").system_uri
'http://snomed.info/sct'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType

__all__ = ["Code", "all_concepts", "concept", "hierarchy_concepts", "snomed_concept", "snomed_descendants",
           "system_uris"]


@dataclass(frozen=True)
class Code:
    """One coded concept.

    Attributes
    ----------
    system : str
        Short system name: ``SCT``, ``LOINC``, ``ICDO3``, ``UICC-TNM``, ``FHIR-GENDER`` or
        ``FHIR-CONSENT``.
    code : str
        The code in that system.
    display : str
        A human-readable display (the SNOMED CT fully specified name, the LOINC long common name).
    """

    system: str
    code: str
    display: str

    @property
    def system_uri(self) -> str:
        """The canonical URI of :attr:`system` (as used in FHIR ``Coding.system``)."""
        return system_uris()[self.system]

    def __str__(self) -> str:
        return f"{self.system} {self.code} |{self.display}|"


@cache
def _load() -> tuple[Mapping[str, str], Mapping[str, Code]]:
    text = resources.files("incisive_lab.cdm").joinpath("data/codes.json").read_text("utf-8")
    raw = json.loads(text)
    if raw.get("format") != "incisive-cdm-codes/1":
        raise ValueError("incisive_lab/cdm/data/codes.json: unknown format")
    systems = dict(raw["systems"])
    concepts: dict[str, Code] = {}
    for key, (system, code, display) in raw["concepts"].items():
        if system not in systems:
            raise ValueError(f"codes.json: concept {key!r} uses unknown system {system!r}")
        concepts[key] = Code(system, code, display)
    return MappingProxyType(systems), MappingProxyType(concepts)


def system_uris() -> Mapping[str, str]:
    """Short system name -> canonical URI."""
    return _load()[0]


def all_concepts() -> Mapping[str, Code]:
    """Every concept of the table, by key."""
    return _load()[1]


def concept(key: str) -> Code:
    """The concept stored under `key`.

    Raises
    ------
    KeyError
        If the table has no such concept.
    """
    return _load()[1][key]


@cache
def _hierarchy() -> tuple[Mapping[str, Code], Mapping[str, frozenset[str]]]:
    """``(extra concepts by key, SNOMED CT code -> itself and its descendants)``."""
    text = resources.files("incisive_lab.cdm").joinpath("data/hierarchy.json").read_text("utf-8")
    raw = json.loads(text)
    if raw.get("format") != "incisive-cdm-hierarchy/1":
        raise ValueError("incisive_lab/cdm/data/hierarchy.json: unknown format")
    extra = {key: Code(system, code, display)
             for key, (system, code, display) in raw.get("extra_concepts", {}).items()}
    known = {**all_concepts(), **extra}
    children: dict[str, set[str]] = {}
    for child_key, parent_key in raw["is_a"]:
        for key in (child_key, parent_key):
            if key not in known or known[key].system != "SCT":
                raise ValueError(f"hierarchy.json: {key!r} is not a SNOMED CT concept of the tables")
        children.setdefault(known[parent_key].code, set()).add(known[child_key].code)

    def below(code: str, path: tuple[str, ...]) -> set[str]:
        if code in path:
            raise ValueError(f"hierarchy.json: cycle through SNOMED CT {code}")
        out = {code}
        for child in children.get(code, ()):
            out |= below(child, (*path, code))
        return out

    codes = {c.code for c in known.values() if c.system == "SCT"}
    return (MappingProxyType(extra),
            MappingProxyType({code: frozenset(below(code, ())) for code in codes}))


def hierarchy_concepts() -> Mapping[str, Code]:
    """Concepts that only the hierarchy adds (query roots such as *Malignant neoplastic disease*)."""
    return _hierarchy()[0]


def snomed_concept(code: str) -> Code | None:
    """The SNOMED CT concept with id `code` in the tables or the hierarchy, else ``None``."""
    for c in (*all_concepts().values(), *hierarchy_concepts().values()):
        if c.system == "SCT" and c.code == code:
            return c
    return None


def snomed_descendants(code: str) -> frozenset[str]:
    """`code` and every SNOMED CT code of the tables that is-a `code` (SNOMED's ``<< code``).

    Only the relations of ``data/hierarchy.json`` are known (see ``data/README.md``).

    Raises
    ------
    KeyError
        If `code` is not a SNOMED CT code of the tables or the hierarchy.

    Examples
    --------
    >>> sorted(snomed_descendants("387713003"))[:2]
    ['173171007', '23968004']
    """
    return _hierarchy()[1][code]
