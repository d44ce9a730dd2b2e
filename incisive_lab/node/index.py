"""The DICOM index of a node: patients, studies, series and instances.

The index holds what DICOMweb QIDO-RS search (PS3.18) and cohort queries need, one row per
patient (``(dataset, pseudonym)``), study, series and instance, with the object's sha256
and size (the key of its file in the object store). It is written through SQLAlchemy Core,
so the same code serves SQLite and PostgreSQL.

* :func:`extract_record` reads an :class:`InstanceRecord` from a de-identified DICOM file
  (the header only, a fixed set of tags).
* :meth:`NodeIndex.add_instances` inserts a batch of records in one transaction; records
  already present are skipped, so re-adding is a no-op.
* The query helpers (:meth:`NodeIndex.counts`, :meth:`NodeIndex.studies`,
  :meth:`NodeIndex.series`, :meth:`NodeIndex.instances`, :meth:`NodeIndex.summary`) serve
  the node service and the dataset record.

Examples
--------
>>> rec = extract_record("objects/ab/ab12....dcm", dataset="lung-a")   # doctest: +SKIP
>>> store.index.add_instances([rec])                                    # doctest: +SKIP
AddResult(patients=1, studies=1, series=1, instances=1)
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection, Engine, Select, and_, exists, func, select, update

from incisive_lab.node._db import (
    StoreError,
    chunks,
    datasets_table,
    insert_ignore,
    instances_table,
    patients_table,
    series_table,
    studies_table,
)
from incisive_lab.node._header import WANTED, HeaderUnsupported, read_header

__all__ = [
    "HOSTING",
    "AddResult",
    "Counts",
    "DatasetInfo",
    "IndexSummary",
    "InstanceRecord",
    "InstanceRow",
    "NodeIndex",
    "SeriesRow",
    "StudyRow",
    "datasets_table",
    "extract_record",
    "instances_table",
    "patients_table",
    "read_attributes",
    "series_table",
    "studies_table",
]

#: Allowed values of a dataset's hosting.
HOSTING = ("federated", "central")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_IN_CHUNK = 500  # parameters per IN (...) (SQLite allows 32,766; stay well below)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything the index stores about one DICOM instance (and its patient/study/series).

    Attribute names follow the DICOM keywords they come from. Strings are ``None`` when the
    attribute is absent or empty.
    """

    dataset: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    size: int
    patient_sex: str | None = None
    birth_year: int | None = None
    patient_age: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part: str | None = None
    body_part_code: str | None = None
    sop_class_uid: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    transfer_syntax_uid: str | None = None

    def check(self) -> None:
        """Raise :class:`StoreError` naming the field when the record cannot be indexed."""
        where = f"instance {self.sop_uid or '?'}"
        for name in ("dataset", "patient_id", "study_uid", "series_uid", "sop_uid"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise StoreError(f"{where}: {name} is missing")
            if len(value) > (128 if name == "dataset" else 64):
                raise StoreError(f"{where}: {name} is too long ({len(value)} characters)")
        for name in ("study_uid", "series_uid", "sop_uid"):
            if not _UID.fullmatch(getattr(self, name)):
                raise StoreError(f"{where}: {name} {getattr(self, name)!r} is not a DICOM UID")
        if not _SHA256.fullmatch(self.sha256 or ""):
            raise StoreError(f"{where}: sha256 {self.sha256!r} is not a lowercase hex sha256")
        if not isinstance(self.size, int) or self.size < 0:
            raise StoreError(f"{where}: size {self.size!r} is not a byte count")


@dataclass(frozen=True, slots=True)
class AddResult:
    """How many rows of each level a call added (0 everywhere when all were present)."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0


@dataclass(frozen=True, slots=True)
class Counts:
    """Numbers of patients, studies, series and instances."""

    patients: int
    studies: int
    series: int
    instances: int


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """A row of the ``datasets`` table."""

    name: str
    hosting: str | None
    title: str | None = None
    description: str | None = None
    country: str | None = None
    publisher: str | None = None


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study with its patient's attributes and the aggregates QIDO-RS returns."""

    study_uid: str
    dataset: str
    patient_id: str
    patient_sex: str | None
    birth_year: int | None
    patient_age: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    modalities_in_study: tuple[str, ...]
    number_of_series: int
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """A series with its number of instances."""

    series_uid: str
    study_uid: str
    dataset: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part: str | None
    body_part_code: str | None
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """An instance and the key of its object."""

    sop_uid: str
    series_uid: str
    study_uid: str
    dataset: str
    sop_class_uid: str | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    transfer_syntax_uid: str | None
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class IndexSummary:
    """What a dataset record needs from the index (see :mod:`incisive_lab.node.dataset`)."""

    counts: Counts
    modalities: tuple[str, ...]
    body_parts: tuple[tuple[str, str | None], ...]      #: (BodyPartExamined, SNOMED CT code)
    cancer_types: tuple[tuple[str, str | None], ...]    #: (SNOMED CT code, display)
    study_date_range: tuple[str, str] | None
    birth_year_range: tuple[int, int] | None
    sexes: tuple[tuple[str, int], ...]                  #: (PatientSex, number of patients)


# --------------------------------------------------------------------------- extraction

def _clean(value: Any, kind: str) -> Any:
    """Normalise a value read by pydicom to what :func:`read_header` returns."""
    if value is None:
        return None
    if kind == "us":
        return int(value)
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    if kind == "int":
        try:
            return int(value) if str(value).strip() else None
        except (TypeError, ValueError):
            return None
    return str(value).strip(" \x00")


def _read_with_pydicom(data: bytes) -> dict[str, Any]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                         specific_tags=[kw for kw, _ in WANTED.values()])
    out: dict[str, Any] = {kw: _clean(ds.get(kw), kind) for kw, kind in WANTED.values()}
    meta = getattr(ds, "file_meta", None)
    out["TransferSyntaxUID"] = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return out


