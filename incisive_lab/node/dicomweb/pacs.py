"""A PACS reached over DICOMweb as the node's image back-end (tested against Orthanc).

:class:`PacsBackend` implements :class:`~incisive_lab.node.dicomweb.backend.DicomwebBackend`
by calling the PACS's own QIDO-RS and WADO-RS with httpx, so a hospital can put its node
on the PACS it already runs. What the node adds on top of the PACS:

* **The node's validation.** Every query goes through :func:`~.qido.parse_query` (and the
  frame list, rendering parameters, path UIDs and ``Accept`` through the same checks as the
  file store) before anything is sent, so malformed requests get the node's 400s and
  never reach the PACS.
* **A portable query string.** Values are percent-encoded except ``*`` and ``?``, which are
  sent literally (Orthanc 1.10 matches nothing for ``%2A``/``%3F``), and backslash-separated
  UID and code lists are sent comma-separated (Orthanc matches nothing for ``\\``).
* **Paging the node's way.** ``limit`` (default and maximum ``max_limit``) is forwarded as
  ``limit + 1`` so the back-end can tell whether more matches exist and add the standard
  ``Warning``; ``fuzzymatching`` is not forwarded (matching is literal, with the Warning).
* **The node's URLs.** ``RetrieveURL`` and ``BulkDataURI`` values that point into the PACS
  are rewritten to the node's ``base_url``; Pixel Data's ``BulkDataURI`` names the
  instance's ``frames`` resource, as on the file store.
* **Ledger facts.** ``accessed`` is read from the QIDO JSON of a search; before every
  retrieval one instance-level QIDO request scoped to the path lists the instances served
  (and answers 404 for unknown or inconsistent paths), so PACS accesses are ledgered
  exactly like file-store ones.
* **The caller's read scope.** A search with a
  :class:`~incisive_lab.governance.scope.ReadScope` is limited to the studies the node's
  index puts in scope (``scope_studies``): up to ``max_scope_list`` of them are sent as a
  ``StudyInstanceUID`` list (intersected with the caller's own), so the PACS pages; a
  larger scope is filtered here, reading the PACS's pages until the caller's page is full.
* **Errors in the node's terms.** PACS 404 → 404, 400/406 → the same status with the
  PACS's explanation, any other failure → 502, unreachable or timed out → 502 naming the
  PACS's URL.

WADO-RS instances are streamed through unchanged (the PACS's multipart and its
``Content-Type``); iterate the body to the end (or close it) to release the connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from incisive_lab.node.dicomweb._http import (
    Accessed,
    DicomwebError,
    DicomwebResponse,
    QidoRoutes,
    QueryParams,
    check_uid,
    parse_accept,
    query_pairs,
)
from incisive_lab.node.dicomweb.attributes import ATTRIBUTES, resolve, tag_hex
from incisive_lab.node.dicomweb.frames import parse_frame_list
from incisive_lab.node.dicomweb.qido import MAX_LIMIT, parse_query
from incisive_lab.node.dicomweb.rendered import parse_render_params, rendered_media
from incisive_lab.node.dicomweb.service import (
    _WARNING_FUZZY,
    _WARNING_MORE,
    DICOM_JSON,
    _json_accept,
    _multipart_accept,
)

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = ["PacsBackend"]

_STUDY, _SERIES, _SOP, _FRAMES = "0020000D", "0020000E", "00080018", "00280008"
_PIXEL_DATA, _SYNTAX = "7FE00010", "00083002"
_IMAGE_TAGS = ("00280010", "00280011", "00280100")   # Rows, Columns, BitsAllocated
_NATIVE = ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
           "1.2.840.10008.1.2.1.99")
_LIST_KINDS = ("uid", "list", "modalities")
_RESERVED = ("limit", "offset", "fuzzymatching")
_MAX_ERROR_TEXT = 300


def _encode_value(value: str) -> str:
    """Percent-encode a query value, leaving ``*``, ``?`` and ``,`` literal (Orthanc)."""
    return quote(value, safe="*?,")


def _pattern(value: str) -> re.Pattern[str]:
    """A DICOM matching value (``*``, ``?`` wildcards, case-sensitive) as a regex."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in value), re.DOTALL)


