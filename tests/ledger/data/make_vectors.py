"""Write ``rfc9162_vectors.json``: the Certificate Transparency Merkle test vectors as data.

Provenance: the eight leaves, the roots of the trees of 1..8 leaves and the inclusion and
consistency proofs below are the RFC 6962 / RFC 9162 test vectors of the Certificate
Transparency project (``merkle_tree_test.cc`` in google/certificate-transparency, carried
on in transparency-dev/merkle ``proof/verify_test.go``; Apache-2.0). Only the values are
ported. The *must-fail* cases are derived here from the valid ones by the same kinds of
mutation those suites apply (wrong index or size, wrong leaf or root, garbage before or
after the proof, a flipped bit in each proof hash, a hash removed or inserted, swapped
roots, an empty proof) plus their edge cases for tiny trees.

Run ``python tests/ledger/data/make_vectors.py`` to regenerate; ``test_vectors.py``
checks the committed JSON equals this script's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROVENANCE = (
    "Leaves, roots and proofs: the RFC 6962/9162 Merkle test vectors of the Certificate "
    "Transparency project (google/certificate-transparency merkle_tree_test.cc, as carried in "
    "transparency-dev/merkle proof/verify_test.go; Apache-2.0), ported as data. must_fail: "
    "derived from the valid vectors by tests/ledger/data/make_vectors.py."
)
OUT = HERE / "rfc9162_vectors.json"

LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
          "606162636465666768696a6b6c6d6e6f"]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SOME_HASH = "abacaba000000000000000000000000000000000000000000060061e00123456"
# (0-based leaf index, tree size, proof)
INCLUSION = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# (old size, new size, proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def _leaf_hash(i: int) -> str:
    import hashlib

    return hashlib.sha256(b"\x00" + bytes.fromhex(LEAVES[i])).hexdigest()


def _flip(h: str, mask: int) -> str:
    raw = bytearray(bytes.fromhex(h))
    raw[0] ^= mask
    return raw.hex()


def _inclusion_failures(index: int, size: int, proof: list[str], root: str,
                        leaf: str) -> list[dict[str, Any]]:
    def case(desc: str, *, i: int = index, n: int = size, lf: str = leaf, r: str = root,
             p: list[str] = proof) -> dict[str, Any]:
        return {"desc": desc, "index": i, "size": n, "leaf_hash": lf, "root": r, "proof": p}

    out = [
        case("index - 1", i=index - 1), case("index + 1", i=index + 1),
        case("index ^ 2", i=index ^ 2), case("size * 2", n=size * 2),
        case("size // 2", n=size // 2),
        case("wrong leaf", lf=b"WrongLeaf".hex()), case("empty root", r=EMPTY_ROOT),
        case("random root", r=SOME_HASH),
        case("trailing garbage", p=[*proof, ""]), case("trailing root", p=[*proof, root]),
        case("preceding garbage", p=["", *proof]), case("preceding root", p=[root, *proof]),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = _flip(bad[k], 8)
        out.append(case(f"proof[{k}] bit 3 flipped", p=bad))
    if proof:
        out.append(case("last hash removed", p=proof[:-1]))
    if len(proof) > 1:
        out.append(case("hash inserted", p=[proof[0], SOME_HASH, *proof[1:]]))
    return out


def _consistency_failures(m: int, n: int, proof: list[str], r1: str,
                          r2: str) -> list[dict[str, Any]]:
    def case(desc: str, *, a: int = m, b: int = n, x: str = r1, y: str = r2,
             p: list[str] = proof) -> dict[str, Any]:
        return {"desc": desc, "old_size": a, "new_size": b, "old_root": x, "new_root": y,
                "proof": p}

    out = [
        case("old size - 1", a=m - 1), case("old size + 1", a=m + 1),
        case("old size ^ 2", a=m ^ 2), case("new size * 2", b=n * 2),
        case("new size // 2", b=n // 2),
        case("wrong old root", x=b"WrongRoot".hex()), case("wrong new root", y=b"WrongRoot".hex()),
        case("swapped roots", x=r2, y=r1), case("empty proof", p=[]),
        case("trailing garbage", p=[*proof, ""]), case("trailing old root", p=[*proof, r1]),
        case("trailing new root", p=[*proof, r2]),
        case("preceding garbage", p=["", *proof]), case("preceding old root", p=[r1, *proof]),
        case("preceding new root", p=[r2, *proof]),
        case("preceding proof[0]", p=[proof[0], *proof]),
        case("truncated", p=proof[:-1]),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = _flip(bad[k], 16)
        out.append(case(f"proof[{k}] bit 4 flipped", p=bad))
    return out


def build() -> dict[str, Any]:
    """The whole vector document."""
    inclusion_fail: list[dict[str, Any]] = []
    for index, size, proof in INCLUSION:
        if proof:
            inclusion_fail += _inclusion_failures(index, size, proof, ROOTS[size - 1],
                                                  _leaf_hash(index))
    # Tiny-tree edge cases: no proof can show inclusion in an empty tree or past its end.
    for index, size in [(0, 0), (0, 1), (1, 0), (2, 1)]:
        for leaf, root, what in [(SOME_HASH, "", "empty root"),
                                 ("", EMPTY_ROOT, "empty leaf"),
                                 (SOME_HASH, EMPTY_ROOT, "unrelated leaf")]:
            if (index, size) == (0, 1) and leaf == root:
                continue
            inclusion_fail.append({"desc": f"index {index} size {size}: {what}", "index": index,
                                   "size": size, "leaf_hash": leaf, "root": root, "proof": []})
    single = _leaf_hash(0)
    inclusion_fail += [
        {"desc": "single entry: empty leaf hash", "index": 0, "size": 1, "leaf_hash": "",
         "root": single, "proof": []},
        {"desc": "single entry: empty root", "index": 0, "size": 1, "leaf_hash": single,
         "root": "", "proof": []},
    ]

    consistency_fail: list[dict[str, Any]] = []
    for m, n, proof in CONSISTENCY:
        if proof:
            consistency_fail += _consistency_failures(m, n, proof, ROOTS[m - 1], ROOTS[n - 1])
    r1, r2 = SOME_HASH, ROOTS[0]
    consistency_fail += [
        {"desc": "0 -> 0 with different roots", "old_size": 0, "new_size": 0, "old_root": r1,
         "new_root": r2, "proof": []},
        {"desc": "1 -> 1 with different roots", "old_size": 1, "new_size": 1, "old_root": r1,
         "new_root": r2, "proof": []},
        {"desc": "shrinking 1 -> 0", "old_size": 1, "new_size": 0, "old_root": r1,
         "new_root": r2, "proof": []},
        {"desc": "shrinking 2 -> 1", "old_size": 2, "new_size": 1, "old_root": r1,
         "new_root": r2, "proof": []},
        {"desc": "1 -> 2 with an empty proof", "old_size": 1, "new_size": 2, "old_root": r1,
         "new_root": r2, "proof": []},
        {"desc": "0 -> 0 empty roots, non-empty proof", "old_size": 0, "new_size": 0,
         "old_root": EMPTY_ROOT, "new_root": EMPTY_ROOT, "proof": [EMPTY_ROOT]},
        {"desc": "0 -> 1 non-empty proof", "old_size": 0, "new_size": 1,
         "old_root": EMPTY_ROOT, "new_root": ROOTS[0], "proof": [EMPTY_ROOT]},
        {"desc": "1 -> 1 equal roots, non-empty proof", "old_size": 1, "new_size": 1,
         "old_root": r2, "new_root": r2, "proof": [EMPTY_ROOT]},
        {"desc": "0 -> 1 from a non-empty old root", "old_size": 0, "new_size": 1,
         "old_root": r1, "new_root": ROOTS[0], "proof": []},
    ]
    consistency_pass_trivial = [
        {"desc": "0 -> 0", "old_size": 0, "new_size": 0, "old_root": EMPTY_ROOT,
         "new_root": EMPTY_ROOT, "proof": []},
        {"desc": "0 -> 8", "old_size": 0, "new_size": 8, "old_root": EMPTY_ROOT,
         "new_root": ROOTS[7], "proof": []},
        {"desc": "8 -> 8", "old_size": 8, "new_size": 8, "old_root": ROOTS[7],
         "new_root": ROOTS[7], "proof": []},
    ]
    return {
        "provenance": PROVENANCE,
        "hash": "sha256",
        "leaves": LEAVES,
        "empty_root": EMPTY_ROOT,
        "roots": [{"size": i + 1, "root": r} for i, r in enumerate(ROOTS)],
        "inclusion": [{"index": i, "size": n, "proof": p} for i, n, p in INCLUSION],
        "consistency": [{"old_size": m, "new_size": n, "proof": p} for m, n, p in CONSISTENCY]
        + [{"old_size": c["old_size"], "new_size": c["new_size"], "proof": c["proof"],
            "old_root": c["old_root"], "new_root": c["new_root"], "desc": c["desc"]}
           for c in consistency_pass_trivial],
        "must_fail": {"inclusion": inclusion_fail, "consistency": consistency_fail},
    }


def render() -> str:
    """The JSON text written to ``rfc9162_vectors.json``."""
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
