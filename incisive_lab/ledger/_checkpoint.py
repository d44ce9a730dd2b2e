"""Checkpoints: signed tree heads in the C2SP tlog-checkpoint format.

::

    <origin>
    <tree size>
    <base64 root hash>
    <optional extension lines>

    — <origin> <base64(key id || Ed25519 signature)>
    — <witness name> <base64(key id || timestamp || Ed25519 signature)>
    ...
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ._errors import NoteError
from ._keys import SIG_COSIGNATURE, SignerKey, VerifierKey, check_key_name
from ._merkle import HASH_SIZE
from ._note import Cosignature, NoteSignature, format_note, parse_note, sign_note

__all__ = ["Checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, size and root hash, with the note signatures it carries.

    Build one with :meth:`Ledger.checkpoint` or :meth:`parse`; ``str(checkpoint)`` is the
    signed note text to publish.

    Attributes
    ----------
    origin
        The log's identity (also the name of the key that signs it).
    size
        Number of entries covered.
    root
        RFC 9162 root hash of the first ``size`` entries.
    extensions
        Optional extension lines (unused by INCISIVE Lab; kept when parsing).
    signatures
        Every signature line: the log's, then witnesses' cosignatures.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()
    signatures: tuple[NoteSignature, ...] = ()

    def __post_init__(self) -> None:
        if "\n" in self.origin or not self.origin:
            raise NoteError("checkpoint origin must be one non-empty line")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise NoteError("checkpoint size must be a non-negative integer")
        if len(self.root) != HASH_SIZE:
            raise NoteError("checkpoint root must be a 32-byte hash")
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise NoteError("checkpoint extension lines must be non-empty single lines")

    @property
    def body(self) -> str:
        """The note text that is signed (ends with a newline)."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"),
                 *self.extensions]
        return "".join(line + "\n" for line in lines)

    @property
    def note(self) -> str:
        """The full signed note (text, blank line, signature lines)."""
        return format_note(self.body, self.signatures)

    def __str__(self) -> str:
        return self.note if self.signatures else self.body

    @classmethod
    def parse(cls, note: str | bytes) -> Checkpoint:
        """Parse a signed checkpoint note (signatures are parsed, not verified).

        Raises
        ------
        NoteError
            When the note or its checkpoint body is malformed.
        """
        text, sigs = parse_note(note)
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("a checkpoint has at least three lines")
        origin, size_text, root_text, *ext = lines
        if not size_text.isdigit() or not size_text.isascii() or (
                size_text != "0" and size_text.startswith("0")):
            raise NoteError(f"checkpoint size {size_text!r} is not a decimal without leading zeros")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("checkpoint root is not base64") from exc
        return cls(origin, int(size_text), root, tuple(ext), tuple(sigs))

    @classmethod
    def coerce(cls, value: Checkpoint | str | bytes) -> Checkpoint:
        """Accept a Checkpoint or its note text."""
        return value if isinstance(value, Checkpoint) else cls.parse(value)

    def signed(self, key: SignerKey) -> Checkpoint:
        """Return this checkpoint with the log's signature added (key name must be the origin)."""
        if key.name != self.origin:
            raise NoteError(f"key {key.name!r} cannot sign checkpoints of {self.origin!r}")
        return self.with_signature(sign_note(self.body, key))

    def with_signature(self, sig: NoteSignature | Cosignature) -> Checkpoint:
        """Return this checkpoint with one more signature line (replacing the same key's)."""
        line = sig.note_signature if isinstance(sig, Cosignature) else sig
        kept = tuple(s for s in self.signatures if (s.name, s.key_id) != (line.name, line.key_id))
        return replace(self, signatures=(*kept, line))

    def unsigned(self) -> Checkpoint:
        """This checkpoint without signatures."""
        return replace(self, signatures=())

    def verify(self, log_key: VerifierKey) -> None:
        """Check the log's signature.

        The origin must be the key's name, and a signature line with that key's name and
        id must verify (lines from unknown keys are ignored, as the spec requires).

        Raises
        ------
        NoteError
            When there is no valid signature by ``log_key``.
        """
        check_key_name(log_key.name)
        if self.origin != log_key.name:
            raise NoteError(f"checkpoint origin {self.origin!r} is not the key's log "
                            f"{log_key.name!r}")
        lines = [s for s in self.signatures if s.matches(log_key)]
        if not lines:
            raise NoteError(f"checkpoint is not signed by {log_key}")
        message = self.body.encode("utf-8")
        for line in lines:
            if not log_key.verify(message, line.signature):
                raise NoteError(f"checkpoint signature by {log_key.name!r} does not verify")

    def cosignatures(self, witness_keys: Iterable[VerifierKey]) -> list[Cosignature]:
        """Return the verified cosignatures by the given witnesses (others are ignored).

        Raises
        ------
        NoteError
            When a line from one of ``witness_keys`` fails to verify.
        """
        out = []
        for key in witness_keys:
            if key.sig_type != SIG_COSIGNATURE:
                raise NoteError(f"{key.name!r} is not a witness (cosigning) key")
            for line in self.signatures:
                if line.matches(key):
                    cos = Cosignature.from_note_signature(line)
                    cos.verify(self.body, key)
                    out.append(cos)
        return out

    def verify_witnessed(self, log_key: VerifierKey, witness_keys: Iterable[VerifierKey] = (),
                         quorum: int = 0) -> list[Cosignature]:
        """Check the log signature and at least ``quorum`` valid cosignatures.

        Returns
        -------
        list of Cosignature
            The verified cosignatures.
        """
        self.verify(log_key)
        cos = self.cosignatures(witness_keys)
        names = {c.name for c in cos}
        if len(names) < quorum:
            raise NoteError(f"checkpoint has {len(names)} valid cosignature(s); {quorum} required")
        return cos
