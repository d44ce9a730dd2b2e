"""Turn a :class:`~._plan.SitePlan` into DICOM files and ground-truth manifest entries."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from incisive_lab.dicom.synth import _phantoms as ph
from incisive_lab.dicom.synth._identity import ascii_fold
from incisive_lab.dicom.synth._plan import (
    COMPRESSED,
    RLE,
    PatientPlan,
    SeriesPlan,
    SitePlan,
    StudyPlan,
)
from incisive_lab.dicom.synth._private import (
    ACME,
    DECOY,
    GE_ACQU,
    GE_IDEN,
    GE_PARM,
    SIEMENS_CSA,
    SIEMENS_MED,
    SIEMENS_MR,
    add_private,
    csa_blob,
)
from incisive_lab.dicom.synth._random import derive_uid, np_rng, stable_uid, unit
from incisive_lab.dicom.synth._text import burn_text
from incisive_lab.dicom.synth._writer import Encapsulated, MetaEncoder, SeriesEncoder, assemble

__all__ = ["SOP_CLASSES", "SiteOutput", "render_site"]

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "SC": "1.2.840.10008.5.1.4.1.1.7",
}
_DETACHED_PATIENT = "1.2.840.10008.3.1.2.1.1"
_DETACHED_STUDY = "1.2.840.10008.3.1.2.3.1"
_MG_BURNED_FRACTION_PERIOD = 4  # one view in four carries burned-in text


@dataclass
class SiteOutput:
    """What rendering a site produced: manifest entries and counts."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    patients: list[dict[str, Any]] = field(default_factory=list)
    n_files: int = 0
    n_bytes: int = 0
    n_series: int = 0
    n_studies: int = 0
    n_burned: int = 0
    n_compressed: int = 0


def _da(d: _dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: _dt.time, plus_seconds: float = 0.0) -> str:
    base = _dt.datetime(2000, 1, 1, t.hour, t.minute, t.second) + _dt.timedelta(
        seconds=plus_seconds)
    return base.strftime("%H%M%S.%f")[:13]


def _ds(v: float) -> str:
    text = f"{v:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _times(date: _dt.date, start: _dt.time, offset: float, content_delay: float) -> list[Any]:
    acq = _tm(start, offset)
    return [(0x00080032, "TM", acq), (0x00080033, "TM", _tm(start, offset + content_delay)),
            (0x0008002A, "DT", _da(date) + acq)]


def _position(x: float, y: float, z: float) -> list[Any]:
    return [(0x00200032, "DS", [_ds(x), _ds(y), _ds(z)]), (0x00201041, "DS", _ds(z))]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@dataclass
class _Ctx:
    seed: int
    plan: SitePlan
    patient: PatientPlan
    study: StudyPlan
    series: SeriesPlan
    vendor: str
    device_modality: str


# ----------------------------------------------------------------------------------------------
# common modules (static part of every instance)


