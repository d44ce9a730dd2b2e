"""Screening data written *into* a node for the provider's patients' identifiers.

Annotations come back to a node from tools outside it (viewers, segmentation software,
AI models). A tool that also had the hospital's original images could copy a patient's
name, ID or an original UID into the object it writes. :class:`IdentifierScreen` finds
that, with the provider's secret and pseudonym vault — the same keys the
de-identification used — so the check is exact rather than a guess:

- **The patient's own identifiers.** The vault gives the original identifiers behind the
  patient's pseudonym (Patient ID, name, birth date, and the identifying columns of the
  clinical spreadsheet) and behind the study's accession pseudonym. The
  :class:`~incisive_lab.deid.scanner.LeakScanner` searches the raw bytes and every decoded
  value for them (names also by their parts, dates in their common renderings).
- **Any patient's identifiers.** Every short text value (and every word of free text) is
  pseudonymised with the provider's keys; a result the vault knows as a patient or
  accession pseudonym means the value is an original identifier of one of the
  provider's patients.
- **Original UIDs.** Every UID value is pseudonymised likewise; a result the vault knows
  means the value is an original study, series, instance or frame-of-reference UID.

Pixel data is not read by OCR here: the objects screened (segmentations, structured
reports, key object selections) carry masks and text, not photographs of screens.

Example
-------
>>> screen = IdentifierScreen.open("keys/provider.key", "node/private/vault.sqlite")  # doctest: +SKIP
>>> screen.screen(data, name="upload #1", patient="PSN-7K2M9QX4ZB1TXY3A")            # doctest: +SKIP
[]
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from incisive_lab.deid.keys import Pseudonymizer, Secret
from incisive_lab.deid.scanner import Finding, LeakScanner
from incisive_lab.deid.vault import Vault, VaultError

__all__ = ["IdentifierScreen"]

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_WORD = re.compile(r"[^\s\\^,;:()\[\]{}<>\"'`|=]+")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_MIN_TOKEN = 4
_MAX_WORDS = 20_000  # words pseudonymised per object (a 1 MB free-text report has fewer)


def _name_tokens(name: str) -> set[str]:
    """A DICOM person name and its readable forms and parts (4 characters or more)."""
    name = name.strip()
    if not name:
        return set()
    groups = name.split("=")[0]
    parts = [p.strip() for p in groups.split("^")]
    family, given = [*parts, "", ""][:2]
    out = {name}
    if family and given:
        out |= {f"{given} {family}", f"{family} {given}", f"{family}, {given}"}
    for part in parts:
        out |= {w for w in part.split() if w}
    return {t for t in out if len(t) >= _MIN_TOKEN}


def _as_date(value: str) -> str | None:
    v = value.strip()
    if len(v) == 8 and v.isdigit():
        return v
    m = _ISO_DATE.fullmatch(v[:10])
    return "".join(m.groups()) if m else None


def _walk_values(ds: Any) -> Iterator[tuple[str, str, str]]:
    """(where, VR, value) of every string value at every depth (file meta included)."""

    def walk(d: Any, prefix: str) -> Iterator[tuple[str, str, str]]:
        for elem in d:
            where = f"{prefix}{elem.tag} {elem.keyword or elem.name}"
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    yield from walk(item, f"{where}[{i}]>")
                continue
            if elem.tag == 0x7FE00010 or elem.value is None:
                continue
            value = elem.value
            values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
            for v in values:
                if isinstance(v, bytes):
                    continue
                yield where, elem.VR, str(v)

    if getattr(ds, "file_meta", None) is not None:
        yield from walk(ds.file_meta, "meta ")
    yield from walk(ds, "")


class IdentifierScreen:
    """Find the provider's original identifiers in data written into a node.

    Parameters
    ----------
    secret
        The provider's secret (the one the node's data was pseudonymised with).
    vault
        The node's pseudonym vault, opened with that secret.
    """

    def __init__(self, secret: Secret, vault: Vault) -> None:
        if secret.ephemeral:
            raise VaultError("an anonymisation salt cannot screen uploads: use the provider's secret")
        self._pseudo = Pseudonymizer(secret)
        self._vault = vault

    @classmethod
    def open(cls, secret_file: str | os.PathLike[str], vault_path: str | os.PathLike[str]) -> IdentifierScreen:
        """Open with the provider's secret file and the node's ``private/vault.sqlite``."""
        secret = Secret.from_file(secret_file)
        return cls(secret, Vault(Path(vault_path), secret))

    def close(self) -> None:
        """Close the vault."""
        self._vault.close()

    def knows_patient(self, pseudonym: str) -> bool:
        """Whether the vault holds this patient pseudonym."""
        return self._vault.knows("patient", pseudonym)

    def _originals(self, patient: str, accessions: Sequence[str]) -> tuple[set[str], set[str]]:
        tokens: set[str] = set()
        dates: set[str] = set()
        for row in self._vault.lookup([patient, *[a for a in accessions if a]]):
            if not row:
                continue
            for key, value in row.items():
                if key in ("kind", "pseudonym", "patient") or value in (None, ""):
                    continue
                text = str(value).strip()
                date = _as_date(text)
                if date is not None and ("Date" in key or "date" in key or "birth" in key.lower()):
                    dates.add(date)
                elif key.endswith("PatientName") or "name" in key.lower():
                    tokens |= _name_tokens(text)
                elif key == "PatientSex" or key.endswith(".sex"):
                    continue  # M/F/O: not identifying on its own, and too short to search
                elif len(text) >= _MIN_TOKEN:
                    tokens.add(text)
        return tokens, dates

    def screen(self, data: bytes, *, name: str, patient: str, accessions: Sequence[str] = ()) -> list[Finding]:
        """Findings of the provider's identifiers in one DICOM object (empty: none found).

        Parameters
        ----------
        data
            The object (Part 10 bytes).
        name
            How findings name the object (e.g. ``"upload part 2"``).
        patient
            The pseudonym of the patient the object is about.
        accessions
            Accession pseudonyms of the study the object belongs to.
        """
        import pydicom
        from pydicom.uid import UID_dictionary

        findings: list[Finding] = []
        tokens, dates = self._originals(patient, accessions)
        if tokens or dates:
            findings += LeakScanner(tokens, dates, min_length=_MIN_TOKEN).scan_file(name, data)
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:
            return [*findings, Finding(name, "file", "(unreadable)", f"{type(exc).__name__}: {exc}")]
        words = 0
        seen: set[tuple[str, str]] = set()
        for where, vr, value in _walk_values(ds):
            if vr == "UI":
                uid = value.strip().rstrip("\x00")
                if uid and uid not in UID_dictionary and ("uid", uid) not in seen:
                    seen.add(("uid", uid))
                    if self._vault.knows("uid", self._pseudo.uid(uid)):
                        findings.append(Finding(name, where, uid, "an original UID of the provider's data"))
                continue
            if vr not in _TEXT_VRS:
                continue
            candidates = {value.strip()} | set(_WORD.findall(value))
            for word in candidates:
                if len(word) < 2 or ("text", word) in seen:
                    continue
                seen.add(("text", word))
                words += 1
                if words > _MAX_WORDS:
                    return [*findings, Finding(name, where, "(too much text)",
                                               f"more than {_MAX_WORDS} distinct words: not screened")]
                if self._vault.knows("patient", self._pseudo.patient(word)):
                    findings.append(Finding(name, where, word, "an original Patient ID of the provider"))
                elif self._vault.knows("accession", self._pseudo.accession(word)):
                    findings.append(Finding(name, where, word, "an original accession number of the provider"))
        unique: dict[tuple[str, str], Finding] = {}
        for f in findings:
            unique.setdefault((f.token, "bytes" if f.where.startswith("bytes@") else f.where), f)
        return list(unique.values())
