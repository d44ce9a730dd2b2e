"""The manifest lists every identifying string and date actually present in the set.

Walks every element of every file (nested items, private elements and the file meta included)
and checks, by category, that what identifies a patient or a site is listed in the ground truth;
and, the other way round, that no listed token shows up in non-PHI content by chance.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.dicom.synth import PRIVATE_TAGS, SAFE_PRIVATE_TAGS
from incisive_lab.dicom.synth._identity import COUNTRIES, ascii_fold, forbidden_corpus
from tests.dicom._helpers import WORD, codec_of, iter_entries, load_truth, read, text_of, walk

#: Attributes whose whole value is an identifier of the patient or the site.
IDENTIFIERS = {
    "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "AccessionNumber", "StudyID",
    "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
    "PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
}
#: Free text that may embed identity.
FREE_TEXT = {
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments", "PatientComments",
    "AdditionalPatientHistory", "CommentsOnThePerformedProcedureStep",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription",
    "PerformedProcedureStepDescription", "ReasonForTheRequestedProcedure",
    "DerivationDescription", "ContributionDescription",
}
_DIGITS = re.compile(r"\d{5,}")


@cache
def name_universe() -> frozenset[str]:
    """Every name part the generator can produce (lower case, with ASCII variants)."""
    names: set[str] = set()
    for country in COUNTRIES:
        for female in (False, True):
            names.update(country.given_names(female))
            names.update(country.family_names(female))
    return frozenset({n.lower() for n in names} | {ascii_fold(n).lower() for n in names})


class Truth:
    def __init__(self, out: Path) -> None:
        self.sites = load_truth(out)
        self.patient: dict[tuple[str, str], dict[str, Any]] = {}
        for site, truth in self.sites.items():
            for p in truth["patients"]:
                self.patient[(site, p["patient_id"])] = p

    def tokens(self, site: str, patient_id: str) -> list[str]:
        return self.patient[(site, patient_id)]["phi_tokens"] + self.sites[site]["site_phi_tokens"]

    def dates(self, site: str, patient_id: str) -> set[str]:
        return set(self.patient[(site, patient_id)]["phi_dates"])


def _strip_tokens(text: str, tokens: list[str]) -> str:
    low = text.lower()
    for tok in sorted(tokens, key=len, reverse=True):
        low = low.replace(tok.lower(), " ")
    return low


def _leftover_identity(text: str, tokens: list[str], digits: bool = True) -> list[str]:
    """Names (and long digit runs) left in `text` once the listed tokens are removed."""
    rest = _strip_tokens(text, tokens)
    words = [w for w in WORD.findall(rest) if w.lower() in name_universe()]
    return words + (_DIGITS.findall(rest) if digits else [])


def _private_meaning(creator: str | None, group: int, element: int) -> Any:
    for t in PRIVATE_TAGS:
        if t.creator == creator and t.group == group and t.offset == (element & 0xFF):
            return t
    return None


@pytest.fixture(scope="module")
def truth(small_set: Path) -> Truth:
    return Truth(small_set)


def test_tokens_are_long_and_not_common_words(small_set: Path, truth: Truth) -> None:
    corpus = forbidden_corpus()
    for site, t in truth.sites.items():
        all_tokens = t["site_phi_tokens"] + [tok for p in t["patients"] for tok in p["phi_tokens"]]
        for tok in all_tokens:
            assert len(tok) >= 4, tok
            if tok.isalpha():
                assert ascii_fold(tok).lower() not in corpus, (site, tok)
        for p in t["patients"]:
            assert all(re.fullmatch(r"\d{8}", d) for d in p["phi_dates"])


@pytest.fixture(scope="module")
def five_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site per country (Greece, Italy, Serbia, Cyprus, Spain) and a sixth site."""
    from incisive_lab.dicom.synth import generate

    out = tmp_path_factory.mktemp("synth-five") / "set"
    generate(out, patients=12, seed=11, sites=("a", "b", "c", "d", "e", "f"), progress=False)
    return out


def test_every_identifying_value_is_in_the_manifest(small_set: Path, truth: Truth) -> None:
    seen = check_identifying(small_set, truth)
    for kw in ("PatientName", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName",
               "NameOfPhysiciansReadingStudy", "PatientMotherBirthName", "PersonName",
               "PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID",
               "RequestedProcedureID", "ScheduledProcedureStepID", "PatientAddress",
               "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
               "InstitutionalDepartmentName", "StationName", "OtherPatientIDs", "DA", "DT",
               "free-text-with-phi", "private-safe", "private-identifying"):
        assert seen[kw] > 0, kw


