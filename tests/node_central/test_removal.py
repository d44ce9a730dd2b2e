"""Removal handles and removing a patient from a node (no HTTP: the library alone).

The same raw site is ingested federated at the provider and central with ``--removal-key``
(the ``pair`` fixture); the handle the provider computes from its vault must find exactly
the central patient made from the same person, and removing that patient must take every
trace of them out of the central node and nothing of anyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pydicom
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select

from incisive_lab.cdm.spreadsheet import read_workbook
from incisive_lab.deid import LeakScanner, Secret, Vault
from incisive_lab.node import removal
from incisive_lab.node._db import fhir_table, fhir_tokens_table, object_deletions_table
from incisive_lab.node.dataset import validate_record
from incisive_lab.node.index import InstanceRecord
from incisive_lab.node.ingest import ingest
from incisive_lab.node.removal import (
    RemovalError,
    find_patients,
    handle_for_pseudonym,
    removal_handle,
    removal_tag,
    tags_present,
)
from incisive_lab.node.store import NodeStore
from tests.node_central.conftest import CENTRAL_DATASET, Pair

# --- shared test vectors: a tag written today must match the same handle tomorrow -------------------

VECTOR_KEY = bytes(range(32))
VECTOR_ID = "H-204417"
VECTOR_HANDLE = "e9e94a10c259295347fc8c4e63bffae1cc28f6f576fb3533d91da635e2d0cebf"
VECTOR_DATASET, VECTOR_PATIENT = "lung-01", "ANO-7K2M9QX4ZB1TXY3A"
VECTOR_TAG = "ff068e78ca6cb258cfc58dc1f109c478d65c7911b0ba8c974e756288d18b353c"


def test_handle_and_tag_follow_the_documented_construction_and_the_frozen_vectors() -> None:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"incisive-lab/keys/v1",
               info=b"central-removal/handle").derive(VECTOR_KEY)
    expected = hmac.new(key, b"incisive-central-removal\x00" + VECTOR_ID.encode(), hashlib.sha256).hexdigest()
    assert removal_handle(Secret(VECTOR_KEY), VECTOR_ID) == expected == VECTOR_HANDLE
    tag = hmac.new(bytes.fromhex(VECTOR_HANDLE), b"incisive-central-removal-tag\x00lung-01\x00" + VECTOR_PATIENT.encode(),
                   hashlib.sha256).hexdigest()
    assert removal_tag(VECTOR_HANDLE, VECTOR_DATASET, VECTOR_PATIENT) == tag == VECTOR_TAG


def test_handles_that_must_fail() -> None:
    secret = Secret(VECTOR_KEY)
    assert removal_handle(secret, VECTOR_ID + "0") != VECTOR_HANDLE
    assert removal_handle(Secret(bytes(32)), VECTOR_ID) != VECTOR_HANDLE
    # a tag is bound to its dataset and anonymous id: the same handle tags other rows differently
    assert removal_tag(VECTOR_HANDLE, "lung-02", VECTOR_PATIENT) != VECTOR_TAG
    assert removal_tag(VECTOR_HANDLE, VECTOR_DATASET, VECTOR_PATIENT + "X") != VECTOR_TAG
    with pytest.raises(RemovalError, match="empty"):
        removal_handle(secret, "  ")
    with pytest.raises(RemovalError, match="ephemeral"):
        removal_handle(Secret(VECTOR_KEY, ephemeral=True), VECTOR_ID)
    for bad in (VECTOR_HANDLE.upper(), VECTOR_HANDLE[:-1], VECTOR_HANDLE + "0", "x" * 64, 42, None):
        with pytest.raises(RemovalError, match="64 lower-case hexadecimal"):
            removal_tag(bad, VECTOR_DATASET, VECTOR_PATIENT)  # type: ignore[arg-type]


# --- the handle made at central ingest is the one the provider makes from its vault --------------------

def _provider_patients(pair: Pair) -> list[str]:
    with NodeStore.open(pair.provider) as store:
        return sorted({s.patient_id for s in store.index.studies()})


def _handles(pair: Pair) -> dict[str, str]:
    """pseudonym at the provider -> removal handle, from the provider's vault."""
    secret = Secret.from_file(pair.key)
    with Vault(pair.vault, secret) as vault:
        out = {p: handle_for_pseudonym(vault, secret, p) for p in _provider_patients(pair)}
    assert all(out.values()), out
    return {p: h for p, h in out.items() if h}


