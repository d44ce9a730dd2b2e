"""The notebook API: :class:`Workbench`, the researcher's handle on the federation.

Inside a workbench kernel there is no network: the only way out is the gateway, a Unix
socket (``INCISIVE_GATEWAY``) served by the user's Jupyter server, which forwards requests to
the broker and the nodes with the user's access token (the kernel never holds it). A
:class:`Workbench` talks HTTP over that socket:

>>> from incisive_lab.client import Workbench
>>> wb = Workbench(purpose="ai-development")             # doctest: +SKIP
>>> wb.whoami()                                           # doctest: +SKIP
GatewayInfo(user='rita', broker=True, nodes=('hospital-a', 'hospital-b'))
>>> wb.datasets("lung", modality="CT")                     # doctest: +SKIP
>>> wb.count({"clinical": {"cancer_type": ["363358000"]}})  # doctest: +SKIP
>>> wb.request_access("hospital-a/lung-01", project="nodule detection")  # doctest: +SKIP
>>> s = wb.series("hospital-a", Modality="CT")[0]          # doctest: +SKIP
>>> vol = wb.fetch_series(s)                               # doctest: +SKIP
>>> vol.array.shape, vol.spacing                           # doctest: +SKIP

Reads of data (counts, series, pixels) need a *purpose* (sent as ``X-Purpose``): declare
it once, ``Workbench(purpose=...)``, or per call. Refusals by a node come back as
:class:`AccessDenied` (a :class:`PermissionError`) with the node's sentence; refusals by
the gateway itself as :class:`GatewayRefused`.

The return values are small dataclasses that show as tables in a notebook
(``_repr_html_``) and keep the raw JSON in ``raw``. See ``docs/workbench.md``.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from incisive_lab.errors import IncisiveLabError

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

__all__ = [
    "PURPOSES",
    "SEARCH_FACETS",
    "AccessDenied",
    "AccessRequest",
    "CohortCount",
    "DatasetCount",
    "DatasetList",
    "DatasetRecord",
    "GatewayInfo",
    "GatewayRefused",
    "GatewayUnavailable",
    "GeometryError",
    "MultipartReader",
    "NodeStatus",
    "NotFound",
    "Series",
    "SeriesList",
    "Volume",
    "Workbench",
    "WorkbenchError",
    "multipart_boundary",
    "volume_from_datasets",
]

#: Purpose terms (``X-Purpose: <term>[; details]``), as in the sharing terms.
PURPOSES: tuple[str, ...] = ("general-research", "health-research", "cancer-research", "ai-development",
                             "ai-validation", "education")
#: Catalogue search parameters the broker takes (besides the free text).
SEARCH_FACETS: tuple[str, ...] = ("body_part", "cancer_type", "country", "hosting", "limit",
                                  "max_instances", "max_patients", "min_instances", "min_patients",
                                  "node", "offset", "organisation", "purpose", "visibility", "modality")
ENV_GATEWAY = "INCISIVE_GATEWAY"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_NODE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# ============================================================================ errors

class WorkbenchError(IncisiveLabError):
    """The gateway, the broker or a node answered with an error (the message says which and why).

    ``status`` is the HTTP status (``None`` when there was no answer).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayUnavailable(WorkbenchError):
    """No gateway: not inside a workbench kernel (``INCISIVE_GATEWAY`` unset) or its socket is gone."""


class AccessDenied(WorkbenchError, PermissionError):
    """A node or the broker refused: no grant, a purpose the terms do not allow, a train-only
    dataset's pixels... The message is the node's sentence."""


class GatewayRefused(WorkbenchError, PermissionError):
    """The gateway refused the request itself (a destination it does not know, a path outside
    its protocol). ``reason`` is its code."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message, status)
        self.reason = reason


class NotFound(WorkbenchError, LookupError):
    """What was asked for is not there (or not visible to you)."""


class GeometryError(WorkbenchError, ValueError):
    """A series' images do not form one volume (orientations, sizes or spacings differ)."""


# ============================================================================ small helpers

