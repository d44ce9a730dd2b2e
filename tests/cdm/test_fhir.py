"""Clinical ETL: synthetic workbooks (raw and de-identified) to validated FHIR R4B resources."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B import get_fhir_model_class
from openpyxl import Workbook

from incisive_lab.cdm._fhir_resources import ConversionError, coding
from incisive_lab.cdm.codes import Code, all_concepts, system_uris
from incisive_lab.cdm.fhir import (
    DICOM_UID_SYSTEM,
    EtlResult,
    SeriesSummary,
    StudySummary,
    canonical_json,
    parse_rows,
    read_clinical_rows,
    rows_to_fhir,
    workbook_to_fhir,
)
from incisive_lab.cdm.spreadsheet import read_workbook
from incisive_lab.cdm.template import column
from incisive_lab.dicom.synth import generate
from incisive_lab.errors import IncisiveLabError

SITES = ("a", "b", "c")
ALL_TYPES = {"Patient", "Condition", "Observation", "Procedure", "MedicationStatement", "ImagingStudy", "Consent"}
SCT, LOINC, ICDO3 = (system_uris()[k] for k in ("SCT", "LOINC", "ICDO3"))


# --- fixtures: a small synthetic federation, raw and de-identified ------------------------------

@pytest.fixture(scope="module")
def raw_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("etl") / "raw"
    generate(out, patients=6, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def deid_set(raw_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from incisive_lab.deid import Profile, Secret, deidentify_tree
    from incisive_lab.deid.clinical import deidentify_workbook

    out = tmp_path_factory.mktemp("etl") / "deid"
    secret = Secret(b"test-only secret for the ETL tests")
    profile = Profile(["retain-longitudinal-modified-dates"])
    for site in SITES:
        deidentify_tree(raw_set / site / "dicom", out / site / "dicom", profile=profile, secret=secret,
                        progress=False)
        report = deidentify_workbook(raw_set / site / "clinical.xlsx", out / site / "clinical.xlsx",
                                     profile=profile, secret=secret)
        assert report["status"] == "ok"
    return out


def studies_of(dicom_root: Path) -> list[StudySummary]:
    """Study summaries of a DICOM tree, as a node index would hold them."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(dicom_root.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study = found.setdefault(ds.StudyInstanceUID, {"patient": ds.PatientID, "accession": ds.get("AccessionNumber"),
                                                       "date": ds.get("StudyDate"), "series": {}})
        series = study["series"].setdefault(ds.SeriesInstanceUID, [ds.Modality, 0, ds.get("SeriesNumber")])
        series[1] += 1
    out = []
    for uid, s in sorted(found.items()):
        started = dt.datetime.strptime(s["date"], "%Y%m%d").date() if s["date"] else None
        series = tuple(SeriesSummary(su, m, n, int(num) if num is not None else None)
                       for su, (m, n, num) in sorted(s["series"].items()))
        out.append(StudySummary(str(s["patient"]), uid, accession=s["accession"] or None, started=started,
                                series=series))
    return out


@pytest.fixture(scope="module")
def deid_results(deid_set: Path) -> dict[str, EtlResult]:
    return {site: workbook_to_fhir(deid_set / site / "clinical.xlsx", imaging=studies_of(deid_set / site / "dicom"),
                                   require_pseudonyms=True)
            for site in SITES}


def codings(node: Any) -> Iterator[dict[str, Any]]:
    """Every Coding (a dict with ``system`` and ``code``) inside a resource."""
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            yield node
        for value in node.values():
            yield from codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from codings(value)


def write_xlsx(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]],
               extra_sheets: Sequence[str] = ()) -> Path:
    """A workbook written with openpyxl directly (malformed on purpose where a test wants it)."""
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "patients"
    ws.append(list(header))
    for row in rows:
        ws.append(list(row))
    for name in extra_sheets:
        wb.create_sheet(name).append(["anything"])
    wb.save(path)
    return path


