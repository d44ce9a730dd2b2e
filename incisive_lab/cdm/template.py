"""The clinical spreadsheet template: one row per patient, one column per :class:`Column`.

This module is the single definition of the clinical template. ``docs/clinical-template.md`` is
generated from it (:func:`render_markdown`); the synthetic generator writes rows that follow it;
the de-identifier reads :attr:`Column.phi_category` to decide what to pseudonymise, shift or drop
(and drops every column it does not know); issue 4 maps rows to FHIR with :attr:`Column.concept`,
:attr:`Column.values` and :attr:`Column.fhir`.

Examples
--------
>>> from incisive_lab.cdm.template import column
>>> column("psa_ng_ml").concept.code
'2857-1'
>>> column("sex").allowed_values
('female', 'male', 'other', 'unknown')
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from incisive_lab.cdm.codes import Code, concept

__all__ = [
    "CANCER_TYPES",
    "COLUMNS",
    "PHI_CATEGORIES",
    "SHEET_NAME",
    "Column",
    "column",
    "render_markdown",
    "validate_row",
]

#: The only sheet of the workbook.
SHEET_NAME = "patients"

#: Cancer types of the repository (values of the ``cancer_type`` column).
CANCER_TYPES: tuple[str, ...] = ("lung", "colorectal", "prostate", "breast")

#: What a column's content is, for de-identification.
PHI_CATEGORIES: Mapping[str, str] = MappingProxyType(
    {
        "direct-identifier": "identifies the patient directly (name, ID, address, phone, e-mail): "
        "pseudonymise or remove",
        "date": "a real calendar date of the patient: shift consistently or reduce",
        "free-text": "free text that may embed names, relatives, phone numbers: remove or scrub",
        "link": "links the row to imaging (accession numbers): replace consistently with the "
        "DICOM pseudonyms",
        "clinical": "coded, non-identifying clinical data: keep",
    }
)

ColumnType = Literal["string", "integer", "decimal", "date", "code", "code-list", "text"]
PhiCategory = Literal["direct-identifier", "date", "free-text", "link", "clinical"]


@dataclass(frozen=True)
class Column:
    """One column of the clinical template.

    Attributes
    ----------
    name : str
        Column header, exactly as in the header row.
    type : str
        ``string``, ``integer``, ``decimal``, ``date`` (an Excel date cell), ``code`` (one of
        :attr:`allowed_values`), ``code-list`` (``;``-separated allowed values) or ``text``
        (free text).
    required : bool
        Whether a value is required for every patient the column applies to.
    description : str
        What the column holds.
    phi_category : str
        One of :data:`PHI_CATEGORIES`.
    concept : Code or None
        What the column *is* (the LOINC or SNOMED CT code of the observation), if one applies.
    values : Mapping[str, tuple[Code, ...]] or None
        For ``code`` and ``code-list`` columns: each allowed value and the codes it stands for
        (an empty tuple for a local value with no standard code).
    applies_to : tuple[str, ...]
        Cancer types for which the column is filled; empty cells elsewhere.
    unit : str or None
        UCUM unit of numeric columns.
    minimum, maximum : float or None
        Bounds of numeric columns.
    fhir : str
        Where the value goes in FHIR (issue 4).
    """

    name: str
    type: ColumnType
    required: bool
    description: str
    phi_category: PhiCategory
    concept: Code | None = None
    values: Mapping[str, tuple[Code, ...]] | None = None
    applies_to: tuple[str, ...] = CANCER_TYPES
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    fhir: str = ""

    @property
    def allowed_values(self) -> tuple[str, ...] | None:
        """The allowed values of a coded column, in documentation order (else ``None``)."""
        if self.values is None:
            return None
        return tuple(self.values)


def _vals(*pairs: tuple[str, tuple[str, ...]]) -> Mapping[str, tuple[Code, ...]]:
    return MappingProxyType({value: tuple(concept(k) for k in keys) for value, keys in pairs})


def _local(*values: str) -> Mapping[str, tuple[Code, ...]]:
    return MappingProxyType({v: () for v in values})


_UICC_STAGES = ("I", "IA", "IB", "II", "IIA", "IIB", "IIC", "III", "IIIA", "IIIB", "IIIC", "IV", "IVA", "IVB")
_GLEASON = ("3+3=6", "3+4=7", "4+3=7", "4+4=8", "4+5=9", "5+4=9", "5+5=10")

COLUMNS: tuple[Column, ...] = (
    # --- identity -----------------------------------------------------------------------------
    Column("patient_id", "string", True, "Hospital patient identifier (MRN); equals DICOM "
           "PatientID of the patient's images.", "direct-identifier",
           fhir="Patient.identifier (type MR).value"),
    Column("issuer_of_patient_id", "string", True, "Issuer of patient_id; equals DICOM "
           "IssuerOfPatientID.", "direct-identifier", fhir="Patient.identifier (type MR).system"),
    Column("national_id", "string", False, "National identifier (health insurance / citizen "
           "number); equals the first item of DICOM OtherPatientIDsSequence.", "direct-identifier",
           fhir="Patient.identifier (type NI).value"),
    Column("family_name", "string", True, "Family name(s), as in the DICOM PatientName family "
           "component.", "direct-identifier", concept("loinc:last-name"),
           fhir="Patient.name.family"),
    Column("given_name", "string", True, "Given name, as in the DICOM PatientName given "
           "component.", "direct-identifier", concept("loinc:first-name"),
           fhir="Patient.name.given"),
    Column("birth_date", "date", True, "Date of birth.", "date", concept("loinc:birth-date"),
           fhir="Patient.birthDate"),
    Column("sex", "code", True, "Administrative gender.", "clinical", concept("loinc:sex"),
           _vals(("female", ("fhir:female",)), ("male", ("fhir:male",)),
                 ("other", ("fhir:other",)), ("unknown", ("fhir:unknown",))),
           fhir="Patient.gender"),
    Column("address", "string", True, "Postal address on one line.", "direct-identifier",
           concept("loinc:address"), fhir="Patient.address.text"),
    Column("phone", "string", True, "Telephone number (E.164 with spaces).", "direct-identifier",
           concept("loinc:phone"), fhir="Patient.telecom (system phone)"),
    Column("email", "string", False, "E-mail address.", "direct-identifier",
           fhir="Patient.telecom (system email)"),
    Column("accession_numbers", "string", True, "Accession numbers of the patient's imaging "
           "studies, ';'-separated, each equal to a DICOM AccessionNumber.", "link",
           fhir="ImagingStudy.identifier (type ACSN)"),
    # --- diagnosis ----------------------------------------------------------------------------
    Column("cancer_type", "code", True, "Primary cancer of the patient.", "clinical",
           values=_vals(("lung", ("sct:lung-cancer",)), ("colorectal", ("sct:colorectal-cancer",)),
                        ("prostate", ("sct:prostate-cancer",)), ("breast", ("sct:breast-cancer",))),
           fhir="Condition.code"),
    Column("diagnosis_date", "date", True, "Date of the histological diagnosis.", "date",
           concept("sct:date-of-diagnosis"), fhir="Condition.onsetDateTime"),
    Column("primary_site", "code", True, "Topography of the primary tumour (ICD-O-3).", "clinical",
           values=_vals(("C34.1", ("icdo3:C34.1", "sct:upper-lobe-of-lung")),
                        ("C34.3", ("icdo3:C34.3", "sct:lower-lobe-of-lung")),
                        ("C18.0", ("icdo3:C18.0", "sct:cecum")),
                        ("C18.2", ("icdo3:C18.2", "sct:ascending-colon")),
                        ("C18.7", ("icdo3:C18.7", "sct:sigmoid-colon")),
                        ("C20.9", ("icdo3:C20.9", "sct:rectum")),
                        ("C61.9", ("icdo3:C61.9", "sct:prostate")),
                        ("C50.2", ("icdo3:C50.2", "sct:upper-inner-quadrant-of-breast")),
                        ("C50.4", ("icdo3:C50.4", "sct:upper-outer-quadrant-of-breast"))),
           fhir="Condition.bodySite"),
    Column("laterality", "code", False, "Side of the primary tumour (paired organs).", "clinical",
           values=_vals(("left", ("sct:left",)), ("right", ("sct:right",))),
           applies_to=("lung", "breast"), fhir="Condition.bodySite (laterality qualifier)"),
    Column("histology", "code", True, "Morphology of the primary tumour (ICD-O-3).", "clinical",
           values=_vals(("8140/3", ("icdo3:8140/3", "sct:adenocarcinoma")),
                        ("8070/3", ("icdo3:8070/3", "sct:squamous-cell-carcinoma")),
                        ("8480/3", ("icdo3:8480/3", "sct:mucinous-adenocarcinoma")),
                        ("8500/3", ("icdo3:8500/3", "sct:infiltrating-duct-carcinoma")),
                        ("8520/3", ("icdo3:8520/3", "sct:lobular-carcinoma"))),
           fhir="Condition.extension(histologyMorphologyBehavior)"),
    Column("grade", "code", False, "Histologic grade (not used for prostate: see gleason_score).",
           "clinical", concept("sct:histologic-grade"),
           _vals(("G1", ("sct:g1",)), ("G2", ("sct:g2",)), ("G3", ("sct:g3",))),
           applies_to=("lung", "colorectal", "breast"), fhir="Observation (grade)"),
    Column("clinical_t", "code", True, "Clinical primary tumour category (UICC/AJCC 8th).",
           "clinical", concept("loinc:primary-tumor-clinical"),
           _vals(("cT1", ("sct:ajcc-ct1",)), ("cT2", ("sct:ajcc-ct2",)),
                 ("cT3", ("sct:ajcc-ct3",)), ("cT4", ("sct:ajcc-ct4",))),
           fhir="Observation (TNM T category)"),
    Column("clinical_n", "code", True, "Clinical regional lymph node category.", "clinical",
           concept("loinc:regional-nodes-clinical"),
           _vals(("cN0", ("sct:ajcc-cn0",)), ("cN1", ("sct:ajcc-cn1",)),
                 ("cN2", ("sct:ajcc-cn2",)), ("cN3", ("sct:ajcc-cn3",))),
           fhir="Observation (TNM N category)"),
    Column("clinical_m", "code", True, "Clinical distant metastasis category.", "clinical",
           concept("loinc:distant-metastases-clinical"),
           _vals(("cM0", ("sct:ajcc-cm0",)), ("cM1", ("sct:ajcc-cm1",))),
           fhir="Observation (TNM M category)"),
    Column("stage_group", "code", True, "Clinical stage group (UICC TNM 8th edition notation).",
           "clinical", concept("loinc:stage-group-clinical"),
           MappingProxyType({s: (Code("UICC-TNM", s, f"Stage {s}"),) for s in _UICC_STAGES}),
           fhir="Observation (stage group)"),
    Column("ecog", "integer", True, "ECOG performance status at diagnosis.", "clinical",
           concept("loinc:ecog"), minimum=0, maximum=4, fhir="Observation.valueInteger"),
    Column("smoking_status", "code", True, "Tobacco smoking status.", "clinical",
           concept("loinc:smoking-status"),
           _vals(("never", ("sct:never-smoked-tobacco",)), ("former", ("sct:ex-smoker",)),
                 ("current", ("sct:smoker",))),
           fhir="Observation.valueCodeableConcept"),
    # --- biomarkers ---------------------------------------------------------------------------
    Column("er_status", "code", True, "Oestrogen receptor status (IHC).", "clinical",
           concept("loinc:er-ihc"),
           _vals(("positive", ("sct:er-positive",)), ("negative", ("sct:er-negative",))),
           applies_to=("breast",), fhir="Observation (tumour marker)"),
    Column("pr_status", "code", True, "Progesterone receptor status (IHC).", "clinical",
           concept("loinc:pr-ihc"),
           _vals(("positive", ("sct:pr-positive",)), ("negative", ("sct:pr-negative",))),
           applies_to=("breast",), fhir="Observation (tumour marker)"),
    Column("her2_status", "code", True, "HER2 status (IHC, ISH-confirmed when equivocal).",
           "clinical", concept("loinc:her2-ihc"),
           _vals(("positive", ("sct:her2-positive",)), ("negative", ("sct:her2-negative",))),
           applies_to=("breast",), fhir="Observation (tumour marker)"),
    Column("ki67_percent", "integer", True, "Ki-67 proliferation index.", "clinical",
           concept("loinc:ki67"), applies_to=("breast",), unit="%", minimum=0, maximum=100,
           fhir="Observation.valueQuantity"),
    Column("egfr_mutation", "code", True, "EGFR mutation status.", "clinical",
           concept("loinc:egfr-mutation"), _local("mutated", "wild-type"),
           applies_to=("lung",), fhir="Observation (genomic variant)"),
    Column("alk_rearrangement", "code", True, "ALK rearrangement (FISH or NGS).", "clinical",
           concept("loinc:alk-rearrangement"), _local("detected", "not-detected"),
           applies_to=("lung",), fhir="Observation (genomic variant)"),
    Column("pdl1_status", "code", True, "PD-L1 (22C3) expression, positive at TPS >= 1%.",
           "clinical", concept("loinc:pdl1-22c3"), _local("positive", "negative"),
           applies_to=("lung",), fhir="Observation (tumour marker)"),
    Column("psa_ng_ml", "decimal", True, "Serum PSA at diagnosis.", "clinical",
           concept("loinc:psa"), applies_to=("prostate",), unit="ng/mL", minimum=0,
           maximum=10000, fhir="Observation.valueQuantity"),
    Column("gleason_score", "code", True, "Gleason score (primary+secondary=sum) on biopsy.",
           "clinical", concept("loinc:gleason-score"), _local(*_GLEASON),
           applies_to=("prostate",), fhir="Observation.valueString"),
    Column("isup_grade_group", "integer", True, "ISUP grade group derived from the Gleason "
           "score (local value: no code verified).", "clinical", applies_to=("prostate",),
           minimum=1, maximum=5, fhir="Observation.valueInteger"),
    Column("kras_mutation", "code", True, "KRAS mutation status.", "clinical",
           concept("loinc:kras-mutation"), _local("mutated", "wild-type"),
           applies_to=("colorectal",), fhir="Observation (genomic variant)"),
    Column("msi_status", "code", True, "Microsatellite instability.", "clinical",
           concept("loinc:msi"), _local("MSI-H", "MSS"), applies_to=("colorectal",),
           fhir="Observation.valueCodeableConcept"),
    Column("cea_ng_ml", "decimal", True, "Serum CEA at diagnosis.", "clinical",
           concept("loinc:cea"), applies_to=("colorectal",), unit="ng/mL", minimum=0,
           maximum=10000, fhir="Observation.valueQuantity"),
    # --- treatment and follow-up --------------------------------------------------------------
    Column("treatments", "code-list", True, "Treatment modalities given or started, "
           "';'-separated.", "clinical",
           values=_vals(("surgery", ("sct:surgical-procedure",)),
                        ("chemotherapy", ("sct:chemotherapy",)),
                        ("radiotherapy", ("sct:radiotherapy",)),
                        ("hormone-therapy", ("sct:hormone-therapy",)),
                        ("immunotherapy", ("sct:immunotherapy",)),
                        ("active-surveillance", ("sct:active-surveillance",))),
           fhir="Procedure.code / MedicationStatement (one per value)"),
    Column("surgery_procedure", "code", False, "The surgical procedure, when treatments "
           "contains surgery.", "clinical",
           values=_vals(("lobectomy-of-lung", ("sct:lobectomy-of-lung",)),
                        ("colectomy", ("sct:colectomy",)),
                        ("radical-prostatectomy", ("sct:radical-prostatectomy",)),
                        ("lumpectomy-of-breast", ("sct:lumpectomy-of-breast",))),
           fhir="Procedure.code"),
    Column("treatment_start_date", "date", True, "Start of the first treatment (or of active "
           "surveillance).", "date", concept("sct:date-treatment-started"),
           fhir="Procedure.performedPeriod.start"),
    Column("last_followup_date", "date", True, "Date of the last follow-up contact.", "date",
           fhir="Observation (disease status).effectiveDateTime"),
    Column("vital_status", "code", True, "Vital status at the last follow-up.", "clinical",
           values=_vals(("alive", ("sct:alive",)), ("deceased", ("sct:dead",))),
           fhir="Patient.deceasedBoolean"),
    Column("recurrence", "code", True, "Recurrence after treatment (local values: no code "
           "verified).", "clinical", values=_local("no", "yes", "unknown"),
           fhir="Observation (disease status) extension"),
    Column("disease_status", "code", True, "Cancer disease status at the last follow-up.",
           "clinical", concept("loinc:disease-status"),
           _vals(("improved", ("sct:condition-improved",)), ("stable", ("sct:condition-stable",)),
                 ("worsened", ("sct:condition-worsened",)),
                 ("undetermined", ("sct:condition-undetermined",))),
           fhir="Observation (cancer disease status)"),
    # --- consent, imaging label, free text ----------------------------------------------------
    Column("consent_status", "code", True, "Research consent: active (given), withdrawn, or "
           "pending.", "clinical", concept("loinc:consent"),
           _vals(("active", ("fhir:consent-active",)), ("withdrawn", ("fhir:consent-inactive",)),
                 ("pending", ("fhir:consent-draft",))),
           fhir="Consent.status"),
    Column("consent_date", "date", True, "Date of the current consent status (given, "
           "withdrawn or asked).", "date", fhir="Consent.dateTime"),
    Column("lesion_label", "code", True, "Imaging ground truth: whether the patient's imaging "
           "shows the tumour (matches the DICOM set).", "clinical",
           values=_vals(("present", ("sct:present",)), ("absent", ("sct:absent",))),
           fhir="Observation (imaging finding)"),
    Column("clinical_notes", "text", False, "Free-text clinical note; may contain names of the "
           "patient and relatives and phone numbers.", "free-text", fhir="(not mapped)"),
)

_BY_NAME: Mapping[str, Column] = MappingProxyType({c.name: c for c in COLUMNS})
if len(_BY_NAME) != len(COLUMNS):  # pragma: no cover - guarded by tests
    raise RuntimeError("duplicate column names in the clinical template")


def column(name: str) -> Column:
    """The column called `name` (``KeyError`` if the template has none)."""
    return _BY_NAME[name]


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def validate_row(row: Mapping[str, object]) -> list[str]:
    """Check one spreadsheet row against the template.

    Parameters
    ----------
    row : Mapping[str, object]
        Column name -> cell value (``datetime.date``/``datetime.datetime`` for dates, numbers for
        numeric columns, strings otherwise; ``None`` for empty cells).

    Returns
    -------
    list of str
        One message per problem; empty when the row is valid.
    """
    problems: list[str] = []
    unknown = sorted(set(row) - set(_BY_NAME))
    if unknown:
        problems.append(f"unknown columns: {', '.join(unknown)}")
    cancer = row.get("cancer_type")
    for col in COLUMNS:
        value = row.get(col.name)
        applies = cancer in col.applies_to if isinstance(cancer, str) else True
        if _is_empty(value):
            if col.required and applies:
                problems.append(f"{col.name}: required")
            continue
        if not applies:
            problems.append(f"{col.name}: must be empty for cancer_type {cancer}")
            continue
        problems.extend(_check_value(col, value))
    return problems


def _check_value(col: Column, value: object) -> list[str]:
    name = col.name
    if col.type == "date":
        if not isinstance(value, _dt.date):
            return [f"{name}: expected a date cell, got {type(value).__name__}"]
        return []
    if col.type in ("integer", "decimal"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{name}: expected a number, got {type(value).__name__}"]
        if col.type == "integer" and float(value) != int(value):
            return [f"{name}: expected an integer, got {value}"]
        out = []
        if col.minimum is not None and value < col.minimum:
            out.append(f"{name}: {value} below {col.minimum}")
        if col.maximum is not None and value > col.maximum:
            out.append(f"{name}: {value} above {col.maximum}")
        return out
    if not isinstance(value, str):
        return [f"{name}: expected text, got {type(value).__name__}"]
    if col.type == "code":
        assert col.values is not None
        return [] if value in col.values else [f"{name}: {value!r} not allowed"]
    if col.type == "code-list":
        assert col.values is not None
        bad = [v for v in value.split(";") if v not in col.values]
        return [f"{name}: {v!r} not allowed" for v in bad]
    return []


def _code_cell(codes: tuple[Code, ...]) -> str:
    if not codes:
        return "local value (no code)"
    return "; ".join(f"{c.system} `{c.code}` {c.display}" for c in codes)


def render_markdown() -> str:
    """Render ``docs/clinical-template.md`` from :data:`COLUMNS` (deterministic)."""
    lines = [
        "# Clinical spreadsheet template",
        "",
        "<!-- GENERATED from incisive_lab/cdm/template.py by "
        "incisive_lab.cdm.template.render_markdown(); do not edit by hand. -->",
        "",
        f"Each data provider supplies one Excel workbook (`clinical.xlsx`) with exactly one sheet "
        f"named `{SHEET_NAME}`: a header row with the column names below (any order), then one "
        "row per patient. Dates are real Excel date cells; numbers are numeric cells; coded "
        "columns hold the value in the *value* column of their table; code lists are separated "
        "by `;`. Columns that do not apply to a patient's `cancer_type` stay empty.",
        "",
        "The identity columns carry the same identities as the patient's DICOM images "
        "(`patient_id` = PatientID, `accession_numbers` = AccessionNumber of each study), so "
        "that de-identification can give both the same pseudonyms.",
        "",
        "## PHI categories",
        "",
        "| category | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in PHI_CATEGORIES.items()]
    lines += [
        "",
        "A de-identifier keeps only columns it knows from this template and drops any other "
        "column (fail closed).",
        "",
        "## Columns",
        "",
        "| column | type | required | PHI category | applies to | code of the column | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in COLUMNS:
        applies = "all" if c.applies_to == CANCER_TYPES else ", ".join(c.applies_to)
        parts = [f"{c.concept.system} `{c.concept.code}`"] if c.concept else []
        systems = sorted({k.system for codes in (c.values or {}).values() for k in codes})
        if systems:
            parts.append(f"values: {' + '.join(systems)}")
        code = "; ".join(parts) or "—"
        unit = f" ({c.unit})" if c.unit else ""
        lines.append(
            f"| `{c.name}` | {c.type}{unit} | {'yes' if c.required else 'no'} | "
            f"{c.phi_category} | {applies} | {code} | {c.description} |"
        )
    lines += ["", "## Column details", ""]
    for c in COLUMNS:
        lines.append(f"### `{c.name}`")
        lines.append("")
        lines.append(c.description)
        lines.append("")
        lines.append(f"* type: {c.type}" + (f", unit `{c.unit}`" if c.unit else ""))
        if c.minimum is not None or c.maximum is not None:
            lines.append(f"* range: {c.minimum:g} to {c.maximum:g}" if c.minimum is not None
                         and c.maximum is not None else f"* range: {c.minimum} to {c.maximum}")
        lines.append(f"* required: {'yes' if c.required else 'no'}")
        lines.append(f"* PHI category: `{c.phi_category}`")
        if c.applies_to != CANCER_TYPES:
            lines.append(f"* applies to: {', '.join(c.applies_to)}")
        if c.concept:
            lines.append(f"* code of the column: {c.concept}")
        lines.append(f"* FHIR: {c.fhir}")
        if c.values is not None:
            lines += ["", "| value | codes |", "|---|---|"]
            lines += [f"| `{v}` | {_code_cell(codes)} |" for v, codes in c.values.items()]
        lines.append("")
    lines += [
        "## Code systems",
        "",
        "`SCT` SNOMED CT (http://snomed.info/sct), `LOINC` (http://loinc.org), `ICDO3` ICD-O-3 "
        "(http://terminology.hl7.org/CodeSystem/icd-o-3), `UICC-TNM` UICC TNM 8th edition stage "
        "notation, `FHIR-GENDER` and `FHIR-CONSENT` FHIR value sets. Provenance and the way each "
        "code was verified: `incisive_lab/cdm/data/README.md`.",
        "",
    ]
    return "\n".join(lines)
