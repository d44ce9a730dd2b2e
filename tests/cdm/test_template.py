"""The clinical template: documentation in sync, row validation, deterministic workbooks."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from incisive_lab.cdm.spreadsheet import read_workbook, write_workbook
from incisive_lab.cdm.template import (
    CANCER_TYPES,
    COLUMNS,
    PHI_CATEGORIES,
    column,
    render_markdown,
    validate_row,
)

DOC = Path(__file__).parents[2] / "docs" / "clinical-template.md"

REQUIRED_IDENTITY = ("patient_id", "issuer_of_patient_id", "family_name", "given_name",
                     "birth_date", "sex", "address", "phone", "accession_numbers")


def test_documentation_is_generated_from_the_template() -> None:
    assert DOC.read_text("utf-8") == render_markdown(), (
        "docs/clinical-template.md is stale: regenerate it with "
        "python -c 'from incisive_lab.cdm.template import render_markdown; "
        "open(\"docs/clinical-template.md\", \"w\").write(render_markdown())'")


def test_every_column_is_documented_with_type_values_and_codes() -> None:
    text = render_markdown()
    for col in COLUMNS:
        assert f"### `{col.name}`" in text
        assert col.phi_category in PHI_CATEGORIES
        if col.values is not None:
            for value, codes in col.values.items():
                assert f"| `{value}` |" in text
                for code in codes:
                    assert code.code in text


def test_required_identity_columns() -> None:
    for name in REQUIRED_IDENTITY:
        assert column(name).required
    assert column("sex").allowed_values == ("female", "male", "other", "unknown")
    assert column("accession_numbers").phi_category == "link"
    assert column("clinical_notes").phi_category == "free-text"
    for col in COLUMNS:
        if col.type == "date":
            assert col.phi_category == "date", col.name
    assert set(column("cancer_type").allowed_values or ()) == set(CANCER_TYPES)


def _row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "patient_id": "X1234567", "issuer_of_patient_id": "XYZ-MRN-1",
        "family_name": "Rossini", "given_name": "Mario", "birth_date": dt.date(1950, 3, 1),
        "sex": "male", "address": "Via Roma 1, 40100 Bologna", "phone": "+39 333 123 4567",
        "accession_numbers": "23A0001234", "cancer_type": "prostate",
        "diagnosis_date": dt.date(2023, 1, 10), "primary_site": "C61.9", "histology": "8140/3",
        "clinical_t": "cT2", "clinical_n": "cN0", "clinical_m": "cM0", "stage_group": "IIB",
        "ecog": 0, "smoking_status": "former", "psa_ng_ml": 7.2, "gleason_score": "3+4=7",
        "isup_grade_group": 2, "treatments": "radiotherapy;hormone-therapy",
        "treatment_start_date": dt.date(2023, 2, 1), "last_followup_date": dt.date(2023, 9, 1),
        "vital_status": "alive", "recurrence": "no", "disease_status": "stable",
        "consent_status": "active", "consent_date": dt.date(2023, 1, 15),
        "lesion_label": "present",
    }
    row.update(overrides)
    return row


def test_validate_row() -> None:
    assert validate_row(_row()) == []
    assert validate_row(_row(sex="M")) == ["sex: 'M' not allowed"]
    assert validate_row(_row(birth_date="1950-03-01"))[0].startswith("birth_date: expected a date")
    assert validate_row(_row(ecog=7)) == ["ecog: 7 above 4"]
    assert validate_row(_row(treatments="surgery;magic")) == ["treatments: 'magic' not allowed"]
    assert validate_row(_row(er_status="positive")) == [
        "er_status: must be empty for cancer_type prostate"]
    assert validate_row(_row(psa_ng_ml=None)) == ["psa_ng_ml: required"]
    assert validate_row(_row(favourite_colour="blue")) == ["unknown columns: favourite_colour"]


def test_workbook_round_trip_is_deterministic() -> None:
    rows = [_row(), _row(patient_id="X7654321", clinical_notes="Seen with daughter.")]
    one, two = io.BytesIO(), io.BytesIO()
    write_workbook(rows, one)
    write_workbook(rows, two)
    assert one.getvalue() == two.getvalue()
    back = read_workbook(io.BytesIO(one.getvalue()))
    assert [r["patient_id"] for r in back] == ["X7654321"[:0] + "X1234567", "X7654321"]
    assert back[0]["birth_date"] == dt.date(1950, 3, 1) and back[0]["ecog"] == 0
    assert all(validate_row({k: v for k, v in r.items() if v is not None}) == [] for r in back)


def test_read_workbook_rejects_other_sheets(tmp_path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    assert wb.active is not None
    wb.active.title = "Sheet1"
    wb.save(tmp_path / "x.xlsx")
    with pytest.raises(ValueError, match="no sheet named 'patients'"):
        read_workbook(tmp_path / "x.xlsx")
