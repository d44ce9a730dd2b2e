"""The Workbench's parts without a server: the multipart reader (fed in every chunking), the
purpose and argument checks, errors mapped to exceptions in one place (through httpx's
MockTransport seam), and the client's lists kept in step with the broker and the terms."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from incisive_lab.client import (
    PURPOSES,
    SEARCH_FACETS,
    AccessDenied,
    GatewayRefused,
    MultipartReader,
    NotFound,
    Workbench,
    WorkbenchError,
    multipart_boundary,
)
from incisive_lab.node.dicomweb.render import multipart, new_boundary


def test_the_clients_lists_match_the_broker_and_the_terms() -> None:
    from incisive_lab.federation.catalogue import FACETS
    from incisive_lab.governance.terms import PURPOSES as TERMS_PURPOSES

    assert set(SEARCH_FACETS) == set(FACETS) - {"q"}
    assert tuple(TERMS_PURPOSES) == PURPOSES


# ---------------------------------------------------------------------------- multipart

def _body(parts: list[bytes], boundary: str) -> bytes:
    return b"".join(multipart(boundary, [("application/dicom", lambda p=p: [p]) for p in parts]))


@pytest.mark.parametrize("chunk", [1, 2, 7, 33, 34, 35, 1000, 10**9])
def test_the_multipart_reader_finds_every_part_however_the_body_is_cut(chunk: int) -> None:
    boundary = new_boundary()
    rng = random.Random(chunk)
    tricky = b"\r\n--" + boundary[:-1].encode() + b"\r\n--"  # almost a delimiter, inside a part
    parts = [rng.randbytes(rng.randint(0, 300)) + tricky + rng.randbytes(50) for _ in range(4)] + [b""]
    body = _body(parts, boundary)
    reader = MultipartReader(boundary.encode())
    found = []
    for i in range(0, len(body), chunk):
        found += reader.feed(body[i:i + chunk])
    reader.close()
    assert [p for _, p in found] == parts
    assert all(h["content-type"] == "application/dicom" for h, _ in found)


def test_a_cut_off_multipart_body_is_an_error_not_fewer_parts() -> None:
    boundary = new_boundary()
    body = _body([b"one", b"two"], boundary)
    reader = MultipartReader(boundary.encode())
    got = reader.feed(body[:-10])
    assert [p for _, p in got] == [b"one"]
    with pytest.raises(WorkbenchError, match="cut off"):
        reader.close()


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    reader = MultipartReader(b"b0undary")
    body = b"preamble\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\nX\r\n--b0undary--\r\nepilogue"
    assert reader.feed(body) == [({"content-type": "application/dicom"}, b"X")]
    reader.close()


def test_the_boundary_is_read_from_the_content_type() -> None:
    assert multipart_boundary('multipart/related; type="application/dicom"; boundary=abc123') == b"abc123"
    assert multipart_boundary('Multipart/Related; boundary="a b"; type=x') == b"a b"
    with pytest.raises(WorkbenchError, match="expected a multipart/related answer, got 'application/json'"):
        multipart_boundary("application/json")
    with pytest.raises(WorkbenchError, match="names no boundary"):
        multipart_boundary("multipart/related; type=application/dicom")


# ---------------------------------------------------------------------------- arguments

@pytest.mark.parametrize(("purpose", "sentence"), [
    ("fun", "'fun' is not a purpose term"), ("", "non-empty"), ("ai-development\r\nX: y", "printable ASCII"),
    ("x" * 300, "at most 200"),
])
def test_a_bad_purpose_is_refused_before_any_request(purpose: str, sentence: str) -> None:
    with pytest.raises(ValueError, match=sentence):
        Workbench(transport=httpx.MockTransport(_never), purpose=purpose)


def test_purposes_may_carry_details_and_a_call_may_override_the_default() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-purpose", ""))
        return httpx.Response(200, json={"datasets": [], "nodes": [], "criteria": {}, "partial": False})

    wb = Workbench(transport=httpx.MockTransport(handler), purpose="AI-development; project=nodules")
    wb.count({})
    wb.count({}, purpose="cancer-research")
    assert seen == ["AI-development; project=nodules", "cancer-research"]


def test_node_names_and_uids_are_checked_before_any_request() -> None:
    wb = Workbench(transport=httpx.MockTransport(_never), purpose="ai-development")
    with pytest.raises(ValueError, match=r"node: '\.\./broker' is not a node name"):
        wb.series("../broker")
    with pytest.raises(ValueError, match=r"study_uid: '1\.2/\.\./3' is not a DICOM UID"):
        wb.fetch_series("hospital-a", "1.2/../3", "1.2.3")
    with pytest.raises(ValueError, match="series_uid: None"):
        wb.fetch_series("hospital-a", "1.2", None)
    with pytest.raises(ValueError, match="purpose: say why"):
        Workbench(transport=httpx.MockTransport(_never)).fetch_series("hospital-a", "1.2", "1.2.3")


def _never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request was expected: {request.url}")


# ---------------------------------------------------------------------------- errors

def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers={"Content-Type": "application/json", **(headers or {})})
    return handler


@pytest.mark.parametrize(("status", "body", "headers", "kind", "sentence"), [
    (403, {"error": "'x' is not a destination", "reason": "unknown-node"}, {"X-Incisive-Gateway": "refused"},
     GatewayRefused, "the gateway refused: 'x' is not a destination"),
    (403, {"error": "none of your grants allows viewing for purpose 'ai-development' (site-b: train-only)"}, {},
     AccessDenied, "site-b: train-only"),
    (403, {"error": "purpose-not-permitted", "message": "the terms of site-b do not permit 'education'"}, {},
     AccessDenied, "do not permit 'education'"),
    (401, {"error": "expired", "message": "the token has expired"}, {}, AccessDenied, "log in to the hub again"),
    (404, {"error": "not-found", "message": "no node's catalogue lists 'z'"}, {}, NotFound, "lists 'z'"),
    (403, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "you hold no grant"}]}, {}, AccessDenied,
     "you hold no grant"),
    (502, {"error": "cannot reach hospital-a: ConnectError"}, {"X-Incisive-Gateway": "failed"}, WorkbenchError,
     r"cannot reach hospital-a: ConnectError \(HTTP 502\)"),
    (500, b"Internal Server Error", {}, WorkbenchError, r"Internal Server Error \(HTTP 500\)"),
])
def test_errors_become_exceptions_with_the_sentence(status: int, body: Any, headers: dict[str, str],
                                                    kind: type[Exception], sentence: str) -> None:
    wb = Workbench(transport=httpx.MockTransport(_answer(status, body, headers)), purpose="ai-development")
    with pytest.raises(kind, match=sentence) as err:
        wb.count({})
    assert isinstance(err.value, WorkbenchError) and err.value.status == status
    if kind is GatewayRefused:
        assert err.value.reason == "unknown-node"  # type: ignore[attr-defined]


def _instance(k: int) -> bytes:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), "1.2", "1.2.3"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.InstanceNumber, ds.Rows, ds.Columns = "CT", k, 2, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, k], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.PixelData = bytes([k]) * 8
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_series_cut_off_in_transit_is_an_error() -> None:
    boundary = new_boundary()
    whole = _body([_instance(1), _instance(2)], boundary)
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"].startswith("multipart/related")
        assert request.headers["x-purpose"] == "ai-development"
        return httpx.Response(200, content=whole[: len(whole) // 2 + 40], headers={"Content-Type": ctype})

    wb = Workbench(transport=httpx.MockTransport(handler), purpose="ai-development", progress=False)
    with pytest.raises(WorkbenchError, match="cut off"):
        wb.fetch_series("hospital-a", "1.2", "1.2.3")

    def complete(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=whole, headers={"Content-Type": ctype})

    vol = Workbench(transport=httpx.MockTransport(complete), purpose="ai-development",
                    progress=False).fetch_series("hospital-a", "1.2", "1.2.3")
    assert vol.shape == (2, 2, 2) and vol.spacing == (1.0, 1.0, 1.0)

    def wrong(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[], headers={"Content-Type": "application/json"})

    with pytest.raises(WorkbenchError, match="expected a multipart/related answer"):
        Workbench(transport=httpx.MockTransport(wrong), purpose="ai-development").fetch_series("n", "1.2", "1.2.3")
