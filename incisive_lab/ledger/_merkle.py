"""RFC 9162 Merkle tree hashing, proof shapes and proof verification.

Pure functions over hashes; storage lives in :mod:`._store`. Terms used here:

*leaf hash*
    ``SHA-256(0x00 || entry bytes)`` (RFC 9162, section 2.1.1).
*node hash*
    ``SHA-256(0x01 || left || right)``.
*perfect node* ``(level, index)``
    the root of the complete subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``;
    level 0 is a leaf. Every hash in a proof is the RFC 9162 tree hash ``MTH(D[a:b])`` of a
    range ``[a, b)``, which is a right fold over the range's perfect nodes
    (:func:`perfect_nodes`), so a store that keeps every perfect node answers any proof
    with ``O(log n)`` reads.
*node key*
    the position of a perfect internal node (level >= 1) in the order in which an
    append-only log completes them (:func:`node_key`). Stored nodes sorted by key come in
    exactly the order a streaming verifier recomputes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ConsistencyProof",
    "InclusionProof",
    "consistency_ranges",
    "fold_range",
    "inclusion_ranges",
    "internal_node_count",
    "leaf_hash",
    "node_hash",
    "node_key",
    "perfect_nodes",
    "root_from_inclusion_proof",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256

#: Size in bytes of every hash in the tree.
HASH_SIZE = 32
#: RFC 9162 root hash of the empty tree: ``SHA-256()``.
EMPTY_ROOT = _sha256(b"").digest()
#: Longest proof accepted (trees of up to 2**64 leaves).
MAX_PROOF_LENGTH = 128


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash ``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose the leaf range ``[start, end)`` into perfect nodes, largest first.

    The range must be one that RFC 9162's recursion produces (``start`` a multiple of the
    largest power of two not exceeding ``end - start``), which holds for every range in an
    inclusion or consistency proof and for ``[0, n)``.

    Returns
    -------
    list of (level, index)
    """
    out: list[tuple[int, int]] = []
    size = end - start
    pos = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of a range's perfect nodes (largest first) into ``MTH`` of the range."""
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = _sha256(b"\x01" + h + result).digest()
    return result


def node_key(level: int, index: int) -> int:
    """Return the storage key of perfect internal node ``(level, index)`` (``level >= 1``).

    Keys number internal nodes in the order an append-only log completes them: appending
    leaf ``j`` completes the nodes of levels ``1 .. ctz(j + 1)`` ending at ``j``, after the
    ``j - popcount(j)`` nodes completed by earlier leaves. A tree of ``n`` leaves has
    exactly :func:`internal_node_count` ``(n)`` nodes, keys ``0 .. count - 1``.
    """
    last = ((index + 1) << level) - 1
    return last - last.bit_count() + level - 1


