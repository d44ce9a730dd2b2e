"""The code tables: well-formed codes (check digits), known systems, all of them used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from incisive_lab.cdm.codes import all_concepts, concept, system_uris
from incisive_lab.cdm.template import COLUMNS

# Verhoeff tables (SNOMED CT identifiers end in a Verhoeff check digit)
_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
      [2, 3, 4, 0, 1, 7, 8, 9, 5, 6], [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
      [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
      [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
      [8, 7, 6, 5, 9, 3, 2, 1, 0, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
      [5, 8, 0, 3, 7, 9, 6, 1, 4, 2], [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
      [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
      [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def verhoeff_ok(number: str) -> bool:
    c = 0
    for i, digit in enumerate(reversed(number)):
        c = _D[c][_P[i % 8][int(digit)]]
    return c == 0


def loinc_ok(code: str) -> bool:
    """LOINC mod-10 check digit (Luhn-like: double every other digit from the right)."""
    body, check = code.split("-")
    digits = [int(d) for d in body]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            total += d // 10 + d % 10
        else:
            total += d
    return (10 - total % 10) % 10 == int(check)


def test_verhoeff_and_loinc_helpers_on_known_codes() -> None:
    assert verhoeff_ok("254837009") and not verhoeff_ok("254837008")
    assert loinc_ok("2857-1") and loinc_ok("21908-9") and not loinc_ok("2857-2")


@pytest.mark.parametrize("key", sorted(all_concepts()))
def test_code_is_well_formed(key: str) -> None:
    c = all_concepts()[key]
    assert c.system in system_uris()
    assert c.display
    if c.system == "SCT":
        assert re.fullmatch(r"\d{6,18}", c.code), c
        assert verhoeff_ok(c.code), f"{c}: bad Verhoeff check digit"
        assert c.code[-3:-1] in ("00", "10"), f"{c}: not a concept id (partition)"
    elif c.system == "LOINC":
        assert re.fullmatch(r"\d{1,7}-\d", c.code), c
        assert loinc_ok(c.code), f"{c}: bad LOINC check digit"
    elif c.system == "ICDO3":
        assert re.fullmatch(r"C\d\d\.\d|\d{4}/\d", c.code), c


def test_every_code_is_used() -> None:
    used = set()
    for col in COLUMNS:
        if col.concept:
            used.add(col.concept)
        for codes in (col.values or {}).values():
            used.update(codes)
    generator = {concept("sct:cranio-caudal"), concept("sct:medio-lateral-oblique"),
                 concept("sct:breast")}
    unused = [k for k, c in all_concepts().items() if c not in used | generator]
    assert not unused


def test_generator_uses_the_table_codes_for_mammography_views() -> None:
    source = Path(__file__).parents[2] / "incisive_lab" / "dicom" / "synth" / "_render.py"
    text = source.read_text()
    for key in ("sct:cranio-caudal", "sct:medio-lateral-oblique", "sct:breast"):
        assert f'"{concept(key).code}"' in text


def test_provenance_note_ships_with_the_table() -> None:
    readme = Path(__file__).parents[2] / "incisive_lab" / "cdm" / "data" / "README.md"
    assert "How each code was checked" in readme.read_text()