def _common(ctx: _Ctx, sop_class: str) -> Dataset:
    site, p, st, se = ctx.plan.site, ctx.patient, ctx.study, ctx.series
    device = site.devices[ctx.device_modality]
    ds = Dataset()
    if site.charset:
        ds.SpecificCharacterSet = site.charset
    ds.SOPClassUID = sop_class
    ds.InstanceCreationDate = _da(st.date)
    ds.InstanceCreationTime = _tm(se.time, 600)
    # patient
    ds.PatientName = p.person.pn
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = site.mrn_issuer
    ds.PatientBirthDate = _da(p.birth_date)
    ds.PatientSex = "F" if p.female else "M"
    if p.flags["other_ids"]:
        items = []
        for pid, issuer in ((p.national_id, site.country.national_issuer),
                            (p.legacy_id, ctx.plan.legacy_issuer)):
            item = Dataset()
            item.PatientID = pid
            item.IssuerOfPatientID = issuer
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        ds.OtherPatientIDsSequence = DicomSequence(items)
    if p.flags["other_ids_retired"]:
        ds.add_new(0x00101000, "LO", p.national_id)  # Other Patient IDs (retired)
    if p.flags["ref_patient"]:
        ref = Dataset()
        ref.ReferencedSOPClassUID = _DETACHED_PATIENT
        ref.ReferencedSOPInstanceUID = derive_uid(ctx.seed, "patient-ref", site.name, p.j)
        ds.ReferencedPatientSequence = DicomSequence([ref])
    if p.flags["mother"]:
        ds.PatientMotherBirthName = p.mother.pn
    if p.flags["address"]:
        ds.PatientAddress = p.address
    if p.flags["telephone"]:
        ds.PatientTelephoneNumbers = p.phone
    ds.PatientComments = p.patient_comments
    ds.PatientAge = f"{(st.date - p.birth_date).days // 365:03d}Y"
    ds.PatientSize = _ds(p.height_m)
    ds.PatientWeight = str(p.weight)
    ds.AdditionalPatientHistory = p.additional_history
    # study
    ds.StudyInstanceUID = st.uid
    ds.StudyDate = _da(st.date)
    ds.StudyTime = _tm(st.time)
    ds.ReferringPhysicianName = st.referring.pn
    ds.StudyID = st.study_id
    ds.AccessionNumber = st.accession
    ds.StudyDescription = st.description
    ds.NameOfPhysiciansReadingStudy = st.reading.pn
    if p.flags["physicians_of_record"]:
        ds.PhysiciansOfRecord = st.referring.pn
    if st.followup_of is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = _DETACHED_STUDY
        ref.ReferencedSOPInstanceUID = st.followup_of.uid
        ds.ReferencedStudySequence = DicomSequence([ref])
    # series
    ds.Modality = "OT" if se.kind == "sc" else se.modality
    ds.SeriesInstanceUID = se.uid
    ds.SeriesNumber = se.number
    ds.SeriesDate = _da(st.date)
    ds.SeriesTime = _tm(se.time)
    ds.SeriesDescription = se.description
    ds.ProtocolName = se.protocol
    ds.OperatorsName = [o.pn for o in se.operators] if len(se.operators) > 1 else \
        se.operators[0].pn
    if se.modality in ("MR", "MG"):
        ds.PerformingPhysicianName = st.reading.pn
    ds.BodyPartExamined = {"lung": "CHEST", "colorectal": "ABDOMEN", "prostate": "PROSTATE",
                           "breast": "BREAST"}[p.cancer_type]
    ds.PerformedProcedureStepID = st.pps_id
    ds.PerformedProcedureStepStartDate = _da(st.date)
    ds.PerformedProcedureStepStartTime = _tm(st.time)
    ds.PerformedProcedureStepDescription = st.description.split(" ")[0] + " exam"
    if st.pps_comment:
        ds.CommentsOnThePerformedProcedureStep = st.pps_comment
    if st.with_request_attributes:
        ds.RequestAttributesSequence = DicomSequence([_request_item(ctx)])
    # equipment
    ds.Manufacturer = device.manufacturer
    ds.InstitutionName = site.institution
    ds.InstitutionAddress = site.address
    ds.StationName = device.station
    ds.InstitutionalDepartmentName = site.department
    ds.ManufacturerModelName = device.model
    ds.DeviceSerialNumber = device.serial
    ds.SoftwareVersions = device.software
    # general image
    ds.ContentDate = _da(st.date)
    ds.AcquisitionDate = _da(st.date)
    if se.image_comment:
        ds.ImageComments = se.image_comment
    _vendor_private(ctx, ds)
    return ds


def _request_item(ctx: _Ctx) -> Dataset:
    p, st, se = ctx.patient, ctx.study, ctx.series
    item = Dataset()
    item.RequestedProcedureID = st.requested_procedure_id
    item.AccessionNumber = st.accession
    item.StudyInstanceUID = st.uid
    item.RequestedProcedureDescription = st.description.split(" ")[0] + " requested"
    item.ScheduledProcedureStepID = st.sps_id
    item.ScheduledProcedureStepDescription = se.protocol.split(" ")[0]
    item.ReasonForTheRequestedProcedure = "Follow-up" if st.followup_of else "Staging"
    protocol = _code({"lung": "CTCHEST", "colorectal": "CTABDPEL", "prostate": "MRPROST",
                      "breast": "MGBILAT"}[p.cancer_type], "99LOCAL", "Site protocol")
    context = Dataset()
    context.ValueType = "PNAME"
    context.ConceptNameCodeSequence = DicomSequence([_code("121008", "DCM",
                                                           "Person Observer Name")])
    context.PersonName = se.operators[0].pn
    protocol.ProtocolContextSequence = DicomSequence([context])
    item.ScheduledProtocolCodeSequence = DicomSequence([protocol])
    if p.flags["acme"]:
        add_private(item, 0x0011, 0x10, ACME, 0x20, "LO", f"{p.patient_id}|{st.accession}")
    return item


