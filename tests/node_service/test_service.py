"""The node service over HTTP: real uvicorn on loopback, real dicomweb-client and fhirpy,
tokens from the real development identity provider (npm oidc-provider, hub/idp).

Only the attack matrix forges tokens: with a stranger's key, with no signature, HMAC'd with
the issuer's public key, or — for the claim checks (expired, wrong audience, low LoA, ...) —
signed with the identity provider's own key, which the test generated for it. Every request
is checked against the node's ledger afterwards.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from incisive_lab.access import JwksCache, TokenVerifier
from incisive_lab.ledger import Ledger
from incisive_lab.node.service import ServiceSettings
from tests._support.idp import Idp, start_idp, write_jwks
from tests._support.node_server import grant_access, serve_node
from tests.access.idp import TestKey, claims, forge_hmac, forge_unsigned

AUDIENCE = "https://node-a.test/"


class Served:
    def __init__(self, node: Path, idp: Idp, idp_key: TestKey, url: str, key: Path) -> None:
        self.node, self.idp, self.idp_key, self.url, self.key = node, idp, idp_key, url, key
        self._tokens: dict[str, str] = {}
        self.verifier = TokenVerifier(idp.issuer, AUDIENCE, jwks=JwksCache.for_issuer(idp.issuer))

    def token(self, user: str = "researcher") -> str:
        """A real access token from the identity provider (a scripted login), cached per user."""
        if user not in self._tokens:
            self._tokens[user] = self.idp.token(user)
        return self._tokens[user]

    def headers(self, user: str = "researcher") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}", "X-Purpose": "ai-development; project=service-tests"}

    def forged(self, **overrides: Any) -> str:
        """Claims of our choosing, signed with the identity provider's own key (attack matrix only)."""
        return self.idp_key.sign(claims(self.idp.issuer, **{"aud": AUDIENCE, **overrides}))

    def ledger_events(self) -> list[Any]:
        with Ledger.open(self.node, read_only=True) as ledger:
            return [e.event for e in ledger.entries()]


@pytest.fixture(scope="module", params=["file-store", "orthanc"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           small_node: Path) -> Iterator[Served]:
    """The same node served from its own file store, and from a real Orthanc PACS holding its objects."""
    import shutil

    from jwt.algorithms import RSAAlgorithm

    base = tmp_path_factory.mktemp("service")
    node = base / "node"
    shutil.copytree(small_node, node, symlinks=True)  # the service writes its ledger and Consents
    jwks_file = base / "idp-jwks.json"
    kid = write_jwks(jwks_file)
    jwk = json.loads(jwks_file.read_text())["keys"][0]
    idp_key = TestKey(kid=kid, alg="RS256", private=RSAAlgorithm.from_jwk(json.dumps(jwk)))
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(start_idp(base / "idp", audience=AUDIENCE, jwks_file=jwks_file))
        pacs_url = None
        if request.param == "orthanc":
            from incisive_lab.node.store import NodeStore
            from tests._support.orthanc import start_orthanc

            orthanc = start_orthanc()
            stack.callback(orthanc.stop)
            with NodeStore.open(node) as store:
                orthanc.upload(store.object_path(sha) for sha, _size in store.iter_objects())
            pacs_url = orthanc.dicomweb_url
        key = small_node.parent / "keys" / "provider.key"
        url = stack.enter_context(serve_node(ServiceSettings(
            node_dir=node, issuer=idp.issuer, audience=AUDIENCE, pacs_url=pacs_url, secret_file=key)))
        served = Served(node, idp, idp_key, url, key)
        grant_access(url, served.token, users=("researcher", "annotator"))  # reads need a grant
        yield served


def test_health_needs_no_token_and_says_nothing_about_data(served: Served) -> None:
    r = httpx.get(served.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_dicomweb_client_searches_and_retrieves(served: Served) -> None:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=served.url + "/dicomweb", headers=served.headers())
    studies = client.search_for_studies()
    assert studies, "the ingested studies are found"
    study = studies[0]["0020000D"]["Value"][0]
    series = client.search_for_series(study_instance_uid=study)
    assert series
    series_uid = series[0]["0020000E"]["Value"][0]
    instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=series_uid)
    assert instances
    sop = instances[0]["00080018"]["Value"][0]
    retrieved = client.retrieve_series(study, series_uid)
    assert len(retrieved) == len(instances)
    assert {str(ds.SOPInstanceUID) for ds in retrieved} == {i["00080018"]["Value"][0] for i in instances}
    metadata = client.retrieve_series_metadata(study, series_uid)
    assert len(metadata) == len(instances) and all("7FE00010" not in m or "BulkDataURI" in m["7FE00010"]
                                                   for m in metadata)
    one = client.retrieve_instance(study, series_uid, sop)
    assert str(one.SOPInstanceUID) == sop
    frames = client.retrieve_instance_frames(study, series_uid, sop, frame_numbers=[1])
    assert len(frames) == 1 and len(frames[0]) > 0
    png = client.retrieve_instance_rendered(study, series_uid, sop, media_types=("image/png",))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    accessed = {e.details.get("study") for e in served.ledger_events() if e.kind == "access" and e.outcome.allowed}
    assert study in accessed, "every access is in the ledger"


