"""De-identification of clinical spreadsheets in the project's template.

Each column of :mod:`incisive_lab.cdm.template` says what it holds (``phi_category``);
the spreadsheet is de-identified with the *same* keys as the DICOM, so that a patient's
rows and images still meet:

=====================  ==================================================================
direct-identifier      ``patient_id`` becomes the patient's pseudonym (the same one the
                       DICOM gets); every other identifier column (names, issuer,
                       national ID, address, phone, e-mail) is removed
date                   follows the temporal option: kept (full dates), shifted by the
                       patient's own offset (modified dates: the same shift as the
                       images) or removed; ``birth_date`` is kept only with full dates,
                       as Patient's Birth Date in PS3.15
link                   each accession number becomes its pseudonym (as in the DICOM)
free-text              cleaned under Clean Descriptors (never keeping a word of the row's
                       own identifiers), otherwise removed
clinical               kept
=====================  ==================================================================

A column that the template does not know is removed (fail closed) and reported. A row
without a patient identifier is dropped and reported. The output is written to a
temporary file and renamed.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from incisive_lab.deid._text import clean_text, identifier_words
from incisive_lab.deid.keys import Pseudonymizer, Secret
from incisive_lab.deid.profile import Mode, Option, Profile
from incisive_lab.deid.vault import Vault
from incisive_lab.errors import IncisiveLabError

__all__ = ["deidentify_rows", "deidentify_workbook"]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = _as_text(value)
    if not text:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y", "%d.%m.%Y"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def deidentify_rows(
    rows: list[dict[str, Any]], header: list[str], *, profile: Profile, pseudo: Pseudonymizer
) -> tuple[list[dict[str, Any]], list[str], dict[str, list[str]], list[str], list[tuple[str, dict[str, str]]]]:
    """De-identify rows of the clinical template.

    Returns
    -------
    rows, columns, handling, problems, identities
        The de-identified rows; the output header; which columns were kept,
        pseudonymised, shifted, cleaned or removed; problems by row; and for the vault
        (pseudonym, original identity) per patient.
    """
    from incisive_lab.cdm.template import COLUMNS

    known = {c.name: c for c in COLUMNS}
    temporal = profile.temporal_handling
    cleaning = profile.has(Option.CLEAN_DESCRIPTORS)
    handling: dict[str, list[str]] = {"kept": [], "pseudonymized": [], "shifted": [], "cleaned": [], "removed": [], "unknown (removed)": []}
    out_cols: list[str] = []
    plan: dict[str, str] = {}
    for name in header:
        col = known.get(name)
        if col is None:
            handling["unknown (removed)"].append(name)
            continue
        cat = col.phi_category
        if name == "patient_id":
            action = "pseudonym"
        elif cat == "direct-identifier":
            action = "remove"
        elif cat == "date":
            if name == "birth_date":
                action = "keep" if temporal == "keep" else "remove"
            else:
                action = {"keep": "keep", "shift": "shift", "remove": "remove"}[temporal]
        elif cat == "link":
            action = "accession"
        elif cat == "free-text":
            action = "clean" if cleaning else "remove"
        else:
            action = "keep"
        plan[name] = action
        bucket = {"pseudonym": "pseudonymized", "accession": "pseudonymized", "remove": "removed", "keep": "kept",
                  "shift": "shifted", "clean": "cleaned"}[action]
        handling[bucket].append(name)
        if action != "remove":
            out_cols.append(name)
    if "patient_id" not in plan:
        raise IncisiveLabError("the spreadsheet has no patient_id column: rows cannot be linked to their images")
    problems: list[str] = []
    identities: list[tuple[str, dict[str, str]]] = []
    out_rows: list[dict[str, Any]] = []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        patient_id = _as_text(row.get("patient_id"))
        if not patient_id:
            problems.append(f"row {i}: no patient_id; the row is dropped")
            continue
        pseudonym = pseudo.patient(patient_id)
        shift = pseudo.date_shift_days(patient_id) if temporal == "shift" else 0
        identity = {k: _as_text(row.get(k)) for k in header if plan.get(k) in ("pseudonym", "remove") and known[k].phi_category in ("direct-identifier", "date")}
        if "birth_date" in row:
            birth = _as_date(row.get("birth_date"))
            identity["birth_date"] = birth.isoformat() if birth else _as_text(row.get("birth_date"))
        identities.append((pseudonym, identity))
        forbidden = identifier_words(v for k, v in identity.items() if v) if cleaning else set()
        new: dict[str, Any] = {}
        for name in out_cols:
            value = row.get(name)
            action = plan[name]
            if action == "pseudonym":
                new[name] = pseudonym
            elif action == "accession":
                parts = [p.strip() for p in _as_text(value).split(";") if p.strip()]
                new[name] = ";".join(pseudo.accession(p) for p in parts) or None
            elif action == "shift":
                d = _as_date(value)
                if value not in (None, "") and d is None:
                    problems.append(f"row {i}, column {name}: {value!r} is not a date; removed")
                new[name] = d + dt.timedelta(days=shift) if d else None
            elif action == "clean":
                new[name] = clean_text(_as_text(value), forbidden) or None
            else:
                new[name] = value
        out_rows.append(new)
    return out_rows, out_cols, handling, problems, identities


def deidentify_workbook(
    src: Path,
    dst: Path,
    *,
    profile: Profile,
    secret: Secret,
    vault: Vault | None = None,
    source_name: str | None = None,
) -> dict[str, Any]:
    """De-identify one clinical workbook into ``dst``; returns its report entry.

    Raises
    ------
    IncisiveLabError
        If the workbook cannot be read or has no ``patient_id`` column (the message
        names the file).
    """
    from incisive_lab.cdm.spreadsheet import read_workbook, write_workbook

    name = source_name or src.name
    try:
        rows = read_workbook(src)
    except (ValueError, OSError, KeyError) as exc:
        return {"source": name, "status": "failed", "reason": f"cannot read the workbook: {exc}"}
    except Exception as exc:  # openpyxl raises zipfile/XML errors for non-workbooks
        return {"source": name, "status": "failed", "reason": f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})"}
    header = _header(src)
    try:
        out_rows, out_cols, handling, problems, identities = deidentify_rows(
            rows, header, profile=profile, pseudo=Pseudonymizer(secret)
        )
    except IncisiveLabError as exc:
        return {"source": name, "status": "failed", "reason": str(exc)}
    if vault is not None and profile.mode is Mode.PSEUDONYMIZE:
        for pseudonym, identity in identities:
            vault.merge("patient", pseudonym, {f"clinical.{k}": v for k, v in identity.items() if v})
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    write_workbook(out_rows, tmp, columns=out_cols)
    os.replace(tmp, dst)
    return {
        "source": name,
        "status": "ok",
        "output": dst.name if source_name is None else source_name,
        "rows": len(out_rows),
        "columns": {k: v for k, v in handling.items() if v},
        "problems": problems,
    }


def _header(path: Path) -> list[str]:
    from openpyxl import load_workbook

    from incisive_lab.cdm.template import SHEET_NAME

    wb = load_workbook(path, read_only=True)
    try:
        first = next(wb[SHEET_NAME].iter_rows(max_row=1, values_only=True), ())
        return [str(h) for h in first if h is not None]
    finally:
        wb.close()
