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