def read_attributes(data: bytes) -> dict[str, Any]:
    """Return the header attributes the index needs, by DICOM keyword.

    The fast reader (:mod:`incisive_lab.node._header`) handles the usual little-endian
    files; anything else is read with pydicom. Both give the same values.
    """
    try:
        return read_header(data)
    except HeaderUnsupported:
        return _read_with_pydicom(data)


def extract_record(
    source: str | os.PathLike[str] | bytes,
    *,
    dataset: str,
    sha256: str | None = None,
    size: int | None = None,
    body_part_codes: Mapping[str, str] | None = None,
) -> InstanceRecord:
    """Read the index record of one de-identified DICOM file.

    Only the header up to (0028,0011) is parsed; pixel data is never decoded. When
    ``source`` is a path it is read once, hashed (unless ``sha256`` is given) and parsed
    from memory.

    Parameters
    ----------
    source
        A file path or the file's bytes.
    dataset
        The dataset the instance belongs to.
    sha256, size
        The object's hash and size when the caller already knows them (e.g. from
        :meth:`incisive_lab.node.store.NodeStore.add_file`); computed otherwise.
    body_part_codes
        ``BodyPartExamined -> SNOMED CT code`` (the curation's normalisation); without
        it, or for a value it lacks, ``body_part_code`` stays ``None``.

    Raises
    ------
    StoreError
        When the file cannot be read, is not DICOM, or lacks an identifying attribute
        (the message names the file and the attribute).
    """
    where = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise StoreError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        attrs = read_attributes(data)
    except (InvalidDicomError, EOFError, ValueError, OSError, struct.error) as exc:
        raise StoreError(f"{where}: not a readable DICOM file: {exc}") from None
    for kw in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not attrs.get(kw):
            raise StoreError(f"{where}: {kw} is missing; the file cannot be indexed")

    def text(kw: str) -> str | None:
        return attrs.get(kw) or None

    birth = text("PatientBirthDate")
    body_part = text("BodyPartExamined")
    record = InstanceRecord(
        dataset=dataset,
        patient_id=attrs["PatientID"],
        study_uid=attrs["StudyInstanceUID"],
        series_uid=attrs["SeriesInstanceUID"],
        sop_uid=attrs["SOPInstanceUID"],
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data) if size is None else size,
        patient_sex=text("PatientSex"),
        birth_year=int(birth[:4]) if birth and birth[:4].isdigit() else None,
        patient_age=text("PatientAge"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        accession_number=text("AccessionNumber"),
        study_id=text("StudyID"),
        study_description=text("StudyDescription"),
        modality=text("Modality"),
        series_number=attrs.get("SeriesNumber"),
        series_description=text("SeriesDescription"),
        body_part=body_part,
        body_part_code=(body_part_codes or {}).get(body_part) if body_part else None,
        sop_class_uid=text("SOPClassUID"),
        instance_number=attrs.get("InstanceNumber"),
        rows=attrs.get("Rows"),
        columns=attrs.get("Columns"),
        number_of_frames=attrs.get("NumberOfFrames"),
        transfer_syntax_uid=text("TransferSyntaxUID"),
    )
    try:
        record.check()
    except StoreError as exc:
        raise StoreError(f"{where}: {exc}") from None
    return record


