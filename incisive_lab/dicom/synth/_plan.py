"""The plan of a synthetic set: sites, patients, clinical data, studies and series.

Planning is cheap and fully deterministic; it fixes every identity, date, UID, file name, every
piece of PHI and where it goes, the lesion geometry and the transfer syntax of every series. The
renderer (:mod:`._render`) then only turns the plan into pixels and files.
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass, field
from typing import Any

from incisive_lab.dicom.synth._identity import (
    Person,
    Site,
    ascii_fold,
    make_address,
    make_birth_date,
    make_national_id,
    make_person,
    make_phone,
    make_site,
)
from incisive_lab.dicom.synth._random import derive_uid, py_rng, unit

__all__ = ["CANCER_TYPES", "PatientPlan", "SeriesPlan", "SitePlan", "StudyPlan", "plan_site"]

CANCER_TYPES = ("lung", "colorectal", "prostate", "breast")

# Transfer syntaxes (UIDs spelled out to keep this module free of pydicom).
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_2000 = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
COMPRESSED = (JPEG_LS, JPEG_2000, RLE)

#: Target fraction of files in a compressed transfer syntax, per site.
COMPRESSED_FRACTION = 0.125

_RELATIONS = ("daughter", "son", "wife", "husband", "sister", "brother")


@dataclass
class SeriesPlan:
    """One series: what it is, its UIDs, files and PHI placement."""

    kind: str
    modality: str
    uid: str
    number: int
    description: str
    protocol: str
    n: int
    sop_uids: list[str]
    files: list[str]
    frame_of_reference_uid: str | None
    time: _dt.time
    operators: list[Person]
    transfer_syntax: str = EXPLICIT_LE
    block_shift: bool = False
    preamble_junk: bool = False
    image_comment: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyPlan:
    """One study (an accession) of a patient."""

    index: int
    uid: str
    date: _dt.date
    time: _dt.time
    accession: str
    study_id: str
    description: str
    referring: Person
    reading: Person
    requested_procedure_id: str
    sps_id: str
    pps_id: str
    with_request_attributes: bool
    pps_comment: str | None
    followup_of: StudyPlan | None
    lesion_scale: float
    series: list[SeriesPlan] = field(default_factory=list)


@dataclass
class PatientPlan:
    """One patient: identity, flags saying where PHI is planted, clinical row, studies."""

    site: Site
    j: int
    cancer_type: str
    lesion: bool
    female: bool
    person: Person
    birth_date: _dt.date
    patient_id: str
    legacy_id: str
    national_id: str
    address: str
    phone: str
    email: str
    mother: Person
    relative: Person
    relation: str
    relative_phone: str
    age: int
    weight: int
    height_m: float
    flags: dict[str, bool]
    lesion_geometry: dict[str, Any]
    patient_comments: str
    additional_history: str
    clinical: dict[str, Any] = field(default_factory=dict)
    studies: list[StudyPlan] = field(default_factory=list)
    extra_tokens: list[str] = field(default_factory=list)

    def phi_tokens(self) -> list[str]:
        """Every identifying string planted for this patient."""
        out = self.person.tokens() + self.relative.tokens()
        if self.flags["mother"]:
            out += self.mother.tokens()
        out += [self.patient_id, self.national_id, self.address, ascii_fold(self.address),
                self.phone, self.email, self.relative_phone]
        if self.flags["other_ids"]:
            out.append(self.legacy_id)
        for st in self.studies:
            out += [st.accession, st.study_id, st.pps_id]
            if st.with_request_attributes:
                out += [st.requested_procedure_id, st.sps_id]
            if st.pps_comment:
                out.append(st.pps_comment)
            if "^" in st.description or self.person.family in st.description:
                out.append(st.description)
            for se in st.series:
                if self.patient_id in se.description or self.person.family in se.description:
                    out.append(se.description)
                if self.person.family in se.protocol:
                    out.append(se.protocol)
                if se.image_comment:
                    out.append(se.image_comment)
        if self.flags["comments_phi"]:
            out.append(self.patient_comments)
        if self.flags["history_phi"]:
            out.append(self.additional_history)
        out += self.extra_tokens
        seen: dict[str, None] = {}
        for t in out:
            if t and len(t) >= 4:
                seen.setdefault(t, None)
        return list(seen)

    def phi_dates(self) -> list[str]:
        """Every real date of this patient, ``YYYYMMDD``, sorted."""
        dates = {self.birth_date}
        for st in self.studies:
            dates.add(st.date)
            if st.series and any(s.kind == "sc" for s in st.series):
                dates.add(st.date + _dt.timedelta(days=1))
        for key in ("diagnosis_date", "treatment_start_date", "last_followup_date",
                    "consent_date", "birth_date"):
            value = self.clinical.get(key)
            if isinstance(value, _dt.date):
                dates.add(value)
        return sorted(d.strftime("%Y%m%d") for d in dates)


@dataclass
class SitePlan:
    """A site and its patients."""

    site: Site
    legacy_issuer: str
    patients: list[PatientPlan]

    def tokens(self) -> list[str]:
        """Identifying strings of the site (institution, staff, devices, issuers)."""
        out = [*self.site.tokens(), self.legacy_issuer]
        return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------------------------
# clinical data


def _stage(cancer: str, t: str, n: str, m: str, extra: dict[str, Any]) -> str:
    ti = int(t[2])
    if m == "cM1":
        return "IV"
    if cancer == "lung":
        if n == "cN0":
            return {1: "IA", 2: "IB", 3: "IIB"}.get(ti, "IIIA")
        if n == "cN1":
            return "IIB" if ti <= 2 else "IIIA"
        return "IIIA" if ti <= 2 else "IIIB"
    if cancer == "breast":
        if n == "cN0":
            return {1: "IA", 2: "IIA", 3: "IIB"}.get(ti, "IIIB")
        if n == "cN1":
            return {1: "IIA", 2: "IIB"}.get(ti, "IIIA")
        return "IIIA" if ti <= 3 else "IIIB"
    if cancer == "colorectal":
        if n == "cN0":
            return {1: "I", 2: "I", 3: "IIA"}.get(ti, "IIB")
        if n == "cN1":
            return "IIIA" if ti <= 2 else "IIIB"
        return "IIIC"
    # prostate (simplified UICC 8: PSA, grade group and T)
    if n != "cN0":
        return "IVA"
    gg, psa = extra["isup_grade_group"], extra["psa_ng_ml"]
    if ti >= 3:
        return "IIIB"
    if gg == 5 or psa >= 20:
        return "IIIA"
    if gg == 1:
        return "I" if psa < 10 else "IIA"
    return {2: "IIB", 3: "IIC", 4: "IIC"}[gg]


_GLEASON_BY_GG = {1: "3+3=6", 2: "3+4=7", 3: "4+3=7", 4: "4+4=8", 5: "4+5=9"}


def _clinical(rng: random.Random, p: PatientPlan, dates: dict[str, _dt.date],
              has_followup: bool) -> dict[str, Any]:
    c = p.cancer_type
    g = p.lesion_geometry
    row: dict[str, Any] = {
        "patient_id": p.patient_id,
        "issuer_of_patient_id": p.site.mrn_issuer,
        "national_id": p.national_id,
        "family_name": p.person.family,
        "given_name": p.person.given,
        "birth_date": p.birth_date,
        "sex": "female" if p.female else "male",
        "address": p.address,
        "phone": p.phone,
        "email": p.email,
        "accession_numbers": ";".join(s.accession for s in p.studies),
        "cancer_type": c,
        "diagnosis_date": dates["diagnosis"],
        "lesion_label": "present" if p.lesion else "absent",
    }
    diam = 2 * g["radius_mm"]
    if c == "lung":
        row["primary_site"] = "C34.1" if g["lobe"] == "upper" else "C34.3"
        row["laterality"] = g["side"]
        row["histology"] = "8140/3" if rng.random() < 0.6 else "8070/3"
        t = "cT1" if diam <= 30 else ("cT2" if diam <= 50 else "cT3")
    elif c == "colorectal":
        row["primary_site"] = g["segment"]
        row["histology"] = "8140/3" if rng.random() < 0.85 else "8480/3"
        t = "cT2" if g["radius_mm"] < 15 else ("cT3" if g["radius_mm"] < 20 else "cT4")
    elif c == "prostate":
        row["primary_site"] = "C61.9"
        row["histology"] = "8140/3"
        t = "cT2" if p.lesion else "cT1"
    else:
        row["primary_site"] = g["quadrant"]
        row["laterality"] = g["side"]
        row["histology"] = "8500/3" if rng.random() < 0.8 else "8520/3"
        t = "cT1" if diam <= 20 else "cT2"
    if not p.lesion and c != "prostate":
        t = rng.choice(["cT1", "cT2"])
    n = rng.choices(["cN0", "cN1", "cN2"], [0.7, 0.2, 0.1])[0]
    if c == "prostate":
        n = "cN0" if rng.random() < 0.92 else "cN1"
    m = "cM1" if (p.lesion and rng.random() < 0.06) else "cM0"
    if c != "prostate":
        row["grade"] = rng.choices(["G1", "G2", "G3"], [0.25, 0.5, 0.25])[0]
    extra: dict[str, Any] = {}
    if c == "breast":
        er = rng.random() < 0.75
        row["er_status"] = "positive" if er else "negative"
        row["pr_status"] = "positive" if (er and rng.random() < 0.8) else "negative"
        row["her2_status"] = "positive" if rng.random() < 0.18 else "negative"
        row["ki67_percent"] = rng.randrange(5, 60)
    elif c == "lung":
        row["egfr_mutation"] = "mutated" if rng.random() < 0.15 else "wild-type"
        row["alk_rearrangement"] = "detected" if rng.random() < 0.05 else "not-detected"
        row["pdl1_status"] = "positive" if rng.random() < 0.55 else "negative"
    elif c == "prostate":
        gg = (rng.choice([2, 3, 4, 5]) if p.lesion else 1)
        extra["isup_grade_group"] = gg
        extra["psa_ng_ml"] = round(rng.uniform(4.5, 9.5) if gg == 1 else rng.uniform(5.0, 28.0), 1)
        row["psa_ng_ml"] = extra["psa_ng_ml"]
        row["gleason_score"] = _GLEASON_BY_GG[gg]
        row["isup_grade_group"] = gg
    else:
        row["kras_mutation"] = "mutated" if rng.random() < 0.4 else "wild-type"
        row["msi_status"] = "MSI-H" if rng.random() < 0.15 else "MSS"
        row["cea_ng_ml"] = round(rng.uniform(1.0, 4.5) if rng.random() < 0.6 else
                                 rng.uniform(5.0, 40.0), 1)
    row["clinical_t"], row["clinical_n"], row["clinical_m"] = t, n, m
    stage = _stage(c, t, n, m, extra)
    row["stage_group"] = stage
    row["ecog"] = rng.choices([0, 1, 2], [0.5, 0.4, 0.1])[0] if stage != "IV" else rng.choice([1, 2])
    if c == "lung":
        row["smoking_status"] = rng.choices(["current", "former", "never"], [0.45, 0.45, 0.1])[0]
    else:
        row["smoking_status"] = rng.choices(["current", "former", "never"], [0.2, 0.3, 0.5])[0]

    # treatment, coherent with imaging: with a follow-up study of a visible lesion, the first
    # treatment is non-surgical (the lesion is still there, smaller, at follow-up).
    treatments: list[str]
    surgery = None
    if c == "prostate":
        if not p.lesion:
            treatments = ["active-surveillance"]
        elif has_followup or rng.random() < 0.5:
            treatments = ["radiotherapy", "hormone-therapy"]
        else:
            treatments, surgery = ["surgery"], "radical-prostatectomy"
    elif p.lesion and (has_followup or stage in ("IIIB", "IIIC", "IV")):
        treatments = ["chemotherapy"]
        if c == "lung":
            treatments += ["radiotherapy"] if stage != "IV" else []
            treatments += ["immunotherapy"] if row["pdl1_status"] == "positive" else []
        elif c == "breast":
            treatments += ["surgery", "radiotherapy"]
            surgery = "lumpectomy-of-breast"
        elif c == "colorectal" and g["segment"] == "C20.9":
            treatments += ["radiotherapy"]
    else:
        surgery = {"lung": "lobectomy-of-lung", "colorectal": "colectomy",
                   "breast": "lumpectomy-of-breast"}[c]
        treatments = ["surgery"]
        if stage.startswith(("II", "III")):
            treatments.append("chemotherapy")
        if c == "breast":
            treatments.append("radiotherapy")
    if c == "breast" and row["er_status"] == "positive":
        treatments.append("hormone-therapy")
    row["treatments"] = ";".join(dict.fromkeys(treatments))
    row["surgery_procedure"] = surgery
    row["treatment_start_date"] = dates["treatment"]
    row["last_followup_date"] = dates["last_followup"]
    scale = p.studies[-1].lesion_scale if p.studies else 1.0
    if p.lesion:
        if has_followup:
            row["disease_status"] = ("improved" if scale < 0.9 else
                                     "worsened" if scale > 1.1 else "stable")
        else:
            row["disease_status"] = rng.choice(["stable", "undetermined", "improved"])
        row["recurrence"] = "unknown" if rng.random() < 0.3 else "no"
    else:
        row["disease_status"] = rng.choice(["stable", "improved"])
        row["recurrence"] = "no"
    row["vital_status"] = "deceased" if (stage == "IV" and not has_followup
                                         and rng.random() < 0.5) else "alive"
    status = rng.choices(["active", "withdrawn", "pending"], [0.84, 0.1, 0.06])[0]
    row["consent_status"] = status
    row["consent_date"] = dates["consent_withdrawn" if status == "withdrawn" else "consent"]
    row["clinical_notes"] = (
        f"{p.person.natural} seen in clinic with {p.relation} {p.relative.natural} "
        f"(tel. {p.relative_phone}). {_note_sentence(rng, c, p.lesion)}"
    )
    return row


def _note_sentence(rng: random.Random, cancer: str, lesion: bool) -> str:
    if lesion:
        return rng.choice(["Discussed at the tumour board; treatment plan agreed.",
                           "Biopsy results explained; staging completed.",
                           "Tolerating the first cycle well, mild fatigue."])
    return rng.choice(["No evidence of disease on surveillance imaging.",
                       "Routine surveillance visit, no complaints.",
                       "Recovering well after treatment."])


# ----------------------------------------------------------------------------------------------
# patients and studies


def _patient_dates(rng: random.Random, anchor: _dt.date, lesion: bool, cancer: str,
                   followup: bool) -> dict[str, _dt.date]:
    d = _dt.timedelta
    out: dict[str, _dt.date] = {}
    if lesion:
        out["study1"] = anchor + d(rng.randrange(0, 6))
        out["diagnosis"] = out["study1"] + d(rng.randrange(7, 22))
        out["treatment"] = out["diagnosis"] + d(rng.randrange(14, 41))
        out["consent"] = out["diagnosis"] + d(rng.randrange(0, 11))
        if followup:
            out["study2"] = out["treatment"] + d(rng.randrange(60, 151))
    else:
        out["diagnosis"] = anchor
        out["treatment"] = anchor + d(rng.randrange(7, 22) if cancer == "prostate"
                                      else rng.randrange(14, 41))
        out["consent"] = anchor + d(rng.randrange(3, 21))
        out["study1"] = out["treatment"] + d(rng.randrange(40, 121))
        if followup:
            out["study2"] = out["study1"] + d(rng.randrange(90, 151))
    latest = max(out.values())
    out["last_followup"] = min(latest + d(rng.randrange(20, 91)), anchor + d(360))
    out["consent_withdrawn"] = min(out["consent"] + d(rng.randrange(60, 200)),
                                   out["last_followup"])
    return out


def _lesion_geometry(rng: random.Random, cancer: str, lesion: bool) -> dict[str, Any]:
    g: dict[str, Any] = {}
    if cancer == "lung":
        g["side"] = rng.choice(["left", "right"])
        g["lobe"] = rng.choice(["upper", "lower"])
        g["z"] = rng.uniform(0.22, 0.42) if g["lobe"] == "upper" else rng.uniform(0.55, 0.75)
        angle, rad = rng.uniform(0, 6.2832), rng.uniform(0.0, 0.5)
        g["u"], g["v"] = rad * _cos(angle), rad * _sin(angle)
        g["radius_mm"] = round(rng.uniform(6.0, 16.0), 1)
    elif cancer == "colorectal":
        g["segment"] = rng.choice(["C18.0", "C18.2", "C18.7", "C20.9"])
        g["angle"] = rng.uniform(0, 6.2832)
        g["radius_mm"] = round(rng.uniform(11.0, 22.0), 1)
    elif cancer == "prostate":
        g["side"] = rng.choice(["left", "right"])
        g["z"] = rng.uniform(0.35, 0.65)
        g["radius_mm"] = round(rng.uniform(4.5, 9.0), 1)
    else:
        g["side"] = rng.choice(["left", "right"])
        g["quadrant"] = rng.choice(["C50.4", "C50.2"])
        g["depth"] = rng.uniform(0.35, 0.65)
        g["offset"] = rng.uniform(0.12, 0.4)
        g["radius_mm"] = round(rng.uniform(5.0, 13.0), 1)
        g["spiculated"] = rng.random() < 0.5
    g["present"] = lesion
    return g


def _cos(x: float) -> float:
    import math

    return math.cos(x)


def _sin(x: float) -> float:
    import math

    return math.sin(x)


def _time(rng: random.Random, start_h: int = 7, end_h: int = 18) -> _dt.time:
    minutes = rng.randrange(start_h * 60, end_h * 60)
    return _dt.time(minutes // 60, minutes % 60, rng.randrange(60))


def _add_minutes(t: _dt.time, minutes: float) -> _dt.time:
    base = _dt.datetime(2000, 1, 1, t.hour, t.minute, t.second)
    out = base + _dt.timedelta(minutes=minutes)
    return out.time().replace(microsecond=0)


_STUDY_TEXT = {
    "lung": ("CT THORAX W/O CONTRAST", "CT chest staging", "Thorax Routine"),
    "colorectal": ("CT ABDOMEN PELVIS W CONTRAST", "CT abdomen pelvis staging", "AbdPelvis PV"),
    "prostate": ("MR PROSTATE MULTIPARAMETRIC", "MRI prostate", "Prostate mpMRI"),
    "breast": ("MAMMOGRAPHY BILATERAL", "Bilateral mammography", "Mammo 4 views"),
}


def _series_specs(cancer: str, vendor: str, rng: random.Random) -> list[dict[str, Any]]:
    siemens = vendor == "SIEMENS"
    if cancer == "lung":
        return [
            {"kind": "ct-localizer", "modality": "CT", "n": 1,
             "description": "Topogram 0.6 T20f" if siemens else "Scout",
             "protocol": "Thorax Routine" if siemens else "Chest Routine"},
            {"kind": "ct-chest", "modality": "CT", "n": rng.randrange(40, 53),
             "description": "Thorax 5.0 B70f" if siemens else "AX LUNG 5mm",
             "protocol": "Thorax Routine" if siemens else "Chest Routine"},
        ]
    if cancer == "colorectal":
        return [
            {"kind": "ct-localizer", "modality": "CT", "n": 1,
             "description": "Topogram 0.6 T20f" if siemens else "Scout",
             "protocol": "Abdomen PV" if siemens else "AbdPel PV"},
            {"kind": "ct-abdomen", "modality": "CT", "n": rng.randrange(36, 49),
             "description": "AbdPel 5.0 Br40 PV" if siemens else "AX ABD PEL 5mm PV",
             "protocol": "Abdomen PV" if siemens else "AbdPel PV"},
        ]
    if cancer == "prostate":
        n_dwi = rng.randrange(10, 13)
        return [
            {"kind": "mr-t2", "modality": "MR", "n": rng.randrange(18, 23),
             "description": "t2_tse_tra" if siemens else "Ax T2 FRFSE",
             "protocol": "t2_tse_tra" if siemens else "Prostate T2 AX"},
            {"kind": "mr-dwi", "modality": "MR", "n": 2 * n_dwi, "slices": n_dwi,
             "description": "ep2d_diff_b50_800_tra_TRACEW" if siemens else "Ax DWI b50 b800",
             "protocol": "ep2d_diff_tra" if siemens else "Prostate DWI"},
            {"kind": "mr-adc", "modality": "MR", "n": n_dwi,
             "description": "ep2d_diff_b50_800_tra_ADC" if siemens else "ADC (10^-6 mm2/s)",
             "protocol": "ep2d_diff_tra" if siemens else "Prostate DWI"},
        ]
    return [{"kind": "mg", "modality": "MG", "n": 4,
             "description": "Mammogram 4 views", "protocol": "Screening 4V"}]


def plan_site(seed: int, name: str, index: int, n_patients: int) -> SitePlan:
    """Plan every patient of one site.

    Parameters
    ----------
    seed : int
        Seed of the whole set.
    name : str
        Site name (folder name).
    index : int
        Position of the site in the site list (picks country and vendor).
    n_patients : int
        Number of patients of this site.
    """
    site = make_site(seed, name, index)
    legacy_issuer = f"{site.code3}-LEGACY-{index + 1}"
    plan = SitePlan(site, legacy_issuer, [])
    used_ids: set[str] = set()
    used_acc: set[str] = set()
    for j in range(n_patients):
        plan.patients.append(_plan_patient(seed, site, j, used_ids, used_acc, legacy_issuer))
    _assign_transfer_syntaxes(seed, plan)
    return plan


def _unique_id(rng: random.Random, used: set[str], make: Any) -> str:
    while True:
        value = make(rng)
        if value not in used:
            used.add(value)
            return str(value)


def _plan_patient(seed: int, site: Site, j: int, used_ids: set[str], used_acc: set[str],
                  legacy_issuer: str) -> PatientPlan:
    rng = py_rng(seed, "patient", site.name, j)
    cancer = CANCER_TYPES[(j + site.index) % 4]
    lesion = ((j // 4) + (j % 2)) % 2 == 1
    if cancer == "breast":
        female = True
    elif cancer == "prostate":
        female = False
    else:
        female = rng.random() < 0.45
    country = site.country
    person = make_person(rng, country, female=female)
    anchor = _dt.date(2021, 1, 4) + _dt.timedelta(days=rng.randrange(0, 1200))
    age_range = {"breast": (42, 79), "prostate": (55, 80)}.get(cancer, (48, 84))
    birth = make_birth_date(rng, anchor, *age_range)
    age = (anchor - birth).days // 365
    pid = _unique_id(rng, used_ids, lambda r: f"{site.code3}{r.randrange(10**6, 10**7):07d}")
    followup = j % 7 == 2
    dates = _patient_dates(rng, anchor, lesion, cancer, followup)
    mother = make_person(rng, country, female=True)
    relative = make_person(rng, country, female=rng.random() < 0.5)
    relation = rng.choice(_RELATIONS)
    flags = {
        "other_ids": unit(seed, "flag-other", site.name, j) < 0.7,
        "other_ids_retired": unit(seed, "flag-otherret", site.name, j) < 0.3,
        "ref_patient": unit(seed, "flag-refpat", site.name, j) < 0.4,
        "mother": unit(seed, "flag-mother", site.name, j) < 0.5,
        "address": unit(seed, "flag-address", site.name, j) < 0.9 or j == 0,
        "telephone": unit(seed, "flag-phone", site.name, j) < 0.8 or j == 0,
        "comments_phi": unit(seed, "flag-comments", site.name, j) < 0.5 or j == 1,
        "history_phi": unit(seed, "flag-history", site.name, j) < 0.4 or j == 0,
        "acme": unit(seed, "flag-acme", site.name, j) < 0.5 or j < 2,
        "physicians_of_record": unit(seed, "flag-por", site.name, j) < 0.3,
    }
    email_user = ascii_fold(f"{person.given}.{person.family.split()[0]}").lower()
    p = PatientPlan(
        site=site, j=j, cancer_type=cancer, lesion=lesion, female=female, person=person,
        birth_date=birth, patient_id=pid,
        legacy_id=f"{site.code3}OLD{rng.randrange(10**5, 10**6)}",
        national_id=make_national_id(rng, country, person, birth, female),
        address=make_address(rng, country, site.city if rng.random() < 0.6 else
                             rng.choice(country.city_a) + rng.choice(country.city_b).lower()),
        phone=make_phone(rng, country),
        email=f"{email_user}{rng.randrange(10, 99)}@example.{rng.choice(['com', 'org', 'net'])}",
        mother=mother, relative=relative, relation=relation,
        relative_phone=make_phone(rng, country),
        age=age, weight=rng.randrange(52, 98), height_m=round(rng.uniform(1.55, 1.88), 2),
        flags=flags, lesion_geometry=_lesion_geometry(rng, cancer, lesion),
        patient_comments="", additional_history="",
    )
    p.patient_comments = (
        f"Contact {relation} {relative.natural} {p.relative_phone}. Allergy: iodinated contrast."
        if flags["comments_phi"] else "No known allergies."
    )
    history = {"lung": "Persistent cough, weight loss.", "colorectal": "Rectal bleeding, anaemia.",
               "prostate": "Raised PSA on screening.", "breast": "Palpable lump reported."}[cancer]
    p.additional_history = (f"{person.natural}, {age} y. {history}" if flags["history_phi"]
                            else history)

    study_dates = [dates["study1"]] + ([dates["study2"]] if followup else [])
    previous: StudyPlan | None = None
    for k, date in enumerate(study_dates):
        study = _plan_study(seed, rng, p, k, date, previous, used_acc)
        p.studies.append(study)
        previous = study
    p.clinical = _clinical(rng, p, dates, followup)
    p.extra_tokens.append(p.clinical["clinical_notes"])
    return p


def _plan_study(seed: int, rng: random.Random, p: PatientPlan, k: int, date: _dt.date,
                previous: StudyPlan | None, used_acc: set[str]) -> StudyPlan:
    site = p.site
    key = (site.name, p.j, k)
    letter = "ABCDEFGHJKLMNPRSTUVWXYZ"[site.index % 23]
    accession = _unique_id(rng, used_acc,
                           lambda r: f"{date:%y}{letter}{r.randrange(10**6, 10**7):07d}")
    study_id = f"{'E' if site.vendor == 'GE' else 'S'}{rng.randrange(10**4, 10**5)}"
    base_desc, _, _ = _STUDY_TEXT[p.cancer_type]
    name_in_desc = unit(seed, "desc-name", *key) < 0.2 or (p.j == 2 and k == 0)
    description = (f"{base_desc} {ascii_fold(p.person.family).upper()}" if name_in_desc
                   else base_desc)
    if previous is not None:
        description = description.replace("STAGING", "FOLLOW-UP")
    with_ras = unit(seed, "ras", *key) < 0.7 or p.j == 0
    pps_comment = (f"Pt {p.person.family} anxious, {p.relation} present during scan"
                   if unit(seed, "pps-comment", *key) < 0.3 else None)
    scale = 1.0
    if previous is not None and p.lesion:
        scale = round(rng.choice([rng.uniform(0.6, 0.85), rng.uniform(0.95, 1.05),
                                  rng.uniform(1.1, 1.3)]), 2)
    study = StudyPlan(
        index=k,
        uid=derive_uid(seed, "study", *key),
        date=date,
        time=_time(rng),
        accession=accession,
        study_id=study_id,
        description=description,
        referring=rng.choice(site.referrers),
        reading=rng.choice(site.radiologists),
        requested_procedure_id=f"RP{accession}",
        sps_id=f"SPS{accession}",
        pps_id=f"PPS{accession}",
        with_request_attributes=with_ras,
        pps_comment=pps_comment,
        followup_of=previous,
        lesion_scale=scale,
    )
    vendor = site.mr_vendor if p.cancer_type == "prostate" else site.vendor
    specs = _series_specs(p.cancer_type, vendor, rng)
    if p.j % 3 == 1 and k == 0:
        specs.append({"kind": "sc", "modality": "OT", "n": 1, "description": "Key Images",
                      "protocol": "Key Images"})
    frame_uid = derive_uid(seed, "for", *key)
    t = study.time
    for idx, spec in enumerate(specs):
        kind = spec["kind"]
        number = {"ct-localizer": 1, "ct-chest": 2, "ct-abdomen": 2, "mr-t2": 3, "mr-dwi": 5,
                  "mr-adc": 6, "mg": 1, "sc": 900}[kind]
        if vendor == "SIEMENS" and kind in ("ct-chest", "ct-abdomen"):
            number = 3
        skey = (*key, kind)
        desc = spec["description"]
        if unit(seed, "series-id", *skey) < 0.15 or (p.j == 0 and kind in ("ct-chest", "mg")):
            desc = f"{desc} {p.patient_id}"
        protocol = spec["protocol"]
        if unit(seed, "protocol-name", *skey) < 0.25 or (p.j == 1 and kind != "sc"):
            protocol = f"{protocol} {p.person.family} {p.person.given[0]}"
        image_comment = None
        if kind == "sc" or unit(seed, "image-comment", *skey) < 0.2:
            image_comment = f"Key images reviewed for {p.person.pn}"
        operators = [rng.choice(site.technologists)]
        if rng.random() < 0.3:
            operators.append(rng.choice([x for x in site.technologists if x != operators[0]]))
        n = int(spec["n"])
        sop_uids = [derive_uid(seed, "sop", *skey, i) for i in range(n)]
        modality_dir = spec["modality"]
        files = [f"dicom/{p.patient_id}/study{k + 1}/series{number:03d}_{modality_dir}/"
                 f"{i + 1:04d}.dcm" for i in range(n)]
        series_uid = derive_uid(seed, "series", *skey)
        if kind in ("mr-t2", "mr-dwi", "mr-adc"):
            for_uid: str | None = frame_uid
        elif kind in ("mg", "sc"):
            for_uid = None
        else:
            for_uid = derive_uid(seed, "for", *skey)
        series = SeriesPlan(
            kind=kind, modality=spec["modality"], uid=series_uid, number=number,
            description=desc, protocol=protocol, n=n, sop_uids=sop_uids, files=files,
            frame_of_reference_uid=for_uid, time=_add_minutes(t, 2 + 4 * idx),
            operators=operators,
            block_shift=unit(seed, "block-shift", *skey) < 0.3 or (p.j == 0 and idx == 0),
            preamble_junk=unit(seed, "preamble", *skey) < 0.25 or (p.j == 1 and idx == 0),
            image_comment=image_comment,
            params={k2: v for k2, v in spec.items() if k2 == "slices"},
        )
        study.series.append(series)
    return study


def _assign_transfer_syntaxes(seed: int, plan: SitePlan) -> None:
    """Pick compressed, implicit and deflated series for the site (deterministic)."""
    all_series = [s for p in plan.patients for st in p.studies for s in st.series]
    total = sum(s.n for s in all_series)
    if not all_series:
        return
    # one implicit-VR series (a localizer, else an MG series, else the first series) and one
    # deflated file (a secondary capture, else another localizer)
    implicit = next((s for s in all_series if s.kind == "ct-localizer"), None)
    implicit = implicit or next((s for s in all_series if s.kind == "mg"), all_series[0])
    implicit.transfer_syntax = IMPLICIT_LE
    deflated = next((s for s in all_series if s.kind == "sc"), None)
    deflated = deflated or next((s for s in all_series if s.n == 1 and s is not implicit), None)
    if deflated is not None:
        deflated.transfer_syntax = DEFLATED_LE
    if len(plan.patients) > 2:
        second = next((s for s in all_series if s.kind in ("mr-adc", "mg")
                       and s.transfer_syntax == EXPLICIT_LE), None)
        if second is not None and second.n <= 16:
            second.transfer_syntax = IMPLICIT_LE
    # compressed: walk the series in a seeded order, take a series when it brings the compressed
    # fraction closer to the target; cycle the syntaxes, JPEG 2000 (slow to encode) for
    # single-image series only
    order = sorted(all_series, key=lambda s: unit(seed, "ts-order", s.uid))
    target = COMPRESSED_FRACTION * total
    done = 0
    cycle = 0
    single = next((s for s in order if s.n == 1 and s.transfer_syntax == EXPLICIT_LE), None)
    if single is not None:
        single.transfer_syntax = JPEG_2000
        done += 1
    for s in order:
        if s.transfer_syntax != EXPLICIT_LE:
            continue
        if abs(done + s.n - target) < abs(done - target):
            if s.n == 1:
                s.transfer_syntax = (JPEG_LS, RLE, JPEG_2000)[cycle % 3]
            else:
                s.transfer_syntax = (JPEG_LS, RLE)[cycle % 2]
            cycle += 1
            done += s.n
