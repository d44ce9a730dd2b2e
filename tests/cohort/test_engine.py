"""Evaluating criteria at a node: per-patient matching, descendants, withdrawal, members."""

from __future__ import annotations

from typing import Any

from incisive_lab.cohort import evaluate, parse_criteria
from incisive_lab.node.store import NodeStore

from ._helpers import (
    add_series,
    all_patients,
    condition_of,
    modalities_of,
    patients_by_cancer,
    series_modality,
    studies_of,
)

LUNG, COLORECTAL, PROSTATE, BREAST = "363358000", "363510005", "399068003", "254837009"


def _match(store: NodeStore, query: dict[str, Any], withdrawn: frozenset[str] = frozenset()) -> frozenset[str]:
    return evaluate(store, parse_criteria(query), withdrawn=withdrawn).patients["site-a"]


def test_no_criteria_matches_every_patient(cohort_node: NodeStore) -> None:
    assert _match(cohort_node, {}) == set(all_patients(cohort_node))


def test_cancer_type_by_code_and_by_ancestor(cohort_node: NodeStore) -> None:
    for code in (LUNG, COLORECTAL, PROSTATE, BREAST):
        assert _match(cohort_node, {"clinical": {"cancer_type": code}}) == set(patients_by_cancer(cohort_node, code))
    assert _match(cohort_node, {"clinical": {"cancer_type": "363346000"}}) == set(all_patients(cohort_node))


def test_a_descendant_code_in_the_data_matches_its_ancestor(fresh_node: NodeStore) -> None:
    [pid] = patients_by_cancer(fresh_node, BREAST)
    cond = condition_of(fresh_node, pid)
    cond["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "427685000",
                                "display": "Human epidermal growth factor 2 positive carcinoma of breast (disorder)"}]}
    fresh_node.fhir.put(cond, dataset="site-a")
    assert _match(fresh_node, {"clinical": {"cancer_type": BREAST}}) == {pid}
    assert _match(fresh_node, {"clinical": {"cancer_type": "427685000"}}) == {pid}
    assert _match(fresh_node, {"clinical": {"cancer_type": "431396003"}}) == frozenset()


def test_a_patient_with_three_studies_counts_once(fresh_node: NodeStore) -> None:
    [pid] = patients_by_cancer(fresh_node, PROSTATE)
    studies = studies_of(fresh_node, pid)
    assert len(studies) == 2
    add_series(fresh_node, pid, modality="MR", body_part="PROSTATE")
    assert len(studies_of(fresh_node, pid)) == 3
    match = evaluate(fresh_node, parse_criteria({"imaging": {"modality": "MR"}}), members_for={"site-a"})
    assert match.patients["site-a"] == {pid}
    assert len(match.members["site-a"]) == 3  # three studies listed, one patient counted


def test_imaging_series_criteria_hold_for_one_series(cohort_node: NodeStore) -> None:
    # OT key-image series exist in chest and abdomen studies; CT exists in both
    chest_ot = _match(cohort_node, {"imaging": {"modality": "OT", "body_part": "CHEST"}})
    abd_ot = _match(cohort_node, {"imaging": {"modality": "OT", "body_part": "818981001"}})
    assert len(chest_ot) == 1 and len(abd_ot) == 1 and chest_ot != abd_ot
    assert _match(cohort_node, {"imaging": {"modality": "MG", "body_part": "CHEST"}}) == frozenset()
    big = _match(cohort_node, {"imaging": {"rows": {"min": 512}}})
    assert big and big <= _match(cohort_node, {"imaging": {"columns": {"min": 512}}})
    assert _match(cohort_node, {"imaging": {"number_of_frames": {"min": 2}}}) == frozenset()
    assert _match(cohort_node, {"imaging": {"number_of_frames": {"max": 1}}}) == set(all_patients(cohort_node))


