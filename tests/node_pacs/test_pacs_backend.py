"""The node's DICOMweb on two back-ends: the ingest's file store and Orthanc over DICOMweb.

One site of synthetic data is ingested into a node; the node's de-identified objects are
uploaded to a real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``, started on loopback
by :mod:`tests._support.orthanc`). The same searches and retrievals then run against
:class:`DicomwebService` (file store) and :class:`PacsBackend` (Orthanc), and must agree:
same UIDs, same instances, same ``accessed`` for the ledger, same 400s.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from incisive_lab.node.dicomweb import DicomwebError, DicomwebResponse, DicomwebService
from incisive_lab.node.dicomweb.backend import DicomwebBackend
from incisive_lab.node.dicomweb.pacs import PacsBackend
from incisive_lab.node.index import InstanceRow
from incisive_lab.node.store import NodeStore
from tests._support.orthanc import OrthancServer, start_orthanc

BASE = "http://node.test/dicomweb"
BACKENDS = ("file-store", "pacs")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@pytest.fixture(scope="module")
def store(small_node: Path) -> Iterator[NodeStore]:
    """One site of 6 synthetic patients ingested into a federated node (shared, read only)."""
    with NodeStore.open(small_node) as opened:
        yield opened


@pytest.fixture(scope="module")
def orthanc(store: NodeStore) -> Iterator[OrthancServer]:
    """A real Orthanc holding every object of the node (uploaded over its REST API)."""
    server = start_orthanc()
    try:
        rows = store.index.instances()
        assert server.upload(store.object_path(r.sha256) for r in rows) == len(rows)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def backends(store: NodeStore, orthanc: OrthancServer) -> Iterator[dict[str, DicomwebBackend]]:
    pacs = PacsBackend(orthanc.dicomweb_url)
    yield {"file-store": DicomwebService(store), "pacs": pacs}
    pacs.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, backends: dict[str, DicomwebBackend]) -> DicomwebBackend:
    return backends[request.param]


@dataclass(frozen=True)
class Facts:
    """What the node holds, read from its index (the oracle for both back-ends)."""

    rows: list[InstanceRow]
    studies: list[dict[str, Any]]
    series: list[dict[str, Any]]

    def instances_of(self, study: str, series: str | None = None,
                     sop: str | None = None) -> list[InstanceRow]:
        return [r for r in self.rows if r.study_uid == study
                and series in (None, r.series_uid) and sop in (None, r.sop_uid)]


@pytest.fixture(scope="module")
def facts(store: NodeStore) -> Facts:
    svc = DicomwebService(store)
    return Facts(store.index.instances(), items(svc.search_studies([])),
                 items(svc.search_series([])))


# --------------------------------------------------------------------------- helpers

def body(resp: DicomwebResponse) -> bytes:
    return resp.body if isinstance(resp.body, bytes) else b"".join(resp.body)


def items(resp: DicomwebResponse) -> list[dict[str, Any]]:
    assert resp.status == 200 and resp.media_type == "application/dicom+json"
    out: list[dict[str, Any]] = json.loads(body(resp))
    return out


def value(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value", [None])[0]


def uids(found: list[dict[str, Any]], tag: str) -> list[str]:
    return [value(i, tag) for i in found]


def parse_multipart(resp: DicomwebResponse) -> list[tuple[dict[str, str], bytes]]:
    """A small RFC 2046 multipart parser: (headers, payload) per part."""
    m = re.search(r'boundary="?([^;\s"]+)"?', resp.media_type)
    assert m, resp.media_type
    dash = b"--" + m.group(1).encode()
    data = body(resp)
    parts = []
    for chunk in data.split(dash)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = {k.lower(): v for k, v in
                   (line.split(": ", 1) for line in head.decode().split("\r\n") if line)}
        parts.append((headers, payload[:-2] if payload.endswith(b"\r\n") else payload))
    return parts


def accessed_sets(resp: DicomwebResponse) -> tuple[set[str], set[str], set[str]]:
    a = resp.accessed
    return set(a.studies), set(a.series), set(a.instances)


# --------------------------------------------------------------------------- contract

def test_both_back_ends_satisfy_the_interface(backends: dict[str, DicomwebBackend]) -> None:
    for b in backends.values():
        assert isinstance(b, DicomwebBackend)


# --------------------------------------------------------------------------- QIDO-RS

def _queries(f: Facts) -> list[tuple[str, list[tuple[str, str]], dict[str, str]]]:
    """(level, query, scope) triples built from the node's own values."""
    st0, st1 = f.studies[0], f.studies[1]
    pid = value(st0, "00100020")
    dates = sorted(value(s, "00080020") for s in f.studies)
    ct = next(s for s in f.series if value(s, "00080060") == "CT")
    desc_space = next(value(s, "0008103E") for s in f.series if " " in value(s, "0008103E"))
    sop_a, sop_b = f.rows[0].sop_uid, f.rows[-1].sop_uid
    two = f"{value(st0, '0020000D')},{value(st1, '0020000D')}"
    return [
        ("study", [], {}),
        ("study", [("PatientID", pid)], {}),
        ("study", [("PatientID", pid[:5] + "*")], {}),
        ("study", [("PatientID", pid[:-1] + "?")], {}),
        ("study", [("00100020", pid)], {}),
        ("study", [("StudyInstanceUID", two)], {}),
        ("study", [("StudyInstanceUID", two.replace(",", "\\"))], {}),
        ("study", [("StudyDate", f"{dates[1]}-{dates[-2]}")], {}),
        ("study", [("StudyDate", f"-{dates[2]}")], {}),
        ("study", [("StudyDate", f"{dates[3]}-")], {}),
        ("study", [("StudyDate", dates[0])], {}),
        ("study", [("ModalitiesInStudy", "CT")], {}),
        ("study", [("ModalitiesInStudy", "CT,MR")], {}),
        ("study", [("AccessionNumber", value(st0, "00080050"))], {}),
        ("study", [("PatientID", "nobody")], {}),
        ("series", [], {}),
        ("series", [("Modality", "CT")], {}),
        ("series", [("Modality", "MR\\MG")], {}),
        ("series", [("SeriesDescription", desc_space)], {}),
        ("series", [("SeriesDescription", desc_space.split()[0] + "*")], {}),
        ("series", [("SeriesNumber", "1")], {}),
        ("series", [("StudyDate", f"{dates[0]}-{dates[3]}")], {}),
        ("series", [], {"study_uid": value(st0, "0020000D")}),
        ("instance", [], {"study_uid": value(ct, "0020000D")}),
        ("instance", [], {"study_uid": value(ct, "0020000D"),
                          "series_uid": value(ct, "0020000E")}),
        ("instance", [("SOPInstanceUID", f"{sop_a},{sop_b}")], {}),
        ("instance", [("SOPClassUID", CT_IMAGE), ("PatientID", value(ct, "00100020"))], {}),
        ("instance", [("InstanceNumber", "1")], {"study_uid": value(ct, "0020000D")}),
    ]


