"""Cleaning of free text (the "C" action on descriptors and structured content).

A cleaned text keeps only words that are known not to identify anyone: words of the
imaging vocabulary (``standard/descriptor_vocabulary.txt``) and short technical tokens
(``5mm``, ``T2``, ``B800``, ``1.25``). A word that also occurs in the instance's own
identifying attributes (names, IDs, places) is never kept, even if it is in the
vocabulary. Everything else — names, places, long numbers, dates, phone numbers (runs of bare
numbers) and years — goes.
This is an allow-list, so a name that appears nowhere else in the instance is removed
too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from incisive_lab.deid._standard import descriptor_vocabulary

__all__ = ["clean_text", "identifier_words"]

_SPLIT = re.compile(r"[\s_,;:\\|()\[\]{}<>\"'`^=*#!?]+")
# short numbers with an optional unit: 5, 1.25, 5mm, 120kv, 3d
_NUMBER = re.compile(r"^\d{1,4}(?:\.\d{1,3})?(?:mm|cm|ml|kv|kvp|mas|ms|s|t|d|hz|%|x)?$")
# short sequence-like labels: t2, t1w, b800, dwi1000 (at most 4 digits, at most 4 letters)
_LABEL = re.compile(r"^[a-z]{1,4}\d{1,4}[a-z]{0,2}$|^\d{1,2}[a-z]{1,3}$")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def identifier_words(values: Iterable[str]) -> set[str]:
    """Lower-case words (2 characters or more) of identifying values, for :func:`clean_text`."""
    words: set[str] = set()
    for value in values:
        for w in _WORD.findall(value.replace("^", " ")):
            if len(w) >= 2:
                words.add(w.lower())
    return words


def _keep(token: str, forbidden: set[str], vocabulary: frozenset[str]) -> bool:
    t = token.lower().strip(".-")
    if not t or t in forbidden:
        return False
    if any(part in forbidden for part in _WORD.findall(t)):
        return False
    if t in vocabulary:
        return True
    if _NUMBER.match(t) or _LABEL.match(t):
        return True
    # hyphenated technical compounds: every part must be kept on its own
    if "-" in t:
        parts = [p for p in t.split("-") if p]
        return bool(parts) and all(p in vocabulary or _NUMBER.match(p) or _LABEL.match(p) for p in parts)
    return False


def clean_text(text: str, forbidden: set[str] | None = None) -> str:
    """Keep only vocabulary words and technical tokens of ``text``.

    Parameters
    ----------
    text : str
        The original value (may contain several lines).
    forbidden : set of str, optional
        Lower-case words that must never be kept (see :func:`identifier_words`).

    Returns
    -------
    str
        The kept tokens joined by single spaces (possibly empty).

    Examples
    --------
    >>> clean_text("CT CHEST W/O CONTRAST for Novak Petra 1.25mm", {"novak", "petra"})
    'CT CHEST W/O CONTRAST for 1.25mm'
    """
    vocabulary = descriptor_vocabulary()
    bad = forbidden or set()
    tokens = [tok for tok in _SPLIT.split(text) if tok]
    digits = [tok.strip(".-").isdigit() for tok in tokens]
    kept = []
    for i, tok in enumerate(tokens):
        if digits[i]:
            # runs of bare numbers are phone numbers, IDs or dates split up; 4-digit years go too
            if (i > 0 and digits[i - 1]) or (i + 1 < len(tokens) and digits[i + 1]):
                continue
            if len(tok) == 4 and 1900 <= int(tok) <= 2099:
                continue
        if _keep(tok, bad, vocabulary):
            kept.append(tok)
    return " ".join(kept)
