"""The node store: content-addressed DICOM objects, the index and the FHIR store.

Layout of a node directory ``DIR``::

    DIR/objects/<aa>/<sha256>.dcm   de-identified DICOM, named by the sha256 of its bytes
                                    (<aa> = the hash's first two hex digits)
    DIR/objects/tmp/                files being written (never read; emptied on open)
    DIR/objects/.lock               held shared by every open store (see below)
    DIR/node.sqlite                 index + FHIR store (SQLite, WAL) unless a database URL
                                    (postgresql+psycopg://...) is configured
    DIR/datasets/<name>.json        dataset records (HealthDCAT-AP JSON-LD)
    DIR/private/                    provider-only material: pseudonym vault, quarantine,
                                    curation and run reports (mode 0700; never served)

Guarantees:

* A file appears under ``objects/`` only complete: bytes are written to ``objects/tmp``,
  fsynced and renamed into place (a hard link from a de-identified output folder is made
  with one ``link``, which is atomic too). Re-adding the same bytes is a no-op.
* An index row is committed only after its object is in place and its directory entry
  fsynced, so the index never names a missing object. A crash can leave an object that
  no row names yet; the next run adds the row (adding is idempotent).
* Leftover temporary files of a killed writer are removed on open when no other store
  has the node open (an exclusive ``flock`` on ``objects/.lock`` tells; open stores hold
  it shared).

Examples
--------
>>> with NodeStore.open("node") as store:                        # doctest: +SKIP
...     store.add_deidentified("deid-out", rel_paths, dataset="lung-a")
...     store.counts()
Counts(patients=17, studies=21, series=96, instances=723)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from incisive_lab.node._db import (
    StoreError,
    fhir_table,
    make_engine,
    normalise_url,
    prepare_schema,
    removal_handles_table,
)
from incisive_lab.node.fhir_store import FhirStore, canonical_json
from incisive_lab.node.index import (
    DIGEST_TABLES,
    AddResult,
    Counts,
    InstanceRecord,
    NodeIndex,
    extract_record,
)

if TYPE_CHECKING:
    from incisive_lab.node.removal import Removed

__all__ = ["AddSummary", "NodeStore", "StoredObject"]

DIGEST_FORMAT = "incisive-node-digest/1"
_BATCH = 500


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object in the store: its hash, size, path and whether this call added it."""

    sha256: str
    size: int
    path: Path
    new: bool


@dataclass(slots=True)
class AddSummary:
    """What :meth:`NodeStore.add_deidentified` / :meth:`NodeStore.add_dicom_files` did."""

    files: int = 0          #: files read
    objects_new: int = 0    #: objects that were not in the store
    bytes: int = 0          #: bytes of the new objects
    patients: int = 0       #: new index rows, per level
    studies: int = 0
    series: int = 0
    instances: int = 0
    seconds: float = 0.0
    records: list[InstanceRecord] = field(default_factory=list, repr=False)

    def _add(self, res: AddResult) -> None:
        self.patients += res.patients
        self.studies += res.studies
        self.series += res.series
        self.instances += res.instances


