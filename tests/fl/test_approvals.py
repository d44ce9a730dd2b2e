"""Task approvals at a node: by hash, durable, ledgered; and the steward's CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.errors import IncisiveLabError
from incisive_lab.fl import _cli
from incisive_lab.fl.approvals import ApprovalError, TaskApprovals
from incisive_lab.fl.task import TaskCode, builtin

STEWARD = "steward@hospital-a.example"


def cli_main(argv: list[str]) -> int:
    """``incisive-lab`` with this module's commands (as incisive_lab.cli runs them)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="incisive-lab")
    _cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IncisiveLabError as exc:
        print(f"incisive-lab: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture
def node(tmp_path: Path, small_node: Path) -> Path:
    dest = tmp_path / "node"
    shutil.copytree(small_node, dest, symlinks=True)
    return dest


def _task_events(node: Path) -> list[Any]:
    from incisive_lab.ledger import Ledger

    with Ledger.open(node) as ledger:
        return [e.event for e in ledger.query(kind="task")]


def test_approve_list_revoke(node: Path) -> None:
    code = builtin("mg-lesion")
    approvals = TaskApprovals(node)
    assert not approvals.is_approved(code.sha256) and approvals.list() == []
    first = approvals.approve(code, steward=STEWARD)
    assert approvals.is_approved(code.sha256)
    assert TaskApprovals(node).is_approved(code.sha256)  # durable: another instance reads it
    assert approvals.approve(code, steward="someone@else") == first  # twice: no change, no entry
    assert [(a.sha256, a.name, a.version, a.steward) for a in approvals.list()] == [
        (code.sha256, "mg-lesion", code.version, STEWARD)]
    approvals.revoke(code.sha256, steward=STEWARD)
    assert not approvals.is_approved(code.sha256)
    events = _task_events(node)
    assert [(e.action, e.actor, e.resource) for e in events] == [
        ("approve", f"user:{STEWARD}", f"task:{code.sha256}"), ("revoke", f"user:{STEWARD}", f"task:{code.sha256}")]
    assert events[0].details == {"task_sha256": code.sha256, "name": "mg-lesion", "version": code.version}


def test_a_changed_file_is_a_new_hash(node: Path, tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "incisive_lab" / "fl" / "tasks" / "mg_lesion"
    copy = tmp_path / "task"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    approvals = TaskApprovals(node)
    approvals.approve(TaskCode.from_dir(copy), steward=STEWARD)
    (copy / "task.py").write_text((copy / "task.py").read_text() + "\n# changed\n")
    assert not approvals.is_approved(TaskCode.from_dir(copy).sha256)


def test_bad_input_and_fail_closed(node: Path, tmp_path: Path) -> None:
    approvals = TaskApprovals(node)
    with pytest.raises(ApprovalError, match="not approved"):
        approvals.revoke("0" * 64, steward=STEWARD)
    with pytest.raises(ApprovalError, match="64 lowercase"):
        approvals.revoke("abc", steward=STEWARD)
    with pytest.raises(ApprovalError, match="steward"):
        approvals.approve(builtin("ct-nodule"), steward=" ")
    assert not approvals.is_approved("not a hash")
    with pytest.raises(ApprovalError, match="not a node"):
        TaskApprovals(tmp_path / "nowhere")
    (node / "fl-approvals.json").write_text("{broken")
    with pytest.raises(ApprovalError, match="refusing every task"):
        approvals.is_approved("0" * 64)


def test_cli(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = builtin("ct-nodule")
    assert cli_main(["fl", "hash", "--task", "ct-nodule"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "ct-nodule", "version": code.version,
                                                    "sha256": code.sha256}
    assert cli_main(["fl", "approve", "--node-dir", str(node), "--task", "ct-nodule", "--steward", STEWARD]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == code.sha256
    assert cli_main(["fl", "approvals", "--node-dir", str(node)]) == 0
    assert [a["name"] for a in json.loads(capsys.readouterr().out)] == ["ct-nodule"]
    assert cli_main(["fl", "revoke", "--node-dir", str(node), "--sha256", code.sha256, "--steward", STEWARD]) == 0
    capsys.readouterr()
    assert cli_main(["fl", "approvals", "--node-dir", str(node)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli_main(["fl", "hash", "--task", "no-such-task"]) == 2
    assert "no-such-task" in capsys.readouterr().err

