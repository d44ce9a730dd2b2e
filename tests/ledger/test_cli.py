"""``incisive-lab ledger ...`` end to end through the real command-line entry point."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from incisive_lab.cli import main

from .helpers import Site, make_event


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["ledger", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _where(site: Site) -> list[str]:
    if site.backend == "sqlite":
        return ["--node-dir", site.location]
    return ["--url", site.location, "--key-dir", str(site.key_dir)]


def test_operator_and_steward_flow(site: Site, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    where = _where(site)
    rc, out, _ = run(capsys, "init", *where, "--origin", "hospital-a.example/ledger")
    assert rc == 0 and out.startswith("hospital-a.example/ledger+")
    pub = out.strip()
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(make_event(i).to_dict()) for i in range(6)) + "\n")
    rc, out, _ = run(capsys, "append", *where, "--event", f"@{events}")
    assert rc == 0 and [json.loads(x)["index"] for x in out.splitlines()] == list(range(6))
    rc, out, _ = run(capsys, "append", *where, "--event", json.dumps(make_event(6).to_dict()))
    assert rc == 0 and json.loads(out)["index"] == 6
    rc, out, _ = run(capsys, "key", *where)
    assert out.strip() == pub
    old = tmp_path / "old.note"
    rc, out, _ = run(capsys, "checkpoint", *where, "--out", str(old))
    assert rc == 0 and out.splitlines()[:2] == ["hospital-a.example/ledger", "7"]
    run(capsys, "append", *where, "--event", json.dumps(make_event(7).to_dict()))

    rc, out, _ = run(capsys, "prove", *where, "--index", "3", "--old-size", "7")
    assert rc == 0
    bundle = tmp_path / "proof.json"
    bundle.write_text(out)
    assert json.loads(out)["consistency_proof"]["old_size"] == 7
    rc, out, _ = run(capsys, "verify-proof", str(bundle), "--key", pub,
                     "--old-checkpoint", str(old))
    assert rc == 0 and "entry 3: included in tree size 8" in out and "extends" in out

    rc, out, err = run(capsys, "query", *where, "--resource", "dataset:ds1", "--redact")
    assert rc == 0 and "proven against tree size 8" in err
    answer = json.loads(out)
    assert [e["index"] for e in answer["entries"]] == [1, 4, 7]
    assert answer["entries"][0]["event"]["actor"] == "[personal]"
    (tmp_path / "query.json").write_text(out)
    rc, out, _ = run(capsys, "verify-proof", str(tmp_path / "query.json"), "--key", pub)
    assert rc == 0 and out.strip().endswith("proof verifies")
    forged = json.loads((tmp_path / "query.json").read_text())
    forged["entries"][0]["data"] = forged["entries"][0]["data"].replace("view", "read")
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    rc, out, _ = run(capsys, "verify-proof", str(tmp_path / "forged.json"), "--key", pub)
    assert rc == 1 and "does NOT verify" in out

    rc, out, _ = run(capsys, "verify", *where)
    assert rc == 0 and out.startswith("ledger OK: 8 entries")


def test_verify_names_the_first_bad_entry(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node"
    run(capsys, "init", "--node-dir", str(node), "--origin", "a.example/l")
    for i in range(10):
        run(capsys, "append", "--node-dir", str(node), "--event",
            json.dumps(make_event(i).to_dict()))
    db = sqlite3.connect(node / "ledger" / "ledger.sqlite")
    db.execute("DROP TRIGGER ledger_entries_no_update")
    (data,) = db.execute("SELECT data FROM ledger_entries WHERE idx = 6").fetchone()
    db.execute("UPDATE ledger_entries SET data = ? WHERE idx = 6",
               (data.replace(b"researcher1", b"researcher9"),))
    db.commit()
    db.close()
    rc, out, err = run(capsys, "verify", "--node-dir", str(node))
    assert rc == 1
    assert "first bad entry: index 6" in out and "first bad entry: index 6" in err
    rc, out, _ = run(capsys, "verify", "--node-dir", str(node), "--json")
    assert rc == 1 and json.loads(out)["first_bad_index"] == 6


def test_witness_commands_and_refusal_evidence(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    node, wdir = tmp_path / "node", tmp_path / "witness"
    _, pub, _ = run(capsys, "init", "--node-dir", str(node), "--origin", "a.example/l")
    rc, wpub, _ = run(capsys, "witness", "init", "--dir", str(wdir), "--name",
                      "b.example/witness")
    assert rc == 0 and wpub.startswith("b.example/witness+")
    (tmp_path / "a.pub").write_text(pub)
    assert run(capsys, "witness", "trust", "--dir", str(wdir), str(tmp_path / "a.pub"))[0] == 0
    for i in range(3):
        run(capsys, "append", "--node-dir", str(node), "--event",
            json.dumps(make_event(i).to_dict()))
    rc, out, _ = run(capsys, "witness", "cosign", "--dir", str(wdir), "--node-dir", str(node))
    assert rc == 0 and "\u2014 b.example/witness " in out
    rc, out, _ = run(capsys, "witness", "status", "--dir", str(wdir))
    assert json.loads(out)["logs"][0]["cosigned_size"] == 3
    # the remote form: a checkpoint file and a proof file from 'prove --old-size'
    run(capsys, "append", "--node-dir", str(node), "--event", json.dumps(make_event(3).to_dict()))
    _, note, _ = run(capsys, "checkpoint", "--node-dir", str(node))
    _, proof, _ = run(capsys, "prove", "--node-dir", str(node), "--old-size", "3")
    (tmp_path / "cp.note").write_text(note)
    (tmp_path / "proof.json").write_text(proof)
    rc, out, _ = run(capsys, "witness", "cosign", "--dir", str(wdir), "--checkpoint",
                     str(tmp_path / "cp.note"), "--proof", str(tmp_path / "proof.json"))
    assert rc == 0 and out.startswith("\u2014 b.example/witness ")
    # a stale (smaller) checkpoint is a rollback: refused, evidence printed, exit 1
    _, old_proof, _ = run(capsys, "prove", "--node-dir", str(node), "--old-size", "3",
                          "--tree-size", "3")
    (tmp_path / "old.note").write_text(json.loads(old_proof)["checkpoint"])
    rc, out, err = run(capsys, "witness", "cosign", "--dir", str(wdir), "--checkpoint",
                       str(tmp_path / "old.note"))
    assert rc == 1 and "rollback" in err
    assert json.loads(out)["kind"] == "rollback"
    rc, out, _ = run(capsys, "witness", "evidence", "--dir", str(wdir))
    assert [e["kind"] for e in json.loads(out)] == ["rollback"]


def test_user_errors_exit_2_without_traceback(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    node = str(tmp_path / "node")
    run(capsys, "init", "--node-dir", node, "--origin", "a.example/l")
    for event in ['{"kind": "access"', '{"kind": "nope", "actor": "a", "action": "b", '
                  '"outcome": "allowed"}', '{"kind": "access", "actor": "a", "action": "view",'
                  ' "outcome": "allowed", "resource": "r", "purpose": "p", "extra": 1}']:
        rc, _, err = run(capsys, "append", "--node-dir", node, "--event", event)
        assert rc == 2 and err.startswith("incisive-lab: error:") and "Traceback" not in err
    rc, _, err = run(capsys, "prove", "--node-dir", node)
    assert rc == 2 and "--index" in err
    rc, _, err = run(capsys, "verify", "--url", "postgresql://x@/y?host=/nonexistent")
    assert rc == 2 and "--key-dir" in err
    rc, _, err = run(capsys, "verify", "--node-dir", str(tmp_path / "missing"))
    assert rc == 2 and "no ledger" in err