def test_the_provider_finds_each_of_its_patients_at_the_central_node_once(pair: Pair) -> None:
    handles = _handles(pair)
    assert len(handles) == 6 and len(set(handles.values())) == 6
    assert pair.summary.removal_handles == 6 and not pair.summary.warnings
    with NodeStore.open(pair.central) as central, NodeStore.open(pair.provider) as provider:
        central_patients = {s.patient_id for s in central.index.studies()}
        found = {p: find_patients(central, h) for p, h in handles.items()}
        assert all(len(v) == 1 for v in found.values()), found
        matched = {v[0] for v in found.values()}
        assert matched == {(CENTRAL_DATASET, a) for a in central_patients}  # a bijection
        for psn, [(_ds, anon)] in found.items():  # the same person: the same images
            mine = sorted(len(provider.index.instances(study_uid=s.study_uid))
                          for s in provider.index.studies(patient_id=psn))
            theirs = sorted(len(central.index.instances(study_uid=s.study_uid))
                            for s in central.index.studies(patient_id=anon))
            assert mine == theirs
        assert set(tags_present(central, CENTRAL_DATASET)) == central_patients
        assert find_patients(central, handles[_provider_patients(pair)[0]], dataset="other") == []


def _original_ids(raw: Path) -> set[str]:
    ids = set()
    for path in sorted((raw / "dicom").rglob("*.dcm")):
        ids.add(str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).PatientID))
    ids |= {str(r["patient_id"]) for r in read_workbook(raw / "clinical.xlsx") if r.get("patient_id")}
    return {i for i in ids if i}


def test_the_central_node_holds_no_handle_and_no_original_id(pair: Pair) -> None:
    """Handles appear nowhere (only tags are stored); original IDs appear nowhere outside the
    provider's private/ bookkeeping (see docs/central-removal.md on that folder)."""
    originals = _original_ids(pair.raw)
    assert len(originals) == 6
    handles = set(_handles(pair).values())
    id_scanner, handle_scanner = LeakScanner(originals), LeakScanner(handles)
    files = [p for p in sorted(pair.central.rglob("*")) if p.is_file()]
    assert any(p.name == "node.sqlite" for p in files) and any(p.suffix == ".dcm" for p in files)
    id_hits, handle_hits = [], []
    for path in files:
        data = path.read_bytes()
        handle_hits += handle_scanner.scan_bytes(str(path), data)
        if "private" not in path.relative_to(pair.central).parts:
            id_hits += id_scanner.scan_bytes(str(path), data)
    assert not handle_hits and not id_hits, (handle_hits, id_hits)


# --- ingest: re-runs, resumes, no key ----------------------------------------------------------------------

def test_a_rerun_adds_no_tag_and_keeps_the_digest(pair: Pair, tmp_path: Path) -> None:
    node = pair.copy_central(tmp_path / "central")
    with NodeStore.open(node) as store:
        before, tags = store.digest(), tags_present(store, CENTRAL_DATASET)
    again = ingest(node, dataset=CENTRAL_DATASET, dicom=pair.raw / "dicom", clinical=pair.raw / "clinical.xlsx",
                   hosting="central", removal_key=pair.key, progress=False)
    assert again.instances_stored == 0 and again.removal_handles == 0
    with NodeStore.open(node) as store:
        assert store.digest() == before and tags_present(store, CENTRAL_DATASET) == tags