def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("@value")
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("@value")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _notations(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v["skos:notation"]) for v in value
                 if isinstance(v, Mapping) and isinstance(v.get("skos:notation"), str))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, caption: str = "") -> str:
    """A small HTML table (values escaped)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _check_purpose(purpose: str) -> str:
    if not isinstance(purpose, str) or not purpose.strip():
        raise ValueError("purpose: a non-empty string such as 'ai-development'")
    value = purpose.strip()
    if len(value) > 200 or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError("purpose: printable ASCII, at most 200 characters")
    term = value.split(";", 1)[0].strip().lower()
    if term not in PURPOSES:
        raise ValueError(f"purpose: {term!r} is not a purpose term (terms: {', '.join(PURPOSES)}); "
                         "details may follow a ';', e.g. 'ai-development; project=nodules'")
    return value


def _check_uid(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError(f"{name}: {value!r} is not a DICOM UID (digits and dots, at most 64)")
    return value


def _check_node(value: Any) -> str:
    if not isinstance(value, str) or not _NODE.fullmatch(value):
        raise ValueError(f"node: {value!r} is not a node name (see Workbench.whoami().nodes)")
    return value


# ============================================================================ return types

@dataclass(frozen=True)
class GatewayInfo:
    """Who the gateway acts for and where it may go."""

    user: str
    broker: bool
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset of the federated catalogue (a HealthDCAT-AP record; ``raw`` holds it all)."""

    ref: str                     #: ``node/dataset``: what counts and requests take
    node: str
    identifier: str
    title: str
    description: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    cancer_types: tuple[str, ...]   #: labels (SNOMED CT preferred terms)
    patients: int | None
    studies: int | None
    series: int | None
    instances: int | None
    hosting: str
    visibility: str | None       #: ``visible``, ``train-only``, or ``None`` (no terms: discovery only)
    purposes: tuple[str, ...]
    stale: bool
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DatasetRecord:
        terms = record.get("incisive:accessTerms")
        terms = terms if isinstance(terms, Mapping) else {}
        themes = record.get("healthdcatap:healthTheme")
        cancers = tuple(_text(t.get("skos:prefLabel")) or str(t.get("skos:notation", ""))
                        for t in (themes if isinstance(themes, list) else []) if isinstance(t, Mapping))
        return cls(
            ref=str(record.get("incisive:ref", "")), node=str(record.get("incisive:node", "")),
            identifier=str(record.get("dct:identifier", "")), title=_text(record.get("dct:title")),
            description=_text(record.get("dct:description")),
            modalities=_notations(record.get("incisive:modality")),
            body_parts=_notations(record.get("incisive:bodyPart")), cancer_types=cancers,
            patients=_int(record.get("healthdcatap:numberOfUniqueIndividuals")),
            studies=_int(record.get("incisive:numberOfStudies")),
            series=_int(record.get("incisive:numberOfSeries")),
            instances=_int(record.get("incisive:numberOfInstances")),
            hosting=str(record.get("incisive:hosting", "")),
            visibility=str(terms["visibility"]) if isinstance(terms.get("visibility"), str) else None,
            purposes=tuple(p for p in terms.get("purposes", ()) if isinstance(p, str)),
            stale=bool(record.get("incisive:stale", False)), raw=record)


@dataclass(frozen=True)
class DatasetList(Sequence[DatasetRecord]):
    """The datasets a search found (this page), with the facet counts of all matches."""

    items: tuple[DatasetRecord, ...]
    total: int
    facets: Mapping[str, Any] = field(repr=False)
    nodes: tuple[Mapping[str, Any], ...] = field(repr=False)
    partial: bool = False
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def __getitem__(self, index: Any) -> Any:
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[DatasetRecord]:
        return iter(self.items)

    def refs(self) -> list[str]:
        """The ``node/dataset`` references, in order."""
        return [d.ref for d in self.items]

    def __repr__(self) -> str:
        shown = ", ".join(d.ref for d in self.items[:10]) + (", ..." if len(self.items) > 10 else "")
        return f"DatasetList({len(self.items)} of {self.total}: {shown}{'; partial' if self.partial else ''})"

    def _repr_html_(self) -> str:
        rows = [(d.ref, d.title, ", ".join(d.modalities), ", ".join(d.cancer_types),
                 "" if d.patients is None else d.patients, d.hosting, d.visibility or "no terms",
                 ", ".join(d.purposes)) for d in self.items]
        note = f"{len(self.items)} of {self.total} datasets"
        if self.partial:
            missing = [str(n.get("name", "?")) for n in self.nodes if n.get("status") != "ok"]
            note += f" — partial: no answer from {', '.join(missing)}"
        return _table(("ref", "title", "modalities", "cancer types", "patients", "hosting", "visibility",
                       "purposes"), rows, caption=note)


@dataclass(frozen=True)
class DatasetCount:
    """One dataset's count: ``count`` is ``None`` when suppressed (below ``floor``)."""

    ref: str
    node: str
    dataset: str
    count: int | None
    suppressed: bool
    floor: int
    members: tuple[Mapping[str, Any], ...] | None = None

    @property
    def shown(self) -> str:
        """The count as a person should read it: ``"12"`` or ``"<10"``."""
        return f"<{self.floor}" if self.count is None else str(self.count)


@dataclass(frozen=True)
class NodeStatus:
    """How one node answered a federated request: ``ok``, ``timeout`` or ``error``."""

    node: str
    status: str
    message: str = ""
    elapsed_ms: float | None = None
    denied: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortCount:
    """A federated cohort count: per dataset, per node, and whether it is complete."""

    criteria: Mapping[str, Any]
    datasets: tuple[DatasetCount, ...]
    nodes: tuple[NodeStatus, ...]
    partial: bool
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def total(self) -> int:
        """The sum of the counts shown (suppressed counts add nothing: see :attr:`suppressed`)."""
        return sum(d.count for d in self.datasets if d.count is not None)

    @property
    def suppressed(self) -> tuple[DatasetCount, ...]:
        """Datasets whose count is below their floor (shown as ``<floor``)."""
        return tuple(d for d in self.datasets if d.count is None)

    @property
    def missing(self) -> tuple[NodeStatus, ...]:
        """Nodes that did not answer (timeout or error): the count is partial without them."""
        return tuple(n for n in self.nodes if n.status != "ok")

    def __repr__(self) -> str:
        items = ", ".join(f"{d.ref}: {d.shown}" for d in self.datasets) or "no dataset counted"
        missing = "; partial: " + ", ".join(f"{n.node} {n.status}" for n in self.missing) if self.partial else ""
        return f"CohortCount(total shown {self.total}; {items}{missing})"

    def _repr_html_(self) -> str:
        rows = [(d.ref, d.shown, "suppressed" if d.suppressed else "", d.floor) for d in self.datasets]
        caption = f"total shown: {self.total}"
        if self.suppressed:
            caption += f" (+ {len(self.suppressed)} suppressed)"
        if self.partial:
            caption += " — PARTIAL: " + "; ".join(f"{n.node} {n.status}" + (f" ({n.message})" if n.message else "")
                                                  for n in self.missing)
        denied = [(n.node, d, why) for n in self.nodes for d, why in n.denied.items()]
        out = _table(("dataset", "count", "", "floor"), rows, caption=caption)
        if denied:
            out += _table(("node", "dataset", "not counted because"), denied)
        return out