def _syncfs(path: Path) -> bool:
    """``syncfs(2)`` on the file system holding ``path``; ``False`` where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bool(fn(fd) == 0)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeStore:
    """One node's storage (see the module docstring for the layout and guarantees).

    Open with :meth:`open`; close with :meth:`close` or use it as a context manager.

    Attributes
    ----------
    dir : Path
        The node directory.
    engine : sqlalchemy.Engine
        The node database (for the node service's own queries; tables are in
        :mod:`incisive_lab.node.index` and :mod:`incisive_lab.node.fhir_store`).
    index : NodeIndex
        The DICOM index.
    fhir : FhirStore
        The FHIR store.
    """

    OBJECTS = "objects"
    DATABASE = "node.sqlite"
    DATASETS = "datasets"
    PRIVATE = "private"

    def __init__(self, directory: Path, engine: Engine, lock_fd: int, *, durable: bool) -> None:
        self.dir = directory
        self.engine = engine
        self.index = NodeIndex(engine)
        self.fhir = FhirStore(engine)
        self._lock_fd: int | None = lock_fd
        self._durable = durable
        self._dirty_dirs: set[Path] = set()
        self._unsynced: list[Path] = []  # linked objects whose data is not known durable

    # ---------------------------------------------------------------- life cycle

    @classmethod
    def open(cls, directory: str | os.PathLike[str], db_url: str | None = None, *,
             durable: bool = True) -> NodeStore:
        """Open (creating if needed) the node store in ``directory``.

        Parameters
        ----------
        directory
            The node directory (created with its sub-folders if missing).
        db_url
            A SQLAlchemy URL of the index/FHIR database: ``postgresql+psycopg://...``
            (``postgresql://`` is taken as psycopg 3) or ``sqlite:///...``. Default:
            ``DIR/node.sqlite``.
        durable
            fsync copied objects before their rename and flush linked objects before
            each index batch (default). Turn off only for throw-away nodes (tests,
            benchmarks of other parts); a kill -9 is safe either way, a power loss only
            with it on.

        Raises
        ------
        StoreError
            The directory or database cannot be used.
        SchemaVersionError
            The database was written by a newer (or unknown older) schema version.
        """
        root = Path(directory)
        try:
            for sub in (cls.OBJECTS, f"{cls.OBJECTS}/tmp", cls.DATASETS):
                (root / sub).mkdir(parents=True, exist_ok=True)
            (root / cls.PRIVATE).mkdir(mode=0o700, exist_ok=True)
            lock_fd = os.open(root / cls.OBJECTS / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{root}: cannot prepare the node directory: {exc}") from None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                cls._clean_tmp(root / cls.OBJECTS / "tmp")
                fcntl.flock(lock_fd, fcntl.LOCK_SH)
            except BlockingIOError:  # another store is open: its tmp files are alive
                fcntl.flock(lock_fd, fcntl.LOCK_SH)
            if db_url is None:
                url = f"sqlite:///{root / cls.DATABASE}"
                where = str(root / cls.DATABASE)
            else:
                url = normalise_url(db_url)
                where = make_url(url).render_as_string(hide_password=True)
            engine = make_engine(url)
            try:
                prepare_schema(engine, where)
            except BaseException:
                engine.dispose()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(root, engine, lock_fd, durable=durable)

    @staticmethod
    def _clean_tmp(tmp: Path) -> None:
        for entry in os.scandir(tmp):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Release the database connections and the directory lock (safe to call twice)."""
        if self._lock_fd is None:
            return
        self.engine.dispose()
        os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NodeStore({str(self.dir)!r}, {self.engine.dialect.name})"

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StoreError(f"{self.dir}: the node store is closed")

    # ---------------------------------------------------------------- objects

    def object_path(self, sha256: str) -> Path:
        """Where the object with this sha256 lives (whether or not it exists)."""
        return self.dir / self.OBJECTS / sha256[:2] / f"{sha256}.dcm"

    def has_object(self, sha256: str) -> bool:
        """Whether the object is in the store."""
        return self.object_path(sha256).is_file()

    def _target(self, sha256: str) -> Path:
        final = self.object_path(sha256)
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            self._dirty_dirs.add(final.parent.parent)
        return final

    def add_bytes(self, data: bytes, *, sha256: str | None = None) -> StoredObject:
        """Store ``data`` as an object (a no-op if the same bytes are already stored).

        ``sha256`` may be given when the caller has just computed it from ``data``.
        """
        self._check_open()
        sha = sha256 or hashlib.sha256(data).hexdigest()
        final = self._target(sha)
        if self._intact(final, len(data)):
            return StoredObject(sha, len(data), final, False)
        tmp = self.dir / self.OBJECTS / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{final}: cannot write the object: {exc.strerror}") from None
        self._dirty_dirs.add(final.parent)
        return StoredObject(sha, len(data), final, True)

    def add_file(self, path: str | os.PathLike[str], *, link: bool = True,
                 data: bytes | None = None, sha256: str | None = None) -> StoredObject:
        """Store the file at ``path`` as an object, hard-linked (default) or copied.

        A hard link is made with one atomic ``link`` (the file is already complete; its
        data is made durable by :meth:`sync_objects`, once per batch, before the index
        names it); when linking is impossible (another file system, no permission) the
        bytes are copied through ``objects/tmp`` (fsync, rename). The object is made read-only (a hard link shares
        that mode with ``path``). Linked files must not be modified in place afterwards:
        the de-identifier replaces files by renaming, which is safe.

        Parameters
        ----------
        path
            The file (e.g. in a de-identified output folder).
        link
            Try a hard link first.
        data, sha256
            The file's bytes and hash when the caller has already read them.
        """
        self._check_open()
        src = Path(path)
        if data is None:
            try:
                data = src.read_bytes()
            except OSError as exc:
                raise StoreError(f"{src}: cannot read: {exc.strerror}") from None
        sha = sha256 or hashlib.sha256(data).hexdigest()
        if not link:
            return self.add_bytes(data, sha256=sha)
        final = self._target(sha)
        if self._intact(final, len(data)):
            return StoredObject(sha, len(data), final, False)
        try:
            os.link(src, final)
        except FileExistsError:
            return StoredObject(sha, len(data), final, False)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP,
                             errno.EACCES):
                return self.add_bytes(data, sha256=sha)
            raise StoreError(f"{src}: cannot link into the store: {exc.strerror}") from None
        try:
            mode = os.stat(final).st_mode
            if mode & 0o222:
                os.chmod(final, stat.S_IMODE(mode) & ~0o222)
        except OSError:
            pass  # a read-only mode is a safeguard, not a guarantee
        self._dirty_dirs.add(final.parent)
        self._unsynced.append(final)
        return StoredObject(sha, len(data), final, True)

    @staticmethod
    def _intact(final: Path, size: int) -> bool:
        """Whether ``final`` exists with the expected size; a wrong size (e.g. a file cut
        short by a power loss before its data was synced) is removed so it is rewritten."""
        try:
            actual = os.stat(final).st_size
        except FileNotFoundError:
            return False
        if actual == size:
            return True
        final.unlink(missing_ok=True)
        return False

    def sync_objects(self) -> None:
        """Make the objects added since the last call durable (called before indexing).

        Copied objects were fsynced before their rename; hard-linked ones (whose data the
        de-identifier wrote without fsync) and the new directory entries are flushed
        here, once per batch: one ``syncfs`` on Linux, else an fsync per file and
        directory.
        """
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        linked, self._unsynced = self._unsynced, []
        if not self._durable or not (dirs or linked):
            return
        if _syncfs(self.dir / self.OBJECTS):
            return
        for path in linked:
            _fsync_path(path)
        for d in sorted(dirs):
            _fsync_dir(d)

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        """Every object in the store as ``(sha256, size)``, in hash order."""
        root = self.dir / self.OBJECTS
        for sub in sorted(os.listdir(root)):
            if len(sub) != 2 or not (root / sub).is_dir():
                continue
            names = sorted(e.name for e in os.scandir(root / sub) if e.name.endswith(".dcm"))
            for name in names:
                yield name[:-4], (root / sub / name).stat().st_size

    def verify_objects(self) -> list[str]:
        """Re-hash every indexed object; return a message per missing or damaged one."""
        problems: list[str] = []
        seen: set[str] = set()
        for row in self.index.instances():
            if row.sha256 in seen:
                continue
            seen.add(row.sha256)
            path = self.object_path(row.sha256)
            try:
                actual = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                problems.append(f"{path}: missing (instance {row.sop_uid})")
                continue
            if actual != row.sha256:
                problems.append(f"{path}: content hashes to {actual} (instance {row.sop_uid})")
        return problems

    # ---------------------------------------------------------------- indexing

    def add_instances(self, records: Iterable[InstanceRecord]) -> AddResult:
        """Index a batch of records in one transaction (objects must be stored first).

        The directories of objects added since the last batch are fsynced before the
        commit. See :meth:`NodeIndex.add_instances`.
        """
        self._check_open()
        records = list(records)
        for rec in records:
            if not self.has_object(rec.sha256):
                raise StoreError(f"instance {rec.sop_uid}: object {rec.sha256} is not in the "
                                 "store; add the file before indexing it")
        self.sync_objects()
        return self.index.add_instances(records)

    def add_dicom_files(self, paths: Iterable[str | os.PathLike[str]], *, dataset: str,
                        body_part_codes: Mapping[str, str] | None = None, link: bool = True,
                        progress: bool | None = False, batch: int = _BATCH,
                        keep_records: bool = False) -> AddSummary:
        """Store and index de-identified DICOM files, ``batch`` files per transaction.

        Each file is read once: hashed, its header parsed (:func:`extract_record`) and
        linked or copied into the store (:meth:`add_file`); every ``batch`` files the
        records are indexed in one transaction. Re-adding files already stored adds
        nothing.

        Parameters
        ----------
        paths
            De-identified DICOM files.
        dataset
            The dataset they belong to.
        body_part_codes
            ``BodyPartExamined -> SNOMED CT code`` (the curation's normalisation).
        link
            Hard-link rather than copy when possible.
        progress
            Show a progress bar (``None``: when standard error is a terminal).
        batch
            Files per index transaction.
        keep_records
            Keep the records in :attr:`AddSummary.records` (for the caller's own use).

        Raises
        ------
        StoreError
            A file that cannot be read or indexed (the message names it). Batches
            committed before it stay; rerunning completes the rest.
        """
        self._check_open()
        started = time.perf_counter()
        files = [Path(p) for p in paths]
        summary = AddSummary()
        show = sys.stderr.isatty() if progress is None else progress
        bar: Any = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(files), unit="file", desc="store", file=sys.stderr)
        pending: list[InstanceRecord] = []
        try:
            for path in files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
                sha = hashlib.sha256(data).hexdigest()
                try:
                    record = extract_record(data, dataset=dataset, sha256=sha, size=len(data),
                                            body_part_codes=body_part_codes)
                except StoreError as exc:
                    raise StoreError(f"{path}: {exc}") from None
                obj = self.add_file(path, link=link, data=data, sha256=sha)
                summary.files += 1
                if obj.new:
                    summary.objects_new += 1
                    summary.bytes += obj.size
                pending.append(record)
                if keep_records:
                    summary.records.append(record)
                if len(pending) >= batch:
                    summary._add(self.add_instances(pending))
                    pending = []
                if bar is not None:
                    bar.update(1)
            if pending:
                summary._add(self.add_instances(pending))
        finally:
            if bar is not None:
                bar.close()
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def add_deidentified(self, root: str | os.PathLike[str], rel_paths: Sequence[str], *,
                         dataset: str, codes: Mapping[str, str] | None = None,
                         link: bool = True, progress: bool | None = False,
                         batch: int = _BATCH) -> AddSummary:
        """Store and index files of a de-identified output folder.

        Parameters
        ----------
        root
            The de-identifier's output folder.
        rel_paths
            The files to add, relative to ``root`` (e.g. the ``output`` of each ``ok``
            file of the de-identification report).
        dataset
            The dataset they belong to.
        codes
            ``BodyPartExamined -> SNOMED CT code`` (the curation's normalisation).
        link, progress, batch
            As for :meth:`add_dicom_files`.
        """
        base = Path(root)
        return self.add_dicom_files((base / rel for rel in rel_paths), dataset=dataset,
                                    body_part_codes=codes, link=link, progress=progress,
                                    batch=batch)

    # ---------------------------------------------------------------- reading

    def counts(self, *, dataset: str | None = None) -> Counts:
        """Numbers of patients, studies, series and instances (of ``dataset`` if given)."""
        return self.index.counts(dataset=dataset)

    def digest(self, *, include_objects: bool = True) -> str:
        """A sha256 over the node's content, equal for equal content however it was added.

        It covers, in a canonical order: every row of the index tables (all columns),
        every removal tag of a central node (``removal_handles``: they are deterministic,
        so a resumed run writes the same ones; see :mod:`incisive_lab.node.removal`),
        every FHIR resource (type, id, dataset, patient, date and the sha256 of its
        canonical JSON — not its version or ``lastUpdated``) and, unless
        ``include_objects`` is false, the name and size of every object file. It holds no
        write timestamps and no generated ids, so a run killed and resumed gives the same
        digest as a clean run.
        """
        self._check_open()
        h = hashlib.sha256(f"{DIGEST_FORMAT}\n".encode())
        with self.engine.connect() as conn:
            for table, key in (*DIGEST_TABLES, (removal_handles_table, ("dataset", "patient_id"))):
                cols = [c.name for c in table.columns]
                rows = [tuple(r) for r in conn.execute(select(*table.columns))]
                pos = [cols.index(k) for k in key]
                rows.sort(key=lambda r: tuple(r[i] for i in pos))
                h.update(f"table {table.name} {canonical_json(cols)}\n".encode())
                for row in rows:
                    h.update(canonical_json(list(row)).encode() + b"\n")
            t = fhir_table
            fcols = ("resource_type", "id", "dataset", "patient_ref", "date", "sha256")
            frows = sorted(tuple(r) for r in conn.execute(select(*(t.c[c] for c in fcols))))
            h.update(f"table {t.name} {canonical_json(list(fcols))}\n".encode())
            for frow in frows:
                h.update(canonical_json(list(frow)).encode() + b"\n")
        if include_objects:
            h.update(b"objects\n")
            for sha, size in self.iter_objects():
                h.update(f"{sha} {size}\n".encode())
        return h.hexdigest()

    # ---------------------------------------------------------------- removal

    def remove_patient(self, dataset: str, patient_id: str) -> Removed:
        """Delete one patient of ``dataset`` (index rows, FHIR resources, removal tag, objects
        no other instance names) and rewrite the dataset's record; safe to repeat.

        See :func:`incisive_lab.node.removal.remove_patient`.
        """
        from incisive_lab.node.removal import remove_patient

        self._check_open()
        return remove_patient(self, dataset, patient_id)

    # ---------------------------------------------------------------- datasets

    def dataset_record_path(self, dataset: str) -> Path:
        """Where the record of ``dataset`` is written."""
        return self.dir / self.DATASETS / f"{dataset}.json"

    def write_dataset_record(self, dataset: str, *, hosting: str,
                             provenance: Mapping[str, Any], curation: Mapping[str, Any],
                             title: str | None = None, description: str | None = None,
                             country: str | None = None, publisher: str | None = None,
                             now: str | None = None) -> Path:
        """Register ``dataset``'s descriptive fields and (re)write its HealthDCAT-AP record.

        See :func:`incisive_lab.node.dataset.write_record`; returns the record's path.
        """
        from incisive_lab.node.dataset import build_record, country_code, write_record

        self._check_open()
        self.index.register_dataset(dataset, hosting=hosting, title=title,
                                    description=description,
                                    country=country_code(country) if country else None,
                                    publisher=publisher)
        info = self.index.dataset(dataset)
        assert info is not None
        record = build_record(self, info, provenance=provenance, curation=curation)
        return write_record(self.dataset_record_path(dataset), record, now=now)
