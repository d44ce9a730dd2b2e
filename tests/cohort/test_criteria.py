"""Criteria parsing: strict validation (fail closed), expansion of codes, canonical form."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from incisive_lab.cohort import CohortError, parse_criteria

BREAST = "254837009"
CANCER = "363346000"  # Malignant neoplastic disease (hierarchy root)


@pytest.mark.parametrize(("query", "field"), [
    ({"clinical": {"cancer": "254837009"}}, "clinical: unknown key 'cancer'"),
    ({"demographics": {}}, "query: unknown key 'demographics'"),
    ([], "query: must be a JSON object"),
    ({"clinical": {"cancer_type": "123456789"}}, "clinical.cancer_type"),
    ({"clinical": {"cancer_type": "387713003"}}, "is not a disorder"),  # a procedure
    ({"clinical": {"cancer_type": []}}, "clinical.cancer_type: must be a string or a non-empty list"),
    ({"clinical": {"cancer_type": [""]}}, "clinical.cancer_type"),
    ({"clinical": {"histology": "9999/3"}}, "clinical.histology"),
    ({"clinical": {"stage": "V"}}, "clinical.stage"),
    ({"clinical": {"stage": {"t": ["cT9"]}}}, "clinical.stage.t"),
    ({"clinical": {"stage": {"x": ["cT1"]}}}, "clinical.stage: unknown key 'x'"),
    ({"clinical": {"sex": "f"}}, "clinical.sex"),
    ({"clinical": {"age_at_diagnosis": {"min": 70, "max": 50}}}, "clinical.age_at_diagnosis: min 70"),
    ({"clinical": {"age_at_diagnosis": {"min": -1}}}, "clinical.age_at_diagnosis.min"),
    ({"clinical": {"age_at_diagnosis": {"min": True}}}, "clinical.age_at_diagnosis.min"),
    ({"clinical": {"age_at_diagnosis": {"min": float("nan")}}}, "clinical.age_at_diagnosis.min"),
    ({"clinical": {"age_at_diagnosis": {}}}, "clinical.age_at_diagnosis: give min, max or both"),
    ({"clinical": {"age_at_diagnosis": {"low": 3}}}, "clinical.age_at_diagnosis: unknown key 'low'"),
    ({"clinical": {"diagnosis_date": {"from": "2020-02-30"}}}, "clinical.diagnosis_date.from"),
    ({"clinical": {"diagnosis_date": {"from": "2020/01/01"}}}, "clinical.diagnosis_date.from"),
    ({"clinical": {"diagnosis_date": {"from": "2021-01-01", "to": "2020-01-01"}}}, "clinical.diagnosis_date"),
    ({"clinical": {"treatment": "homeopathy"}}, "clinical.treatment"),
    ({"clinical": {"treatment": BREAST}}, "clinical.treatment"),  # a disorder, not a procedure
    ({"clinical": {"biomarkers": {"marker": "er_status"}}}, "clinical.biomarkers"),
    ({"clinical": {"biomarkers": [{"marker": "brca1", "value": "x"}]}}, "clinical.biomarkers[0].marker"),
    ({"clinical": {"biomarkers": [{"marker": "er_status", "value": "maybe"}]}}, "clinical.biomarkers[0].value"),
    ({"clinical": {"biomarkers": [{"marker": "er_status", "min": 1}]}}, "clinical.biomarkers[0]: er_status is coded"),
    ({"clinical": {"biomarkers": [{"marker": "psa_ng_ml", "value": "5"}]}}, "clinical.biomarkers[0]: psa_ng_ml is numeric"),
    ({"clinical": {"biomarkers": [{"marker": "ki67_percent", "max": 101}]}}, "clinical.biomarkers[0].max"),
    ({"clinical": {"biomarkers": [{"marker": "er_status", "value": "positive", "values": ["negative"]}]}},
     "exactly one of value and values"),
    ({"clinical": {"biomarkers": [{"marker": "er_status", "value": "positive", "unit": "%"}]}},
     "clinical.biomarkers[0]: unknown key 'unit'"),
    ({"imaging": {"modality": "XX"}}, "imaging.modality"),
    ({"imaging": {"modality": "ct"}}, "imaging.modality"),
    ({"imaging": {"body_part": "ELBOWS"}}, "imaging.body_part"),
    ({"imaging": {"rows": {"min": 512, "max": 256}}}, "imaging.rows"),
    ({"imaging": {"slice_thickness": {"max": 1}}}, "imaging: unknown key 'slice_thickness'"),
    ({"imaging": {"annotations": "yes"}}, "imaging.annotations"),
    ({"imaging": {"study_date": {"to": 2020}}}, "imaging.study_date.to"),
])
def test_bad_criteria_are_refused_naming_the_field(query: Any, field: str) -> None:
    with pytest.raises(CohortError) as info:
        parse_criteria(query)
    assert field in str(info.value)


def test_cancer_type_expands_to_descendants() -> None:
    c = parse_criteria({"clinical": {"cancer_type": BREAST}})
    assert c.cancer_type == {BREAST, "427685000", "431396003"}  # HER2+/- carcinoma of breast
    everything = parse_criteria({"clinical": {"cancer_type": CANCER}}).cancer_type
    assert {"363358000", "363510005", "399068003", BREAST} <= everything


def test_treatment_surgery_includes_the_specific_operations() -> None:
    by_value = parse_criteria({"clinical": {"treatment": "surgery"}}).treatment
    by_code = parse_criteria({"clinical": {"treatment": "387713003"}}).treatment
    assert by_value == by_code
    assert {"173171007", "23968004", "26294005", "392021009"} <= by_code


def test_histology_accepts_icdo3_and_snomed_morphology() -> None:
    assert parse_criteria({"clinical": {"histology": "8140/3"}}).histology == {"8140/3"}
    adeno = parse_criteria({"clinical": {"histology": "1187332001"}}).histology
    assert adeno == {"1187332001", "72495009"}  # mucinous adenocarcinoma is an adenocarcinoma


def test_stage_main_group_includes_subgroups_only() -> None:
    c = parse_criteria({"clinical": {"stage": "I"}})
    assert c.stage_group == {"I", "IA", "IB"}
    assert parse_criteria({"clinical": {"stage": ["II"]}}).stage_group == {"II", "IIA", "IIB", "IIC"}
    tnm = parse_criteria({"clinical": {"stage": {"t": "cT2", "m": ["cM0"]}}})
    assert tnm.stage_t == {"1228929004"} and tnm.stage_m == {"1229901006"} and not tnm.stage_group


def test_biomarkers_by_name_or_loinc() -> None:
    a = parse_criteria({"clinical": {"biomarkers": [{"marker": "er_status", "value": "positive"}]}})
    b = parse_criteria({"clinical": {"biomarkers": [{"marker": "85337-4", "values": ["416053008"]}]}})
    assert a.biomarkers[0].codes == b.biomarkers[0].codes == {"416053008"}
    local = parse_criteria({"clinical": {"biomarkers": [{"marker": "msi_status", "value": "MSI-H"}]}})
    assert local.biomarkers[0].texts == {"MSI-H"} and not local.biomarkers[0].codes
    psa = parse_criteria({"clinical": {"biomarkers": [{"marker": "psa_ng_ml", "min": 4, "max": 10}]}})
    assert 5.2 in psa.biomarkers[0].range  # type: ignore[operator]


def test_body_part_by_term_or_code() -> None:
    by_term = parse_criteria({"imaging": {"body_part": "CHEST"}})
    by_code = parse_criteria({"imaging": {"body_part": "816094009"}})
    assert by_term.body_part_code == by_code.body_part_code == {"816094009"}
    assert "CHEST" in by_code.body_part


def test_canonical_form_and_hash_ignore_order() -> None:
    a = parse_criteria({"imaging": {"modality": ["MR", "CT"]}, "clinical": {"sex": "female"}})
    b = parse_criteria({"clinical": {"sex": ["female"]}, "imaging": {"modality": ["CT", "MR", "CT"]}})
    assert a.to_json() == b.to_json() == {"clinical": {"sex": ["female"]},
                                          "imaging": {"modality": ["CT", "MR"]}}
    assert a.sha256() == b.sha256()
    c = parse_criteria({"clinical": {"diagnosis_date": {"from": "2015-01-01"}}})
    assert c.diagnosis_date is not None and c.diagnosis_date.start == dt.date(2015, 1, 1)
    assert parse_criteria({}).to_json() == {}