@dataclass(frozen=True)
class AccessRequest:
    """An access request as the node recorded it."""

    request_id: str
    node: str
    dataset: str
    purpose: str
    project: str
    status: str
    created_at: str = ""
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AccessRequest:
        return cls(request_id=str(body.get("request_id", "")), node=str(body.get("node", "")),
                   dataset=str(body.get("dataset", "")), purpose=str(body.get("purpose", "")),
                   project=str(body.get("project", "")), status=str(body.get("status", "")),
                   created_at=str(body.get("created_at", "")), raw=body)


@dataclass(frozen=True)
class Series:
    """A DICOM series at a node (from a QIDO-RS search); :meth:`Workbench.fetch_series` takes it."""

    node: str
    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    instances: int | None
    body_part: str
    patient_id: str
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dicom_json(cls, node: str, item: Mapping[str, Any]) -> Series:
        def value(tag: str) -> Any:
            element = item.get(tag)
            values = element.get("Value") if isinstance(element, Mapping) else None
            return values[0] if isinstance(values, list) and values else None

        def number(tag: str) -> int | None:
            v = value(tag)
            try:
                return int(v) if v is not None else None
            except (TypeError, ValueError):
                return None

        return cls(node=node, study_uid=str(value("0020000D") or ""), series_uid=str(value("0020000E") or ""),
                   modality=str(value("00080060") or ""), description=str(value("0008103E") or ""),
                   number=number("00200011"), instances=number("00201209"),
                   body_part=str(value("00180015") or ""), patient_id=str(value("00100020") or ""), raw=item)


@dataclass(frozen=True)
class SeriesList(Sequence[Series]):
    """Series found at a node."""

    items: tuple[Series, ...]

    def __getitem__(self, index: Any) -> Any:
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Series]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"SeriesList({len(self.items)} series: " + ", ".join(
            f"{s.modality} {s.description!r} ({s.instances})" for s in self.items[:8]) + (
            ", ..." if len(self.items) > 8 else "") + ")"

    def _repr_html_(self) -> str:
        rows = [(s.node, s.patient_id, s.modality, s.number if s.number is not None else "", s.description,
                 s.instances if s.instances is not None else "", s.study_uid, s.series_uid) for s in self.items]
        return _table(("node", "patient", "modality", "#", "description", "instances", "study", "series"), rows,
                      caption=f"{len(self.items)} series")


@dataclass(frozen=True, eq=False)
class Volume:
    """A series as a numpy volume with its geometry.

    ``array`` is indexed ``[slice, row, column]`` (colour images add a last axis), with the
    modality rescale (slope/intercept) applied when the images carry one. Geometry is in
    the DICOM patient coordinate system (LPS, millimetres): ``origin`` is the centre of
    voxel ``[0, 0, 0]``; ``spacing`` is the distance between slices, rows and columns;
    column ``a`` of ``direction`` is the unit vector along array axis ``a`` (slice normal,
    then the column and row directions of ImageOrientationPatient). Slices are sorted along
    the normal. ``headers`` are the instances' DICOM headers (without pixel data), in
    slice order. ``positioned`` is false for images without ImagePositionPatient (e.g.
    projection radiographs): then origin and direction are nominal.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    headers: tuple[Dataset, ...] = field(repr=False)
    node: str = ""
    study_uid: str = ""
    series_uid: str = ""
    positioned: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def modality(self) -> str:
        return str(getattr(self.headers[0], "Modality", "")) if self.headers else ""

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 matrix from ``(slice, row, column, 1)`` indices to LPS millimetres."""
        import numpy as np

        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        out[:3, 3] = self.origin
        return out

    def position(self, index: Sequence[float]) -> tuple[float, float, float]:
        """The LPS position (mm) of voxel ``(slice, row, column)``."""
        import numpy as np

        p = self.affine @ np.array([*index, 1.0])
        return (float(p[0]), float(p[1]), float(p[2]))

    def __repr__(self) -> str:
        return (f"Volume({self.modality or '?'} {'x'.join(map(str, self.shape))} {self.array.dtype}, "
                f"spacing={tuple(round(s, 4) for s in self.spacing)}, node={self.node!r}, "
                f"series={self.series_uid!r})")

    def _repr_html_(self) -> str:
        rows = [("node", self.node), ("study", self.study_uid), ("series", self.series_uid),
                ("modality", self.modality), ("shape (slice, row, column)", " x ".join(map(str, self.shape))),
                ("dtype", str(self.array.dtype)),
                ("spacing (mm)", ", ".join(f"{s:.4g}" for s in self.spacing)),
                ("origin (LPS mm)", ", ".join(f"{s:.4g}" for s in self.origin)),
                ("values", f"{float(self.array.min()):.6g} .. {float(self.array.max()):.6g}"
                 if self.array.size else "empty")]
        return _table(("", ""), rows, caption="Volume")


# ============================================================================ volumes (pure)