def test_every_country_and_charset(five_sites: Path) -> None:
    truth = Truth(five_sites)
    non_phi: set[str] = set()
    check_identifying(five_sites, truth, non_phi)
    # a leak scanner looks for every token of every patient and site in every file: no token
    # may occur, even as a substring, in any non-PHI value of the set
    from incisive_lab.cdm.spreadsheet import read_workbook
    from incisive_lab.cdm.template import column

    for site in truth.sites:
        for row in read_workbook(five_sites / site / "clinical.xlsx"):
            non_phi.update(str(v) for k, v in row.items()
                           if v is not None and column(k).phi_category == "clinical")
    corpus = "\n".join(sorted(non_phi)).lower()
    every = {t.lower() for site in truth.sites.values() for t in site["site_phi_tokens"]}
    every |= {t.lower() for p in truth.patient.values() for t in p["phi_tokens"]}
    assert not [t for t in every if t in corpus]
    countries = {t["institution"]["country"] for t in truth.sites.values()}
    assert countries == {"Greece", "Italy", "Serbia", "Cyprus", "Spain"}
    charsets = {t["institution"]["specific_character_set"] for t in truth.sites.values()}
    assert charsets == {None, "ISO_IR 100", "ISO_IR 192"}


def check_identifying(out: Path, truth: Truth, seen_values: set[str] | None = None
                      ) -> Counter[str]:
    """Check every element of every file of `out`; collect non-PHI values in `seen_values`."""
    seen: Counter[str] = Counter()
    if seen_values is None:
        seen_values = set()
    for site, rel, entry, path in iter_entries(out):
        ds = read(path)
        pid = entry["patient_id"]
        tokens = truth.tokens(site, pid)
        low = {t.lower() for t in tokens}
        dates = truth.dates(site, pid)
        codec = codec_of(ds)
        national_issuer = truth.sites[site]["institution"]["national_id_issuer"]
        for path_, elem, creator in walk(ds):
            where = f"{rel} {'/'.join(path_)} {elem.tag} {elem.keyword}"
            if elem.VR == "SQ" or elem.tag.is_private_creator:
                continue
            values = text_of(elem, codec)
            if elem.tag.is_private:
                meaning = _private_meaning(creator, elem.tag.group, elem.tag.element)
                assert meaning is not None, f"undocumented private element {where}"
                key = (creator, elem.tag.group, elem.tag.element & 0xFF)
                if key in SAFE_PRIVATE_TAGS:
                    for v in values:
                        assert not _leftover_identity(v, [], digits=False), where
                        assert v.lower() not in low, where
                    seen["private-safe"] += 1
                elif meaning.identifying:
                    for v in values:
                        ok = (any(t in v.lower() for t in low) or v in dates
                              or v == ds.StudyInstanceUID)
                        assert ok, f"{where}: {v!r} not covered"
                    seen["private-identifying"] += 1
                continue
            kw = elem.keyword
            if elem.VR == "PN":
                for v in values:
                    parts = [x for x in v.split("=")[0].split("^")[:2] if x]
                    assert parts and all(x.lower() in low for x in parts), f"{where}: {v!r}"
                seen[kw] += 1
            elif elem.VR == "DA":
                for v in values:
                    assert v in dates, f"{where}: date {v} not in phi_dates"
                seen["DA"] += 1
            elif elem.VR == "DT":
                for v in values:
                    assert v[:8] in dates, f"{where}: {v}"
                seen["DT"] += 1
            elif kw in IDENTIFIERS:
                for v in values:
                    nested_issuer = kw == "IssuerOfPatientID" and path_ and v == national_issuer
                    assert nested_issuer or v.lower() in low, f"{where}: {v!r} not a token"
                seen[kw] += 1
            elif kw in FREE_TEXT:
                for v in values:
                    assert not _leftover_identity(v, tokens), f"{where}: {v!r}"
                    seen_values.add(_strip_tokens(v, tokens))
                    if any(t in v.lower() for t in low):
                        seen["free-text-with-phi"] += 1
                seen[kw] += 1
            elif elem.VR in ("LO", "SH", "ST", "LT", "UT", "CS", "AE", "UC"):
                # everything else is non-PHI: no token may appear there by chance
                seen_values.update(values)
                for v in values:
                    hit = [t for t in low if t in v.lower()]
                    assert not hit, f"{where}: non-PHI value {v!r} contains tokens {hit}"
                    assert not _leftover_identity(v, [], digits=False), f"{where}: {v!r}"
        meta = ds.file_meta
        assert meta.SourceApplicationEntityTitle.lower() in low
        assert any(t in meta.ImplementationVersionName.lower() for t in low)
        if any(ds.preamble):
            assert any(t in ds.preamble.decode("ascii").lower() for t in low)
    return seen


def test_every_token_occurs_in_the_data(small_set: Path, truth: Truth) -> None:
    """No invented tokens: each patient token is found in its files or its spreadsheet row."""
    from incisive_lab.cdm.spreadsheet import read_workbook

    haystack: dict[tuple[str, str], list[str]] = defaultdict(list)
    for site, _, entry, path in iter_entries(small_set):
        ds = read(path)
        codec = codec_of(ds)
        chunks = haystack[(site, entry["patient_id"])]
        for _, elem, _ in walk(ds):
            if elem.VR != "SQ" and elem.tag.group != 0x7FE0:
                chunks.extend(text_of(elem, codec))
        chunks.extend(entry["burned_in_text"])
    for site in truth.sites:
        for row in read_workbook(small_set / site / "clinical.xlsx"):
            haystack[(site, row["patient_id"])].extend(str(v) for v in row.values() if v)
    for (site, pid), p in truth.patient.items():
        # tokens in ASCII-folded spelling (Djordjevic for Đorđević) count as the original
        text = ascii_fold("\n".join(haystack[(site, pid)])).lower()
        # a token occurs as such, or it is another spelling of a name whose parts all occur
        missing = [t for t in p["phi_tokens"] if ascii_fold(t).lower() not in text
                   and not (WORD.findall(t)
                            and all(ascii_fold(w).lower() in text for w in WORD.findall(t))
                            and not any(ch.isdigit() for ch in t))]
        assert not missing, (site, pid, missing)


