"""The real fhirpy client against the FHIR API, through a minimal stdlib HTTP wrapper.

fhirpy's sync client calls ``requests.request`` directly (no transport to plug in), so the
test serves :meth:`FhirApi.handle` on loopback with ``http.server``. The wrapper does only
what the ASGI layer will do: split the path below the base, parse the query, parse a JSON or
form body, pass the base URL as the client used it and the caller's roles (here from a test
header; the real service takes them from the verified token).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError, ResourceNotFound

from incisive_lab.node.fhir_api import FhirApi
from incisive_lab.node.store import NodeStore

PREFIX = "/fhir"


def _handler(api: FhirApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            assert parts.path.startswith(PREFIX)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type", "")
            body: Any = None
            form = None
            if raw and "x-www-form-urlencoded" in ctype:
                form = parse_qsl(raw.decode(), keep_blank_values=True)
            elif raw:
                body = json.loads(raw)
            host = self.headers["Host"]
            roles = {r for r in self.headers.get("X-Test-Roles", "").split(",") if r}
            r = api.handle(self.command, parts.path[len(PREFIX):],
                           parse_qsl(parts.query, keep_blank_values=True),
                           base_url=f"http://{host}{PREFIX}", body=body, form=form,
                           roles=roles, prefer=self.headers.get("Prefer"))
            data = json.dumps(r.body).encode()
            self.send_response(r.status)
            for name, value in r.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def server(writable_copy: NodeStore) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(FhirApi(writable_copy.fhir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{PREFIX}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def writable_copy(fhir_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStore]:
    import shutil

    copy = tmp_path_factory.mktemp("fhirpy") / "node"
    shutil.copytree(fhir_node, copy, symlinks=True)
    with NodeStore.open(copy) as st:
        yield st


def client(url: str, roles: str = "researcher") -> SyncFHIRClient:
    return SyncFHIRClient(url, authorization="Bearer test",
                          extra_headers={"X-Test-Roles": roles})


def test_fhirpy_search_with_paging_count_and_read(server: str, writable_copy: NodeStore) -> None:
    fhir = client(server)
    every = sorted(r["id"] for r in writable_copy.fhir.search("Observation"))
    paged = fhir.resources("Observation").sort("-date").limit(4)
    seen = [r.id for r in paged]                    # follows the next links
    assert sorted(seen) == every and len(seen) == len(set(seen))
    assert fhir.resources("Observation").count() == len(every)
    patient = writable_copy.fhir.search("Patient")[0]["id"]
    mine = fhir.resources("Observation").search(subject=f"Patient/{patient}",
                                                date__ge="2000").limit(3)
    want = [r["id"] for r in writable_copy.fhir.search("Observation", patient=patient)
            if r.get("effectiveDateTime")]
    assert sorted(r.id for r in mine.fetch_all()) == sorted(want)
    assert mine.count() == len(want)
    read = fhir.reference("Patient", patient).to_resource()
    assert read.id == patient and read["meta"]["versionId"] == "1"
    with pytest.raises(ResourceNotFound):
        fhir.get("Patient", "PSN-NOT-HERE")
    first = fhir.resources("Condition").include("Condition", "subject").first()
    assert first is not None and first.resourceType == "Condition"


def test_fhirpy_creates_and_updates_a_consent(server: str, writable_copy: NodeStore) -> None:
    patient = writable_copy.fhir.search("Patient")[0]["id"]
    fields = {
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": "2025-01-02",
    }
    with pytest.raises(ForbiddenError):
        client(server).resource("Consent", **fields).save()
    fhir = client(server, roles="steward")
    created = fhir.resource("Consent", **fields)
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"
    again = fhir.resources("Consent").search(_id=created.id).get()
    assert again["dateTime"] == "2025-01-02"
    created["status"] = "inactive"
    created.save()                                  # PUT
    assert created["meta"]["versionId"] == "2"
    assert fhir.get("Consent", created.id)["status"] == "inactive"
    assert fhir.resources("Consent").search(patient=patient, date="2025").count() == 1
