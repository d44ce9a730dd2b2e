"""STOW-RS: annotations written back to the node (DICOM SEG, SR and KOS).

An annotator's tool sends ``POST /studies[/{study}]`` with a
``multipart/related; type="application/dicom"`` body, one Part 10 object per part. The
node accepts only what belongs next to the images it already holds, and only once it is
sure the object identifies nobody. Each part is checked on its own (one bad part does not
sink the others), in this order:

1. **Readable and supported.** A Part 10 file of a supported SOP class
   (:data:`SUPPORTED_SOP_CLASSES`: Segmentation, the SR family, Key Object Selection) in a
   transfer syntax the node stores; its UIDs well formed and consistent with its file meta.
2. **Screened for identifiers.** With the provider's secret and vault
   (:class:`~incisive_lab.deid.screen.IdentifierScreen`): the patient's original name, ID,
   birth date and accession number anywhere in the bytes or values, any original Patient ID
   or accession number of the provider, any original UID. This runs on the object *as
   sent*, before the node changes anything: an object that carries identifiers is refused
   (the tool that wrote it had data it must not mix in), never silently repaired.
3. **Linked to its source.** Its study is a study the node holds (and the one in the path,
   if any); its Patient ID is that study's pseudonym; it sits in a series of its own, not
   in a source series; every instance it references (``ReferencedSOPInstanceUID`` at any
   depth: a SEG's referenced series and source images, an SR's or KOS's evidence) is held
   by the node in that study, and it references at least one.
4. **Made consistent.** The patient and study attributes are set to the node's own values
   (from a source instance of the study: pseudonyms, shifted dates, de-identification
   method) and private attributes are dropped — both reported as warnings (0xB000
   coercion, 0xB006 elements discarded).
5. **Audited.** The result passes the de-identification scanner's structural audit
   (:func:`~incisive_lab.deid.scanner.audit`): Patient Identity Removed, method recorded,
   no private attributes, person names only the patient's pseudonym, empty, or the
   uploader's own user name.

The answer is the Store Instances Response of PS3.18 §10.5.3 in DICOM JSON: the stored
instances in ``ReferencedSOPSequence`` (with their ``RetrieveURL`` and any
``WarningReason``), the refused ones in ``FailedSOPSequence`` with a ``FailureReason``, and
one ``Warning: 299`` header per problem explaining it in words (never quoting the
identifying value found). Status 200 when everything was stored as sent, 202 when some
part failed or was coerced, 409 when nothing was stored. Storing an identical object again
succeeds without a second copy; a different object under a stored SOP Instance UID fails.

Where the objects go is a :class:`StowTarget`: the node's file store and index
(:class:`StoreTarget`) or a PACS's own STOW-RS
(:class:`~incisive_lab.node.dicomweb.pacs.PacsBackend`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from incisive_lab.node.dicomweb._http import DicomwebError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from incisive_lab.deid.screen import IdentifierScreen
    from incisive_lab.node.store import NodeStore

__all__ = [
    "FAILURE",
    "MAX_BYTES",
    "SUPPORTED_SOP_CLASSES",
    "WARNING",
    "Accepted",
    "Failed",
    "StoreTarget",
    "StowOutcome",
    "StowTarget",
    "StudyContext",
    "UploadChecker",
    "parse_multipart",
    "store_instances",
]

#: SOP classes an annotator may write back, with the annotation kind each is.
SUPPORTED_SOP_CLASSES: Mapping[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",   # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.11": "sr",   # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": "sr",   # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": "sr",   # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",   # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35": "sr",   # Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.59": "kos",  # Key Object Selection Document
}
_MODALITIES = frozenset({"SEG", "SR", "KO"})

#: Transfer syntaxes the node stores annotations in (pixel data, if any, is kept as sent).
STORED_SYNTAXES = frozenset({
    "1.2.840.10008.1.2",        # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",      # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",   # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",      # RLE Lossless
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless
})

#: FailureReason (0008,1197) values used (PS3.18 §10.5.3, PS3.4 Annex C).
FAILURE = {
    "processing": 0x0110,          # Processing failure
    "duplicate": 0x0111,           # Duplicate SOP Instance (with different content)
    "sop_class": 0x0122,           # Referenced SOP Class not supported
    "not_authorized": 0x0124,      # Refused: not authorized (identifying data)
    "does_not_match": 0xA900,      # Data set does not match what the node holds
    "cannot_understand": 0xC000,   # Cannot understand
    "transfer_syntax": 0xC122,     # Referenced Transfer Syntax not supported
}
#: WarningReason (0008,1196) values used.
WARNING = {"coercion": 0xB000, "discarded": 0xB006}

#: Patient and study attributes an annotation takes from the node's own instances.
COERCED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
           "PatientAge", "PatientIdentityRemoved", "DeidentificationMethod",
           "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified",
           "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
           "StudyDescription")
_TYPE2 = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"})

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_QUOTED = re.compile(r"= '.*?'(?= is |$)|= \".*?\"(?= is |$)")
MAX_PARTS = 1000
#: The largest STOW-RS request body accepted (bytes).
MAX_BYTES = 512 * 1024 * 1024


def _valid_uid(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.fullmatch(value))


# ------------------------------------------------------------------------------ the body


def parse_multipart(content_type: str | None, body: bytes, *, max_parts: int = MAX_PARTS) -> list[tuple[str, bytes]]:
    """Split a STOW-RS request body into its parts: (the part's Content-Type, bytes).

    Raises
    ------
    DicomwebError
        415 when the request is not ``multipart/related; type="application/dicom"``
        (the metadata-and-bulk-data form is not accepted), 400 when the body is not a
        well-formed multipart body or has more than ``max_parts`` parts.
    """
    from incisive_lab.node.dicomweb._http import parse_accept

    if not content_type:
        raise DicomwebError(415, 'Content-Type: STOW-RS takes multipart/related; type="application/dicom"')
    try:
        media = parse_accept(content_type)[0]
    except DicomwebError:
        raise DicomwebError(400, f"Content-Type: {content_type[:120]!r} cannot be parsed") from None
    if media.media_type != "multipart/related":
        raise DicomwebError(415, f"Content-Type: {media.media_type} is not accepted; STOW-RS takes "
                                 'multipart/related; type="application/dicom"')
    part_type = media.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise DicomwebError(415, f"Content-Type: type={part_type!r} is not accepted; this node stores "
                                 'complete instances only (type="application/dicom")')
    boundary = media.params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise DicomwebError(400, "Content-Type: multipart/related needs a boundary (1 to 70 characters)")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise DicomwebError(400, "body: the multipart boundary does not occur in the body")
    parts: list[tuple[str, bytes]] = []
    pos = start + len(delimiter)
    while True:
        if body[pos:pos + 2] == b"--":
            break
        if body[pos:pos + 2] != b"\r\n":
            raise DicomwebError(400, f"body: part {len(parts) + 1}: a boundary line must end with CRLF")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            head_end = pos  # a part with no header lines: its content starts after CRLF CRLF
            if body[pos:pos + 4] != b"\r\n\r\n":
                raise DicomwebError(400, f"body: part {len(parts) + 1}: its headers never end")
        headers = body[pos + 2:head_end].decode("latin-1")
        ctype = "application/dicom"
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = value.strip()
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if end < 0:
            raise DicomwebError(400, f"body: part {len(parts) + 1} is not closed by the boundary")
        parts.append((ctype, body[head_end + 4:end]))
        if len(parts) > max_parts:
            raise DicomwebError(400, f"body: more than {max_parts} parts in one request")
        pos = end + 2 + len(delimiter)
    if not parts:
        raise DicomwebError(400, "body: the multipart body has no parts")
    return parts


# ------------------------------------------------------------------------------ contracts


@dataclass(frozen=True)
class StudyContext:
    """What the node holds of the study an annotation is written into."""

    study_uid: str
    patient_id: str
    source: Dataset                     #: patient/study attributes of a source instance
    instances: Mapping[str, str]        #: SOP Instance UID -> Series Instance UID, whole study
    annotation_series: frozenset[str]   #: series that hold annotations (may receive more)
    dataset: str | None = None          #: the node dataset (file store), if known
    accession: str | None = None


@dataclass(frozen=True)
class Accepted:
    """An object that passed every check, as it will be stored."""

    part: int
    kind: str
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    data: bytes
    sha256: str
    dataset: str | None
    source_series: tuple[str, ...]
    coerced: tuple[str, ...]
    discarded: tuple[str, ...]
    labels: tuple[str, ...]
    new: bool = True

    @property
    def warning(self) -> int | None:
        """The WarningReason to report, if the node changed the object."""
        if self.coerced:
            return WARNING["coercion"]
        if self.discarded:
            return WARNING["discarded"]
        return None


@dataclass(frozen=True)
class Failed:
    """A part the node refused, with the reason in a code and in words (no identifying values)."""

    part: int
    reason: int
    message: str
    sop_class_uid: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    kind: str | None = None


class StowTarget(Protocol):
    """Where accepted annotations are stored (the file store, or a PACS)."""

    def study_context(self, study_uid: str) -> StudyContext | None:
        """The study as the node holds it, or ``None`` if it holds no such study."""
        ...

    def stored(self, sop_uid: str) -> tuple[str, str | None] | None:
        """``(study_uid, sha256 or None)`` of an instance already held under ``sop_uid``."""
        ...

    def store(self, items: Sequence[Accepted]) -> None:
        """Store accepted objects (all or none where the target can)."""
        ...


# ------------------------------------------------------------------------------ checking


def _walk(ds: Any) -> Iterable[Any]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk(item)


def references(ds: Dataset) -> tuple[set[str], set[str], set[str]]:
    """(referenced SOP Instance UIDs, referenced Series UIDs, referenced Study UIDs) at any depth."""
    sops: set[str] = set()
    series: set[str] = set()
    studies: set[str] = set()
    for elem in _walk(ds):
        if elem.tag == 0x00081155:  # ReferencedSOPInstanceUID
            sops.add(str(elem.value))
        elif elem.tag == 0x00081115:  # ReferencedSeriesSequence
            series |= {str(i.SeriesInstanceUID) for i in elem.value or [] if "SeriesInstanceUID" in i}
        elif elem.tag in (0x0040A375, 0x0040A385, 0x00081200):
            # Current Requested Procedure Evidence, Pertinent Other Evidence,
            # Studies Containing Other Referenced Instances
            studies |= {str(i.StudyInstanceUID) for i in elem.value or [] if "StudyInstanceUID" in i}
    return sops, series, studies


def node_values(header: Dataset) -> Dataset:
    """The :data:`COERCED` attributes of a source instance (what annotations take from it)."""
    from pydicom.dataset import Dataset as _Dataset

    kept = _Dataset()
    for keyword in COERCED:
        if keyword in header:
            kept.add(header[keyword])
    return kept


def _labels(ds: Dataset, kind: str) -> tuple[str, ...]:
    """Words of the segment labels or report title that are imaging vocabulary (for the ledger)."""
    from incisive_lab.deid._text import clean_text

    raw: list[str] = []
    if kind == "seg":
        raw = [str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])]
    elif "ConceptNameCodeSequence" in ds and ds.ConceptNameCodeSequence:
        raw = [str(ds.ConceptNameCodeSequence[0].get("CodeMeaning", ""))]
    out = []
    for text in raw[:32]:
        cleaned = clean_text(text)[:64].strip()
        if cleaned and cleaned not in out:
            out.append(cleaned)
    return tuple(out)


def _redact(problem: str) -> str:
    """An audit problem without the value it quotes."""
    return _QUOTED.sub("", problem).replace("  ", " ")


class UploadChecker:
    """Checks the parts of one STOW-RS request (see the module doc for the rules).

    Parameters
    ----------
    target
        Where the node holds the studies (and will store what passes).
    screen
        The provider's identifier screen; ``None`` when the node has no vault (a node of
        anonymised data only). A pseudonymised study cannot receive annotations without it.
    allowed_names
        Person-name values the uploader may put in the object besides the patient's
        pseudonym (the uploader's own user name and subject).
    path_study
        The study in the request path (``POST /studies/{study}``), if any.
    """

    def __init__(self, target: StowTarget, *, screen: IdentifierScreen | None,
                 allowed_names: Sequence[str] = (), path_study: str | None = None) -> None:
        self._target = target
        self._screen = screen
        self._allowed = [n for n in allowed_names if n]
        self._path_study = path_study
        self._contexts: dict[str, StudyContext | None] = {}
        self._accepted_here: dict[str, tuple[str, str, str]] = {}  # sop -> (study, series, sha)

    def _context(self, study_uid: str) -> StudyContext | None:
        if study_uid not in self._contexts:
            self._contexts[study_uid] = self._target.study_context(study_uid)
        return self._contexts[study_uid]

    def check(self, part: int, content_type: str, data: bytes) -> Accepted | Failed:
        """Check one part; never raises for a bad part (it becomes a :class:`Failed`)."""
        try:
            return self._check(part, content_type, data)
        except _Refuse as r:
            return r.failed

    def _check(self, part: int, content_type: str, data: bytes) -> Accepted | Failed:
        import pydicom
        from pydicom.errors import InvalidDicomError

        where = f"part {part}"
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/dicom":
            raise _Refuse(Failed(part, FAILURE["cannot_understand"],
                                 f"{where}: Content-Type {media!r} is not application/dicom"))
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
            raise _Refuse(Failed(part, FAILURE["cannot_understand"],
                                 f"{where}: not a DICOM Part 10 file ({type(exc).__name__})")) from None
        meta = ds.file_meta
        sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        ids = {"sop_class_uid": sop_class, "sop_uid": sop_uid, "study_uid": study_uid}

        def refuse(reason: str, message: str, kind: str | None = None) -> _Refuse:
            return _Refuse(Failed(part, FAILURE[reason], f"{where} (SOP Instance {sop_uid or '?'}): {message}",
                                  kind=kind, **ids))

        for keyword, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_uid),
                               ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
            if not _valid_uid(value):
                raise refuse("cannot_understand", f"{keyword} is missing or not a DICOM UID")
        for meta_kw, value in (("MediaStorageSOPClassUID", sop_class), ("MediaStorageSOPInstanceUID", sop_uid)):
            if meta_kw in meta and str(meta[meta_kw].value) != value:
                raise refuse("does_not_match", f"file meta {meta_kw} differs from the data set's")
        kind = SUPPORTED_SOP_CLASSES.get(sop_class)
        if kind is None:
            name = pydicom.uid.UID(sop_class).name
            raise refuse("sop_class", f"SOP Class {sop_class} ({name}) is not accepted: annotators write "
                                      "back segmentations (SEG), structured reports (SR) and key object "
                                      "selections (KOS)")
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if syntax not in STORED_SYNTAXES:
            raise refuse("transfer_syntax", f"Transfer Syntax {syntax or '(none)'} is not stored by this node "
                                            "(send Explicit VR Little Endian)", kind)
        if self._path_study is not None and study_uid != self._path_study:
            raise refuse("does_not_match", f"the instance belongs to study {study_uid}, not to the study "
                                           f"{self._path_study} of the request path", kind)
        ctx = self._context(study_uid)
        if ctx is None:
            raise refuse("does_not_match", f"this node holds no study {study_uid}: annotations are written "
                                           "into the study they annotate", kind)

        # 2. identifiers, on the object as sent
        anonymised = ctx.patient_id.startswith("ANO-")
        if self._screen is None:
            if not anonymised:
                raise refuse("processing", "this node cannot screen uploads for the patient's identifiers "
                                           "(it was started without the provider's secret)", kind)
        else:
            if not anonymised and not self._screen.knows_patient(ctx.patient_id):
                raise refuse("processing", "the node's vault does not know the study's patient, so the "
                                           "upload cannot be screened for the patient's identifiers", kind)
            findings = self._screen.screen(data, name=where, patient=ctx.patient_id,
                                           accessions=[ctx.accession] if ctx.accession else [])
            if findings:
                places = sorted({f.where if not f.where.startswith("bytes@") else "the raw bytes"
                                 for f in findings})
                raise refuse("not_authorized", "identifying data of the provider's patients found in "
                                               + "; ".join(places[:8])
                                               + (" and more" if len(places) > 8 else "")
                                               + ": the object is refused, not stored", kind)

        # 3. linked to its source
        patient_id = str(ds.get("PatientID", "") or "")
        if patient_id and patient_id != ctx.patient_id:
            raise refuse("does_not_match", f"Patient ID is not the pseudonym of study {study_uid}'s patient", kind)
        source_series_all = set(ctx.instances.values()) - set(ctx.annotation_series)
        if series_uid in source_series_all:
            raise refuse("does_not_match", f"series {series_uid} holds the study's images: write annotations "
                                           "into a series of their own", kind)
        sops, ref_series, ref_studies = references(ds)
        sops.discard(sop_uid)
        held = dict(ctx.instances)
        held.update({s: v[1] for s, v in self._accepted_here.items() if v[0] == study_uid})
        other_studies = sorted(ref_studies - {study_uid})
        if other_studies:
            raise refuse("does_not_match", f"references study {other_studies[0]}: an annotation may reference "
                                           "its own study only", kind)
        missing = sorted(sops - set(held))
        if missing:
            raise refuse("does_not_match", f"references instance {missing[0]}"
                                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                           + f" that this node does not hold in study {study_uid}", kind)
        unknown_series = sorted(ref_series - set(held.values()))
        if unknown_series:
            raise refuse("does_not_match", f"references series {unknown_series[0]} that this node does not "
                                           f"hold in study {study_uid}", kind)
        if not sops:
            raise refuse("does_not_match", "references no instance: an annotation must name the images it "
                                           "annotates (Referenced Series / Source Image / Evidence sequences)", kind)
        source_series = tuple(sorted({held[s] for s in sops}))

        # 4. made consistent
        coerced: list[str] = []
        src = ctx.source
        for keyword in COERCED:
            if keyword in src:
                node_value = src[keyword]
                if keyword not in ds or ds[keyword].value != node_value.value:
                    coerced.append(keyword)
                ds.add(copy.deepcopy(node_value))
            elif keyword in ds:
                if keyword in _TYPE2:
                    if ds[keyword].value not in (None, ""):
                        coerced.append(keyword)
                        ds[keyword].value = ""
                else:
                    coerced.append(keyword)
                    del ds[keyword]
        discarded: list[str] = []

        def drop_private(d: Any) -> None:
            for elem in list(d):
                if elem.tag.is_private:
                    discarded.append(str(elem.tag))
                    del d[elem.tag]
                elif elem.VR == "SQ":
                    for item in elem.value or []:
                        drop_private(item)

        drop_private(ds)
        out = self._encode(ds, syntax)

        # 5. audited
        from incisive_lab.deid.scanner import audit

        allowed = [str(src.get("PatientName", "") or ""), *self._allowed]
        problems = audit(out, allowed_names=allowed)
        if problems:
            raise refuse("not_authorized", "fails the de-identification audit: "
                                           + "; ".join(_redact(p) for p in problems[:5]), kind)

        sha = hashlib.sha256(out).hexdigest()
        new = True
        existing = self._accepted_here.get(sop_uid)
        stored = (study_uid, existing[2]) if existing else self._target.stored(sop_uid)
        if stored is not None:
            if stored[0] != study_uid or stored[1] != sha:
                raise refuse("duplicate", "the node already holds a different instance with this SOP "
                                          "Instance UID", kind)
            new = False
        self._accepted_here[sop_uid] = (study_uid, series_uid, sha)
        return Accepted(part=part, kind=kind, sop_class_uid=sop_class, sop_uid=sop_uid, study_uid=study_uid,
                        series_uid=series_uid, data=out, sha256=sha, dataset=ctx.dataset,
                        source_series=source_series, coerced=tuple(coerced),
                        discarded=tuple(discarded), labels=_labels(ds, kind), new=new)

    @staticmethod
    def _encode(ds: Dataset, syntax: str) -> bytes:
        from pydicom.dataset import FileMetaDataset
        from pydicom.filewriter import dcmwrite
        from pydicom.uid import UID

        from incisive_lab.deid._engine import IMPLEMENTATION_CLASS_UID

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = "INCISIVE_LAB"
        ds.file_meta = meta
        ds.preamble = b"\x00" * 128
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        return buf.getvalue()


class _Refuse(Exception):
    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.message)
        self.failed = failed


# ------------------------------------------------------------------------------ the outcome


@dataclass
class StowOutcome:
    """The result of one STOW-RS request."""

    accepted: list[Accepted] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)

    @property
    def status(self) -> int:
        """200 all stored as sent; 202 some refused or changed; 409 none stored."""
        if not self.accepted:
            return 409
        if self.failed or any(a.warning for a in self.accepted):
            return 202
        return 200

    def warnings(self) -> list[str]:
        """``Warning`` header values: one per refused part and per coerced instance."""
        out = [f.message for f in self.failed]
        for a in self.accepted:
            if a.coerced:
                out.append(f"part {a.part} (SOP Instance {a.sop_uid}): stored with the node's patient and study "
                           f"attributes ({', '.join(a.coerced)})")
            if a.discarded:
                out.append(f"part {a.part} (SOP Instance {a.sop_uid}): {len(a.discarded)} private attribute(s) "
                           "discarded")
        return [f'299 incisive-node "{_header_text(w)}"' for w in out[:50]]

    def response(self, base_url: str) -> dict[str, Any]:
        """The Store Instances Response (PS3.18 Table 10.5.3-2) as DICOM JSON."""

        def ui(value: str) -> dict[str, Any]:
            return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}

        body: dict[str, Any] = {}
        studies = sorted({a.study_uid for a in self.accepted})
        if len(studies) == 1:
            body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{studies[0]}"]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {"00081150": ui(f.sop_class_uid), "00081155": ui(f.sop_uid),
                 "00081197": {"vr": "US", "Value": [f.reason]}} for f in self.failed]}
        if self.accepted:
            items = []
            for a in self.accepted:
                item: dict[str, Any] = {
                    "00081150": ui(a.sop_class_uid), "00081155": ui(a.sop_uid),
                    "00081190": {"vr": "UR", "Value": [
                        f"{base_url}/studies/{a.study_uid}/series/{a.series_uid}/instances/{a.sop_uid}"]}}
                if a.warning is not None:
                    item["00081196"] = {"vr": "US", "Value": [a.warning]}
                items.append(item)
            body["00081199"] = {"vr": "SQ", "Value": items}
        return body


def _header_text(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)[:400]


def store_instances(parts: Sequence[tuple[str, bytes]], checker: UploadChecker, target: StowTarget) -> StowOutcome:
    """Check every part and store those that pass (identical re-uploads are not stored twice)."""
    outcome = StowOutcome()
    for i, (ctype, data) in enumerate(parts, 1):
        result = checker.check(i, ctype, data)
        if isinstance(result, Failed):
            outcome.failed.append(result)
        else:
            outcome.accepted.append(result)
    fresh = [a for a in outcome.accepted if a.new]
    if fresh:
        target.store(fresh)
    return outcome


# ------------------------------------------------------------------------------ the file store


class StoreTarget:
    """Annotations into the node's own content-addressed store and index."""

    def __init__(self, store: NodeStore) -> None:
        self._store = store
        self._lock = threading.Lock()

    def study_context(self, study_uid: str) -> StudyContext | None:
        index = self._store.index
        studies = index.studies(study_uid=study_uid)
        if not studies:
            return None
        study = studies[0]
        instances = index.instances(study_uid=study_uid)
        annotation_series = frozenset(s.series_uid for s in index.series(study_uid=study_uid)
                                      if (s.modality or "") in _MODALITIES)
        source = next((i for i in instances if i.series_uid not in annotation_series), None)
        if source is None:
            return None
        import pydicom

        header = pydicom.dcmread(self._store.object_path(source.sha256), stop_before_pixels=True)
        return StudyContext(study_uid=study_uid, patient_id=study.patient_id, source=node_values(header),
                            instances={i.sop_uid: i.series_uid for i in instances},
                            annotation_series=annotation_series, dataset=study.dataset,
                            accession=study.accession_number)

    def stored(self, sop_uid: str) -> tuple[str, str | None] | None:
        row = self._store.index.instance(sop_uid)
        return None if row is None else (row.study_uid, row.sha256)

    def store(self, items: Sequence[Accepted]) -> None:
        from incisive_lab.node.index import extract_record

        records = []
        with self._lock:
            for a in items:
                if a.dataset is None:
                    raise DicomwebError(500, f"study {a.study_uid} has no dataset in the node index")
                self._store.add_bytes(a.data, sha256=a.sha256)
                records.append(extract_record(a.data, dataset=a.dataset, sha256=a.sha256, size=len(a.data)))
            self._store.add_instances(records)
