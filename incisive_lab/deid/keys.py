"""The provider's secret and everything keyed by it.

A provider keeps one secret (32 random bytes, hex in a file readable only by its
owner). Every keyed value in pseudonymisation derives from it through HKDF-SHA256 with
a distinct label, so that the patient pseudonym, the UID map, the date shift and the
vault's encryption and index keys are independent of each other:

- patient pseudonyms and accession-number pseudonyms: HMAC-SHA256, truncated;
- replacement UIDs: ``2.25.<int>`` of an RFC 9562 version-8 UUID made from an HMAC;
- the per-patient date shift: a whole number of days in [-3650, -400] from an HMAC;
- the vault: AES-256-GCM encryption key and an HMAC key for its lookup index.

Anonymisation uses the same construction with a fresh random *salt* in place of the
secret, generated per run and never stored: the values stay consistent within the run
(so that studies, series and references still link) and cannot be recomputed later.

Examples
--------
>>> secret = Secret.generate()
>>> p = Pseudonymizer(secret)
>>> p.patient("12345") == Pseudonymizer(secret).patient("12345")
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from incisive_lab.errors import IncisiveLabError

__all__ = ["Pseudonymizer", "Secret", "SecretError", "write_secret_file"]

_MIN_SECRET_BYTES = 32
_HKDF_SALT = b"incisive-lab/keys/v1"
#: Date shifts are drawn from this range of days (both ends included).
DATE_SHIFT_RANGE = (-3650, -400)


class SecretError(IncisiveLabError):
    """The secret file is missing, malformed or readable by others."""


class Secret:
    """Key material: the provider's secret, or a per-run random salt.

    Parameters
    ----------
    material : bytes
        At least 32 bytes.
    """

    __slots__ = ("_material", "ephemeral")

    def __init__(self, material: bytes, *, ephemeral: bool = False) -> None:
        if len(material) < _MIN_SECRET_BYTES:
            raise SecretError(
                f"a secret needs at least {_MIN_SECRET_BYTES} bytes of key material, got {len(material)}"
            )
        self._material = bytes(material)
        #: True for a per-run anonymisation salt that must never be stored.
        self.ephemeral = ephemeral

    def __repr__(self) -> str:  # never show key material
        return f"Secret(<{len(self._material)} bytes>, ephemeral={self.ephemeral})"

    @classmethod
    def generate(cls, *, ephemeral: bool = False) -> Secret:
        """Fresh random key material (``secrets.token_bytes(32)``)."""
        return cls(secrets.token_bytes(_MIN_SECRET_BYTES), ephemeral=ephemeral)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Secret:
        """Read a secret file written by :func:`write_secret_file` (hex) or raw bytes.

        Raises
        ------
        SecretError
            If the file is missing, too short, or readable or writable by group or others.
        """
        p = Path(path)
        try:
            mode = p.stat().st_mode
            raw = p.read_bytes()
        except FileNotFoundError:
            raise SecretError(
                f"secret file {p} does not exist; create one with `incisive-lab keygen {p}`"
            ) from None
        except OSError as exc:
            raise SecretError(f"cannot read secret file {p}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"secret file {p} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {p}`"
            )
        text = raw.strip()
        try:
            material = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            material = raw
        if len(material) < _MIN_SECRET_BYTES:
            raise SecretError(
                f"secret file {p} holds {len(material)} bytes of key material; at least "
                f"{_MIN_SECRET_BYTES} are needed (`incisive-lab keygen` writes 32 random bytes)"
            )
        return cls(material)

    def derive(self, label: str, length: int = 32) -> bytes:
        """An independent sub-key for ``label`` (HKDF-SHA256)."""
        return HKDF(
            algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=label.encode()
        ).derive(self._material)


def write_secret_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write 32 fresh random bytes as hex to ``path`` with mode 0600, atomically.

    Raises
    ------
    SecretError
        If the file exists and ``overwrite`` is false (a lost secret cannot be recovered,
        and replacing one breaks every pseudonym made with it).
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise SecretError(
            f"{p} already exists; refusing to replace a secret (pseudonyms made with it "
            "would no longer match)"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (secrets.token_bytes(_MIN_SECRET_BYTES).hex() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    return p


def _b32(digest: bytes, chars: int) -> str:
    return base64.b32encode(digest).decode("ascii")[:chars]


class Pseudonymizer:
    """Keyed, deterministic replacements for identifiers.

    Parameters
    ----------
    secret : Secret
        The provider's secret (pseudonymisation) or a per-run salt (anonymisation).

    Notes
    -----
    Patient pseudonyms look like ``PSN-7K2M9QX4ZB1TXY3A`` (``ANO-`` when the key is an
    ephemeral anonymisation salt); accession pseudonyms are 16 characters (the SH limit).
    """

    __slots__ = ("_k_acc", "_k_date", "_k_patient", "_k_uid", "_patient_cache", "_shift_cache", "_uid_cache", "prefix")

    def __init__(self, secret: Secret) -> None:
        self._k_patient = secret.derive("pseudonym/patient")
        self._k_acc = secret.derive("pseudonym/accession")
        self._k_uid = secret.derive("pseudonym/uid")
        self._k_date = secret.derive("pseudonym/date-shift")
        self._uid_cache: dict[str, str] = {}
        self._patient_cache: dict[str, str] = {}
        self._shift_cache: dict[str, int] = {}
        self.prefix = "ANO-" if secret.ephemeral else "PSN-"

    def patient(self, patient_key: str) -> str:
        """The pseudonym of a patient, from the patient's identifier."""
        cached = self._patient_cache.get(patient_key)
        if cached is None:
            digest = hmac.new(self._k_patient, patient_key.encode(), hashlib.sha256).digest()
            cached = self._patient_cache[patient_key] = self.prefix + _b32(digest, 16)
        return cached

    def accession(self, value: str) -> str:
        """The pseudonym of an accession number (16 characters, fits SH)."""
        digest = hmac.new(self._k_acc, value.encode(), hashlib.sha256).digest()
        return "A" + _b32(digest, 15)

    def uid(self, uid: str) -> str:
        """A replacement UID: ``2.25.`` and the integer of a version-8 UUID from an HMAC."""
        cached = self._uid_cache.get(uid)
        if cached is not None:
            return cached
        b = bytearray(hmac.new(self._k_uid, uid.encode(), hashlib.sha256).digest()[:16])
        b[6] = (b[6] & 0x0F) | 0x80  # version 8 (RFC 9562, custom)
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122/9562 variant
        new = "2.25." + str(int.from_bytes(b, "big"))
        if len(self._uid_cache) > 200_000:
            self._uid_cache.clear()
        self._uid_cache[uid] = new
        return new

    def date_shift_days(self, patient_key: str) -> int:
        """The patient's date shift in days, constant for the patient, in DATE_SHIFT_RANGE."""
        cached = self._shift_cache.get(patient_key)
        if cached is None:
            lo, hi = DATE_SHIFT_RANGE
            digest = hmac.new(self._k_date, patient_key.encode(), hashlib.sha256).digest()
            cached = self._shift_cache[patient_key] = lo + int.from_bytes(digest[:8], "big") % (hi - lo + 1)
        return cached
