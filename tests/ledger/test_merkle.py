"""RFC 9162 hashing and proofs: the CT test vectors (valid and must-fail) and the RFC text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incisive_lab.ledger import (
    EMPTY_ROOT,
    ConsistencyProof,
    InclusionProof,
    ProofError,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from incisive_lab.ledger._merkle import (
    consistency_ranges,
    fold_range,
    inclusion_ranges,
    internal_node_count,
    node_key,
    perfect_nodes,
)

from . import rfc_reference as rfc
from .data import make_vectors

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "rfc9162_vectors.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves"]]


def _h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_vector_file_is_generated_by_its_script() -> None:
    assert (Path(__file__).parent / "data" / "rfc9162_vectors.json").read_text() == \
        make_vectors.render()


def test_vector_roots_and_empty_tree() -> None:
    assert EMPTY_ROOT.hex() == VECTORS["empty_root"] == root_hash([]).hex()
    for item in VECTORS["roots"]:
        n = item["size"]
        assert root_hash(leaf_hash(x) for x in LEAVES[:n]).hex() == item["root"]
        assert rfc.mth(LEAVES[:n]).hex() == item["root"]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-{c['size']}")
def test_vector_inclusion_proofs(case: dict[str, Any]) -> None:
    i, n = case["index"], case["size"]
    root = bytes.fromhex(VECTORS["roots"][n - 1]["root"])
    proof = _h(case["proof"])
    verify_inclusion(leaf_hash(LEAVES[i]), i, n, proof, root)
    # our generator produces exactly the published proof
    got = [fold_range([_node(LEAVES, lvl, k) for lvl, k in perfect_nodes(a, b)])
           for a, b in inclusion_ranges(i, n)]
    assert got == proof


@pytest.mark.parametrize("case", VECTORS["consistency"],
                         ids=lambda c: f"{c['old_size']}-{c['new_size']}")
def test_vector_consistency_proofs(case: dict[str, Any]) -> None:
    m, n = case["old_size"], case["new_size"]
    old = bytes.fromhex(case.get("old_root") or VECTORS["roots"][m - 1]["root"])
    new = bytes.fromhex(case.get("new_root") or VECTORS["roots"][n - 1]["root"])
    proof = _h(case["proof"])
    verify_consistency(m, n, old, new, proof)
    got = [fold_range([_node(LEAVES, lvl, k) for lvl, k in perfect_nodes(a, b)])
           for a, b in consistency_ranges(m, n)]
    assert got == proof


@pytest.mark.parametrize("case", VECTORS["must_fail"]["inclusion"],
                         ids=lambda c: f"{c['index']}-{c['size']}-{c['desc']}")
def test_vector_inclusion_must_fail(case: dict[str, Any]) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(bytes.fromhex(case["leaf_hash"]), case["index"], case["size"],
                         _h(case["proof"]), bytes.fromhex(case["root"]))


@pytest.mark.parametrize("case", VECTORS["must_fail"]["consistency"],
                         ids=lambda c: f"{c['old_size']}-{c['new_size']}-{c['desc']}")
def test_vector_consistency_must_fail(case: dict[str, Any]) -> None:
    with pytest.raises(ProofError):
        verify_consistency(case["old_size"], case["new_size"], bytes.fromhex(case["old_root"]),
                           bytes.fromhex(case["new_root"]), _h(case["proof"]))


def _node(entries: list[bytes], level: int, index: int) -> bytes:
    """Perfect node hash straight from the RFC definition."""
    return rfc.mth(entries[index << level:(index + 1) << level])


def _entries(n: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(n)]


def test_proof_shapes_equal_the_rfc_definition_up_to_64() -> None:
    entries = _entries(64)
    leaves = [leaf_hash(e) for e in entries]
    for n in range(1, 65):
        assert root_hash(leaves[:n]) == rfc.mth(entries[:n])
        for i in range(n):
            ours = [fold_range([_node(entries, lvl, k) for lvl, k in perfect_nodes(a, b)])
                    for a, b in inclusion_ranges(i, n)]
            assert ours == rfc.path(i, entries[:n])
        for m in range(1, n + 1):
            ours = [fold_range([_node(entries, lvl, k) for lvl, k in perfect_nodes(a, b)])
                    for a, b in consistency_ranges(m, n)]
            assert ours == rfc.proof(m, entries[:n])


def test_node_keys_number_nodes_in_completion_order() -> None:
    seen: list[int] = []
    for j in range(300):  # appending leaf j completes levels 1..ctz(j+1)
        n = j + 1
        for level in range(1, (n & -n).bit_length()):
            seen.append(node_key(level, j >> level))
        assert internal_node_count(n) == len(seen)
    assert seen == list(range(len(seen)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.data())
def test_random_proofs_verify_and_mutations_fail(n: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    cache: dict[tuple[int, int], bytes] = {}

    def node(level: int, index: int) -> bytes:
        key = (level, index)
        if key not in cache:
            cache[key] = root_hash(leaves[index << level:(index + 1) << level])
        return cache[key]

    def hashes(ranges: list[tuple[int, int]]) -> list[bytes]:
        return [fold_range([node(lvl, k) for lvl, k in perfect_nodes(a, b)]) for a, b in ranges]

    i = data.draw(st.integers(0, n - 1))
    root = root_hash(leaves)
    proof = InclusionProof(i, n, tuple(hashes(inclusion_ranges(i, n))))
    proof.verify(leaves[i], root)
    assert InclusionProof.from_dict(proof.to_dict()) == proof
    if proof.hashes:
        k = data.draw(st.integers(0, len(proof.hashes) - 1))
        bad = list(proof.hashes)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        with pytest.raises(ProofError):
            verify_inclusion(leaves[i], i, n, bad, root)
    m = data.draw(st.integers(0, n))
    cproof = ConsistencyProof(m, n, tuple(hashes(consistency_ranges(m, n))))
    cproof.verify(root_hash(leaves[:m]), root)
    assert ConsistencyProof.from_dict(cproof.to_dict()) == cproof
    if cproof.hashes:
        with pytest.raises(ProofError):
            verify_consistency(m, n, root_hash(leaves[:m]), root, cproof.hashes[:-1])


def test_proof_objects_must_match_the_arguments() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    root = root_hash(leaves)
    proof = InclusionProof(1, 4, (leaves[0], root_hash(leaves[2:])))
    verify_inclusion(leaves[1], 1, 4, proof, root)
    with pytest.raises(ProofError, match="proof is for index 1"):
        verify_inclusion(leaves[1], 2, 4, proof, root)
    with pytest.raises(ProofError):
        InclusionProof.from_dict({"index": 1, "tree_size": 4, "hashes": ["not base64!"]})
    with pytest.raises(ProofError):
        verify_inclusion(leaves[1], 1, 4, b"\x00" * 32, root)  # a single hash is no proof
