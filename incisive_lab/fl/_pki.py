"""Keys and certificates for a Flower deployment: a CA, the SuperLink's TLS certificate,
and SuperNode authentication key pairs.

What flwr 1.41 expects (read from its source, ``flwr/superlink/cli/flower_superlink.py``,
``flwr/supernode/cli/flower_supernode.py`` and ``flwr/cli/supernode/register.py``):

- The SuperLink serves its Fleet, Control and Runtime APIs over one HTTPS port with
  ``--ssl-certfile``, ``--ssl-keyfile`` and ``--ssl-ca-certfile`` (PEM). SuperNodes and the
  ``flwr`` CLI verify it against the CA (``--root-certificates``; ``root-certificates`` in
  the CLI's connection), so the certificate must name the address they dial
  (subject alternative names for ``127.0.0.1`` and ``localhost`` on loopback).
- A SuperNode authenticates with an elliptic-curve key on a NIST curve: the private key in
  OpenSSH format (``--auth-supernode-private-key``), the public key in OpenSSH format for
  ``flwr supernode register`` (which the SuperLink stores as PEM SubjectPublicKeyInfo).
  Every Fleet request carries the public key and a signature over a fresh timestamp.

Private keys are written with mode 0600 and atomically (a temporary file in the same
directory, fsynced, then renamed); directories are created with mode 0700. Nothing here is
ever committed: generate at start-up or in tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from incisive_lab._files import write_atomic

__all__ = ["NodeKey", "Pki"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CURVE = ec.SECP384R1()


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise FileExistsError(f"{path} exists already; refusing to overwrite key material "
                                  f"(open it instead, or remove it first)")


def _check_private(path: Path) -> None:
    """Fail closed on a missing private key or one readable by group or others."""
    if not path.is_file():
        raise FileNotFoundError(f"private key {path} is missing")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"private key {path} has mode {mode:o}; it must be 0600 "
                              f"(readable by its owner only)")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Pki:
    """A certificate authority and the SuperLink's server certificate, as PEM files.

    Attributes
    ----------
    directory : Path
        Where the files live.
    ca_cert : Path
        The CA certificate: what SuperNodes and the ``flwr`` CLI trust (``--root-certificates``).
    ca_key : Path
        The CA's private key (0600): keep it offline in production.
    server_cert, server_key : Path
        The SuperLink's certificate and private key (``--ssl-certfile``/``--ssl-keyfile``).
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def _paths(cls, directory: Path) -> Pki:
        return cls(directory=directory, ca_cert=directory / "ca.pem", ca_key=directory / "ca.key",
                   server_cert=directory / "superlink.pem", server_key=directory / "superlink.key")

    @classmethod
    def generate(cls, directory: str | os.PathLike[str], *,
                 hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                 valid_days: int = 365) -> Pki:
        """Generate a CA and a SuperLink certificate for ``hosts`` (IP addresses or DNS names).

        Parameters
        ----------
        directory : path
            Created (0700) if missing; refuses to overwrite existing key material.
        hosts : sequence of str
            Subject alternative names: every address SuperNodes and the CLI dial.
        valid_days : int
            Validity of both certificates, in days.

        Examples
        --------
        >>> pki = Pki.generate(tmp / "pki")                     # doctest: +SKIP
        >>> SuperLink(state, tls=pki, node_auth=True).start()   # doctest: +SKIP
        """
        if not hosts:
            raise ValueError("hosts must name at least one address the SuperLink is reached at")
        if valid_days < 1:
            raise ValueError(f"valid_days must be at least 1, not {valid_days}")
        pki = cls._paths(Path(directory))
        _refuse_existing(pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key)
        now = datetime.datetime.now(datetime.UTC)
        start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)

        ca_key = ec.generate_private_key(_CURVE)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "INCISIVE Lab Flower CA")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))

        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        server_key = ec.generate_private_key(_CURVE)
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(server_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))

        write_atomic(pki.ca_key, _pem_key(ca_key), private=True)
        write_atomic(pki.server_key, _pem_key(server_key), private=True)
        write_atomic(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        write_atomic(pki.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
        return pki

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Pki:
        """The PKI generated earlier in ``directory``; fails closed on missing files or a key
        readable by anyone but its owner."""
        pki = cls._paths(Path(directory))
        for cert in (pki.ca_cert, pki.server_cert):
            if not cert.is_file():
                raise FileNotFoundError(f"certificate {cert} is missing")
        _check_private(pki.server_key)
        return pki


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format).

    Attributes
    ----------
    name : str
        The SuperNode's name (file stem).
    private_key : Path
        OpenSSH private key (0600), for ``flower-supernode --auth-supernode-private-key``.
    public_key : Path
        OpenSSH public key, for ``flwr supernode register``.
    """

    name: str
    private_key: Path
    public_key: Path

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                             f"and start with a letter or digit")

    @classmethod
    def generate(cls, directory: str | os.PathLike[str], name: str) -> NodeKey:
        """Generate ``<directory>/<name>.key`` (0600) and ``<name>.pub``; refuses to overwrite."""
        cls._check_name(name)
        base = Path(directory)
        key = cls(name=name, private_key=base / f"{name}.key", public_key=base / f"{name}.pub")
        _refuse_existing(key.private_key, key.public_key)
        private = ec.generate_private_key(_CURVE)
        write_atomic(key.private_key, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()), private=True)
        write_atomic(key.public_key, private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            + f" {name}\n".encode(), private=False)
        return key

    @classmethod
    def open(cls, directory: str | os.PathLike[str], name: str) -> NodeKey:
        """The key pair generated earlier; fails closed on a missing or over-readable key."""
        cls._check_name(name)
        base = Path(directory)
        key = cls(name=name, private_key=base / f"{name}.key", public_key=base / f"{name}.pub")
        _check_private(key.private_key)
        if not key.public_key.is_file():
            raise FileNotFoundError(f"public key {key.public_key} is missing")
        return key

    def public_pem(self) -> bytes:
        """The public key as the SuperLink stores it (PEM SubjectPublicKeyInfo)."""
        public = serialization.load_ssh_public_key(self.public_key.read_bytes())
        return public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
