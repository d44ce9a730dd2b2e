"""STOW-RS checks on the node's file store: what is accepted, what is refused and why.

The annotations are made by highdicom from the node's own de-identified images, as an
annotator's tool would; each refusal test plants exactly one fault. Identifiers are planted
from the provider's real vault (the originals behind the node's pseudonyms), so the screen
is tested against the identifiers it exists to catch.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from incisive_lab.deid.keys import Secret
from incisive_lab.deid.screen import IdentifierScreen
from incisive_lab.deid.vault import Vault
from incisive_lab.node.dicomweb import DicomwebService
from incisive_lab.node.dicomweb._http import DicomwebError
from incisive_lab.node.dicomweb.stow import (
    FAILURE,
    WARNING,
    Accepted,
    Failed,
    StoreTarget,
    StowOutcome,
    UploadChecker,
    parse_multipart,
    store_instances,
)
from incisive_lab.node.store import NodeStore
from tests._support.annotations import make_kos, make_seg, make_sr

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent:UserWarning")


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Node:
    def __init__(self, root: Path, key: Path) -> None:
        self.root, self.key = root, key
        self.store = NodeStore.open(root)
        self.target = StoreTarget(self.store)
        self.secret = Secret.from_file(key)
        ct = [s for s in self.store.index.series() if s.modality == "CT" and s.number_of_instances > 10]
        self.series = ct[0]
        self.other_series = ct[1]  # another patient's CT series
        self.instances = self.store.index.instances(series_uid=self.series.series_uid)
        self.sources = [pydicom.dcmread(self.store.object_path(i.sha256)) for i in self.instances]
        self.study = self.store.index.studies(study_uid=self.series.study_uid)[0]

    def screen(self) -> IdentifierScreen:
        return IdentifierScreen(self.secret, Vault(self.root / "private" / "vault.sqlite", self.secret))

    def originals(self, pseudonym: str) -> dict[str, Any]:
        with Vault(self.root / "private" / "vault.sqlite", self.secret) as v:
            found = v.lookup([pseudonym])[0]
        assert found is not None, f"the vault does not know {pseudonym}"
        return found

    def check(self, *datasets: Dataset | bytes, screen: bool = True, path_study: str | None = None,
              names: tuple[str, ...] = ("annotator",)) -> StowOutcome:
        s = self.screen() if screen else None
        try:
            checker = UploadChecker(self.target, screen=s, allowed_names=names, path_study=path_study)
            parts = [("application/dicom", d if isinstance(d, bytes) else encode(d)) for d in datasets]
            return store_instances(parts, checker, self.target)
        finally:
            if s is not None:
                s.close()


@pytest.fixture(scope="module")
def node(small_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("stow") / "node"
    shutil.copytree(small_node, root, symlinks=True)
    n = Node(root, small_node.parent / "keys" / "provider.key")
    yield n
    n.store.close()


def only_failure(outcome: StowOutcome) -> Failed:
    assert not outcome.accepted, [a.sop_uid for a in outcome.accepted]
    assert len(outcome.failed) == 1
    assert outcome.status == 409
    return outcome.failed[0]


# ------------------------------------------------------------------ accepted


def test_seg_sr_and_kos_are_stored_linked_to_their_source_series_and_searchable(node: Node) -> None:
    seg, sr, kos = make_seg(node.sources), make_sr(node.sources[:3]), make_kos(node.sources[:2])
    outcome = node.check(seg, sr, kos)
    assert not outcome.failed, [f.message for f in outcome.failed]
    assert [a.kind for a in outcome.accepted] == ["seg", "sr", "kos"]
    for a in outcome.accepted:
        assert a.source_series == (node.series.series_uid,)
        assert a.dataset == node.study.dataset
        stored = pydicom.dcmread(node.store.object_path(a.sha256))
        # the node's own patient and study attributes, whatever the tool wrote
        for kw in ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "PatientIdentityRemoved"):
            assert stored.get(kw) == node.sources[0].get(kw), kw
        assert stored.SOPInstanceUID == a.sop_uid
        assert not any(e.tag.is_private for e in stored.iterall())
    # indexed: the file store's QIDO-RS finds them next to their images
    service = DicomwebService(node.store)
    found = service.search_series([("Modality", "SEG")], study_uid=node.series.study_uid, base_url="http://n")
    assert seg.SeriesInstanceUID in found.accessed.series
    reply = service.retrieve(node.series.study_uid, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert reply.accessed.instances == (sr.SOPInstanceUID,)
    # the Store Instances Response names each with its RetrieveURL
    body = outcome.response("http://node/dicomweb")
    urls = [i["00081190"]["Value"][0] for i in body["00081199"]["Value"]]
    assert urls[0] == (f"http://node/dicomweb/studies/{node.series.study_uid}/series/"
                       f"{seg.SeriesInstanceUID}/instances/{seg.SOPInstanceUID}")
    assert outcome.status == 202  # the node added its de-identification attributes: coercion warning
    assert all(i["00081196"]["Value"] == [WARNING["coercion"]] for i in body["00081199"]["Value"])


def test_an_identical_upload_is_stored_once_and_a_different_one_under_the_same_uid_is_refused(node: Node) -> None:
    seg = make_seg(node.sources)
    first = node.check(seg)
    assert first.accepted and first.accepted[0].new
    before = node.store.counts()
    again = node.check(seg)
    assert again.accepted and not again.accepted[0].new
    assert node.store.counts() == before
    seg.SegmentSequence[0].SegmentLabel = "another lesion"
    failed = only_failure(node.check(seg))
    assert failed.reason == FAILURE["duplicate"]


def test_a_later_sr_may_reference_a_stored_segmentation(node: Node) -> None:
    seg = make_seg(node.sources)
    assert node.check(seg).accepted
    stored_seg = pydicom.dcmread(node.store.object_path(node.store.index.instance(seg.SOPInstanceUID).sha256))
    sr = make_sr([*node.sources[:1], stored_seg])
    outcome = node.check(sr)
    assert outcome.accepted, [f.message for f in outcome.failed]
    assert set(outcome.accepted[0].source_series) == {node.series.series_uid, seg.SeriesInstanceUID}


def test_private_attributes_are_discarded_with_a_warning(node: Node) -> None:
    seg = make_seg(node.sources)
    block = seg.private_block(0x0011, "ACME annotations", create=True)
    block.add_new(0x01, "LO", "tool state")
    outcome = node.check(seg)
    (a,) = outcome.accepted
    assert a.discarded
    stored = pydicom.dcmread(node.store.object_path(a.sha256))
    assert not any(e.tag.is_private for e in stored.iterall())


# ------------------------------------------------------------------ identifiers (the screen)


@pytest.mark.parametrize("plant", ["name-in-text", "patient-id", "birth-date", "original-uid",
                                   "other-patients-id", "name-in-observer"])
def test_uploads_carrying_the_providers_identifiers_are_refused_without_echoing_them(node: Node, plant: str) -> None:
    patient = node.originals(node.study.patient_id)
    name = str(patient["PatientName"])
    family = name.split("^")[0]
    sr = make_sr(node.sources[:2])
    seg = make_seg(node.sources)
    planted: str
    target: Dataset = sr
    if plant == "name-in-text":
        planted = family
        sr.ContentSequence[0].TextValue = f"mass, reviewed with {family} at follow-up"
    elif plant == "patient-id":
        planted = str(patient["PatientID"])
        seg.ClinicalTrialSubjectID = planted
        target = seg
    elif plant == "birth-date":
        planted = str(patient["PatientBirthDate"])
        d = planted
        sr.ContentSequence[0].TextValue = f"born {d[6:]}.{d[4:6]}.{d[:4]}"
    elif plant == "original-uid":
        with Vault(node.root / "private" / "vault.sqlite", node.secret) as v:
            planted = str(v.lookup([node.sources[0].FrameOfReferenceUID])[0]["UID"])  # type: ignore[index]
        seg.FrameOfReferenceUID = planted
        target = seg
    elif plant == "other-patients-id":
        other = node.store.index.studies(study_uid=node.other_series.study_uid)[0].patient_id
        planted = str(node.originals(other)["PatientID"])
        sr.ContentSequence[0].TextValue = f"compare with {planted}"
    else:
        planted = name
        sr = make_sr(node.sources[:2], observer=name)
        target = sr
    failed = only_failure(node.check(target))
    assert failed.reason == FAILURE["not_authorized"], failed.message
    assert planted.lower() not in failed.message.lower()
    assert "identifying" in failed.message
    assert node.store.index.instance(target.SOPInstanceUID) is None


def test_a_person_name_other_than_the_pseudonym_or_the_uploader_fails_the_audit(node: Node) -> None:
    seg = make_seg(node.sources)
    seg.ContentCreatorName = "Somebody^Else"
    failed = only_failure(node.check(seg))
    assert failed.reason == FAILURE["not_authorized"]
    assert "Somebody" not in failed.message and "person name" in failed.message
    # the uploader's own user name is fine
    seg2 = make_seg(node.sources)
    seg2.ContentCreatorName = "annotator"
    assert node.check(seg2).accepted


def test_a_pseudonymised_study_accepts_nothing_when_the_node_cannot_screen(node: Node) -> None:
    failed = only_failure(node.check(make_seg(node.sources), screen=False))
    assert failed.reason == FAILURE["processing"]
    assert "secret" in failed.message


# ------------------------------------------------------------------ links and formats


def test_annotations_must_be_linked_to_images_the_node_holds(node: Node) -> None:
    cases: dict[str, Any] = {}
    seg = make_seg(node.sources)
    seg.StudyInstanceUID = generate_uid()
    cases["unknown study"] = (seg, "holds no study", None)
    cases["path study differs"] = (make_seg(node.sources), "request path", node.other_series.study_uid)
    seg = make_seg(node.sources)
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = generate_uid()
    cases["unknown reference"] = (seg, "does not hold", None)
    kos = make_kos(node.sources[:1])
    kos.SeriesInstanceUID = node.series.series_uid
    cases["into a source series"] = (kos, "series of their own", None)
    sr = make_sr(node.sources[:1])
    other = node.store.index.studies(study_uid=node.other_series.study_uid)[0]
    sr.PatientID = other.patient_id
    cases["another patient's pseudonym"] = (sr, "Patient ID", None)
    sr = make_sr(node.sources[:1])
    sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID = node.other_series.study_uid
    cases["evidence from another study"] = (sr, "its own study only", None)
    for what, (ds, words, path) in cases.items():
        failed = only_failure(node.check(ds, path_study=path))
        assert failed.reason == FAILURE["does_not_match"], (what, failed.message)
        assert words in failed.message, (what, failed.message)


def test_unsupported_or_unreadable_objects_are_refused_with_their_reason(node: Node) -> None:
    ct = node.sources[0]
    failed = only_failure(node.check(encode(ct)))
    assert failed.reason == FAILURE["sop_class"] and "CT Image Storage" in failed.message
    failed = only_failure(node.check(b"not a dicom file at all" * 10))
    assert failed.reason == FAILURE["cannot_understand"]
    seg = make_seg(node.sources)
    data = encode(seg)
    seg.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    failed = only_failure(node.check(seg))
    assert failed.reason == FAILURE["transfer_syntax"]
    outcome = node.check(data, b"garbage")  # one bad part does not sink the others
    assert len(outcome.accepted) == 1 and len(outcome.failed) == 1 and outcome.status == 202
    body = outcome.response("http://n/dicomweb")
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [FAILURE["cannot_understand"]]


def test_accepted_objects_pass_the_deidentification_audit(node: Node) -> None:
    from incisive_lab.deid.scanner import audit

    outcome = node.check(make_seg(node.sources), make_sr(node.sources[:2]))
    for a in outcome.accepted:
        assert isinstance(a, Accepted)
        assert audit(a.data, allowed_names=[str(node.sources[0].PatientName), "annotator"]) == []


# ------------------------------------------------------------------ the body


def _body(boundary: str, *parts: bytes) -> bytes:
    return b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"


def test_multipart_bodies_are_split_and_malformed_ones_refused() -> None:
    ctype = 'multipart/related; type="application/dicom"; boundary="b0undary"'
    assert [p for _c, p in parse_multipart(ctype, _body("b0undary", b"one", b"\r\ntwo\r\n"))] == [b"one", b"\r\ntwo\r\n"]
    bad = [
        (None, b"", 415),
        ("application/dicom", b"x", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', b"x", 415),
        ('multipart/related; type="application/dicom"', b"x", 400),
        (ctype, b"no boundary here", 400),
        (ctype, b"--b0undary\r\nContent-Type: application/dicom\r\n\r\nunterminated", 400),
        (ctype, b"--b0undary--\r\n", 400),
    ]
    for content_type, body, status in bad:
        with pytest.raises(DicomwebError) as err:
            parse_multipart(content_type, body)
        assert err.value.status == status, (content_type, body, err.value.message)
    with pytest.raises(DicomwebError, match="more than 3 parts"):
        parse_multipart(ctype, _body("b0undary", *[b"p"] * 4), max_parts=3)