_TOL_COS = 1e-4   # direction cosines
_TOL_MM = 1e-3    # pixel spacings (relative) and in-plane offsets (mm)
_PIXEL_DATA = 0x7FE00010


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _frame_geometry(ds: Dataset, frame: int | None) -> tuple[Any, Any, Any, float, float]:
    """(position, orientation, pixel spacing, slope, intercept) of one frame."""
    position, orientation, spacing = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    groups: list[Any] = []
    if frame is not None:
        per = ds.get("PerFrameFunctionalGroupsSequence")
        if per is not None and frame < len(per):
            groups.append(per[frame])
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            groups.append(shared[0])
    for g in reversed(groups):  # per-frame values win over shared ones
        if "PlanePositionSequence" in g:
            position = g.PlanePositionSequence[0].get("ImagePositionPatient", position)
        if "PlaneOrientationSequence" in g:
            orientation = g.PlaneOrientationSequence[0].get("ImageOrientationPatient", orientation)
        if "PixelMeasuresSequence" in g:
            spacing = g.PixelMeasuresSequence[0].get("PixelSpacing", spacing)
        if "PixelValueTransformationSequence" in g:
            t = g.PixelValueTransformationSequence[0]
            slope, intercept = t.get("RescaleSlope", slope), t.get("RescaleIntercept", intercept)
    return position, orientation, spacing, float(slope), float(intercept)


def volume_from_datasets(datasets: Sequence[Dataset], *, node: str = "", rescale: bool = True) -> Volume:
    """Stack a series' instances (pydicom datasets with pixel data) into a :class:`Volume`.

    Frames are sorted along the slice normal (``ImageOrientationPatient`` row x column
    cosines) by the projection of ``ImagePositionPatient``; multi-frame instances give
    their frames with the per-frame functional groups. Without positions (projection
    images) frames keep InstanceNumber order and the geometry is nominal.

    Raises
    ------
    GeometryError
        The images do not form one volume: no pixel data, different sizes, orientations or
        pixel spacings, some positioned and some not, two frames at one position (echoes,
        phases), positions off the slice normal (gantry tilt), uneven slice spacing.
    """
    import numpy as np
    import pydicom

    if not datasets:
        raise GeometryError("the series has no instances")
    frames: list[tuple[Dataset, np.ndarray, Any, Any, Any, float, float]] = []
    for ds in sorted(datasets, key=lambda d: (int(d.get("InstanceNumber") or 0), str(d.get("SOPInstanceUID", "")))):
        if "PixelData" not in ds:
            raise GeometryError(f"instance {ds.get('SOPInstanceUID', '?')} ({ds.get('Modality', '?')}) has no "
                                "pixel data: the series is not an image series")
        pixels = ds.pixel_array
        count = int(ds.get("NumberOfFrames") or 1)
        if count > 1:
            for f in range(count):
                frames.append((ds, pixels[f], *_frame_geometry(ds, f)))
        else:
            frames.append((ds, pixels, *_frame_geometry(ds, None)))
    shapes = {f[1].shape for f in frames}
    if len(shapes) > 1:
        raise GeometryError(f"mixed geometry: the images have different sizes {sorted(shapes)}")
    spacings = [_floats(f[4], 2) for f in frames]
    pixel_spacing = spacings[0] or (1.0, 1.0)
    for s in spacings:
        if (s is None) != (spacings[0] is None) or (s is not None and not np.allclose(
                s, pixel_spacing, rtol=_TOL_MM, atol=0)):
            raise GeometryError(f"mixed geometry: pixel spacings differ ({spacings[0]} and {s})")
    positions = [_floats(f[2], 3) for f in frames]
    orientations = [_floats(f[3], 6) for f in frames]
    positioned = [p is not None and o is not None for p, o in zip(positions, orientations, strict=True)]
    if any(positioned) and not all(positioned):
        raise GeometryError(f"mixed geometry: {positioned.count(False)} of {len(frames)} images have no "
                            "ImagePositionPatient/ImageOrientationPatient")
    slice_spacing = 1.0
    for key in ("SpacingBetweenSlices", "SliceThickness"):  # a single slice's nominal spacing
        nominal = _floats([frames[0][0].get(key)], 1)
        if nominal is not None and nominal[0] > 0:
            slice_spacing = nominal[0]
            break
    if all(positioned):
        iop = np.array(orientations[0], dtype=float)
        for o in orientations:
            if o is None or not np.allclose(o, iop, atol=_TOL_COS):
                raise GeometryError(f"mixed geometry: orientations differ ({tuple(iop)} and {o})")
        row_cos, col_cos = iop[:3], iop[3:]
        normal = np.cross(row_cos, col_cos)
        pos = np.array(positions, dtype=float)
        along = pos @ normal
        order = np.argsort(along, kind="stable")
        frames = [frames[i] for i in order]
        pos, along = pos[order], along[order]
        if len(frames) > 1:
            steps = np.diff(along)
            if np.any(steps < _TOL_MM):
                raise GeometryError(f"{int(np.sum(steps < _TOL_MM)) + 1} images share a position: the series "
                                    "holds more than one volume (echoes, phases, repeats)")
            off_axis = pos - pos[0] - np.outer(along - along[0], normal)
            if np.max(np.abs(off_axis)) > max(_TOL_MM * 100, 0.01 * float(np.mean(steps))):
                raise GeometryError("the slices are not stacked along their normal (gantry tilt or "
                                    "a shifted field of view); resample them yourself from the headers")
            if float(steps.max() - steps.min()) > max(0.01, 0.01 * float(steps.mean())):
                raise GeometryError(f"uneven slice spacing ({steps.min():.4g} to {steps.max():.4g} mm): "
                                    "missing slices or a mixed series")
            slice_spacing = float(steps.mean())
        origin = tuple(float(v) for v in pos[0])
        direction = np.stack([normal, col_cos, row_cos], axis=1)
    else:
        origin = (0.0, 0.0, 0.0)
        direction = np.eye(3)
    slopes = np.array([f[5] for f in frames])
    intercepts = np.array([f[6] for f in frames])
    stack = np.stack([f[1] for f in frames])
    if rescale and (np.any(slopes != 1.0) or np.any(intercepts != 0.0)):
        shape = (-1,) + (1,) * (stack.ndim - 1)
        stack = stack.astype(np.float32) * slopes.reshape(shape).astype(np.float32) + \
            intercepts.reshape(shape).astype(np.float32)
    headers = []
    for ds in {id(f[0]): f[0] for f in frames}.values():  # each instance once, in slice order
        header = pydicom.Dataset({tag: element for tag, element in ds.items() if tag != _PIXEL_DATA})
        if hasattr(ds, "file_meta"):
            header.file_meta = ds.file_meta
        headers.append(header)
    first = frames[0][0]
    return Volume(array=stack, spacing=(slice_spacing, float(pixel_spacing[0]), float(pixel_spacing[1])),
                  origin=(float(origin[0]), float(origin[1]), float(origin[2])), direction=direction,
                  headers=tuple(headers), node=node, study_uid=str(first.get("StudyInstanceUID", "")),
                  series_uid=str(first.get("SeriesInstanceUID", "")), positioned=all(positioned))


