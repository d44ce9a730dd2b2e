"""Test doubles for token verification: a loopback issuer and a token forger.

:class:`LoopbackIssuer` is a real HTTP server on 127.0.0.1 (a thread running
``http.server``) that serves an OIDC discovery document and a JWKS for keys generated in
the test, counts the requests per path, and can be told to publish other keys (rotation),
to fail, or to lie about its issuer. :class:`TestKey` is a freshly generated key pair that
signs tokens; :func:`forge_unsigned` and :func:`forge_hmac` build the tokens that no
honest library would sign. Nothing here is committed key material: every key is generated
when the tests run.

The node's tests may reuse these to forge tokens against its HTTP API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AUDIENCE = "https://node-a.test/"
SUBSTANTIAL = "http://eidas.europa.eu/LoA/substantial"


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    """Compact JSON, base64url-encoded."""
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class TestKey:
    """A generated signing key pair with its ``kid`` and default JWS algorithm."""

    __test__ = False  # not a pytest test class

    kid: str | None
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str | None, alg: str = "RS256") -> TestKey:
        """A new 2048-bit RSA key."""
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str | None) -> TestKey:
        """A new P-256 key (ES256)."""
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def ed25519(cls, kid: str | None) -> TestKey:
        """A new Ed25519 key (EdDSA)."""
        return cls(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    @property
    def public(self) -> Any:
        """The public half."""
        return self.private.public_key()

    def public_pem(self) -> bytes:
        """The public key as PEM (what an attacker would use as an HMAC secret)."""
        return bytes(
            self.public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def jwk(self, *, with_kid: bool = True, alg: str | None = None) -> dict[str, Any]:
        """The public JWK, with ``use: sig``, the ``kid`` (unless ``with_kid`` is false) and
        an ``alg`` member only when given."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(self.public, as_dict=True)
        elif isinstance(self.private, ec.EllipticCurvePrivateKey):
            jwk = ECAlgorithm.to_jwk(self.public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(self.public, as_dict=True)
        jwk = {k: v for k, v in jwk.items() if k not in {"kid", "alg"}}
        jwk["use"] = "sig"
        if with_kid and self.kid is not None:
            jwk["kid"] = self.kid
        if alg is not None:
            jwk["alg"] = alg
        return jwk

    def sign(
        self,
        claims: dict[str, Any],
        *,
        alg: str | None = None,
        kid: str | bool | None = True,
        typ: str | None = "at+jwt",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token signed with this key. ``kid=True``: this key's kid; ``False``/``None``:
        no kid header; a string: that kid (forged)."""
        header: dict[str, Any] = dict(headers or {})
        if kid is True:
            if self.kid is not None:
                header["kid"] = self.kid
        elif isinstance(kid, str):
            header["kid"] = kid
        header["typ"] = typ  # PyJWT drops a None typ
        # Sign the JSON bytes with PyJWS, so that no claim check of PyJWT's encoder stands
        # in the way of a forgery (an ``iss`` list, an ``exp`` string...).
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jwt.api_jws.encode(payload, self.private, algorithm=alg or self.alg, headers=header)


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    """A valid RFC 9068 claim set for :data:`AUDIENCE`; ``name=None`` removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": issuer,
        "sub": "user-4711",
        "aud": AUDIENCE,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "client_id": "incisive-hub",
        "scope": "openid dicomweb fhir",
        "acr": SUBSTANTIAL,
        "preferred_username": "alice",
        "email": "alice@example.test",
        "roles": ["researcher"],
        "groups": ["/incisive/annotator"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge_unsigned(claims: dict[str, Any], *, kid: str | None = None, alg: str = "none") -> str:
    """An ``alg: none`` token (empty signature)."""
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = kid
    return f"{b64json(header)}.{b64json(claims)}."


def forge_hmac(
    claims: dict[str, Any], secret: bytes, *, kid: str | None, alg: str = "HS256"
) -> str:
    """An HMAC-signed token, e.g. with the issuer's *public* key PEM as the secret (the
    classic algorithm-confusion attack; PyJWT itself refuses to sign this)."""
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    mac = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(mac)}"


class LoopbackIssuer:
    """A real OIDC issuer's key endpoints on 127.0.0.1, served from a thread.

    Attributes
    ----------
    jwks
        The JWKS document served (replace it to rotate keys).
    status
        HTTP status to answer every request with instead (``None``: serve normally).
    claimed_issuer
        The ``issuer`` the discovery document names (default: the real one).
    hits
        Requests per path.
    """

    DISCOVERY = "/realms/incisive/.well-known/openid-configuration"
    JWKS = "/realms/incisive/protocol/openid-connect/certs"

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.status: int | None = None
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits[self.path] += 1
                if outer.status is not None:
                    body, status = b"{}", outer.status
                elif self.path == outer.DISCOVERY:
                    body, status = json.dumps(outer.discovery()).encode(), 200
                elif self.path == outer.JWKS:
                    body, status = json.dumps(outer.jwks).encode(), 200
                else:
                    body, status = b"{}", 404
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.base + "/realms/incisive"
        self.claimed_issuer = self.issuer
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def discovery(self) -> dict[str, Any]:
        """The OIDC discovery document served."""
        return {
            "issuer": self.claimed_issuer,
            "jwks_uri": self.base + self.JWKS,
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        }

    def publish(self, *keys: TestKey, with_kid: bool = True) -> None:
        """Serve exactly these keys' public JWKs."""
        self.jwks = {"keys": [k.jwk(with_kid=with_kid) for k in keys]}

    @property
    def jwks_hits(self) -> int:
        """How many times the JWKS was requested."""
        with self._lock:
            return self.hits[self.JWKS]

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def loopback_issuer() -> Iterator[LoopbackIssuer]:
    """A :class:`LoopbackIssuer` for the duration of a ``with`` block."""
    issuer = LoopbackIssuer()
    try:
        yield issuer
    finally:
        issuer.close()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds
