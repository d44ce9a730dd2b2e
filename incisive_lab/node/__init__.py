"""One provider's node: the store (DICOM objects, index, FHIR store) and dataset records.

The public surface is re-exported here; the service (DICOMweb, FHIR REST) and the ingest
build on it. See ``docs/node-store.md`` for the layout and the guarantees.

Examples
--------
>>> from incisive_lab.node import NodeStore
>>> with NodeStore.open("node") as store:                   # doctest: +SKIP
...     store.add_deidentified("deid-out", rels, dataset="lung-a")
...     store.fhir.put({"resourceType": "Patient", "id": "PSN-1"})
...     store.write_dataset_record("lung-a", hosting="federated", provenance={...},
...                                curation={...})
"""

from __future__ import annotations

from incisive_lab.node._db import SCHEMA_VERSION, SchemaVersionError, StoreError
from incisive_lab.node.dataset import RecordError, build_record, validate_record, write_record
from incisive_lab.node.fhir_store import FhirStore, PutResult, canonical_json
from incisive_lab.node.index import (
    AddResult,
    Counts,
    DatasetInfo,
    IndexSummary,
    InstanceRecord,
    InstanceRow,
    NodeIndex,
    SeriesRow,
    StudyRow,
    extract_record,
)
from incisive_lab.node.store import AddSummary, NodeStore, StoredObject

__all__ = [
    "SCHEMA_VERSION",
    "AddResult",
    "AddSummary",
    "Counts",
    "DatasetInfo",
    "FhirStore",
    "IndexSummary",
    "InstanceRecord",
    "InstanceRow",
    "NodeIndex",
    "NodeStore",
    "PutResult",
    "RecordError",
    "SchemaVersionError",
    "SeriesRow",
    "StoreError",
    "StoredObject",
    "StudyRow",
    "build_record",
    "canonical_json",
    "extract_record",
    "validate_record",
    "write_record",
]
