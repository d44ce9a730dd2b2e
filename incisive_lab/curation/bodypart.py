"""Modality and body part normalised to codes.

* Body Part Examined (0018,0015), a CS defined term of DICOM PS3.16 Annex L (Table L-1), to the
  SNOMED CT concept of CID 4031 *Common Anatomic Region* it corresponds to;
* Modality (0008,0060) to its DICOM (``DCM``) code of CID 29 *Acquisition Modality* (or CID 33
  *Modality* for the non-acquisition modalities such as ``OT``, ``SR``, ``SEG``).

The tables are data (``data/codes.json``) with their provenance in the file and in
``data/README.md``.

Examples
--------
>>> from incisive_lab.curation.bodypart import body_part_code, modality_code
>>> body_part_code("CHEST")
CodedConcept(scheme='SCT', code='816094009', meaning='Chest')
>>> modality_code("MR").meaning
'Magnetic Resonance'
>>> body_part_code("ELBOWS") is None
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

__all__ = ["SCHEME_URIS", "CodedConcept", "body_part_code", "body_part_table", "modality_code",
           "modality_table"]

#: Canonical URIs of the coding schemes used here (FHIR ``Coding.system``).
SCHEME_URIS: Mapping[str, str] = MappingProxyType({
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
})

_FORMAT = "incisive-curation-codes/1"


@dataclass(frozen=True)
class CodedConcept:
    """A code with its coding scheme designator and meaning (a DICOM *Code Sequence* item).

    Attributes
    ----------
    scheme : str
        Coding Scheme Designator: ``SCT`` or ``DCM``.
    code : str
        Code Value.
    meaning : str
        Code Meaning.
    """

    scheme: str
    code: str
    meaning: str

    @property
    def system_uri(self) -> str:
        """The scheme's canonical URI (FHIR ``Coding.system``)."""
        return SCHEME_URIS[self.scheme]

    def to_json(self) -> dict[str, str]:
        """The concept as a JSON object."""
        return {"scheme": self.scheme, "code": self.code, "meaning": self.meaning}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CodedConcept:
        """Inverse of :meth:`to_json`."""
        return cls(str(obj["scheme"]), str(obj["code"]), str(obj["meaning"]))


@cache
def _tables() -> tuple[Mapping[str, CodedConcept], Mapping[str, CodedConcept]]:
    text = resources.files("incisive_lab.curation").joinpath("data/codes.json").read_text("utf-8")
    raw = json.loads(text)
    if raw.get("format") != _FORMAT:
        raise ValueError(f"incisive_lab/curation/data/codes.json: unknown format {raw.get('format')!r}")
    body = {term: CodedConcept("SCT", code, meaning) for term, (code, meaning) in raw["body_part"].items()}
    mods = {term: CodedConcept("DCM", term, meaning) for term, (meaning, _cid) in raw["modality"].items()}
    return MappingProxyType(body), MappingProxyType(mods)


def body_part_table() -> Mapping[str, CodedConcept]:
    """Body Part Examined defined term -> SNOMED CT concept (PS3.16 Table L-1)."""
    return _tables()[0]


def modality_table() -> Mapping[str, CodedConcept]:
    """Modality defined term -> DCM concept (CID 29, then CID 33)."""
    return _tables()[1]


def _normalise(value: str) -> str:
    return value.strip().upper()


def body_part_code(value: str) -> CodedConcept | None:
    """The SNOMED CT concept for a Body Part Examined value, or ``None`` if not a defined term.

    Surrounding spaces and letter case are ignored (CS values are upper case by definition, but
    some devices write ``Chest``).
    """
    return body_part_table().get(_normalise(value))


def modality_code(value: str) -> CodedConcept | None:
    """The DICOM code for a Modality value, or ``None`` if it is not in CID 29 or CID 33."""
    return modality_table().get(_normalise(value))
