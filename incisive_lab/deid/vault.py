"""The pseudonym vault: the provider's private map from pseudonyms back to identities.

Only pseudonymisation writes a vault; anonymisation never does. The vault is a SQLite
file holding one row per pseudonym (patient, accession number, UID). Nothing in it is
readable without the provider's secret:

- each row is found by ``HMAC(index key, "<kind>:<pseudonym>")``, so the file does not
  even list the pseudonyms it knows;
- each row's content (the original identifiers) is encrypted with AES-256-GCM under a
  key derived from the secret, with the lookup value as associated data, so a row
  cannot be moved to answer for another pseudonym;
- a check value tells a wrong secret apart from an unknown pseudonym.

Writes happen in one transaction per batch, so a killed run leaves the vault as it was
before the batch or after it; rows are keyed, so a rerun replaces rather than adds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from incisive_lab.deid.keys import Secret
from incisive_lab.errors import IncisiveLabError

__all__ = ["KINDS", "Vault", "VaultError", "open_sealed", "seal"]

FORMAT = "incisive-vault/1"
#: Kinds of pseudonym a vault maps back, in the order a lookup tries them.
KINDS = ("patient", "accession", "uid")


class VaultError(IncisiveLabError):
    """The vault cannot be opened with this secret, or is damaged."""


def seal(aead: AESGCM, aad: bytes, obj: dict[str, Any]) -> tuple[bytes, bytes]:
    """Encrypt ``obj`` as JSON with AES-256-GCM (a fresh random nonce); returns (nonce, ciphertext)."""
    nonce = os.urandom(12)
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return nonce, aead.encrypt(nonce, data, aad)


def open_sealed(aead: AESGCM, aad: bytes, nonce: bytes, ciphertext: bytes) -> dict[str, Any]:
    """Decrypt a row sealed by :func:`seal`; raises VaultError if it was tampered with."""
    try:
        data = aead.decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise VaultError("a vault row failed authentication: the vault was modified or damaged") from None
    result: dict[str, Any] = json.loads(data)
    return result


class Vault:
    """An open vault.

    Parameters
    ----------
    path : path
        The SQLite file (created with mode 0600 if missing).
    secret : Secret
        The provider's secret; an ephemeral anonymisation salt is refused.
    create : bool
        Create the vault if it does not exist (otherwise a missing file is an error).

    Examples
    --------
    >>> with Vault(tmp_path / "vault.sqlite", secret, create=True) as v:  # doctest: +SKIP
    ...     v.lookup(["PSN-7K2M9QX4ZB1TXY3A"])
    """

    def __init__(self, path: str | os.PathLike[str], secret: Secret, *, create: bool = False) -> None:
        if secret.ephemeral:
            raise VaultError("anonymisation is irreversible: it has no vault")
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise VaultError(f"vault {self.path} does not exist")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        self._aead = AESGCM(secret.derive("vault/encryption"))
        self._k_idx = secret.derive("vault/index")
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        check = hmac.new(self._k_idx, b"vault-check", hashlib.sha256).digest()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (lookup BLOB PRIMARY KEY, kind TEXT NOT NULL, "
                "nonce BLOB NOT NULL, ciphertext BLOB NOT NULL)"
            )
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)", [("format", FORMAT.encode()), ("check", check)]
                )
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise VaultError(f"{self.path} is not a readable vault: {exc}") from None
        if rows and rows.get("format") != FORMAT.encode():
            self._db.close()
            raise VaultError(f"{self.path} is not an INCISIVE vault (format {rows.get('format')!r})")
        if rows and not hmac.compare_digest(rows["check"], check):
            self._db.close()
            raise VaultError(f"this secret does not open vault {self.path} (it was created with another secret)")

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def add_rows(self, rows: Iterable[tuple[bytes, str, bytes, bytes]]) -> int:
        """Store sealed rows made by the engine, in one transaction; returns how many."""
        batch = list(rows)
        if not batch:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO entries (lookup, kind, nonce, ciphertext) VALUES (?, ?, ?, ?)", batch
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(batch)

    def put(self, kind: str, pseudonym: str, original: dict[str, Any]) -> None:
        """Store one mapping (used by the clinical spreadsheet de-identifier)."""
        lookup = self._lookup_key(kind, pseudonym)
        nonce, ct = seal(self._aead, lookup, {"kind": kind, "pseudonym": pseudonym, **original})
        self.add_rows([(lookup, kind, nonce, ct)])

    def merge(self, kind: str, pseudonym: str, original: dict[str, Any]) -> None:
        """Add fields to a mapping (creating it if needed); existing fields are updated."""
        lookup = self._lookup_key(kind, pseudonym)
        row = self._db.execute("SELECT nonce, ciphertext FROM entries WHERE lookup = ?", (lookup,)).fetchone()
        current = open_sealed(self._aead, lookup, row[0], row[1]) if row else {"kind": kind, "pseudonym": pseudonym}
        current.update(original)
        nonce, ct = seal(self._aead, lookup, current)
        self.add_rows([(lookup, kind, nonce, ct)])

    def _lookup_key(self, kind: str, pseudonym: str) -> bytes:
        return hmac.new(self._k_idx, f"{kind}:{pseudonym}".encode(), hashlib.sha256).digest()

    def knows(self, kind: str, pseudonym: str) -> bool:
        """Whether the vault holds ``pseudonym`` as a pseudonym of ``kind`` (nothing is decrypted)."""
        if kind not in KINDS:
            raise VaultError(f"unknown pseudonym kind {kind!r} (expected one of {', '.join(KINDS)})")
        key = self._lookup_key(kind, pseudonym.strip())
        return self._db.execute("SELECT 1 FROM entries WHERE lookup = ?", (key,)).fetchone() is not None

    def lookup(self, pseudonyms: Sequence[str]) -> list[dict[str, Any] | None]:
        """The original identifiers of each pseudonym (None where the vault does not know it)."""
        results: list[dict[str, Any] | None] = []
        for p in pseudonyms:
            found: dict[str, Any] | None = None
            for kind in KINDS:
                key = self._lookup_key(kind, p.strip())
                row = self._db.execute("SELECT nonce, ciphertext FROM entries WHERE lookup = ?", (key,)).fetchone()
                if row is not None:
                    found = open_sealed(self._aead, key, row[0], row[1])
                    break
            results.append(found)
        return results