# --------------------------------------------------------------------------- the index

_PATIENT_COLS = ("dataset", "patient_id", "patient_sex", "birth_year")
_STUDY_COLS = ("study_uid", "dataset", "patient_id", "study_date", "study_time",
               "accession_number", "study_id", "study_description", "patient_age")
_SERIES_COLS = ("series_uid", "study_uid", "dataset", "modality", "series_number",
                "series_description", "body_part", "body_part_code")
_INSTANCE_COLS = ("sop_uid", "series_uid", "study_uid", "dataset", "sop_class_uid",
                  "instance_number", "rows", "columns", "number_of_frames",
                  "transfer_syntax_uid", "sha256", "size")


def _existing(conn: Connection, column: Any, keys: Sequence[Any], *extra: Any) -> dict[Any, Any]:
    """Map each key of ``keys`` present in ``column``'s table to its ``extra`` columns."""
    found: dict[Any, Any] = {}
    for part in chunks(list(keys), _IN_CHUNK):
        for row in conn.execute(select(column, *extra).where(column.in_(part))):
            found[row[0]] = tuple(row[1:])
    return found


class NodeIndex:
    """The DICOM index over a node database (use :attr:`NodeStore.index`).

    Parameters
    ----------
    engine
        The node database's engine (schema already prepared).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _write(self) -> Connection:
        return self._engine.connect().execution_options(write=True)

    # ---------------------------------------------------------------- datasets

    def register_dataset(self, name: str, *, hosting: str, title: str | None = None,
                         description: str | None = None, country: str | None = None,
                         publisher: str | None = None) -> None:
        """Create the dataset ``name`` or update its descriptive fields.

        A dataset's hosting cannot change once set (pseudonymised and anonymised data
        must not mix in one dataset); fields given as ``None`` keep their stored value.

        Raises
        ------
        StoreError
            For an unknown hosting or an attempt to change it.
        """
        if not name or len(name) > 128:
            raise StoreError(f"dataset name {name!r} must have 1 to 128 characters")
        if hosting not in HOSTING:
            raise StoreError(f"dataset {name}: hosting {hosting!r} is not one of {HOSTING}")
        given = {"title": title, "description": description, "country": country,
                 "publisher": publisher}
        with self._write() as conn, conn.begin():
            conn.execute(insert_ignore(conn, datasets_table),
                         [{"name": name, "hosting": hosting, **given}])
            row = conn.execute(select(datasets_table.c.hosting)
                               .where(datasets_table.c.name == name)).one()
            if row.hosting is not None and row.hosting != hosting:
                raise StoreError(f"dataset {name} is hosted {row.hosting!r}; it cannot "
                                 f"become {hosting!r}")
            changes = {k: v for k, v in given.items() if v is not None}
            changes["hosting"] = hosting
            if changes:
                conn.execute(update(datasets_table).where(datasets_table.c.name == name)
                             .values(**changes))

    def dataset(self, name: str) -> DatasetInfo | None:
        """The dataset ``name``, or ``None`` when the node does not hold it."""
        with self._engine.connect() as conn:
            row = conn.execute(select(datasets_table)
                               .where(datasets_table.c.name == name)).one_or_none()
        return DatasetInfo(**row._asdict()) if row is not None else None

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset of the node, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(datasets_table).order_by(datasets_table.c.name)).all()
        return [DatasetInfo(**r._asdict()) for r in rows]

    # ---------------------------------------------------------------- writing

    def add_instances(self, records: Iterable[InstanceRecord]) -> AddResult:
        """Insert a batch of instance records in one transaction.

        Rows already present are skipped (``INSERT ... ON CONFLICT DO NOTHING``), so the
        same batch twice adds nothing. Patient, study and series rows are taken from the
        first record that names them. A dataset not yet known is created without hosting
        (set it with :meth:`register_dataset`).

        Returns
        -------
        AddResult
            The numbers of new patients, studies, series and instances.

        Raises
        ------
        StoreError
            For an invalid record (the message names the instance and field), a study already stored under another dataset, or a SOP
            instance already stored with different bytes. Nothing of the batch is written.
        """
        patients: dict[tuple[str, str], dict[str, Any]] = {}
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        instances: dict[str, dict[str, Any]] = {}
        for rec in records:
            rec.check()
            d = asdict(rec)
            patients.setdefault((rec.dataset, rec.patient_id), {k: d[k] for k in _PATIENT_COLS})
            study = studies.setdefault(rec.study_uid, {k: d[k] for k in _STUDY_COLS})
            if (study["dataset"], study["patient_id"]) != (rec.dataset, rec.patient_id):
                raise StoreError(f"instance {rec.sop_uid}: study {rec.study_uid} is given "
                                 f"for two patients/datasets in one batch")
            one = series.setdefault(rec.series_uid, {k: d[k] for k in _SERIES_COLS})
            if one["study_uid"] != rec.study_uid:
                raise StoreError(f"instance {rec.sop_uid}: series {rec.series_uid} is given "
                                 f"under two studies in one batch")
            prev = instances.setdefault(rec.sop_uid, {k: d[k] for k in _INSTANCE_COLS})
            if prev["sha256"] != rec.sha256:
                raise StoreError(f"instance {rec.sop_uid} is given twice with different "
                                 f"content in one batch")
        if not instances:
            return AddResult()
        with self._write() as conn, conn.begin():
            conn.execute(insert_ignore(conn, datasets_table),
                         [{"name": n} for n in sorted({k[0] for k in patients})])
            old_studies = _existing(conn, studies_table.c.study_uid, list(studies),
                                    studies_table.c.dataset, studies_table.c.patient_id)
            for uid, (ds_name, pid) in old_studies.items():
                new = studies[uid]
                if (new["dataset"], new["patient_id"]) != (ds_name, pid):
                    raise StoreError(f"study {uid} is already stored in dataset {ds_name} "
                                     f"for another patient or dataset")
            old_series = _existing(conn, series_table.c.series_uid, list(series),
                                   series_table.c.study_uid)
            for uid, (study_uid,) in old_series.items():
                if series[uid]["study_uid"] != study_uid:
                    raise StoreError(f"series {uid} is already stored under study {study_uid}")
            old_inst = _existing(conn, instances_table.c.sop_uid, list(instances),
                                 instances_table.c.sha256)
            for uid, (sha,) in old_inst.items():
                if instances[uid]["sha256"] != sha:
                    raise StoreError(f"instance {uid} is already stored with other content "
                                     f"(sha256 {sha}, new {instances[uid]['sha256']})")
            old_patients = self._existing_patients(conn, list(patients))
            new_p = [v for k, v in patients.items() if k not in old_patients]
            new_st = [v for k, v in studies.items() if k not in old_studies]
            new_se = [v for k, v in series.items() if k not in old_series]
            new_in = [v for k, v in instances.items() if k not in old_inst]
            for table, rows in ((patients_table, new_p), (studies_table, new_st),
                                (series_table, new_se), (instances_table, new_in)):
                if rows:
                    conn.execute(insert_ignore(conn, table), rows)
        return AddResult(len(new_p), len(new_st), len(new_se), len(new_in))

    @staticmethod
    def _existing_patients(conn: Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        by_ds: dict[str, list[str]] = {}
        for ds_name, pid in keys:
            by_ds.setdefault(ds_name, []).append(pid)
        for ds_name, pids in by_ds.items():
            for part in chunks(pids, _IN_CHUNK):
                rows = conn.execute(select(patients_table.c.patient_id).where(
                    patients_table.c.dataset == ds_name, patients_table.c.patient_id.in_(part)))
                found.update((ds_name, r[0]) for r in rows)
        return found

    def set_cancer_types(self, dataset: str, types: Mapping[str, tuple[str, str | None]]) -> int:
        """Set the cancer type (SNOMED CT code, display) of patients of ``dataset``.

        Parameters
        ----------
        dataset
            The dataset.
        types
            ``patient_id -> (SNOMED CT code, display)``, from the clinical data.

        Returns
        -------
        int
            The number of patients found (patients not yet indexed are not created).
        """
        changed = 0
        with self._write() as conn, conn.begin():
            for pid, (code, display) in sorted(types.items()):
                res = conn.execute(update(patients_table).where(
                    patients_table.c.dataset == dataset, patients_table.c.patient_id == pid)
                    .values(cancer_type_code=code, cancer_type_display=display))
                changed += res.rowcount
        return changed

    def set_body_part_codes(self, codes: Mapping[str, str], *, dataset: str | None = None) -> int:
        """Set ``body_part_code`` of series whose BodyPartExamined is a key of ``codes``.

        Returns the number of series rows updated (only rows whose code differs).
        """
        changed = 0
        with self._write() as conn, conn.begin():
            for part, code in sorted(codes.items()):
                cond = [series_table.c.body_part == part,
                        func.coalesce(series_table.c.body_part_code, "") != code]
                if dataset is not None:
                    cond.append(series_table.c.dataset == dataset)
                res = conn.execute(update(series_table).where(*cond)
                                   .values(body_part_code=code))
                changed += res.rowcount
        return changed

    # ---------------------------------------------------------------- reading

    def counts(self, *, dataset: str | None = None, cancer_type_code: str | None = None,
               modality: str | None = None, body_part_code: str | None = None) -> Counts:
        """Numbers of patients, studies, series and instances matching every filter given.

        ``modality`` and ``body_part_code`` select series; a study (and patient) counts
        when it has a matching series. ``cancer_type_code`` selects patients.
        """
        se = series_table
        cond: list[Any] = []
        if dataset is not None:
            cond.append(se.c.dataset == dataset)
        if modality is not None:
            cond.append(se.c.modality == modality)
        if body_part_code is not None:
            cond.append(se.c.body_part_code == body_part_code)
        base = (select(se.c.series_uid, se.c.study_uid, studies_table.c.dataset,
                       studies_table.c.patient_id)
                .join(studies_table, studies_table.c.study_uid == se.c.study_uid))
        if cancer_type_code is not None:
            base = base.join(patients_table, and_(
                patients_table.c.dataset == studies_table.c.dataset,
                patients_table.c.patient_id == studies_table.c.patient_id))
            cond.append(patients_table.c.cancer_type_code == cancer_type_code)
        sel = base.where(*cond).subquery()
        n_inst = (select(func.count()).select_from(instances_table)
                  .where(instances_table.c.series_uid.in_(select(sel.c.series_uid))))
        patients_q = select(sel.c.dataset, sel.c.patient_id).distinct().subquery()
        with self._engine.connect() as conn:
            n_series = conn.execute(select(func.count()).select_from(sel)).scalar_one()
            n_studies = conn.execute(select(func.count(func.distinct(sel.c.study_uid)))
                                     ).scalar_one()
            n_patients = conn.execute(select(func.count()).select_from(patients_q)).scalar_one()
            n_instances = conn.execute(n_inst).scalar_one()
        return Counts(n_patients, n_studies, n_series, n_instances)

    def studies(self, *, dataset: str | None = None, patient_id: str | None = None,
                study_uid: str | None = None, accession_number: str | None = None,
                date_from: str | None = None, date_to: str | None = None,
                modality: str | None = None, limit: int | None = None,
                offset: int = 0) -> list[StudyRow]:
        """Studies matching every filter given, ordered by date, time and UID.

        ``date_from``/``date_to`` are inclusive DICOM dates (``YYYYMMDD``); ``modality``
        keeps studies with at least one series of that modality (ModalitiesInStudy).
        """
        st, pa, se, it = studies_table, patients_table, series_table, instances_table
        n_series = (select(func.count()).where(se.c.study_uid == st.c.study_uid)
                    .scalar_subquery())
        n_inst = (select(func.count()).where(it.c.study_uid == st.c.study_uid)
                  .scalar_subquery())
        q: Select[Any] = (
            select(st.c.study_uid, st.c.dataset, st.c.patient_id, pa.c.patient_sex,
                   pa.c.birth_year, st.c.patient_age, st.c.study_date, st.c.study_time,
                   st.c.accession_number, st.c.study_id, st.c.study_description,
                   n_series.label("n_series"), n_inst.label("n_inst"))
            .join(pa, and_(pa.c.dataset == st.c.dataset, pa.c.patient_id == st.c.patient_id)))
        for col, value in ((st.c.dataset, dataset), (st.c.patient_id, patient_id),
                           (st.c.study_uid, study_uid),
                           (st.c.accession_number, accession_number)):
            if value is not None:
                q = q.where(col == value)
        if date_from is not None:
            q = q.where(st.c.study_date >= date_from)
        if date_to is not None:
            q = q.where(st.c.study_date <= date_to)
        if modality is not None:
            q = q.where(exists().where(se.c.study_uid == st.c.study_uid,
                                       se.c.modality == modality))
        q = q.order_by(st.c.study_date, st.c.study_time, st.c.study_uid).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
            mods: dict[str, set[str]] = {}
            uids = [r.study_uid for r in rows]
            for part in chunks(uids, _IN_CHUNK):
                for s_uid, mod in conn.execute(select(se.c.study_uid, se.c.modality).distinct()
                                               .where(se.c.study_uid.in_(part))):
                    if mod:
                        mods.setdefault(s_uid, set()).add(mod)
        return [StudyRow(r.study_uid, r.dataset, r.patient_id, r.patient_sex, r.birth_year,
                         r.patient_age, r.study_date, r.study_time, r.accession_number,
                         r.study_id, r.study_description,
                         tuple(sorted(mods.get(r.study_uid, ()))), r.n_series, r.n_inst)
                for r in rows]

    def series(self, *, study_uid: str | None = None, series_uid: str | None = None,
               dataset: str | None = None, modality: str | None = None,
               body_part_code: str | None = None, limit: int | None = None,
               offset: int = 0) -> list[SeriesRow]:
        """Series matching every filter given, ordered by study, series number and UID."""
        se, it = series_table, instances_table
        n_inst = (select(func.count()).where(it.c.series_uid == se.c.series_uid)
                  .scalar_subquery())
        q: Select[Any] = select(*(se.c[c] for c in _SERIES_COLS), n_inst.label("n_inst"))
        for col, value in ((se.c.study_uid, study_uid), (se.c.series_uid, series_uid),
                           (se.c.dataset, dataset), (se.c.modality, modality),
                           (se.c.body_part_code, body_part_code)):
            if value is not None:
                q = q.where(col == value)
        q = q.order_by(se.c.study_uid, se.c.series_number, se.c.series_uid).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        return [SeriesRow(**{c: getattr(r, c) for c in _SERIES_COLS}, number_of_instances=r.n_inst)
                for r in rows]

    def instances(self, *, study_uid: str | None = None, series_uid: str | None = None,
                  sop_uid: str | None = None, sop_class_uid: str | None = None,
                  dataset: str | None = None, limit: int | None = None,
                  offset: int = 0) -> list[InstanceRow]:
        """Instances matching every filter given, ordered by series, number and UID."""
        it = instances_table
        q: Select[Any] = select(*(it.c[c] for c in _INSTANCE_COLS))
        for col, value in ((it.c.study_uid, study_uid), (it.c.series_uid, series_uid),
                           (it.c.sop_uid, sop_uid), (it.c.sop_class_uid, sop_class_uid),
                           (it.c.dataset, dataset)):
            if value is not None:
                q = q.where(col == value)
        q = q.order_by(it.c.series_uid, it.c.instance_number, it.c.sop_uid).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        return [InstanceRow(**r._asdict()) for r in rows]

    def instance(self, sop_uid: str) -> InstanceRow | None:
        """The instance ``sop_uid``, or ``None``."""
        found = self.instances(sop_uid=sop_uid)
        return found[0] if found else None

    @property
    def dialect_name(self) -> str:
        """The database's SQLAlchemy dialect (``"sqlite"`` or ``"postgresql"``)."""
        return str(self._engine.dialect.name)

    def fetch(self, statement: Select[Any]) -> list[Any]:
        """Run a read-only ``SELECT`` built on the index tables and return its rows.

        For query layers (DICOMweb QIDO-RS) that compose their own parameterised
        statements from :data:`studies_table` and friends; nothing is written.
        """
        with self._engine.connect() as conn:
            return list(conn.execute(statement).all())

    def summary(self, dataset: str) -> IndexSummary:
        """Counts and the distinct modalities, body parts and cancer types of ``dataset``."""
        se, st, pa = series_table, studies_table, patients_table
        with self._engine.connect() as conn:
            mods = tuple(r[0] for r in conn.execute(
                select(se.c.modality).distinct().where(se.c.dataset == dataset,
                                                       se.c.modality.is_not(None))))
            parts = tuple((r[0], r[1]) for r in conn.execute(
                select(se.c.body_part, se.c.body_part_code).distinct()
                .where(se.c.dataset == dataset, se.c.body_part.is_not(None))))
            cancers = tuple((r[0], r[1]) for r in conn.execute(
                select(pa.c.cancer_type_code, pa.c.cancer_type_display).distinct()
                .where(pa.c.dataset == dataset, pa.c.cancer_type_code.is_not(None))))
            dates = conn.execute(select(func.min(st.c.study_date), func.max(st.c.study_date))
                                 .where(st.c.dataset == dataset)).one()
            years = conn.execute(select(func.min(pa.c.birth_year), func.max(pa.c.birth_year))
                                 .where(pa.c.dataset == dataset)).one()
            sexes = tuple((r[0], r[1]) for r in conn.execute(
                select(pa.c.patient_sex, func.count()).where(
                    pa.c.dataset == dataset, pa.c.patient_sex.is_not(None))
                .group_by(pa.c.patient_sex)))
        return IndexSummary(
            counts=self.counts(dataset=dataset),
            modalities=tuple(sorted(mods)),
            body_parts=tuple(sorted(parts, key=lambda p: (p[0], p[1] or ""))),
            cancer_types=tuple(sorted(cancers, key=lambda c: (c[0], c[1] or ""))),
            study_date_range=(dates[0], dates[1]) if dates[0] else None,
            birth_year_range=(years[0], years[1]) if years[0] is not None else None,
            sexes=tuple(sorted(sexes)),
        )


#: Column order of each index table in :meth:`NodeStore.digest` (every column, by name).
DIGEST_TABLES = (
    (datasets_table, ("name",)),
    (patients_table, ("dataset", "patient_id")),
    (studies_table, ("study_uid",)),
    (series_table, ("series_uid",)),
    (instances_table, ("sop_uid",)),
)
