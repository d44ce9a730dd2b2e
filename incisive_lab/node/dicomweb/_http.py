"""Plain request and response values of the DICOMweb layer, and content negotiation.

Nothing here knows a web framework: the ASGI layer hands in path parts, the query as
(name, value) pairs and the ``Accept`` header, and sends back a
:class:`DicomwebResponse` (status, headers, a body of bytes or an iterator of chunks).
Refusals are raised as :class:`DicomwebError` with the HTTP status and a message that
names the parameter at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = [
    "Accessed",
    "DicomwebError",
    "DicomwebResponse",
    "MediaRange",
    "QueryParams",
    "check_uid",
    "parse_accept",
    "query_pairs",
]

#: Query parameters as the ASGI layer may pass them: (name, value) pairs (repeated names
#: allowed, e.g. Starlette's ``request.query_params.multi_items()``) or a mapping of a
#: name to one value or a list of values.
QueryParams = Iterable[tuple[str, str]] | Mapping[str, str | Sequence[str]]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class DicomwebError(Exception):
    """A request the DICOMweb layer refuses: ``status`` (400, 404, 406, 413) and a message.

    The message names the parameter or path part at fault and is safe to show to the
    client (it quotes only what the client sent, never stored data).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"DicomwebError({self.status}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class Accessed:
    """The UIDs a response discloses, for the access ledger.

    Searches name the matched entities of the searched level (and their studies);
    retrievals name every instance served.
    """

    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DicomwebResponse:
    """What the ASGI layer sends: status, headers and the body.

    ``body`` is ``bytes`` for small answers and an iterator of byte chunks for streamed
    ones (WADO-RS retrieval, metadata); iterate it exactly once.
    """

    status: int
    media_type: str
    body: bytes | Iterator[bytes]
    headers: tuple[tuple[str, str], ...] = ()
    accessed: Accessed = field(default_factory=Accessed)

    def header_list(self) -> list[tuple[str, str]]:
        """Every header to send, ``Content-Type`` first (and ``Content-Length`` when known)."""
        out = [("Content-Type", self.media_type)]
        if isinstance(self.body, bytes):
            out.append(("Content-Length", str(len(self.body))))
        return out + list(self.headers)


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an ``Accept`` header: ``type/subtype``, its parameters and quality."""

    media_type: str
    params: Mapping[str, str]
    q: float

    def matches(self, media_type: str) -> bool:
        """Whether ``media_type`` (``type/subtype``) falls in this range."""
        if self.media_type == "*/*":
            return True
        if self.media_type.endswith("/*"):
            return media_type.split("/", 1)[0] == self.media_type[:-2]
        return self.media_type == media_type


_TOKEN_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


def _split_top(header: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts, cur, quoted, escaped = [], [], False, False
    for ch in header:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an ``Accept`` header into media ranges, best first (``*/*`` when absent).

    Parameters keep their case-folded names; ``type`` values are unquoted. Ranges with
    ``q=0`` are dropped.

    Raises
    ------
    DicomwebError
        400 when the header cannot be parsed.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges: list[tuple[float, int, MediaRange]] = []
    for pos, item in enumerate(_split_top(header, ",")):
        if not item.strip():
            continue
        pieces = _split_top(item, ";")
        media = pieces[0].strip().lower()
        if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+*-]+|\*/\*", media):
            raise DicomwebError(400, f"Accept: {item.strip()!r} is not a media range")
        params: dict[str, str] = {}
        q = 1.0
        for raw in pieces[1:]:
            if not raw.strip():
                continue
            m = _TOKEN_PARAM.fullmatch(raw)
            if not m:
                raise DicomwebError(400, f"Accept: parameter {raw.strip()!r} of {media} "
                                         "is malformed")
            name, value = m.group(1).lower(), m.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    raise DicomwebError(400, f"Accept: q={value!r} is not a number") from None
                if not 0.0 <= q <= 1.0:
                    raise DicomwebError(400, f"Accept: q={value!r} is outside 0..1")
            else:
                params[name] = value
        if q > 0:
            ranges.append((q, pos, MediaRange(media, params, q)))
    if not ranges:
        raise DicomwebError(406, "Accept: every media range has q=0")
    return [r for _, _, r in sorted(ranges, key=lambda t: (-t[0], t[1]))]


def query_pairs(query: QueryParams | None) -> list[tuple[str, str]]:
    """Normalise the query parameters to a list of (name, value) pairs."""
    if query is None:
        return []
    if isinstance(query, Mapping):
        out: list[tuple[str, str]] = []
        for name, value in query.items():
            if isinstance(value, str):
                out.append((name, value))
            else:
                out.extend((name, v) for v in value)
        return out
    return [(str(k), str(v)) for k, v in query]


def check_uid(value: str, what: str) -> str:
    """Return ``value`` when it is a DICOM UID (digits and dots, at most 64 characters).

    Raises
    ------
    DicomwebError
        400 naming ``what`` (e.g. ``"path: StudyInstanceUID"``).
    """
    if len(value) > 64:
        raise DicomwebError(400, f"{what}: UID {value[:70]!r}... is longer than 64 characters")
    if not _UID.fullmatch(value):
        raise DicomwebError(400, f"{what}: {value!r} is not a DICOM UID (digits and dots, "
                                 "no empty components)")
    return value


class QidoRoutes:
    """The three QIDO-RS routes of a back-end, over its one ``_search`` (same checks on
    every back-end: a series needs its study). ``scope`` limits the matches to a caller's
    :class:`~incisive_lab.governance.scope.ReadScope` before paging (``None``: no limit)."""

    def _search(self, level: str, query: QueryParams | None, accept: str | None, base_url: str,
                study_uid: str | None = None, series_uid: str | None = None,
                scope: ReadScope | None = None) -> DicomwebResponse:
        raise NotImplementedError  # each back-end searches its own way

    def search_studies(self, query: QueryParams | None = None, *, accept: str | None = None,
                       base_url: str = "", scope: ReadScope | None = None) -> DicomwebResponse:
        """``GET /studies`` — QIDO-RS study search (see :mod:`.qido` for the matching)."""
        return self._search("study", query, accept, base_url, scope=scope)

    def search_series(self, query: QueryParams | None = None, *, study_uid: str | None = None,
                      accept: str | None = None, base_url: str = "",
                      scope: ReadScope | None = None) -> DicomwebResponse:
        """``GET /series`` or ``GET /studies/{study_uid}/series``."""
        return self._search("series", query, accept, base_url, study_uid, scope=scope)

    def search_instances(self, query: QueryParams | None = None, *,
                         study_uid: str | None = None, series_uid: str | None = None,
                         accept: str | None = None, base_url: str = "",
                         scope: ReadScope | None = None) -> DicomwebResponse:
        """``GET /instances``, ``/studies/{s}/instances`` or ``/studies/{s}/series/{se}/instances``."""
        if series_uid is not None and study_uid is None:
            raise DicomwebError(400, "path: a series needs its study")
        return self._search("instance", query, accept, base_url, study_uid, series_uid, scope=scope)
