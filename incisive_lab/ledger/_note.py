"""C2SP signed notes and timestamped witness cosignatures.

A signed note (c2sp.org/signed-note) is a UTF-8 text ending in a newline, a blank line,
and signature lines ``— <key name> <base64(key id || signature)>``. A cosignature
(c2sp.org/tlog-cosignature, Ed25519 type ``0x04``) is such a line whose signature is
``timestamp (u64, big-endian) || Ed25519 signature`` over::

    cosignature/v1
    time <timestamp>
    <the checkpoint's note text>
"""

from __future__ import annotations

import base64
import binascii
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import NoteError
from ._keys import SIG_COSIGNATURE, SIG_ED25519, SignerKey, VerifierKey, check_key_name

__all__ = ["Cosignature", "NoteSignature", "cosign", "format_note", "parse_note", "sign_note"]

_DASH = "\u2014"
#: Most signature lines accepted on one note (the spec asks for at least 16).
MAX_SIGNATURES = 100


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key id and signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def line(self) -> str:
        """The signature line, without its newline."""
        blob = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{_DASH} {self.name} {blob}"

    def matches(self, key: VerifierKey) -> bool:
        """True if this line claims to be from ``key`` (same name and key id)."""
        return self.name == key.name and self.key_id == key.key_id


def format_note(text: str, signatures: Iterable[NoteSignature]) -> str:
    """Assemble a signed note from its text (ending in a newline) and signatures."""
    sigs = list(signatures)
    if not sigs:
        raise NoteError("a signed note needs at least one signature")
    return text + "\n" + "".join(s.line + "\n" for s in sigs)


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines (signatures are not checked).

    Raises
    ------
    NoteError
        When the note is not well-formed.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("a signed note must be UTF-8") from exc
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("a signed note must not contain control characters")
    if not note.endswith("\n"):
        raise NoteError("a signed note must end with a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("a signed note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2:]
    lines = block[:-1].split("\n")
    if not block or len(lines) > MAX_SIGNATURES:
        raise NoteError("a signed note must have between 1 and 100 signatures")
    sigs = []
    for line in lines:
        if not line.startswith(_DASH + " "):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        parts = line[2:].split(" ")
        if len(parts) != 2:
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name, blob = parts
        check_key_name(name)
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError(f"signature of {name!r} is not base64") from exc
        if len(raw) < 5:
            raise NoteError(f"signature of {name!r} is too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return text, sigs


def sign_note(text: str, key: SignerKey) -> NoteSignature:
    """Sign a note text with a log key (type 0x01)."""
    if key.sig_type != SIG_ED25519:
        raise NoteError("note signatures need a key of type 0x01")
    return NoteSignature(key.name, key.key_id, key.sign(text.encode("utf-8")))


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A witness's timestamped cosignature of a checkpoint (c2sp.org/tlog-cosignature).

    Attributes
    ----------
    name, key_id
        The witness's key name and 4-byte key id.
    timestamp
        When it cosigned (POSIX seconds).
    signature
        The 64-byte Ed25519 signature.
    """

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    @property
    def note_signature(self) -> NoteSignature:
        """This cosignature as a note signature line."""
        return NoteSignature(self.name, self.key_id,
                             self.timestamp.to_bytes(8, "big") + self.signature)

    @property
    def line(self) -> str:
        """The signature line, without its newline."""
        return self.note_signature.line

    def __str__(self) -> str:
        return self.line

    @classmethod
    def from_note_signature(cls, sig: NoteSignature) -> Cosignature:
        """Read a cosignature from a note signature line."""
        if len(sig.signature) != 8 + 64:
            raise NoteError(f"signature of {sig.name!r} is not a cosignature")
        timestamp = int.from_bytes(sig.signature[:8], "big")
        if timestamp >= 2**63:
            raise NoteError("cosignature timestamp out of range")
        return cls(sig.name, sig.key_id, timestamp, sig.signature[8:])

    @classmethod
    def parse(cls, line: str) -> Cosignature:
        """Parse one ``— name base64`` cosignature line."""
        _, sigs = parse_note("x\n\n" + line.strip() + "\n")
        return cls.from_note_signature(sigs[0])

    def verify(self, text: str, key: VerifierKey) -> None:
        """Check this cosignature over a checkpoint note text with the witness's key.

        Raises
        ------
        NoteError
            When the key does not match or the signature does not verify.
        """
        if key.sig_type != SIG_COSIGNATURE:
            raise NoteError(f"key {key.name!r} is not a cosigning key (type 0x04)")
        if self.name != key.name or self.key_id != key.key_id:
            raise NoteError(f"cosignature is from {self.name!r}, not from key {key}")
        if not key.verify(_cosigned_message(text, self.timestamp), self.signature):
            raise NoteError(f"cosignature of {self.name!r} does not verify")


def cosign(text: str, key: SignerKey, timestamp: int | None = None) -> Cosignature:
    """Cosign a checkpoint note text with a witness key (type 0x04)."""
    if key.sig_type != SIG_COSIGNATURE:
        raise NoteError("cosignatures need a key of type 0x04")
    ts = int(_time.time()) if timestamp is None else int(timestamp)
    return Cosignature(key.name, key.key_id, ts, key.sign(_cosigned_message(text, ts)))
