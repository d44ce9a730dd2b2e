"""The leak scanner's matching rules for all-digit tokens (dates, numeric IDs)."""

from __future__ import annotations

from incisive_lab.deid import LeakScanner


def test_a_date_inside_a_longer_number_is_not_that_date() -> None:
    s = LeakScanner(["77120934"], dates=["20190301"])
    random_uid = "2.25.11833920190301774125690033311457120934"
    assert s.scan_text("f", random_uid, "(0008,0018) SOPInstanceUID") == []
    assert s.scan_bytes("f", random_uid.encode()) == []


def test_delimited_and_datetime_renderings_are_still_found() -> None:
    s = LeakScanner(["77120934"], dates=["20190301"])
    for text in ("20190301", "1.2.840.20190301.4", "20190301093015", "seen 20190301, MRN 77120934",
                 "01.03.2019", "x\\20190301", "MRN77120934"):
        assert s.scan_text("f", text, "v"), text
    # raw bytes: a value after its binary length field, or after a superscript digit byte
    assert s.scan_bytes("f", b"DA\x08\x0020190301")
    assert s.scan_bytes("f", b"\xb220190301")


def test_a_single_name_inside_a_longer_word_is_not_a_leak_but_at_any_word_edge_it_is() -> None:
    # found by the demo: the given name "Rosa" inside the LOINC display "Microsatellite"
    s = LeakScanner(["Rosa", "Giordani^Rosa"])
    assert s.scan_text("f", "Microsatellite instability", "text") == []
    for text in ("ROSA", "x Rosa y", "Giordani^Rosa", "rosa,", "RosaGiordani", "GiordaniRosa", "(Rosa)"):
        assert [f.token for f in s.scan_text("f", text, "text")][-1:] in (["Rosa"], ["Giordani^Rosa"]), text
    assert [f.token for f in s.scan_bytes("f", b"\x00ROSA\x00")] == ["Rosa"]


def test_an_id_inside_a_random_code_is_not_a_leak_but_standing_alone_it_is() -> None:
    # found by CI: the MRN "E25804" inside the sha256 hex name of a stored object (the
    # object's name is a hash of its de-identified bytes, which hold random UIDs)
    s = LeakScanner(["E25804", "Rosa"])
    digest = "9c0e258041f3" + "ab" * 26
    assert s.scan_text("f", digest, "path") == []
    assert s.scan_text("f", "PSN-7ROSA2KQ", "(0010,0020) PatientID") == []
    for text in ("E25804", "MRN:E25804", "e25804.dcm", "id E25804\\x", "AE25804", "E25804B"):
        assert [f.token for f in s.scan_text("f", text, "v")] == ["E25804"], text
