"""The leak scanner: does de-identified output still contain known identifying text?

Given the identifying strings a provider knows (names, IDs, dates, addresses, the
lines burned into pixels), :class:`LeakScanner` searches de-identified DICOM for them
everywhere they can hide:

- the raw bytes of the whole file (preamble, file meta, every element at every depth,
  private blocks, pixel data), case-insensitively;
- every decoded value (pydicom walk of the dataset and of the file meta), so text in
  other character sets is found too, reporting the element's path;
- the output's relative path (file and folder names);
- the pixels, read by OCR (tesseract), for burned-in text.

It also checks the structure of a de-identified instance (:func:`audit`): Patient
Identity Removed is YES, the de-identification method is recorded, no private
attributes remain (other than safe ones when allowed), person names are pseudonyms
or dummies. The node's STOW-RS endpoint reuses :func:`audit` for uploads.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

__all__ = ["Finding", "LeakScanner", "audit", "date_variants", "ocr_text"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One leak or structural problem."""

    file: str
    where: str  #: e.g. "bytes@1234", "(0010,0010) PatientName", "path", "pixels (OCR)"
    token: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.token!r} in {self.where}{' — ' + self.detail if self.detail else ''}"


def date_variants(yyyymmdd: str) -> list[str]:
    """Common renderings of a date: 20190312, 2019-03-12, 12/03/2019, 12.03.2019, 03/12/2019."""
    d = yyyymmdd.strip()
    if len(d) != 8 or not d.isdigit():
        return [d] if d else []
    y, m, dd = d[:4], d[4:6], d[6:]
    try:
        date(int(y), int(m), int(dd))
    except ValueError:
        return [d]
    return [d, f"{y}-{m}-{dd}", f"{dd}/{m}/{y}", f"{dd}.{m}.{y}", f"{m}/{dd}/{y}", f"{dd}-{m}-{y}"]


class LeakScanner:
    """Search de-identified files for known identifying strings.

    Parameters
    ----------
    tokens : iterable of str
        Strings that must not appear anywhere (names, IDs, addresses, ...). Matching is
        case-insensitive; tokens shorter than ``min_length`` are refused (they would
        match by chance).
    dates : iterable of str
        Dates (YYYYMMDD) that must not appear, in any common rendering.
    min_length : int
        Shortest token accepted.

    Notes
    -----
    A token made only of digits (a date as ``YYYYMMDD``, a numeric ID) is not reported where
    a digit comes right before it: inside a longer number it is not that date or ID (a
    random ``2.25.<39 digits>`` UID holds a given 8-digit run once in about 3 million
    draws, which a scan of thousands of files would otherwise report as a leak). A digit
    *after* it still matches, so ``20190314093015`` (a DateTime) is found. Likewise a token
    made of letters, or of letters and digits (a given name, an MRN such as ``E25804``), is
    not reported inside a longer run of letters and digits, with a letter or digit right
    before *and* after it: "Rosa" in "Microsatellite" is not Rosa, nor is ``E25804`` in the
    hex digest ``…3e258041f…`` that names a stored object or in a random base32 pseudonym;
    "ROSA^", "Rosa,", "RosaGiordani" and "MRN:E25804" are.

    Examples
    --------
    >>> s = LeakScanner(["Novak^Petra", "H-204417"], dates=["19650312"])
    >>> [f.token for f in s.scan_text("x", "seen by NOVAK^PETRA on 12.03.1965", "text")]
    ['Novak^Petra', '19650312']
    """

    def __init__(self, tokens: Iterable[str], dates: Iterable[str] = (), *, min_length: int = 4) -> None:
        import ahocorasick

        self._tokens: dict[str, str] = {}
        for t in tokens:
            t = t.strip()
            if not t:
                continue
            if len(t) < min_length:
                raise ValueError(f"token {t!r} is shorter than {min_length} characters: it would match by chance")
            self._tokens[t.lower()] = t
        for d in dates:
            for v in date_variants(d):
                self._tokens.setdefault(v.lower(), d)
        if not self._tokens:
            raise ValueError("a leak scanner needs at least one token")
        # one automaton over text; raw bytes are searched as Latin-1 text, with each token
        # also in its UTF-8 byte form, so both single-byte and UTF-8 encodings are caught
        self._auto = ahocorasick.Automaton()
        for low, original in self._tokens.items():
            self._auto.add_word(low, (original, len(low), low.isdigit(), _one_run(low)))
            mojibake = low.encode("utf-8").decode("latin-1").lower()
            if mojibake != low:
                self._auto.add_word(mojibake, (original, len(mojibake), False, _one_run(mojibake)))
        self._auto.make_automaton()

    @property
    def tokens(self) -> list[str]:
        """The original tokens (and dates) searched for."""
        return sorted(set(self._tokens.values()))

    def _hits(self, text: str) -> list[tuple[int, str]]:
        low = text.lower()
        out = []
        for end, (original, length, digits, run) in self._auto.iter(low):
            start = end - length + 1
            if digits and start > 0 and "0" <= low[start - 1] <= "9":
                continue  # inside a longer number (see the class notes)
            if run and start > 0 and end + 1 < len(low) and low[start - 1].isalnum() \
                    and low[end + 1].isalnum():
                continue  # inside a longer word or code (see the class notes)
            out.append((end, original))
        return out

    def scan_text(self, file: str, text: str, where: str) -> list[Finding]:
        """Findings in one piece of text."""
        return [Finding(file, where, original) for _end, original in self._hits(text)]

    def scan_bytes(self, file: str, data: bytes) -> list[Finding]:
        """Findings anywhere in a file's raw bytes."""
        return [Finding(file, f"bytes@{end}", original) for end, original in self._hits(data.decode("latin-1"))]

    def scan_dataset(self, file: str, data: bytes) -> list[Finding]:
        """Findings in every decoded value (all depths, private, file meta), by element path."""
        import pydicom
        from pydicom.dataset import Dataset

        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # unreadable output is itself a finding
            return [Finding(file, "file", "(unreadable)", f"{type(exc).__name__}: {exc}")]
        out: list[Finding] = []

        def walk(d: Dataset, prefix: str) -> None:
            for elem in d:
                where = f"{prefix}{elem.tag} {elem.keyword or elem.name}"
                if elem.VR == "SQ":
                    for i, item in enumerate(elem.value or []):
                        walk(item, f"{where}[{i}]>")
                    continue
                if elem.tag == 0x7FE00010:
                    continue  # pixel bytes are covered by the raw byte search and OCR
                value = elem.value
                texts: list[str] = []
                if isinstance(value, bytes):
                    texts.append(value.decode("latin-1"))
                elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                    texts.extend(str(v) for v in value)
                elif value is not None:
                    texts.append(str(value))
                for t in texts:
                    out.extend(self.scan_text(file, t, where))

        walk(ds.file_meta, "meta ")
        walk(ds, "")
        return out

    def scan_file(self, file: str, data: bytes, *, relpath: str | None = None) -> list[Finding]:
        """Raw bytes, decoded values and the output path; duplicates merged."""
        findings = self.scan_bytes(file, data) + self.scan_dataset(file, data)
        if relpath is not None:
            findings += self.scan_text(file, relpath, "path")
        seen: set[tuple[str, str]] = set()
        unique = []
        for f in findings:
            key = (f.token, f.where if not f.where.startswith("bytes@") else "bytes")
            if key not in seen:
                seen.add(key)
                unique.append(f)
        return unique

    def scan_pixels(self, file: str, data: bytes) -> list[Finding]:
        """Findings in the text OCR reads from the pixels of every frame."""
        text = ocr_text(data)
        normalised = _squash(text)
        out = []
        for low, original in self._tokens.items():
            needle = _squash(low)
            if len(needle) >= 4 and needle in normalised:
                out.append(Finding(file, "pixels (OCR)", original, f"OCR read: {text.strip()[:80]!r}"))
        return out


