"""The identifier screen on its own: a vault of our making, objects with one planted identifier each."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from incisive_lab.deid.keys import Pseudonymizer, Secret
from incisive_lab.deid.screen import IdentifierScreen
from incisive_lab.deid.vault import Vault, VaultError

ORIGINAL = {"PatientID": "H-204417", "PatientName": "Novakova^Petra", "PatientBirthDate": "19650312",
            "PatientSex": "F", "IssuerOfPatientID": ""}
ORIGINAL_UID = "1.2.826.0.1.3680043.8.498.12345"


@pytest.fixture()
def screen(tmp_path: Path) -> IdentifierScreen:
    secret = Secret.generate()
    pseudo = Pseudonymizer(secret)
    vault = Vault(tmp_path / "vault.sqlite", secret, create=True)
    vault.put("patient", pseudo.patient("H-204417"), ORIGINAL)
    vault.put("patient", pseudo.patient("H-999001"), {**ORIGINAL, "PatientID": "H-999001", "PatientName": "Other^Anna"})
    vault.put("accession", pseudo.accession("ACC778812"), {"AccessionNumber": "ACC778812"})
    vault.put("uid", pseudo.uid(ORIGINAL_UID), {"UID": ORIGINAL_UID})
    s = IdentifierScreen(secret, vault)
    s.patient = pseudo.patient("H-204417")  # type: ignore[attr-defined]
    s.accession = pseudo.accession("ACC778812")  # type: ignore[attr-defined]
    return s


def _object(**values: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "PSN-AAAAAAAAAAAAAAAA"
    for k, v in values.items():
        setattr(ds, k, v)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(("planted", "values"), [
    ("full name", {"ContentLabel": "X", "TextValue": "seen with Novakova^Petra"}),
    ("family name in text", {"TextValue": "Mrs NOVAKOVA attended"}),
    ("given and family", {"TextValue": "Petra Novakova"}),
    ("birth date rendered", {"TextValue": "born 12.03.1965"}),
    ("patient id", {"ClinicalTrialSubjectID": "H-204417"}),
    ("another patient's id", {"TextValue": "compare H-999001"}),
    ("accession", {"TextValue": "see ACC778812"}),
    ("original uid", {"FrameOfReferenceUID": ORIGINAL_UID}),
])
def test_each_planted_identifier_is_found(screen: IdentifierScreen, planted: str, values: dict[str, str]) -> None:
    findings = screen.screen(_object(**values), name="up", patient=screen.patient,  # type: ignore[attr-defined]
                             accessions=[screen.accession])  # type: ignore[attr-defined]
    assert findings, planted


def test_clean_objects_and_pseudonyms_pass(screen: IdentifierScreen) -> None:
    data = _object(TextValue="spiculated mass in the upper outer quadrant, 14 mm", FrameOfReferenceUID=generate_uid())
    assert screen.screen(data, name="up", patient=screen.patient) == []  # type: ignore[attr-defined]
    assert screen.knows_patient(screen.patient)  # type: ignore[attr-defined]
    assert not screen.knows_patient("PSN-AAAAAAAAAAAAAAAA")


def test_the_vault_answers_membership_without_decrypting_and_refuses_unknown_kinds(tmp_path: Path) -> None:
    secret = Secret.generate()
    with Vault(tmp_path / "v.sqlite", secret, create=True) as v:
        v.put("patient", "PSN-X", {"PatientID": "1"})
        assert v.knows("patient", "PSN-X") and not v.knows("accession", "PSN-X")
        with pytest.raises(VaultError, match="unknown pseudonym kind"):
            v.knows("doctor", "PSN-X")
    with pytest.raises(VaultError, match="salt"):
        IdentifierScreen(Secret.generate(ephemeral=True), Vault(tmp_path / "v.sqlite", secret))