def test_annotations_present_means_a_seg_sr_or_ko_series(fresh_node: NodeStore) -> None:
    assert _match(fresh_node, {"imaging": {"annotations": True}}) == frozenset()
    [pid] = patients_by_cancer(fresh_node, BREAST)
    [(study, _, _)] = studies_of(fresh_node, pid)
    add_series(fresh_node, pid, study_uid=study, modality="SEG")
    assert "SEG" in modalities_of(fresh_node, study)
    assert _match(fresh_node, {"imaging": {"annotations": True}}) == {pid}
    without = _match(fresh_node, {"imaging": {"annotations": False}})
    assert pid not in without and len(without) == len(all_patients(fresh_node)) - 1
    # the annotation and the modality criterion may be met by different series of the study
    assert _match(fresh_node, {"imaging": {"annotations": True, "modality": "MG"}}) == {pid}


def test_study_date_and_age_at_study(cohort_node: NodeStore) -> None:
    everyone = set(all_patients(cohort_node))
    late = _match(cohort_node, {"imaging": {"study_date": {"from": "2016-01-01"}}})
    early = _match(cohort_node, {"imaging": {"study_date": {"to": "2015-12-31"}}})
    assert late | early == everyone and not late & early
    young = _match(cohort_node, {"imaging": {"age_at_study": {"max": 70}}})
    old = _match(cohort_node, {"imaging": {"age_at_study": {"min": 71}}})
    assert young | old == everyone and not young & old


def test_clinical_criteria_on_fhir(cohort_node: NodeStore) -> None:
    everyone = set(all_patients(cohort_node))
    women = _match(cohort_node, {"clinical": {"sex": "female"}})
    men = _match(cohort_node, {"clinical": {"sex": "male"}})
    assert women | men == everyone and not women & men
    [prostate] = patients_by_cancer(cohort_node, PROSTATE)
    assert prostate in men
    assert _match(cohort_node, {"clinical": {"biomarkers": [{"marker": "psa_ng_ml", "min": 0}]}}) == {prostate}
    [breast] = patients_by_cancer(cohort_node, BREAST)
    er = [_match(cohort_node, {"clinical": {"biomarkers": [{"marker": "er_status", "value": v}]}})
          for v in ("positive", "negative")]
    assert er[0] | er[1] == {breast}
    surgery = _match(cohort_node, {"clinical": {"treatment": "surgery"}})
    assert surgery and surgery <= everyone
    staged = _match(cohort_node, {"clinical": {"stage": ["I", "II", "III", "IV"]}})
    assert staged == everyone
    dx = _match(cohort_node, {"clinical": {"diagnosis_date": {"from": "1900-01-01", "to": "2100-01-01"}}})
    assert dx == everyone
    ages = _match(cohort_node, {"clinical": {"age_at_diagnosis": {"min": 0, "max": 150}}})
    assert ages == everyone  # every patient's age is derivable from a study's Patient's Age
    adeno = _match(cohort_node, {"clinical": {"histology": "8140/3"}})
    assert adeno == _match(cohort_node, {"clinical": {"histology": "1187332001"}}) - \
        _match(cohort_node, {"clinical": {"histology": "72495009"}})


def test_withdrawn_patients_are_never_matched_or_listed(cohort_node: NodeStore) -> None:
    [prostate] = patients_by_cancer(cohort_node, PROSTATE)
    match = evaluate(cohort_node, parse_criteria({}), withdrawn={prostate}, members_for={"site-a"})
    assert prostate not in match.patients["site-a"]
    listed = {m.study_uid for m in match.members["site-a"]}
    assert not listed & {s for s, _, _ in studies_of(cohort_node, prostate)}


def test_members_only_when_asked(cohort_node: NodeStore) -> None:
    match = evaluate(cohort_node, parse_criteria({"imaging": {"modality": "CT"}}))
    assert match.members == {}
    match = evaluate(cohort_node, parse_criteria({"imaging": {"modality": "CT"}}), members_for={"site-a"})
    assert match.members["site-a"]
    for study in match.members["site-a"]:
        assert study.series_uids  # only the CT series of each matching study
        assert {series_modality(cohort_node, s) for s in study.series_uids} == {"CT"}
        assert "OT" not in {series_modality(cohort_node, s) for s in study.series_uids}