# ============================================================================ multipart (pure)

def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/related`` Content-Type (quoted or not)."""
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "multipart/related":
        raise WorkbenchError(f"expected a multipart/related answer, got {main.strip() or 'nothing'!r}")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if 0 < len(value) <= 70:
                return value.encode("ascii")
    raise WorkbenchError("the multipart answer names no boundary")


class MultipartReader:
    """Split a ``multipart/related`` body fed in chunks into parts as they complete
    (RFC 2046): ``feed(chunk)`` returns the finished ``(headers, body)`` parts; ``close()``
    raises if the closing delimiter never came (a cut-off answer)."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._first = b"--" + boundary
        self._buffer = bytearray()
        self._scan = 0
        self._state = "preamble"   # preamble -> headers -> body -> ... -> done
        self._headers: dict[str, str] = {}

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[tuple[dict[str, str], bytes]]:
        self._buffer += data
        out: list[tuple[dict[str, str], bytes]] = []
        while True:
            if self._state == "preamble":
                i = self._buffer.find(self._first)
                if i < 0 or len(self._buffer) < i + len(self._first) + 2:
                    return out
                after = self._buffer[i + len(self._first):i + len(self._first) + 2]
                del self._buffer[:i + len(self._first) + 2]
                if after == b"--":
                    self._state = "done"
                    return out
                if after != b"\r\n":
                    raise WorkbenchError("malformed multipart answer (no line break after the boundary)")
                self._state = "headers"
            elif self._state == "headers":
                j = self._buffer.find(b"\r\n\r\n")
                if j < 0:
                    if len(self._buffer) > 65536:
                        raise WorkbenchError("malformed multipart answer (part headers too long)")
                    return out
                lines = bytes(self._buffer[:j]).decode("latin-1").split("\r\n")
                self._headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    self._headers[name.strip().lower()] = value.strip()
                del self._buffer[:j + 4]
                self._state, self._scan = "body", 0
            elif self._state == "body":
                k = self._buffer.find(self._delimiter, self._scan)
                if k < 0 or len(self._buffer) < k + len(self._delimiter) + 2:
                    self._scan = max(0, len(self._buffer) - len(self._delimiter) - 2) if k < 0 else k
                    return out
                out.append((self._headers, bytes(self._buffer[:k])))
                after = self._buffer[k + len(self._delimiter):k + len(self._delimiter) + 2]
                del self._buffer[:k + len(self._delimiter) + 2]
                if after == b"--":
                    self._state = "done"
                    return out
                if after != b"\r\n":
                    raise WorkbenchError("malformed multipart answer (no line break after a boundary)")
                self._state = "headers"
            else:
                return out

    def close(self) -> None:
        if self._state != "done":
            raise WorkbenchError("the answer was cut off (the multipart body did not end)")


# ============================================================================ the workbench

