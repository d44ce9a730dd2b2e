"""Tampering with the stored ledger: verify fails and names the place, on both back-ends.

Each test changes the store with raw SQL (the append-only triggers dropped or bypassed,
as an attacker with database access would), runs ``verify``, and restores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from incisive_lab.ledger import (
    Ledger,
    StoreError,
    VerifyResult,
    leaf_hash,
    node_hash,
    root_hash,
)
from incisive_lab.ledger._merkle import internal_node_count, node_key

from .helpers import Site, make_event

N = 21  # not a power of two: the tree has a ragged right edge
CHECKPOINTS = (8, 16, 21)


@pytest.fixture
def ledger(site: Site) -> Iterator[Ledger]:
    with site.open(origin="hospital-a.example/ledger") as ledger:
        done = 0
        for size in CHECKPOINTS:
            ledger.append_many([make_event(i) for i in range(done, size)])
            ledger.checkpoint()
            done = size
        assert ledger.verify().ok
        yield ledger


def _bad(ledger: Ledger) -> VerifyResult:
    result = ledger.verify()
    assert not result.ok, "tampering went unnoticed"
    assert result.first_bad_index is not None, result.summary()
    return result


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x20]) + data[pos + 1:]


def _row(site: Site, idx: int) -> tuple[bytes, bytes]:
    data, leaf = site.sql("SELECT data, leaf FROM ledger_entries WHERE idx = ?", (idx,))[0]
    return bytes(data), bytes(leaf)


def _node_ranges() -> dict[int, tuple[int, int]]:
    out = {}
    for level in range(1, N.bit_length()):
        for index in range(N >> level):
            out[node_key(level, index)] = (index << level, (index + 1) << level)
    assert len(out) == internal_node_count(N)
    return out


def test_a_changed_byte_in_any_entry_is_named(site: Site, ledger: Ledger) -> None:
    for idx in range(N):
        data, _ = _row(site, idx)
        for pos in sorted({0, 1, len(data) // 2, len(data) - 2, len(data) - 1}):
            site.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (_flip(data, pos), idx))
            result = _bad(ledger)
            assert result.first_bad_index == idx, (idx, pos, result.summary())
            assert any(p.where == "entry" and p.index == idx for p in result.problems)
        site.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (data, idx))
    assert ledger.verify().ok


def test_every_byte_of_one_entry(site: Site, ledger: Ledger, backend: str) -> None:
    idx = 13
    data, _ = _row(site, idx)
    positions = range(len(data)) if backend == "sqlite" else range(0, len(data), 7)
    for pos in positions:
        site.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (_flip(data, pos), idx))
        assert _bad(ledger).first_bad_index == idx, pos
    site.sql("UPDATE ledger_entries SET data = ? WHERE idx = ?", (data, idx))
    assert ledger.verify().ok


def test_a_changed_byte_in_any_leaf_hash_is_named(site: Site, ledger: Ledger) -> None:
    for idx in range(N):
        _, leaf = _row(site, idx)
        site.sql("UPDATE ledger_entries SET leaf = ? WHERE idx = ?", (_flip(leaf, idx % 32), idx))
        assert _bad(ledger).first_bad_index == idx
        site.sql("UPDATE ledger_entries SET leaf = ? WHERE idx = ?", (leaf, idx))
    assert ledger.verify().ok


def test_a_changed_byte_in_any_node_hash_is_named(site: Site, ledger: Ledger) -> None:
    ranges = _node_ranges()
    for key, (start, end) in sorted(ranges.items()):
        (h,) = site.sql("SELECT hash FROM ledger_nodes WHERE key = ?", (key,))[0]
        h = bytes(h)
        site.sql("UPDATE ledger_nodes SET hash = ? WHERE key = ?", (_flip(h, key % 32), key))
        result = _bad(ledger)
        assert result.first_bad_index == start, (key, result.summary())
        assert [p.where for p in result.problems] == ["node"]
        assert f"{start}..{end - 1}" in result.problems[0].message
        site.sql("UPDATE ledger_nodes SET hash = ? WHERE key = ?", (h, key))
    assert ledger.verify().ok


def test_a_deleted_entry_is_named(site: Site, ledger: Ledger) -> None:
    for idx in (0, 5, 16, N - 1):
        row = site.sql("SELECT idx, leaf, data, kind, actor, resource, time FROM ledger_entries "
                       "WHERE idx = ?", (idx,))[0]
        site.sql("DELETE FROM ledger_entries WHERE idx = ?", (idx,))
        result = _bad(ledger)
        assert result.first_bad_index == idx, result.summary()
        site.sql("INSERT INTO ledger_entries (idx, leaf, data, kind, actor, resource, time) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    assert ledger.verify().ok


@pytest.mark.parametrize("columns", ["data", "data, leaf", "data, leaf, kind, actor, resource, "
                                                           "time"])
def test_two_swapped_entries_are_named(site: Site, ledger: Ledger, columns: str) -> None:
    names = [c.strip() for c in columns.split(",")]
    for i, j in [(3, 4), (2, 9), (0, N - 1), (16, 20)]:
        a = site.sql(f"SELECT {columns} FROM ledger_entries WHERE idx = ?", (i,))[0]
        b = site.sql(f"SELECT {columns} FROM ledger_entries WHERE idx = ?", (j,))[0]
        sets = ", ".join(f"{n} = ?" for n in names)
        site.sql(f"UPDATE ledger_entries SET {sets} WHERE idx = ?", (*b, i))
        site.sql(f"UPDATE ledger_entries SET {sets} WHERE idx = ?", (*a, j))
        result = _bad(ledger)
        if len(names) < 6:  # the entry no longer matches its leaf or its query columns
            assert result.first_bad_index == i
            assert result.problems[0].index == i
        else:  # moved whole: the smallest subtree holding entry i no longer matches
            first = result.problems[0]
            assert first.where == "node" and first.index is not None
            assert first.index <= i and result.first_bad_index == first.index
            lo, hi = (int(x) for x in first.message.split("entries ")[1].split(" ")[0]
                      .split(".."))
            assert lo <= i <= hi
        site.sql(f"UPDATE ledger_entries SET {sets} WHERE idx = ?", (*a, i))
        site.sql(f"UPDATE ledger_entries SET {sets} WHERE idx = ?", (*b, j))
    assert ledger.verify().ok


def test_a_truncated_log_is_named(site: Site, ledger: Ledger) -> None:
    # the attacker removes the last three entries, their nodes, and fixes the head
    keep = N - 3
    site.sql("DELETE FROM ledger_entries WHERE idx >= ?", (keep,))
    site.sql("DELETE FROM ledger_nodes WHERE key >= ?", (internal_node_count(keep),))
    site.sql("UPDATE ledger_head SET size = ?", (keep,))
    result = _bad(ledger)
    assert result.first_bad_index == keep, result.summary()
    assert any("truncated or rolled back" in p.message for p in result.problems)
    # ... and also the checkpoint that covered them: earlier checkpoints still hold
    site.sql("DELETE FROM ledger_checkpoints WHERE size > ?", (keep,))
    assert ledger.verify().ok  # nothing left inside the node contradicts it, but a
    witness_cp = _signed_checkpoint(ledger, N)  # checkpoint a witness kept does
    result = ledger.verify(trusted=[witness_cp])
    assert not result.ok and result.first_bad_index == keep


def _signed_checkpoint(ledger: Ledger, size: int) -> str:
    # the note signed before the truncation, as a witness would have kept it
    from incisive_lab.ledger import Checkpoint

    assert ledger._signer is not None
    leaves = [leaf_hash(make_event(i).to_bytes()) for i in range(size)]
    return str(Checkpoint(ledger.origin, size, root_hash(leaves)).signed(ledger._signer))


def test_a_consistent_rewrite_is_caught_by_the_signed_checkpoints(site: Site,
                                                                  ledger: Ledger) -> None:
    """Entry, leaf and every node above it rewritten: only signatures can tell."""
    target = 10
    forged = make_event(target, actor="user:someone-else@idp.example").to_bytes()
    site.sql("UPDATE ledger_entries SET data = ?, leaf = ?, actor = ? WHERE idx = ?",
             (forged, leaf_hash(forged), "user:someone-else@idp.example", target))
    leaves = [bytes(r[0]) for r in site.sql("SELECT leaf FROM ledger_entries ORDER BY idx")]
    for key, (start, end) in _node_ranges().items():
        if start <= target < end:
            site.sql("UPDATE ledger_nodes SET hash = ? WHERE key = ?",
                     (root_hash(leaves[start:end]), key))
    result = _bad(ledger)
    assert [p.where for p in result.problems] == ["checkpoint"]  # 21 follows from 16
    assert result.first_bad_index == 8  # the last checkpoint that still matches
    assert "entries 8..15" in result.problems[0].message
    # with the stored checkpoints deleted too, a witness's copy still catches it
    site.sql("DELETE FROM ledger_checkpoints")
    assert ledger.verify().ok
    assert not ledger.verify(trusted=[_signed_checkpoint(ledger, 16)]).ok
    assert node_hash(leaves[0], leaves[1]) == root_hash(leaves[:2])


def test_changed_query_columns_are_named(site: Site, ledger: Ledger) -> None:
    for column, value in [("resource", "dataset:elsewhere"), ("actor", "user:x@idp"),
                          ("kind", "login"), ("time", "2020-01-01T00:00:00.000000Z")]:
        (old,) = site.sql(f"SELECT {column} FROM ledger_entries WHERE idx = 7")[0]
        site.sql(f"UPDATE ledger_entries SET {column} = ? WHERE idx = 7", (value,))
        result = _bad(ledger)
        assert result.first_bad_index == 7 and result.problems[0].where == "index"
        site.sql(f"UPDATE ledger_entries SET {column} = ? WHERE idx = 7", (old,))
    assert ledger.verify().ok
    # an entry slipped into the answer of a query by its columns is refused there too
    site.sql("UPDATE ledger_entries SET resource = ? WHERE idx = 7", ("dataset:ds9/x",))
    with pytest.raises(StoreError, match="entry 7 does not match"):
        ledger.query(resource="dataset:ds9")


def test_tampered_checkpoints_and_keys_are_reported(site: Site, ledger: Ledger) -> None:
    (note,) = site.sql("SELECT note FROM ledger_checkpoints WHERE size = 16")[0]
    site.sql("UPDATE ledger_checkpoints SET note = ? WHERE size = 16",
             (note.replace("\n16\n", "\n15\n"),))
    result = _bad(ledger)
    assert result.problems[0].where == "checkpoint"
    site.sql("UPDATE ledger_checkpoints SET note = ? WHERE size = 16", (note,))
    site.sql("UPDATE ledger_meta SET value = ? WHERE key = 'log_key'", ("someone+00000000+AA==",))
    result = ledger.verify()
    assert not result.ok and result.problems[0].where == "meta"


def test_the_append_only_triggers_refuse_changes(site: Site, ledger: Ledger) -> None:
    store = ledger._store
    conn = store._writer_conn()
    for sql in ["UPDATE ledger_entries SET kind = 'x' WHERE idx = 1",
                "DELETE FROM ledger_nodes WHERE key = 0",
                "DELETE FROM ledger_checkpoints"]:
        with pytest.raises(Exception, match="append-only"):
            cur = conn.cursor()
            store._begin_write(conn)
            try:
                cur.execute(sql)
            finally:
                conn.rollback()
    assert ledger.verify().ok
