"""Annotation objects as an annotator's tool writes them (highdicom): SEG, SR, KOS.

Each builder takes the source images (pydicom datasets read from a node) and returns a
pydicom Dataset ready for STOW-RS. They copy the patient and study attributes of the
source the way real tools do, so a test can start from a well-formed object and plant
exactly the fault it is about. highdicom shares data elements with its source datasets, so
each builder works on deep copies: changing the result never changes the sources.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

__all__ = ["make_kos", "make_seg", "make_sr"]

_DEVICE = {"manufacturer": "INCISIVE Lab tests", "manufacturer_model_name": "annotator",
           "software_versions": "1", "device_serial_number": "1"}


def make_seg(sources: Sequence[Dataset], *, label: str = "lesion", series_uid: str | None = None) -> Dataset:
    """A binary DICOM SEG of a small cube over the middle source slices."""
    import highdicom as hd

    images = sorted((copy.deepcopy(s) for s in sources), key=lambda d: float(d.ImagePositionPatient[2]) if "ImagePositionPatient" in d
                    else int(d.get("InstanceNumber", 0)))
    mask = np.zeros((len(images), int(images[0].Rows), int(images[0].Columns)), dtype=bool)
    mid = len(images) // 2
    r, c = mask.shape[1] // 2, mask.shape[2] // 2
    mask[max(0, mid - 1):mid + 2, r - 4:r + 4, c - 4:c + 4] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(
        source_images=images, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=series_uid or generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, **_DEVICE)


def make_sr(sources: Sequence[Dataset], *, text: str = "spiculated mass", series_uid: str | None = None,
            observer: str = "annotator") -> Dataset:
    """A Comprehensive SR naming a finding on the first source image (TID 1500-like content)."""
    import highdicom as hd
    from highdicom.sr import (
        CodedConcept,
        ContainerContentItem,
        ImageContentItem,
        RelationshipTypeValues,
        TextContentItem,
    )

    sources = [copy.deepcopy(s) for s in sources]
    source = sources[0]
    title = CodedConcept("126000", "DCM", "Imaging Measurement Report")
    root = ContainerContentItem(name=title, template_id="1500")
    root.ContentSequence = [
        TextContentItem(name=CodedConcept("121071", "DCM", "Finding"), value=text,
                        relationship_type=RelationshipTypeValues.CONTAINS),
        ImageContentItem(name=CodedConcept("260753009", "SCT", "Source"),
                         referenced_sop_class_uid=source.SOPClassUID,
                         referenced_sop_instance_uid=source.SOPInstanceUID,
                         relationship_type=RelationshipTypeValues.CONTAINS),
    ]
    observer_context = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121006", "DCM", "Person"),
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=observer))
    root.ContentSequence.extend(observer_context)
    return hd.sr.ComprehensiveSR(
        evidence=list(sources), content=root, series_instance_uid=series_uid or generate_uid(),
        series_number=901, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=_DEVICE["manufacturer"], is_complete=True, is_final=True)


def make_kos(sources: Sequence[Dataset], *, series_uid: str | None = None) -> Dataset:
    """A Key Object Selection flagging the source images as 'For Teaching'."""
    import highdicom as hd

    sources = [copy.deepcopy(s) for s in sources]
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(sources),
        content=hd.ko.KeyObjectSelection(document_title=hd.sr.CodedConcept("113004", "DCM", "For Teaching"),
                                         referenced_objects=list(sources)),
        series_instance_uid=series_uid or generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=_DEVICE["manufacturer"])
