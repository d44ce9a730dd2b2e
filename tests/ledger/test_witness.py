"""Witnesses cosign consistent checkpoints and refuse forks and rollbacks with evidence."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from incisive_lab.ledger import (
    Checkpoint,
    ConsistencyProof,
    Evidence,
    Ledger,
    LedgerError,
    Witness,
    WitnessRefusal,
)

from .helpers import Site, make_event


def _witness(tmp_path: Path, name: str = "b") -> Witness:
    return Witness.open(tmp_path / f"witness-{name}", name=f"hospital-{name}.example/witness")


def test_cosigns_a_growing_log_and_keeps_state(site: Site, tmp_path: Path) -> None:
    w = _witness(tmp_path)
    with site.open(origin="hospital-a.example/ledger") as ledger:
        w.trust(ledger.public_key)
        ledger.append_many([make_event(i) for i in range(5)])
        cp, errors = ledger.collect_cosignatures([w])
        assert errors == [] and cp.size == 5
        cp.verify_witnessed(ledger.verifier, [w.verifier], quorum=1)
        for n in (6, 9, 17):
            ledger.append_many([make_event(i) for i in range(ledger.size, n)])
            cp, errors = ledger.collect_cosignatures([w])
            assert errors == [] and cp.size == n
            assert len(cp.cosignatures([w.verifier])) == 1
        assert w.latest(ledger.origin) is not None
        # same checkpoint again: cosigned again (idempotent)
        again, errors = ledger.collect_cosignatures([w])
        assert errors == [] and again.size == 17
    reopened = Witness.open(tmp_path / "witness-b")
    latest = reopened.latest("hospital-a.example/ledger")
    assert latest is not None and latest.size == 17
    assert reopened.public_key == w.public_key


def test_a_rolled_back_log_is_refused_with_evidence(site: Site, tmp_path: Path) -> None:
    w = _witness(tmp_path)
    with site.open(origin="hospital-a.example/ledger") as ledger:
        w.trust(ledger.public_key)
        ledger.append_many([make_event(i) for i in range(10)])
        small = ledger.checkpoint()
        ledger.append_many([make_event(i) for i in range(10, 14)])
        _, errors = ledger.collect_cosignatures([w])
        assert not errors
        # the operator now shows the witness the older, smaller tree
        with pytest.raises(WitnessRefusal) as info:
            w.cosign(small, ConsistencyProof(14, 10, ()), old_size=14)
    ev = info.value.evidence
    assert ev.kind == "rollback" and info.value.kind == "rollback"
    assert Checkpoint.parse(ev.cosigned or "").size == 14
    assert Checkpoint.parse(ev.presented or "").size == 10
    assert "signed size 14" in ev.confirm(ledger.verifier)
    assert w.evidence() == [ev]  # kept on disk
    assert w.latest(ledger.origin) == Checkpoint.parse(ev.cosigned or "")


def _fork(make_site: Callable[[str], Site], tmp_path: Path) -> tuple[Ledger, Ledger]:
    """Two ledgers with the same key and origin that agree on 6 entries, then diverge."""
    a_site = make_site("a")
    a = a_site.open(origin="hospital-a.example/ledger")
    a.append_many([make_event(i) for i in range(6)])
    b_site = make_site("b")
    keys = a_site.root / "node" / "ledger" if a_site.backend == "sqlite" else a_site.key_dir
    assert keys is not None
    target = (b_site.root / "node" / "ledger") if b_site.backend == "sqlite" else b_site.key_dir
    assert target is not None
    target.mkdir(parents=True, exist_ok=True)
    for name in ("node.key", "node.pub"):
        shutil.copy2(keys / name, target / name)
    b = b_site.open(origin="hospital-a.example/ledger")
    b.append_many([make_event(i) for i in range(6)])
    assert a.root() == b.root()
    a.append_many([make_event(i) for i in range(6, 12)])
    b.append_many([make_event(100 + i) for i in range(6, 12)])  # rewritten history
    return a, b


def test_a_forked_log_is_refused_with_evidence(make_site: Callable[[str], Site],
                                               tmp_path: Path) -> None:
    a, b = _fork(make_site, tmp_path)
    w = _witness(tmp_path)
    w.trust(a.public_key)
    with a, b:
        cp_a, errors = a.collect_cosignatures([w])
        assert not errors and cp_a.size == 12
        # same size, other root
        _, errors = b.collect_cosignatures([w])
        (refusal,) = errors
        assert isinstance(refusal, WitnessRefusal) and refusal.kind == "fork"
        assert "two different trees of size 12" in refusal.evidence.confirm(a.verifier)
        # larger, but not an extension of what was cosigned
        b.append(make_event(200))
        _, errors = b.collect_cosignatures([w])
        (refusal,) = errors
        assert isinstance(refusal, WitnessRefusal) and refusal.kind == "fork"
        assert "could not prove" in refusal.evidence.confirm(a.verifier)
        # the honest branch is still accepted
        a.append(make_event(300))
        cp, errors = a.collect_cosignatures([w])
        assert not errors and cp.size == 13
    kinds = [e.kind for e in w.evidence()]
    assert kinds == ["fork", "fork"]
    stored = Evidence.from_dict(w.evidence()[0].to_dict())
    assert stored.sha256 == w.evidence()[0].sha256


def test_other_refusals(site: Site, tmp_path: Path) -> None:
    w = _witness(tmp_path)
    with site.open(origin="hospital-a.example/ledger") as ledger:
        ledger.append_many([make_event(i) for i in range(4)])
        cp = ledger.checkpoint()
        with pytest.raises(WitnessRefusal) as info:  # not trusted yet
            w.cosign(cp, [])
        assert info.value.kind == "unknown-log"
        w.trust(ledger.public_key)
        forged = Checkpoint.parse(str(cp).replace("\n4\n", "\n5\n", 1))
        with pytest.raises(WitnessRefusal) as info:
            w.cosign(forged, [])
        assert info.value.kind == "bad-signature"
        with pytest.raises(WitnessRefusal) as info:
            w.cosign("not a checkpoint", [])
        assert info.value.kind == "malformed"
        w.cosign(cp, [])
        ledger.append(make_event(5))
        cp2 = ledger.checkpoint()
        with pytest.raises(WitnessRefusal) as info:  # the log thinks the witness is at 2
            w.cosign(cp2, ledger.consistency_proof(2, cp2.size), old_size=2)
        assert info.value.kind == "conflict"
        assert Checkpoint.parse(info.value.evidence.cosigned or "").size == 4
        with pytest.raises(LedgerError):  # conflict is not evidence against the log
            info.value.evidence.confirm(ledger.verifier)
        with pytest.raises(WitnessRefusal) as info:  # growth without a proof proves nothing
            w.cosign(cp2, [])
        assert info.value.kind == "malformed"
        w.cosign(cp2, ledger.consistency_proof(4, cp2.size))
    assert {e.kind for e in w.evidence()} == {"bad-signature", "malformed"}


def test_every_node_witnesses_the_others(make_site: Callable[[str], Site],
                                         tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    ledgers = {n: make_site(n).open(origin=f"hospital-{n}.example/ledger") for n in names}
    witnesses = {n: Witness.open(tmp_path / f"w-{n}", name=f"hospital-{n}.example/witness",
                                 record_to=ledgers[n]) for n in names}
    try:
        for n in names:
            for m in names:
                if m != n:
                    witnesses[n].trust(ledgers[m].public_key)
        for rnd in range(3):
            for n in names:
                ledgers[n].append_many([make_event(rnd * 10 + i) for i in range(rnd + 2)])
            for n in names:
                others = [witnesses[m] for m in names if m != n]
                cp, errors = ledgers[n].collect_cosignatures(others)
                assert not errors
                cp.verify_witnessed(ledgers[n].verifier, [w.verifier for w in others], quorum=2)
        # each witness wrote what it did into its own node's ledger
        for n in names:
            records = ledgers[n].query(kind="witness")
            assert len(records) == 6
            assert {e.event.details["origin"] for e in records} == {
                f"hospital-{m}.example/ledger" for m in names if m != n}
            assert ledgers[n].verify().ok
    finally:
        for ledger in ledgers.values():
            ledger.close()