@pytest.fixture()
def good_rows(deid_set: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a de-identified site workbook, to be broken by a test."""
    rows = read_workbook(deid_set / "a" / "clinical.xlsx")
    return list(rows[0]), rows


def as_lists(header: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [[r.get(h) for h in header] for r in rows]


# --- conversion of the synthetic set -------------------------------------------------------------

def test_every_resource_type_appears_and_validates(deid_results: dict[str, EtlResult]) -> None:
    seen: set[str] = set()
    for result in deid_results.values():
        assert result.quarantined == ()
        assert result.warnings == ()
        for resource in result.resources():
            seen.add(resource["resourceType"])
            model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            assert model.model_dump(mode="json", exclude_none=True) == resource
    assert seen == ALL_TYPES
    total = sum(len(r.patients) for r in deid_results.values())
    assert total == 6
    counts = [r.counts() for r in deid_results.values()]
    assert sum(c["Patient"] for c in counts) == 6
    assert sum(c["Consent"] for c in counts) == 6
    assert sum(c["Condition"] for c in counts) == 6


def test_codes_come_from_the_tables(deid_results: dict[str, EtlResult], deid_set: Path) -> None:
    table = {(system_uris()[c.system], c.code): c.display for c in all_concepts().values()}
    systems = set()
    for result in deid_results.values():
        for resource in result.resources():
            for c in codings(resource):
                if c["system"] in (SCT, LOINC, ICDO3):
                    systems.add(c["system"])
                    assert table.get((c["system"], c["code"])) == c["display"], c
    assert systems == {SCT, LOINC, ICDO3}
    # the diagnosis is the SNOMED CT code of the row's cancer type, the site ICD-O-3 + SNOMED CT
    for site in SITES:
        for row in read_workbook(deid_set / site / "clinical.xlsx"):
            resources = deid_results[site].patients[row["patient_id"]].resources
            condition = next(r for r in resources if r["resourceType"] == "Condition")
            expected = column("cancer_type").values[row["cancer_type"]][0]  # type: ignore[index]
            assert condition["code"]["coding"] == [{"system": SCT, "code": expected.code, "display": expected.display}]
            site_codes = [(c["system"], c["code"]) for c in condition["bodySite"][0]["coding"]]
            assert (ICDO3, row["primary_site"]) in site_codes
            stage = next(r for r in resources if r["resourceType"] == "Observation"
                         and r["code"]["coding"][0]["code"] == "21908-9")
            assert stage["valueCodeableConcept"]["coding"][0]["code"] == row["stage_group"]
            assert len(stage["hasMember"]) == 3


def test_imaging_study_links_patient_and_study_uid(deid_results: dict[str, EtlResult], deid_set: Path) -> None:
    for site in SITES:
        result = deid_results[site]
        studies = studies_of(deid_set / site / "dicom")
        assert studies and result.unlinked_studies == () and result.unlinked_records == ()
        assert len(result.links) == len(studies) and all(x.by == "accession" for x in result.links)
        for study in studies:
            assert study.patient_pseudonym.startswith("PSN-")
            patient = result.patients[study.patient_pseudonym]
            assert patient.resources[0]["resourceType"] == "Patient"
            assert patient.resources[0]["id"] == study.patient_pseudonym  # DICOM PatientID == Patient.id
            imaging = [r for r in patient.resources if r["resourceType"] == "ImagingStudy"
                       and {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_uid}"} in r["identifier"]]
            assert len(imaging) == 1
            resource = imaging[0]
            assert resource["subject"] == {"reference": f"Patient/{study.patient_pseudonym}"}
            assert resource["numberOfInstances"] == sum(s.n_instances for s in study.series)
            assert {s["uid"] for s in resource["series"]} == {s.uid for s in study.series}
            assert any(i.get("value") == study.accession for i in resource["identifier"])
            lesion = next(r for r in patient.resources if r["resourceType"] == "Observation"
                          and r["code"].get("text", "").startswith("Tumour visible"))
            assert {"reference": f"ImagingStudy/{resource['id']}"} in lesion["derivedFrom"]


def test_no_names_addresses_or_identifiers_in_fhir(raw_set: Path, deid_results: dict[str, EtlResult]) -> None:
    for site in SITES:
        text = "\n".join(canonical_json(r) for r in deid_results[site].resources())
        for row in read_workbook(raw_set / site / "clinical.xlsx"):
            for name in ("patient_id", "family_name", "given_name", "address", "phone", "national_id", "email"):
                assert str(row[name]) not in text
            assert row["birth_date"].isoformat() not in text
        for resource in deid_results[site].resources():
            if resource["resourceType"] == "Patient":
                assert not {"name", "address", "telecom", "birthDate"} & set(resource)


def test_rerun_gives_identical_resources(deid_set: Path, deid_results: dict[str, EtlResult]) -> None:
    for site in SITES:
        again = workbook_to_fhir(deid_set / site / "clinical.xlsx", imaging=studies_of(deid_set / site / "dicom"),
                                 require_pseudonyms=True)
        before = deid_results[site]
        assert list(again.patients) == list(before.patients)
        for pid, patient in again.patients.items():
            assert patient.digest == before.patients[pid].digest
            assert [canonical_json(r) for r in patient.resources] == [
                canonical_json(r) for r in before.patients[pid].resources]
        ids = [r["id"] for r in again.resources()]
        assert len(ids) == len(set(ids))


def test_raw_workbook_is_accepted_without_reading_identifiers(raw_set: Path) -> None:
    path = raw_set / "a" / "clinical.xlsx"
    result = workbook_to_fhir(path, imaging=studies_of(raw_set / "a" / "dicom"))
    assert len(result.patients) == 2 and result.quarantined == ()
    assert any("family_name" in w and "not read" in w for w in result.warnings)
    text = "\n".join(canonical_json(r) for r in result.resources())
    for row in read_workbook(path):
        assert row["family_name"] not in text and row["address"] not in text
    # ingest's guard: a raw workbook is refused row by row, and the MRN is not repeated
    guarded = workbook_to_fhir(path, require_pseudonyms=True)
    assert guarded.patients == {}
    assert [q.pseudonym for q in guarded.quarantined] == [None, None]
    assert all("not a pseudonym" in str(q.problems[0]) for q in guarded.quarantined)


def test_dates_removed_by_deidentification_are_not_required(good_rows: tuple[list[str], list[dict[str, Any]]],
                                                          tmp_path: Path) -> None:
    header, rows = good_rows
    kept = [h for h in header if column(h).phi_category != "date"]
    result = workbook_to_fhir(write_xlsx(tmp_path / "nodates.xlsx", kept, as_lists(kept, rows)))
    assert result.quarantined == () and len(result.patients) == len(rows)
    assert "onsetDateTime" not in json.dumps([r for r in result.resources() if r["resourceType"] == "Condition"])


# --- linking --------------------------------------------------------------------------------------

def test_unlinked_studies_and_records_are_reported(deid_set: Path) -> None:
    workbook = read_clinical_rows(deid_set / "a" / "clinical.xlsx")
    studies = studies_of(deid_set / "a" / "dicom")
    first, second = sorted({s.patient_pseudonym for s in studies})
    kept = [s for s in studies if s.patient_pseudonym != second]  # second patient: no imaging
    stranger = StudySummary("PSN-AAAAAAAAAAAAAAAA", "2.25.1", accession="AZZZ", series=(SeriesSummary("2.25.2", "CT", 3),))
    by_patient = StudySummary(first, "2.25.3", accession=None, series=(SeriesSummary("2.25.4", "MR", 1),))
    mismatch = StudySummary(first, "2.25.5", accession=next(s.accession for s in studies if s.patient_pseudonym == second),
                            series=(SeriesSummary("2.25.6", "CT", 1),))
    broken = StudySummary(first, "not-a-uid", series=(SeriesSummary("2.25.7", "ct scan", 1),))
    result = rows_to_fhir(workbook, imaging=[*kept, stranger, by_patient, mismatch, broken])
    reasons = {u.study_uid: u.reason for u in result.unlinked_studies}
    assert "no clinical record for patient PSN-AAAAAAAAAAAAAAAA" in reasons["2.25.1"]
    assert "is listed for patient " + second in reasons["2.25.5"]
    assert "not a DICOM UID" in reasons["not-a-uid"] and "not a DICOM modality" in reasons["not-a-uid"]
    assert any(x.study_uid == "2.25.3" and x.by == "patient" for x in result.links)
    (record,) = result.unlinked_records
    assert record.pseudonym == second and record.linked_studies == 0 and record.missing_accessions
    assert "no imaging study" in record.reason
    assert result.to_dict()["unlinked_records"][0]["patient"] == second
    json.dumps(result.to_dict())


def test_fhir_validation_failure_quarantines_that_patient_only(deid_set: Path) -> None:
    studies = studies_of(deid_set / "a" / "dicom")
    victim = studies[0]
    bad = StudySummary(victim.patient_pseudonym, victim.study_uid, accession=victim.accession,
                       series=(SeriesSummary(victim.series[0].uid, victim.series[0].modality, -1),))
    result = workbook_to_fhir(deid_set / "a" / "clinical.xlsx", imaging=[bad, *studies[1:]])
    assert victim.patient_pseudonym not in result.patients and len(result.patients) == 1
    (q,) = result.quarantined
    assert q.pseudonym == victim.patient_pseudonym
    assert "ImagingStudy/" in q.problems[0].reason and "not valid FHIR R4B" in q.problems[0].reason
    assert any(u.study_uid == victim.study_uid and "quarantined" in u.reason for u in result.unlinked_studies)


def test_a_code_outside_the_tables_is_refused() -> None:
    with pytest.raises(ConversionError, match="not in the code tables"):
        coding(Code("SCT", "999999999", "Invented (finding)"), "grade")
    with pytest.raises(ConversionError, match="differs from the code tables"):
        coding(Code("LOINC", "2857-1", "PSA, spelled differently"), "psa_ng_ml")
    with pytest.raises(ConversionError, match="unknown system"):
        coding(Code("ICD10", "C34.1", "Upper lobe"), "primary_site")


# --- malformed workbooks --------------------------------------------------------------------------

def test_missing_column_names_file_and_column(good_rows: tuple[list[str], list[dict[str, Any]]], tmp_path: Path) -> None:
    header, rows = good_rows
    cut = [h for h in header if h not in ("stage_group", "consent_status")]
    path = write_xlsx(tmp_path / "cut.xlsx", cut, as_lists(cut, rows))
    with pytest.raises(IncisiveLabError, match=r"cut\.xlsx: sheet 'patients': missing required columns "
                                               r"stage_group, consent_status"):
        read_clinical_rows(path)


def test_wrong_types_and_unknown_codes_quarantine_the_row_only(good_rows: tuple[list[str], list[dict[str, Any]]],
                                                               tmp_path: Path) -> None:
    header, rows = good_rows
    broken = dict(rows[0], ecog="two", clinical_t="cT9", treatment_start_date="31/02/2020")
    path = write_xlsx(tmp_path / "bad.xlsx", header, as_lists(header, [broken, rows[1]]))
    result = workbook_to_fhir(path)
    assert list(result.patients) == [rows[1]["patient_id"]]
    (q,) = result.quarantined
    assert q.row == 2 and q.pseudonym == rows[0]["patient_id"]
    messages = {p.column: str(p) for p in q.problems}
    assert messages["ecog"] == "bad.xlsx, sheet 'patients', row 2, column 'ecog': expected an integer, got text 'two'"
    assert "unknown code 'cT9' (allowed: cT1, cT2, cT3, cT4)" in messages["clinical_t"]
    assert "row 2, column 'treatment_start_date': unparseable date '31/02/2020'" in messages["treatment_start_date"]
    assert result.counts()["Patient"] == 1


def test_decimal_text_and_required_values(good_rows: tuple[list[str], list[dict[str, Any]]], tmp_path: Path) -> None:
    header, rows = good_rows
    colorectal = next(r for r in rows if r["cancer_type"] == "colorectal")
    other = next(r for r in rows if r is not colorectal)
    variants = [
        dict(colorectal, cea_ng_ml="high"),
        dict(colorectal, patient_id="PSN-BBBBBBBBBBBBBBBB", accession_numbers="AB1", cea_ng_ml=None),
        dict(colorectal, patient_id="PSN-CCCCCCCCCCCCCCCC", accession_numbers="AC1", psa_ng_ml=4.2),
        dict(colorectal, patient_id="PSN-DDDDDDDDDDDDDDDD", accession_numbers="AD1", cea_ng_ml="3.5"),
        dict(other, ecog=7),
    ]
    result = workbook_to_fhir(write_xlsx(tmp_path / "vals.xlsx", header, as_lists(header, variants)))
    problems = {q.row: [(p.column, p.reason) for p in q.problems] for q in result.quarantined}
    assert problems[2] == [("cea_ng_ml", "expected a number, got text 'high'")]
    assert problems[3] == [("cea_ng_ml", "required for cancer_type colorectal")]
    assert problems[4] == [("psa_ng_ml", "must be empty for cancer_type colorectal (applies to prostate)")]
    assert problems[6] == [("ecog", "7 is above the maximum 4")]
    assert list(result.patients) == ["PSN-DDDDDDDDDDDDDDDD"]  # a number written as text is accepted
    psa = [r for r in result.resources() if r.get("valueQuantity")]
    assert psa[0]["valueQuantity"] == {"value": 3.5, "unit": "ng/mL", "system": "http://unitsofmeasure.org",
                                       "code": "ng/mL"}


def test_duplicate_patient_and_accession(good_rows: tuple[list[str], list[dict[str, Any]]]) -> None:
    _, rows = good_rows
    copy = dict(rows[0])
    parsed = parse_rows([rows[0], rows[1], copy], source="mem.xlsx")
    assert [r.ok for r in parsed] == [False, True, False]
    assert "the same patient_id is on row 4" in str(parsed[0].problems[0])
    assert any(p.column == "accession_numbers" for p in parsed[2].problems)


def test_extra_sheet_warns_or_fails(good_rows: tuple[list[str], list[dict[str, Any]]], tmp_path: Path) -> None:
    header, rows = good_rows
    path = write_xlsx(tmp_path / "extra.xlsx", header, as_lists(header, rows), extra_sheets=["notes"])
    workbook = read_clinical_rows(path)
    assert workbook.warnings == ("extra.xlsx: extra sheet 'notes': the template has only 'patients'; not read",)
    assert all(r.ok for r in workbook.rows)
    assert workbook_to_fhir(path).warnings == workbook.warnings
    with pytest.raises(IncisiveLabError, match=r"extra\.xlsx: extra sheet 'notes'"):
        read_clinical_rows(path, extra_sheets="error")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty\.xlsx: the file is empty"),
        (b"patient_id,sex\nX,female\n", r"empty\.xlsx: not a readable \.xlsx workbook"),
        (b"PK\x03\x04 truncated", r"empty\.xlsx: not a readable \.xlsx workbook"),
    ],
)
def test_empty_and_non_xlsx_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "empty.xlsx"
    path.write_bytes(content)
    with pytest.raises(IncisiveLabError, match=message):
        read_clinical_rows(path)


def test_workbook_structure_errors(tmp_path: Path) -> None:
    with pytest.raises(IncisiveLabError, match=r"gone\.xlsx: no such file"):
        read_clinical_rows(tmp_path / "gone.xlsx")
    wb = Workbook()
    wb.save(tmp_path / "blank.xlsx")  # one sheet called "Sheet"
    with pytest.raises(IncisiveLabError, match=r"blank\.xlsx: no sheet named 'patients' \(sheets: 'Sheet'\)"):
        read_clinical_rows(tmp_path / "blank.xlsx")
    with pytest.raises(IncisiveLabError, match=r"nohead\.xlsx: sheet 'patients' is empty"):
        read_clinical_rows(write_xlsx(tmp_path / "nohead.xlsx", [], []))
    with pytest.raises(IncisiveLabError, match=r"dup\.xlsx: sheet 'patients': duplicate columns sex"):
        read_clinical_rows(write_xlsx(tmp_path / "dup.xlsx", ["patient_id", "sex", "sex"], []))


def test_identifier_system_must_be_a_uri() -> None:
    with pytest.raises(IncisiveLabError, match="not a URI"):
        rows_to_fhir([], identifier_system="node pseudonyms")