class Workbench:
    """The federation, seen from a notebook, through the workspace's gateway.

    Parameters
    ----------
    socket
        The gateway's Unix socket (default: ``INCISIVE_GATEWAY``, set in workbench kernels).
    purpose
        Why you work with the data: a purpose term (``ai-development``, ``cancer-research``,
        ... see :data:`PURPOSES`), optionally with details after ``;``. Sent as ``X-Purpose``
        with every read; a call's own ``purpose=`` wins.
    timeout
        Seconds to wait for each answer (reads of a big series stream for longer).
    progress
        Show progress bars when fetching series (default True).
    transport
        An httpx transport instead of the socket (tests).

    Raises
    ------
    GatewayUnavailable
        No socket given, ``INCISIVE_GATEWAY`` unset, or nothing at that path.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, purpose: str | None = None,
                 timeout: float = 120.0, progress: bool = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.purpose = _check_purpose(purpose) if purpose is not None else None
        self.progress = progress
        path = os.fspath(socket) if socket is not None else os.environ.get(ENV_GATEWAY, "")
        self.socket = path or None
        if transport is None:
            if not path:
                raise GatewayUnavailable(
                    f"no gateway: {ENV_GATEWAY} is not set. Workbench works in a workbench kernel "
                    "(JupyterLab started by the INCISIVE hub), or pass socket='/path/to/gateway.sock'.")
            if not Path(path).exists():
                raise GatewayUnavailable(f"no gateway at {path}: the socket does not exist (is the "
                                         "workspace's server running? restart the kernel after it is)")
            transport = httpx.HTTPTransport(uds=path)
        self._http = httpx.Client(transport=transport, base_url="http://gateway", trust_env=False,
                                  follow_redirects=False, timeout=httpx.Timeout(timeout, connect=10.0))

    def __repr__(self) -> str:
        return f"Workbench(socket={self.socket!r}, purpose={self.purpose!r})"

    def close(self) -> None:
        """Close the connection to the gateway."""
        self._http.close()

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _purpose(self, purpose: str | None, *, required: bool = True) -> str | None:
        if purpose is not None:
            return _check_purpose(purpose)
        if self.purpose is None and required:
            raise ValueError("purpose: say why you read this data: Workbench(purpose='ai-development') "
                             f"or purpose=... in the call (terms: {', '.join(PURPOSES)})")
        return self.purpose

    def _request(self, method: str, path: str, *, purpose: str | None = None, what: str,
                 **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if purpose:
            headers["X-Purpose"] = purpose
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        self._raise_for(response, what)
        return response

    def _transport_error(self, exc: httpx.TransportError) -> WorkbenchError:
        if isinstance(exc, httpx.TimeoutException):
            return WorkbenchError(f"no answer through the gateway in time ({exc})")
        return GatewayUnavailable(f"cannot reach the gateway at {self.socket}: {exc}")

    @staticmethod
    def _message(response: httpx.Response) -> tuple[str, str]:
        """(the sentence, the code) of an error answer."""
        try:
            body = response.json()
        except ValueError:
            return response.text.strip()[:500] or response.reason_phrase, ""
        if isinstance(body, Mapping):
            if body.get("resourceType") == "OperationOutcome":
                issues = body.get("issue") or [{}]
                return str(issues[0].get("diagnostics", "refused")), ""
            code = body.get("reason") or (body.get("error") if "message" in body else "")
            message = body.get("message") or body.get("error") or response.reason_phrase
            return str(message), str(code or "")
        return str(body)[:500], ""

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        response.read()
        message, code = self._message(response)
        text = f"{what}: {message}"
        if response.headers.get("x-incisive-gateway") == "refused":
            raise GatewayRefused(f"{what}: the gateway refused: {message}", status, code)
        if status in (401, 403):
            if status == 401:
                text += " (your sign-in was not accepted: log in to the hub again)"
            raise AccessDenied(text, status)
        if status == 404:
            raise NotFound(text, status)
        raise WorkbenchError(f"{text} (HTTP {status})", status)

    def _get_json(self, path: str, *, what: str, purpose: str | None = None, **kwargs: Any) -> Any:
        return self._request("GET", path, what=what, purpose=purpose, **kwargs).json()

    # ------------------------------------------------------------------ who and where
    def whoami(self) -> GatewayInfo:
        """Who the gateway acts for, whether a broker is configured, which nodes it reaches."""
        body = self._get_json("/gateway/info", what="gateway info")
        return GatewayInfo(user=str(body.get("user", "")), broker=bool(body.get("broker")),
                           nodes=tuple(str(n) for n in body.get("nodes", ())))

    # ------------------------------------------------------------------ the catalogue
    def datasets(self, text: str | None = None, **facets: Any) -> DatasetList:
        """Search the federated catalogue.

        Parameters
        ----------
        text
            Words that must all appear in a dataset's title, description or identifier.
        **facets
            ``cancer_type`` (a SNOMED CT code; its descendants match too), ``modality``,
            ``body_part``, ``country``, ``hosting``, ``purpose`` (the terms permit it),
            ``visibility``, ``organisation``, ``node``, ``min_patients``/``max_patients``,
            ``min_instances``/``max_instances``, ``limit``, ``offset``. A list means
            *any of*.

        Examples
        --------
        >>> wb.datasets("lung", modality=["CT", "MR"], purpose="ai-development")  # doctest: +SKIP
        """
        params: list[tuple[str, str]] = []
        if text:
            params.append(("q", str(text)))
        for name, value in facets.items():
            if name not in SEARCH_FACETS:
                raise TypeError(f"datasets() got an unknown facet {name!r} (facets: {', '.join(sorted(SEARCH_FACETS))})")
            values = value if isinstance(value, list | tuple | set | frozenset) else [value]
            params += [(name, str(v)) for v in values]
        body = self._get_json("/broker/catalogue/search", what="catalogue search", params=params,
                              purpose=self.purpose)
        return DatasetList(items=tuple(DatasetRecord.from_record(r) for r in body.get("datasets", ())),
                           total=int(body.get("total", 0)), facets=body.get("facets", {}),
                           nodes=tuple(body.get("nodes", ())), partial=bool(body.get("partial")), raw=body)

    search = datasets

    # ------------------------------------------------------------------ counts
    def count(self, criteria: Mapping[str, Any] | None = None, *, purpose: str | None = None,
              datasets: Sequence[str] | None = None, nodes: Sequence[str] | None = None,
              members: bool = False, broker_floor: int | None = None) -> CohortCount:
        """Count a cohort across the federation (each node counts its own; small counts are
        suppressed at the node and shown as ``<floor``; nodes that do not answer in time
        make the answer ``partial``).

        Parameters
        ----------
        criteria
            The cohort query (``{"clinical": {...}, "imaging": {...}}``; see docs/cohort.md).
        purpose
            The purpose (default: the workbench's).
        datasets, nodes
            Only these ``node/dataset`` references or node names.
        members
            Ask for member lists (only under a grant for the purpose).
        broker_floor
            Raise every floor to at least this.
        """
        declared = self._purpose(purpose)
        body: dict[str, Any] = {"criteria": dict(criteria or {})}
        if datasets is not None:
            body["datasets"] = list(datasets)
        if nodes is not None:
            body["nodes"] = list(nodes)
        if members:
            body["members"] = True
        if broker_floor is not None:
            body["broker_floor"] = broker_floor
        answer = self._request("POST", "/broker/cohort/count", json=body, purpose=declared,
                               what="cohort count").json()
        items = []
        for d in answer.get("datasets", ()):
            count = d.get("count")
            number = count if isinstance(count, int) and not isinstance(count, bool) and not d.get("suppressed") else None
            mem = d.get("members")
            items.append(DatasetCount(ref=str(d.get("ref", "")), node=str(d.get("node", "")),
                                      dataset=str(d.get("dataset", "")), count=number,
                                      suppressed=number is None, floor=int(d.get("floor", 0)),
                                      members=tuple(mem) if isinstance(mem, list) else None))
        statuses = tuple(NodeStatus(node=str(n.get("node", "")), status=str(n.get("status", "")),
                                    message=str(n.get("message", "") or ""), elapsed_ms=n.get("elapsed_ms"),
                                    denied=dict(n.get("denied") or {}))
                         for n in answer.get("nodes", ()))
        return CohortCount(criteria=answer.get("criteria", body["criteria"]), datasets=tuple(items),
                           nodes=statuses, partial=bool(answer.get("partial")), raw=answer)

    # ------------------------------------------------------------------ requests and grants
    def request_access(self, dataset: str, *, project: str, purpose: str | None = None,
                       criteria: Mapping[str, Any] | None = None, node: str | None = None) -> AccessRequest:
        """Ask a dataset's steward for access (through the broker, to the node that holds it).

        Parameters
        ----------
        dataset
            A dataset name, or ``node/dataset`` when several nodes hold one of that name.
        project
            What the data is for, in a few words (the steward reads it).
        purpose
            The purpose term (default: the workbench's).
        criteria
            Only the cohort these criteria select.
        node
            The node, if not in ``dataset``.
        """
        declared = self._purpose(purpose)
        assert declared is not None
        if not isinstance(project, str) or not project.strip():
            raise ValueError("project: say in a few words what the data is for")
        body: dict[str, Any] = {"dataset": dataset, "purpose": declared.split(";", 1)[0].strip().lower(),
                                "project": project}
        if criteria is not None:
            body["criteria"] = dict(criteria)
        if node is not None:
            body["node"] = _check_node(node)
        answer = self._request("POST", "/broker/requests", json=body, purpose=declared,
                               what=f"access request for {dataset}").json()
        return AccessRequest.from_json(answer)

    def requests(self) -> list[AccessRequest]:
        """My access requests on every node."""
        body = self._get_json("/broker/requests", what="access requests", purpose=self.purpose)
        return [AccessRequest.from_json(i) for i in body.get("items", ())]

    def grants(self) -> list[dict[str, Any]]:
        """My active grants on every node (``node``, ``dataset``, ``purpose``, ``expires``, ``members``)."""
        body = self._get_json("/broker/grants", what="grants", purpose=self.purpose)
        return [dict(i) for i in body.get("items", ())]

    # ------------------------------------------------------------------ images
    def series(self, node: str, study_uid: str | None = None, *, purpose: str | None = None,
               **query: Any) -> SeriesList:
        """Series at ``node`` you may read (QIDO-RS), optionally of one study.

        ``**query`` are DICOM attribute matches (``Modality="CT"``, ``PatientID="PSN-..."``,
        ``SeriesDescription="*AXIAL*"``) and ``limit``/``offset``.
        """
        declared = self._purpose(purpose)
        node = _check_node(node)
        path = (f"/nodes/{node}/dicomweb/studies/{_check_uid(study_uid, 'study_uid')}/series"
                if study_uid is not None else f"/nodes/{node}/dicomweb/series")
        params = [(k, str(v)) for k, v in query.items()]
        params += [("includefield", "NumberOfSeriesRelatedInstances"), ("includefield", "BodyPartExamined")]
        body = self._get_json(path, what=f"series search at {node}", purpose=declared, params=params,
                              headers={"Accept": "application/dicom+json"})
        return SeriesList(tuple(Series.from_dicom_json(node, item) for item in body if isinstance(item, Mapping)))

    def fetch_series(self, node: str | Series, study_uid: str | None = None, series_uid: str | None = None, *,
                     purpose: str | None = None, progress: bool | None = None, rescale: bool = True) -> Volume:
        """Fetch a series (DICOMweb WADO-RS, streamed) and return it as a :class:`Volume`.

        Parameters
        ----------
        node
            The node's name, or a :class:`Series` (then the UIDs come from it).
        study_uid, series_uid
            The study and series.
        purpose
            The purpose (default: the workbench's); required.
        progress
            Show a progress bar (default: the workbench's setting).
        rescale
            Apply RescaleSlope/RescaleIntercept (default True).

        Raises
        ------
        AccessDenied
            The node refused (no grant for the purpose, a train-only dataset...).
        GeometryError
            The series is not one volume.
        """
        if isinstance(node, Series):
            found: Series = node
            node, study_uid, series_uid = found.node, found.study_uid, found.series_uid
        declared = self._purpose(purpose)
        node = _check_node(node)
        study = _check_uid(study_uid, "study_uid")
        series = _check_uid(series_uid, "series_uid")
        what = f"series {series} of study {study} at {node} for purpose {declared!r}"
        datasets = list(self._retrieve(node, study, series, declared, what,
                                       self.progress if progress is None else progress))
        return volume_from_datasets(datasets, node=node, rescale=rescale)

    def _retrieve(self, node: str, study: str, series: str, purpose: str | None, what: str,
                  progress: bool) -> Iterator[Dataset]:
        import pydicom

        path = f"/nodes/{node}/dicomweb/studies/{study}/series/{series}"
        headers = {"Accept": _DICOM_ACCEPT}
        if purpose:
            headers["X-Purpose"] = purpose
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                self._raise_for(response, what)
                reader = MultipartReader(multipart_boundary(response.headers.get("content-type", "")))
                total = response.headers.get("content-length")
                bar = _progress(progress, int(total) if total and total.isdigit() else None,
                                f"{node} series {series[-12:]}")
                instances = 0
                try:
                    for chunk in response.iter_bytes():
                        bar.update(len(chunk))
                        for part_headers, body in reader.feed(chunk):
                            kind = part_headers.get("content-type", "").split(";")[0].strip().lower()
                            if kind != "application/dicom":
                                raise WorkbenchError(f"{what}: a part of type {kind!r}, not application/dicom")
                            instances += 1
                            bar.set_postfix(instances=instances, refresh=False)
                            yield pydicom.dcmread(io.BytesIO(body))
                    reader.close()
                finally:
                    bar.close()
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if instances == 0:
            raise NotFound(f"{what}: no instances")

    # ------------------------------------------------------------------ federated training
    def train(self, task: Any, cohort: Any = None, *, rounds: int = 3, strategy: str = "fedavg",
              dp: Mapping[str, float] | None = None, min_nodes: int | None = None, epochs: int | None = None,
              lr: float | None = None, batch_size: int | None = None, proximal_mu: float | None = None,
              seed: int | None = None, secagg: bool | None = None, purpose: str | None = None,
              task_config: Mapping[str, Any] | None = None) -> Any:
        """Start a federated training run on the SuperLink; returns a
        :class:`~incisive_lab.fl.jobs.TrainingRun` (``.wait()``, ``.metrics``, ``.plot()``,
        ``.save_model()``).

        Parameters
        ----------
        task
            A built-in task name (``"mg-lesion"``, ``"ct-nodule"``), a task directory, or a
            :class:`~incisive_lab.fl.task.TaskCode`. Each node runs only task code whose hash its
            steward approved; the others refuse, and say so in the run's metrics.
        cohort
            Datasets to train on (names, ``node/dataset`` references, a :class:`DatasetList`);
            default: every dataset your grants for the purpose cover, train-only ones included.
        rounds, strategy
            Federated rounds; ``"fedavg"`` or ``"fedprox"`` (``proximal_mu``, default 0.01).
        dp
            Differential privacy at the nodes: ``{"clip": C, "noise": z, "delta": d}`` — each
            update clipped to L2 norm C, Gaussian noise of standard deviation z·C; the run
            reports epsilon for delta.
        min_nodes
            Nodes that must take part in each round (default 2): fewer, and the run fails.
        epochs, lr, batch_size
            Local epochs per round, learning rate, batch size (default: the task's own tuned
            values, e.g. ``mg-lesion``: 8, 0.003, 8).
        seed, secagg
            Seed of the model's initialisation and of local shuffling; SecAgg+ (FedAvg only).
        task_config
            The task's own settings, e.g. ``{"test_fraction": 0.25}`` for the share of each
            node's patients kept for federated evaluation (see docs/fl-tasks.md).
        purpose
            The training purpose (default: the Workbench's).

        Examples
        --------
        >>> run = wb.train("mg-lesion", rounds=5, strategy="fedprox", min_nodes=2)  # doctest: +SKIP
        >>> run.wait()                                                               # doctest: +SKIP
        'finished'
        """
        from incisive_lab.fl.jobs import submit

        return submit(self, task, cohort, purpose=purpose, rounds=rounds, strategy=strategy,
                      dp=dict(dp) if dp is not None else None, min_nodes=min_nodes, epochs=epochs, lr=lr,
                      batch_size=batch_size, proximal_mu=proximal_mu, seed=seed, secagg=secagg,
                      task_config=dict(task_config) if task_config is not None else None)

    def runs(self) -> list[Any]:
        """Your training runs, newest first (:class:`~incisive_lab.fl.jobs.TrainingRun`)."""
        from incisive_lab.fl.jobs import TrainingRun

        body = self._get_json("/broker/fl/runs", what="training runs")
        return [TrainingRun(self, state, purpose=self.purpose) for state in body.get("runs", [])]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int | None, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    try:  # a widget bar in notebooks when ipywidgets is there; else text (tqdm.auto would warn)
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)
