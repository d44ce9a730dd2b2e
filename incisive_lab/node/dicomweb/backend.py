"""The storage back-end contract of the node's DICOMweb: seven operations, one per resource.

The ASGI layer (:mod:`incisive_lab.node.service`) talks to whatever sits behind the node's
images through this interface only, so the node's own file store and index
(:class:`~incisive_lab.node.dicomweb.DicomwebService`) and a hospital's existing PACS
reached over DICOMweb (:class:`~incisive_lab.node.dicomweb.pacs.PacsBackend`) are
interchangeable. A back-end implements:

``search_studies``, ``search_series``, ``search_instances``
    QIDO-RS. The query is validated exactly as :func:`~.qido.parse_query` does (same 400s).
    ``scope`` (a :class:`~incisive_lab.governance.scope.ReadScope`) keeps only the studies
    of patients the caller may read, before ``limit``/``offset`` apply. Retrievals are
    checked against the scope by the ASGI layer (one study lookup) before they are called.
``retrieve``
    WADO-RS instances: ``multipart/related; type="application/dicom"``.
``retrieve_metadata``
    WADO-RS metadata: ``application/dicom+json``, Pixel Data as a ``BulkDataURI`` to the
    instance's ``frames`` resource under ``base_url``.
``retrieve_frames``, ``retrieve_rendered``
    Pixel data of listed frames (multipart) and PNG/JPEG renderings.

Every call returns a :class:`~incisive_lab.node.dicomweb.DicomwebResponse` whose
``accessed`` names the study/series/instance UIDs the response discloses — the node ledgers
them before answering — or raises :class:`~incisive_lab.node.dicomweb.DicomwebError` with
the HTTP status to send (400, 404, 406, 413, and 502 when a remote back-end cannot be
reached or fails).

Example
-------
>>> def serve(backend: DicomwebBackend) -> None: ...          # doctest: +SKIP
>>> serve(DicomwebService(store))                              # doctest: +SKIP
>>> serve(PacsBackend("http://pacs.hospital:8042/dicom-web"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from incisive_lab.node.dicomweb._http import DicomwebResponse, QueryParams

if TYPE_CHECKING:
    from incisive_lab.governance.scope import ReadScope

__all__ = ["DicomwebBackend"]


@runtime_checkable
class DicomwebBackend(Protocol):
    """What the node's DICOMweb endpoints need from an image store (see the module doc)."""

    def search_studies(self, query: QueryParams | None = None, *, accept: str | None = None,
                       base_url: str = "", scope: ReadScope | None = None) -> DicomwebResponse:
        """``GET /studies``."""
        ...

    def search_series(self, query: QueryParams | None = None, *, study_uid: str | None = None,
                      accept: str | None = None, base_url: str = "",
                      scope: ReadScope | None = None) -> DicomwebResponse:
        """``GET /series`` or ``GET /studies/{study_uid}/series``."""
        ...

    def search_instances(self, query: QueryParams | None = None, *,
                         study_uid: str | None = None, series_uid: str | None = None,
                         accept: str | None = None, base_url: str = "",
                         scope: ReadScope | None = None) -> DicomwebResponse:
        """``GET /instances``, ``/studies/{s}/instances`` or ``/studies/{s}/series/{se}/instances``."""
        ...

    def retrieve(self, study_uid: str, series_uid: str | None = None,
                 sop_uid: str | None = None, *, accept: str | None = None) -> DicomwebResponse:
        """``GET /studies/{s}[/series/{se}[/instances/{i}]]``."""
        ...

    def retrieve_metadata(self, study_uid: str, series_uid: str | None = None,
                          sop_uid: str | None = None, *, accept: str | None = None,
                          base_url: str = "") -> DicomwebResponse:
        """``GET .../metadata`` (study, series or instance)."""
        ...

    def retrieve_frames(self, study_uid: str, series_uid: str, sop_uid: str, frames: str, *,
                        accept: str | None = None) -> DicomwebResponse:
        """``GET .../instances/{i}/frames/{list}``."""
        ...

    def retrieve_rendered(self, study_uid: str, series_uid: str, sop_uid: str,
                          frame: int | str | None = None, query: QueryParams | None = None,
                          *, accept: str | None = None) -> DicomwebResponse:
        """``GET .../instances/{i}/rendered`` or ``.../frames/{n}/rendered``."""
        ...
