"""``incisive-lab fl ...``: a node steward's task approvals, and a task's hash.

Sub-commands:

``hash (--task NAME | --task-dir PATH)``
    print the task's name, version and SHA-256 (what a steward approves), as JSON;
``approve --node-dir D (--task NAME | --task-dir PATH) --steward ID``
    approve the task's code at the node (ledgered ``task`` ``approve``);
``revoke --node-dir D --sha256 HASH --steward ID``
    withdraw an approval (ledgered ``task`` ``revoke``);
``approvals --node-dir D``
    list the node's approvals as JSON.

Exit status: 0 success; 2 bad usage or input (:class:`~incisive_lab.errors.IncisiveLabError`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from incisive_lab.errors import IncisiveLabError


def register(subparsers: Any) -> None:
    """Add the ``fl`` command and its sub-commands to the ``incisive-lab`` parser."""
    fl = subparsers.add_parser(
        "fl", help="federated training: approve task code at a node, hash a task",
        description="A node runs only federated task code whose SHA-256 its steward approved. "
                    "See docs/fl.md.")
    sub = fl.add_subparsers(dest="fl_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("hash", help="print a task's name, version and SHA-256")
    _task(p)
    p.set_defaults(func=_cmd_hash)

    p = sub.add_parser("approve", help="approve a task's code (by its hash) at a node")
    p.add_argument("--node-dir", type=Path, required=True, help="the node directory")
    _task(p)
    p.add_argument("--steward", required=True, help="the approving steward's account id (for the ledger)")
    p.set_defaults(func=_cmd_approve)

    p = sub.add_parser("revoke", help="withdraw a task approval at a node")
    p.add_argument("--node-dir", type=Path, required=True, help="the node directory")
    p.add_argument("--sha256", required=True, help="the task hash to revoke")
    p.add_argument("--steward", required=True, help="the steward's account id (for the ledger)")
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("approvals", help="list a node's task approvals (JSON)")
    p.add_argument("--node-dir", type=Path, required=True, help="the node directory")
    p.set_defaults(func=_cmd_list)


def _task(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--task", help="a built-in task's name (mg-lesion, ct-nodule)")
    g.add_argument("--task-dir", type=Path, help="a task directory (task.py and friends)")


def _code(args: argparse.Namespace) -> Any:
    from incisive_lab.fl.task import TaskCode, builtin

    try:
        return builtin(args.task) if args.task else TaskCode.from_dir(args.task_dir)
    except ValueError as exc:
        raise IncisiveLabError(f"--task{'-dir' if args.task_dir else ''}: {exc}") from None


def _print(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _cmd_hash(args: argparse.Namespace) -> int:
    code = _code(args)
    _print({"name": code.name, "version": code.version, "sha256": code.sha256})
    return 0


def _cmd_approve(args: argparse.Namespace) -> int:
    from incisive_lab.fl.approvals import ApprovalError, TaskApprovals

    code = _code(args)
    try:
        approval = TaskApprovals(args.node_dir).approve(code, steward=args.steward)
    except ApprovalError as exc:
        raise IncisiveLabError(str(exc)) from None
    _print(approval.to_json())
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from incisive_lab.fl.approvals import TaskApprovals

    _print(TaskApprovals(args.node_dir).revoke(args.sha256.strip().lower(), steward=args.steward).to_json())
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from incisive_lab.fl.approvals import TaskApprovals

    _print([a.to_json() for a in TaskApprovals(args.node_dir).list()])
    return 0
