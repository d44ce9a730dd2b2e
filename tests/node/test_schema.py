"""Schema versioning: a newer (or foreign) database is refused with a clear error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import update

from incisive_lab.node import SCHEMA_VERSION, NodeStore, SchemaVersionError, StoreError
from incisive_lab.node._db import meta_table
from tests.node.conftest import OpenStore


def test_newer_schema_is_refused(open_store: OpenStore) -> None:
    store = open_store()
    with store.engine.begin() as conn:
        conn.execute(update(meta_table).where(meta_table.c.key == "schema_version")
                     .values(value=str(SCHEMA_VERSION + 1)))
    store.close()
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}, "
                                                 "newer than"):
        open_store()


def test_reopen_keeps_the_content(open_store: OpenStore) -> None:
    store = open_store()
    store.fhir.put({"resourceType": "Patient", "id": "A"})
    digest = store.digest()
    store.close()
    assert open_store().digest() == digest


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    with sqlite3.connect(node / "node.sqlite") as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    with pytest.raises(SchemaVersionError, match="not an INCISIVE node database"):
        NodeStore.open(node)


def test_bad_database_urls(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="only SQLite and PostgreSQL"):
        NodeStore.open(tmp_path / "n", "mysql://x@y/z")
    with pytest.raises(StoreError, match="psycopg 3"):
        NodeStore.open(tmp_path / "n", "postgresql+psycopg2://x@/y")
    with pytest.raises(StoreError, match="cannot be parsed"):
        NodeStore.open(tmp_path / "n", "::nonsense")
    with pytest.raises(StoreError, match="cannot open the node database"):
        NodeStore.open(tmp_path / "n", "postgresql://x@/y?host=/nonexistent")


def test_a_version_1_database_is_migrated_by_adding_the_new_tables(open_store: OpenStore) -> None:
    from sqlalchemy import inspect

    from incisive_lab.node._db import metadata

    store = open_store()
    store.fhir.put({"resourceType": "Patient", "id": "A"})
    digest = store.digest()
    v1_tables = {"meta", "datasets", "patients", "studies", "series", "instances", "fhir_resources", "fhir_tokens"}
    with store.engine.begin() as conn:
        for name in sorted(set(metadata.tables) - v1_tables):
            conn.exec_driver_sql(f"DROP TABLE {name}")
        conn.execute(update(meta_table).where(meta_table.c.key == "schema_version").values(value="1"))
    store.close()
    store = open_store()
    assert set(inspect(store.engine).get_table_names()) >= set(metadata.tables)
    with store.engine.connect() as conn:
        version = conn.execute(meta_table.select().where(meta_table.c.key == "schema_version")).one().value
    assert version == str(SCHEMA_VERSION) and store.digest() == digest


def test_a_version_2_database_is_migrated_by_adding_the_removal_tables(open_store: OpenStore) -> None:
    from sqlalchemy import inspect

    store = open_store()
    store.fhir.put({"resourceType": "Patient", "id": "A"})
    digest = store.digest()
    v3_tables = ("removal_handles", "object_deletions", "central_removals_pending")
    with store.engine.begin() as conn:
        for name in v3_tables:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        conn.execute(update(meta_table).where(meta_table.c.key == "schema_version").values(value="2"))
    store.close()
    store = open_store()
    assert set(inspect(store.engine).get_table_names()) >= set(v3_tables)
    with store.engine.connect() as conn:
        version = conn.execute(meta_table.select().where(meta_table.c.key == "schema_version")).one().value
    assert version == str(SCHEMA_VERSION) == "3" and store.digest() == digest