def _vendor_private(ctx: _Ctx, ds: Dataset) -> None:
    p, se, site = ctx.patient, ctx.series, ctx.plan.site
    device = site.devices[ctx.device_modality]
    if ctx.vendor == "GE":
        add_private(ds, 0x0009, 0x10, GE_IDEN, 0x02, "SH", device.station)
        add_private(ds, 0x0009, 0x10, GE_IDEN, 0x04, "SH", device.model[:16])
        add_private(ds, 0x0009, 0x10, GE_IDEN, 0x40, "LO", f"{p.person.family} {p.person.given}")
        if se.modality == "CT":
            block = 0x10
            if se.block_shift:
                add_private(ds, 0x0019, 0x10, DECOY, 0x23, "LO", p.patient_id)
                add_private(ds, 0x0019, 0x10, DECOY, 0x24, "LO", p.person.pn)
                block = 0x11
            add_private(ds, 0x0019, block, GE_ACQU, 0x23, "DS", "39.375")
            add_private(ds, 0x0043, 0x10, GE_PARM, 0x27, "SH", "1.375:1")
    else:
        csa_block, med_block = (0x11, 0x10) if se.block_shift else (0x10, 0x11)
        if se.modality in ("CT", "MR"):
            blob = csa_blob([
                ("SliceMeasurementDuration", "DS", ["1200.0"]),
                ("ImaComments", "LT", [f"{ascii_fold(p.person.pn).upper()} {p.patient_id}"]),
                ("ProtocolSliceNumber", "IS", ["0"]),
            ])
            if csa_block < med_block:
                add_private(ds, 0x0029, csa_block, SIEMENS_CSA, 0x08, "CS", "IMAGE NUM 4")
                add_private(ds, 0x0029, csa_block, SIEMENS_CSA, 0x10, "OB", blob)
                add_private(ds, 0x0029, med_block, SIEMENS_MED, 0x08, "LO",
                            se.operators[0].natural)
            else:
                add_private(ds, 0x0029, med_block, SIEMENS_MED, 0x08, "LO",
                            se.operators[0].natural)
                add_private(ds, 0x0029, csa_block, SIEMENS_CSA, 0x08, "CS", "IMAGE NUM 4")
                add_private(ds, 0x0029, csa_block, SIEMENS_CSA, 0x10, "OB", blob)
        else:
            add_private(ds, 0x0029, 0x10, SIEMENS_MED, 0x08, "LO", se.operators[0].natural)
        if se.kind == "mr-dwi":
            add_private(ds, 0x0019, 0x10, SIEMENS_MR, 0x0D, "CS", "DIRECTIONAL")
    if ctx.vendor == "GE" and se.kind == "mr-dwi":
        ds.add_new(0x00430010, "LO", GE_PARM)  # creator of the per-instance b-value element
    if p.flags["acme"]:
        add_private(ds, 0x0011, 0x10, ACME, 0x10, "PN", p.person.pn)
        add_private(ds, 0x0011, 0x10, ACME, 0x11, "LO", p.patient_id)
        add_private(ds, 0x0011, 0x10, ACME, 0x12, "DA", _da(p.birth_date))
        add_private(ds, 0x0011, 0x10, ACME, 0x13, "UI", ctx.study.uid)


def _pixel_module(ds: Dataset, rows: int, cols: int, bits_stored: int, signed: bool,
                  bits_allocated: int = 16) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0


# ----------------------------------------------------------------------------------------------
# writing instances


