"""The node database: engine set-up, the schema and its version.

One SQLAlchemy Core schema serves SQLite (the embedded default, ``DIR/node.sqlite`` in WAL
mode) and PostgreSQL (``postgresql+psycopg://...``); nothing here is specific to one
dialect except the engine options and :func:`insert_ignore`.

Tables
------
``meta``
    ``key -> value``; ``schema_version`` is :data:`SCHEMA_VERSION`.
``datasets``
    One row per dataset held by the node (name, hosting, descriptive fields).
``patients``, ``studies``, ``series``, ``instances``
    The DICOM index (see :mod:`incisive_lab.node.index`). A study belongs to exactly one
    dataset; patients are keyed by ``(dataset, patient_id)``.
``fhir_resources``, ``fhir_tokens``
    The FHIR store (see :mod:`incisive_lab.node.fhir_store`).
Governance and cohort tables
    Defined next to their code (:mod:`incisive_lab.governance._tables`,
    :mod:`incisive_lab.cohort._tables`) on the same :data:`metadata`.
``removal_handles``
    Central node: per centralised patient, a tag that only the provider's removal handle
    matches (see :mod:`incisive_lab.node.removal`); the handle itself is never stored.
``object_deletions``
    Objects whose last instance row a removal deleted, until their files are unlinked
    (written in the removal's transaction, so a crash leaves nothing untracked).
``central_removals_pending``
    Provider node: withdrawn patients whose removal from the central node has not yet
    been confirmed (pseudonyms only; the handle is recomputed at each retry).

Versions: 1 (the index and FHIR store); 2 adds the governance and cohort tables; 3 adds
``removal_handles``, ``object_deletions`` and ``central_removals_pending``. Tables are
created when missing, so migrating from 1 or 2 only records the new version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.sql.dml import Insert

from incisive_lab.errors import IncisiveLabError

__all__ = ["SCHEMA_VERSION", "SchemaVersionError", "StoreError", "central_removals_pending_table",
           "insert_ignore", "make_engine", "metadata", "object_deletions_table", "prepare_schema",
           "removal_handles_table"]

#: Version of the schema written by this code. Bump it (and write a migration) whenever a
#: table or column changes; a database with a newer version is refused.
SCHEMA_VERSION = 3
#: Versions a database may be migrated from: every later version only added tables, which
#: ``create_all`` creates, so migrating is recording the new version.
_ADDITIVE_FROM = frozenset({1, 2})
#: The ``meta.format`` value that marks an INCISIVE node database.
DB_FORMAT = "incisive-node/1"


class StoreError(IncisiveLabError):
    """The node store or its database cannot be used (the message names the path or row)."""


class SchemaVersionError(StoreError):
    """The database was written by a different (usually newer) version of the node store."""


metadata = MetaData()

meta_table = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

datasets_table = Table(
    "datasets", metadata,
    Column("name", String(128), primary_key=True),
    Column("hosting", String(16)),   # federated | central (None until registered)
    Column("title", Text),
    Column("description", Text),
    Column("country", String(3)),
    Column("publisher", Text),
)

patients_table = Table(
    "patients", metadata,
    Column("dataset", String(128), primary_key=True),
    Column("patient_id", String(64), primary_key=True),        # the pseudonym
    Column("patient_sex", String(16)),
    Column("birth_year", Integer),
    Column("cancer_type_code", String(32)),                    # SNOMED CT
    Column("cancer_type_display", Text),
    ForeignKeyConstraint(["dataset"], ["datasets.name"]),
)
Index("ix_patients_patient_id", patients_table.c.patient_id)
Index("ix_patients_cancer", patients_table.c.cancer_type_code)

studies_table = Table(
    "studies", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("dataset", String(128), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("study_date", String(8)),       # YYYYMMDD (DICOM DA)
    Column("study_time", String(16)),      # HHMMSS.FFFFFF (DICOM TM)
    Column("accession_number", String(64)),
    Column("study_id", String(16)),
    Column("study_description", Text),
    Column("patient_age", String(4)),      # DICOM AS, e.g. 075Y
    ForeignKeyConstraint(["dataset", "patient_id"],
                         ["patients.dataset", "patients.patient_id"]),
)
Index("ix_studies_patient", studies_table.c.patient_id)
Index("ix_studies_dataset", studies_table.c.dataset, studies_table.c.patient_id)
Index("ix_studies_date", studies_table.c.study_date, studies_table.c.study_time)
Index("ix_studies_accession", studies_table.c.accession_number)

series_table = Table(
    "series", metadata,
    Column("series_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("body_part", String(16)),        # DICOM BodyPartExamined (CS)
    Column("body_part_code", String(32)),   # SNOMED CT
    ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
)
Index("ix_series_study", series_table.c.study_uid)
Index("ix_series_modality", series_table.c.modality)
Index("ix_series_body_part_code", series_table.c.body_part_code)
Index("ix_series_dataset", series_table.c.dataset, series_table.c.modality)

instances_table = Table(
    "instances", metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("series_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("sop_class_uid", String(64)),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("number_of_frames", Integer),
    Column("transfer_syntax_uid", String(64)),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    ForeignKeyConstraint(["series_uid"], ["series.series_uid"]),
)
Index("ix_instances_series", instances_table.c.series_uid, instances_table.c.instance_number)
Index("ix_instances_study", instances_table.c.study_uid)
Index("ix_instances_sop_class", instances_table.c.sop_class_uid)
Index("ix_instances_sha256", instances_table.c.sha256)
Index("ix_instances_dataset", instances_table.c.dataset)

fhir_table = Table(
    "fhir_resources", metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", String(40), nullable=False),   # FHIR instant, UTC
    Column("patient_ref", String(128)),                   # "Patient/<id>"
    Column("dataset", String(128)),
    Column("date", String(40)),                           # the type's main date, for _sort
    Column("content", Text, nullable=False),              # canonical JSON, without meta
    Column("sha256", String(64), nullable=False),
)
Index("ix_fhir_patient", fhir_table.c.resource_type, fhir_table.c.patient_ref)
Index("ix_fhir_date", fhir_table.c.resource_type, fhir_table.c.date)
Index("ix_fhir_dataset", fhir_table.c.dataset)

fhir_tokens_table = Table(
    "fhir_tokens", metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("param", String(32), primary_key=True),        # code | category | modality
    Column("system", String(255), primary_key=True),
    Column("code", String(128), primary_key=True),
)
Index("ix_fhir_tokens_code", fhir_tokens_table.c.resource_type, fhir_tokens_table.c.param,
      fhir_tokens_table.c.code, fhir_tokens_table.c.system)

removal_handles_table = Table(
    "removal_handles", metadata,
    Column("dataset", String(128), primary_key=True),
    Column("patient_id", String(64), primary_key=True),        # the anonymous id at this node
    Column("tag", String(64), nullable=False),                  # HMAC(handle, dataset, patient_id)
)

object_deletions_table = Table(
    "object_deletions", metadata,
    Column("sha256", String(64), primary_key=True),
)

central_removals_pending_table = Table(
    "central_removals_pending", metadata,
    Column("pseudonym", String(64), primary_key=True),
    Column("dataset", String(128), nullable=False),             # where the withdrawal was recorded
    Column("requested_at", String(40), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
)


def normalise_url(url: str) -> str:
    """Return ``url`` with a driver SQLAlchemy can use (``postgresql://`` -> psycopg 3).

    Raises
    ------
    StoreError
        When the URL cannot be parsed or names a database this store does not support.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"database URL {url!r} cannot be parsed: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.get_driver_name() in ("psycopg2", "pg8000", "asyncpg"):
            raise StoreError(f"database URL {url!r}: use the psycopg 3 driver "
                             "(postgresql+psycopg://...)")
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise StoreError(f"database URL {url!r}: only SQLite and PostgreSQL are supported")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with the node store's settings.

    SQLite gets WAL mode, ``synchronous=FULL``, foreign keys on, a 60 s busy timeout,
    and ``BEGIN IMMEDIATE`` for transactions opened with the execution option
    ``write=True`` (so two writers queue instead of failing to upgrade a read lock).
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def insert_ignore(conn: Connection, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for ``table`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def prepare_schema(engine: Engine, where: str) -> None:
    """Create the tables if missing and check the schema version.

    Parameters
    ----------
    engine
        The node database.
    where
        How to name the database in errors (a path or a URL without password).

    Raises
    ------
    SchemaVersionError
        When the database holds another format or a schema version other than
        :data:`SCHEMA_VERSION`.
    StoreError
        When the database cannot be reached.
    """
    import incisive_lab.cohort._tables
    import incisive_lab.governance._tables  # noqa: F401  (register their tables on metadata)

    try:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            metadata.create_all(conn, checkfirst=True)
            conn.execute(insert_ignore(conn, meta_table), [
                {"key": "format", "value": DB_FORMAT},
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
            ])
            rows = {r[0]: r[1] for r in conn.execute(select(meta_table.c.key, meta_table.c.value))}
            if rows.get("format") == DB_FORMAT and rows.get("schema_version", "").isdigit() \
                    and int(rows["schema_version"]) in _ADDITIVE_FROM:
                conn.execute(meta_table.update().where(meta_table.c.key == "schema_version")
                             .values(value=str(SCHEMA_VERSION)))
                rows["schema_version"] = str(SCHEMA_VERSION)
    except OperationalError as exc:
        raise StoreError(f"{where}: cannot open the node database: {exc.orig}") from None
    if rows.get("format") != DB_FORMAT:
        raise SchemaVersionError(f"{where}: not an INCISIVE node database "
                                 f"(meta.format is {rows.get('format')!r}, expected {DB_FORMAT!r})")
    try:
        found = int(rows["schema_version"])
    except (KeyError, ValueError):
        raise SchemaVersionError(f"{where}: meta.schema_version is missing or not a number "
                                 f"({rows.get('schema_version')!r})") from None
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where}: the node database has schema version {found}, newer than this "
            f"version of incisive-lab understands ({SCHEMA_VERSION}); upgrade incisive-lab")
    if found < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where}: the node database has schema version {found}, older than "
            f"{SCHEMA_VERSION}, and no migration from it exists")


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Split ``items`` into slices of at most ``size`` (for ``IN (...)`` parameter limits)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
