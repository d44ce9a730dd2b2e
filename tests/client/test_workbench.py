"""Workbench through a real gateway to a real broker and real nodes (see conftest.py): who
am I, catalogue search, federated counts (suppressed and partial), access requests, a
permitted series fetched as a volume equal to the node's stored instances, a train-only
dataset's pixels refused at the node, a destination outside the gateway refused — each
ledgered where it should be, and the user's token never in what the kernel receives."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from incisive_lab.client import (
    AccessDenied,
    GatewayRefused,
    GatewayUnavailable,
    NotFound,
    Series,
    Workbench,
    WorkbenchError,
)
from incisive_lab.node.store import NodeStore
from tests.client.conftest import PURPOSE, Lab
from tests.client.support import gateway_events, ledger_size


def _series_at(node_dir: Path, dataset: str, modality: str = "CT") -> tuple[str, str, int]:
    """(study, series, instances) of the largest ``modality`` series of ``dataset`` at a node."""
    with NodeStore.open(node_dir) as store:
        rows = [s for s in store.index.series() if s.dataset == dataset and s.modality == modality]
    best = max(rows, key=lambda s: s.number_of_instances)
    return best.study_uid, best.series_uid, best.number_of_instances


def _stored(node_dir: Path, series_uid: str) -> list[pydicom.Dataset]:
    with NodeStore.open(node_dir) as store:
        return [pydicom.dcmread(store.object_path(r.sha256)) for r in store.index.instances(series_uid=series_uid)]


# ---------------------------------------------------------------------------- the door

def test_whoami_names_the_user_and_the_destinations(lab: Lab) -> None:
    with lab.workbench() as wb:
        me = wb.whoami()
    assert (me.user, me.broker, me.nodes) == ("researcher", True, ("hospital-a", "hospital-b"))


def test_without_a_gateway_the_workbench_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INCISIVE_GATEWAY", raising=False)
    with pytest.raises(GatewayUnavailable, match="INCISIVE_GATEWAY is not set"):
        Workbench()
    monkeypatch.setenv("INCISIVE_GATEWAY", str(tmp_path / "gone.sock"))
    with pytest.raises(GatewayUnavailable, match=r"gone\.sock: the socket does not exist"):
        Workbench()
    # a socket file nobody listens on: the first call says it cannot reach the gateway
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "s"))
    stale.close()
    with Workbench(tmp_path / "s") as wb, pytest.raises(GatewayUnavailable, match="cannot reach the gateway"):
        wb.whoami()


def test_the_environment_variable_is_the_default_socket(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCISIVE_GATEWAY", lab.socket)
    with Workbench(purpose=PURPOSE, progress=False) as wb:
        assert wb.whoami().user == "researcher"
        assert wb.socket == lab.socket and "ai-development" in repr(wb)


# ---------------------------------------------------------------------------- the catalogue

def test_search_the_federated_catalogue(lab: Lab) -> None:
    with lab.workbench(purpose=PURPOSE) as wb:
        found = wb.datasets()
        assert sorted(found.refs()) == ["hospital-a/site-a", "hospital-b/site-b"]
        assert found.total == 2 and found.partial, "hospital-x never answers: the catalogue says partial"
        a = next(d for d in found if d.node == "hospital-a")
        assert (a.identifier, a.visibility, a.hosting) == ("site-a", "visible", "federated")
        assert set(a.purposes) == {"ai-development", "cancer-research"}
        assert "CT" in a.modalities and a.patients == 4 and a.instances and a.cancer_types
        assert [d.ref for d in wb.search(visibility="train-only")] == ["hospital-b/site-b"]
        assert [d.ref for d in wb.datasets(purpose="cancer-research")] == ["hospital-a/site-a"]
        assert [d.ref for d in wb.datasets(node=["hospital-a", "hospital-b"], min_patients=4)] == sorted(
            found.refs())
        assert wb.datasets("no-such-words-anywhere").total == 0
        assert repr(found) == "DatasetList(2 of 2: hospital-a/site-a, hospital-b/site-b; partial)"
        table = found._repr_html_()
        assert "hospital-a/site-a" in table and "train-only" in table and "hospital-x" in table
        with pytest.raises(TypeError, match="unknown facet 'colour'"):
            wb.datasets(colour="blue")
        with pytest.raises(WorkbenchError, match=r"catalogue search: country: 'Atlantis'") as bad:
            wb.datasets(country="Atlantis")
        assert bad.value.status == 400


# ---------------------------------------------------------------------------- counts

def test_a_federated_count_shows_suppressed_counts_and_flags_the_missing_node(lab: Lab) -> None:
    with lab.workbench() as wb:
        with pytest.raises(ValueError, match="purpose"):
            wb.count({})
        before = ledger_size(lab.ledger_dir)
        answer = wb.count({}, purpose=PURPOSE)
    by_ref = {d.ref: d for d in answer.datasets}
    assert set(by_ref) == {"hospital-a/site-a", "hospital-b/site-b"}
    a, b = by_ref["hospital-a/site-a"], by_ref["hospital-b/site-b"]
    assert isinstance(a.count, int) and a.count >= 3 and a.shown == str(a.count) and not a.suppressed
    assert b.count is None and b.suppressed and b.shown == "<10", "4 patients under a floor of 10"
    assert answer.total == a.count and answer.suppressed == (b,)
    assert answer.partial and [(n.node, n.status) for n in answer.missing] == [("hospital-x", "error")]
    assert repr(answer) == (f"CohortCount(total shown {a.count}; hospital-a/site-a: {a.count}, "
                            "hospital-b/site-b: <10; partial: hospital-x error)")
    html = answer._repr_html_()
    assert "&lt;10" in html and "PARTIAL" in html and "hospital-x" in html
    [entry] = gateway_events(lab.ledger_dir, before)
    assert (entry.kind, entry.action, entry.resource, entry.purpose) == (
        "gateway", "forward", "broker:cohort/count", PURPOSE)
    assert entry.details["status"] == 200 and entry.actor == "user:researcher"


# ---------------------------------------------------------------------------- access requests

def test_request_access_through_the_broker(lab: Lab) -> None:
    with lab.workbench(purpose="cancer-research") as wb:
        req = wb.request_access("site-a", project="tumour staging")
        assert (req.node, req.dataset, req.purpose, req.status) == ("hospital-a", "site-a", "cancer-research", "pending")
        assert req.request_id in [r.request_id for r in wb.requests()]
        # the node refuses a purpose the terms do not allow: a PermissionError with its sentence
        with pytest.raises(AccessDenied) as refused:
            wb.request_access("hospital-b/site-b", project="a course", purpose="education")
        assert isinstance(refused.value, PermissionError) and refused.value.status == 403
        assert "education" in str(refused.value) or "purpose" in str(refused.value)
        with pytest.raises(NotFound, match="no node's catalogue lists 'site-z'"):
            wb.request_access("site-z", project="x")
        with pytest.raises(ValueError, match="project"):
            wb.request_access("site-a", project=" ")
        grants = wb.grants()
    assert {(g["node"], g["dataset"], g["purpose"]) for g in grants} >= {
        ("hospital-a", "site-a", PURPOSE), ("hospital-b", "site-b", PURPOSE)}


# ---------------------------------------------------------------------------- images

def test_a_permitted_series_arrives_as_the_nodes_volume(lab: Lab) -> None:
    study, series_uid, n = _series_at(lab.node_dirs["hospital-a"], "site-a")
    node_before = lab.node_ledger_size("hospital-a")
    gw_before = ledger_size(lab.ledger_dir)
    with lab.workbench(purpose=PURPOSE) as wb:
        found = wb.series("hospital-a", Modality="CT")
        match = [s for s in found if s.series_uid == series_uid]
        assert match and match[0].study_uid == study and match[0].instances == n
        assert match[0].body_part and match[0].patient_id.startswith("PSN-")
        assert "hospital-a" in found._repr_html_()
        volume = wb.fetch_series(match[0], progress=True)
    stored = _stored(lab.node_dirs["hospital-a"], series_uid)
    assert len(stored) == n
    # the node's instances, sorted along the slice normal, rescaled
    normal = np.cross(*np.array(stored[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    stored.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)))
    expected = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in stored])
    assert volume.shape == expected.shape == (n, int(stored[0].Rows), int(stored[0].Columns))
    assert np.array_equal(volume.array, expected.astype(np.float32))
    assert volume.origin == tuple(float(v) for v in stored[0].ImagePositionPatient)
    gap = float(np.dot(np.array(stored[1].ImagePositionPatient, dtype=float)
                       - np.array(stored[0].ImagePositionPatient, dtype=float), normal))
    assert volume.spacing == pytest.approx((gap, *map(float, stored[0].PixelSpacing)))
    assert np.allclose(volume.direction[:, 0], normal) and volume.positioned
    assert [h.SOPInstanceUID for h in volume.headers] == [ds.SOPInstanceUID for ds in stored]
    assert all("PixelData" not in h for h in volume.headers)
    assert (volume.node, volume.study_uid, volume.series_uid, volume.modality) == ("hospital-a", study, series_uid, "CT")
    assert volume.position((n - 1, 0, 0)) == pytest.approx(tuple(float(v) for v in stored[-1].ImagePositionPatient))
    assert "Volume" in volume._repr_html_() and "CT" in repr(volume)
    # ledgered at the node under the user, and at the gateway
    retrieved = [e for e in lab.node_events("hospital-a", node_before) if e.action == "retrieve"]
    assert [(e.kind, e.outcome.decision, e.details["study"], e.purpose) for e in retrieved] == [
        ("access", "allowed", study, PURPOSE)]
    assert retrieved[0].actor == f"user:{lab.subject('researcher')}"
    forwarded = [e for e in gateway_events(lab.ledger_dir, gw_before) if "series/" + series_uid in e.resource]
    assert [(e.action, e.details["status"], e.details["destination"]) for e in forwarded] == [
        ("forward", 200, "hospital-a")]
    assert forwarded[0].details["bytes"] > sum(ds.PixelData.__len__() for ds in stored)


def test_a_train_only_datasets_pixels_are_refused_and_ledgered(lab: Lab) -> None:
    study, series_uid, _ = _series_at(lab.node_dirs["hospital-b"], "site-b")
    node_before = lab.node_ledger_size("hospital-b")
    gw_before = ledger_size(lab.ledger_dir)
    with lab.workbench(purpose=PURPOSE) as wb, pytest.raises(PermissionError) as refused:
        wb.fetch_series("hospital-b", study, series_uid)
    err = refused.value
    assert isinstance(err, AccessDenied) and err.status == 403
    message = str(err)
    assert "site-b" in message and "train-only" in message and "ai-development" in message, message
    assert series_uid in message and "hospital-b" in message
    denied = [e for e in lab.node_events("hospital-b", node_before) if e.kind == "access"]
    assert [(e.action, e.outcome.decision, e.outcome.reason, e.details.get("study")) for e in denied] == [
        ("retrieve", "denied", "train-only", study)]
    assert denied[0].actor == f"user:{lab.subject('researcher')}"
    forwarded = gateway_events(lab.ledger_dir, gw_before)
    assert [(e.action, e.details["status"], e.details["destination"]) for e in forwarded] == [
        ("forward", 403, "hospital-b")]


def test_a_destination_outside_the_allowed_set_is_refused_and_ledgered(lab: Lab) -> None:
    before = ledger_size(lab.ledger_dir)
    with lab.workbench(purpose=PURPOSE) as wb:
        with pytest.raises(GatewayRefused) as refused:
            wb.series("hospital-x")  # the broker knows it; the gateway does not
        assert refused.value.reason == "unknown-node" and isinstance(refused.value, PermissionError)
        assert "hospital-x" in str(refused.value)
        with pytest.raises(GatewayRefused, match=r"'hospital-x' is not a destination"):
            wb.fetch_series(Series("hospital-x", "1.2", "1.2.3", "CT", "", None, None, "", ""))
    # what a kernel could send by hand: absolute-form targets, CONNECT, other prefixes
    node_a = lab.node_urls["hospital-a"]
    raw = [f"GET {node_a}/dicomweb/studies HTTP/1.1", f"GET {lab.idp.issuer}/.well-known/openid-configuration HTTP/1.1",
           f"CONNECT {node_a.removeprefix('http://')} HTTP/1.1", "GET /hub/api/user HTTP/1.1",
           "GET /nodes/hospital-a/../../broker/grants HTTP/1.1", "DELETE /nodes/hospital-a/governance/grants HTTP/1.1"]
    for line in raw:
        answer = _raw_request(lab.socket, line)
        assert answer.startswith(b"HTTP/1.1 403 "), (line, answer[:200])
        assert b"x-incisive-gateway: refused" in answer.lower()
    refusals = [e for e in gateway_events(lab.ledger_dir, before) if e.action == "refuse"]
    assert len(refusals) == 2 + len(raw)
    assert all(e.outcome.decision == "denied" and e.details["status"] == 403 for e in refusals)
    assert {e.outcome.reason for e in refusals} == {"unknown-node", "not-a-path", "unknown-path", "dot-segment",
                                                    "method"}
    assert refusals[0].details["target"].startswith("/nodes/hospital-x/dicomweb/series")


def _raw_request(path: str, line: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(f"{line}\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


# ---------------------------------------------------------------------------- the token

def test_the_token_never_reaches_the_kernel_and_the_kernels_is_not_used(lab: Lab) -> None:
    token = lab.tokens("researcher")
    seen: list[httpx.Response] = []
    client = httpx.Client(transport=httpx.HTTPTransport(uds=lab.socket), base_url="http://gateway",
                          event_hooks={"response": [lambda r: seen.append(r)]})
    study, series_uid, _ = _series_at(lab.node_dirs["hospital-a"], "site-a")
    with client:
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/gateway/info", {}), ("GET", "/broker/catalogue", {}), ("GET", "/broker/grants", {}),
            ("GET", "/nodes/hospital-a/dicomweb/series", {}), ("GET", "/nodes/hospital-a/healthz", {}),
            ("GET", f"/nodes/hospital-a/dicomweb/studies/{study}/series/{series_uid}/metadata", {}),
            ("GET", "/nodes/hospital-b/dicomweb/series", {}), ("GET", "/nodes/hospital-z/x", {}),
            ("POST", "/broker/requests", {"json": {"dataset": "nope"}}),
            ("GET", "/nodes/hospital-a/governance/requests", {}),
        ]
        for method, path, kw in calls:
            r = client.request(method, path, headers={"X-Purpose": PURPOSE}, **kw)
            r.read()
        # the kernel's own Authorization (here the steward's token) is dropped: the node
        # answers for the gateway's user
        r = client.get("/nodes/hospital-a/governance/grants",
                       headers={"Authorization": f"Bearer {lab.tokens('steward')}", "Cookie": "x=1"})
        assert r.status_code == 200 and {g["dataset"] for g in r.json()} == {"site-a"}
        r = client.get("/broker/grants", headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 200
    assert len(seen) == len(calls) + 2
    for r in seen:
        names = {k.lower() for k in r.headers}
        assert not names & {"authorization", "set-cookie", "www-authenticate", "location"}, (r.url, names)
        assert token not in r.text and token not in str(r.headers), r.url
        assert token.split(".")[2] not in r.text  # not even the signature
