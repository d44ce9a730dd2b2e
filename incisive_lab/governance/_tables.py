"""Tables of the governance layer in the node database (registered on the node's metadata).

``sharing_terms``
    Every version of every dataset's terms (the JSON document and its SHA-256).
``access_requests``
    Researchers' requests and their decisions.
``grants``, ``grant_members``
    Approved requests: purpose, expiry, and the cohort frozen at approval (patients).
``withdrawals``
    Patients whose consent was withdrawn, per dataset (effective at once, never undone
    here: a renewed consent is a new decision recorded by the steward).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text

from incisive_lab.node._db import metadata

sharing_terms_table = Table(
    "sharing_terms", metadata,
    Column("dataset", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("document", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("set_by", String(255), nullable=False),
    Column("set_at", String(40), nullable=False),
)

access_requests_table = Table(
    "access_requests", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("dataset", String(128), nullable=False),
    Column("requester", String(255), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("project", String(255), nullable=False),
    Column("criteria", Text),
    Column("status", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("decided_by", String(255)),
    Column("decided_at", String(40)),
    Column("reason", Text),
    Index("ix_access_requests_status", "status", "dataset"),
    Index("ix_access_requests_requester", "requester"),
)

grants_table = Table(
    "grants", metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("dataset", String(128), nullable=False),
    Column("grantee", String(255), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("project", String(255), nullable=False),
    Column("expires", String(40), nullable=False),
    Column("revoked", Integer, nullable=False, default=0),
    Column("terms_version", Integer, nullable=False),
    Column("created_at", String(40), nullable=False),
    Index("ix_grants_grantee", "grantee", "dataset"),
)

grant_members_table = Table(
    "grant_members", metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
)

withdrawals_table = Table(
    "withdrawals", metadata,
    Column("dataset", String(128), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
    Column("withdrawn_at", String(40), nullable=False),
    Column("recorded_by", String(255), nullable=False),
)
