"""The code tables match the standard as shipped in pydicom (PS3.16 CID 4031 and CID 29)."""

from __future__ import annotations

from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts

from incisive_lab.curation.bodypart import (
    body_part_code,
    body_part_table,
    modality_code,
    modality_table,
)


def test_body_part_codes_are_cid_4031_concepts() -> None:
    cid4031 = {code: meaning for kw in cid_concepts[4031]["SCT"] for code, (meaning, _) in concepts["SCT"][kw].items()}
    assert len(body_part_table()) >= 90
    for term, concept in body_part_table().items():
        assert concept.scheme == "SCT" and cid4031[concept.code] == concept.meaning, term


def test_every_cid_29_modality_is_mapped() -> None:
    for kw in cid_concepts[29]["DCM"]:
        ((code, (meaning, _)),) = concepts["DCM"][kw].items()
        assert modality_table()[code].meaning == meaning


def test_lookup_is_tolerant_of_case_and_spaces() -> None:
    assert body_part_code(" breast ") == body_part_code("BREAST")
    assert modality_code("mg") is not None and modality_code("XX") is None
    assert body_part_code("PROSTATE") is not None and body_part_code("PROSTATE").system_uri == "http://snomed.info/sct"  # type: ignore[union-attr]
