"""The profile follows PS3.15 Table E.1-1: each option's effect, conditional codes, the statement."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from incisive_lab.deid import Option, Profile, ProfileError
from incisive_lab.deid._standard import (
    confidentiality_table,
    iod_attribute_types,
    iod_for_sop_class,
    load_safe_private,
    retained_attributes,
)
from incisive_lab.deid.profile import _resolve_conditional

TABLE_SHA256 = "a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6"


def _tag(row_tag: str) -> int:
    return int(row_tag[1:5] + row_tag[6:10], 16)


def _concrete_rows():
    """Rows with a concrete tag (not repeating groups or the private row), with their int tag."""
    return [(r, _tag(r.tag)) for r in confidentiality_table().rows if "X" not in r.tag[1:10].upper() and "ODD" not in r.tag.upper()]


def test_table_is_the_copied_standard_byte_for_byte() -> None:
    raw = resources.files("incisive_lab.deid.standard").joinpath("ps315_table_e1_1.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == TABLE_SHA256
    table = confidentiality_table()
    assert len(table.rows) == 621
    assert table.lookup(0x00100010).name == "Patient's Name"
    assert table.lookup(0x60023000).tag == "(60XX,3000)"  # repeating group
    assert table.lookup(0x50100100).tag == "(50XX,XXXX)"
    assert table.private.basic == "X"


def test_iod_types_match_a_fresh_derivation_from_highdicom() -> None:
    pytest.importorskip("highdicom", reason="highdicom is in the test extra; `make test` installs it")
    from incisive_lab.deid.standard._derive_iod_types import archive_bytes, derive, read_archive

    shipped = resources.files("incisive_lab.deid.standard").joinpath("iod_attribute_types.zip").read_bytes()
    fresh = derive()
    assert read_archive(shipped) == fresh
    assert archive_bytes(fresh) == shipped  # stable bytes: regenerating changes nothing


def test_iod_types_know_the_repository_iods() -> None:
    assert iod_for_sop_class("1.2.840.10008.5.1.4.1.1.2") == "ct-image"
    assert iod_for_sop_class("1.2.840.10008.5.1.4.1.1.1.2") == "digital-mammography-x-ray-image"
    ct = iod_attribute_types("ct-image")
    assert ct[(0x00100020,)] == "2"  # Patient ID: Type 2 in the Patient module
    assert ct[(0x0020000D,)] == "1"  # Study Instance UID
    sr = iod_attribute_types("comprehensive-sr")
    assert sr[(0x00080023,)] == "1"  # Content Date is Type 1 in SR Document General


# Retain Safe Private names only the private-attributes row: see the engine tests
TABLE_OPTIONS = [o for o in Option if o.info.column and o is not Option.RETAIN_SAFE_PRIVATE]


@pytest.mark.parametrize("option", TABLE_OPTIONS)
def test_each_option_overrides_the_basic_profile_for_its_rows(option: Option) -> None:
    profile = Profile([option])
    checked = 0
    for row, tag in _concrete_rows():
        code = row.options.get(option.info.column)
        if code is None:
            continue
        decision = profile.decide(tag, "LO")
        if code == "C" and option in (Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,) and decision.act == "K":
            assert "not a date" in decision.note  # a shift of whole days leaves non-dates as they are
        else:
            assert decision.act == code, (row.tag, row.name)
        assert decision.basis == option.value
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("option", TABLE_OPTIONS)
def test_an_option_leaves_rows_it_does_not_name_on_the_basic_profile(option: Option) -> None:
    with_option, basic = Profile([option]), Profile([])
    for row, tag in _concrete_rows():
        if option.info.column not in row.options:
            assert with_option.decide(tag, "LO") == basic.decide(tag, "LO"), row.tag


def test_basic_profile_actions_match_the_table_for_unconditional_rows() -> None:
    profile = Profile([])
    for row, tag in _concrete_rows():
        if "/" not in row.basic:
            d = profile.decide(tag, "LO")
            assert (d.act, d.basis, d.code) == (row.basic, "basic", row.basic), row.tag


@pytest.mark.parametrize(
    ("code", "type_", "expected"),
    [
        ("Z/D", "1", "D"), ("Z/D", "1C", "D"), ("Z/D", "2", "Z"), ("Z/D", "3", "Z"), ("Z/D", None, "Z"),
        ("X/Z", "2", "Z"), ("X/Z", "2C", "Z"), ("X/Z", "3", "X"), ("X/Z", None, "X"), ("X/Z", "1", "D"),
        ("X/D", "1", "D"), ("X/D", "2", "Z"), ("X/D", "3", "X"), ("X/D", None, "X"),
        ("X/Z/D", "1", "D"), ("X/Z/D", "2", "Z"), ("X/Z/D", "3", "X"), ("X/Z/D", None, "X"),
        ("X/Z/U*", "1", "U"), ("X/Z/U*", "2", "Z"), ("X/Z/U*", "3", "X"), ("X/Z/U*", None, "X"),
    ],
)
def test_conditional_codes_resolve_by_type(code: str, type_: str | None, expected: str) -> None:
    assert _resolve_conditional(code, type_)[0] == expected


def test_conditional_codes_resolve_against_the_real_iod_tables() -> None:
    profile = Profile([])
    ct, sr = iod_attribute_types("ct-image"), iod_attribute_types("comprehensive-sr")
    # Content Date (Z/D): Type 2C in a CT image -> Z; Type 1 in an SR document -> D
    assert profile.decide(0x00080023, "DA", ct).act == "Z"
    assert profile.decide(0x00080023, "DA", sr).act == "D"
    # Patient ID (Z/D) is Type 2 in the Patient module
    assert profile.decide(0x00100020, "LO", ct).act == "Z"
    # Institution Name (X/Z/D) is Type 3 in General Equipment -> removed
    assert profile.decide(0x00080080, "LO", ct).act == "X"
    # unknown IOD: the most protective branch
    assert profile.decide(0x00080023, "DA", None).act == "Z"
    assert profile.decide(0x00081140, "SQ", None).act == "X"


def test_attributes_outside_the_table_fail_closed_by_vr() -> None:
    p = Profile([])
    assert p.decide(0x00080070, "LO").act == "K"  # Manufacturer: on the reviewed retained list
    assert p.decide(0x00180015, "CS").act == "K"  # Body Part Examined: coded string
    assert p.decide(0x00280010, "US").act == "K"  # Rows
    assert p.decide(0x00400275, "SQ").act == "X"  # Request Attributes Sequence: in the table
    assert p.decide(0x0040A160, "UT").act == "X"  # Text Value: free text outside the table
    assert p.decide(0x0040A160, "UT", cleaning=True).act == "C"
    assert p.decide(0x00080016, "UI").act == "K"  # SOP Class UID: a class UID
    assert p.decide(0x00081155, "UI").act == "U"  # Referenced SOP Instance UID
    assert p.decide(0x02020010, "LO").act == "X"  # not in the data dictionary
    assert p.decide(0x00080000, "UL").act == "X"  # group length
    # dates outside the table follow the temporal option
    other_date = 0x00144076  # Procedure Creation Date (DICONDE), not in the table
    assert confidentiality_table().lookup(other_date) is None
    assert Profile([]).decide(other_date, "DA").act == "X"
    assert Profile([Option.RETAIN_LONGITUDINAL_MODIFIED_DATES]).decide(other_date, "DA").act == "C"
    assert Profile([Option.RETAIN_LONGITUDINAL_FULL_DATES]).decide(other_date, "DA").act == "K"


def test_when_options_collide_the_most_protective_action_wins() -> None:
    # Date of Last Detector Calibration: Retain Device Identity says K, modified dates says C
    both = Profile([Option.RETAIN_DEVICE_IDENTITY, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES])
    assert both.decide(0x0018700C, "DA").act == "C"
    assert Profile([Option.RETAIN_DEVICE_IDENTITY]).decide(0x0018700C, "DA").act == "K"


def test_incompatible_and_unknown_options_are_refused_naming_them() -> None:
    with pytest.raises(ProfileError, match="retain-longitudinal-full-dates and retain-longitudinal-modified-dates"):
        Profile(["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"])
    with pytest.raises(ProfileError, match=r"retain-uids.*anonymize"):
        Profile(["retain-uids"], mode="anonymize")
    with pytest.raises(ProfileError, match="unknown de-identification option 'keep-everything'"):
        Profile(["keep-everything"])


def test_conformance_statement_covers_every_row_and_the_chosen_options() -> None:
    p = Profile(["retain-longitudinal-modified-dates", "clean-descriptors"], mode="pseudonymize")
    doc = p.describe()
    assert len(doc["attributes"]) == 621
    assert [c["code"] for c in doc["method_codes"]] == ["113100", "113105", "113107"]
    assert doc["longitudinal_temporal_information_modified"] == "MODIFIED"
    study_date = next(a for a in doc["attributes"] if a["tag"] == "(0008,0020)")
    assert (study_date["action"], study_date["basis"]) == ("C", "retain-longitudinal-modified-dates")
    assert study_date["meaning"] == "shifted by the patient's date offset"
    text = p.describe_text()
    assert "113107 Retain Longitudinal Temporal Information Modified Dates Option" in text
    assert "(0010,0010)" in text and "Clean Descriptors" in "".join(p.method_description())
    assert all(len(v) <= 64 for v in p.method_description())
    basic = Profile([]).describe()
    assert basic["longitudinal_temporal_information_modified"] == "REMOVED"
    assert any("quarantined (never passed through)" in r for r in basic["rules"])


def test_retained_list_and_safe_private_table_are_well_formed() -> None:
    retained = retained_attributes()
    table = confidentiality_table()
    assert not [t for t in retained if table.lookup(t) is not None], "the table wins: nothing on both"
    safe = load_safe_private()
    assert (0x0019, "GEMS_ACQU_01", 0x23) in safe
    assert all(group % 2 == 1 for group, _c, _e in safe)