_TAG = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}


def _search(b: DicomwebBackend, level: str, query: list[tuple[str, str]],
            scope: dict[str, str]) -> DicomwebResponse:
    if level == "study":
        return b.search_studies(query, base_url=BASE)
    if level == "series":
        return b.search_series(query, base_url=BASE, **scope)
    return b.search_instances(query, base_url=BASE, **scope)


@pytest.mark.parametrize("n", range(28))
def test_searches_find_the_same_uids(n: int, facts: Facts,
                                     backends: dict[str, DicomwebBackend]) -> None:
    level, query, scope = _queries(facts)[n]
    got = {name: _search(b, level, query, scope) for name, b in backends.items()}
    found = {name: sorted(uids(items(r), _TAG[level])) for name, r in got.items()}
    assert found["pacs"] == found["file-store"], (level, query, scope)
    if query != [("PatientID", "nobody")]:
        assert found["pacs"], (level, query, scope)
    assert accessed_sets(got["pacs"]) == accessed_sets(got["file-store"])


def test_query_count_matches_the_parametrisation(facts: Facts) -> None:
    assert len(_queries(facts)) == 28


def test_accessed_names_what_a_search_discloses(backend: DicomwebBackend) -> None:
    r = backend.search_instances([("Modality", "CT")], base_url=BASE)
    found = items(r)
    assert set(r.accessed.instances) == set(uids(found, "00080018"))
    assert set(r.accessed.series) == set(uids(found, "0020000E"))
    assert set(r.accessed.studies) == set(uids(found, "0020000D"))


