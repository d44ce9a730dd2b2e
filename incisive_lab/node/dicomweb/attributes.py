"""The attributes QIDO-RS matches and returns, and where the index keeps them.

Sources: DICOM PS3.18 (2024b) Table 6.7.1-1 (matching keys per level) and Table
6.7.1-2/-2a (attributes returned per level); PS3.4 C.2.2.2 (which matching applies to
which VR: wildcards on AE, CS, LO, LT, PN, SH, ST, UC, UR, UT; UID list on UI; range on
DA, TM, DT). An attribute of this table that has no ``column`` is returned (from a
constant or the stored header) but cannot be matched: a query naming it is refused
(fail closed) rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from incisive_lab.node.dicomweb._http import DicomwebError

__all__ = [
    "ATTRIBUTES",
    "LEVELS",
    "REQUIRED",
    "Attribute",
    "resolve",
    "tag_hex",
]

#: Query/retrieve levels, outermost first.
LEVELS = ("study", "series", "instance")


@dataclass(frozen=True, slots=True)
class Attribute:
    """One QIDO-RS attribute: how it is named, matched and found.

    Attributes
    ----------
    keyword, tag, vr
        As in the DICOM data dictionary (PS3.6).
    level
        ``study`` (patient attributes included), ``series`` or ``instance``.
    column
        ``(table, column)`` in the index — tables ``patients``, ``studies``, ``series``,
        ``instances`` — or ``None`` when the index does not keep it.
    match
        ``uid`` (single value or UID list), ``wildcard`` (single value with ``*``/``?``),
        ``list`` (wildcard, or a list of code strings), ``single`` (exact string),
        ``int`` (exact integer), ``date`` / ``time`` (single value or range),
        ``modalities`` (ModalitiesInStudy: a series of the study has one of the values),
        or ``None`` (returned only).
    """

    keyword: str
    tag: int
    vr: str
    level: str
    column: tuple[str, str] | None
    match: str | None


def _a(keyword: str, level: str, column: tuple[str, str] | None, match: str | None) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(keyword, tag, dictionary_VR(tag), level, column, match)


#: Every attribute QIDO-RS knows, by keyword.
ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in (
    # study level (PS3.18 Table 6.7.1-1; patient attributes are answered at study level)
    _a("SpecificCharacterSet", "study", None, None),
    _a("StudyDate", "study", ("studies", "study_date"), "date"),
    _a("StudyTime", "study", ("studies", "study_time"), "time"),
    _a("AccessionNumber", "study", ("studies", "accession_number"), "wildcard"),
    _a("InstanceAvailability", "study", None, None),
    _a("ModalitiesInStudy", "study", ("series", "modality"), "modalities"),
    _a("ReferringPhysicianName", "study", None, None),
    _a("RetrieveURL", "study", None, None),
    _a("StudyDescription", "study", ("studies", "study_description"), "wildcard"),
    _a("PatientName", "study", None, None),
    _a("PatientID", "study", ("studies", "patient_id"), "wildcard"),
    _a("PatientBirthDate", "study", None, None),
    _a("PatientSex", "study", ("patients", "patient_sex"), "list"),
    _a("PatientAge", "study", ("studies", "patient_age"), "single"),
    _a("StudyInstanceUID", "study", ("studies", "study_uid"), "uid"),
    _a("StudyID", "study", ("studies", "study_id"), "wildcard"),
    _a("NumberOfStudyRelatedSeries", "study", None, None),
    _a("NumberOfStudyRelatedInstances", "study", None, None),
    # series level
    _a("Modality", "series", ("series", "modality"), "list"),
    _a("SeriesDescription", "series", ("series", "series_description"), "wildcard"),
    _a("SeriesInstanceUID", "series", ("series", "series_uid"), "uid"),
    _a("SeriesNumber", "series", ("series", "series_number"), "int"),
    _a("BodyPartExamined", "series", ("series", "body_part"), "list"),
    _a("NumberOfSeriesRelatedInstances", "series", None, None),
    # instance level
    _a("SOPClassUID", "instance", ("instances", "sop_class_uid"), "uid"),
    _a("SOPInstanceUID", "instance", ("instances", "sop_uid"), "uid"),
    _a("InstanceNumber", "instance", ("instances", "instance_number"), "int"),
    _a("Rows", "instance", ("instances", "rows"), "int"),
    _a("Columns", "instance", ("instances", "columns"), "int"),
    _a("NumberOfFrames", "instance", ("instances", "number_of_frames"), "int"),
    _a("AvailableTransferSyntaxUID", "instance", ("instances", "transfer_syntax_uid"), "uid"),
    _a("BitsAllocated", "instance", None, None),
)}

#: Attributes every match of a level carries (PS3.18 Table 6.7.1-2 and -2a).
REQUIRED: dict[str, tuple[str, ...]] = {
    "study": ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
              "InstanceAvailability", "ModalitiesInStudy", "ReferringPhysicianName",
              "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "series": ("SpecificCharacterSet", "Modality", "SeriesDescription", "RetrieveURL",
               "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    "instance": ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID",
                 "InstanceAvailability", "RetrieveURL", "InstanceNumber", "Rows", "Columns",
                 "BitsAllocated", "NumberOfFrames"),
}

#: Attributes of the index (beyond REQUIRED) that ``includefield=all`` adds, per level.
EXTRA: dict[str, tuple[str, ...]] = {
    "study": ("StudyDescription", "PatientAge"),
    "series": ("BodyPartExamined",),
    "instance": ("AvailableTransferSyntaxUID",),
}


def tag_hex(tag: int) -> str:
    """``0x0020000D`` -> ``"0020000D"`` (the key form of the DICOM JSON model)."""
    return f"{tag:08X}"


def resolve(name: str, what: str) -> tuple[int, str]:
    """Return (tag, keyword) of a DICOM keyword or an 8-hex-digit tag.

    Private tags (odd group), group lengths, sequences' items, file meta elements and
    tags without a dictionary entry are refused: only standard attributes can be named.

    Raises
    ------
    DicomwebError
        400 naming ``what`` and ``name``.
    """
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        tag = int(name, 16)
    else:
        found = tag_for_keyword(name)
        if found is None:
            raise DicomwebError(400, f"{what}: {name[:80]!r} is neither a DICOM keyword nor "
                                     "an 8-digit hexadecimal tag")
        tag = found
    group, elem = tag >> 16, tag & 0xFFFF
    if group % 2 == 1:
        raise DicomwebError(400, f"{what}: {name!r} is a private tag; only standard "
                                 "attributes can be queried")
    keyword = keyword_for_tag(tag)
    if not keyword or elem == 0 or group in (0x0002, 0xFFFE) or tag >= 0x7FE00000:
        raise DicomwebError(400, f"{what}: {name!r} ({tag_hex(tag)}) is not a queryable "
                                 "standard attribute")
    return tag, keyword
