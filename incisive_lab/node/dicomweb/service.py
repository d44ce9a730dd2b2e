"""The DICOMweb service over one node store: one method per PS3.18 resource.

The ASGI layer calls these with plain values — path UIDs, the query as (name, value)
pairs, the ``Accept`` header and the service's base URL — and sends back the
:class:`~incisive_lab.node.dicomweb.DicomwebResponse`; it maps
:class:`~incisive_lab.node.dicomweb.DicomwebError` to an HTTP error with the message.
Authentication, authorisation and ledgering stay in the ASGI layer: every response names
the UIDs it discloses (``response.accessed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from incisive_lab.node.dicomweb._headers import HeaderCache
from incisive_lab.node.dicomweb._http import (
    Accessed,
    DicomwebError,
    DicomwebResponse,
    MediaRange,
    QidoRoutes,
    QueryParams,
    check_uid,
    parse_accept,
    query_pairs,
)
from incisive_lab.node.dicomweb.frames import (
    FrameSource,
    compressed_media_type,
    parse_frame_list,
)
from incisive_lab.node.dicomweb.qido import MAX_LIMIT, dumps, parse_query, search
from incisive_lab.node.dicomweb.render import (
    file_chunks,
    json_array,
    multipart,
    multipart_length,
    new_boundary,
)
from incisive_lab.node.dicomweb.rendered import parse_render_params, render_frame, rendered_media
from incisive_lab.node.index import InstanceRow
from incisive_lab.node.store import NodeStore

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = ["DicomwebService"]

DICOM_JSON = "application/dicom+json"
_JSON_TYPES = (DICOM_JSON, "application/json")
_WARNING_MORE = '299 incisive-node "There are additional results that can be requested"'
_WARNING_FUZZY = ('299 incisive-node "The fuzzymatching parameter is not supported. '
                  'Only literal matching has been performed."')


def _json_accept(accept: str | None, what: str) -> str:
    for r in parse_accept(accept):
        if r.media_type == "multipart/related":
            continue
        if any(r.matches(t) for t in _JSON_TYPES):
            return DICOM_JSON if r.media_type in ("*/*", "application/*") else r.media_type
    raise DicomwebError(406, f"Accept: {what} is served as {DICOM_JSON} only "
                             f"(got {accept!r})")


def _multipart_accept(accept: str | None, part_type: str, what: str) -> MediaRange:
    """The media range that selects ``multipart/related; type=part_type``."""
    for r in parse_accept(accept):
        if r.media_type in ("*/*", "multipart/*"):
            return MediaRange("multipart/related", {"type": part_type}, r.q)
        if (r.media_type == "multipart/related"
                and r.params.get("type", part_type).lower() == part_type):
            return r
    raise DicomwebError(406, f"Accept: {what} is served as multipart/related; "
                             f'type="{part_type}" (got {accept!r})')


class DicomwebService(QidoRoutes):
    """DICOMweb (QIDO-RS, WADO-RS) over a :class:`~incisive_lab.node.store.NodeStore`.

    Parameters
    ----------
    store
        The open node store (kept open by the caller for the service's lifetime).
    max_limit
        The largest QIDO-RS ``limit`` (and the default); a larger one is a 400.
    header_cache_size
        How many objects' headers to keep as DICOM JSON (objects never change, so cached
        headers never go stale); at most 128 MiB of them whatever the number.

    Examples
    --------
    >>> svc = DicomwebService(store)                                     # doctest: +SKIP
    >>> r = svc.search_studies([("PatientID", "PSN-*")], base_url="http://h/dicomweb")
    >>> r.status, r.media_type                                           # doctest: +SKIP
    (200, 'application/dicom+json')
    """

    def __init__(self, store: NodeStore, *, max_limit: int = MAX_LIMIT,
                 header_cache_size: int = 32768) -> None:
        self._store = store
        self._index = store.index
        self._max_limit = max_limit
        self._headers = HeaderCache(Path(store.object_path("0" * 64)).parent.parent,
                                    header_cache_size)

    def __repr__(self) -> str:
        return f"DicomwebService({self._store!r})"

    # ------------------------------------------------------------------ QIDO-RS

    def _search(self, level: str, query: QueryParams | None, accept: str | None, base_url: str,
                study_uid: str | None = None, series_uid: str | None = None,
                scope: ReadScope | None = None) -> DicomwebResponse:
        media = _json_accept(accept, "search results")
        if study_uid is not None:
            check_uid(study_uid, "path: StudyInstanceUID")
        if series_uid is not None:
            check_uid(series_uid, "path: SeriesInstanceUID")
        parsed = parse_query(query_pairs(query), level, max_limit=self._max_limit)
        result = search(self._index, self._headers, parsed, base_url=base_url,
                        study_uid=study_uid, series_uid=series_uid,
                        read_scope=scope)
        headers = []
        if result.more:
            headers.append(("Warning", _WARNING_MORE))
        if parsed.fuzzy_ignored:
            headers.append(("Warning", _WARNING_FUZZY))
        accessed = Accessed(tuple(result.uids.get("studies", ())),
                            tuple(result.uids.get("series", ())),
                            tuple(result.uids.get("instances", ())))
        return DicomwebResponse(200, media, dumps(result.items), tuple(headers), accessed)

    # ------------------------------------------------------------------ WADO-RS

    def _instances(self, study_uid: str, series_uid: str | None,
                   sop_uid: str | None) -> list[InstanceRow]:
        check_uid(study_uid, "path: StudyInstanceUID")
        if series_uid is not None:
            check_uid(series_uid, "path: SeriesInstanceUID")
        if sop_uid is not None:
            check_uid(sop_uid, "path: SOPInstanceUID")
        rows = self._index.instances(study_uid=study_uid, series_uid=series_uid,
                                     sop_uid=sop_uid)
        if not rows:
            what = (f"instance {sop_uid}" if sop_uid else f"series {series_uid}" if series_uid
                    else f"study {study_uid}")
            raise DicomwebError(404, f"{what} is not on this node")
        return rows

    @staticmethod
    def _accessed(rows: list[InstanceRow]) -> Accessed:
        return Accessed(tuple(dict.fromkeys(r.study_uid for r in rows)),
                        tuple(dict.fromkeys(r.series_uid for r in rows)),
                        tuple(r.sop_uid for r in rows))

    def retrieve(self, study_uid: str, series_uid: str | None = None,
                 sop_uid: str | None = None, *, accept: str | None = None) -> DicomwebResponse:
        """``GET /studies/{s}[/series/{se}[/instances/{i}]]`` — the stored DICOM objects.

        A ``multipart/related; type="application/dicom"`` stream, one part per instance,
        read from the object store in 1 MiB blocks. Objects are sent as stored:
        ``transfer-syntax`` may be absent, ``*``, or the stored syntax of every instance
        (no transcoding; another syntax is a 406).
        """
        rows = self._instances(study_uid, series_uid, sop_uid)
        wanted = _multipart_accept(accept, "application/dicom", "DICOM retrieval")
        ts = wanted.params.get("transfer-syntax")
        if ts not in (None, "*"):
            other = {r.transfer_syntax_uid for r in rows} - {ts}
            if other:
                raise DicomwebError(406, f"Accept: transfer-syntax={ts} is not available "
                                         f"without transcoding (stored as {', '.join(sorted(str(o) for o in other))}); "
                                         "ask for transfer-syntax=*")
        paths = [(r, self._store.object_path(r.sha256)) for r in rows]
        for r, p in paths:
            if not p.is_file():
                raise DicomwebError(404, f"instance {r.sop_uid}: its object is missing")
        boundary = new_boundary()
        parts: list[tuple[str, Callable[[], Iterable[bytes]]]] = []
        sizes = []
        for r, p in paths:
            ctype = f"application/dicom; transfer-syntax={r.transfer_syntax_uid}"
            parts.append((ctype, lambda p=p: file_chunks(p)))  # type: ignore[misc]
            sizes.append((ctype, r.size))
        media = f'multipart/related; type="application/dicom"; boundary={boundary}'
        length = multipart_length(boundary, sizes)
        return DicomwebResponse(200, media, multipart(boundary, parts),
                                (("Content-Length", str(length)),), self._accessed(rows))

    def retrieve_metadata(self, study_uid: str, series_uid: str | None = None,
                          sop_uid: str | None = None, *, accept: str | None = None,
                          base_url: str = "") -> DicomwebResponse:
        """``GET .../metadata`` — every instance's header as DICOM JSON, without bulk data.

        Pixel Data is replaced by a ``BulkDataURI`` naming the instance's ``frames``
        resource; headers come from a cache keyed by the object's hash.
        """
        rows = self._instances(study_uid, series_uid, sop_uid)
        _json_accept(accept, "metadata")
        base = base_url.rstrip("/")

        def items() -> Iterable[str]:
            for r in rows:
                header = self._headers.get(r.sha256)
                text = header.json_text
                if header.pixel_vr is not None:
                    frames = ",".join(str(i) for i in range(1, (r.number_of_frames or 1) + 1))
                    uri = (f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/"
                           f"{r.sop_uid}/frames/{frames}")
                    pixel = f'"7FE00010":{{"vr":"{header.pixel_vr}","BulkDataURI":"{uri}"}}'
                    text = text[:-1] + ("," if len(text) > 2 else "") + pixel + "}"
                yield text

        return DicomwebResponse(200, DICOM_JSON, json_array(items()), (),
                                self._accessed(rows))

    def retrieve_frames(self, study_uid: str, series_uid: str, sop_uid: str, frames: str, *,
                        accept: str | None = None) -> DicomwebResponse:
        """``GET .../instances/{i}/frames/{list}`` — pixel data of the listed frames.

        ``multipart/related; type="application/octet-stream"``: native frames as stored.
        For compressed instances, ``transfer-syntax=*`` (or the stored syntax, or the
        frame's media type such as ``image/jls``) returns the stored fragments; plain
        ``application/octet-stream`` returns the frames decoded to native bytes.
        """
        rows = self._instances(study_uid, series_uid, sop_uid)
        src = FrameSource.open(self._store.object_path(rows[0].sha256))
        numbers = parse_frame_list(frames, src.frames)
        stored_type = compressed_media_type(src.transfer_syntax)
        as_stored = not src.encapsulated
        chosen = None
        for r in parse_accept(accept):
            if r.media_type in ("*/*", "multipart/*"):
                chosen = "application/octet-stream"
                as_stored = True
                break
            if r.media_type != "multipart/related":
                continue
            part = r.params.get("type", "application/octet-stream").lower()
            ts = r.params.get("transfer-syntax")
            if part in ("*/*", "*"):  # any part type (dicomweb-client's default): as stored
                chosen = stored_type if src.encapsulated else "application/octet-stream"
                as_stored = True
                break
            if part == "application/octet-stream":
                chosen = part
                if src.encapsulated:
                    as_stored = ts in ("*", src.transfer_syntax)
                break
            if src.encapsulated and part == stored_type and ts in (None, "*",
                                                                   src.transfer_syntax):
                chosen, as_stored = part, True
                break
        if chosen is None:
            raise DicomwebError(406, "Accept: frames are served as multipart/related; "
                                     'type="application/octet-stream" (or, for compressed '
                                     f"instances, {stored_type}) — got {accept!r}")
        if src.encapsulated and as_stored:
            ctype = f"{chosen if chosen != 'application/octet-stream' else stored_type}; " \
                    f"transfer-syntax={src.transfer_syntax}"

            def get(n: int) -> bytes:
                return src.stored_frame(n)
        else:
            ctype = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"

            def get(n: int) -> bytes:
                return src.native_frame(n) if not src.encapsulated else src.decoded_frame(n)
        bodies = [get(n) for n in numbers]
        boundary = new_boundary()
        parts: list[tuple[str, Callable[[], Iterable[bytes]]]] = [
            (ctype, lambda b=b: [b]) for b in bodies]  # type: ignore[misc]
        body = b"".join(multipart(boundary, parts))
        media = f'multipart/related; type="{ctype.split(";")[0]}"; boundary={boundary}'
        return DicomwebResponse(200, media, body, (), self._accessed(rows))

    def retrieve_rendered(self, study_uid: str, series_uid: str, sop_uid: str,
                          frame: int | str | None = None, query: QueryParams | None = None,
                          *, accept: str | None = None) -> DicomwebResponse:
        """``GET .../instances/{i}/rendered`` or ``.../frames/{n}/rendered`` — PNG or JPEG.

        PNG unless the client prefers ``image/jpeg``; ``window``, ``viewport`` and
        ``quality`` as in :func:`.rendered.parse_render_params`. Without a frame, the
        first frame is rendered.
        """
        rows = self._instances(study_uid, series_uid, sop_uid)
        options = parse_render_params(query_pairs(query))
        media = rendered_media(accept)
        number = 1
        if frame is not None:
            text = str(frame)
            if not text.isdigit() or len(text) > 9:
                raise DicomwebError(400, f"frames: {text[:20]!r} is not one frame number")
            number = int(text)
        body = render_frame(self._store.object_path(rows[0].sha256), number, options, media)
        return DicomwebResponse(200, media, body, (), self._accessed(rows))

