"""Tamper-evident ledger of every data transaction.

Each node keeps an append-only Merkle log (RFC 9162 hashing) of :class:`Event` entries
(who did what to which data, why, with what outcome, when), in SQLite or PostgreSQL. The
node signs checkpoints (C2SP tlog-checkpoint signed notes, Ed25519); the other nodes act as
:class:`Witness` es and cosign a checkpoint only if it is consistent with the last one
they saw, so the log is append-only, tamper-evident, non-repudiable and replicated across
parties. Anyone holding the node's public key can check an entry's inclusion proof or a
consistency proof with :func:`verify_inclusion` / :func:`verify_consistency`, and an
auditor can recompute everything with :meth:`Ledger.verify`.

This package is pure library code: no HTTP, and nothing else of INCISIVE Lab is imported
(only the project's base error class). See ``docs/ledger.md`` for the operator's guide.

Examples
--------
>>> from incisive_lab.ledger import Event, Ledger, Outcome, verify_inclusion
>>> with Ledger.open("/srv/node-a", origin="hospital-a.example/ledger") as ledger:  # doctest: +SKIP
...     ref = ledger.append(Event(kind="access", actor="user:alice@idp.example",
...                               action="view", resource="dataset:lung-01/series:1.2.3",
...                               purpose="research:p7", outcome=Outcome.allow("grant g-12")))
...     cp = ledger.checkpoint()
...     verify_inclusion(ref.leaf_hash, ref.index, cp.size,
...                      ledger.inclusion_proof(ref.index, cp.size), cp.root)
"""

from ._checkpoint import Checkpoint
from ._errors import EventError, LedgerError, NoteError, ProofError, StoreError
from ._events import Event, EventSchema, FieldSpec, Outcome, event_kinds, event_schema, format_time
from ._keys import SIG_COSIGNATURE, SIG_ED25519, SignerKey, VerifierKey
from ._ledger import Entry, EntryRef, Ledger, ProvenEntry, QueryResult, WitnessLike
from ._merkle import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from ._note import Cosignature
from ._store import FORMAT
from ._verify import Problem, VerifyResult
from ._witness import REFUSALS, Evidence, Witness, WitnessRefusal

__all__ = [
    "EMPTY_ROOT",
    "FORMAT",
    "REFUSALS",
    "SIG_COSIGNATURE",
    "SIG_ED25519",
    "Checkpoint",
    "ConsistencyProof",
    "Cosignature",
    "Entry",
    "EntryRef",
    "Event",
    "EventError",
    "EventSchema",
    "Evidence",
    "FieldSpec",
    "InclusionProof",
    "Ledger",
    "LedgerError",
    "NoteError",
    "Outcome",
    "Problem",
    "ProofError",
    "ProvenEntry",
    "QueryResult",
    "SignerKey",
    "StoreError",
    "VerifierKey",
    "VerifyResult",
    "Witness",
    "WitnessLike",
    "WitnessRefusal",
    "event_kinds",
    "event_schema",
    "format_time",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]
