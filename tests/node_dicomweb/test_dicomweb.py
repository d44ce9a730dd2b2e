"""DICOMweb request logic on a real node built by the ingest from synthetic data.

The node is the ingest's output (synthetic PHI-laden DICOM of one site, de-identified,
stored and indexed); every test calls :class:`DicomwebService` with plain values, as the
ASGI layer will.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from incisive_lab.node.dicomweb import DicomwebError, DicomwebResponse, DicomwebService
from incisive_lab.node.store import NodeStore

BASE = "http://node.test/dicomweb"


@pytest.fixture(scope="module")
def store(small_node: Path) -> Iterator[NodeStore]:
    """One site of 6 synthetic patients ingested into a federated node (shared, read only)."""
    with NodeStore.open(small_node) as opened:
        yield opened


@pytest.fixture(scope="module")
def svc(store: NodeStore) -> DicomwebService:
    return DicomwebService(store)


def body(resp: DicomwebResponse) -> bytes:
    return resp.body if isinstance(resp.body, bytes) else b"".join(resp.body)


def items(resp: DicomwebResponse) -> list[dict[str, Any]]:
    assert resp.media_type == "application/dicom+json"
    out: list[dict[str, Any]] = json.loads(body(resp))
    return out


def value(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value", [None])[0]


def parse_multipart(resp: DicomwebResponse) -> list[tuple[dict[str, str], bytes]]:
    """A small RFC 2046 multipart parser: (headers, payload) per part."""
    m = re.search(r"boundary=([^;\s]+)", resp.media_type)
    assert m, resp.media_type
    dash = b"--" + m.group(1).encode()
    data = body(resp)
    assert data.startswith(dash) and data.endswith(dash + b"--\r\n")
    parts = []
    for chunk in data[len(dash):].split(b"\r\n" + dash)[:-1]:
        if not chunk.startswith(b"\r\n"):
            continue
        head, _, payload = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers, payload))
    return parts


@pytest.fixture(scope="module")
def studies(svc: DicomwebService) -> list[dict[str, Any]]:
    return items(svc.search_studies())


def uids(found: list[dict[str, Any]], tag: str = "0020000D") -> set[str]:
    return {value(i, tag) for i in found}


# ------------------------------------------------------------------ QIDO-RS: matching

def test_study_search_returns_required_attributes(svc: DicomwebService,
                                                  studies: list[dict[str, Any]],
                                                  store: NodeStore) -> None:
    assert len(studies) == store.counts().studies
    first = studies[0]
    for tag in ("00080005", "00080020", "00080030", "00080050", "00080056", "00080061",
                "00080090", "00081190", "00100010", "00100020", "00100030", "00100040",
                "0020000D", "00200010", "00201206", "00201208"):
        assert tag in first
    assert list(first) == sorted(first)
    assert value(first, "00081190").startswith("/studies/")
    url = items(svc.search_studies(base_url=BASE))[0]["00081190"]["Value"][0]
    assert url == f"{BASE}/studies/{value(first, '0020000D')}"
    assert sum(value(s, "00201208") for s in studies) == store.counts().instances


def test_single_value_and_keyword_or_tag(svc: DicomwebService,
                                         studies: list[dict[str, Any]]) -> None:
    pid = value(studies[0], "00100020")
    by_kw = items(svc.search_studies({"PatientID": pid}))
    by_tag = items(svc.search_studies({"00100020": pid}))
    assert by_kw == by_tag
    assert by_kw and all(value(s, "00100020") == pid for s in by_kw)
    assert uids(by_kw) == {value(s, "0020000D") for s in studies if value(s, "00100020") == pid}
    # case-sensitive, no prefix matching
    assert items(svc.search_studies({"PatientID": pid.lower()})) == []
    assert items(svc.search_studies({"PatientID": pid[:-1]})) == []


def test_wildcards(svc: DicomwebService, studies: list[dict[str, Any]]) -> None:
    pid = value(studies[0], "00100020")
    star = items(svc.search_studies({"PatientID": pid[:6] + "*"}))
    assert uids(star) == {value(s, "0020000D") for s in studies
                          if value(s, "00100020").startswith(pid[:6])}
    quest = items(svc.search_studies({"PatientID": pid[:-1] + "?"}))
    assert {value(s, "00100020") for s in quest} == {pid}
    assert uids(items(svc.search_studies({"PatientID": "*"}))) == uids(studies)
    desc = items(svc.search_studies({"StudyDescription": "*THORAX*"}))
    assert desc and all("THORAX" in value(s, "00081030") for s in desc)


def test_sql_metacharacters_are_literal(svc: DicomwebService) -> None:
    for probe in ("%", "_", "PSN-%", "PSN_*", "' OR 1=1 --", "x'; DROP TABLE studies; --",
                  "[A-Z]*", "\\"):
        try:
            found = items(svc.search_studies({"PatientID": probe}))
        except DicomwebError as exc:
            assert exc.status == 400
            continue
        assert found == [], probe
    assert items(svc.search_studies())  # the table is still there


def test_uid_lists(svc: DicomwebService, studies: list[dict[str, Any]]) -> None:
    a, b = value(studies[0], "0020000D"), value(studies[1], "0020000D")
    for sep in (",", "\\"):
        found = items(svc.search_studies({"StudyInstanceUID": f"{a}{sep}{b}"}))
        assert uids(found) == {a, b}
    assert uids(items(svc.search_studies({"StudyInstanceUID": a}))) == {a}


def test_date_and_time_ranges(svc: DicomwebService, studies: list[dict[str, Any]]) -> None:
    dates = sorted(value(s, "00080020") for s in studies)
    lo, hi = dates[1], dates[-2]
    expect = {value(s, "0020000D") for s in studies if lo <= value(s, "00080020") <= hi}
    assert uids(items(svc.search_studies({"StudyDate": f"{lo}-{hi}"}))) == expect
    assert uids(items(svc.search_studies({"StudyDate": f"-{lo}"}))) == {
        value(s, "0020000D") for s in studies if value(s, "00080020") <= lo}
    assert uids(items(svc.search_studies({"StudyDate": f"{hi}-"}))) == {
        value(s, "0020000D") for s in studies if value(s, "00080020") >= hi}
    assert uids(items(svc.search_studies({"StudyDate": dates[0]}))) == {
        value(s, "0020000D") for s in studies if value(s, "00080020") == dates[0]}
    t = value(studies[0], "00080030")
    hour = t[:2]
    found = items(svc.search_studies({"StudyTime": f"{hour}-{hour}"}))
    assert uids(found) == {value(s, "0020000D") for s in studies
                           if value(s, "00080030")[:2] == hour}


def test_series_and_instance_levels(svc: DicomwebService, studies: list[dict[str, Any]],
                                    store: NodeStore) -> None:
    study = value(studies[0], "0020000D")
    series = items(svc.search_series(study_uid=study))
    assert len(series) == value(studies[0], "00201206")
    assert "0020000D" not in series[0] and "00201209" in series[0]
    all_ct = items(svc.search_series({"Modality": "CT"}))
    assert all_ct and all(value(s, "00080060") == "CT" for s in all_ct)
    assert "0020000D" in all_ct[0]  # study attributes across all studies
    both = items(svc.search_series({"Modality": "CT,MR"}))
    assert {value(s, "00080060") for s in both} == {"CT", "MR"}
    mods = items(svc.search_studies({"ModalitiesInStudy": "MR"}))
    assert mods and all("MR" in s["00080061"]["Value"] for s in mods)
    se_uid = value(series[0], "0020000E")
    inst = items(svc.search_instances(study_uid=study, series_uid=se_uid))
    assert len(inst) == value(series[0], "00201209")
    assert all(value(i, "00280100") in (8, 16) for i in inst)
    by_number = items(svc.search_instances({"InstanceNumber": "1"}, study_uid=study))
    assert by_number and all(value(i, "00200013") == 1 for i in by_number)
    everything = items(svc.search_instances({"limit": "1000"}))
    assert len(everything) == store.counts().instances
    assert "0020000E" in everything[0] and "0020000D" in everything[0]


def test_includefield(svc: DicomwebService, studies: list[dict[str, Any]]) -> None:
    pid = value(studies[0], "00100020")
    one = items(svc.search_studies([("PatientID", pid), ("includefield", "00081030,Manufacturer"),
                                    ("includefield", "BodyPartExamined")]))[0]
    assert "00081030" in one and value(one, "00080070")
    every = items(svc.search_studies({"PatientID": pid, "includefield": "all"}))[0]
    assert "00101010" in every and "00081030" in every
    series = items(svc.search_series({"includefield": "KVP", "Modality": "CT"}))
    assert any("00180060" in s for s in series)
    with pytest.raises(DicomwebError, match="includefield 'NoSuchThing'") as exc:
        svc.search_studies({"includefield": "NoSuchThing"})
    assert exc.value.status == 400
    with pytest.raises(DicomwebError, match="private tag"):
        svc.search_studies({"includefield": "00191023"})


def test_paging(svc: DicomwebService, studies: list[dict[str, Any]]) -> None:
    n = len(studies)
    page1 = svc.search_studies({"limit": "2"})
    assert ("Warning", '299 incisive-node "There are additional results that can be '
            'requested"') in page1.headers
    pages = [items(svc.search_studies({"limit": "2", "offset": str(o)}))
             for o in range(0, n + 2, 2)]
    flat = [value(s, "0020000D") for p in pages for s in p]
    assert flat == [value(s, "0020000D") for s in studies]
    last = svc.search_studies({"limit": str(n)})
    assert not last.headers
    assert items(svc.search_studies({"offset": str(n + 10)})) == []


@pytest.mark.parametrize(("query", "needle"), [
    ({"StudyDate": "2020-13-45"}, "StudyDate"),
    ({"StudyDate": "20201345"}, "not a valid calendar date"),
    ({"StudyDate": "20200101-20190101"}, "ends before it starts"),
    ({"StudyTime": "2561"}, "StudyTime"),
    ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
    ({"StudyInstanceUID": "1." + "2" * 70}, "longer than 64"),
    ({"StudyInstanceUID": "1..2"}, "not a DICOM UID"),
    ({"limit": "5000"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-5"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"NotAnAttribute": "x"}, "NotAnAttribute"),
    ({"00191023": "x"}, "private tag"),
    ({"PatientName": "A*"}, "PatientName"),
    ({"Modality": "CT"}, "series-level attribute"),
    ({"SeriesNumber": "x"}, "SeriesNumber"),
    ({"PatientID": "x" * 65}, "longer than 64"),
    ({"PatientID": "a\\b"}, "multiple values"),
    ({"PatientID": ["a", "b"]}, "given 2 times"),
])
def test_bad_queries_are_400(svc: DicomwebService, query: dict[str, Any], needle: str) -> None:
    with pytest.raises(DicomwebError) as exc:
        svc.search_studies(query)
    assert exc.value.status == 400
    assert needle in exc.value.message


def test_fuzzymatching_is_ignored_with_a_warning(svc: DicomwebService) -> None:
    resp = svc.search_studies({"fuzzymatching": "true"})
    assert any("fuzzymatching" in v for _, v in resp.headers)


def test_accept_negotiation(svc: DicomwebService) -> None:
    assert svc.search_studies(accept="application/json").media_type == "application/json"
    assert svc.search_studies(accept="*/*").media_type == "application/dicom+json"
    with pytest.raises(DicomwebError) as exc:
        svc.search_studies(accept="application/dicom+xml")
    assert exc.value.status == 406


def test_unknown_uids_are_404(svc: DicomwebService) -> None:
    with pytest.raises(DicomwebError) as exc:
        svc.retrieve("1.2.3.4")
    assert exc.value.status == 404 and "1.2.3.4" in exc.value.message
    with pytest.raises(DicomwebError) as exc:
        svc.retrieve("1.2.x")
    assert exc.value.status == 400


# ------------------------------------------------------------------ WADO-RS

def test_retrieve_series_gives_back_the_stored_bytes(svc: DicomwebService, store: NodeStore,
                                                     studies: list[dict[str, Any]]) -> None:
    study = value(studies[0], "0020000D")
    resp = svc.retrieve(study, accept='multipart/related; type="application/dicom"; '
                                      "transfer-syntax=*")
    assert not isinstance(resp.body, bytes)  # streamed
    rows = store.index.instances(study_uid=study)
    headers = dict(resp.headers)
    parts = parse_multipart(resp)
    assert int(headers["Content-Length"]) == len(body(svc.retrieve(study)))
    assert len(parts) == len(rows)
    for (hdr, payload), row in zip(parts, rows, strict=True):
        assert hdr["Content-Type"].startswith("application/dicom")
        assert payload == store.object_path(row.sha256).read_bytes()
    assert set(resp.accessed.instances) == {r.sop_uid for r in rows}
    one = parse_multipart(svc.retrieve(study, rows[0].series_uid, rows[0].sop_uid))
    assert one[0][1] == store.object_path(rows[0].sha256).read_bytes()
    with pytest.raises(DicomwebError) as exc:
        svc.retrieve(study, accept="application/dicom+json")
    assert exc.value.status == 406


def test_metadata_has_no_pixel_data(svc: DicomwebService, store: NodeStore,
                                    studies: list[dict[str, Any]]) -> None:
    row = store.index.instances(study_uid=value(studies[0], "0020000D"))[0]
    meta = json.loads(body(svc.retrieve_metadata(row.study_uid, row.series_uid,
                                                 base_url=BASE)))
    assert len(meta) == len(store.index.instances(series_uid=row.series_uid))
    first = meta[0]
    assert "InlineBinary" not in first["7FE00010"] and "Value" not in first["7FE00010"]
    assert first["7FE00010"]["BulkDataURI"].startswith(f"{BASE}/studies/{row.study_uid}/")
    ds = pydicom.Dataset.from_json({k: v for k, v in first.items() if k != "7FE00010"})
    assert ds.SeriesInstanceUID == row.series_uid
    assert len(body(svc.retrieve_metadata(row.study_uid))) > 0


def _native_and_compressed(store: NodeStore) -> tuple[Any, Any]:
    rows = store.index.instances()
    native = next(r for r in rows if r.transfer_syntax_uid == "1.2.840.10008.1.2.1"
                  and r.rows)
    packed = next(r for r in rows if r.transfer_syntax_uid == "1.2.840.10008.1.2.4.80")
    return native, packed


def test_frames_native_and_encapsulated(svc: DicomwebService, store: NodeStore) -> None:
    native, packed = _native_and_compressed(store)
    ds = pydicom.dcmread(store.object_path(native.sha256))
    resp = svc.retrieve_frames(native.study_uid, native.series_uid, native.sop_uid, "1")
    [(hdr, frame)] = parse_multipart(resp)
    assert hdr["Content-Type"].startswith("application/octet-stream")
    assert len(frame) == ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    assert frame == ds.PixelData[:len(frame)]
    stored = svc.retrieve_frames(packed.study_uid, packed.series_uid, packed.sop_uid, "1",
                                 accept='multipart/related; type="application/octet-stream";'
                                        " transfer-syntax=*")
    [(hdr, frag)] = parse_multipart(stored)
    assert "transfer-syntax=1.2.840.10008.1.2.4.80" in hdr["Content-Type"]
    cds = pydicom.dcmread(store.object_path(packed.sha256))
    assert frag in cds.PixelData and frag[:2] == b"\xff\xd8"
    decoded = svc.retrieve_frames(packed.study_uid, packed.series_uid, packed.sop_uid, "1",
                                  accept='multipart/related; type="application/octet-stream"')
    [(_, raw)] = parse_multipart(decoded)
    assert len(raw) == cds.Rows * cds.Columns * cds.BitsAllocated // 8
    assert np.array_equal(np.frombuffer(raw, dtype=cds.pixel_array.dtype).reshape(
        cds.Rows, cds.Columns), cds.pixel_array)
    for frames, status in (("2", 404), ("0", 404), ("1,x", 400), ("", 400)):
        with pytest.raises(DicomwebError) as exc:
            svc.retrieve_frames(native.study_uid, native.series_uid, native.sop_uid, frames)
        assert exc.value.status == status, frames


def test_rendered_png_jpeg_viewport_and_window(svc: DicomwebService, store: NodeStore) -> None:
    native, packed = _native_and_compressed(store)
    args = (native.study_uid, native.series_uid, native.sop_uid)
    png = svc.retrieve_rendered(*args, query={"viewport": "64,64"})
    assert png.media_type == "image/png"
    img = Image.open(io.BytesIO(body(png)))
    assert img.format == "PNG" and max(img.size) == 64
    narrow = np.asarray(Image.open(io.BytesIO(body(svc.retrieve_rendered(
        *args, query={"window": "40,80"})))))
    wide = np.asarray(Image.open(io.BytesIO(body(svc.retrieve_rendered(
        *args, query={"window": "40,2000,linear"})))))
    assert narrow.shape == wide.shape and not np.array_equal(narrow, wide)
    jpeg = svc.retrieve_rendered(*args, 1, accept="image/jpeg")
    assert Image.open(io.BytesIO(body(jpeg))).format == "JPEG"
    compressed = svc.retrieve_rendered(packed.study_uid, packed.series_uid, packed.sop_uid)
    assert Image.open(io.BytesIO(body(compressed))).size == (packed.columns, packed.rows)
    for query, accept in (({"window": "40,-1"}, None), ({"viewport": "0,10"}, None),
                          ({"region": "0,0,1,1"}, None), ({}, "image/gif")):
        with pytest.raises(DicomwebError) as exc:
            svc.retrieve_rendered(*args, query=query, accept=accept)
        assert exc.value.status == (406 if accept else 400)


def test_monochrome1_is_inverted(svc: DicomwebService, store: NodeStore,
                                 tmp_path: Path) -> None:
    native, _ = _native_and_compressed(store)
    args = (native.study_uid, native.series_uid, native.sop_uid)
    normal = np.asarray(Image.open(io.BytesIO(body(svc.retrieve_rendered(
        *args, query={"window": "40,400"})))), dtype=int)
    from incisive_lab.node.dicomweb.rendered import RenderOptions, render_frame

    ds = pydicom.dcmread(store.object_path(native.sha256))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    inverted = np.asarray(Image.open(io.BytesIO(render_frame(
        path, 1, RenderOptions(window=(40.0, 400.0, "linear")), "image/png"))), dtype=int)
    assert np.abs(normal + inverted - 255).max() <= 1