def test_retrieve_urls_point_at_the_node(backend: DicomwebBackend) -> None:
    for item in items(backend.search_series([("Modality", "CT")], base_url=BASE)):
        url = value(item, "00081190")
        assert url == (f"{BASE}/studies/{value(item, '0020000D')}/series/"
                       f"{value(item, '0020000E')}")


def test_limit_and_offset_page_through_every_match(backend: DicomwebBackend, facts: Facts) -> None:
    everything = set(uids(items(backend.search_series([], base_url=BASE)), "0020000E"))
    assert len(everything) == len(facts.series) > 5
    seen: list[str] = []
    offset = 0
    while True:
        r = backend.search_series([("limit", "5"), ("offset", str(offset))], base_url=BASE)
        page = uids(items(r), "0020000E")
        more = any(h == ("Warning", h[1]) and "additional results" in h[1] for h in r.headers)
        assert len(page) <= 5
        assert more == (offset + len(page) < len(everything))
        seen += page
        if not more:
            break
        offset += 5
    assert sorted(seen) == sorted(everything)


def test_fuzzymatching_is_literal_with_the_warning(backend: DicomwebBackend) -> None:
    r = backend.search_studies([("fuzzymatching", "true")], base_url=BASE)
    assert any("fuzzymatching" in v for k, v in r.headers if k == "Warning")


BAD_QUERIES: list[tuple[str, list[tuple[str, str]]]] = [
    ("study", [("StudyDate", "20201301")]),
    ("study", [("StudyDate", "2020-01-01")]),
    ("study", [("StudyDate", "20201231-20200101")]),
    ("study", [("StudyInstanceUID", "1.2.abc")]),
    ("study", [("StudyInstanceUID", "1." + "2" * 70)]),
    ("study", [("limit", "100000")]),
    ("study", [("limit", "-1")]),
    ("study", [("offset", "x")]),
    ("study", [("PatientID", "' OR 1=1 --" + "x" * 60)]),
    ("study", [("PatientName", "DOE*")]),
    ("study", [("00191010", "x")]),
    ("study", [("Modality", "CT")]),
    ("study", [("NoSuchKeyword", "x")]),
    ("study", [("PatientID", "a"), ("00100020", "b")]),
    ("study", [("PatientID", "a\x00b")]),
    ("study", [("fuzzymatching", "maybe")]),
    ("series", [("SOPInstanceUID", "1.2.3")]),
    ("instance", [("InstanceNumber", "one")]),
]


@pytest.mark.parametrize(("level", "query"), BAD_QUERIES)
def test_malformed_queries_give_the_same_400(level: str, query: list[tuple[str, str]],
                                             backends: dict[str, DicomwebBackend]) -> None:
    messages = {}
    for name, b in backends.items():
        with pytest.raises(DicomwebError) as exc:
            _search(b, level, query, {})
        assert exc.value.status == 400, (name, exc.value)
        messages[name] = exc.value.message
    assert messages["pacs"] == messages["file-store"]


def test_malformed_path_uids_and_accept_are_refused_alike(
        backends: dict[str, DicomwebBackend]) -> None:
    for b in backends.values():
        with pytest.raises(DicomwebError) as exc:
            b.retrieve("1.2.x")
        assert exc.value.status == 400
        with pytest.raises(DicomwebError) as exc:
            b.search_studies([], accept="application/dicom+xml")
        assert exc.value.status == 406


# --------------------------------------------------------------------------- WADO-RS

def _targets(f: Facts) -> list[tuple[str, str | None, str | None]]:
    row = next(r for r in f.rows if r.sop_class_uid == CT_IMAGE)
    return [(row.study_uid, None, None), (row.study_uid, row.series_uid, None),
            (row.study_uid, row.series_uid, row.sop_uid)]


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_returns_the_stored_instances(backend: DicomwebBackend, facts: Facts,
                                               store: NodeStore, level: str) -> None:
    study, series, sop = _targets(facts)[["study", "series", "instance"].index(level)]
    expected = facts.instances_of(study, series, sop)
    r = backend.retrieve(study, series, sop,
                         accept='multipart/related; type="application/dicom"; transfer-syntax=*')
    assert r.status == 200
    assert r.media_type.startswith("multipart/related")
    parts = parse_multipart(r)
    assert len(parts) == len(expected)
    got = {}
    for headers, payload in parts:
        assert headers["content-type"].startswith("application/dicom")
        ds = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True)
        got[str(ds.SOPInstanceUID)] = hashlib.sha256(payload).hexdigest()
    assert got == {row.sop_uid: row.sha256 for row in expected}   # byte-identical objects
    assert set(r.accessed.instances) == {row.sop_uid for row in expected}
    assert set(r.accessed.series) == {row.series_uid for row in expected}
    assert r.accessed.studies == (study,)


