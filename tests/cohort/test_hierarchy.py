"""The SNOMED CT hierarchy of the code tables (cdm/data/hierarchy.json)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from incisive_lab.cdm.codes import (
    all_concepts,
    hierarchy_concepts,
    snomed_concept,
    snomed_descendants,
)
from tests.cdm.test_codes import verhoeff_ok


def _raw() -> dict:  # type: ignore[type-arg]
    text = resources.files("incisive_lab.cdm").joinpath("data/hierarchy.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def test_every_relation_links_snomed_concepts_of_the_tables() -> None:
    raw = _raw()
    known = {**all_concepts(), **hierarchy_concepts()}
    assert raw["is_a"]
    for child, parent in raw["is_a"]:
        assert known[child].system == known[parent].system == "SCT"
        assert child != parent


def test_added_concepts_have_valid_snomed_ids() -> None:
    for c in hierarchy_concepts().values():
        assert c.system == "SCT" and verhoeff_ok(c.code), c
        assert c.code not in {x.code for x in all_concepts().values()}


def test_descendants_are_transitive_and_include_self() -> None:
    root = snomed_descendants("363346000")
    assert "363346000" in root
    assert snomed_descendants("254837009") <= root          # breast cancer and its children
    assert "427685000" in root                               # transitively: HER2+ breast carcinoma
    assert snomed_descendants("363358000") == {"363358000"}  # a leaf


def test_unknown_code_has_no_descendants() -> None:
    with pytest.raises(KeyError):
        snomed_descendants("123456789")
    assert snomed_concept("123456789") is None
    assert snomed_concept("363346000") is not None
