"""The one door through which federated task code reads a node's data: :class:`CohortReader`.

A task's ``load_data(reader, config)`` receives a reader bound to the node store and to the
run's :class:`~incisive_lab.governance.scope.ReadScope` (the ``train`` scope of the user's
grants for the run's purpose: consenting patients only, ``train-only`` datasets included).
Through it the task lists the patients and series in scope, reads DICOM instances and reads
clinical values from the node's FHIR store. The reader

* lists only what the scope allows (listing never reveals a patient outside it);
* refuses to read anything outside the scope — an instance is looked up in the node's index
  by its SOP Instance UID and judged by the dataset and patient the *index* gives, never by
  what the caller's reference claims — with a :class:`PermissionError` naming the dataset
  and patient;
* checks the object's bytes against the sha256 the index holds before parsing them;
* records every ``(dataset, patient)`` whose data it handed out (:attr:`CohortReader.read_patients`,
  and the ``on_read`` callback), so a test or the node's ledger can show that a withdrawn
  patient was never read.

What it is not: a sandbox. Task code runs in the node's Python process; a task that opened
the node's files itself would bypass the reader. That is why a node runs only task code its
steward approved by hash (:mod:`incisive_lab.fl.task`); the reader is the seam approved code
uses, and the instrument that shows what it read.

Example
-------
>>> reader = CohortReader(store, scope)                                   # doctest: +SKIP
>>> labels = reader.observations("lesion_label")     # {(dataset, patient): "present"}
>>> for ref in reader.series(modality="MG"):
...     for inst in ref.instances:
...         ds = reader.read(inst)                     # pydicom.Dataset
>>> reader.read_patients
{('site-a', 'PSN-...'), ...}
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydicom
from sqlalchemy import and_, select

from incisive_lab.governance.scope import ReadScope
from incisive_lab.node._db import (
    fhir_table,
    instances_table,
    patients_table,
    series_table,
    studies_table,
)
from incisive_lab.node._scope_sql import scope_condition
from incisive_lab.node.store import NodeStore

__all__ = ["CohortReader", "InstanceRef", "SeriesRef"]

#: The mCODE laterality qualifier on a Condition's bodySite (see incisive_lab.cdm).
_MCODE_LATERALITY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-laterality-qualifier"


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One DICOM instance in scope (what :meth:`CohortReader.read` takes)."""

    dataset: str
    patient: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int | None
    sha256: str


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """One series in scope, with its study's date and its instances (in instance order)."""

    dataset: str
    patient: str
    study_uid: str
    study_date: str | None
    series_uid: str
    modality: str | None
    body_part: str | None
    series_description: str | None
    instances: tuple[InstanceRef, ...]


def _decode_concept(column: str, concept: Mapping[str, Any]) -> str | None:
    """A CodeableConcept back to the clinical template's value (``"present"``, ``"left"``)."""
    from incisive_lab.cdm._fhir_rows import ETL_COLUMNS
    from incisive_lab.cdm.codes import system_uris

    col = ETL_COLUMNS.get(column)
    codings = [(c.get("system"), c.get("code")) for c in concept.get("coding") or ()]
    if col is not None and col.values:
        uris = system_uris()
        for value, codes in col.values.items():
            wanted = {(uris.get(c.system), c.code) for c in codes}
            if wanted and wanted & set(codings):
                return value
    text = concept.get("text")
    if isinstance(text, str):
        return text
    return str(codings[0][1]) if codings else None


def _observation_value(column: str, obs: Mapping[str, Any]) -> str | None:
    if isinstance(obs.get("valueCodeableConcept"), Mapping):
        return _decode_concept(column, obs["valueCodeableConcept"])
    if "valueQuantity" in obs:
        return str(obs["valueQuantity"].get("value"))
    for key in ("valueString", "valueInteger", "valueBoolean"):
        if key in obs:
            return str(obs[key])
    return None