def test_retrieve_accessed_is_the_same_on_both(facts: Facts,
                                               backends: dict[str, DicomwebBackend]) -> None:
    study, series, _ = _targets(facts)[1]
    got = {}
    for name, b in backends.items():
        r = b.retrieve(study, series)
        body(r)
        got[name] = accessed_sets(r)
    assert got["pacs"] == got["file-store"]


def test_unknown_uids_are_404(backend: DicomwebBackend, facts: Facts) -> None:
    row = next(r for r in facts.rows if r.sop_class_uid == CT_IMAGE)
    study, series, sop = row.study_uid, row.series_uid, row.sop_uid
    other_series = next(r.series_uid for r in facts.rows if r.study_uid != study)
    for call in (lambda: backend.retrieve("1.2.3.4"),
                 lambda: backend.retrieve(study, "1.2.3.4"),
                 lambda: backend.retrieve(study, other_series),
                 lambda: backend.retrieve_metadata("1.2.3.4"),
                 lambda: backend.retrieve_frames(study, series, "1.2.3.4", "1"),
                 lambda: backend.retrieve_frames(study, series, sop, "2"),
                 lambda: backend.retrieve_rendered(study, series, "1.2.3.4")):
        with pytest.raises(DicomwebError) as exc:
            call()
        assert exc.value.status == 404


def test_metadata_lists_every_instance_with_frames_uris(backend: DicomwebBackend,
                                                        facts: Facts) -> None:
    study, series, _ = _targets(facts)[1]
    expected = facts.instances_of(study, series)
    r = backend.retrieve_metadata(study, series, base_url=BASE)
    found = items(r)
    assert sorted(uids(found, "00080018")) == sorted(row.sop_uid for row in expected)
    for item in found:
        assert value(item, "0020000E") == series
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri == (f"{BASE}/studies/{study}/series/{series}/instances/"
                       f"{value(item, '00080018')}/frames/1")
        assert value(item, "00280010") and value(item, "00280011")
    assert set(r.accessed.instances) == {row.sop_uid for row in expected}


def test_frames_are_the_stored_pixels(backend: DicomwebBackend, facts: Facts,
                                      store: NodeStore) -> None:
    row = next(r for r in facts.rows if r.transfer_syntax_uid == NATIVE[0]
               and r.sop_class_uid == CT_IMAGE)
    r = backend.retrieve_frames(row.study_uid, row.series_uid, row.sop_uid, "1",
                                accept='multipart/related; type="application/octet-stream"')
    parts = parse_multipart(r)
    assert len(parts) == 1
    ds = pydicom.dcmread(store.object_path(row.sha256))
    assert parts[0][1] == ds.PixelData
    assert r.accessed.instances == (row.sop_uid,)


@pytest.mark.parametrize("media", ["image/png", "image/jpeg"])
def test_rendered_images_decode(backend: DicomwebBackend, facts: Facts, media: str) -> None:
    row = next(r for r in facts.rows if r.sop_class_uid == CT_IMAGE)
    r = backend.retrieve_rendered(row.study_uid, row.series_uid, row.sop_uid, None,
                                  [("window", "40,400")], accept=media)
    assert r.media_type == media
    image = Image.open(io.BytesIO(body(r)))
    assert image.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[media]
    assert image.size == (row.columns, row.rows)
    assert np.asarray(image).std() > 0
    assert r.accessed.instances == (row.sop_uid,)
    with pytest.raises(DicomwebError) as exc:
        backend.retrieve_rendered(row.study_uid, row.series_uid, row.sop_uid, None,
                                  [("annotation", "patient")], accept=media)
    assert exc.value.status == 400


# --------------------------------------------------------------------------- failures

