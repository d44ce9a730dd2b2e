"""The ledger on both back-ends: appends, proofs, checkpoints, queries, keys, concurrency."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable

import pytest

from incisive_lab.ledger import (
    EMPTY_ROOT,
    Checkpoint,
    Event,
    LedgerError,
    NoteError,
    Outcome,
    ProofError,
    QueryResult,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

from . import rfc_reference as rfc
from .helpers import Site, make_event


def test_append_returns_durable_refs_and_reopen_sees_them(site: Site) -> None:
    with site.open(origin="hospital-a.example/ledger") as ledger:
        assert ledger.size == 0 and ledger.root() == EMPTY_ROOT
        refs = [ledger.append(make_event(i)) for i in range(5)]
        refs += ledger.append_many([make_event(i) for i in range(5, 9)])
        assert [r.index for r in refs] == list(range(9))
        assert refs[3].leaf_hash == leaf_hash(make_event(3).to_bytes())
        assert ledger.append_many([]) == []
    with site.open() as again:  # the origin is remembered
        assert again.origin == "hospital-a.example/ledger"
        assert again.size == 9
        assert [e.event for e in again.entries()] == [make_event(i) for i in range(9)]
        assert again.entry(4).event == make_event(4)
        assert again.root() == rfc.mth([make_event(i).to_bytes() for i in range(9)])
        with pytest.raises(LedgerError, match="no entry 9"):
            again.entry(9)


def test_append_accepts_mappings_and_refuses_bad_events(site: Site) -> None:
    with site.open(origin="a.example/l") as ledger:
        ref = ledger.append(make_event(1).to_dict())
        assert ledger.entry(ref.index).event == make_event(1)
        with pytest.raises(LedgerError, match="unknown event kind"):
            ledger.append({**make_event(1).to_dict(), "kind": "nope"})
        with pytest.raises(LedgerError):
            ledger.append_many([make_event(2), {"kind": "access"}])
        assert ledger.size == 1  # all or nothing


def test_every_proof_of_a_100_entry_log(site: Site) -> None:
    """Consistency proofs between every pair of sizes up to 100; inclusion of every leaf."""
    entries = [make_event(i).to_bytes() for i in range(100)]
    leaves = [leaf_hash(e) for e in entries]
    roots = [root_hash(leaves[:n]) for n in range(101)]
    with site.open(origin="a.example/l") as ledger:
        ledger.append_many([make_event(i) for i in range(100)])
        assert [ledger.root(n) for n in range(101)] == roots
        for n in range(1, 101):
            for i in range(n):
                proof = ledger.inclusion_proof(i, n)
                verify_inclusion(leaves[i], i, n, proof, roots[n])
            for m in range(n + 1):
                cproof = ledger.consistency_proof(m, n)
                verify_consistency(m, n, roots[m], roots[n], cproof)
        assert list(ledger.inclusion_proof(7, 13).hashes) == rfc.path(7, entries[:13])
        assert list(ledger.consistency_proof(6, 13).hashes) == rfc.proof(6, entries[:13])
        with pytest.raises(LedgerError):
            ledger.inclusion_proof(100, 100)
        with pytest.raises(LedgerError):
            ledger.consistency_proof(5, 101)
        with pytest.raises(ProofError):  # a proof for the wrong leaf fails
            verify_inclusion(leaves[3], 4, 100, ledger.inclusion_proof(4), roots[100])


def test_same_events_same_tree_on_both_backends(make_site: Callable[[str], Site]) -> None:
    events = [make_event(i) for i in range(37)]
    with make_site("x").open(origin="a.example/l") as ledger:
        ledger.append_many(events)
        root = ledger.root()
    assert root == rfc.mth([e.to_bytes() for e in events])


def test_checkpoints_are_signed_stored_and_reused(site: Site) -> None:
    with site.open(origin="a.example/l") as ledger:
        empty = ledger.checkpoint()
        assert (empty.size, empty.root) == (0, EMPTY_ROOT)
        ledger.append_many([make_event(i) for i in range(10)])
        cp = ledger.checkpoint()
        cp.verify(ledger.verifier)
        assert (cp.origin, cp.size, cp.root) == ("a.example/l", 10, ledger.root())
        assert ledger.checkpoint() == cp  # unchanged size: same checkpoint
        assert Checkpoint.parse(str(cp)) == cp
        assert ledger.latest_checkpoint() == cp
        assert [c.size for c in ledger.checkpoints()] == [0, 10]
        assert ledger.checkpoint_at(10) == cp and ledger.checkpoint_at(5) is None


def test_query_by_resource_actor_kind_and_time_with_proofs(site: Site) -> None:
    with site.open(origin="a.example/l") as ledger:
        ledger.append_many([make_event(i) for i in range(60)])
        ledger.append(Event(kind="grant", actor="user:steward@idp", action="grant",
                            resource="dataset:ds1", outcome=Outcome.allow("terms v2"),
                            details={"grantee": "user:researcher1@idp.example"},
                            time="2025-02-01T00:00:00Z"))
        result = ledger.query(resource="dataset:ds1")
        want = [i for i in range(60) if i % 3 == 1] + [60]
        assert [e.index for e in result] == want
        result.verify(ledger.verifier)
        assert result.checkpoint.size == 61
        # a resource prefix that is not a path boundary does not match
        assert len(ledger.query(resource="dataset:ds")) == 0
        by_actor = ledger.query(actor="user:researcher2@idp.example", kind="access")
        assert [e.index for e in by_actor] == [i for i in range(60) if i % 5 == 2]
        assert all(e.event.actor == "user:researcher2@idp.example" for e in by_actor)
        window = ledger.query(since="2025-01-03T00:00:00Z", until="2025-01-05T00:00:00Z")
        assert {e.event.time[:10] for e in window} == {"2025-01-03", "2025-01-04"}
        page = ledger.query(resource="dataset:ds1", limit=5, after=10)
        assert [e.index for e in page] == [13, 16, 19, 22, 25]
        grants = ledger.query(kind="grant")
        assert [e.event.details["grantee"] for e in grants] == ["user:researcher1@idp.example"]

        # the steward's offline check of a JSON round trip
        copy = QueryResult.from_dict(result.to_dict())
        copy.verify(ledger.verifier)
        bad = result.to_dict()
        bad["entries"][0]["data"] = bad["entries"][0]["data"].replace("ds1", "ds9")
        with pytest.raises(ProofError):
            QueryResult.from_dict(bad).verify(ledger.verifier)
        forged = result.to_dict()
        forged["checkpoint"] = forged["checkpoint"].replace("\n61\n", "\n62\n")
        with pytest.raises(NoteError):
            QueryResult.from_dict(forged).verify(ledger.verifier)


def test_many_threads_append_concurrently(site: Site) -> None:
    with site.open(origin="a.example/l") as ledger:
        refs: list[int] = []
        lock = threading.Lock()

        def work(k: int) -> None:
            for i in range(40):
                r = ledger.append(make_event(k * 1000 + i))
                with lock:
                    refs.append(r.index)
            ledger.append_many([make_event(k * 1000 + 500 + i) for i in range(5)])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(refs) == sorted(set(refs))
        assert ledger.size == 8 * 45
        result = ledger.verify()
        assert result.ok, result.summary()


def test_node_key_is_private_and_published(tmp_path: os.PathLike[str]) -> None:
    from incisive_lab.ledger import Ledger, VerifierKey

    node = os.path.join(tmp_path, "node")
    with Ledger.open(node, origin="a.example/l") as ledger:
        key = os.path.join(node, "ledger", "node.key")
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        with open(os.path.join(node, "ledger", "node.pub")) as fh:
            pub = fh.read().strip()
        assert VerifierKey.parse(pub) == ledger.verifier and pub == ledger.public_key
        with open(key) as fh:
            assert fh.read().startswith("PRIVATE+KEY+a.example/l+")  # never PEM
    with pytest.raises(LedgerError, match=r"origin is 'a\.example/l'"):
        Ledger.open(node, origin="b.example/l")
    os.chmod(key, 0o644)
    with pytest.raises(LedgerError, match="chmod 600"):
        Ledger.open(node)
    os.chmod(key, 0o600)
    os.rename(key, key + ".lost")
    with pytest.raises(LedgerError, match="refusing to make a new key"):
        Ledger.open(node)
    with Ledger.open(node, read_only=True) as ro:  # auditors need only node.pub
        assert ro.read_only and ro.verify().ok
        with pytest.raises(LedgerError, match="read-only"):
            ro.append(make_event(1))
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(os.path.join(tmp_path, "nothing"), read_only=True)


def test_postgres_needs_a_key_dir(make_site: Callable[[str], Site], backend: str) -> None:
    from incisive_lab.ledger import Ledger

    site = make_site("k")
    if backend == "postgres":
        with pytest.raises(LedgerError, match="key_dir"):
            Ledger.open(site.location)
    with site.open(origin="a.example/l") as ledger:
        ledger.append(make_event(0))
    other_keys = site.root / "other-keys"
    if backend == "postgres":  # a different key cannot take over an existing ledger
        with pytest.raises(LedgerError, match="does not match the key"):
            Ledger.open(site.location, key_dir=other_keys, origin="a.example/l")


def test_cosignatures_are_stored_with_their_checkpoint(site: Site) -> None:
    from incisive_lab.ledger import SIG_COSIGNATURE, SignerKey
    from incisive_lab.ledger._note import cosign

    witness = SignerKey.generate("w.example/witness", SIG_COSIGNATURE)
    with site.open(origin="a.example/l") as ledger:
        ledger.append(make_event(0))
        cp = ledger.checkpoint()
        cos = cosign(cp.body, witness)
        stored = ledger.add_cosignature(cp, cos.line, witness.verifier)
        assert stored.cosignatures([witness.verifier]) == [cos]
        assert ledger.latest_checkpoint() == stored
        with pytest.raises(NoteError):
            ledger.add_cosignature(cp, cos, SignerKey.generate(
                "w.example/witness", SIG_COSIGNATURE).verifier)
        with pytest.raises(LedgerError, match="no stored checkpoint"):
            ledger.add_cosignature(Checkpoint("a.example/l", 7, bytes(32)), cos)
        assert ledger.verify().ok


def test_checkpoints_and_queries_while_others_append(site: Site, tmp_path: os.PathLike[str]
                                                     ) -> None:
    from incisive_lab.ledger import Witness

    witness = Witness.open(os.path.join(tmp_path, "w"), name="b.example/witness")
    with site.open(origin="a.example/l") as ledger:
        witness.trust(ledger.public_key)
        stop = threading.Event()
        errors: list[BaseException] = []

        def append() -> None:
            i = 0
            while not stop.is_set():
                ledger.append(make_event(i))
                i += 1

        def observe() -> None:
            try:
                last = 0
                for _ in range(15):
                    cp, refusals = ledger.collect_cosignatures([witness])
                    assert not refusals and cp.size >= last
                    last = cp.size
                    cp.verify_witnessed(ledger.verifier, [witness.verifier], 1)
                    result = ledger.query(resource="dataset:ds2", checkpoint=cp)
                    result.verify(ledger.verifier)
            except BaseException as exc:
                errors.append(exc)

        appenders = [threading.Thread(target=append) for _ in range(3)]
        for t in appenders:
            t.start()
        observer = threading.Thread(target=observe)
        observer.start()
        observer.join()
        stop.set()
        for t in appenders:
            t.join()
        assert errors == []
        assert ledger.verify().ok


def test_a_ledger_opened_before_fork_works_in_the_child(tmp_path: os.PathLike[str]) -> None:
    import multiprocessing

    from incisive_lab.ledger import Ledger

    node = os.path.join(tmp_path, "node")
    ledger = Ledger.open(node, origin="a.example/l")
    ledger.append(make_event(0))

    def child() -> None:
        ref = ledger.append(make_event(1))  # new connections in the child
        os._exit(0 if ref.index == 1 and ledger.verify().ok else 1)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join()
    assert proc.exitcode == 0
    assert ledger.size == 2 and ledger.verify().ok
    ledger.close()
