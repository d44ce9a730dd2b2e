"""Tables of the cohort engine in the node database (registered on the node's metadata).

``cohort_queries``
    One row per cohort query a user asked at this node, answered or refused (the daily
    budget counts both): who, when (UTC, ISO 8601), the SHA-256 of the canonical criteria,
    and the refusal reason (``NULL`` when answered).
``cohort_answer_sets``
    For each answered query and dataset, the pseudonyms of the matching patients (a sorted
    JSON list) and their number. These never leave the node; the differencing guard compares
    a new answer's sets with them. Rows older than the guard's window are deleted.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text

from incisive_lab.node._db import metadata

__all__ = ["answer_sets_table", "queries_table"]

queries_table = Table(
    "cohort_queries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(255), nullable=False),
    Column("asked_at", String(40), nullable=False),
    Column("criteria_sha256", String(64), nullable=False),
    Column("refused", String(64)),
)
Index("ix_cohort_queries_user", queries_table.c.user_id, queries_table.c.asked_at)

answer_sets_table = Table(
    "cohort_answer_sets", metadata,
    Column("query_id", Integer, ForeignKey("cohort_queries.id", ondelete="CASCADE"),
           primary_key=True),
    Column("dataset", String(128), primary_key=True),
    Column("n", Integer, nullable=False),
    Column("patients", Text, nullable=False),
)
Index("ix_cohort_answer_sets_dataset", answer_sets_table.c.dataset)