def _first(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") if isinstance(item.get(tag), dict) else None
    return values[0] if values else None


class PacsBackend(QidoRoutes):
    """The node's DICOMweb over an existing PACS's DICOMweb.

    Parameters
    ----------
    base_url
        The PACS's DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web`` (Orthanc).
    http
        An httpx client to use (its ``base_url`` is ignored; the caller keeps it open and
        closes it). When absent the back-end makes its own, closed by :meth:`close`.
    transport
        An httpx transport for the back-end's own client (a Unix-socket transport, or
        ``MockTransport`` in unit tests).
    headers
        Extra headers sent with every request — typically ``Authorization`` for a PACS
        that requires it.
    auth
        httpx authentication (e.g. ``("user", "password")`` for HTTP basic).
    timeout
        Seconds for connecting to and each read from the PACS.
    max_limit
        The largest QIDO-RS ``limit`` (and the default), as on the file store.
    scope_studies
        Maps a read scope to the study UIDs in it (the node service passes one over its
        index); without it a scoped search is refused.
    max_scope_list
        The most study UIDs sent to the PACS as a list; larger scopes are filtered here.

    Examples
    --------
    >>> pacs = PacsBackend("http://127.0.0.1:8042/dicom-web")            # doctest: +SKIP
    >>> r = pacs.search_studies([("PatientID", "PSN-*")], base_url="http://h/dicomweb")
    >>> r.status, r.accessed.studies                                     # doctest: +SKIP
    (200, ('2.25.1...', ...))
    """

    def __init__(self, base_url: str, *, http: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 auth: httpx.Auth | tuple[str, str] | None = None, timeout: float = 30.0,
                 max_limit: int = MAX_LIMIT,
                 scope_studies: Callable[[ReadScope], frozenset[str]] | None = None,
                 max_scope_list: int = 100) -> None:
        if http is not None and transport is not None:
            raise ValueError("PacsBackend: give either http= or transport=, not both")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"PacsBackend: base_url {base_url!r} is not an http(s) URL")
        self._base = base_url.rstrip("/")
        self._root_path = parts.path.rstrip("/")
        self._own = http is None
        self._http = http if http is not None else httpx.Client(transport=transport,
                                                                 timeout=timeout)
        self._headers = dict(headers or {})
        self._auth = auth
        self._max_limit = max_limit
        self._scope_studies = scope_studies
        self._max_scope_list = max_scope_list
        self._url_prefix = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]+"
                                      + re.escape(self._root_path) + r"(?=/|$)")

    def __repr__(self) -> str:
        return f"PacsBackend({self._base!r})"

    def close(self) -> None:
        """Close the back-end's own httpx client (not one passed as ``http=``)."""
        if self._own:
            self._http.close()

    def __enter__(self) -> PacsBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _send(self, path: str, query: str = "", *, accept: str,
              stream: bool = False) -> httpx.Response:
        """One GET to the PACS; PACS errors and transport failures become DicomwebError."""
        url = self._base + path + (f"?{query}" if query else "")
        headers = {**self._headers, "Accept": accept, "Accept-Encoding": "identity"}
        request = self._http.build_request("GET", url, headers=headers)
        try:
            try:
                response = self._http.send(request, stream=stream, auth=self._auth)
            except httpx.RemoteProtocolError:
                # a kept-alive connection the PACS closed as we reused it (seen with Orthanc
                # under load): the GET is idempotent, so it is sent once more on a new one
                response = self._http.send(self._http.build_request("GET", url, headers=headers),
                                           stream=stream, auth=self._auth)
        except httpx.TimeoutException:
            raise DicomwebError(502, f"the PACS at {self._base} did not answer in time") from None
        except httpx.TransportError as exc:
            raise DicomwebError(502, f"the PACS at {self._base} cannot be reached "
                                     f"({type(exc).__name__})") from None
        if response.status_code == 200:
            return response
        if stream:
            response.read()
            response.close()
        raise self._error(response, path)

    def _error(self, response: httpx.Response, path: str) -> DicomwebError:
        status = response.status_code
        detail = ""
        try:
            doc = response.json()
            if isinstance(doc, dict):
                detail = str(doc.get("Details") or doc.get("Message") or "")
        except ValueError:
            detail = response.text
        detail = " ".join(detail.split())[:_MAX_ERROR_TEXT]
        if status == 404:
            return DicomwebError(404, f"{path.lstrip('/')} is not on the PACS"
                                      + (f" ({detail})" if detail else ""))
        if status in (400, 406):
            return DicomwebError(status, "the PACS refused the request"
                                         + (f": {detail}" if detail else ""))
        return DicomwebError(502, f"the PACS at {self._base} failed with HTTP {status}"
                                  + (f": {detail}" if detail else ""))

    def _json(self, path: str, query: str = "") -> list[dict[str, Any]]:
        response = self._send(path, query, accept=DICOM_JSON)
        try:
            doc = response.json() if response.content.strip() else []
        except ValueError:
            raise DicomwebError(502, f"the PACS at {self._base} sent a body that is not "
                                     "JSON") from None
        if not isinstance(doc, list) or not all(isinstance(i, dict) for i in doc):
            raise DicomwebError(502, f"the PACS at {self._base} sent JSON that is not a "
                                     "list of DICOM objects")
        return doc

    def _rewrite_url(self, value: Any, base_url: str) -> Any:
        if isinstance(value, str):
            return self._url_prefix.sub(lambda _m: base_url.rstrip("/"), value, count=1)
        return value

    def _rewrite(self, item: dict[str, Any], base_url: str) -> None:
        """Point URLs into the PACS at the node's ``base_url`` (in place, recursively)."""
        for element in item.values():
            if not isinstance(element, dict):
                continue
            if "BulkDataURI" in element:
                element["BulkDataURI"] = self._rewrite_url(element["BulkDataURI"], base_url)
            values = element.get("Value")
            if isinstance(values, list):
                if element.get("vr") == "UR":
                    element["Value"] = [self._rewrite_url(v, base_url) for v in values]
                elif element.get("vr") == "SQ":
                    for nested in values:
                        if isinstance(nested, dict):
                            self._rewrite(nested, base_url)

    # ------------------------------------------------------------------ QIDO-RS

    def _forward_query(self, pairs: list[tuple[str, str]], limit: int, offset: int,
                       refine: list[tuple[str, re.Pattern[str]]]) -> str:
        """The query string for the PACS; values with spaces are added to ``refine``."""
        out: list[str] = []
        for name, value in pairs:
            key = name.lower()
            if key in _RESERVED:
                continue
            if key != "includefield":
                keyword = resolve(name, f"query parameter {name!r}")[1]
                attr = ATTRIBUTES.get(keyword)
                if attr is not None and attr.match in _LIST_KINDS:
                    value = value.replace("\\", ",")
                if " " in value:
                    # Orthanc 1.10 matches nothing for a value with a space (encoded or
                    # not): send "?" in its place and keep only exact matches below.
                    refine.append((tag_hex(resolve(name, name)[0]), _pattern(value)))
                    value = value.replace(" ", "?")
            out.append(f"{quote(name, safe='')}={_encode_value(value)}")
        out.append(f"limit={limit + 1}")
        if offset:
            out.append(f"offset={offset}")
        return "&".join(out)

    def _search(self, level: str, query: QueryParams | None, accept: str | None,
                base_url: str, study_uid: str | None = None,
                series_uid: str | None = None, scope: ReadScope | None = None) -> DicomwebResponse:
        media = _json_accept(accept, "search results")
        if study_uid is not None:
            check_uid(study_uid, "path: StudyInstanceUID")
        if series_uid is not None:
            check_uid(series_uid, "path: SeriesInstanceUID")
        pairs = query_pairs(query)
        parsed = parse_query(pairs, level, max_limit=self._max_limit)
        path = "".join((f"/studies/{study_uid}" if study_uid else "",
                        f"/series/{series_uid}" if series_uid else "",
                        {"study": "/studies", "series": "/series",
                         "instance": "/instances"}[level]))
        refine: list[tuple[str, re.Pattern[str]]] = []
        if scope is None:
            found = self._json(path, self._forward_query(pairs, parsed.limit, parsed.offset, refine))
            for tag, pattern in refine:
                found = [i for i in found if pattern.fullmatch(str(_first(i, tag) or ""))]
        else:
            found = self._scoped(path, pairs, parsed.limit, parsed.offset, scope, study_uid, refine)
        more = len(found) > parsed.limit
        found = found[:parsed.limit]
        for item in found:
            self._rewrite(item, base_url)
        headers = []
        if more:
            headers.append(("Warning", _WARNING_MORE))
        if parsed.fuzzy_ignored:
            headers.append(("Warning", _WARNING_FUZZY))
        studies = [_first(i, _STUDY) or study_uid for i in found]
        series = [_first(i, _SERIES) or series_uid for i in found]
        accessed = Accessed(
            tuple(dict.fromkeys(s for s in studies if s)),
            tuple(dict.fromkeys(s for s in series if s)) if level != "study" else (),
            tuple(s for s in (_first(i, _SOP) for i in found) if s)
            if level == "instance" else ())
        body = json.dumps(found, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return DicomwebResponse(200, media, body, tuple(headers), accessed)

    def _scoped(self, path: str, pairs: list[tuple[str, str]], limit: int, offset: int,
                scope: ReadScope, study_uid: str | None,
                refine: list[tuple[str, re.Pattern[str]]]) -> list[dict[str, Any]]:
        """One page (``limit + 1`` items from ``offset``) of matches within ``scope``."""
        if self._scope_studies is None:
            raise DicomwebError(500, "this PACS back-end was configured without the node index, "
                                     "so it cannot limit a search to the caller's grants")
        allowed = set(self._scope_studies(scope))
        if study_uid is not None:
            allowed &= {study_uid}
        mine = [v for k, v in pairs if k.lower() in ("studyinstanceuid", "0020000d")]
        if mine:
            asked = {u for v in mine for u in v.replace("\\", ",").split(",") if u}
            allowed &= asked
        if not allowed:
            return []
        rest = [(k, v) for k, v in pairs if k.lower() not in ("studyinstanceuid", "0020000d")]
        if study_uid is not None or len(allowed) <= self._max_scope_list:
            # the path's study is in scope, or the scope is small enough to send as a list
            forward = pairs if study_uid is not None else [
                *rest, ("StudyInstanceUID", ",".join(sorted(allowed)))]
            found = self._json(path, self._forward_query(forward, limit, offset, refine))
            for tag, pattern in refine:
                found = [i for i in found if pattern.fullmatch(str(_first(i, tag) or ""))]
            return found
        # a large scope: read the PACS's pages and keep the caller's studies
        kept: list[dict[str, Any]] = []
        page, start = self._max_limit, 0
        while len(kept) < offset + limit + 1:
            refine.clear()
            batch = self._json(path, self._forward_query(rest, page - 1, start, refine))
            got = len(batch)
            for tag, pattern in refine:
                batch = [i for i in batch if pattern.fullmatch(str(_first(i, tag) or ""))]
            kept.extend(i for i in batch if _first(i, _STUDY) in allowed)
            if got < page:
                break
            start += page
        return kept[offset:offset + limit + 1]

    # ------------------------------------------------------------------ WADO-RS

    @staticmethod
    def _path(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
        return "".join((f"/studies/{study_uid}", f"/series/{series_uid}" if series_uid else "",
                        f"/instances/{sop_uid}" if sop_uid else ""))

    def _locate(self, study_uid: str, series_uid: str | None,
                sop_uid: str | None) -> tuple[Accessed, list[dict[str, Any]]]:
        """The instances a retrieval at this path serves (one scoped QIDO request).

        Raises
        ------
        DicomwebError
            400 for a malformed path UID, 404 when the PACS has no such instance (or the
            path's levels do not belong together).
        """
        check_uid(study_uid, "path: StudyInstanceUID")
        if series_uid is not None:
            check_uid(series_uid, "path: SeriesInstanceUID")
        if sop_uid is not None:
            check_uid(sop_uid, "path: SOPInstanceUID")
        path = f"/studies/{study_uid}" + (f"/series/{series_uid}" if series_uid else "")
        query = f"includefield={_FRAMES},{_SYNTAX}"
        if sop_uid is not None:
            query += f"&SOPInstanceUID={sop_uid}"
        try:
            found = self._json(path + "/instances", query)
        except DicomwebError as exc:
            if exc.status != 404:
                raise
            found = []
        found = [i for i in found if _first(i, _SOP)
                 and (sop_uid is None or _first(i, _SOP) == sop_uid)]
        if not found:
            what = (f"instance {sop_uid}" if sop_uid else f"series {series_uid}" if series_uid
                    else f"study {study_uid}")
            raise DicomwebError(404, f"{what} is not on the PACS")
        accessed = Accessed(
            tuple(dict.fromkeys(_first(i, _STUDY) or study_uid for i in found)),
            tuple(dict.fromkeys(str(_first(i, _SERIES) or series_uid) for i in found)),
            tuple(str(_first(i, _SOP)) for i in found))
        return accessed, found

    def _stream(self, path: str, accept: str, accessed: Accessed) -> DicomwebResponse:
        """Stream the PACS's answer through unchanged (body, Content-Type, Content-Length)."""
        response = self._send(path, accept=accept, stream=True)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.iter_raw()
            except httpx.HTTPError as exc:
                raise DicomwebError(502, f"the PACS at {self._base} broke off the transfer "
                                         f"({type(exc).__name__})") from None
            finally:
                response.close()

        media = response.headers.get("Content-Type", "application/octet-stream")
        headers: tuple[tuple[str, str], ...] = ()
        length = response.headers.get("Content-Length")
        if length is not None and "chunked" not in response.headers.get("Transfer-Encoding",
                                                                         ""):
            headers = (("Content-Length", length),)
        return DicomwebResponse(200, media, chunks(), headers, accessed)

    def retrieve(self, study_uid: str, series_uid: str | None = None,
                 sop_uid: str | None = None, *, accept: str | None = None) -> DicomwebResponse:
        """``GET /studies/{s}[/series/{se}[/instances/{i}]]`` — the PACS's multipart, streamed.

        ``transfer-syntax`` is forwarded when the client names one (whether the PACS
        transcodes is up to the PACS; Orthanc 1.10 does, for the codecs it has). Without
        one, the instances are asked for as stored (``transfer-syntax=*``), as the node's
        file store serves them: PS3.18's default (Explicit VR Little Endian) would make the
        PACS transcode, and Orthanc 1.10 fails with HTTP 500 on JPEG-LS it cannot decode.
        """
        accessed, _ = self._locate(study_uid, series_uid, sop_uid)
        wanted = _multipart_accept(accept, "application/dicom", "DICOM retrieval")
        forward = 'multipart/related; type="application/dicom"'
        ts = wanted.params.get("transfer-syntax") or "*"
        if ts != "*":
            check_uid(ts, "Accept: transfer-syntax")
        forward += f"; transfer-syntax={ts}"
        return self._stream(self._path(study_uid, series_uid, sop_uid), forward, accessed)

    def retrieve_metadata(self, study_uid: str, series_uid: str | None = None,
                          sop_uid: str | None = None, *, accept: str | None = None,
                          base_url: str = "") -> DicomwebResponse:
        """``GET .../metadata`` — the PACS's DICOM JSON with the node's URLs.

        Pixel Data's ``BulkDataURI`` names the instance's ``frames`` resource under
        ``base_url`` (as on the file store); other bulk data URIs are rewritten from the
        PACS's root to ``base_url``.
        """
        media = _json_accept(accept, "metadata")
        accessed, located = self._locate(study_uid, series_uid, sop_uid)
        frames = {str(_first(i, _SOP)): int(_first(i, _FRAMES) or 1) for i in located}
        syntaxes = {str(_first(i, _SOP)): str(_first(i, _SYNTAX) or "") for i in located}
        items = self._json(self._path(study_uid, series_uid, sop_uid) + "/metadata")
        base = base_url.rstrip("/")
        for item in items:
            self._rewrite(item, base_url)
            pixel = item.get(_PIXEL_DATA)
            if pixel is None and all(_first(item, t) for t in _IMAGE_TAGS):
                # Orthanc leaves Pixel Data out of metadata; the file store names it.
                bits = int(_first(item, _IMAGE_TAGS[2]) or 0)
                native = syntaxes.get(str(_first(item, _SOP)), "") in _NATIVE
                pixel = {"vr": "OW" if native and bits > 8 else "OB", "BulkDataURI": ""}
                item[_PIXEL_DATA] = pixel
            if isinstance(pixel, dict) and "BulkDataURI" in pixel:
                st, se, it = (_first(item, t) for t in (_STUDY, _SERIES, _SOP))
                n = frames.get(str(it), int(_first(item, _FRAMES) or 1))
                pixel["BulkDataURI"] = (f"{base}/studies/{st}/series/{se}/instances/{it}/"
                                        f"frames/{','.join(str(k) for k in range(1, n + 1))}")
        body = json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return DicomwebResponse(200, media, body, (), accessed)

    def retrieve_frames(self, study_uid: str, series_uid: str, sop_uid: str, frames: str, *,
                        accept: str | None = None) -> DicomwebResponse:
        """``GET .../instances/{i}/frames/{list}`` — the PACS's frames, streamed.

        The frame list is checked against the instance's NumberOfFrames first (same 400,
        404 and 413 as the file store). The client's ``Accept`` is forwarded (default
        ``multipart/related; type="application/octet-stream"``).
        """
        accessed, located = self._locate(study_uid, series_uid, sop_uid)
        parse_frame_list(frames, int(_first(located[0], _FRAMES) or 1))
        if accept is None or not accept.strip():
            forward = 'multipart/related; type="application/octet-stream"'
        else:
            ranges = parse_accept(accept)
            if not any(r.media_type in ("*/*", "multipart/*", "multipart/related") for r in ranges):
                raise DicomwebError(406, "Accept: frames are served as multipart/related "
                                         f"(got {accept!r})")
            forward = accept
            if any(r.media_type in ("*/*", "multipart/*") or r.params.get("type", "") in ("*/*", "*")
                   for r in ranges):  # any part type (dicomweb-client's default): as stored
                forward = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

        path = self._path(study_uid, series_uid, sop_uid) + f"/frames/{frames}"
        return self._stream(path, forward, accessed)

    def retrieve_rendered(self, study_uid: str, series_uid: str, sop_uid: str,
                          frame: int | str | None = None, query: QueryParams | None = None,
                          *, accept: str | None = None) -> DicomwebResponse:
        """``GET .../rendered`` — the PACS's PNG or JPEG (parameters checked as on the file store)."""
        accessed, located = self._locate(study_uid, series_uid, sop_uid)
        pairs = query_pairs(query)
        parse_render_params(pairs)
        media = rendered_media(accept)
        path = self._path(study_uid, series_uid, sop_uid)
        if frame is not None:
            text = str(frame)
            if not text.isdigit() or len(text) > 9:
                raise DicomwebError(400, f"frames: {text[:20]!r} is not one frame number")
            parse_frame_list(text, int(_first(located[0], _FRAMES) or 1))
            path += f"/frames/{text}"
        path += "/rendered"
        forwarded = []
        for k, v in pairs:
            if k == "window" and v.count(",") == 1:
                v += ",linear"   # Orthanc 1.10 wants the function named
            forwarded.append(f"{quote(k, safe='')}={quote(v, safe=',')}")
        query_text = "&".join(forwarded)
        try:
            response = self._send(path, query_text, accept=media)
        except DicomwebError as exc:
            if exc.status != 400:
                raise
            # the PACS cannot render this one (Orthanc 1.10: JPEG 2000 without a codec):
            # fetch the instance as stored and render it here, as the file store would
            body = self._render_here(study_uid, series_uid, sop_uid, int(frame or 1), pairs, media)
            return DicomwebResponse(200, media, body, (), accessed)
        got = response.headers.get("Content-Type", media).split(";")[0].strip()
        return DicomwebResponse(200, got, response.content, (), accessed)

    def _render_here(self, study_uid: str, series_uid: str, sop_uid: str, frame: int,
                     pairs: Sequence[tuple[str, str]], media: str) -> bytes:
        import tempfile
        from email.parser import BytesParser
        from email.policy import HTTP

        from incisive_lab.node.dicomweb.rendered import render_frame

        response = self._send(self._path(study_uid, series_uid, sop_uid),
                              accept='multipart/related; type="application/dicom"; transfer-syntax=*')
        ctype = response.headers.get("Content-Type", "")
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + response.content)
        parts = [p.get_payload(decode=True) for p in message.iter_parts()] if message.is_multipart() else []
        if not parts or not isinstance(parts[0], bytes):
            raise DicomwebError(502, f"the PACS at {self._base} sent no instance to render")
        with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
            tmp.write(parts[0])
            tmp.flush()
            return render_frame(Path(tmp.name), frame, parse_render_params(pairs), media)

    # ------------------------------------------------------------------ STOW-RS target

    def study_context(self, study_uid: str) -> Any:
        """The study as the PACS holds it (a :class:`~.stow.StudyContext`), or ``None``."""
        from pydicom.dataset import Dataset

        from incisive_lab.node.dicomweb.stow import _MODALITIES, COERCED, StudyContext, node_values

        check_uid(study_uid, "StudyInstanceUID")
        rows = self._json(f"/studies/{study_uid}/instances",
                          "includefield=0020000E&includefield=00080060&includefield=00100020")
        if not rows:
            return None
        instances: dict[str, str] = {}
        annotation_series: set[str] = set()
        source: tuple[str, str] | None = None
        patient_id = ""
        for row in rows:
            sop, series = _first(row, _SOP), _first(row, _SERIES)
            if not sop or not series:
                continue
            instances[str(sop)] = str(series)
            if (_first(row, "00080060") or "") in _MODALITIES:
                annotation_series.add(str(series))
            patient_id = patient_id or str(_first(row, "00100020") or "")
        for sop, series in instances.items():
            if series not in annotation_series:
                source = (series, sop)
                break
        if source is None:
            return None
        meta = self._json(f"/studies/{study_uid}/series/{source[0]}/instances/{source[1]}/metadata")
        if not meta:
            return None
        from pydicom.datadict import tag_for_keyword

        wanted = {tag_hex(int(tag_for_keyword(k) or 0)) for k in COERCED} | {"00100020", "00080050"}
        header = Dataset.from_json({k: v for k, v in meta[0].items() if k in wanted})
        return StudyContext(study_uid=study_uid, patient_id=str(header.get("PatientID", "") or patient_id),
                            source=node_values(header), instances=instances,
                            annotation_series=frozenset(annotation_series),
                            accession=str(header.get("AccessionNumber", "") or "") or None)

    def stored(self, sop_uid: str) -> tuple[str, str | None] | None:
        """``(study_uid, sha256)`` of an instance the PACS holds under ``sop_uid``, or ``None``."""
        import hashlib

        rows = self._json("/instances", f"SOPInstanceUID={sop_uid}&includefield=0020000D&includefield=0020000E")
        if not rows:
            return None
        study, series = str(_first(rows[0], _STUDY) or ""), str(_first(rows[0], _SERIES) or "")
        response = self._send(f"/studies/{study}/series/{series}/instances/{sop_uid}",
                              accept='multipart/related; type="application/dicom"; transfer-syntax=*')
        parts = _multipart_parts(response)
        return study, hashlib.sha256(parts[0]).hexdigest() if len(parts) == 1 else None

    def store(self, items: Sequence[Any]) -> None:
        """Send accepted objects to the PACS's STOW-RS in one request (502 when it refuses any)."""
        from incisive_lab.node.dicomweb.render import new_boundary

        boundary = new_boundary()
        body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                        + item.data + b"\r\n" for item in items) + b"--" + boundary.encode() + b"--\r\n"
        headers = {**self._headers, "Accept": DICOM_JSON,
                   "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
        try:
            request = self._http.build_request("POST", self._base + "/studies", content=body, headers=headers)
            response = self._http.send(request, auth=self._auth)
        except httpx.TransportError as exc:
            raise DicomwebError(502, f"the PACS at {self._base} cannot be reached "
                                     f"({type(exc).__name__})") from None
        if response.status_code != 200:
            raise self._error(response, "/studies")
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if isinstance(doc, dict) and doc.get("00081198", {}).get("Value"):
            raise DicomwebError(502, f"the PACS at {self._base} refused {len(doc['00081198']['Value'])} of "
                                     f"{len(items)} instance(s) the node accepted")


def _multipart_parts(response: httpx.Response) -> list[bytes]:
    """The parts of a multipart/related WADO-RS answer."""
    from incisive_lab.node.dicomweb.stow import parse_multipart

    try:
        return [data for _ctype, data in parse_multipart(response.headers.get("content-type"), response.content)]
    except DicomwebError:
        raise DicomwebError(502, "the PACS sent a retrieval answer that is not multipart/related") from None
