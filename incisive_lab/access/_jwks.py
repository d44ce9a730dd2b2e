"""The issuer's signing keys: OIDC discovery, a cached JWKS, rotation by ``kid``.

:class:`JwksCache` fetches the JSON Web Key Set (RFC 7517) of one issuer, either from a
given ``jwks_uri`` or by OIDC discovery (``<issuer>/.well-known/openid-configuration``),
keeps it for ``ttl`` seconds, and refetches early when a token names a ``kid`` it does not
hold (key rotation) — but at most once per ``refetch_interval`` seconds, so that tokens with
forged ``kid`` values cannot make the service hammer the identity provider. Only public
signature keys of asymmetric types are kept (RSA, EC P-256/384/521, OKP Ed25519/Ed448);
symmetric (``oct``) keys, encryption keys and private members are dropped.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from ._errors import JwksError, Reason, TokenError

__all__ = ["ASYMMETRIC_ALGORITHMS", "JwksCache", "SigningKey"]

log = logging.getLogger(__name__)

#: Every algorithm this package can verify; HMAC (``HS*``) and ``none`` are never here.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {
    "P-256": frozenset({"ES256"}),
    "P-384": frozenset({"ES384"}),
    "P-521": frozenset({"ES512"}),
}
_OKP_ALGS = {"Ed25519": frozenset({"EdDSA"}), "Ed448": frozenset({"EdDSA"})}
_PUBLIC_MEMBERS = {
    "RSA": ("kty", "kid", "use", "alg", "key_ops", "n", "e"),
    "EC": ("kty", "kid", "use", "alg", "key_ops", "crv", "x", "y"),
    "OKP": ("kty", "kid", "use", "alg", "key_ops", "crv", "x"),
}
_MAX_DOCUMENT_BYTES = 512 * 1024
_MAX_KEYS = 64


@dataclass(frozen=True)
class SigningKey:
    """One usable public signing key of the issuer.

    Attributes
    ----------
    kid
        The key id, or ``None`` when the JWKS entry has none.
    kty
        The JWK key type: ``RSA``, ``EC`` or ``OKP``.
    algorithms
        The JWS algorithms this key may verify: derived from its type and curve, narrowed
        to the JWK's own ``alg`` when it names one.
    key
        The ``cryptography`` public key object.
    """

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[SigningKey, ...]
    fetched_at: float  # clock() time of the successful fetch

    def find(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            # The single-key JWKS without kid (oidc-provider-mock style): unambiguous only
            # when the issuer publishes exactly one usable key.
            return self.keys[0] if len(self.keys) == 1 else None
        matches = [k for k in self.keys if k.kid == kid]
        return matches[0] if len(matches) == 1 else None


def _check_url(url: str, what: str) -> str:
    """Require https, except plain http to a loopback host (tests, the embedded default)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        if host == "localhost":
            return url
        try:
            if ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
    raise JwksError(f"{what} must be an https URL (http only on loopback), got {url!r}")


def _parse_key(jwk: Any) -> SigningKey | None:
    """A usable public signing key from one JWK, or ``None`` (with a log line) to skip it."""
    if not isinstance(jwk, Mapping):
        return None
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        log.warning("JWKS: skipping a key whose kid is not a string")
        return None
    if kty not in _PUBLIC_MEMBERS:
        log.info("JWKS: skipping key kid=%r of type %r (not an asymmetric signing key)", kid, kty)
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if kty == "RSA":
        algs = _RSA_ALGS
    elif kty == "EC":
        algs = _EC_ALGS.get(jwk.get("crv", ""), frozenset())
    else:
        algs = _OKP_ALGS.get(jwk.get("crv", ""), frozenset())
    alg = jwk.get("alg")
    if alg is not None:
        algs = algs & {alg} if isinstance(alg, str) else frozenset()
    if not algs:
        log.warning("JWKS: skipping key kid=%r: no usable algorithm for %s/%r", kid, kty, alg)
        return None
    public = {m: jwk[m] for m in _PUBLIC_MEMBERS[kty] if m in jwk}  # drop private members
    try:
        loaded = PyJWK(public, algorithm=sorted(algs)[0])
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.warning("JWKS: skipping key kid=%r: %s", kid, exc)
        return None
    key = loaded.key
    if hasattr(key, "private_bytes"):  # defensive: never verify with a private key object
        key = key.public_key()
    if kty == "RSA" and key.key_size < 2048:
        log.warning("JWKS: skipping RSA key kid=%r shorter than 2048 bits", kid)
        return None
    return SigningKey(kid=kid, kty=kty, algorithms=frozenset(algs), key=key)


