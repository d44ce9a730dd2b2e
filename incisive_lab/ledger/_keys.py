"""Ed25519 keys in the C2SP signed-note formats, and key files.

Verifier (public) keys are written ``<name>+<key id hex>+<base64(type || public key)>``
(C2SP signed-note "vkey"); signer (private) keys ``PRIVATE+KEY+<name>+<key id
hex>+<base64(type || seed)>`` (the golang.org/x/mod/sumdb/note format). The key id is
``SHA-256(name || 0x0A || type || public key)[:4]``. Two signature types are used:

* ``0x01`` (:data:`SIG_ED25519`): a log signing its checkpoints;
* ``0x04`` (:data:`SIG_COSIGNATURE`): a witness cosigning checkpoints (c2sp.org/tlog-cosignature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import NoteError

__all__ = ["SIG_COSIGNATURE", "SIG_ED25519", "SignerKey", "VerifierKey", "check_key_name",
           "load_or_create_signer"]

#: Signature type of Ed25519 note signatures (log checkpoints).
SIG_ED25519 = 0x01
#: Signature type of timestamped Ed25519 witness cosignatures.
SIG_COSIGNATURE = 0x04
_TYPES = (SIG_ED25519, SIG_COSIGNATURE)


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid note key name (non-empty, no spaces, no ``+``)."""
    if not isinstance(name, str) or not name:
        raise NoteError("a key name (origin) must be a non-empty string")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 or c == "\x7f" for c in name):
        raise NoteError(f"key name {name!r} must not contain spaces, '+' or control characters")
    return name


def _key_id(name: str, sig_type: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public).digest()[:4]


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key that verifies note signatures or cosignatures.

    Examples
    --------
    >>> k = VerifierKey.parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    >>> k.name, k.key_id.hex()
    ('PeterNeumann', 'c74f20a3')
    """

    name: str
    public_key: bytes
    sig_type: int = SIG_ED25519

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in _TYPES:
            raise NoteError(f"unsupported signature type 0x{self.sig_type:02x}")
        if len(self.public_key) != 32:
            raise NoteError("an Ed25519 public key has 32 bytes")

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id."""
        return _key_id(self.name, self.sig_type, self.public_key)

    def __str__(self) -> str:
        data = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{data}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse a ``name+id+data`` verifier key; the id must match the key."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or len(parts[1]) != 8:
            raise NoteError(f"malformed verifier key {text.strip()[:60]!r}")
        name, hex_id, data = parts
        try:
            raw = base64.b64decode(data, validate=True)
            want = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("malformed verifier key encoding") from exc
        if len(raw) != 33:
            raise NoteError("verifier key has the wrong length")
        key = cls(name, raw[1:], raw[0])
        if key.key_id != want:
            raise NoteError(f"verifier key id {hex_id} does not match the key")
        return key

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return True if ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SignerKey:
    """A private Ed25519 key with its note name and signature type.

    ``repr`` never shows the private key; :meth:`to_text` does (write it only to a file
    with mode 0600).
    """

    __slots__ = ("_private", "name", "sig_type", "verifier")

    def __init__(self, name: str, seed: bytes, sig_type: int = SIG_ED25519) -> None:
        check_key_name(name)
        if sig_type not in _TYPES:
            raise NoteError(f"unsupported signature type 0x{sig_type:02x}")
        if len(seed) != 32:
            raise NoteError("an Ed25519 private key seed has 32 bytes")
        self.name = name
        self.sig_type = sig_type
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._private.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
        self.verifier = VerifierKey(name, public, sig_type)

    @classmethod
    def generate(cls, name: str, sig_type: int = SIG_ED25519) -> SignerKey:
        """Make a fresh random key."""
        return cls(name, secrets.token_bytes(32), sig_type)

    @classmethod
    def parse(cls, text: str) -> SignerKey:
        """Parse ``PRIVATE+KEY+name+id+data``; the id must match the key."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or len(parts[3]) != 8:
            raise NoteError("malformed signer key")
        _, _, name, hex_id, data = parts
        try:
            raw = base64.b64decode(data, validate=True)
            want = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("malformed signer key encoding") from exc
        if len(raw) != 33:
            raise NoteError("signer key has the wrong length")
        key = cls(name, raw[1:], raw[0])
        if key.verifier.key_id != want:
            raise NoteError(f"signer key id {hex_id} does not match the key")
        return key

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id (same as the verifier's)."""
        return self.verifier.key_id

    def to_text(self) -> str:
        """The ``PRIVATE+KEY+...`` form (secret)."""
        seed = self._private.private_bytes(serialization.Encoding.Raw,
                                           serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())
        data = base64.b64encode(bytes([self.sig_type]) + seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{data}"

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"SignerKey({str(self.verifier)!r})"


def _write_new(path: Path, text: str, mode: int) -> bool:
    """Publish ``text`` at ``path`` atomically unless it exists; True if we wrote it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_signer(key_path: Path, pub_path: Path, name: str | None,
                          sig_type: int) -> SignerKey:
    """Load the private key at ``key_path``, or generate it (mode 0600) if there is none.

    The public key is (re)published at ``pub_path``. Safe against concurrent first
    starts: exactly one key wins and every process loads it.

    Raises
    ------
    NoteError
        When the key file is readable by group or others, when its name differs from
        ``name``, or when a public key exists without its private key (a new key would
        silently change the node's identity).
    """
    if not key_path.exists():
        if pub_path.exists():
            raise NoteError(f"{pub_path} exists but {key_path} does not: refusing to make a new "
                            "key under an identity that others already trust")
        if name is None:
            raise NoteError(f"no key at {key_path} and no name (origin) to make one")
        key_path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(key_path, SignerKey.generate(name, sig_type).to_text() + "\n", 0o600)
        _fsync_dir(key_path.parent)
    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NoteError(f"{key_path} is accessible by group or others "
                        f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {key_path}")
    signer = SignerKey.parse(key_path.read_text(encoding="utf-8"))
    if signer.sig_type != sig_type:
        raise NoteError(f"{key_path} holds a key of signature type 0x{signer.sig_type:02x}, "
                        f"expected 0x{sig_type:02x}")
    if name is not None and signer.name != name:
        raise NoteError(f"{key_path} is the key of {signer.name!r}, not {name!r}")
    vkey = str(signer.verifier) + "\n"
    if not pub_path.exists() or pub_path.read_text(encoding="utf-8") != vkey:
        tmp = pub_path.with_name(f".{pub_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(vkey, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, pub_path)
        _fsync_dir(pub_path.parent)
    return signer