def test_pacs_down_is_502(facts: Facts) -> None:
    server = start_orthanc()
    url = server.dicomweb_url
    server.stop()
    row = next(r for r in facts.rows if r.sop_class_uid == CT_IMAGE)
    study, series, sop = row.study_uid, row.series_uid, row.sop_uid
    with PacsBackend(url, timeout=5) as pacs:
        for call in (lambda: pacs.search_studies([]),
                     lambda: pacs.retrieve(study),
                     lambda: pacs.retrieve_metadata(study, series),
                     lambda: pacs.retrieve_frames(study, series, sop, "1"),
                     lambda: pacs.retrieve_rendered(study, series, sop)):
            with pytest.raises(DicomwebError) as exc:
                call()
            assert exc.value.status == 502
            assert url in exc.value.message and "cannot be reached" in exc.value.message


def test_bad_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        PacsBackend("ftp://pacs/dicom-web")


def test_orthanc_answers_loopback_only(orthanc: OrthancServer) -> None:
    config = json.loads((orthanc.root / "config.json").read_text())
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is False
    assert Path(config["Plugins"][0]).name.startswith("libOrthancDicomWeb")


# --------------------------------------------------------------------------- read scope

@pytest.mark.parametrize("max_scope_list", [100, 1], ids=["uid-list", "filtered-pages"])
@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_a_read_scope_limits_pacs_searches_like_the_file_store(store: NodeStore, orthanc: OrthancServer,
                                                               level: str, max_scope_list: int) -> None:
    """Both ways the PACS back-end applies a scope (a StudyInstanceUID list, or filtering the
    PACS's pages here) give the file store's answer, page by page."""
    from incisive_lab.governance.scope import ReadScope

    studies = store.index.studies()
    patients = sorted({s.patient_id for s in studies})
    dataset = studies[0].dataset
    scope = ReadScope("ai-development", {dataset: frozenset(patients[:2])})
    allowed = frozenset(s.study_uid for s in studies if s.patient_id in patients[:2])
    files = DicomwebService(store)
    with PacsBackend(orthanc.dicomweb_url, scope_studies=lambda _s: allowed, max_scope_list=max_scope_list,
                     max_limit=4) as pacs:
        search = {"study": "search_studies", "series": "search_series", "instance": "search_instances"}[level]
        tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
        whole = uids(items(getattr(files, search)([], scope=scope)), tag)
        assert whole and set(uids(items(getattr(files, search)([], scope=scope)), "0020000D")) <= allowed
        for offset in range(0, len(whole) + 1, 3):
            page = [("limit", "3"), ("offset", str(offset))]
            want = uids(items(getattr(files, search)(page, scope=scope)), tag)
            got = getattr(pacs, search)(page, scope=scope)
            if level == "study":  # the same order on both (date, time, UID); below, the PACS's own
                assert sorted(uids(items(got), tag)) == sorted(want), (offset, want)
            assert set(uids(items(got), "0020000D")) <= allowed
        # the union of the PACS's pages is the scope's matches, nothing more
        seen: list[str] = []
        offset = 0
        while True:
            got = items(getattr(pacs, search)([("limit", "3"), ("offset", str(offset))], scope=scope))
            seen += uids(got, tag)
            if len(got) < 3:
                break
            offset += 3
        assert sorted(seen) == sorted(whole)
        # a scope with nothing in it asks the PACS nothing and finds nothing
        empty = PacsBackend(orthanc.dicomweb_url, scope_studies=lambda _s: frozenset())
        assert items(empty.search_studies([], scope=scope)) == []
        empty.close()


def test_a_connection_the_pacs_dropped_is_retried_once_then_reported() -> None:
    """Orthanc may close a kept-alive connection just as it is reused: one retry, then a 502."""
    calls = []

    def dropping(times: int) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request.url.path)
            if len(calls) <= times:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
            return httpx.Response(200, json=[], headers={"content-type": "application/dicom+json"})
        return httpx.MockTransport(handler)

    with PacsBackend("http://pacs.test/dicom-web", transport=dropping(1)) as pacs:
        assert items(pacs.search_studies([])) == [] and len(calls) == 2
    calls.clear()
    with PacsBackend("http://pacs.test/dicom-web", transport=dropping(2)) as pacs:
        with pytest.raises(DicomwebError) as err:
            pacs.search_studies([])
        assert err.value.status == 502 and "cannot be reached" in err.value.message and len(calls) == 2
