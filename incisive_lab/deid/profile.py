"""What the de-identifier does to each attribute: PS3.15 Table E.1-1 plus options.

A :class:`Profile` is the Basic Application Level Confidentiality Profile with a set of
:class:`Option` s. For any attribute it gives a :class:`Decision` — the concrete action
(``K`` keep, ``X`` remove, ``Z`` empty, ``D`` dummy, ``U`` new UID, ``C`` clean) and
why — and it can print its own conformance statement (:meth:`Profile.describe`).

Rules, in order:

1. Attributes named in Table E.1-1 take the table's Basic Profile action; an active
   option that has a column for the row overrides it (PS3.15 E.3). When several active
   options name the same row, the most protective of their actions applies
   (X, then Z, D, C, U, K).
2. Conditional codes are resolved by the attribute's Type in the instance's IOD (at its
   place in nested sequences): Z/D gives D for Type 1 and Z otherwise; X/Z gives Z for
   Type 2 (D for Type 1) and X otherwise; X/D gives D for Type 1, Z for Type 2, X
   otherwise; X/Z/D gives D, Z or X for Types 1, 2, 3; X/Z/U* gives U (keep the
   sequence, replace the UIDs inside) for Type 1, Z for Type 2 and X otherwise. When
   the IOD or the attribute's place in it is unknown, the most protective branch
   applies (X, or Z for Z/D).
3. Private attributes are removed, except, under Retain Safe Private, those listed in
   the safe-private table (identified by group, Private Creator and element byte).
4. Attributes the table does not name fail closed, by Value Representation: person
   names, free text, AE titles and ages are removed (or emptied or replaced by a dummy
   where their Type in the IOD requires a value); dates and times likewise unless a
   Retain Longitudinal option keeps or shifts them; instance UIDs are replaced (the
   UIDs of the DICOM registry — SOP Classes, Transfer Syntaxes, coding schemes — and
   class UIDs are kept); numbers, coded strings and binary data are kept; sequences
   are kept and their items de-identified by the same rules. Text attributes on the
   reviewed retained list (manufacturer, model, code meanings, ...) are kept. Unknown
   public tags and group lengths are removed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from incisive_lab.deid._standard import (
    ALL_VRS,
    TableRow,
    confidentiality_table,
    dictionary_entry,
    retained_attributes,
)
from incisive_lab.errors import IncisiveLabError

__all__ = ["BASIC_PROFILE_CODE", "Decision", "Mode", "Option", "Profile", "ProfileError"]


class ProfileError(IncisiveLabError):
    """Incompatible or unknown options."""


class Mode(enum.StrEnum):
    """Reversible pseudonymisation (federated node) or irreversible anonymisation (central node)."""

    PSEUDONYMIZE = "pseudonymize"
    ANONYMIZE = "anonymize"


@dataclass(frozen=True)
class _OptionInfo:
    column: str | None
    code: str
    meaning: str
    short: str


class Option(enum.StrEnum):
    """The PS3.15 options, by the names the command line uses."""

    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_PIXEL_DATA = "clean-pixel-data"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"

    @property
    def info(self) -> _OptionInfo:
        return _OPTION_INFO[self]

    @classmethod
    def parse(cls, name: str) -> Option:
        """The option of a command-line name; a clear error listing the valid names."""
        try:
            return cls(name.strip().lower().replace("_", "-"))
        except ValueError:
            valid = ", ".join(o.value for o in cls)
            raise ProfileError(f"unknown de-identification option {name!r}; valid options: {valid}") from None


#: CID 7050 code of the Basic Application Confidentiality Profile.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")

_OPTION_INFO: dict[Option, _OptionInfo] = {
    Option.RETAIN_SAFE_PRIVATE: _OptionInfo("rtnSafePrivOpt", "113111", "Retain Safe Private Option", "Retain Safe Private"),
    Option.RETAIN_UIDS: _OptionInfo("rtnUIDsOpt", "113110", "Retain UIDs Option", "Retain UIDs"),
    Option.RETAIN_DEVICE_IDENTITY: _OptionInfo("rtnDevIdOpt", "113109", "Retain Device Identity Option", "Retain Device Identity"),
    Option.RETAIN_INSTITUTION_IDENTITY: _OptionInfo("rtnInstIdOpt", "113112", "Retain Institution Identity Option", "Retain Institution Identity"),
    Option.RETAIN_PATIENT_CHARACTERISTICS: _OptionInfo("rtnPatCharsOpt", "113108", "Retain Patient Characteristics Option", "Retain Patient Characteristics"),
    Option.RETAIN_LONGITUDINAL_FULL_DATES: _OptionInfo("rtnLongFullDatesOpt", "113106", "Retain Longitudinal Temporal Information Full Dates Option", "Retain Longitudinal Full Dates"),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: _OptionInfo("rtnLongModifDatesOpt", "113107", "Retain Longitudinal Temporal Information Modified Dates Option", "Retain Longitudinal Modified Dates"),
    Option.CLEAN_DESCRIPTORS: _OptionInfo("cleanDescOpt", "113105", "Clean Descriptors Option", "Clean Descriptors"),
    Option.CLEAN_STRUCTURED_CONTENT: _OptionInfo("cleanStructContOpt", "113104", "Clean Structured Content Option", "Clean Structured Content"),
    Option.CLEAN_GRAPHICS: _OptionInfo("cleanGraphOpt", "113103", "Clean Graphics Option", "Clean Graphics"),
    Option.CLEAN_PIXEL_DATA: _OptionInfo(None, "113101", "Clean Pixel Data Option", "Clean Pixel Data"),
}

# most protective first
_PROTECTIVENESS = {"X": 0, "Z": 1, "D": 2, "C": 3, "U": 4, "K": 5}
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "UR"})
_DATE_COLUMNS = frozenset({"rtnLongFullDatesOpt", "rtnLongModifDatesOpt"})
_CLASS_UID_SUFFIXES = (
    "ClassUID",
    "TransferSyntaxUID",
    "CodingSchemeUID",
    "ContextUID",
    "MappingResourceUID",
    "ContextGroupExtensionCreatorUID",
    "CodingSchemeRegistry",
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The action for one attribute and its justification.

    Attributes
    ----------
    act : str
        ``K``, ``X``, ``Z``, ``D``, ``U`` or ``C``.
    basis : str
        What decided it: ``basic`` (Table E.1-1), an option name, ``vr-rule``,
        ``retained-list``, ``private``, ``safe-private``, ``unknown-attribute``,
        ``group-length``.
    code : str
        The table's code for the row (e.g. ``X/Z/D``) or a short rule name.
    note : str
        How a conditional code was resolved, or other detail.
    """

    act: str
    basis: str
    code: str = ""
    note: str = ""