def internal_node_count(size: int) -> int:
    """Number of perfect internal nodes in a tree of ``size`` leaves."""
    return size - size.bit_count()


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose tree hashes form the inclusion proof of ``index`` (RFC 9162 2.1.3.1).

    Returned bottom-up, i.e. in proof order.
    """
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    path: list[tuple[int, int]] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append((lo + k, hi))
            hi = lo + k
        else:
            path.append((lo, lo + k))
            lo += k
            m -= k
    path.reverse()
    return path


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose tree hashes form the consistency proof (RFC 9162 2.1.4.1).

    Empty when ``old_size`` is 0 or equal to ``new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                path.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            path.append((lo + k, hi))
            hi = lo + k
        else:
            path.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    path.reverse()
    return path


def root_hash(leaf_hashes: Iterable[bytes]) -> bytes:
    """Return the RFC 9162 tree hash of a sequence of leaf hashes (streaming, O(log n) memory)."""
    stack: list[bytes] = []
    sha = _sha256
    for n, h in enumerate(leaf_hashes, start=1):
        merges = (n & -n).bit_length() - 1
        for _ in range(merges):
            h = sha(b"\x01" + stack.pop() + h).digest()
        stack.append(h)
    if not stack:
        return EMPTY_ROOT
    return fold_range(stack)


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def _check_path(proof: Iterable[bytes]) -> list[bytes]:
    path = list(proof)
    if len(path) > MAX_PROOF_LENGTH:
        raise ProofError(f"proof has {len(path)} hashes; at most {MAX_PROOF_LENGTH} are possible")
    return [_check_hash(h, f"proof element {i}") for i, h in enumerate(path)]


def root_from_inclusion_proof(leaf: bytes, index: int, tree_size: int,
                              proof: Iterable[bytes]) -> bytes:
    """Recompute the root that an inclusion proof leads to (RFC 9162 2.1.3.2, steps 1-5).

    Raises
    ------
    ProofError
        When the index is outside the tree or the proof has the wrong length.
    """
    leaf = _check_hash(leaf, "leaf hash")
    path = _check_path(proof)
    if not 0 <= index < tree_size:
        raise ProofError(f"index {index} is outside a tree of size {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree requires")
    return r


def verify_inclusion(leaf: bytes, index: int, tree_size: int,
                     proof: InclusionProof | Iterable[bytes], root: bytes) -> None:
    """Check that ``leaf`` is at ``index`` in the tree of ``tree_size`` leaves with ``root``.

    Parameters
    ----------
    leaf
        The leaf hash (:func:`leaf_hash` of the entry bytes).
    index, tree_size
        Position of the leaf and size of the tree the proof was made for.
    proof
        An :class:`InclusionProof` (its index and size must equal the arguments) or its
        list of hashes.
    root
        The trusted root hash of that tree (from a verified checkpoint).

    Raises
    ------
    ProofError
        When the proof does not verify; the message says why.

    Examples
    --------
    >>> a, b = leaf_hash(b"a"), leaf_hash(b"b")
    >>> verify_inclusion(a, 0, 2, [b], node_hash(a, b))
    """
    hashes = _proof_hashes(proof, index=index, size=tree_size)
    root = _check_hash(root, "root hash")
    got = root_from_inclusion_proof(leaf, index, tree_size, hashes)
    if not hmac.compare_digest(got, root):
        raise ProofError(f"inclusion proof for index {index} does not lead to the root of the "
                         f"tree of size {tree_size}")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: ConsistencyProof | Iterable[bytes]) -> None:
    """Check that the tree of ``new_size`` leaves extends the tree of ``old_size`` leaves.

    Implements RFC 9162 2.1.4.2. A tree is consistent with itself (empty proof, equal
    roots) and every tree extends the empty tree (empty proof, ``old_root`` equal to
    :data:`EMPTY_ROOT`).

    Raises
    ------
    ProofError
        When the proof does not verify; the message says why.
    """
    hashes = _proof_hashes(proof, old=old_size, new=new_size)
    old_root = _check_hash(old_root, "old root hash")
    new_root = _check_hash(new_root, "new root hash")
    path = _check_path(hashes)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"size {new_size} cannot extend size {old_size}")
    if old_size == new_size or old_size == 0:
        if path:
            raise ProofError("consistency proof must be empty for these sizes")
        if old_size == 0 and not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise ProofError("old root is not the root of the empty tree")
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise ProofError(f"two different roots for the same size {old_size}")
        return
    if not path:
        raise ProofError("consistency proof is empty")
    if old_size & (old_size - 1) == 0:  # an exact power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the trees allow")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the trees require")
    if not hmac.compare_digest(fr, old_root):
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if not hmac.compare_digest(sr, new_root):
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")


def _proof_hashes(proof: object, **expect: int) -> list[bytes]:
    if isinstance(proof, InclusionProof):
        if (proof.index, proof.tree_size) != (expect["index"], expect["size"]):
            raise ProofError(f"proof is for index {proof.index} in size {proof.tree_size}, not "
                             f"index {expect['index']} in size {expect['size']}")
        return list(proof.hashes)
    if isinstance(proof, ConsistencyProof):
        if (proof.old_size, proof.new_size) != (expect["old"], expect["new"]):
            raise ProofError(f"proof is from size {proof.old_size} to {proof.new_size}, not "
                             f"from {expect['old']} to {expect['new']}")
        return list(proof.hashes)
    if isinstance(proof, bytes | str):
        raise ProofError("a proof is a sequence of hashes, not a single value")
    return list(proof)  # type: ignore[call-overload]


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


def _unb64_hashes(values: object, what: str) -> tuple[bytes, ...]:
    if not isinstance(values, list):
        raise ProofError(f"{what} must be a list of base64 hashes")
    out = []
    for v in values:
        try:
            h = base64.b64decode(str(v), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProofError(f"{what}: {v!r} is not base64") from exc
        out.append(_check_hash(h, what))
    return tuple(out)


def _int_field(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"proof field {key!r} must be a non-negative integer")
    return value


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Proof that the leaf at ``index`` is in the tree of ``tree_size`` leaves.

    Attributes
    ----------
    index, tree_size
        The leaf's position and the size of the tree the proof is for.
    hashes
        The RFC 9162 audit path, bottom-up.
    """

    index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def verify(self, leaf: bytes, root: bytes) -> None:
        """Verify against a leaf hash and the trusted root of ``tree_size`` (raises ProofError)."""
        verify_inclusion(leaf, self.index, self.tree_size, self.hashes, root)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"index", "tree_size", "hashes": [base64...]}``."""
        return {"index": self.index, "tree_size": self.tree_size,
                "hashes": [_b64(h) for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InclusionProof:
        """Inverse of :meth:`to_dict`; raises :class:`ProofError` on malformed input."""
        return cls(_int_field(data, "index"), _int_field(data, "tree_size"),
                   _unb64_hashes(data.get("hashes"), "inclusion proof"))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.hashes)

    def __len__(self) -> int:
        return len(self.hashes)


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """Proof that the tree of ``new_size`` leaves extends the tree of ``old_size`` leaves."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    def verify(self, old_root: bytes, new_root: bytes) -> None:
        """Verify against the two trusted roots (raises ProofError)."""
        verify_consistency(self.old_size, self.new_size, old_root, new_root, self.hashes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"old_size", "new_size", "hashes": [base64...]}``."""
        return {"old_size": self.old_size, "new_size": self.new_size,
                "hashes": [_b64(h) for h in self.hashes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConsistencyProof:
        """Inverse of :meth:`to_dict`; raises :class:`ProofError` on malformed input."""
        return cls(_int_field(data, "old_size"), _int_field(data, "new_size"),
                   _unb64_hashes(data.get("hashes"), "consistency proof"))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.hashes)

    def __len__(self) -> int:
        return len(self.hashes)
