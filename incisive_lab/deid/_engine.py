"""The de-identification engine: one DICOM Part 10 file in, one de-identified file out.

The engine works on the encoded bytes. It parses a file once into a light tree of
byte ranges (no value decoding), decides each attribute's action through the
:class:`~incisive_lab.deid.profile.Profile` (cached per IOD and nesting path), and
writes the output by copying untouched elements as slices and encoding only the values
it changes. Output keeps the input's transfer syntax (and its explicit/implicit VR and
byte order), so compressed pixel data passes through untouched unless pixels must be
cleaned. Sequences and items keep their defined or undefined length style; defined
lengths are recomputed.

Failure modes are explicit: :class:`DeidError` (the file cannot be processed: not
DICOM, truncated, corrupt) and :class:`Quarantine` (processable but unsafe to release,
e.g. burned-in text that is not being cleaned).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID_dictionary

from incisive_lab.deid._standard import (
    ALL_VRS,
    SafePrivateAttribute,
    dictionary_entry,
    iod_attribute_types,
    iod_for_sop_class,
    iod_requires_pixels,
    load_safe_private,
)
from incisive_lab.deid._text import clean_text, identifier_words
from incisive_lab.deid.keys import Pseudonymizer, Secret
from incisive_lab.deid.profile import TEMPORAL_VRS, TEXT_VRS, Decision, Mode, Option, Profile

__all__ = ["DeidError", "Engine", "FileResult", "Quarantine"]

# --- constants -------------------------------------------------------------------------

ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

#: Implementation Class UID of this software (a fixed 2.25 UUID-derived UID).
IMPLEMENTATION_CLASS_UID = "2.25.223405473096018155436219413617932331073"

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VR_NAMES: dict[bytes, str] = {v.encode(): v for v in ALL_VRS}

# tags handled specially
T_PATIENT_NAME = 0x00100010
T_PATIENT_ID = 0x00100020
T_ISSUER = 0x00100021
T_BIRTH_DATE = 0x00100030
T_SEX = 0x00100040
T_ACCESSION = 0x00080050
T_SOP_CLASS = 0x00080016
T_SOP_INSTANCE = 0x00080018
T_STUDY_UID = 0x0020000D
T_SERIES_UID = 0x0020000E
T_MODALITY = 0x00080060
T_CHARSET = 0x00080005
T_BURNED_IN = 0x00280301
T_MANUFACTURER = 0x00080070
T_IDENTITY_REMOVED = 0x00120062
T_METHOD = 0x00120063
T_METHOD_CODES = 0x00120064
T_LONGITUDINAL = 0x00280303
_INSERTED = (T_IDENTITY_REMOVED, T_METHOD, T_METHOD_CODES, T_LONGITUDINAL)
_NO_TAGS: frozenset[int] = frozenset()

#: SOP Classes whose pixels commonly carry burned-in text when Burned In Annotation is absent.
BURNED_IN_RISK_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound multi-frame
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic
    }
)
#: SOP Classes that cannot be de-identified attribute by attribute: always quarantined.
UNSUPPORTED_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF: the document itself may name the patient",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA: the document itself names the patient",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
    "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ",
    "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data: opaque vendor content",
    "1.2.840.10008.5.1.1.27": "Stored Print",
}

_DUMMY_TEXT = b"ANONYMIZED"
_DUMMY_BY_VR: dict[str, bytes] = {
    "DA": b"19000101",
    "TM": b"000000",
    "DT": b"19000101000000",
    "AS": b"000Y",
    "IS": b"0",
    "DS": b"0",
    "UR": b"ANONYMIZED",
}

_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<L")
_TAG_LEN_LE = struct.Struct("<HHL")
_TAG_LEN_BE = struct.Struct(">HHL")


class DeidError(Exception):
    """The file cannot be de-identified (not DICOM, truncated, corrupt, ...)."""


class Quarantine(Exception):
    """The file can be read but must not be released (with the reason)."""


class Skip(Exception):
    """The file is not an instance to de-identify (e.g. a DICOMDIR index); reported, not copied."""


# --- parsed tree -----------------------------------------------------------------------
# An element is a tuple:
#   (tag, vr, hstart, vstart, vend, end, items, undefined)
# items is None for a non-sequence, else a list of items; an item is
#   (elements, hstart, vstart, vend, end, undefined)
El = tuple[int, str, int, int, int, int, "list[Item] | None", bool]
Item = tuple["list[El]", int, int, int, int, bool]


@dataclass(slots=True)
class _Syntax:
    explicit: bool
    little: bool

    @property
    def tag_len(self) -> struct.Struct:
        return _TAG_LEN_LE if self.little else _TAG_LEN_BE


class _Parser:
    """Parse a dataset's bytes into the element tree."""

    __slots__ = ("buf", "head_explicit", "head_implicit", "little", "n", "u16", "u32", "vr_of")

    def __init__(self, buf: bytes | memoryview, little: bool, vr_of: Callable[[int], str]) -> None:
        self.buf = buf
        self.n = len(buf)
        self.little = little
        order = "<" if little else ">"
        self.u16 = struct.Struct(order + "H").unpack_from
        self.u32 = struct.Struct(order + "L").unpack_from
        # one unpack per element header: group, element, VR (2 bytes), short length
        self.head_explicit = struct.Struct(order + "HH2sH").unpack_from
        self.head_implicit = struct.Struct(order + "HHL").unpack_from
        self.vr_of = vr_of

    def tag_at(self, pos: int) -> int:
        g = self.u16(self.buf, pos)[0]
        e = self.u16(self.buf, pos + 2)[0]
        return (g << 16) | e

    def dataset(self, pos: int, end: int, explicit: bool, item_undefined: bool = False) -> tuple[list[El], int]:
        """Parse elements from ``pos``; stop at ``end`` or, in an undefined-length item, at its delimiter."""
        buf = self.buf
        out: list[El] = []
        u32 = self.u32
        head_explicit = self.head_explicit
        head_implicit = self.head_implicit
        vr_names = _VR_NAMES
        long_vrs = _LONG_VRS
        while pos < end:
            if pos + 8 > end:
                raise DeidError(f"truncated element header at byte {pos}")
            if explicit:
                group, elem, vrb, vlen = head_explicit(buf, pos)
                tag = (group << 16) | elem
                vr = vr_names.get(vrb)
                if vr is None:
                    if group == 0xFFFE:
                        vr = ""  # item tags carry no VR; handled below
                    else:
                        raise DeidError(f"corrupt element ({group:04X},{elem:04X}) at byte {pos}: invalid VR {vrb!r}")
                if vrb in long_vrs:
                    if pos + 12 > end:
                        raise DeidError(f"truncated element header at byte {pos}")
                    vlen = u32(buf, pos + 8)[0]
                    vstart = pos + 12
                else:
                    vstart = pos + 8
            else:
                group, elem, vlen = head_implicit(buf, pos)
                tag = (group << 16) | elem
                vstart = pos + 8
                vr = self.vr_of(tag)
            if group == 0xFFFE:
                if tag == ITEM_DELIM:
                    if not item_undefined:
                        raise DeidError(f"unexpected item delimiter at byte {pos}")
                    return out, pos + 8
                raise DeidError(f"unexpected {'sequence delimiter' if tag == SEQ_DELIM else 'item'} at byte {pos}")
            if vlen == UNDEFINED:
                if vr == "SQ" or vr == "UN":
                    # an undefined-length UN is a sequence in implicit VR little endian (PS3.5 6.2.2)
                    seq_explicit = explicit and vr == "SQ"
                    items, vend, el_end = self.items(vstart, self.n, seq_explicit, undefined=True)
                    out.append((tag, vr if explicit else "SQ", pos, vstart, vend, el_end, items, True))
                    pos = el_end
                    continue
                # encapsulated pixel data (or another OB/OW with fragments)
                vend = self.skip_fragments(vstart)
                out.append((tag, vr, pos, vstart, vend, vend + 8, None, True))
                pos = vend + 8
                continue
            vend = vstart + vlen
            if vend > end:
                raise DeidError(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos} claims {vlen} bytes "
                    f"but only {max(end - vstart, 0)} remain (truncated file)"
                )
            if vr == "SQ" or (vr == "UN" and explicit and not (tag >> 16) & 1 and self.vr_of(tag) == "SQ"):
                items = self.items(vstart, vend, explicit and vr == "SQ", undefined=False)[0]
                out.append((tag, vr, pos, vstart, vend, vend, items, False))
            else:
                out.append((tag, vr, pos, vstart, vend, vend, None, False))
            pos = vend
        if item_undefined:
            raise DeidError("truncated file: missing item delimiter")
        return out, pos

    def items(self, pos: int, end: int, explicit: bool, undefined: bool) -> tuple[list[Item], int, int]:
        """The items of a sequence value starting at ``pos``.

        A defined-length value ends at ``end``; an undefined-length one at its sequence
        delimiter (``end`` is then ignored). Returns the items, where the value ends and
        where the element ends.
        """
        items: list[Item] = []
        limit = self.n if undefined else end
        while undefined or pos < end:
            if pos + 8 > limit:
                raise DeidError("truncated file: sequence without its delimiter" if undefined
                                else f"truncated item header at byte {pos}")
            tag = self.tag_at(pos)
            ilen = self.u32(self.buf, pos + 4)[0]
            if tag == SEQ_DELIM:
                if undefined:
                    return items, pos, pos + 8
                pos += 8  # tolerated inside a defined-length sequence
                continue
            if tag != ITEM:
                raise DeidError(f"expected an item at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if ilen == UNDEFINED:
                elems, after = self.dataset(pos + 8, limit, explicit, item_undefined=True)
                items.append((elems, pos, pos + 8, after - 8, after, True))
                pos = after
            else:
                if pos + 8 + ilen > limit:
                    raise DeidError(f"item at byte {pos} overruns its sequence (truncated or corrupt)")
                elems, _ = self.dataset(pos + 8, pos + 8 + ilen, explicit)
                items.append((elems, pos, pos + 8, pos + 8 + ilen, pos + 8 + ilen, False))
                pos += 8 + ilen
        return items, end, end

    def skip_fragments(self, pos: int) -> int:
        """Walk encapsulated fragments; return the position of the sequence delimiter."""
        n = self.n
        while True:
            if pos + 8 > n:
                raise DeidError("truncated file: encapsulated pixel data without its delimiter")
            tag = self.tag_at(pos)
            ilen = self.u32(self.buf, pos + 4)[0]
            if tag == SEQ_DELIM:
                return pos
            if tag != ITEM or ilen == UNDEFINED:
                raise DeidError(f"corrupt encapsulated pixel data at byte {pos}")
            pos += 8 + ilen
            if pos > n:
                raise DeidError("truncated file: a pixel data fragment overruns the file")


# --- results ----------------------------------------------------------------------------


class FileResult:
    """What happened to one file.

    ``status`` is ``ok``, ``quarantined``, ``failed`` or ``skipped``; ``reason`` says why
    when not ``ok``. For ``ok``: ``parts`` the de-identified file as a list of byte
    slices (write them with ``os.writev``) and ``output`` the same joined into one
    ``bytes``; ``relpath`` where the file belongs under the destination
    (``<patient pseudonym>/<study UID>/<series UID>/<instance UID>.dcm``); ``actions``
    the (attribute, action, basis) triples taken; ``vault`` encrypted vault rows
    (pseudonymisation only).
    """

    __slots__ = ("_output", "actions", "parts", "patient", "pixels_cleaned", "reason", "relpath", "status", "vault", "warnings")

    def __init__(
        self,
        status: str,
        reason: str = "",
        *,
        parts: list[bytes | memoryview] | None = None,
        relpath: str | None = None,
        patient: str | None = None,
        actions: list[tuple[str, str, str]] | None = None,
        vault: list[tuple[bytes, str, bytes, bytes]] | None = None,
        warnings: list[str] | None = None,
        pixels_cleaned: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.parts = parts
        self._output: bytes | None = None
        self.relpath = relpath
        self.patient = patient
        self.actions = actions if actions is not None else []
        self.vault = vault if vault is not None else []
        self.warnings = warnings if warnings is not None else []
        self.pixels_cleaned = pixels_cleaned

    @property
    def output(self) -> bytes | None:
        """The de-identified file as one ``bytes`` (joined on first use)."""
        if self._output is None and self.parts is not None:
            self._output = b"".join(self.parts)
        return self._output

    def __repr__(self) -> str:
        return f"FileResult(status={self.status!r}, reason={self.reason!r}, relpath={self.relpath!r})"


@dataclass(slots=True)
class _Ctx:
    """Per-file state."""

    syntax: _Syntax
    charset: str
    iod: str | None
    types: Any
    patient_key: str
    pseudonym: str
    shift_days: int
    forbidden: set[str] | None
    actions: list[tuple[str, str, str]]
    vault_items: list[tuple[str, str, dict[str, str]]]
    warnings: list[str]
    pixel_clean: bool = False
    overlay_clean: bool = False


def _decode_text(raw: bytes | memoryview, codec: str) -> str:
    return bytes(raw).decode(codec, errors="replace").rstrip(" \x00")


def _pad(value: bytes, vr: str) -> bytes:
    if len(value) % 2:
        return value + (b"\x00" if vr == "UI" else b" ")
    return value


def _tagstr(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _replace_syntax(ctx: _Ctx, syntax: _Syntax) -> _Ctx:
    """A view of ``ctx`` with another transfer syntax (lists are shared, not copied)."""
    new = copy.copy(ctx)
    new.syntax = syntax
    return new


_PYTHON_CODECS = {
    "": "ascii",
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15",
    "ISO_IR 192": "utf_8",
    "GB18030": "gb18030",
    "GBK": "gbk",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 166": "iso8859_11",
}


class Engine:
    """De-identify DICOM Part 10 files with one profile and one key.

    Parameters
    ----------
    profile : Profile
        What to do with each attribute.
    secret : Secret
        The provider's secret (pseudonymisation) or a per-run ephemeral salt
        (anonymisation; then no vault rows are produced).
    safe_private : path, optional
        An operator's extra safe-private table (JSON, same format as the packaged one).
    pixel_cleaner : callable, optional
        ``cleaner(output_bytes, context) -> bytes`` for Clean Pixel Data; raises
        :class:`Quarantine` when the image cannot be made safe. Defaults to
        :func:`incisive_lab.deid.pixels.clean_burned_in` when the option is active.
    vault : bool
        Pseudonymisation: produce encrypted vault rows (``FileResult.vault``); turn off
        when no vault is kept.
    """

    def __init__(
        self,
        profile: Profile,
        secret: Secret,
        *,
        safe_private: os.PathLike[str] | str | None = None,
        pixel_cleaner: Callable[[bytes, dict[str, Any]], bytes] | None = None,
        vault: bool = True,
    ) -> None:
        if profile.mode is Mode.ANONYMIZE and not secret.ephemeral:
            raise ValueError("anonymisation needs an ephemeral per-run salt, not the provider's secret")
        self.profile = profile
        self.pseudo = Pseudonymizer(secret)
        self._vault = vault and profile.mode is Mode.PSEUDONYMIZE
        if self._vault:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._vault_aead = AESGCM(secret.derive("vault/encryption"))
            self._k_vault_idx = secret.derive("vault/index")
        from pathlib import Path

        self._safe: dict[tuple[int, str, int], SafePrivateAttribute] = (
            load_safe_private(Path(safe_private) if safe_private else None)
            if profile.has(Option.RETAIN_SAFE_PRIVATE)
            else {}
        )
        self._cache: dict[tuple[Any, ...], dict[int, tuple[str, Decision, tuple[str, str, str] | None]]] = {}
        self._vr_cache: dict[int, str] = {}
        self._vault_seen: set[bytes] = set()
        self._temporal = profile.temporal_handling
        self._retain_uids = profile.has(Option.RETAIN_UIDS)
        self._cleaning_opts = bool(
            profile.options
            & {
                Option.CLEAN_DESCRIPTORS,
                Option.CLEAN_STRUCTURED_CONTENT,
                Option.CLEAN_GRAPHICS,
                Option.RETAIN_PATIENT_CHARACTERISTICS,
                Option.RETAIN_DEVICE_IDENTITY,
            }
        )
        self._pixel_clean = profile.has(Option.CLEAN_PIXEL_DATA)
        if pixel_cleaner is None and self._pixel_clean:
            from incisive_lab.deid.pixels import clean_burned_in

            pixel_cleaner = clean_burned_in
        self._pixel_cleaner = pixel_cleaner
        self._insertion_cache: dict[tuple[bool, bool], list[tuple[int, bytes]]] = {}
        self._method_values = profile.method_description()
        self._method_codes = profile.method_codes()

    # --- public --------------------------------------------------------------------------

    def process(self, data: bytes) -> FileResult:
        """De-identify one file's bytes; never raises for bad input (see ``FileResult.status``)."""
        try:
            return self._process(data)
        except Quarantine as q:
            return FileResult("quarantined", str(q))
        except Skip as sk:
            return FileResult("skipped", str(sk))
        except DeidError as e:
            return FileResult("failed", str(e))
        except (struct.error, IndexError, UnicodeDecodeError, zlib.error) as e:
            return FileResult("failed", f"corrupt or truncated file ({type(e).__name__}: {e})")

    # --- implicit VR dictionary -------------------------------------------------------------

    def _implicit_vr(self, tag: int) -> str:
        vr = self._vr_cache.get(tag)
        if vr is not None:
            return vr
        group = tag >> 16
        if group & 1:
            vr = "LO" if 0x10 <= tag & 0xFFFF <= 0xFF else "UN"  # a private creator is LO
        else:
            entry = dictionary_entry(tag)
            vr = entry[0] if entry else "UN"
        self._vr_cache[tag] = vr
        return vr

    # --- the pipeline -----------------------------------------------------------------------

    def _process(self, data: bytes) -> FileResult:
        if len(data) < 132 or data[128:132] != b"DICM":
            raise DeidError("not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)")
        mv = memoryview(data)
        meta_parser = _Parser(mv, True, self._implicit_vr)
        meta: list[El] = []
        pos = 132
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            end = self._meta_element_end(mv, pos)
            if end > len(data):
                raise DeidError(f"truncated file: the file meta information is cut short at byte {len(data)}")
            els, pos = meta_parser.dataset(pos, end, True)
            meta.extend(els)
        group_length = next((el for el in meta if el[0] == 0x00020000), None)
        if group_length is not None and group_length[4] - group_length[3] == 4:
            declared_end = group_length[5] + _LONG.unpack_from(mv, group_length[3])[0]
            if declared_end > len(data):
                raise DeidError(f"truncated file: the file meta information is cut short at byte {len(data)}")
        meta_values = {el[0]: bytes(mv[el[3] : el[4]]).rstrip(b" \x00").decode("ascii", "replace") for el in meta}
        if meta_values.get(0x00020002) == MEDIA_STORAGE_DIRECTORY:
            raise Skip("DICOMDIR (Media Storage Directory): an index of file paths, not an instance; the output has its own layout")
        ts = meta_values.get(0x00020010)
        if not ts:
            raise DeidError("file meta information has no Transfer Syntax UID (0002,0010)")
        body: bytes | memoryview = mv[pos:]
        deflated = ts == DEFLATED_LE
        if deflated:
            try:
                body = zlib.decompress(bytes(body), -15)
            except zlib.error as exc:
                raise DeidError(f"deflated dataset cannot be inflated: {exc}") from None
        syntax = _Syntax(explicit=ts != IMPLICIT_LE, little=ts != EXPLICIT_BE)
        parser = _Parser(body, syntax.little, self._implicit_vr)
        elems, _ = parser.dataset(0, len(body), syntax.explicit)
        if not elems:
            raise DeidError("the file has file meta information but no dataset")
        top = {el[0]: el for el in elems}

        def text(tag: int) -> str:
            el = top.get(tag)
            return _decode_text(body[el[3] : el[4]], "latin_1") if el else ""

        sop_class = text(T_SOP_CLASS)
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            raise Skip("DICOMDIR (Media Storage Directory): an index of file paths, not an instance")
        if not sop_class or T_SOP_INSTANCE not in top:
            raise DeidError("not a composite instance: SOP Class UID (0008,0016) or SOP Instance UID (0008,0018) is missing")
        if sop_class in UNSUPPORTED_CLASSES:
            raise Quarantine(f"{UNSUPPORTED_CLASSES[sop_class]} (SOP Class {sop_class})")
        has_pixels = PIXEL_DATA in top or 0x7FE00008 in top or 0x7FE00009 in top
        burned = text(T_BURNED_IN).upper()
        risk = burned == "YES" or (burned == "" and sop_class in BURNED_IN_RISK_CLASSES)
        pixel_clean = False
        if risk and has_pixels:
            if not self._pixel_clean:
                why = "Burned In Annotation is YES" if burned == "YES" else f"Burned In Annotation is absent on SOP Class {sop_class}"
                raise Quarantine(f"{why}: pixels may show identifying text (use the clean-pixel-data option)")
            pixel_clean = True
        iod = iod_for_sop_class(sop_class)
        if iod and iod_requires_pixels(iod) and not has_pixels:
            raise DeidError(f"an image ({iod}) without Pixel Data (7FE0,0010): incomplete or corrupt instance")
        charset_raw = text(T_CHARSET).split("\\")
        codec = _PYTHON_CODECS.get(charset_raw[-1].strip() if charset_raw else "", "latin_1")
        types = iod_attribute_types(iod) if iod else None
        patient_id = _decode_text(body[top[T_PATIENT_ID][3] : top[T_PATIENT_ID][4]], codec) if T_PATIENT_ID in top else ""
        warnings: list[str] = []
        if not iod:
            warnings.append(f"unknown IOD for SOP Class {sop_class or '(none)'}: conditional actions resolved to the most protective branch")
        if patient_id:
            patient_key = patient_id
        else:
            study = text(T_STUDY_UID)
            patient_key = "study:" + study if study else "file:" + hashlib.sha256(data).hexdigest()
            warnings.append("no Patient ID: the pseudonym is derived from the study")
        ctx = _Ctx(
            syntax=syntax,
            charset=codec,
            iod=iod,
            types=types,
            patient_key=patient_key,
            pseudonym=self.pseudo.patient(patient_key),
            shift_days=self.pseudo.date_shift_days(patient_key) if self._temporal == "shift" else 0,
            forbidden=None,
            actions=[],
            vault_items=[],
            warnings=warnings,
            pixel_clean=pixel_clean,
        )
        if self._cleaning_opts:
            ctx.forbidden = self._collect_identifiers(body, elems, ctx)
        if self._vault:
            ctx.vault_items.append(
                (
                    "patient",
                    ctx.pseudonym,
                    {
                        "PatientID": patient_id,
                        "IssuerOfPatientID": text(T_ISSUER),
                        "PatientName": _decode_text(body[top[T_PATIENT_NAME][3] : top[T_PATIENT_NAME][4]], codec)
                        if T_PATIENT_NAME in top
                        else "",
                        "PatientBirthDate": text(T_BIRTH_DATE),
                        "PatientSex": text(T_SEX),
                    },
                )
            )
        out: list[bytes | memoryview] = []
        self._emit(body, elems, ctx, (), False, out, top_level=True)
        if deflated:
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            out = [comp.compress(b"".join(out)) + comp.flush()]
        sop_uid = self._new_uid(text(T_SOP_INSTANCE))
        meta_bytes = self._file_meta(meta_values, sop_uid, ts)
        parts: list[bytes | memoryview] = [b"\x00" * 128 + b"DICM" + meta_bytes, *out]
        if ctx.pixel_clean:
            assert self._pixel_cleaner is not None
            parts = [
                self._pixel_cleaner(
                    b"".join(parts),
                    {"modality": text(T_MODALITY), "manufacturer": text(T_MANUFACTURER), "sop_class": sop_class},
                )
            ]
            ctx.actions.append(("(7FE0,0010) Pixel Data", "C", Option.CLEAN_PIXEL_DATA.value))
        study_uid = self._new_uid(text(T_STUDY_UID)) if T_STUDY_UID in top else "no-study"
        series_uid = self._new_uid(text(T_SERIES_UID)) if T_SERIES_UID in top else "no-series"
        vault_rows = self._seal_vault(ctx.vault_items) if self._vault else []
        return FileResult(
            "ok",
            parts=parts,
            relpath=f"{ctx.pseudonym}/{study_uid}/{series_uid}/{sop_uid}.dcm",
            patient=ctx.pseudonym,
            actions=ctx.actions,
            vault=vault_rows,
            warnings=ctx.warnings,
            pixels_cleaned=ctx.pixel_clean,
        )

    @staticmethod
    def _meta_element_end(mv: memoryview, pos: int) -> int:
        # group 0002 is always explicit VR little endian; parse one element at a time
        vr = bytes(mv[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            return pos + 12 + _LONG.unpack_from(mv, pos + 8)[0]
        return pos + 8 + _SHORT.unpack_from(mv, pos + 6)[0]

    # --- identifiers (for cleaning) ----------------------------------------------------------

    def _collect_identifiers(self, body: bytes | memoryview, elems: list[El], ctx: _Ctx) -> set[str]:
        values: list[str] = []

        def walk(level: list[El], path: tuple[int, ...]) -> None:
            for tag, vr, _hs, vs, ve, _end, items, _u in level:
                if tag >> 16 & 1:
                    continue
                if items is not None:
                    for item in items:
                        walk(item[0], (*path, tag))
                    continue
                if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "DA", "DT", "AE", "AS"):
                    d = self.profile.decide(tag, vr, ctx.types, path)
                    if d.act in ("X", "Z", "D", "U") or tag in (T_PATIENT_ID, T_PATIENT_NAME, T_ACCESSION):
                        values.append(_decode_text(body[vs:ve], ctx.charset))

        walk(elems, ())
        return identifier_words(values)

    # --- emitting ----------------------------------------------------------------------------

    def _level_cache(self, ctx: _Ctx, path: tuple[int, ...], cleaning: bool) -> dict[int, tuple[str, Decision, tuple[str, str, str] | None]]:
        key = (ctx.iod, path, cleaning)
        cache = self._cache.get(key)
        if cache is None:
            cache = self._cache[key] = {}
        return cache

    def _decide(self, cache: dict[int, Any], tag: int, vr: str, ctx: _Ctx, path: tuple[int, ...], cleaning: bool) -> tuple[str, Decision, tuple[str, str, str] | None]:
        """Decide a tag not yet in this level's cache, and cache it."""
        d = self.profile.decide(tag, vr, ctx.types, path, cleaning=cleaning)
        act = d.act
        record: tuple[str, str, str] | None = None
        if d.basis not in ("vr-rule", "retained-list") or act != "K":
            entry = dictionary_entry(tag)
            name = entry[2] if entry else "unknown"
            where = "".join(_tagstr(p) + ">" for p in path)
            note = f" [{d.note}]" if d.note else ""
            record = (f"{where}{_tagstr(tag)} {name}", act, d.basis + note)
        hit = (act, d, record)
        cache[tag] = hit
        return hit

    def _emit(
        self,
        buf: bytes | memoryview,
        elems: list[El],
        ctx: _Ctx,
        path: tuple[int, ...],
        cleaning: bool,
        out: list[bytes | memoryview],
        top_level: bool = False,
    ) -> None:
        cache = self._level_cache(ctx, path, cleaning)
        actions = ctx.actions
        kept_private, creators = self._private_blocks(buf, elems) if self._safe else (_NO_TAGS, {})
        pending = list(self._insertions(ctx)) if top_level else []
        removed_overlays: set[int] = set()
        for el in elems:
            tag, vr, hs, vs, ve, end, items, undefined = el
            while pending and pending[0][0] <= tag:
                self._flush_insertion(pending.pop(0), out, actions)
            group = tag >> 16
            if group & 1:
                self._private(buf, elems, el, kept_private, creators, out, actions)
                continue
            if top_level and tag in _INSERTED:
                continue
            if 0x6000 <= group <= 0x601E:
                if group in removed_overlays:
                    continue
                overlay_act = self._decide(cache, (group << 16) | 0x3000, "OW", ctx, path, cleaning)[0]
                if overlay_act == "X":
                    removed_overlays.add(group)
                    actions.append((f"({group:04X},xxxx) Overlay group", "X", "basic [Overlay Data is removed]"))
                    continue
            hit = cache.get(tag)
            if hit is None:
                hit = self._decide(cache, tag, vr, ctx, path, cleaning)
            act, _decision, record = hit
            if record is not None:
                actions.append(record)
            if act == "X":
                continue
            if items is None and act == "K":
                if top_level and tag == T_BURNED_IN and ctx.pixel_clean:
                    out.append(self._element(tag, vr, b"NO", ctx))
                else:
                    out.append(buf[hs:end])
                continue
            if items is not None:
                if act == "Z":
                    if undefined:
                        out.append(self._seq_header(tag, vr, UNDEFINED, ctx) + self._tag_len(SEQ_DELIM, 0, ctx))
                    else:
                        out.append(self._seq_header(tag, vr, 0, ctx))
                    continue
                self._emit_sequence(buf, el, ctx, (*path, tag), cleaning or act == "C", out)
                continue
            tvr = vr
            if vr == "UN":
                entry = dictionary_entry(tag)
                tvr = entry[0] if entry else "UN"
            if top_level and tag in (T_PATIENT_ID, T_PATIENT_NAME):
                out.append(self._element(tag, tvr, ctx.pseudonym.encode(), ctx))
                continue
            if top_level and tag == T_ACCESSION:
                out.append(self._element(tag, tvr, self._accession(buf[vs:ve], ctx), ctx))
                continue
            if act == "Z":
                out.append(self._element(tag, tvr, b"", ctx))
            elif act == "U" or (act == "D" and tvr == "UI"):
                out.append(self._element(tag, "UI", self._replace_uids(buf[vs:ve], ctx), ctx))
            elif act == "D":
                out.append(self._element(tag, tvr, self._dummy(tvr, ve - vs), ctx))
            elif act == "C":
                out.append(self._element(tag, tvr, self._clean(tag, tvr, buf[vs:ve], ctx), ctx))
            else:
                out.append(buf[hs:end])
        while pending:
            self._flush_insertion(pending.pop(0), out, actions)

    @staticmethod
    def _flush_insertion(ins: tuple[int, bytes], out: list[bytes | memoryview], actions: list[tuple[str, str, str]]) -> None:
        tag, encoded = ins
        out.append(encoded)
        entry = dictionary_entry(tag)
        actions.append((f"{_tagstr(tag)} {entry[2] if entry else ''}", "set", "de-identification record"))

    def _private_blocks(self, buf: bytes | memoryview, elems: list[El]) -> tuple[set[int], dict[tuple[int, int], str]]:
        """The Private Creators at this level, and the private tags to keep (safe elements, their creators)."""
        kept: set[int] = set()
        creators: dict[tuple[int, int], str] = {}
        safe = self._safe
        for tag, _vr, _hs, vs, ve, _e, items, _u in elems:
            group = tag >> 16
            if not group & 1:
                continue
            el = tag & 0xFFFF
            if 0x10 <= el <= 0xFF:
                creators[(group, el)] = _decode_text(buf[vs:ve], "latin_1").rstrip()
            elif safe and el >= 0x1000 and items is None:
                creator = creators.get((group, el >> 8))
                if creator is not None and (group, creator, el & 0xFF) in self._safe:
                    kept.add(tag)
                    kept.add((group << 16) | (el >> 8))
        return kept, creators

    def _private(
        self,
        buf: bytes | memoryview,
        elems: list[El],
        el: El,
        kept: set[int] | frozenset[int],
        creators: dict[tuple[int, int], str],
        out: list[bytes | memoryview],
        actions: list[tuple[str, str, str]],
    ) -> None:
        tag, _vr, hs, vs, ve, end, _items, _u = el
        group, low = tag >> 16, tag & 0xFFFF
        if 0x10 <= low <= 0xFF and not self._safe:
            # creators precede their blocks: learn them as they come
            creators[(group, low)] = _decode_text(buf[vs:ve], "latin_1").rstrip()
        if tag in kept:
            out.append(buf[hs:end])
            if low >= 0x1000:
                creator = creators.get((group, low >> 8), "")
                actions.append((f"({group:04X},xx{low & 0xFF:02X}) {creator}", "K", Option.RETAIN_SAFE_PRIVATE.value))
            return
        if low >= 0x1000:
            owner = creators.get((group, low >> 8)) or "(no creator)"
            actions.append((f"({group:04X},xx{low & 0xFF:02X}) {owner}", "X", "private"))
        elif 0x10 <= low <= 0xFF:
            actions.append((f"({group:04X},00xx) Private Creator", "X", "private"))
        else:
            actions.append((f"({group:04X},{low:04X}) private group length or reserved", "X", "private"))

    def _emit_sequence(self, buf: bytes | memoryview, el: El, ctx: _Ctx, path: tuple[int, ...], cleaning: bool, out: list[bytes | memoryview]) -> None:
        tag, vr, _hs, _vs, _ve, _end, items, undefined = el
        inner_ctx = ctx
        if vr == "UN":
            # a sequence encoded as UN: its items are implicit VR little endian (PS3.5 6.2.2)
            inner_ctx = _replace_syntax(ctx, _Syntax(explicit=False, little=True))
            undefined = True
        body: list[bytes | memoryview] = []
        for elems, _ihs, _ivs, _ive, _iend, iundef in items or ():
            inner: list[bytes | memoryview] = []
            self._emit(buf, elems, inner_ctx, path, cleaning, inner)
            content = b"".join(inner)
            if iundef:
                body += [self._tag_len(ITEM, UNDEFINED, inner_ctx), content, self._tag_len(ITEM_DELIM, 0, inner_ctx)]
            else:
                body += [self._tag_len(ITEM, len(content), inner_ctx), content]
        payload = b"".join(body)
        if undefined:
            out += [self._seq_header(tag, vr, UNDEFINED, ctx), payload, self._tag_len(SEQ_DELIM, 0, inner_ctx)]
        else:
            out += [self._seq_header(tag, vr, len(payload), ctx), payload]

    # --- encoding helpers ------------------------------------------------------------------

    def _insertions(self, ctx: _Ctx) -> list[tuple[int, bytes]]:
        """The de-identification record attributes, encoded in the file's syntax (sorted by tag)."""
        key = (ctx.syntax.explicit, ctx.syntax.little)
        cached = self._insertion_cache.get(key)
        if cached is not None:
            return cached
        items = []
        for code, meaning in self._method_codes:
            content = (
                self._element(0x00080100, "SH", code.encode(), ctx)
                + self._element(0x00080102, "SH", b"DCM", ctx)
                + self._element(0x00080104, "LO", meaning.encode(), ctx)
            )
            items.append(self._tag_len(ITEM, len(content), ctx) + content)
        seq_payload = b"".join(items)
        encoded = [
            (T_IDENTITY_REMOVED, self._element(T_IDENTITY_REMOVED, "CS", b"YES", ctx)),
            (T_METHOD, self._element(T_METHOD, "LO", "\\".join(self._method_values).encode(), ctx)),
            (T_METHOD_CODES, self._seq_header(T_METHOD_CODES, "SQ", len(seq_payload), ctx) + seq_payload),
            (T_LONGITUDINAL, self._element(T_LONGITUDINAL, "CS", self.profile.longitudinal_status.encode(), ctx)),
        ]
        self._insertion_cache[key] = encoded
        return encoded

    def _element(self, tag: int, vr: str, value: bytes, ctx: _Ctx) -> bytes:
        value = _pad(value, vr)
        g, e = tag >> 16, tag & 0xFFFF
        little = ctx.syntax.little
        if ctx.syntax.explicit:
            vrb = vr.encode()
            if vrb in _LONG_VRS:
                return struct.pack("<HH2sHL" if little else ">HH2sHL", g, e, vrb, 0, len(value)) + value
            if len(value) > 0xFFFE:
                value = value[:0xFFFE]
            return struct.pack("<HH2sH" if little else ">HH2sH", g, e, vrb, len(value)) + value
        return struct.pack("<HHL" if little else ">HHL", g, e, len(value)) + value

    @staticmethod
    def _seq_header(tag: int, vr: str, length: int, ctx: _Ctx) -> bytes:
        g, e = tag >> 16, tag & 0xFFFF
        little = ctx.syntax.little
        if ctx.syntax.explicit:
            vrb = b"UN" if vr == "UN" else b"SQ"
            return struct.pack("<HH2sHL" if little else ">HH2sHL", g, e, vrb, 0, length)
        return struct.pack("<HHL" if little else ">HHL", g, e, length)

    @staticmethod
    def _tag_len(tag: int, length: int, ctx: _Ctx) -> bytes:
        return (_TAG_LEN_LE if ctx.syntax.little else _TAG_LEN_BE).pack(tag >> 16, tag & 0xFFFF, length)

    # --- value transforms -------------------------------------------------------------------

    def _new_uid(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid or self._retain_uids or uid in UID_dictionary:
            return uid
        return self.pseudo.uid(uid)

    def _replace_uids(self, raw: bytes | memoryview, ctx: _Ctx) -> bytes:
        values = bytes(raw).rstrip(b" \x00").decode("ascii", "replace").split("\\")
        new: list[str] = []
        for v in values:
            v = v.strip()
            if not v:
                new.append(v)
                continue
            n = self._new_uid(v)
            if self._vault and n != v:
                ctx.vault_items.append(("uid", n, {"UID": v}))
            new.append(n)
        return "\\".join(new).encode("ascii")

    def _accession(self, raw: bytes | memoryview, ctx: _Ctx) -> bytes:
        original = _decode_text(raw, ctx.charset)
        if not original:
            return b""
        pseudo = self.pseudo.accession(original)
        if self._vault:
            ctx.vault_items.append(("accession", pseudo, {"AccessionNumber": original, "patient": ctx.pseudonym}))
        return pseudo.encode()

    @staticmethod
    def _dummy(vr: str, length: int) -> bytes:
        d = _DUMMY_BY_VR.get(vr)
        if d is not None:
            return d
        if vr in TEXT_VRS or vr in ("PN", "CS", "AE"):
            return _DUMMY_TEXT
        return b"\x00" * length

    def _clean(self, tag: int, vr: str, raw: bytes | memoryview, ctx: _Ctx) -> bytes:
        if vr in TEMPORAL_VRS:
            return self._shift(vr, bytes(raw), ctx)
        if vr in TEXT_VRS or vr == "AE":
            text = _decode_text(raw, ctx.charset)
            cleaned = clean_text(text, ctx.forbidden)
            if vr == "AE" or vr == "SH":
                cleaned = cleaned[:16]
            elif vr == "LO":
                cleaned = cleaned[:64]
            return cleaned.encode(ctx.charset, errors="replace")
        if vr == "PN":
            return _DUMMY_TEXT
        if vr == "UI":
            return self._replace_uids(raw, ctx)
        if vr in ("OB", "OW") and (tag >> 16) & 0xFF00 == 0x6000:
            ctx.overlay_clean = True
            return bytes(raw)
        if vr == "AS":
            return bytes(raw).rstrip()
        return bytes(raw)

    def _shift(self, vr: str, raw: bytes, ctx: _Ctx) -> bytes:
        if self._temporal == "keep" or vr == "TM":
            return raw.rstrip(b" \x00")
        if self._temporal != "shift":
            return b""
        days = ctx.shift_days
        values = raw.rstrip(b" \x00").decode("ascii", "replace").split("\\")
        out = []
        for v in values:
            v = v.strip()
            digits = v.replace(".", "") if vr == "DA" else v
            if len(digits) >= 8 and digits[:8].isdigit():
                try:
                    d = _dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) + _dt.timedelta(days=days)
                except ValueError:
                    out.append("")
                    continue
                out.append(d.strftime("%Y%m%d") + (digits[8:] if vr == "DT" else ""))
            else:
                out.append("")  # not a full date: cannot be shifted, so it goes
        return "\\".join(out).encode("ascii")

    # --- file meta -------------------------------------------------------------------------

    def _file_meta(self, values: dict[int, str], sop_uid: str, ts: str) -> bytes:
        from incisive_lab import __version__

        def el(tag: int, vr: str, value: bytes) -> bytes:
            value = _pad(value, vr)
            g, e = tag >> 16, tag & 0xFFFF
            if vr.encode() in _LONG_VRS:
                return struct.pack("<HH2sHL", g, e, vr.encode(), 0, len(value)) + value
            return struct.pack("<HH2sH", g, e, vr.encode(), len(value)) + value

        body = b"".join(
            [
                el(0x00020001, "OB", b"\x00\x01"),
                el(0x00020002, "UI", values.get(0x00020002, "").encode()),
                el(0x00020003, "UI", sop_uid.encode()),
                el(0x00020010, "UI", ts.encode()),
                el(0x00020012, "UI", IMPLEMENTATION_CLASS_UID.encode()),
                el(0x00020013, "SH", f"INCISIVE_{__version__}"[:16].encode()),
            ]
        )
        return el(0x00020000, "UL", struct.pack("<L", len(body))) + body

    # --- vault -----------------------------------------------------------------------------

    def _seal_vault(self, items: list[tuple[str, str, dict[str, str]]]) -> list[tuple[bytes, str, bytes, bytes]]:
        from incisive_lab.deid.vault import seal

        rows = []
        for kind, pseudonym, original in items:
            lookup = hmac.new(self._k_vault_idx, f"{kind}:{pseudonym}".encode(), hashlib.sha256).digest()
            if lookup in self._vault_seen:
                continue
            self._vault_seen.add(lookup)
            nonce, ct = seal(self._vault_aead, lookup, {"kind": kind, "pseudonym": pseudonym, **original})
            rows.append((lookup, kind, nonce, ct))
        if len(self._vault_seen) > 500_000:
            self._vault_seen.clear()
        return rows