def test_a_run_interrupted_after_storing_resumes_with_every_tag(pair: Pair, tmp_path: Path) -> None:
    node = tmp_path / "central"

    def stop(step: str) -> None:
        if step == "store":
            raise KeyboardInterrupt("killed after the store step")

    args = {"dataset": CENTRAL_DATASET, "dicom": pair.raw / "dicom", "clinical": pair.raw / "clinical.xlsx",
            "hosting": "central", "removal_key": pair.key, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        ingest(node, **args, after_step=stop)  # type: ignore[arg-type]
    resumed = ingest(node, **args)  # type: ignore[arg-type]
    assert resumed.resumed and resumed.instances_stored == 0
    with NodeStore.open(node) as store:
        patients = {s.patient_id for s in store.index.studies()}
        assert set(tags_present(store, CENTRAL_DATASET)) == patients and len(patients) == 6
        found = {find_patients(store, h)[0] for h in _handles(pair).values()}
        assert found == {(CENTRAL_DATASET, p) for p in patients}
        digest = store.digest()
    ingest(node, **args)  # type: ignore[arg-type]
    with NodeStore.open(node) as store:
        assert store.digest() == digest


def test_without_a_removal_key_nothing_is_stored_and_the_summary_warns(pair: Pair, tmp_path: Path) -> None:
    summary = ingest(tmp_path / "central", dataset="no-key", dicom=pair.raw / "dicom", clinical=None,
                     hosting="central", progress=False)
    assert summary.removal_handles == 0
    assert any("cannot be removed" in w for w in summary.warnings) and "warning:" in summary.text()
    with NodeStore.open(tmp_path / "central") as store:
        assert tags_present(store, "no-key") == {}
    from incisive_lab.errors import IncisiveLabError

    with pytest.raises(IncisiveLabError, match="--removal-key is for --hosting central"):
        ingest(tmp_path / "fed", dataset="x", dicom=pair.raw / "dicom", clinical=None, hosting="federated",
               secret_file=pair.key, removal_key=pair.key)


# --- remove_patient -----------------------------------------------------------------------------------------

def _fhir_rows(store: NodeStore, patient: str) -> int:
    t = fhir_table
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t).where(t.c.patient_ref == f"Patient/{patient}"))
                   .scalar_one())


def _state(store: NodeStore, patient: str) -> dict[str, object]:
    studies = store.index.studies(patient_id=patient)
    shas = {i.sha256 for s in studies for i in store.index.instances(study_uid=s.study_uid)}
    return {"studies": {s.study_uid for s in studies}, "shas": shas, "fhir": _fhir_rows(store, patient)}


def test_remove_patient_takes_out_the_patient_and_nothing_else(pair: Pair, tmp_path: Path) -> None:
    node = pair.copy_central(tmp_path / "central")
    record_path = node / "datasets" / f"{CENTRAL_DATASET}.json"
    old_record = json.loads(record_path.read_text())
    with NodeStore.open(node) as store:
        patients = sorted({s.patient_id for s in store.index.studies()})
        gone, kept = patients[0], patients[1:]
        before = store.counts()
        target = _state(store, gone)
        others = {p: _state(store, p) for p in kept}
        with store.engine.connect() as conn:
            ids = [(r.resource_type, r.id) for r in conn.execute(
                select(fhir_table.c.resource_type, fhir_table.c.id).where(fhir_table.c.patient_ref == f"Patient/{gone}"))]
        assert ids and target["fhir"]

        removed = store.remove_patient(CENTRAL_DATASET, gone)

        assert removed.patients == 1 and removed.studies == len(target["studies"])  # type: ignore[arg-type]
        assert removed.records == target["fhir"] and removed.objects == len(target["shas"])  # type: ignore[arg-type]
        after = store.counts()
        assert (after.patients, after.studies, after.series, after.instances) == (
            before.patients - 1, before.studies - removed.studies, before.series - removed.series,
            before.instances - removed.instances)
        assert store.index.studies(patient_id=gone) == [] and _fhir_rows(store, gone) == 0
        assert store.fhir.get("Patient", gone) is None
        with store.engine.connect() as conn:
            tokens = conn.execute(select(fhir_tokens_table.c.resource_type, fhir_tokens_table.c.id)).all()
        assert not {(t.resource_type, t.id) for t in tokens} & set(ids)
        assert not any(store.has_object(s) for s in target["shas"])  # type: ignore[attr-defined]
        assert gone not in tags_present(store, CENTRAL_DATASET)
        for p, state in others.items():  # everyone else exactly as before, objects intact
            assert _state(store, p) == state
        assert store.verify_objects() == []
        # the record says the new numbers, keeps its provenance and curation and its issue date
        record = json.loads(record_path.read_text())
        validate_record(record)
        assert record["healthdcatap:numberOfUniqueIndividuals"]["@value"] == before.patients - 1
        assert record["incisive:numberOfInstances"]["@value"] == after.instances
        assert record["dct:provenance"]["incisive:details"] == old_record["dct:provenance"]["incisive:details"]
        assert str(after.instances) in record["dct:provenance"]["rdfs:label"]
        for key in ("incisive:curation", "dct:issued"):
            assert record[key] == old_record[key]
        # again: nothing left to do, nothing changes
        digest = store.digest()
        again = store.remove_patient(CENTRAL_DATASET, gone)
        assert again == removal.Removed()
        assert store.digest() == digest and json.loads(record_path.read_text()) == record