def _one_run(token: str) -> bool:
    """Letters, or letters and digits, with nothing else (all digits is a number: see above)."""
    return token.isalnum() and not token.isdigit()


def _squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def ocr_text(data: bytes) -> str:
    """All text tesseract reads in an instance's frames (windowed, and brightest pixels)."""
    import numpy as np
    import pydicom
    import pytesseract
    from PIL import Image

    from incisive_lab.deid.pixels import _bright_mask, _to_uint8

    ds = pydicom.dcmread(io.BytesIO(data))
    arr = np.asarray(ds.pixel_array)
    frames = arr if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else arr[None, ...]
    texts = []
    for frame in frames:
        f = frame.astype(np.float32).mean(axis=-1) if frame.ndim == 3 else frame.astype(np.float32)
        views = [_to_uint8(f)]
        bright = _bright_mask(f, float(f.max()))
        if bright.any() and bright.mean() < 0.2:
            views.append(np.where(bright, 0, 255).astype(np.uint8))
        for img in views:
            pil = Image.fromarray(img)
            if max(img.shape) < 1024:
                pil = pil.resize((img.shape[1] * 2, img.shape[0] * 2), Image.Resampling.LANCZOS)
            texts.append(pytesseract.image_to_string(pil, config="--oem 1 --psm 11"))
    return "\n".join(texts)


def audit(data: bytes, *, allowed_names: Sequence[str] = (), safe_private_allowed: bool = False) -> list[str]:
    """Structural checks of a de-identified instance; returns problems (empty = passes).

    Parameters
    ----------
    data : bytes
        The instance (Part 10).
    allowed_names : sequence of str
        Person-name values that are acceptable (e.g. the patient's pseudonym).
    safe_private_allowed : bool
        Whether private attributes may remain (Retain Safe Private).
    """
    import pydicom
    from pydicom.dataset import Dataset

    problems: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        return [f"not readable as DICOM: {type(exc).__name__}: {exc}"]
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        problems.append("Patient Identity Removed (0012,0062) is not YES")
    if "DeidentificationMethod" not in ds and "DeidentificationMethodCodeSequence" not in ds:
        problems.append("no De-identification Method (0012,0063) or Method Code Sequence (0012,0064)")
    if any(b != 0 for b in data[:128]):
        problems.append("the 128-byte preamble is not zero")
    allowed = {n.strip().upper() for n in allowed_names} | {"", "ANONYMIZED"}

    def walk(d: Dataset, prefix: str) -> None:
        for elem in d:
            where = f"{prefix}{elem.tag}"
            if elem.tag.is_private and not safe_private_allowed:
                problems.append(f"private attribute {where} remains")
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    walk(item, f"{where}[{i}]>")
            elif elem.VR == "PN":
                values = elem.value if isinstance(elem.value, (list, tuple)) or type(elem.value).__name__ == "MultiValue" else [elem.value]
                for v in values:
                    if str(v or "").strip().upper() not in allowed:
                        problems.append(f"person name {where} = {str(v)!r} is neither a pseudonym nor a dummy")

    walk(ds, "")
    for elem in ds.file_meta:
        if elem.tag in (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102):
            problems.append(f"file meta {elem.tag} {elem.keyword} remains")
    return problems
