"""The DICOM index on SQLite and PostgreSQL: idempotence, counts, digest, queries."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pydicom
import pytest

from incisive_lab.node import InstanceRecord, NodeStore, StoreError, extract_record
from incisive_lab.node._header import HeaderUnsupported, read_header
from incisive_lab.node.index import _read_with_pydicom
from tests.node.conftest import OpenStore, make_dicom, uid


def _records(store: NodeStore, *, dataset: str = "lung", patients: int = 4, series: int = 2,
             instances: int = 3) -> list[InstanceRecord]:
    out = []
    for p in range(1, patients + 1):
        for s in range(1, series + 1):
            for i in range(1, instances + 1):
                data = make_dicom(patient=p, series=s, instance=i,
                                  modality="CT" if s == 1 else "MR",
                                  body_part="CHEST" if p % 2 else "PROSTATE",
                                  sex="F" if p % 2 else "M")
                obj = store.add_bytes(data)
                out.append(extract_record(data, dataset=dataset, sha256=obj.sha256,
                                          body_part_codes={"CHEST": "51185008"}))
    return out


def test_readding_adds_nothing_and_counts_equal_inserts(open_store: OpenStore) -> None:
    store = open_store()
    recs = _records(store)
    res = store.add_instances(recs)
    assert (res.patients, res.studies, res.series, res.instances) == (4, 4, 8, 24)
    again = store.add_instances(recs)
    assert (again.patients, again.studies, again.series, again.instances) == (0, 0, 0, 0)
    counts = store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (4, 4, 8, 24)
    assert store.counts(dataset="lung") == counts
    assert store.counts(dataset="other").instances == 0


def test_digest_ignores_order_and_batching(open_store: OpenStore) -> None:
    a, b = open_store("a"), open_store("b")
    recs_a = _records(a)
    a.add_instances(recs_a)
    recs_b = _records(b)
    random.Random(3).shuffle(recs_b)
    b.add_instances(recs_b[:7])
    b.add_instances(recs_b[7:])
    assert a.digest() == b.digest()
    for store in (a, b):
        store.fhir.put({"resourceType": "Patient", "id": "PSN-0001"})
    assert a.digest() == b.digest()


def test_digest_differs_when_one_row_differs(open_store: OpenStore) -> None:
    a, b = open_store("a"), open_store("b")
    a.add_instances(_records(a))
    recs = _records(b)
    recs[5] = dataclasses.replace(recs[5], series_description="Changed")
    recs[3] = dataclasses.replace(recs[3], series_description="Changed")  # same series
    b.add_instances(recs)
    assert a.digest(include_objects=False) != b.digest(include_objects=False)


def test_digest_is_equal_across_backends(open_store: OpenStore, backend: str,
                                         tmp_path: Path) -> None:
    store = open_store()
    store.add_instances(_records(store))
    store.fhir.put({"resourceType": "Patient", "id": "PSN-0001", "gender": "female"})
    with NodeStore.open(tmp_path / "sqlite-twin") as twin:
        twin.add_instances(_records(twin))
        twin.fhir.put({"resourceType": "Patient", "id": "PSN-0001", "gender": "female"})
        assert twin.digest() == store.digest()


def test_conflicting_content_is_refused_and_nothing_written(open_store: OpenStore) -> None:
    store = open_store()
    recs = _records(store, patients=1, series=1, instances=2)
    store.add_instances(recs[:1])
    other = store.add_bytes(b"other bytes")
    bad = dataclasses.replace(recs[0], sha256=other.sha256)
    with pytest.raises(StoreError, match=f"instance {recs[0].sop_uid} is already stored"):
        store.add_instances([recs[1], bad])
    assert store.counts().instances == 1  # recs[1] rolled back with the batch


def test_study_belongs_to_one_dataset(open_store: OpenStore) -> None:
    store = open_store()
    recs = _records(store, patients=1, series=1, instances=1)
    store.add_instances(recs)
    moved = dataclasses.replace(recs[0], dataset="other", sop_uid=uid(9, 9, 9, 9))
    with pytest.raises(StoreError, match="already stored in dataset lung"):
        store.add_instances([moved])


def test_invalid_record_names_the_field(open_store: OpenStore) -> None:
    store = open_store()
    (rec,) = _records(store, patients=1, series=1, instances=1)
    with pytest.raises(StoreError, match="study_uid 'not-a-uid' is not a DICOM UID"):
        store.add_instances([dataclasses.replace(rec, study_uid="not-a-uid")])
    with pytest.raises(StoreError, match="patient_id is missing"):
        store.add_instances([dataclasses.replace(rec, patient_id="")])


def test_queries(open_store: OpenStore) -> None:
    store = open_store()
    store.add_instances(_records(store))
    idx = store.index
    studies = idx.studies()
    assert [s.study_date for s in studies] == sorted(s.study_date or "" for s in studies)
    first = studies[0]
    assert first.modalities_in_study == ("CT", "MR")
    assert (first.number_of_series, first.number_of_instances) == (2, 6)
    assert first.patient_sex in ("F", "M") and first.patient_age == "061Y"
    assert len(idx.studies(patient_id="PSN-0002")) == 1
    assert len(idx.studies(limit=2, offset=3)) == 1
    assert len(idx.studies(modality="MR")) == 4
    assert len(idx.studies(accession_number=first.accession_number)) == 1
    assert len(idx.studies(date_from="20200103", date_to="20200104")) == 2
    series = idx.series(study_uid=first.study_uid)
    assert [s.series_number for s in series] == [1, 2]
    assert [s.number_of_instances for s in series] == [3, 3]
    assert len(idx.series(body_part_code="51185008")) == 4
    inst = idx.instances(series_uid=series[0].series_uid)
    assert [i.instance_number for i in inst] == [1, 2, 3]
    assert inst[0].rows == 2 and inst[0].transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert idx.instance(inst[0].sop_uid) == inst[0]
    assert idx.instance("1.2.3") is None


def test_cohort_counts_and_annotations(open_store: OpenStore) -> None:
    store = open_store()
    store.add_instances(_records(store))
    idx = store.index
    assert idx.counts(modality="MR") == idx.counts(modality="MR")
    mr = idx.counts(modality="MR")
    assert (mr.patients, mr.studies, mr.series, mr.instances) == (4, 4, 4, 12)
    assert idx.counts(body_part_code="51185008").patients == 2
    assert idx.set_body_part_codes({"PROSTATE": "41216001"}) == 4
    assert idx.set_body_part_codes({"PROSTATE": "41216001"}) == 0
    assert idx.counts(body_part_code="41216001").patients == 2
    n = idx.set_cancer_types("lung", {"PSN-0001": ("363358000", "Lung cancer"),
                                      "PSN-0003": ("363358000", "Lung cancer"),
                                      "PSN-0404": ("363358000", "Lung cancer")})
    assert n == 2
    lung = idx.counts(cancer_type_code="363358000", modality="CT")
    assert (lung.patients, lung.series, lung.instances) == (2, 2, 6)
    summary = idx.summary("lung")
    assert summary.modalities == ("CT", "MR")
    assert summary.cancer_types == (("363358000", "Lung cancer"),)
    assert summary.body_parts == (("CHEST", "51185008"), ("PROSTATE", "41216001"))
    assert summary.sexes == (("F", 2), ("M", 2))


def test_dataset_hosting_cannot_change(open_store: OpenStore) -> None:
    idx = open_store().index
    idx.register_dataset("d", hosting="federated", title="T")
    idx.register_dataset("d", hosting="federated", country="GRC")
    info = idx.dataset("d")
    assert info is not None and (info.title, info.country) == ("T", "GRC")
    with pytest.raises(StoreError, match="cannot become 'central'"):
        idx.register_dataset("d", hosting="central")
    with pytest.raises(StoreError, match="hosting 'cloud'"):
        idx.register_dataset("e", hosting="cloud")


def test_extract_record_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(make_dicom(patient=5, modality="MR", body_part="PROSTATE"))
    rec = extract_record(path, dataset="d", body_part_codes={"PROSTATE": "41216001"})
    assert (rec.patient_id, rec.modality, rec.body_part_code) == ("PSN-0005", "MR", "41216001")
    assert rec.size == path.stat().st_size and rec.rows == 2 and rec.series_number == 1
    with pytest.raises(StoreError, match="not a readable DICOM file"):
        extract_record(b"\0" * 200, dataset="d")


def test_missing_identifier_names_the_attribute(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(make_dicom()))
    del ds.PatientID
    path = tmp_path / "nopid.dcm"
    ds.save_as(path)
    with pytest.raises(StoreError, match=f"{path}: PatientID is missing"):
        extract_record(path, dataset="d")


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_fast_header_reader_agrees_with_pydicom() -> None:
    """Every pydicom test file the fast reader accepts reads the same as with pydicom."""
    files = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))
    compared = 0
    for path in files:
        data = path.read_bytes()
        try:
            fast = read_header(data)
        except HeaderUnsupported:
            continue
        slow = _read_with_pydicom(data)
        for key in set(fast) | set(slow):
            if fast.get(key) in (None, "") and slow.get(key) in (None, ""):
                continue
            assert fast.get(key) == slow.get(key), (path.name, key)
        compared += 1
    assert compared >= 40
    for data in (make_dicom(), make_dicom(modality="MR", description="Ax T2 ä")):
        assert read_header(data) == {k: v for k, v in _read_with_pydicom(data).items()
                                     if v is not None}
