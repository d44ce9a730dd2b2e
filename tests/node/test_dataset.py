"""The HealthDCAT-AP dataset record: fields, counts from the index, validation, rewrites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.node import NodeStore, RecordError, validate_record
from incisive_lab.node.dataset import country_code
from tests.node.conftest import write_files

PROVENANCE = {"run": "r1", "deidentification": {"mode": "pseudonymize", "options": []}}
CURATION = {"errors": 0, "warnings": 2, "quarantined_series": 0}


def _store(tmp_path: Path) -> NodeStore:
    store = NodeStore.open(tmp_path / "node")
    store.add_dicom_files(write_files(tmp_path / "deid"), dataset="lung-a",
                          body_part_codes={"CHEST": "51185008"})
    store.index.set_cancer_types("lung-a", {"PSN-0001": ("363358000", "Lung cancer")})
    return store


def _write(store: NodeStore, now: str = "2026-01-02T03:04:05Z", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"hosting": "federated", "provenance": PROVENANCE,
                            "curation": CURATION, "country": "GR", "title": "Lung A",
                            **kw}
    path = store.write_dataset_record("lung-a", now=now, **args)
    assert path == store.dir / "datasets" / "lung-a.json"
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def test_record_has_healthdcat_fields_and_index_counts(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        rec = _write(store)
        counts = store.counts(dataset="lung-a")
    assert rec["@type"] == "dcat:Dataset" and rec["dct:identifier"] == "lung-a"
    assert rec["@context"]["healthdcatap"] == "http://healthdataportal.eu/ns/health#"
    assert rec["dct:title"]["@value"] == "Lung A"
    assert "3 patients" in rec["dct:description"]["@value"]
    assert rec["dcat:theme"] == [
        {"@id": "http://publications.europa.eu/resource/authority/data-theme/HEAL"}]
    assert rec["dct:spatial"]["@id"].endswith("/country/GRC")
    assert rec["dct:publisher"]["foaf:name"] == "INCISIVE node node"
    assert rec["healthdcatap:numberOfUniqueIndividuals"]["@value"] == counts.patients == 3
    assert rec["healthdcatap:numberOfRecords"]["@value"] == counts.instances == 18
    assert rec["incisive:numberOfStudies"]["@value"] == counts.studies
    assert rec["incisive:numberOfSeries"]["@value"] == counts.series == 6
    assert [m["skos:notation"] for m in rec["incisive:modality"]] == ["CT", "MR"]
    assert rec["incisive:bodyPart"] == [{"@id": "http://snomed.info/id/51185008",
                                         "incisive:snomedCode": "51185008",
                                         "skos:notation": "CHEST"}]
    assert rec["healthdcatap:healthTheme"][0]["@id"] == "http://snomed.info/id/363358000"
    assert rec["incisive:hosting"] == "federated"
    assert rec["dct:provenance"]["incisive:details"] == PROVENANCE
    assert "pseudonymize" in rec["dct:provenance"]["rdfs:label"]
    assert rec["incisive:curation"] == CURATION
    assert rec["dct:temporal"]["dcat:startDate"]["@value"] == "2020-01-02"
    assert rec["dct:issued"]["@value"] == rec["dct:modified"]["@value"] == "2026-01-02T03:04:05Z"
    assert "incisive:accessTerms" not in rec and "dct:accessRights" not in rec


def test_same_content_keeps_dates_changed_content_updates_modified(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        first = _write(store)
        path = store.dataset_record_path("lung-a")
        mtime = path.stat().st_mtime_ns
        assert _write(store, now="2026-05-05T00:00:00Z") == first
        assert path.stat().st_mtime_ns == mtime  # untouched
        changed = _write(store, now="2026-06-06T00:00:00Z",
                         curation={**CURATION, "warnings": 3})
    assert changed["dct:issued"] == first["dct:issued"]
    assert changed["dct:modified"]["@value"] == "2026-06-06T00:00:00Z"
    assert list((tmp_path / "node" / "datasets").iterdir()) == [path]  # no temp files left


def test_missing_field_is_named(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        rec = _write(store)
    validate_record(rec)
    for key in ("dct:title", "dct:publisher", "healthdcatap:numberOfUniqueIndividuals",
                "dct:provenance", "incisive:curation", "dct:modified", "incisive:modality"):
        broken = {k: v for k, v in rec.items() if k != key}
        with pytest.raises(RecordError, match=key):
            validate_record(broken)
    with pytest.raises(RecordError, match="incisive:hosting"):
        validate_record({**rec, "incisive:hosting": "cloud"})
    with pytest.raises(RecordError, match="numberOfRecords"):
        validate_record({**rec, "healthdcatap:numberOfRecords": {"@value": -1}})


def test_country_codes() -> None:
    assert country_code("gr") == "GRC" and country_code("ITA") == "ITA"
    with pytest.raises(RecordError, match="dct:spatial"):
        country_code("Greece")


def test_record_of_an_anonymised_dataset_without_country(tmp_path: Path) -> None:
    with NodeStore.open(tmp_path / "node") as store:
        store.add_dicom_files(write_files(tmp_path / "deid", n_patients=1), dataset="lung-a")
        rec = _write(store, hosting="central", country=None, title=None,
                     provenance={"deidentification": {"mode": "anonymize"}},
                     publisher="Hospital X")
    assert "dct:spatial" not in rec and rec["incisive:hosting"] == "central"
    assert rec["dct:title"]["@value"] == "lung-a"
    assert rec["dct:publisher"]["foaf:name"] == "Hospital X"
    assert "anonymised" in rec["dct:description"]["@value"]