class JwksCache:
    """The cached signing keys of one issuer, refreshed on expiry and on key rotation.

    Thread-safe: lookups read an immutable snapshot; fetches are serialised, so many
    concurrent requests with the same new ``kid`` cause one fetch. Constructing the cache
    does no I/O; the first lookup (or :meth:`refresh`) fetches.

    Parameters
    ----------
    jwks_uri
        The JWKS URL. Use :meth:`for_issuer` to find it by OIDC discovery instead.
    http
        An ``httpx.Client`` to use (not closed by :meth:`close`), or an
        ``httpx.BaseTransport`` (e.g. ``httpx.MockTransport`` in unit tests) for a client
        the cache owns; ``None`` for a plain client of its own.
    ttl
        Seconds a fetched JWKS is used before it is fetched again (default 300).
    refetch_interval
        Least number of seconds between two fetches caused by unknown ``kid`` values or
        failed fetches (default 30): the bound on traffic that forged tokens can cause.
    max_stale
        Seconds past ``ttl`` that the last good JWKS keeps being used while the issuer is
        unreachable (default 3600); after that lookups fail with ``jwks-unavailable``.
    timeout
        Seconds for each HTTP request of a client the cache owns (default 5).
    clock
        Monotonic clock in seconds (tests pass a fake one).

    Examples
    --------
    >>> jwks = JwksCache.for_issuer("https://idp.example/realms/incisive")  # doctest: +SKIP
    >>> jwks.key_for("k-2024-06").algorithms  # doctest: +SKIP
    frozenset({'RS256', 'PS256', ...})
    """

    def __init__(
        self,
        jwks_uri: str,
        *,
        http: httpx.Client | httpx.BaseTransport | None = None,
        ttl: float = 300.0,
        refetch_interval: float = 30.0,
        max_stale: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        _issuer: str | None = None,
    ) -> None:
        if ttl <= 0 or refetch_interval < 0 or max_stale < 0:
            raise ValueError("ttl must be > 0; refetch_interval and max_stale must be >= 0")
        self._issuer = _issuer
        self._jwks_uri: str | None = (
            None if _issuer is not None else _check_url(jwks_uri, "jwks_uri")
        )
        if isinstance(http, httpx.Client):
            self._client, self._owns_client = http, False
        else:
            self._client = httpx.Client(transport=http, timeout=timeout, follow_redirects=False)
            self._owns_client = True
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.max_stale = max_stale
        self._clock = clock
        self._keys: _KeySet | None = None
        self._last_attempt: float | None = None
        self._fetch_lock = threading.Lock()
        self.fetch_count = 0
        """Number of JWKS fetches attempted so far (for metrics and tests)."""

    @classmethod
    def for_issuer(
        cls,
        issuer: str,
        *,
        http: httpx.Client | httpx.BaseTransport | None = None,
        ttl: float = 300.0,
        refetch_interval: float = 30.0,
        max_stale: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> JwksCache:
        """A cache whose ``jwks_uri`` comes from the issuer's OIDC discovery document.

        The document is fetched on first use from
        ``<issuer>/.well-known/openid-configuration``; its ``issuer`` must equal ``issuer``
        exactly (OpenID Connect Discovery §4.3) and its ``jwks_uri`` must be https (or
        http on loopback). Other parameters as for :class:`JwksCache`.
        """
        url = _check_url(issuer.rstrip("/") + "/.well-known/openid-configuration", "issuer")
        return cls(
            url,
            http=http,
            ttl=ttl,
            refetch_interval=refetch_interval,
            max_stale=max_stale,
            timeout=timeout,
            clock=clock,
            _issuer=issuer,
        )

    # -- public -----------------------------------------------------------------------

    @property
    def jwks_uri(self) -> str | None:
        """The JWKS URL (``None`` until discovery has run for :meth:`for_issuer` caches)."""
        return self._jwks_uri

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """The keys of the last successful fetch (empty before the first)."""
        snapshot = self._keys
        return snapshot.keys if snapshot is not None else ()

    def key_for(self, kid: str | None) -> SigningKey:
        """The issuer's key for a token's ``kid`` (``None``: the token names no key).

        Fetches when nothing is cached or the cache is older than ``ttl``; refetches once
        (rate-limited) when ``kid`` is unknown, to follow key rotation.

        Raises
        ------
        TokenError
            ``unknown-kid`` when no single key matches (without ``kid``: when the JWKS
            does not hold exactly one key); ``jwks-unavailable`` when the keys cannot be
            fetched and no usable cached copy remains.
        """
        snapshot = self._current()
        found = snapshot.find(kid)
        if found is None:
            # Under the lock: wait for a fetch in flight (another thread may be fetching
            # this very kid), then refetch only if nobody did and the rate limit allows.
            snapshot = self._fetch_if(lambda ks: ks is snapshot and self._may_refetch())
            found = snapshot.find(kid)
        if found is not None:
            return found
        if kid is None:
            raise TokenError(
                Reason.UNKNOWN_KID,
                f"token names no kid and the issuer's JWKS holds {len(snapshot.keys)} keys "
                "(a key without kid is accepted only from a single-key JWKS)",
            )
        raise TokenError(Reason.UNKNOWN_KID, f"no key of the issuer has kid {kid[:80]!r}")

    def refresh(self, *, force: bool = False) -> tuple[SigningKey, ...]:
        """Fetch the JWKS now (e.g. at start-up) unless a fresh copy is cached.

        Raises
        ------
        JwksError
            The document cannot be fetched or holds no usable key.
        """

        def stale(ks: _KeySet | None) -> bool:
            return force or ks is None or self._age(ks) >= self.ttl

        with self._fetch_lock:
            if stale(self._keys):
                self._keys = self._download()
            assert self._keys is not None
            return self._keys.keys

    def close(self) -> None:
        """Close the HTTP client if the cache created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> JwksCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JwksCache({self._jwks_uri or self._issuer!r}, keys={len(self.keys)})"

    # -- internals --------------------------------------------------------------------

    def _age(self, ks: _KeySet) -> float:
        return self._clock() - ks.fetched_at

    def _may_refetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self.refetch_interval

    def _current(self) -> _KeySet:
        """A usable snapshot: fetch if none, refresh if older than ``ttl``."""
        snapshot = self._keys
        if snapshot is None:
            return self._fetch_if(lambda ks: ks is None and self._may_refetch())
        if self._age(snapshot) < self.ttl:
            return snapshot
        # Expired. One thread refreshes; the others keep using the old keys meanwhile.
        if not self._fetch_lock.acquire(blocking=False):
            return self._stale_or_fail(snapshot, "a refresh is in progress")
        try:
            if self._keys is not snapshot or not self._may_refetch():
                return self._stale_or_fail(self._keys or snapshot, "refetch rate limit")
            try:
                self._keys = self._download()
                return self._keys
            except JwksError as exc:
                return self._stale_or_fail(snapshot, str(exc))
        finally:
            self._fetch_lock.release()

    def _stale_or_fail(self, snapshot: _KeySet, why: str) -> _KeySet:
        if self._age(snapshot) < self.ttl + self.max_stale:
            if self._age(snapshot) >= self.ttl:
                log.debug("JWKS: using keys past their ttl (%s)", why)
            return snapshot
        raise TokenError(
            Reason.JWKS_UNAVAILABLE, f"the issuer's keys are older than ttl + max_stale ({why})"
        )

    def _fetch_if(self, needed: Callable[[_KeySet | None], bool]) -> _KeySet:
        """Fetch under the lock if ``needed(current)`` still holds once the lock is held."""
        with self._fetch_lock:
            current = self._keys
            if needed(current):
                try:
                    self._keys = current = self._download()
                except JwksError as exc:
                    if current is None:
                        raise TokenError(Reason.JWKS_UNAVAILABLE, str(exc)) from exc
                    log.warning("JWKS: refetch failed, keeping the cached keys: %s", exc)
            if current is None:  # another thread's fetch failed and we may not retry yet
                raise TokenError(Reason.JWKS_UNAVAILABLE, "the issuer's keys could not be fetched")
            return current

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            with self._client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise JwksError(f"GET {url} answered HTTP {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_DOCUMENT_BYTES:
                        raise JwksError(
                            f"GET {url}: document larger than {_MAX_DOCUMENT_BYTES} bytes"
                        )
        except httpx.HTTPError as exc:
            raise JwksError(f"GET {url} failed: {exc}") from exc
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise JwksError(f"GET {url}: not JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise JwksError(f"GET {url}: not a JSON object")
        return doc

    def _download(self) -> _KeySet:
        """Fetch (discovery if needed, then) the JWKS. Call with the fetch lock held."""
        self._last_attempt = self._clock()
        self.fetch_count += 1
        if self._jwks_uri is None:
            assert self._issuer is not None
            discovery_url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta = self._get_json(discovery_url)
            if meta.get("issuer") != self._issuer:
                raise JwksError(
                    f"discovery document names issuer {str(meta.get('issuer'))[:200]!r}, "
                    f"expected {self._issuer!r}"
                )
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str):
                raise JwksError("discovery document has no jwks_uri")
            self._jwks_uri = _check_url(uri, "jwks_uri")
        doc = self._get_json(self._jwks_uri)
        raw = doc.get("keys")
        if not isinstance(raw, list):
            raise JwksError(f"{self._jwks_uri}: no 'keys' array")
        if len(raw) > _MAX_KEYS:
            raise JwksError(f"{self._jwks_uri}: {len(raw)} keys (more than {_MAX_KEYS})")
        keys = tuple(k for k in map(_parse_key, raw) if k is not None)
        if not keys:
            raise JwksError(f"{self._jwks_uri}: no usable public signing key")
        log.info("JWKS: fetched %d keys from %s", len(keys), self._jwks_uri)
        return _KeySet(keys=keys, fetched_at=self._clock())
