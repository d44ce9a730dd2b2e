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

__all__ = ["Code", "all_concepts", "concept", "system_uris"]


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