@pytest.mark.slow
def test_phi_locations_are_all_used(full_set: Path) -> None:
    """Each place where PHI hides appears in the full set, most in a good fraction of files."""
    present: Counter[str] = Counter()
    n = 0
    full = Truth(full_set)
    for site, _, entry, path in iter_entries(full_set):
        ds = read(path)
        n += 1
        patient_tokens = [t.lower() for t in full.patient[(site, entry["patient_id"])]["phi_tokens"]]
        keys = {elem.keyword for _, elem, _ in walk(ds) if elem.keyword}
        keys |= {f"private:{creator}" for _, elem, creator in walk(ds) if creator}
        if any(ds.preamble):
            keys.add("preamble")
        for kw in ("StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
                   "AdditionalPatientHistory", "PatientComments"):
            value = str(ds.get(kw, "")).lower()
            if any(t in value for t in patient_tokens):
                keys.add(f"{kw}+phi")
        present.update(keys)
    always = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "AccessionNumber",
              "StudyID", "ReferringPhysicianName", "NameOfPhysiciansReadingStudy",
              "OperatorsName", "InstitutionName", "InstitutionAddress",
              "InstitutionalDepartmentName", "StationName", "StudyDate", "SeriesDate",
              "AcquisitionDate", "ContentDate", "InstanceCreationDate", "StudyTime",
              "SeriesTime", "AcquisitionTime", "ContentTime", "AcquisitionDateTime",
              "PatientComments", "AdditionalPatientHistory"]
    for kw in always:
        assert present[kw] >= 0.95 * n, (kw, present[kw], n)
    fraction = {
        "OtherPatientIDsSequence": 0.3, "PatientAddress": 0.6, "PatientTelephoneNumbers": 0.5,
        "PatientMotherBirthName": 0.2, "RequestAttributesSequence": 0.4,
        "ReferencedPatientSequence": 0.15, "PerformingPhysicianName": 0.2,
        "ProtocolContextSequence": 0.4, "PersonName": 0.4,
        "private:ACME PACS 2.1": 0.3, "private:GEMS_IDEN_01": 0.2,
        "private:SIEMENS MED": 0.2, "private:SIEMENS CSA HEADER": 0.1,
        "private:GEMS_ACQU_01": 0.1, "preamble": 0.1,
        "StudyDescription+phi": 0.05, "SeriesDescription+phi": 0.05,
        "ProtocolName+phi": 0.1, "ImageComments+phi": 0.05, "PatientComments+phi": 0.3,
        "AdditionalPatientHistory+phi": 0.2, "CommentsOnThePerformedProcedureStep": 0.1,
    }
    for key, minimum in fraction.items():
        assert present[key] >= minimum * n, (key, present[key], n)
    for key in ("ReferencedStudySequence", "SourceImageSequence", "ReferencedImageSequence",
                "ContributingEquipmentSequence", "AcquisitionContextSequence",
                "private:SIEMENS MR HEADER", "private:GEMS_PARM_01", "private:GEMS_GENIE_1",
                "OtherPatientIDs", "PhysiciansOfRecord"):
        assert present[key] > 0, key


@pytest.mark.slow
def test_private_blocks_are_not_always_at_the_same_number(full_set: Path) -> None:
    blocks: dict[str, set[int]] = defaultdict(set)
    for _, _, _, path in iter_entries(full_set):
        ds = read(path)
        for elem in ds:
            if elem.tag.is_private_creator:
                blocks[str(elem.value)].add(elem.tag.element)
    assert blocks["GEMS_ACQU_01"] == {0x10, 0x11}
    assert blocks["SIEMENS CSA HEADER"] == {0x10, 0x11}
    assert 0x10 in blocks["GEMS_GENIE_1"]  # the decoy where GEMS_ACQU_01 usually sits
    # a private element inside a nested item
    nested = any(
        path_ and elem.tag.is_private
        for _, _, _, p in iter_entries(full_set) for path_, elem, _ in walk(read(p))
    )
    assert nested


def test_phi_dates_stay_within_a_year(small_set: Path, truth: Truth) -> None:
    import datetime as dt

    for p in truth.patient.values():
        dates = sorted(dt.datetime.strptime(d, "%Y%m%d").date() for d in p["phi_dates"])
        birth = min(dates)
        rest = [d for d in dates if d != birth]
        assert (max(rest) - min(rest)).days < 365
        assert (min(rest) - birth).days > 30 * 365