def _resolve_conditional(code: str, attr_type: str | None) -> tuple[str, str]:
    """Resolve a conditional code by the attribute's Type (None when unknown)."""
    t = (attr_type or "").rstrip("C")  # 1C behaves as 1 and 2C as 2 for a present attribute
    where = f"Type {attr_type}" if attr_type else "Type unknown"
    if code == "Z/D":
        return ("D" if t == "1" else "Z"), where
    if code == "X/Z":
        return {"1": "D", "2": "Z"}.get(t, "X"), where
    if code == "X/D":
        return {"1": "D", "2": "Z"}.get(t, "X"), where
    if code == "X/Z/D":
        return {"1": "D", "2": "Z"}.get(t, "X"), where
    if code == "X/Z/U*":
        return {"1": "U", "2": "Z"}.get(t, "X"), where
    return code, ""


class Profile:
    """The Basic Profile with options, for one mode.

    Parameters
    ----------
    options : iterable of Option or str
        Option names as on the command line.
    mode : Mode or str
        ``pseudonymize`` or ``anonymize``.

    Raises
    ------
    ProfileError
        For an unknown option or incompatible settings (the message names both).

    Examples
    --------
    >>> p = Profile(["retain-longitudinal-modified-dates"], mode="pseudonymize")
    >>> p.decide(0x00080020, "DA").act   # Study Date
    'C'
    """

    def __init__(self, options: Iterable[Option | str] = (), mode: Mode | str = Mode.PSEUDONYMIZE) -> None:
        self.mode = Mode(mode)
        opts = {o if isinstance(o, Option) else Option.parse(o) for o in options}
        if {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= opts:
            raise ProfileError(
                "options retain-longitudinal-full-dates and retain-longitudinal-modified-dates "
                "exclude each other: choose one"
            )
        if self.mode is Mode.ANONYMIZE and Option.RETAIN_UIDS in opts:
            raise ProfileError(
                "option retain-uids keeps the original UIDs, which link back to the provider's "
                "archive: it cannot be used with --mode anonymize (irreversible)"
            )
        self.options = frozenset(opts)
        self._columns = frozenset(o.info.column for o in opts if o.info.column)
        self._table = confidentiality_table()
        self._retained = retained_attributes()

    def __repr__(self) -> str:
        opts = ", ".join(sorted(o.value for o in self.options))
        return f"Profile(mode={self.mode.value!r}, options=[{opts}])"

    def has(self, option: Option) -> bool:
        """Whether ``option`` is active."""
        return option in self.options

    @property
    def temporal_handling(self) -> str:
        """``keep`` (full dates), ``shift`` (modified dates) or ``remove``."""
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in self.options:
            return "keep"
        if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            return "shift"
        return "remove"

    @property
    def longitudinal_status(self) -> str:
        """The value of Longitudinal Temporal Information Modified (0028,0303)."""
        return {"keep": "UNMODIFIED", "shift": "MODIFIED", "remove": "REMOVED"}[self.temporal_handling]

    # --- decisions --------------------------------------------------------------------

    def decide(
        self,
        tag: int,
        vr: str,
        types: Mapping[tuple[int, ...], str] | None = None,
        path: tuple[int, ...] = (),
        *,
        cleaning: bool = False,
    ) -> Decision:
        """The decision for a standard (even-group) attribute.

        Parameters
        ----------
        tag : int
            The attribute's tag.
        vr : str
            Its Value Representation (from the file, or the dictionary).
        types : mapping, optional
            The IOD's attribute Types by path (see ``_standard.iod_attribute_types``).
        path : tuple of int
            The tags of the enclosing sequences, outermost first.
        cleaning : bool
            True inside a sequence that is being cleaned (Clean Structured Content or
            Clean Graphics): free text there is cleaned instead of removed.
        """
        attr_type = types.get((*path, tag)) if types is not None else None
        row = self._table.lookup(tag)
        if row is not None:
            return self._decide_row(row, vr, attr_type)
        if tag & 0xFFFF == 0:
            return Decision("X", "group-length", "X", "group lengths are not needed")
        entry = dictionary_entry(tag)
        if entry is None:
            return Decision("X", "unknown-attribute", "X", "not in the DICOM data dictionary")
        dict_vr = entry[0]
        if vr in ("UN", "") or vr not in _ALL_VRS:
            vr = dict_vr
        return self._decide_by_vr(tag, vr, entry[2], attr_type, cleaning)

    def _decide_row(self, row: TableRow, vr: str, attr_type: str | None) -> Decision:
        applicable = [
            (code, opt) for opt in self.options
            if (col := opt.info.column) and (code := row.options.get(col)) is not None
        ]
        if applicable:
            code, opt = min(applicable, key=lambda c: (_PROTECTIVENESS[c[0]], c[1].value))
            if code == "C" and opt.info.column in _DATE_COLUMNS and vr not in TEMPORAL_VRS:
                # e.g. Timezone Offset From UTC: a shift of whole days leaves it as it is
                return Decision("K", opt.value, "C", "not a date: unchanged by a shift of whole days")
            return Decision(code, opt.value, code)
        act, note = _resolve_conditional(row.basic, attr_type)
        return Decision(act, "basic", row.basic, note)

    def _decide_by_vr(self, tag: int, vr: str, keyword: str, attr_type: str | None, cleaning: bool) -> Decision:
        if tag in self._retained:
            return Decision("K", "retained-list", "K", "reviewed non-identifying vocabulary")
        if vr == "SQ":
            return Decision("K", "vr-rule", "K", "sequence kept; its items are de-identified")
        if vr == "UI":
            if keyword.endswith(_CLASS_UID_SUFFIXES):
                return Decision("K", "vr-rule", "K", "class/syntax UID")
            if Option.RETAIN_UIDS in self.options:
                return Decision("K", Option.RETAIN_UIDS.value, "K")
            return Decision("U", "vr-rule", "U", "instance UID (registry UIDs are kept)")
        if vr in TEMPORAL_VRS:
            handling = self.temporal_handling
            if handling == "keep":
                return Decision("K", Option.RETAIN_LONGITUDINAL_FULL_DATES.value, "K")
            if handling == "shift":
                return Decision("C", Option.RETAIN_LONGITUDINAL_MODIFIED_DATES.value, "C", "shifted")
            act, note = _resolve_conditional("X/Z/D", attr_type)
            return Decision(act, "vr-rule", "X/Z/D", note)
        if vr == "AS" and Option.RETAIN_PATIENT_CHARACTERISTICS in self.options:
            return Decision("K", Option.RETAIN_PATIENT_CHARACTERISTICS.value, "K")
        if vr == "AE" and Option.RETAIN_DEVICE_IDENTITY in self.options:
            return Decision("K", Option.RETAIN_DEVICE_IDENTITY.value, "K")
        if vr in TEXT_VRS and cleaning:
            return Decision("C", "vr-rule", "C", "free text inside cleaned content")
        if vr == "PN" and cleaning:
            return Decision("D", "vr-rule", "D", "person name inside cleaned content")
        if vr in TEXT_VRS or vr in ("PN", "AS", "AE"):
            act, note = _resolve_conditional("X/Z/D", attr_type)
            return Decision(act, "vr-rule", "X/Z/D", note)
        return Decision("K", "vr-rule", "K", f"{vr} carries no free text")

    # --- conformance statement --------------------------------------------------------

    def method_codes(self) -> list[tuple[str, str]]:
        """(code value, code meaning) for De-identification Method Code Sequence (CID 7050)."""
        codes = [BASIC_PROFILE_CODE]
        codes += sorted((o.info.code, o.info.meaning) for o in self.options)
        return codes

    def method_description(self) -> list[str]:
        """Values of De-identification Method (0012,0063), each at most 64 characters."""
        from incisive_lab import __version__

        values = [f"INCISIVE Lab {__version__} {self.mode.value}", "Basic Application Confidentiality Profile"]
        values += sorted(o.info.short for o in self.options)
        return [v[:64] for v in values]

    def describe(self) -> dict[str, Any]:
        """The conformance statement as data: every Table E.1-1 row and every rule."""
        rows = []
        for row in self._table.rows:
            applicable = sorted(
                (opt.value, row.options[col]) for opt in self.options
                if (col := opt.info.column) and col in row.options
            )
            if applicable:
                code, opt_name = min(((c, o) for o, c in applicable), key=lambda c: (_PROTECTIVENESS[c[0]], c[1]))
                action, basis = code, opt_name
                resolution = "option overrides the Basic Profile"
            elif "/" in row.basic:
                action, basis = row.basic, "basic"
                resolution = _CONDITIONAL_TEXT[row.basic]
            else:
                action, basis, resolution = row.basic, "basic", ""
            rows.append(
                {
                    "tag": row.tag,
                    "name": row.name,
                    "basic": row.basic,
                    "action": action,
                    "basis": basis,
                    "resolution": resolution,
                    "meaning": _meaning(row, action, self),
                }
            )
        return {
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "mode": self.mode.value,
            "options": sorted(o.value for o in self.options),
            "method_codes": [{"code": c, "scheme": "DCM", "meaning": m} for c, m in self.method_codes()],
            "longitudinal_temporal_information_modified": self.longitudinal_status,
            "rules": self._rules(),
            "attributes": rows,
        }

    def _rules(self) -> list[str]:
        pseud = (
            "Patient ID and Patient's Name become the patient's keyed pseudonym (HMAC of the Patient ID with "
            "the provider's secret); the vault, encrypted with a key derived from the secret, maps it back"
            if self.mode is Mode.PSEUDONYMIZE
            else "Patient ID and Patient's Name become a pseudonym keyed by a random salt made for this run "
            "and discarded at its end: consistent within the run, irreversible"
        )
        dates = {
            "keep": "dates and times are kept (Retain Longitudinal Temporal Information with Full Dates)",
            "shift": "dates are shifted by a whole number of days, the same for all of a patient's data "
            "(between -3650 and -400, keyed by the patient), so intervals are kept; times are kept",
            "remove": "dates and times are removed, emptied or replaced by a dummy according to the table and the "
            "attribute's Type",
        }[self.temporal_handling]
        rules = [
            pseud,
            "Accession Number becomes a keyed pseudonym (16 characters) so that imaging and clinical "
            "records still link; Study ID and other identifiers follow the table",
            "UIDs (instance, series, study, frame of reference and every reference to them, file meta "
            "included) become 2.25.<UUIDv8> derived by HMAC, consistently across the whole set; UIDs of the "
            "DICOM registry and class/transfer-syntax UIDs are kept"
            if Option.RETAIN_UIDS not in self.options
            else "UIDs are kept (Retain UIDs Option)",
            dates,
            "conditional codes are resolved by the attribute's Type in the IOD of the instance (PS3.3), "
            "at its place in nested sequences; unknown IOD or place: the most protective branch",
            "when several active options name the same attribute, the most protective action applies",
            "private attributes are removed"
            + (
                ", except those in the safe-private table (PS3.15 Table E.3.10-1 subset), matched by group, "
                "Private Creator and element byte; a Private Creator is kept only when its block keeps something"
                if Option.RETAIN_SAFE_PRIVATE in self.options
                else ""
            ),
            "attributes outside Table E.1-1 fail closed by VR: PN, free text (LO, SH, ST, LT, UT, UC, UR), AE and AS "
            "are removed (or emptied / dummied where their Type requires a value) unless on the reviewed "
            "retained list; dates and times follow the temporal rule; instance UIDs are replaced; numbers, "
            "coded strings and binary values are kept; sequences are kept and their items de-identified",
            "unknown public attributes (not in the data dictionary) and group lengths are removed",
            "overlay groups (60xx) and curve groups (50xx) are removed whole when their data is removed",
            "sequences with action D are kept and every attribute inside is de-identified by these rules; "
            "with action C (Clean Structured Content, Clean Graphics) free text inside is cleaned instead of removed",
            "file meta information is rebuilt: new Media Storage SOP Instance UID, this software's "
            "Implementation Class UID and Version Name, no source/sending/receiving AE titles, no private "
            "information; the 128-byte preamble is zeroed",
            "Patient Identity Removed = YES, De-identification Method and De-identification Method Code "
            "Sequence (CID 7050) and Longitudinal Temporal Information Modified are set",
            "images whose pixels may carry burned-in text (Burned In Annotation YES, or absent on secondary "
            "capture, ultrasound, endoscopy and similar classes) are "
            + (
                "cleaned: regions from the modality/vendor rules and text found by OCR are blanked, the "
                "result is checked by OCR again, and images that still show text are quarantined"
                if Option.CLEAN_PIXEL_DATA in self.options
                else "quarantined (never passed through); use clean-pixel-data to clean them"
            ),
            "encapsulated documents and other instances that cannot be de-identified are quarantined",
        ]
        if Option.CLEAN_DESCRIPTORS in self.options or Option.CLEAN_STRUCTURED_CONTENT in self.options or Option.CLEAN_GRAPHICS in self.options:
            rules.append(
                "cleaned text keeps only words of the imaging vocabulary and short technical tokens, and never "
                "a word that appears in the instance's identifying attributes (names, IDs, dates, places)"
            )
        return rules

    def describe_text(self) -> str:
        """The conformance statement as readable text (what ``deid --describe`` prints)."""
        doc = self.describe()
        out = [
            "INCISIVE Lab de-identification: conformance statement",
            f"profile : {doc['profile']}",
            f"mode    : {doc['mode']}",
            f"options : {', '.join(doc['options']) or '(none)'}",
            "codes   : " + "; ".join(f"{c['code']} {c['meaning']}" for c in doc["method_codes"]),
            f"Longitudinal Temporal Information Modified: {doc['longitudinal_temporal_information_modified']}",
            "",
            "Rules:",
        ]
        out += [f"  - {r}" for r in doc["rules"]]
        out += ["", f"Attributes of PS3.15 Table E.1-1 ({len(doc['attributes'])}):", ""]
        out.append(f"  {'tag':<14} {'basic':<7} {'action':<7} {'by':<36} name")
        for a in doc["attributes"]:
            out.append(f"  {a['tag']:<14} {a['basic']:<7} {a['action']:<7} {a['basis']:<36} {a['name']}")
            if a["resolution"]:
                out.append(f"  {'':<14} {'':<7} {'':<7} {'':<36}   ({a['resolution']})")
        return "\n".join(out) + "\n"


_CONDITIONAL_TEXT = {
    "Z/D": "D if Type 1 in the IOD, else Z",
    "X/Z": "Z if Type 2 (D if Type 1) in the IOD, else X",
    "X/D": "D if Type 1, Z if Type 2 in the IOD, else X",
    "X/Z/D": "D if Type 1, Z if Type 2 in the IOD, else X",
    "X/Z/U*": "keep the sequence replacing its UIDs if Type 1, Z if Type 2, else X",
}

_ALL_VRS = frozenset(ALL_VRS)


def _meaning(row: TableRow, action: str, profile: Profile) -> str:
    name = row.name.lower()
    if action == "C" and row.options.get("rtnLongModifDatesOpt") == "C" and profile.temporal_handling == "shift":
        return "shifted by the patient's date offset"
    if row.tag == "(0010,0020)" or row.tag == "(0010,0010)":
        return "the patient's pseudonym"
    if row.tag == "(0008,0050)":
        return "the accession pseudonym"
    if action == "U":
        return "replaced by a keyed UID, consistently everywhere"
    if action == "C":
        return "cleaned" if "sequence" not in name else "kept, contents cleaned"
    return {"X": "removed", "Z": "emptied", "D": "dummy value", "K": "kept"}.get(action, _CONDITIONAL_TEXT.get(action, ""))
