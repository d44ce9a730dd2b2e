"""The central node's ``POST /central/removals`` over HTTP, with the real identity provider, and the
provider's side of it (client, queue, retry, command line).

Each test removes a different patient of the same central node (a copy of ``pair.central``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from incisive_lab.cli import main as cli_main
from incisive_lab.deid import Secret, Vault
from incisive_lab.governance.store import Governance
from incisive_lab.ledger import Ledger
from incisive_lab.node.removal import (
    CentralRemovalError,
    CentralUnreachable,
    RemovalError,
    find_patients,
    handle_for_pseudonym,
    pending_removals,
    queue_central_removal,
    remove_centrally,
    request_central_removal,
    retry_pending,
)
from incisive_lab.node.service import ServiceSettings
from incisive_lab.node.store import NodeStore
from tests._support.idp import Idp, start_idp
from tests._support.node_server import serve_node
from tests._support.orthanc import free_port
from tests.node_central.conftest import CENTRAL_DATASET, Pair

CENTRAL_AUD = "https://central.test/"
PROVIDER_AUD = "https://node-a.test/"


@dataclass
class Central:
    url: str
    idp: Idp
    root: Path
    pair: Pair
    handles: dict[str, str]  #: provider pseudonym -> handle (sorted by pseudonym)
    tokens: dict[tuple[str, str], str]

    def token(self, user: str, audience: str = CENTRAL_AUD) -> str:
        if (user, audience) not in self.tokens:
            self.tokens[(user, audience)] = self.idp.token(user, resource=audience)
        return self.tokens[(user, audience)]

    def h(self, user: str, audience: str = CENTRAL_AUD) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, audience)}"}

    def remove(self, user: str, body: Any, audience: str = CENTRAL_AUD) -> httpx.Response:
        return httpx.post(self.url + "/central/removals", json=body, headers=self.h(user, audience), timeout=60)

    def events(self) -> list[Any]:
        with Ledger.open(self.root, read_only=True) as ledger:
            return [e.event for e in ledger.entries()]

    def anon(self, handle: str) -> str:
        with NodeStore.open(self.root) as store:
            [(_ds, anon)] = find_patients(store, handle)
        return anon


@pytest.fixture(scope="module")
def central(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    base = tmp_path_factory.mktemp("central-api")
    root = pair.copy_central(base / "central")
    secret = Secret.from_file(pair.key)
    with NodeStore.open(pair.provider) as store:
        pseudonyms = sorted({s.patient_id for s in store.index.studies()})
    with Vault(pair.vault, secret) as vault:
        handles = {p: handle_for_pseudonym(vault, secret, p) or "" for p in pseudonyms}
    # the first one consents (its images are readable before the removal); the synthetic set has a
    # patient with a draft Consent, whom nobody may read, and which pseudonym that is depends on the key
    with NodeStore.open(root) as store:
        withdrawn = Governance(store.engine, None).withdrawn()
        consenting = [p for p in pseudonyms if find_patients(store, handles[p])[0][1] not in withdrawn]
    assert consenting
    handles = {p: handles[p] for p in [consenting[0], *(p for p in pseudonyms if p != consenting[0])]}
    with start_idp(base / "idp", audience=CENTRAL_AUD, extra_audiences=[PROVIDER_AUD]) as idp, \
            serve_node(ServiceSettings(node_dir=root, issuer=idp.issuer, audience=CENTRAL_AUD)) as url:
        yield Central(url, idp, root, pair, handles, {})


def _qido(c: Central, anon: str) -> list[Any]:
    r = httpx.get(c.url + "/dicomweb/studies", params={"PatientID": anon}, headers=c.h("steward"), timeout=60)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 and r.content else []


def _fhir(c: Central, path: str) -> httpx.Response:
    return httpx.get(c.url + "/fhir/" + path, headers=c.h("steward"), timeout=60)


def _individuals(c: Central) -> int:
    r = httpx.get(c.url + "/catalogue", headers=c.h("researcher"), timeout=60)
    [record] = [d for d in r.json()["datasets"] if d["dct:identifier"] == CENTRAL_DATASET]
    return int(record["healthdcatap:numberOfUniqueIndividuals"]["@value"])


def test_a_steward_removes_a_patient_and_the_node_no_longer_serves_them(central: Central) -> None:
    handle = next(iter(central.handles.values()))
    anon = central.anon(handle)
    studies = _qido(central, anon)
    assert studies
    study_uid = studies[0]["0020000D"]["Value"][0]
    assert httpx.get(f"{central.url}/dicomweb/studies/{study_uid}/metadata", headers=central.h("steward"),
                     timeout=60).status_code == 200
    assert _fhir(central, f"Patient/{anon}").status_code == 200
    individuals = _individuals(central)
    before = len(central.events())

    # only a steward, with a token for this node
    r = central.remove("researcher", {"handle": handle})
    assert r.status_code == 403 and r.json()["error"] == "role-missing"
    r = central.remove("steward", {"handle": handle}, audience=PROVIDER_AUD)
    assert r.status_code == 401 and r.json()["error"] == "wrong-audience"
    assert httpx.post(central.url + "/central/removals", json={"handle": handle}, timeout=30).status_code == 401
    for bad in ({"handle": handle.upper()}, {"handle": handle, "patient": "x"}, ["x"], {"handle": handle, "dataset": 3}):
        r = central.remove("steward", bad)
        assert r.status_code == 400 and r.json()["error"] == "invalid", bad
    assert _qido(central, anon), "nothing was removed by refused requests"

    r = central.remove("steward", {"handle": handle})
    assert r.status_code == 200, r.text
    removed = r.json()["removed"]
    assert removed["patients"] == 1 and removed["studies"] == len(studies)
    assert removed["instances"] > 0 and removed["records"] > 0

    # the node no longer returns the patient: QIDO, WADO, FHIR, counts in its record
    assert _qido(central, anon) == []
    # (403 or 404: a node that scopes reads answers a study outside the caller's scope with 403,
    # whether or not it exists)
    for path in (f"dicomweb/studies/{study_uid}/metadata", f"dicomweb/studies/{study_uid}"):
        r = httpx.get(f"{central.url}/{path}", headers=central.h("steward"), timeout=60)
        assert r.status_code in (403, 404) and not r.content.startswith(b"--"), (path, r.status_code)
    assert _fhir(central, f"Patient/{anon}").status_code in (403, 404)
    bundle = _fhir(central, f"Observation?patient=Patient/{anon}").json()
    assert bundle.get("total", len(bundle.get("entry", []))) == 0
    assert _individuals(central) == individuals - 1

    # a retry is harmless and says nothing but zeros; an unknown handle says the same
    zeros = {"patients": 0, "studies": 0, "instances": 0, "records": 0}
    assert central.remove("steward", {"handle": handle}).json() == {"removed": zeros}
    assert central.remove("steward", {"handle": "0" * 64, "dataset": "nothing-here"}).json() == {"removed": zeros}

    # ledgered: the refusals, the erasure with the anonymous id, the withdrawal, the empty retries
    new = central.events()[before:]
    seen = {(e.kind, e.action, e.outcome.allowed) for e in new}
    assert ("access", "read", False) in seen and ("erase", "erase", False) in seen
    erased = [e for e in new if e.kind == "erase" and e.outcome.allowed]
    assert erased[0].resource == f"patient:{anon}"
    assert erased[0].details == {"dataset": CENTRAL_DATASET, "patient": anon, "instances": removed["instances"],
                                 "records": removed["records"]}
    assert [e.details for e in erased[1:]] == [{"instances": 0, "records": 0}] * 2
    assert any(e.kind == "consent" and e.action == "withdraw" and e.details.get("patient") == anon for e in new)
    # neither the handle nor anything of the provider's reaches the ledger
    for path in (central.root / "ledger").rglob("*"):
        if path.is_file():
            assert handle.encode() not in path.read_bytes(), path


def test_the_provider_side_request_queue_and_retry(central: Central, tmp_path: Path) -> None:
    pseudonyms = list(central.handles)
    secret = Secret.from_file(central.pair.key)
    token = central.token("steward")
    # the plain client
    answer = request_central_removal(central.url, token, central.handles[pseudonyms[1]], timeout=30)
    assert answer["removed"]["patients"] == 1
    with NodeStore.open(tmp_path / "provider") as provider, Vault(central.pair.vault, secret) as vault:
        # one call does it when the central node answers
        done = remove_centrally(provider.engine, vault, secret, pseudonyms[2], dataset="site-a",
                                central_url=central.url, token=token, timeout=30)
        assert done["status"] == "done" and done["removed"]["patients"] == 1
        # central unreachable: the answer says pending, the queue keeps the pseudonym (never the handle)
        dead = f"http://127.0.0.1:{free_port()}"
        pending = remove_centrally(provider.engine, vault, secret, pseudonyms[3], dataset="site-a",
                                   central_url=dead, token=token, timeout=5)
        assert pending["status"] == "pending" and "unreachable" in pending["error"]
        refused = remove_centrally(provider.engine, vault, secret, pseudonyms[3], dataset="site-a",
                                   central_url=central.url, token=central.token("researcher"), timeout=30)
        assert refused["status"] == "pending" and "HTTP 403" in refused["error"]
        [queued] = pending_removals(provider.engine)
        assert queued["pseudonym"] == pseudonyms[3] and queued["attempts"] == 2
        assert central.handles[pseudonyms[3]] not in json.dumps(queued)
        assert retry_pending(provider.engine, vault, secret, central_url=dead, token=token, timeout=5) == {
            "done": [], "pending": [pseudonyms[3]], "no-handle": []}
        assert retry_pending(provider.engine, vault, secret, central_url=central.url, token=token, timeout=30) == {
            "done": [pseudonyms[3]], "pending": [], "no-handle": []}
        assert pending_removals(provider.engine) == []
        # queued without trying (no token for the central node came with the withdrawal), sent later
        queue_central_removal(provider.engine, pseudonyms[5], "site-a", "no token for the central node")
        assert [q["last_error"] for q in pending_removals(provider.engine)] == ["no token for the central node"]
        assert retry_pending(provider.engine, vault, secret, central_url=central.url, token=token, timeout=30)[
            "done"] == [pseudonyms[5]]
        # a pseudonym the vault does not know has no handle: nothing sent, nothing queued
        assert remove_centrally(provider.engine, vault, secret, "PSN-NOBODY", dataset="site-a",
                                central_url=central.url, token=token)["status"] == "no-handle"
        assert pending_removals(provider.engine) == []
    with NodeStore.open(central.root) as store:
        for p in (*pseudonyms[1:4], pseudonyms[5]):
            assert find_patients(store, central.handles[p]) == []


def test_client_errors_are_clear() -> None:
    handle = "a" * 64
    with pytest.raises(RemovalError, match="use https"):
        request_central_removal("http://central.example", "t", handle)
    with pytest.raises(RemovalError, match="64 lower-case"):
        request_central_removal("https://central.example", "t", "nope")

    def answer(status: int, body: Any) -> httpx.MockTransport:
        return httpx.MockTransport(lambda _req: httpx.Response(status, json=body))

    with pytest.raises(CentralRemovalError, match="without the removal counts"):
        request_central_removal("https://central.example", "t", handle, http=answer(200, {"removed": {}}))
    with pytest.raises(CentralRemovalError, match=r"HTTP 503 \(removal-failed: an ingest") as info:
        request_central_removal("https://central.example", "t", handle,
                                http=answer(503, {"error": "removal-failed", "message": "an ingest is running"}))
    assert info.value.status == 503

    def down(_req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(CentralUnreachable, match=r"unreachable.*pending"):
        request_central_removal("https://central.example", "t", handle, http=httpx.MockTransport(down))


def test_the_steward_command_removes_by_original_patient_id(central: Central, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pseudonym = list(central.handles)[4]
    secret = Secret.from_file(central.pair.key)
    with Vault(central.pair.vault, secret) as vault:
        [entry] = vault.lookup([pseudonym])
    assert entry is not None
    original = entry["PatientID"]
    assert any(str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) == original
               for p in sorted((central.pair.raw / "dicom").rglob("*.dcm"))[:400])
    token_file = tmp_path / "token"
    token_file.write_text(central.token("steward") + "\n")
    args = ["central", "remove", "--central-url", central.url, "--removal-key", str(central.pair.key),
            "--patient-id", original, "--token-file", str(token_file), "--json"]
    monkeypatch.delenv("INCISIVE_TOKEN", raising=False)
    assert cli_main(args) == 0
    assert json.loads(capsys.readouterr().out)["removed"]["patients"] == 1
    assert cli_main(args[:-1]) == 0
    assert "removed from the central node: 0 patients" in capsys.readouterr().out
    assert cli_main(args[:-3]) == 2  # no token at all
    assert "INCISIVE_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("INCISIVE_TOKEN", central.token("researcher"))
    assert cli_main(args[:-3]) == 2
    assert "HTTP 403" in capsys.readouterr().err
    with NodeStore.open(central.root) as store:
        assert find_patients(store, central.handles[pseudonym]) == []


def test_a_withdrawal_at_the_provider_removes_the_patient_from_the_central_node_in_the_same_request(
        central: Central, tmp_path: Path) -> None:
    """One steward request at the provider's node: the withdrawal there, and the removal at the
    central node (the steward's client sends a token for the central node's audience)."""
    import shutil

    provider = tmp_path / "provider"
    shutil.copytree(central.pair.provider, provider, symlinks=True)
    center = central.pair.copy_central(tmp_path / "central")  # its own copy: other tests removed patients
    with NodeStore.open(center) as store:
        withdrawn = Governance(store.engine, None).withdrawn()
        candidates = [(p, h) for p, h in central.handles.items()
                      if find_patients(store, h) and find_patients(store, h)[0][1] not in withdrawn]
    with NodeStore.open(provider) as store:
        dataset = store.index.datasets()[0].name
        provider_withdrawn = Governance(store.engine, None).withdrawn()
    pseudonym, handle = next((p, h) for p, h in candidates if p not in provider_withdrawn)
    other = next(p for p, _h in candidates if p not in provider_withdrawn and p != pseudonym)
    with serve_node(ServiceSettings(node_dir=center, issuer=central.idp.issuer, audience=CENTRAL_AUD)) as center_url, \
            serve_node(ServiceSettings(node_dir=provider, issuer=central.idp.issuer, audience=PROVIDER_AUD,
                                       secret_file=central.pair.key, central_url=center_url)) as url:
        here = Central(center_url, central.idp, center, central.pair, central.handles, central.tokens)
        anon = here.anon(handle)
        assert _qido(here, anon)
        headers = {"X-Central-Authorization": f"Bearer {central.token('steward', CENTRAL_AUD)}",
                   "Authorization": f"Bearer {central.token('steward', PROVIDER_AUD)}"}
        r = httpx.post(url + "/governance/withdrawals", json={"dataset": dataset, "patient": pseudonym},
                       headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["central"]["status"] == "done" and answer["central"]["removed"]["patients"] == 1
        # gone at the central node by the time the answer came back
        assert _qido(here, anon) == []
        with NodeStore.open(center) as store:
            assert find_patients(store, handle) == []
        # without a token for the central audience the central node refuses it: queued, never lost
        r = httpx.post(url + "/governance/withdrawals", json={"dataset": dataset, "patient": other},
                       headers={"Authorization": headers["Authorization"]}, timeout=60)
        assert r.status_code == 200 and r.json()["central"]["status"] == "pending"
        with NodeStore.open(provider) as store:
            assert [q["pseudonym"] for q in pending_removals(store.engine)] == [other]
            assert other in Governance(store.engine, None).withdrawn(dataset), "the local withdrawal stands"
