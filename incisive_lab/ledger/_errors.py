"""Errors raised by the ledger.

Every ledger error derives from :class:`LedgerError`, itself an
:class:`incisive_lab.errors.IncisiveLabError` (the project's base error for anything a
user, an input or a peer can cause), so the command line prints it without a traceback.
Witness refusals live with the witness (:class:`incisive_lab.ledger.WitnessRefusal`).
"""

from __future__ import annotations

from incisive_lab.errors import IncisiveLabError


class LedgerError(IncisiveLabError):
    """Base class of every error the ledger raises on purpose."""


class EventError(LedgerError, ValueError):
    """An event does not match its registered schema (unknown kind, field, action, type...)."""


class ProofError(LedgerError):
    """A Merkle proof, a root hash or a tree size does not verify."""


class NoteError(LedgerError):
    """A signed note, key, checkpoint or cosignature is malformed or does not verify."""


class StoreError(LedgerError):
    """The ledger's storage cannot be opened or has an unexpected format."""