def test_an_object_another_patient_still_names_is_kept(pair: Pair, tmp_path: Path) -> None:
    node = pair.copy_central(tmp_path / "central")
    with NodeStore.open(node) as store:
        a, b = sorted({s.patient_id for s in store.index.studies()})[:2]
        a_instance = store.index.instances(study_uid=store.index.studies(patient_id=a)[0].study_uid)[0]
        b_study = store.index.studies(patient_id=b)[0]
        b_series = store.index.series(study_uid=b_study.study_uid)[0]
        store.add_instances([InstanceRecord(dataset=CENTRAL_DATASET, patient_id=b, study_uid=b_study.study_uid,
                                            series_uid=b_series.series_uid, sop_uid="2.25.1234567890",
                                            sha256=a_instance.sha256, size=a_instance.size)])
        a_shas = _state(store, a)["shas"]
        removed = store.remove_patient(CENTRAL_DATASET, a)
        assert removed.objects == len(a_shas) - 1  # type: ignore[arg-type]
        assert store.has_object(a_instance.sha256) and store.verify_objects() == []
        assert store.index.instance("2.25.1234567890") is not None


def test_a_crash_after_the_commit_is_finished_by_the_next_removal(pair: Pair, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    node = pair.copy_central(tmp_path / "central")
    with NodeStore.open(node) as store:
        gone = sorted({s.patient_id for s in store.index.studies()})[0]
        shas = _state(store, gone)["shas"]

        def crash(_store: NodeStore, _shas: object) -> int:
            raise OSError("power lost between the commit and the unlinks")

        monkeypatch.setattr(removal, "_unlink_objects", crash)
        with pytest.raises(OSError, match="power lost"):
            store.remove_patient(CENTRAL_DATASET, gone)
        monkeypatch.undo()
        # the rows are gone, the files are still there, and listed
        assert store.index.studies(patient_id=gone) == [] and _fhir_rows(store, gone) == 0
        assert all(store.has_object(s) for s in shas)  # type: ignore[attr-defined]
        with store.engine.connect() as conn:
            listed = {r.sha256 for r in conn.execute(select(object_deletions_table.c.sha256))}
        assert listed == shas
        again = store.remove_patient(CENTRAL_DATASET, gone)
        assert again.patients == 0 and again.objects == len(shas)  # type: ignore[arg-type]
        assert not any(store.has_object(s) for s in shas)  # type: ignore[attr-defined]
        assert removal.sweep(store) == 0 and store.verify_objects() == []
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(object_deletions_table)).scalar_one() == 0
        record = json.loads((node / "datasets" / f"{CENTRAL_DATASET}.json").read_text())
        assert record["healthdcatap:numberOfUniqueIndividuals"]["@value"] == store.counts().patients


def test_remove_by_handle_and_a_removal_during_an_ingest(pair: Pair, tmp_path: Path) -> None:
    from incisive_lab.node._runs import node_lock

    node = pair.copy_central(tmp_path / "central")
    handle = next(iter(_handles(pair).values()))
    with NodeStore.open(node) as store:
        [(ds, anon)] = find_patients(store, handle)
        busy = r"an ingest \(or another removal\) is running"
        with node_lock(node / "private"), pytest.raises(RemovalError, match=busy):
            store.remove_patient(ds, anon)
        assert store.index.studies(patient_id=anon)
        [(ds2, anon2, r)] = removal.remove_by_handle(store, handle)
        assert (ds2, anon2) == (ds, anon) and r.patients == 1
        assert removal.remove_by_handle(store, handle) == []