class _SeriesWriter:
    """Writes the instances of one series and records their manifest entries."""

    def __init__(self, out_root: Path, ctx: _Ctx, static: Dataset, out: SiteOutput) -> None:
        se, site = ctx.series, ctx.plan.site
        self.ctx, self.out, self.root = ctx, out, out_root
        self.ts = se.transfer_syntax
        self.static = static
        self.encoder = SeriesEncoder(static, self.ts)
        vendor_impl = stable_uid("implementation-class", "pacs", site.vendor)
        self.meta = MetaEncoder(static.SOPClassUID, self.ts, vendor_impl,
                                f"{site.ae_title}_32"[:16], site.ae_title)
        if se.preamble_junk:
            junk = ascii_fold(f"{site.institution} {site.devices['CT'].station} "
                              f"{site.ae_title} ").encode("ascii", "replace")
            self.preamble = (junk * (128 // len(junk) + 1))[:128]
        else:
            self.preamble = b"\0" * 128
        (out_root / Path(se.files[0]).parent).mkdir(parents=True, exist_ok=True)
        out.n_series += 1

    def write(self, i: int, dyn: list[Any], pixels: np.ndarray, *,
              burned: list[str] | None = None,
              boxes: list[list[int]] | None = None, lesion_box: list[int] | None = None,
              lesion_slices: list[int] | None = None, extra: dict[str, Any] | None = None,
              ) -> None:
        se = self.ctx.series
        uid = se.sop_uids[i]
        dyn = [*dyn, (0x00080018, "UI", uid), (0x00200013, "IS", str(i + 1)),
               (0x00280301, "CS", "YES" if burned else "NO"), self._pixel_element(pixels)]
        body = self.encoder.encode(dyn)
        data = assemble(self.preamble, self.meta.encode(uid), body)
        rel = se.files[i]
        (self.root / rel).write_bytes(data)
        self.out.n_files += 1
        self.out.n_bytes += len(data)
        if burned:
            self.out.n_burned += 1
        if self.ts in COMPRESSED:
            self.out.n_compressed += 1
        entry = {
            "patient_id": self.ctx.patient.patient_id,
            "sop_class_uid": str(self.static.SOPClassUID),
            "sop_instance_uid": uid,
            "series_instance_uid": se.uid,
            "study_instance_uid": self.ctx.study.uid,
            "modality": str(self.static.Modality),
            "instance_number": i + 1,
            "transfer_syntax": self.ts,
            "burned_in_text": list(burned or []),
            "burned_in_boxes": [list(b) for b in (boxes or [])],
            "lesion": lesion_box is not None,
            "lesion_box": lesion_box,
            "lesion_slices": lesion_slices,
        }
        if extra:
            entry.update(extra)
        self.out.files[rel] = entry

    def _pixel_element(self, pixels: np.ndarray) -> tuple[int, str, bytes]:
        st = self.static
        if self.ts in COMPRESSED:
            mini = Dataset()
            mini.file_meta = FileMetaDataset()
            mini.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            for kw in ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
                       "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
                setattr(mini, kw, st[kw].value)
            mini.PixelData = pixels.tobytes()
            plugin = "pylibjpeg" if self.ts == RLE else ""
            mini.compress(self.ts, pixels, encoding_plugin=plugin, generate_instance_uid=False)
            return (0x7FE00010, "OB", Encapsulated(mini.PixelData))
        vr = "OB" if pixels.dtype.itemsize == 1 else "OW"
        little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
        return (0x7FE00010, vr, little.tobytes())


# ----------------------------------------------------------------------------------------------
# modalities


def _ct_static(ctx: _Ctx, rows: int, cols: int, localizer: bool) -> Dataset:
    ds = _common(ctx, SOP_CLASSES["CT"])
    ge = ctx.vendor == "GE"
    chest = ctx.patient.cancer_type == "lung"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    _pixel_module(ds, rows, cols, 16 if ge else 12, ge)
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    if ge and not localizer:
        ds.add_new(0x00280120, "SS", -2000)  # Pixel Padding Value
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "541"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "162"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500" if not localizer else "3000"
    ds.XRayTubeCurrent = "220" if not localizer else "35"
    ds.Exposure = "110" if not localizer else "105"
    ds.FilterType = "BODY FILTER" if ge else "FLAT"
    ds.GeneratorPower = "26"
    ds.FocalSpots = "0.7"
    ds.ConvolutionKernel = ("LUNG" if chest else "STANDARD") if ge else ("B70f" if chest else
                                                                           "Br40")
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.FrameOfReferenceUID = ctx.series.frame_of_reference_uid
    if ctx.patient.cancer_type == "colorectal":
        ds.ContrastBolusAgent = "IOMEPROL 350"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "90"
    if localizer:
        ds.WindowCenter, ds.WindowWidth = "600", "2600"
    elif chest:
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    else:
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    if not localizer:
        ds.SingleCollimationWidth = 0.625
        ds.TotalCollimationWidth = 40.0
        ds.TableSpeed = 78.75
        ds.TableFeedPerRotation = 39.375
        ds.SpiralPitchFactor = 0.984
        ds.CTDIvol = 7.5 if chest else 11.2
    return ds


def _store_ct(hu: np.ndarray, ge: bool) -> np.ndarray:
    stored = np.rint(hu + 1024.0)
    if ge:
        out = np.clip(stored, -1024, 3071).astype("<i2")
        h, w = hu.shape[-2:]
        yy, xx = np.ogrid[:h, :w]
        outside = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > (min(h, w) / 2) ** 2
        out[..., outside] = -2000
        return out
    return np.clip(stored, 0, 4095).astype("<u2")


def _render_ct(ctx: _Ctx, localizer: SeriesPlan, axial: SeriesPlan, root: Path,
               out: SiteOutput) -> dict[str, Any]:
    p, st = ctx.patient, ctx.study
    seed = ctx.seed
    rng = np_rng(seed, "ct", p.site.name, p.j, st.index)
    size, thickness = 256, 5.0
    ps = float(rng.uniform(1.30, 1.45))
    n = axial.n
    fn = ph.ct_chest if p.cancer_type == "lung" else ph.ct_abdomen
    vol = fn(rng, n, size, ps, thickness, p.lesion_geometry, st.lesion_scale, p.female)
    hu = vol.channels["hu"]
    ge = ctx.vendor == "GE"
    x0 = -(size - 1) / 2 * ps + float(rng.uniform(-4, 4))
    y0 = -(size - 1) / 2 * ps + float(rng.uniform(-25, -5))
    z_top = float(rng.uniform(-60, 40))
    # localizer (coronal projection)
    lctx = _Ctx(seed, ctx.plan, p, st, localizer, ctx.vendor, "CT")
    static = _ct_static(lctx, 256, 256, localizer=True)
    z_extent = n * thickness  # the projection spans the scanned range
    static.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    static.ImagePositionPatient = [_ds(x0), "0", _ds(z_top + thickness / 2)]
    static.PixelSpacing = [_ds(z_extent / 256), _ds(ps * size / 256)]
    static.SliceThickness = ""
    writer = _SeriesWriter(root, lctx, static, out)
    proj = ph.ct_localizer(hu, 256, 256)
    dyn = _times(st.date, localizer.time, 0.0, 5.0)
    pixels = np.clip(np.rint(proj + 1024.0), 0, 3071).astype("<i2" if ge else "<u2")
    writer.write(0, dyn, pixels)
    localizer_ref = (static.SOPClassUID, localizer.sop_uids[0])
    # axial series
    actx = _Ctx(seed, ctx.plan, p, st, axial, ctx.vendor, "CT")
    static = _ct_static(actx, size, size, localizer=False)
    static.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    static.PixelSpacing = [_ds(ps), _ds(ps)]
    static.SliceThickness = _ds(thickness)
    static.SpacingBetweenSlices = _ds(thickness)
    static.ReconstructionDiameter = _ds(ps * size)
    ref = Dataset()
    ref.ReferencedSOPClassUID = localizer_ref[0]
    ref.ReferencedSOPInstanceUID = localizer_ref[1]
    static.ReferencedImageSequence = DicomSequence([ref])
    writer = _SeriesWriter(root, actx, static, out)
    stored = _store_ct(hu, ge)
    truth = vol.lesion
    slices = truth.slices if truth else None
    for k in range(n):
        z = z_top - k * thickness
        dyn = _times(st.date, axial.time, 20 + 0.5 * k, 30.0)
        dyn += _position(x0, y0, z)
        if ge:
            block = 0x11 if axial.block_shift else 0x10
            dyn.append((0x00190000 | (block << 8) | 0x24, "DS", _ds(0.5 * k + 1.0)))
        box = truth.boxes.get(k) if truth else None
        writer.write(k, dyn, stored[k], lesion_box=box, lesion_slices=slices,
                     extra={"slice_index": k})
    key = slices[0] + (slices[1] - slices[0]) // 2 if slices else n // 2
    window = (-600.0, 1500.0) if p.cancer_type == "lung" else (40.0, 400.0)
    return {"image": hu[key], "window": window, "sop_class": static.SOPClassUID,
            "sop_uid": axial.sop_uids[key], "box": truth.boxes.get(key) if truth else None}


def _mr_static(ctx: _Ctx, rows: int, cols: int, ps: float, thickness: float,
               spacing: float) -> Dataset:
    ds = _common(ctx, SOP_CLASSES["MR"])
    siemens = ctx.vendor == "SIEMENS"
    kind = ctx.series.kind
    _pixel_module(ds, rows, cols, 12, False)
    ds.PatientPosition = "FFS"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(ps), _ds(ps)]
    ds.SliceThickness = _ds(thickness)
    ds.SpacingBetweenSlices = _ds(spacing)
    ds.FrameOfReferenceUID = ctx.series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.MagneticFieldStrength = "3"
    ds.ImagingFrequency = "123.2" if siemens else "127.7"
    ds.ImagedNucleus = "1H"
    ds.MRAcquisitionType = "2D"
    ds.NumberOfAverages = "2"
    ds.EchoNumbers = "1"
    ds.ReceiveCoilName = "Body_18" if siemens else "32Ch Body"
    ds.TransmitCoilName = "Body" if siemens else "BODY"
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.AcquisitionNumber = 1
    ds.dBdt = "0"
    if kind == "mr-t2":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = ["SK", "SP", "OSP"]
        ds.ScanOptions = "PFP"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "4520", "104", "25"
        ds.FlipAngle = "160"
        ds.PixelBandwidth = "200"
        ds.AcquisitionMatrix = [0, 320, 256, 0]
        if siemens:
            ds.SequenceName = "*tse2d1_25"
        ds.WindowCenter, ds.WindowWidth = "700", "1400"
    elif kind == "mr-dwi":
        ds.ImageType = (["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"] if siemens
                        else ["ORIGINAL", "PRIMARY", "OTHER"])
        ds.ScanningSequence = "EP"
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = "FS"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "4000", "64", "1"
        ds.FlipAngle = "90"
        ds.PixelBandwidth = "1500"
        ds.AcquisitionMatrix = [0, 128, 128, 0]
        if siemens:
            ds.SequenceName = "*ep_b50t"
        ds.WindowCenter, ds.WindowWidth = "300", "600"
    else:
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
        ds.ScanningSequence = "EP"
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = "FS"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "4000", "64", "1"
        ds.AcquisitionMatrix = [0, 128, 128, 0]
        ds.DerivationDescription = "ADC map from b 50 and b 800 s/mm2"
        ds.WindowCenter, ds.WindowWidth = "1200", "2000"
    return ds


def _render_mr(ctx: _Ctx, t2: SeriesPlan, dwi: SeriesPlan, adc: SeriesPlan, root: Path,
               out: SiteOutput) -> dict[str, Any]:
    p, st, seed = ctx.patient, ctx.study, ctx.seed
    rng = np_rng(seed, "mr", p.site.name, p.j, st.index)
    siemens = ctx.vendor == "SIEMENS"
    cx_pat, cy_pat = float(rng.uniform(-6, 6)), float(rng.uniform(-40, -10))
    zc = float(rng.uniform(-120, -60))
    # T2 grid
    n2, size2, ps2, sp2, th2 = t2.n, 192, float(rng.uniform(0.86, 0.96)), 3.3, 3.0
    z_len = (n2 - 1) * sp2
    z_top = zc + z_len / 2
    xs = (np.arange(size2) - (size2 - 1) / 2) * ps2
    zs2 = z_top - np.arange(n2) * sp2
    vol2 = ph.mr_prostate(rng, xs, xs, zs2, z_top, z_len, p.lesion_geometry, st.lesion_scale)
    tctx = _Ctx(seed, ctx.plan, p, st, t2, ctx.vendor, "MR")
    static = _mr_static(tctx, size2, size2, ps2, th2, sp2)
    writer = _SeriesWriter(root, tctx, static, out)
    img = np.clip(np.rint(vol2.channels["t2"]), 0, 4095).astype("<u2")
    truth = vol2.lesion
    slices = truth.slices if truth else None
    for k in range(n2):
        dyn = _times(st.date, t2.time, 4.0 * k, 240.0)
        dyn += _position(xs[0] + cx_pat, xs[0] + cy_pat, zs2[k])
        box = truth.boxes.get(k) if truth else None
        writer.write(k, dyn, img[k], lesion_box=box, lesion_slices=slices,
                     extra={"slice_index": k})
    key = slices[0] + (slices[1] - slices[0]) // 2 if slices else n2 // 2
    sc_source = {"image": vol2.channels["t2"][key], "window": (700.0, 1400.0),
                 "sop_class": static.SOPClassUID, "sop_uid": t2.sop_uids[key],
                 "box": truth.boxes.get(key) if truth else None}
    # DWI grid (b50, b800) and ADC
    nd = int(dwi.params["slices"])
    size_d, spd, thd = 128, 4.0, 3.5
    psd = ps2 * size2 / size_d
    xd = (np.arange(size_d) - (size_d - 1) / 2) * psd
    zsd = zc + ((nd - 1) / 2 - np.arange(nd)) * spd
    vold = ph.mr_prostate(rng, xd, xd, zsd, z_top, z_len, p.lesion_geometry, st.lesion_scale,
                          (50, 800))
    truth_d = vold.lesion
    slices_d = truth_d.slices if truth_d else None
    dctx = _Ctx(seed, ctx.plan, p, st, dwi, ctx.vendor, "MR")
    static = _mr_static(dctx, size_d, size_d, psd, thd, spd)
    writer = _SeriesWriter(root, dctx, static, out)
    dwi_sop = static.SOPClassUID
    for i in range(2 * nd):
        b = 50 if i < nd else 800
        k = i % nd
        dyn = _times(st.date, dwi.time, 3.0 * k + (60.0 if b == 800 else 0.0), 200.0)
        dyn += _position(xd[0] + cx_pat, xd[0] + cy_pat, zsd[k])
        if siemens:
            dyn.append((0x0019100C, "IS", str(b)))  # SIEMENS MR HEADER B_value
        else:
            dyn.append((0x00189087, "FD", float(b)))  # Diffusion b-value
            dyn.append((0x00431039, "IS", [str(b), "8", "0", "0"]))  # GEMS_PARM_01
        pixels = np.clip(np.rint(vold.channels[f"b{b}"][k]), 0, 4095).astype("<u2")
        box = truth_d.boxes.get(k) if truth_d else None
        writer.write(i, dyn, pixels, lesion_box=box, lesion_slices=slices_d,
                     extra={"slice_index": k, "b_value": b})
    actx = _Ctx(seed, ctx.plan, p, st, adc, ctx.vendor, "MR")
    static = _mr_static(actx, size_d, size_d, psd, thd, spd)
    writer = _SeriesWriter(root, actx, static, out)
    adc_px = np.clip(np.rint(vold.channels["adc"]), 0, 4095).astype("<u2")
    for k in range(nd):
        dyn = _times(st.date, dwi.time, 3.0 * k, 400.0)
        dyn += _position(xd[0] + cx_pat, xd[0] + cy_pat, zsd[k])
        refs = []
        for i in (k, k + nd):
            ref = Dataset()
            ref.ReferencedSOPClassUID = dwi_sop
            ref.ReferencedSOPInstanceUID = dwi.sop_uids[i]
            refs.append(ref)
        dyn.append(DataElement(0x00082112, "SQ", DicomSequence(refs)))
        box = truth_d.boxes.get(k) if truth_d else None
        writer.write(k, dyn, adc_px[k], lesion_box=box, lesion_slices=slices_d,
                     extra={"slice_index": k})
    return sc_source


_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_ORIENT = {("R", "CC"): ["P", "L"], ("L", "CC"): ["A", "R"], ("R", "MLO"): ["P", "FL"],
           ("L", "MLO"): ["A", "FR"]}


def _render_mg(ctx: _Ctx, series: SeriesPlan, root: Path, out: SiteOutput) -> dict[str, Any]:
    p, st, seed = ctx.patient, ctx.study, ctx.seed
    rng = np_rng(seed, "mg", p.site.name, p.j, st.index)
    rows, cols, ps = 640, 512, 0.4
    breast = {"depth": float(rng.uniform(0.56, 0.68)), "half": float(rng.uniform(0.36, 0.4)),
              "density": float(rng.uniform(0.3, 0.7)), "pect": float(rng.uniform(0.35, 0.5))}
    ds = _common(ctx, SOP_CLASSES["MG"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    _pixel_module(ds, rows, cols, 12, False)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.WindowCenter, ds.WindowWidth = "2000", "2600"
    ds.VOILUTFunction = "SIGMOID" if ctx.vendor == "GE" else "LINEAR"
    ds.ImagerPixelSpacing = [_ds(ps), _ds(ps)]
    ds.PixelSpacing = [_ds(ps), _ds(ps)]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.EstimatedRadiographicMagnificationFactor = "1.07"
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "DET01"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.AnatomicRegionSequence = DicomSequence([_code("76752008", "SCT", "Breast")])
    ds.KVP = "29"
    ds.ExposureTime = "1100"
    ds.XRayTubeCurrent = "100"
    ds.Exposure = "110"
    ds.AnodeTargetMaterial = "TUNGSTEN"
    ds.FilterMaterial = "SILVER" if ctx.vendor == "GE" else "RHODIUM"
    ds.DistanceSourceToDetector = "660"
    ds.DistanceSourceToPatient = "640"
    ds.QualityControlImage = "NO"
    ds.AcquisitionNumber = 1
    if unit(seed, "acq-context", p.site.name, p.j, st.index) < 0.5:
        item = Dataset()
        item.ValueType = "PNAME"
        item.ConceptNameCodeSequence = DicomSequence([_code("121008", "DCM",
                                                            "Person Observer Name")])
        item.PersonName = series.operators[0].pn
        ds.AcquisitionContextSequence = DicomSequence([item])
    else:
        ds.AcquisitionContextSequence = DicomSequence([])
    writer = _SeriesWriter(root, ctx, ds, out)
    geometry = p.lesion_geometry
    sc_source: dict[str, Any] = {}
    for i, (lat, view) in enumerate(_VIEWS):
        side = "right" if lat == "R" else "left"
        vol = ph.mg_view(rng, rows, cols, ps, view, side, breast, geometry, st.lesion_scale)
        img = vol.channels["mg"]
        burned: list[str] | None = None
        boxes: list[list[int]] | None = None
        if (p.j + st.index + i) % _MG_BURNED_FRACTION_PERIOD == 0:
            corner_v = "l" if lat == "R" else "r"
            top = [p.person.burned, f"ID: {p.patient_id}", f"DOB: {p.birth_date:%Y-%m-%d}"]
            bottom = [f"{st.date:%Y-%m-%d} {st.time:%H:%M}", f"{lat} {view}"]
            boxes = burn_text(img, top, "t" + corner_v, 4095.0, box_background=45.0)
            boxes += burn_text(img, bottom, "b" + corner_v, 4095.0, box_background=45.0)
            burned = top + bottom
        pixels = np.clip(np.rint(img), 0, 4095).astype("<u2")
        code = ("399162004", "cranio-caudal") if view == "CC" else ("399368009",
                                                                    "medio-lateral oblique")
        view_item = _code(code[0], "SCT", code[1])
        view_item.ViewModifierCodeSequence = DicomSequence([])
        dyn = _times(st.date, series.time, 45.0 * i, 10.0)
        dyn += [
            (0x00200062, "CS", lat),
            (0x00185101, "CS", view),
            DataElement(0x00540220, "SQ", DicomSequence([view_item])),
            (0x00200020, "CS", _ORIENT[(lat, view)]),
            (0x00181510, "DS", "0" if view == "CC" else ("45" if lat == "R" else "-45")),
            (0x001811A0, "DS", _ds(float(rng.uniform(38, 62)))),
            (0x001811A2, "DS", _ds(float(rng.uniform(70, 130)))),
        ]
        box = vol.lesion.boxes.get(0) if vol.lesion else None
        writer.write(i, dyn, pixels, burned=burned, boxes=boxes, lesion_box=box,
                     extra={"view": f"{lat}{view}"})
        if not sc_source or (box is not None and sc_source["box"] is None):
            sc_source = {"image": img, "window": (2000.0, 2600.0), "sop_class": ds.SOPClassUID,
                         "sop_uid": series.sop_uids[i], "box": box}
    return sc_source


def _render_sc(ctx: _Ctx, series: SeriesPlan, source: dict[str, Any], root: Path,
               out: SiteOutput) -> None:
    p, st, site = ctx.patient, ctx.study, ctx.plan.site
    size = 512
    img = source["image"]
    center, width = source["window"]
    h, w = img.shape
    scale = min(size / h, size / w)
    nh, nw = int(h * scale), int(w * scale)
    ri = np.clip((np.arange(nh) / scale).astype(np.int64), 0, h - 1)
    ci = np.clip((np.arange(nw) / scale).astype(np.int64), 0, w - 1)
    resized = img[ri][:, ci]
    windowed = np.clip((resized - (center - width / 2)) / width * 255.0, 0, 255)
    canvas = np.zeros((size, size), np.float32)
    oy, ox = (size - nh) // 2, (size - nw) // 2
    canvas[oy:oy + nh, ox:ox + nw] = windowed
    top_left = [p.person.burned, f"ID: {p.patient_id}", f"DOB: {p.birth_date:%Y-%m-%d}",
                f"{st.date:%Y-%m-%d} {st.time:%H:%M}"]
    bottom_left = ["KEY IMAGE", f"W {width:.0f} L {center:.0f}"]
    bottom_right = [ascii_fold(site.city).upper(), site.devices["OT"].station]
    boxes = burn_text(canvas, top_left, "tl", 255.0, box_background=0.0)
    boxes += burn_text(canvas, bottom_left, "bl", 255.0, box_background=0.0)
    boxes += burn_text(canvas, bottom_right, "br", 255.0, box_background=0.0)
    lines = top_left + bottom_left + bottom_right
    box = source["box"]
    lesion_box = None
    if box is not None:
        lesion_box = [int(box[0] * scale) + oy, int(box[1] * scale) + ox,
                      math.ceil(box[2] * scale) + oy, math.ceil(box[3] * scale) + ox]
    ds = _common(ctx, SOP_CLASSES["SC"])
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    device = site.devices["OT"]
    ds.SecondaryCaptureDeviceManufacturer = device.manufacturer
    ds.SecondaryCaptureDeviceManufacturerModelName = device.model
    ds.SecondaryCaptureDeviceSoftwareVersions = device.software
    capture = st.date + _dt.timedelta(days=1)
    ds.DateOfSecondaryCapture = _da(capture)
    ds.TimeOfSecondaryCapture = _tm(series.time, 3600)
    ds.PatientOrientation = ""
    _pixel_module(ds, size, size, 8, False, bits_allocated=8)
    ds.LossyImageCompression = "00"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source["sop_class"]
    ref.ReferencedSOPInstanceUID = source["sop_uid"]
    ds.SourceImageSequence = DicomSequence([ref])
    contrib = Dataset()
    contrib.PurposeOfReferenceCodeSequence = DicomSequence([_code("109102", "DCM",
                                                                  "Processing Equipment")])
    contrib.Manufacturer = device.manufacturer
    contrib.InstitutionName = site.institution
    contrib.StationName = device.station
    contrib.OperatorsName = st.reading.pn
    contrib.ContributionDescription = "Key image capture"
    ds.ContributingEquipmentSequence = DicomSequence([contrib])
    writer = _SeriesWriter(root, ctx, ds, out)
    dyn: list[Any] = [(0x00080033, "TM", _tm(series.time, 3600))]
    writer.write(0, dyn, np.rint(canvas).astype(np.uint8), burned=lines, boxes=boxes,
                 lesion_box=lesion_box)


# ----------------------------------------------------------------------------------------------
# site


def render_site(seed: int, plan: SitePlan, root: Path,
                on_patient: Callable[[], None] | None = None) -> SiteOutput:
    """Write every file of `plan` under `root` (``<out>/<site>``) and collect its manifest."""
    out = SiteOutput()
    site = plan.site
    for p in plan.patients:
        studies = []
        for st in p.studies:
            out.n_studies += 1
            by_kind = {s.kind: s for s in st.series}
            vendor = site.mr_vendor if p.cancer_type == "prostate" else site.vendor
            dev = {"lung": "CT", "colorectal": "CT", "prostate": "MR", "breast": "MG"}[
                p.cancer_type]
            first = st.series[0]
            ctx = _Ctx(seed, plan, p, st, first, vendor, dev)
            if p.cancer_type in ("lung", "colorectal"):
                axial = by_kind["ct-chest" if p.cancer_type == "lung" else "ct-abdomen"]
                source = _render_ct(ctx, by_kind["ct-localizer"], axial, root, out)
            elif p.cancer_type == "prostate":
                source = _render_mr(ctx, by_kind["mr-t2"], by_kind["mr-dwi"], by_kind["mr-adc"],
                                    root, out)
            else:
                ctx.series = by_kind["mg"]
                source = _render_mg(ctx, by_kind["mg"], root, out)
            if "sc" in by_kind:
                sctx = _Ctx(seed, plan, p, st, by_kind["sc"], site.vendor, "OT")
                _render_sc(sctx, by_kind["sc"], source, root, out)
            studies.append({
                "study_instance_uid": st.uid,
                "study_date": _da(st.date),
                "accession_number": st.accession,
                "study_id": st.study_id,
                "series": [{
                    "series_instance_uid": s.uid,
                    "modality": "OT" if s.kind == "sc" else s.modality,
                    "series_description": s.description,
                    "kind": s.kind,
                    "transfer_syntax": s.transfer_syntax,
                    "files": list(s.files),
                } for s in st.series],
            })
        out.patients.append({
            "patient_id": p.patient_id,
            "issuer_of_patient_id": site.mrn_issuer,
            "cancer_type": p.cancer_type,
            "lesion": p.lesion,
            "lesion_geometry": {k: v for k, v in p.lesion_geometry.items() if k != "present"},
            "phi_tokens": p.phi_tokens(),
            "phi_dates": p.phi_dates(),
            "studies": studies,
        })
        if on_patient is not None:
            on_patient()
    return out

