"""FHIR R4B resources of one patient, built from a checked :class:`ClinicalRow`.

Every clinical code comes from the project's code tables (:mod:`incisive_lab.cdm.codes`): a
SNOMED CT, LOINC or ICD-O-3 coding that is not in the tables, or whose display differs, is a
conversion error, so is a code of an unknown system. FHIR's own infrastructure codes (status
values, observation categories, consent scope, identifier types, DICOM modality codes) are the
constants below, with the URIs of their HL7/DICOM code systems.

Resource ids are derived from the pseudonym and *what* the resource is about (``Condition``
"primary cancer", ``Observation`` of column ``clinical_t``, ``ImagingStudy`` of a study UID), not
from its values: converting the same workbook again gives byte-identical resources, and a
corrected value replaces its resource instead of adding a second one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

from incisive_lab.cdm._fhir_rows import ETL_COLUMNS, ClinicalRow
from incisive_lab.cdm.codes import Code, all_concepts, system_uris
from incisive_lab.cdm.template import Column

__all__ = [
    "DICOM_UID_SYSTEM",
    "ConversionError",
    "SeriesSummary",
    "StudySummary",
    "build_patient_resources",
    "resource_id",
]

#: Identifier system of DICOM UIDs in FHIR (value ``urn:oid:<UID>``).
DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: mCODE extensions for the morphology and the laterality of a primary cancer.
MCODE_HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
MCODE_LATERALITY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-laterality-qualifier"

#: Systems whose codes must be present in the code tables (not only the system).
_TABLE_SYSTEMS = frozenset({"SCT", "LOINC", "ICDO3"})
_ID_PREFIX = "incisive-fhir/1"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")

# Observation columns, in template order: column -> (category, effective-date column).
_OBSERVATIONS: Mapping[str, tuple[str | None, str | None]] = MappingProxyType({
    "grade": (None, "diagnosis_date"),
    "clinical_t": (None, "diagnosis_date"),
    "clinical_n": (None, "diagnosis_date"),
    "clinical_m": (None, "diagnosis_date"),
    "stage_group": (None, "diagnosis_date"),
    "ecog": ("survey", "diagnosis_date"),
    "smoking_status": ("social-history", "diagnosis_date"),
    "er_status": ("laboratory", "diagnosis_date"),
    "pr_status": ("laboratory", "diagnosis_date"),
    "her2_status": ("laboratory", "diagnosis_date"),
    "ki67_percent": ("laboratory", "diagnosis_date"),
    "egfr_mutation": ("laboratory", "diagnosis_date"),
    "alk_rearrangement": ("laboratory", "diagnosis_date"),
    "pdl1_status": ("laboratory", "diagnosis_date"),
    "psa_ng_ml": ("laboratory", "diagnosis_date"),
    "gleason_score": ("laboratory", "diagnosis_date"),
    "isup_grade_group": ("laboratory", "diagnosis_date"),
    "kras_mutation": ("laboratory", "diagnosis_date"),
    "msi_status": ("laboratory", "diagnosis_date"),
    "cea_ng_ml": ("laboratory", "diagnosis_date"),
    "disease_status": (None, "last_followup_date"),
    "lesion_label": ("imaging", None),
})
#: Observation code text of columns without a code of their own (no code verified).
_LOCAL_OBSERVATION_TEXT: Mapping[str, str] = MappingProxyType({
    "isup_grade_group": "ISUP grade group",
    "lesion_label": "Tumour visible on the patient's imaging (ground-truth label)",
})
_NOT_ABOUT_TUMOUR = frozenset({"ecog", "smoking_status"})
_VALUE_STRING = frozenset({"gleason_score"})
_TNM = ("clinical_t", "clinical_n", "clinical_m")
#: Treatments recorded as MedicationStatement (systemic therapy; the agents are not in the
#: template), the others as Procedure.
_MEDICATION_TREATMENTS = frozenset({"chemotherapy", "hormone-therapy", "immunotherapy"})


class ConversionError(ValueError):
    """A row that cannot become valid FHIR; `column` names the template column at fault."""

    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass(frozen=True)
class SeriesSummary:
    """Plain-data summary of one de-identified DICOM series.

    Attributes
    ----------
    uid : str
        SeriesInstanceUID.
    modality : str
        DICOM Modality (``CT``, ``MR``, ``MG``, ...).
    n_instances : int
        Number of instances of the series in the node.
    number : int or None
        SeriesNumber.
    body_site : Code or None
        The examined body part as a code (the caller maps DICOM BodyPartExamined to SNOMED CT);
        its system must be one of the code tables' systems.
    """

    uid: str
    modality: str
    n_instances: int
    number: int | None = None
    body_site: Code | None = None


@dataclass(frozen=True)
class StudySummary:
    """Plain-data summary of one de-identified DICOM study, as the node's index holds it.

    Attributes
    ----------
    patient_pseudonym : str
        The DICOM PatientID after de-identification (the pseudonym): the FHIR Patient id.
    study_uid : str
        StudyInstanceUID (after de-identification).
    accession : str or None
        AccessionNumber (its pseudonym after de-identification); links the study to the row
        that lists it in ``accession_numbers``.
    started : date or datetime or None
        StudyDate/StudyTime (shifted by de-identification). A naive datetime is written as its
        date only (FHIR requires a time zone with a time); an aware one in full.
    modalities : tuple of str
        Modalities in the study; defaults to those of :attr:`series`.
    series : tuple of SeriesSummary
        The study's series.

    Descriptions are deliberately absent: free text of DICOM may carry identifiers.
    """

    patient_pseudonym: str
    study_uid: str
    accession: str | None = None
    started: _dt.date | _dt.datetime | None = None
    modalities: tuple[str, ...] = ()
    series: tuple[SeriesSummary, ...] = ()

    @property
    def all_modalities(self) -> tuple[str, ...]:
        """:attr:`modalities` and those of the series, without repeats, in order."""
        return tuple(dict.fromkeys((*self.modalities, *(s.modality for s in self.series))))

    def problems(self) -> list[str]:
        """What makes this summary unusable (empty when it is fine)."""
        out = []
        if not self.patient_pseudonym:
            out.append("no patient pseudonym")
        if not (_UID.fullmatch(self.study_uid) and len(self.study_uid) <= 64):
            out.append(f"study UID {self.study_uid!r} is not a DICOM UID")
        for s in self.series:
            if not (_UID.fullmatch(s.uid) and len(s.uid) <= 64):
                out.append(f"series UID {s.uid!r} is not a DICOM UID")
        for m in self.all_modalities:
            if not _MODALITY.fullmatch(m):
                out.append(f"modality {m!r} is not a DICOM modality code")
        return out


def resource_id(pseudonym: str, key: str) -> str:
    """The stable id of the resource `key` (e.g. ``"Observation/clinical_t"``) of a patient.

    Examples
    --------
    >>> resource_id("PSN-AAAAAAAAAAAAAAAA", "Condition/primary-cancer")
    'f017be3781f90ee3751d54c382ce19d6'
    """
    return hashlib.sha256(f"{_ID_PREFIX}\x1f{pseudonym}\x1f{key}".encode()).hexdigest()[:32]


@cache
def _table() -> Mapping[tuple[str, str], Code]:
    return MappingProxyType({(c.system, c.code): c for c in all_concepts().values()})


def coding(code: Code, column: str | None) -> dict[str, Any]:
    """The FHIR Coding of `code`, checked against the code tables."""
    uri = system_uris().get(code.system)
    if uri is None:
        raise ConversionError(column, f"code {code.code!r} of unknown system {code.system!r}")
    if code.system in _TABLE_SYSTEMS:
        known = _table().get((code.system, code.code))
        if known is None:
            raise ConversionError(column, f"{code.system} code {code.code!r} is not in the code tables")
        if known.display != code.display:
            raise ConversionError(column, f"{code.system} code {code.code!r}: display {code.display!r} "
                                  f"differs from the code tables ({known.display!r})")
    return {"system": uri, "code": code.code, "display": code.display}


def _codes(col: Column, value: str) -> tuple[Code, ...]:
    assert col.values is not None
    return col.values[value]


def _date(value: _dt.date | _dt.datetime) -> str:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    return value.isoformat()


def _ref(resource: Mapping[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBSERVATION_CATEGORY, "code": code}]}]


class _PatientBuilder:
    """Builds the resources of one row; each resource is kept with the column it came from."""

    def __init__(self, row: ClinicalRow, pseudonym: str, identifier_system: str,
                 studies: Sequence[StudySummary]) -> None:
        self.row = row
        self.pid = pseudonym
        self.identifier_system = identifier_system
        self.studies = studies
        self.out: list[tuple[str | None, dict[str, Any]]] = []
        self.subject = {"reference": f"Patient/{pseudonym}"}

    def add(self, column: str | None, resource: dict[str, Any]) -> dict[str, Any]:
        self.out.append((column, resource))
        return resource

    def id(self, key: str) -> str:
        return resource_id(self.pid, key)

    def concept(self, name: str) -> dict[str, Any]:
        """CodeableConcept of the value of coded column `name` (text only for local values)."""
        col = ETL_COLUMNS[name]
        value = self.row.get(name)
        codes = _codes(col, value)
        if not codes:
            return {"text": value}
        return {"coding": [coding(c, name) for c in codes]}

    def build(self) -> list[tuple[str | None, dict[str, Any]]]:
        self.patient()
        condition = self.condition()
        studies = self.imaging()
        self.observations(condition, studies)
        self.treatments(condition)
        self.consent()
        return self.out

    def patient(self) -> None:
        sex = _codes(ETL_COLUMNS["sex"], self.row.get("sex"))
        if len(sex) != 1 or sex[0].system != "FHIR-GENDER":
            raise ConversionError("sex", f"no FHIR administrative gender for {self.row.get('sex')!r}")
        resource: dict[str, Any] = {
            "resourceType": "Patient",
            "id": self.pid,
            "identifier": [{"system": self.identifier_system, "value": self.pid}],
            "gender": coding(sex[0], "sex")["code"],
        }
        birth = self.row.get("birth_date")
        if birth is not None:
            resource["birthDate"] = f"{birth.year:04d}"
        vital = self.row.get("vital_status")
        for c in _codes(ETL_COLUMNS["vital_status"], vital):
            coding(c, "vital_status")
        resource["deceasedBoolean"] = vital == "deceased"
        self.add("patient_id", resource)

    def condition(self) -> dict[str, Any]:
        site: dict[str, Any] = self.concept("primary_site")
        if self.row.get("laterality") is not None:
            site["extension"] = [{"url": MCODE_LATERALITY, "valueCodeableConcept": self.concept("laterality")}]
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self.id("Condition/primary-cancer"),
            "extension": [{"url": MCODE_HISTOLOGY, "valueCodeableConcept": self.concept("histology")}],
            "verificationStatus": {"coding": [{"system": CONDITION_VER_STATUS, "code": "confirmed"}]},
            "code": self.concept("cancer_type"),
            "bodySite": [site],
            "subject": self.subject,
        }
        diagnosed = self.row.get("diagnosis_date")
        if diagnosed is not None:
            resource["onsetDateTime"] = _date(diagnosed)
        return self.add("cancer_type", resource)

    def observations(self, condition: dict[str, Any], studies: Sequence[dict[str, Any]]) -> None:
        made: dict[str, dict[str, Any]] = {}
        for name, (category, when) in _OBSERVATIONS.items():
            value = self.row.get(name)
            if value is None:
                continue
            col = ETL_COLUMNS[name]
            code: dict[str, Any] = (
                {"coding": [coding(col.concept, name)]} if col.concept is not None
                else {"text": _LOCAL_OBSERVATION_TEXT[name]}
            )
            obs: dict[str, Any] = {"resourceType": "Observation", "id": self.id(f"Observation/{name}"),
                                   "status": "final"}
            if category is not None:
                obs["category"] = _category(category)
            obs["code"] = code
            obs["subject"] = self.subject
            if name not in _NOT_ABOUT_TUMOUR:
                obs["focus"] = [_ref(condition)]
            date = self.row.get(when) if when else None
            if date is not None:
                obs["effectiveDateTime"] = _date(date)
            if name in _VALUE_STRING:
                obs["valueString"] = value
            elif col.type == "code":
                obs["valueCodeableConcept"] = self.concept(name)
            elif col.unit is not None:
                obs["valueQuantity"] = {"value": value, "unit": col.unit, "system": UCUM, "code": col.unit}
            else:
                obs["valueInteger"] = value
            if name == "disease_status" and self.row.get("recurrence") is not None:
                obs["component"] = [{"code": {"text": "Recurrence after treatment"},
                                     "valueCodeableConcept": self.concept("recurrence")}]
            if name == "lesion_label" and studies:
                obs["derivedFrom"] = [_ref(s) for s in studies]
            if name == "stage_group":
                obs["hasMember"] = [_ref(made[t]) for t in _TNM if t in made]
            made[name] = self.add(name, obs)

    def treatments(self, condition: dict[str, Any]) -> None:
        start = self.row.get("treatment_start_date")
        for i, treatment in enumerate(self.row.get("treatments") or ()):
            first = i == 0 and start is not None
            if treatment in _MEDICATION_TREATMENTS:
                med: dict[str, Any] = {
                    "resourceType": "MedicationStatement",
                    "id": self.id(f"MedicationStatement/{treatment}"),
                    "status": "unknown",
                    "medicationCodeableConcept": {
                        "coding": [coding(c, "treatments") for c in _codes(ETL_COLUMNS["treatments"], treatment)],
                        "text": f"{treatment} (agents not recorded)",
                    },
                    "subject": self.subject,
                    "reasonReference": [_ref(condition)],
                }
                if first:
                    med["effectivePeriod"] = {"start": _date(start)}
                self.add("treatments", med)
                continue
            column, code = "treatments", self.concept_of("treatments", treatment)
            if treatment == "surgery" and self.row.get("surgery_procedure") is not None:
                column, code = "surgery_procedure", self.concept("surgery_procedure")
            proc: dict[str, Any] = {
                "resourceType": "Procedure",
                "id": self.id(f"Procedure/{treatment}"),
                "status": "completed" if treatment == "surgery" else "unknown",
                "code": code,
                "subject": self.subject,
                "reasonReference": [_ref(condition)],
            }
            if first:
                proc["performedPeriod"] = {"start": _date(start)}
            self.add(column, proc)

    def concept_of(self, name: str, value: str) -> dict[str, Any]:
        return {"coding": [coding(c, name) for c in _codes(ETL_COLUMNS[name], value)]}

    def imaging(self) -> list[dict[str, Any]]:
        out = []
        for study in self.studies:
            identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_uid}"}]
            if study.accession:
                identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                                    "value": study.accession})
            resource: dict[str, Any] = {
                "resourceType": "ImagingStudy",
                "id": self.id(f"ImagingStudy/{study.study_uid}"),
                "identifier": identifiers,
                "status": "available",
                "subject": self.subject,
            }
            if study.all_modalities:
                resource["modality"] = [{"system": DCM, "code": m} for m in study.all_modalities]
            if study.started is not None:
                resource["started"] = _date(study.started)
            resource["numberOfSeries"] = len(study.series)
            resource["numberOfInstances"] = sum(s.n_instances for s in study.series)
            series = []
            for s in study.series:
                item: dict[str, Any] = {"uid": s.uid}
                if s.number is not None:
                    item["number"] = s.number
                item["modality"] = {"system": DCM, "code": s.modality}
                item["numberOfInstances"] = s.n_instances
                if s.body_site is not None:
                    try:
                        item["bodySite"] = coding(s.body_site, None)
                    except ConversionError as exc:
                        raise ConversionError(None, f"study {study.study_uid}, series {s.uid}: "
                                              f"body site: {exc.reason}") from None
                series.append(item)
            if series:
                resource["series"] = series
            out.append(self.add(None, resource))
        return out

    def consent(self) -> None:
        status = _codes(ETL_COLUMNS["consent_status"], self.row.get("consent_status"))
        if len(status) != 1 or status[0].system != "FHIR-CONSENT":
            raise ConversionError("consent_status", f"no FHIR consent state for {self.row.get('consent_status')!r}")
        col = ETL_COLUMNS["consent_status"]
        assert col.concept is not None
        resource: dict[str, Any] = {
            "resourceType": "Consent",
            "id": self.id("Consent/research"),
            "status": coding(status[0], "consent_status")["code"],
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "research"}]},
            "category": [{"coding": [coding(col.concept, "consent_status")]}],
            "patient": self.subject,
        }
        when = self.row.get("consent_date")
        if when is not None:
            resource["dateTime"] = _date(when)
        resource["policyRule"] = {"coding": [{"system": V3_ACT_CODE, "code": "OPTIN"}]}
        resource["provision"] = {"type": "permit",
                                 "purpose": [{"system": V3_ACT_REASON, "code": "HRESCH"}]}
        self.add("consent_status", resource)


def build_patient_resources(
    row: ClinicalRow, pseudonym: str, *, identifier_system: str, studies: Sequence[StudySummary]
) -> list[tuple[str | None, dict[str, Any]]]:
    """The unvalidated resources of `row`, each with the template column it came from.

    Raises
    ------
    ConversionError
        When a code is not in the code tables (with the column at fault).
    """
    return _PatientBuilder(row, pseudonym, identifier_system, studies).build()
