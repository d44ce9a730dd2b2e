"""clinical.xlsx: follows the template, carries the same identities as the DICOM files
(pseudonym stability), agrees with the imaging ground truth and is clinically coherent."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from incisive_lab.cdm.spreadsheet import read_workbook
from incisive_lab.cdm.template import COLUMNS, SHEET_NAME, validate_row
from tests.dicom._helpers import iter_entries, load_truth, read


def _rows(out: Path, site: str) -> list[dict[str, Any]]:
    return read_workbook(out / site / "clinical.xlsx")


def test_workbook_follows_the_template(small_set: Path) -> None:
    for site, truth in load_truth(small_set).items():
        wb = load_workbook(small_set / site / "clinical.xlsx")
        assert wb.sheetnames == [SHEET_NAME]
        ws = wb[SHEET_NAME]
        header = [c.value for c in next(ws.iter_rows(max_row=1))]
        assert header == [c.name for c in COLUMNS]
        date_columns = {i for i, c in enumerate(COLUMNS) if c.type == "date"}
        for row in ws.iter_rows(min_row=2):
            for i in date_columns:
                if row[i].value is not None:
                    assert row[i].is_date and isinstance(row[i].value, dt.datetime)
        rows = _rows(small_set, site)
        assert len(rows) == len(truth["patients"])  # one row per patient
        for row in rows:
            assert validate_row(row) == [], row["patient_id"]


def test_identities_match_the_dicom_files(small_set: Path) -> None:
    """Pseudonym stability needs the same identities on both sides."""
    dicom: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for site, _, entry, path in iter_entries(small_set):
        ds = read(path)
        d = dicom[(site, entry["patient_id"])]
        d["PatientID"].add(ds.PatientID)
        d["PatientName"].add(str(ds.PatientName))
        d["PatientBirthDate"].add(ds.PatientBirthDate)
        d["PatientSex"].add(ds.PatientSex)
        d["AccessionNumber"].add(ds.AccessionNumber)
        d["IssuerOfPatientID"].add(ds.IssuerOfPatientID)
        if "PatientAddress" in ds:
            d["PatientAddress"].add(ds.PatientAddress)
        if "PatientTelephoneNumbers" in ds:
            d["PatientTelephoneNumbers"].add(ds.PatientTelephoneNumbers)
        if "OtherPatientIDsSequence" in ds:
            d["national"].add(ds.OtherPatientIDsSequence[0].PatientID)
    for site in load_truth(small_set):
        for row in _rows(small_set, site):
            d = dicom[(site, row["patient_id"])]
            assert d["PatientID"] == {row["patient_id"]}
            assert d["IssuerOfPatientID"] == {row["issuer_of_patient_id"]}
            assert d["PatientName"] == {f"{row['family_name']}^{row['given_name']}"}
            assert d["PatientBirthDate"] == {row["birth_date"].strftime("%Y%m%d")}
            assert d["PatientSex"] == {row["sex"][0].upper()}
            assert d["AccessionNumber"] == set(row["accession_numbers"].split(";"))
            assert d["PatientAddress"] <= {row["address"]}
            assert d["PatientTelephoneNumbers"] <= {row["phone"]}
            assert d["national"] <= {row["national_id"]}


def test_spreadsheet_phi_is_in_the_manifest(small_set: Path) -> None:
    from incisive_lab.cdm.template import column

    for site, truth in load_truth(small_set).items():
        patients = {p["patient_id"]: p for p in truth["patients"]}
        for row in _rows(small_set, site):
            p = patients[row["patient_id"]]
            tokens = {t.lower() for t in p["phi_tokens"]} | {
                t.lower() for t in truth["site_phi_tokens"]}
            for name, value in row.items():
                if value is None:
                    continue
                category = column(name).phi_category
                if category == "direct-identifier":
                    assert str(value).lower() in tokens, (name, value)
                elif category == "date":
                    assert value.strftime("%Y%m%d") in p["phi_dates"], (name, value)
                elif category == "link":
                    assert all(a.lower() in tokens for a in value.split(";"))
                elif category == "free-text":
                    rest = str(value).lower()
                    for t in sorted(tokens, key=len, reverse=True):
                        rest = rest.replace(t, " ")
                    assert not any(ch.isdigit() for ch in rest), (value, rest)


@pytest.mark.slow
def test_clinical_data_agree_with_imaging_and_are_coherent(full_set: Path) -> None:
    for site, truth in load_truth(full_set).items():
        patients = {p["patient_id"]: p for p in truth["patients"]}
        for row in _rows(full_set, site):
            p = patients[row["patient_id"]]
            cancer = row["cancer_type"]
            assert cancer == p["cancer_type"]
            assert row["lesion_label"] == ("present" if p["lesion"] else "absent")
            if cancer == "prostate":
                assert row["sex"] == "male" and row["primary_site"] == "C61.9"
                assert row["isup_grade_group"] == {"3+3=6": 1, "3+4=7": 2, "4+3=7": 3,
                                                   "4+4=8": 4, "4+5=9": 5}[row["gleason_score"]]
            if cancer == "breast":
                assert row["sex"] == "female" and row["primary_site"].startswith("C50")
                assert row["laterality"] == p["lesion_geometry"]["side"]
                assert row["primary_site"] == p["lesion_geometry"]["quadrant"]
            if cancer == "lung":
                assert row["primary_site"].startswith("C34")
                assert row["laterality"] == p["lesion_geometry"]["side"]
            if cancer == "colorectal":
                assert row["primary_site"] == p["lesion_geometry"]["segment"]
            if row["clinical_m"] == "cM1":
                assert row["stage_group"] == "IV"
            if "surgery" in row["treatments"].split(";"):
                assert row["surgery_procedure"]
            else:
                assert row["surgery_procedure"] is None
            assert row["diagnosis_date"] <= row["treatment_start_date"] <= row["last_followup_date"]
            assert (row["birth_date"] - dt.date(1900, 1, 1)).days > 0
            age = (row["diagnosis_date"] - row["birth_date"]).days / 365.25
            assert 35 < age < 90