def test_fhirpy_searches_with_paging_reads_and_a_steward_creates_a_consent(served: Served) -> None:
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(served.url + "/fhir", authorization=f"Bearer {served.token('researcher')}",
                            extra_headers={"X-Purpose": "ai-development"})
    patients = client.resources("Patient").fetch_all()
    assert patients
    assert client.resources("Observation").count() > 0
    pages = client.resources("Observation").limit(5).fetch_all()
    assert len(pages) == client.resources("Observation").count()
    one = client.reference("Patient", patients[0].id).to_resource()
    assert one.id == patients[0].id
    steward = SyncFHIRClient(served.url + "/fhir", authorization=f"Bearer {served.token('steward')}",
                             extra_headers={"X-Purpose": "ai-development"})
    consent = steward.resource(
        "Consent", status="active",
        scope={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        category=[{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        patient={"reference": f"Patient/{patients[0].id}"},
        policyRule={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
    )
    consent.save()
    assert consent.id
    researcher_consent = client.resource("Consent", **{k: v for k, v in consent.items() if k not in ("id", "meta")})
    with pytest.raises(Exception, match=r"403|forbidden|steward"):
        researcher_consent.save()


@pytest.mark.parametrize(
    "case",
    ["none", "malformed", "bad-signature", "alg-none", "hs256-public-key", "wrong-iss", "wrong-aud", "expired",
     "not-yet-valid", "unknown-kid", "loa-low"],
)
def test_token_attack_matrix_is_refused_and_ledgered(served: Served, case: str) -> None:
    now = int(time.time())
    iss = served.idp.issuer
    good = claims(iss, aud=AUDIENCE)
    public_pem = served.idp_key.public_pem()
    tokens: dict[str, str | None] = {
        "none": None,
        "malformed": "not.a.jwt",
        "bad-signature": TestKey.rsa(served.idp_key.kid).sign(good),  # a stranger's key under the issuer's kid
        "alg-none": forge_unsigned(good, kid=served.idp_key.kid),
        "hs256-public-key": forge_hmac(good, public_pem, kid=served.idp_key.kid),
        "wrong-iss": served.forged(iss="http://127.0.0.1:1/evil"),
        "wrong-aud": served.forged(aud="https://other-node.test/"),
        "expired": served.forged(exp=now - 3600, iat=now - 7200),
        "not-yet-valid": served.forged(nbf=now + 3600),
        "unknown-kid": TestKey.rsa("k-forged").sign(good),
        "loa-low": served.forged(acr="http://eidas.europa.eu/LoA/low"),
    }
    token = tokens[case]
    headers = {"X-Purpose": f"attack:{case}"} | ({"Authorization": f"Bearer {token}"} if token else {})
    before = len(served.ledger_events())
    r = httpx.get(served.url + "/dicomweb/studies", headers=headers)
    assert r.status_code == 401, (case, r.text)
    assert "WWW-Authenticate" in r.headers
    events = served.ledger_events()[before:]
    assert len(events) == 1 and not events[0].outcome.allowed and events[0].purpose == f"attack:{case}"


def test_a_real_low_loa_login_is_refused_too(served: Served) -> None:
    r = httpx.get(served.url + "/dicomweb/studies", headers=served.headers("lowloa"))
    assert r.status_code == 401 and "loa-too-low" in r.text


def test_the_steward_sees_who_accessed_a_study_and_a_researcher_cannot(served: Served) -> None:
    reader = served.verifier.verify(served.token("annotator")).subject
    studies = httpx.get(served.url + "/dicomweb/studies", headers=served.headers("annotator")).json()
    study = studies[0]["0020000D"]["Value"][0]
    r = httpx.get(served.url + "/ledger/accesses", params={"resource": f"study:{study}"}, headers=served.headers())
    assert r.status_code == 403
    r = httpx.get(served.url + "/ledger/accesses", params={"resource": f"study:{study}"},
                  headers=served.headers("steward"))
    assert r.status_code == 200
    from incisive_lab.ledger import QueryResult

    result = QueryResult.from_dict(r.json())
    with Ledger.open(served.node, read_only=True) as ledger:
        result.verify(ledger.verifier)  # the node's signature on the checkpoint, and every entry's proof
    actors = {json.loads(e.data)["actor"] for e in result}
    assert f"user:{reader}" in actors, "the reader is named"


def test_malformed_queries_are_400_with_a_message(served: Served) -> None:
    for params in ({"StudyDate": "2020-13-45"}, {"StudyInstanceUID": "1.2.abc"}, {"limit": "100000000"},
                   {"PatientID": "' OR 1=1 --"}, {"NoSuchAttribute": "x"}):
        r = httpx.get(served.url + "/dicomweb/studies", params=params, headers=served.headers())
        if params.get("PatientID"):
            assert r.status_code in (200, 204) and r.json() in ([], None) if r.content else True
            continue
        assert r.status_code == 400 and r.json()["error"], params
    r = httpx.get(served.url + "/fhir/Observation", params={"date": "not-a-date"}, headers=served.headers())
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_fifty_concurrent_clients_without_errors_and_every_access_ledgered(served: Served) -> None:
    before = len(served.ledger_events())
    headers = served.headers()

    def one(i: int) -> tuple[int, str]:
        path = "/dicomweb/studies" if i % 2 else "/fhir/Patient"
        r = httpx.get(served.url + path, headers=headers, timeout=60)
        return r.status_code, f"{path}: {r.text[:300]}"

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(one, range(200)))
    failures = [text for code, text in answers if code != 200]
    assert not failures, failures[:3]
    assert len(served.ledger_events()) - before >= 200


def test_every_series_renders_whatever_its_transfer_syntax(served: Served) -> None:
    """On Orthanc, images it cannot render itself (JPEG 2000 without a codec) are rendered by the node."""
    from io import BytesIO

    from PIL import Image

    headers = served.headers()
    for st in httpx.get(served.url + "/dicomweb/studies", headers=headers).json():
        study = st["0020000D"]["Value"][0]
        for se in httpx.get(f"{served.url}/dicomweb/studies/{study}/series", headers=headers).json():
            series = se["0020000E"]["Value"][0]
            inst = httpx.get(f"{served.url}/dicomweb/studies/{study}/series/{series}/instances",
                             params={"limit": "1"}, headers=headers).json()[0]
            sop = inst["00080018"]["Value"][0]
            r = httpx.get(f"{served.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered",
                          headers=headers | {"Accept": "image/png"}, timeout=60)
            assert r.status_code == 200, (series, r.text)
            assert Image.open(BytesIO(r.content)).size[0] > 0


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")
def test_an_annotator_stores_seg_sr_and_kos_with_dicomweb_client_and_reads_them_back(served: Served) -> None:
    """STOW-RS through the node on either back-end: the same client, the same checks, the same ledger."""
    from dicomweb_client.api import DICOMwebClient
    from requests import HTTPError

    from incisive_lab.deid.keys import Secret
    from incisive_lab.deid.vault import Vault
    from tests._support.annotations import make_kos, make_seg, make_sr

    annotator = DICOMwebClient(url=served.url + "/dicomweb", headers=served.headers("annotator"))
    found = annotator.search_for_series(search_filters={"Modality": "CT"}, fields=["NumberOfSeriesRelatedInstances"])
    chosen = max(found, key=lambda s: s["00201209"]["Value"][0])
    study, series = chosen["0020000D"]["Value"][0], chosen["0020000E"]["Value"][0]
    sources = annotator.retrieve_series(study, series)  # the tool reads the images through the node
    seg, sr, kos = make_seg(sources), make_sr(sources[:2]), make_kos(sources[:1])
    result = annotator.store_instances([seg, sr, kos], study_instance_uid=study)
    stored = {str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence}
    assert stored == {str(seg.SOPInstanceUID), str(sr.SOPInstanceUID), str(kos.SOPInstanceUID)}
    assert "FailedSOPSequence" not in result
    # read back through the node: searchable next to their images, retrievable, de-identified
    seg_series = annotator.search_for_series(study, search_filters={"Modality": "SEG"})
    assert str(seg.SeriesInstanceUID) in {s["0020000E"]["Value"][0] for s in seg_series}
    back = annotator.retrieve_instance(study, str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID))
    assert back.PatientID == sources[0].PatientID and back.PatientIdentityRemoved == "YES"
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    events = [e for e in served.ledger_events() if e.kind == "annotate"]
    created = {e.details["instance"]: e for e in events if e.action == "create"}
    assert set(created) >= stored
    assert created[str(seg.SOPInstanceUID)].details["source_series"] == [series]
    assert created[str(seg.SOPInstanceUID)].details["object"] == "seg"

    # a researcher may read but not write
    researcher = DICOMwebClient(url=served.url + "/dicomweb", headers=served.headers("researcher"))
    with pytest.raises(HTTPError) as err:
        researcher.store_instances([make_kos(sources[:1])])
    assert err.value.response.status_code == 403
    # an object carrying the patient's real name is refused (409), says why, and is ledgered
    with Vault(served.node / "private" / "vault.sqlite", Secret.from_file(served.key)) as vault:
        name = str(vault.lookup([str(sources[0].PatientID)])[0]["PatientName"])  # type: ignore[index]
    leaky = make_sr(sources[:1], text=f"discussed with {name.split('^')[0]}")
    with pytest.raises(HTTPError) as err:
        annotator.store_instances([leaky])
    response = err.value.response
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0x0124]
    assert name.split("^")[0].lower() not in response.text.lower()
    assert "identifying data" in response.headers["warning"]
    refused = [e for e in served.ledger_events() if e.kind == "annotate" and e.action == "refuse"]
    assert {e.details.get("instance") for e in refused} >= {str(leaky.SOPInstanceUID)}
    assert any(e.outcome.reason == "missing-role" or "role" in e.outcome.reason for e in refused)
    assert all(name.split("^")[0].lower() not in json.dumps(e.to_dict()).lower() for e in refused)