class CohortReader:
    """Reads one node's data within one read scope, and records whose data it read.

    Parameters
    ----------
    store
        The open node store.
    scope
        What may be read (the run's ``train`` scope at this node).
    on_read
        Called with ``(dataset, patient)`` each time data of that patient is handed out
        (DICOM instances and FHIR values), before it is returned.

    Attributes
    ----------
    read_patients : set of (str, str)
        Every ``(dataset, patient)`` whose data this reader handed out.
    """

    def __init__(self, store: NodeStore, scope: ReadScope, *,
                 on_read: Callable[[str, str], None] | None = None) -> None:
        if not isinstance(scope, ReadScope):
            raise TypeError(f"scope: expected a ReadScope, got {type(scope).__name__}")
        self._store = store
        self._scope = scope
        self._on_read = on_read
        self.read_patients: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return (f"CohortReader({self._store.dir.name!r}, purpose={self._scope.purpose!r}, "
                f"{len(self.read_patients)} patients read)")

    @property
    def scope(self) -> ReadScope:
        """The read scope this reader enforces."""
        return self._scope

    def _record(self, dataset: str, patient: str) -> None:
        if self._on_read is not None:
            self._on_read(dataset, patient)
        self.read_patients.add((dataset, patient))

    # ---------------------------------------------------------------- listing

    def patients(self) -> list[tuple[str, str]]:
        """``(dataset, pseudonym)`` of every patient in scope the node holds, sorted."""
        pa = patients_table
        q = (select(pa.c.dataset, pa.c.patient_id)
             .where(scope_condition(pa.c.dataset, pa.c.patient_id, self._scope))
             .order_by(pa.c.dataset, pa.c.patient_id))
        with self._store.engine.connect() as conn:
            return [(r.dataset, r.patient_id) for r in conn.execute(q)]

    def series(self, *, modality: str | None = None,
               body_part: str | None = None) -> list[SeriesRef]:
        """Series of the patients in scope, optionally of one modality / body part.

        Ordered by dataset, patient, study date, study, series number; each with its
        instances in instance-number order.

        Parameters
        ----------
        modality
            DICOM Modality (``"MG"``, ``"CT"``...).
        body_part
            DICOM BodyPartExamined as indexed (``"CHEST"``, ``"BREAST"``...), case-insensitive.
        """
        st, se, it = studies_table, series_table, instances_table
        q = (select(st.c.dataset, st.c.patient_id, st.c.study_uid, st.c.study_date,
                    se.c.series_uid, se.c.modality, se.c.body_part, se.c.series_description,
                    se.c.series_number)
             .join(se, and_(se.c.study_uid == st.c.study_uid, se.c.dataset == st.c.dataset))
             .where(scope_condition(st.c.dataset, st.c.patient_id, self._scope)))
        if modality is not None:
            q = q.where(se.c.modality == modality)
        rows_q = q.order_by(st.c.dataset, st.c.patient_id, st.c.study_date, st.c.study_uid,
                            se.c.series_number, se.c.series_uid)
        with self._store.engine.connect() as conn:
            rows = [r for r in conn.execute(rows_q)
                    if body_part is None or (r.body_part or "").upper() == body_part.upper()]
            uids = [r.series_uid for r in rows]
            insts: dict[str, list[Any]] = {}
            for i in range(0, len(uids), 500):
                part = uids[i:i + 500]
                for row in conn.execute(select(it.c.series_uid, it.c.sop_uid, it.c.instance_number,
                                               it.c.sha256).where(it.c.series_uid.in_(part))):
                    insts.setdefault(row.series_uid, []).append(row)
        out = []
        for r in rows:
            members = sorted(insts.get(r.series_uid, ()),
                             key=lambda i: (i.instance_number is None, i.instance_number or 0,
                                            i.sop_uid))
            refs = tuple(InstanceRef(r.dataset, r.patient_id, r.study_uid, r.series_uid, i.sop_uid,
                                     i.instance_number, i.sha256) for i in members)
            out.append(SeriesRef(r.dataset, r.patient_id, r.study_uid, r.study_date, r.series_uid,
                                 r.modality, r.body_part, r.series_description, refs))
        return out

    # ---------------------------------------------------------------- reading

    def read(self, ref: InstanceRef) -> pydicom.Dataset:
        """The DICOM instance ``ref`` (pixels included), if its patient is in scope.

        Raises
        ------
        PermissionError
            The instance is not in this node's index, or its dataset and patient (as the
            index records them) are outside the scope; the message names them.
        OSError
            The object is missing or its bytes do not match the indexed sha256.
        """
        it, st = instances_table, studies_table
        q = (select(it.c.sha256, st.c.dataset, st.c.patient_id)
             .join(st, st.c.study_uid == it.c.study_uid)
             .where(it.c.sop_uid == getattr(ref, "sop_uid", None)))
        with self._store.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise PermissionError(f"instance {getattr(ref, 'sop_uid', ref)!r}: not held by this node")
        if not self._scope.allows(row.dataset, row.patient_id):
            raise PermissionError(f"dataset {row.dataset!r}, patient {row.patient_id!r}: outside "
                                  f"the run's read scope (purpose {self._scope.purpose!r})")
        path = self._store.object_path(row.sha256)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise OSError(f"{path}: content does not match its indexed sha256")
        self._record(row.dataset, row.patient_id)
        return pydicom.dcmread(io.BytesIO(data))

    def resources(self, resource_type: str) -> list[tuple[str, str, dict[str, Any]]]:
        """``(dataset, patient, resource)`` for every FHIR resource of the type in scope.

        Resources without a patient are never in a scope. Ordered by dataset, patient, id.
        """
        out = self._fhir(resource_type)
        for dataset, patient, _ in out:
            self._record(dataset, patient)
        return out

    def _fhir(self, resource_type: str) -> list[tuple[str, str, dict[str, Any]]]:
        """As :meth:`resources`, recording nothing (the caller records what it hands out)."""
        t = fhir_table
        q = (select(t.c.dataset, t.c.patient_ref, t.c.content)
             .where(t.c.resource_type == resource_type,
                    scope_condition(t.c.dataset, t.c.patient_ref, self._scope, prefix="Patient/"))
             .order_by(t.c.dataset, t.c.patient_ref, t.c.id))
        with self._store.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            patient = str(r.patient_ref).removeprefix("Patient/")
            if not self._scope.allows(r.dataset, patient):  # the SQL said so; say it again
                continue
            out.append((r.dataset, patient, json.loads(r.content)))
        return out

    def observations(self, code_or_name: str) -> dict[tuple[str, str], str]:
        """One Observation's value per patient in scope, as text.

        Parameters
        ----------
        code_or_name
            A clinical template column (``"lesion_label"``, ``"clinical_t"``...; coded values
            come back as the template's values, e.g. ``"present"``/``"absent"``), or a code
            of the Observation's ``code`` (e.g. a LOINC code).
        """
        from incisive_lab.cdm._fhir_resources import resource_id
        from incisive_lab.cdm._fhir_rows import ETL_COLUMNS

        if not isinstance(code_or_name, str) or not code_or_name:
            raise ValueError("code_or_name: expected a template column name or a code")
        by_name = code_or_name in ETL_COLUMNS
        out: dict[tuple[str, str], str] = {}
        for dataset, patient, obs in self._fhir("Observation"):
            if by_name:
                if obs.get("id") != resource_id(patient, f"Observation/{code_or_name}"):
                    continue
            elif code_or_name not in {c.get("code") for c in obs.get("code", {}).get("coding", ())}:
                continue
            value = _observation_value(code_or_name, obs)
            if value is not None:
                self._record(dataset, patient)
                out[(dataset, patient)] = value
        return out

    def laterality(self) -> dict[tuple[str, str], str]:
        """The primary cancer's side (``"left"``/``"right"``) per patient in scope that has one.

        From the Condition's ``bodySite`` mCODE laterality qualifier.
        """
        out: dict[tuple[str, str], str] = {}
        for dataset, patient, cond in self._fhir("Condition"):
            for site in cond.get("bodySite") or ():
                for ext in site.get("extension") or ():
                    if ext.get("url") == _MCODE_LATERALITY:
                        value = _decode_concept("laterality", ext.get("valueCodeableConcept", {}))
                        if value is not None:
                            self._record(dataset, patient)
                            out[(dataset, patient)] = value
        return out
