"""Sub-commands ``central remove`` and ``central retry``: a steward has a withdrawn patient
removed from the central node.

``central remove`` is for a patient known only by the provider's original Patient ID (for
example one never ingested federated): the handle is computed from ``--removal-key``.
``central retry`` re-sends the removals the provider's node queued when the central node
could not be reached (:func:`incisive_lab.node.removal.retry_pending`).

The access token (``--token-file`` or ``INCISIVE_TOKEN``) must be a steward's token for
the central node's audience.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from incisive_lab.errors import IncisiveLabError

TOKEN_ENV = "INCISIVE_TOKEN"


def register(sub: Any) -> None:
    """Add ``central remove`` and ``central retry`` to the ``incisive-lab`` parser."""
    central = sub.add_parser("central", help="the central node: have a withdrawn patient removed")
    csub = central.add_subparsers(dest="central_command", metavar="SUBCOMMAND")
    csub.required = True
    r = csub.add_parser(
        "remove",
        help="remove a patient from the central node by the provider's original Patient ID",
        description="Compute the patient's removal handle from the original Patient ID and the provider's "
        "secret (the ingest's --removal-key) and ask the central node to remove every patient it holds under "
        "it (POST /central/removals). Nothing but the handle leaves this machine. Prints the counts removed "
        "(zeros: nothing held, or removed already). Exit status: 0 done, 2 refused or unreachable.",
    )
    _common(r)
    r.add_argument("--removal-key", required=True, metavar="KEY", help="the provider's secret file (as given "
                   "to ingest --removal-key)")
    r.add_argument("--patient-id", required=True, metavar="ID", help="the patient's original Patient ID")
    r.add_argument("--dataset", metavar="NAME", help="only this central dataset (default: all)")
    r.set_defaults(func=_remove)
    t = csub.add_parser(
        "retry",
        help="re-send the central removals a provider node has queued",
        description="Re-send every central removal queued in the provider node's database (the central node "
        "was unreachable or refused when the withdrawal was recorded). Exit status: 0 none left pending, "
        "1 some still pending, 2 bad arguments.",
    )
    _common(t)
    t.add_argument("--node-dir", required=True, metavar="DIR", help="the provider's node directory")
    t.add_argument("--secret-file", required=True, metavar="KEY", help="the provider's secret (opens the vault)")
    t.add_argument("--db-url", metavar="URL", help="the node database URL (default: SQLite in the node directory)")
    t.set_defaults(func=_retry)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--central-url", required=True, metavar="URL", help="the central node's base URL")
    p.add_argument("--token-file", metavar="FILE", help=f"a file holding the steward's access token for the "
                   f"central node (default: the {TOKEN_ENV} environment variable)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise IncisiveLabError(f"--token-file {args.token_file}: cannot read: {exc.strerror}") from None
        if not token:
            raise IncisiveLabError(f"--token-file {args.token_file}: empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise IncisiveLabError(f"no access token: pass --token-file or set {TOKEN_ENV}")
    return token


def _remove(args: argparse.Namespace) -> int:
    from incisive_lab.deid.keys import Secret
    from incisive_lab.node.removal import removal_handle, request_central_removal

    token = _token(args)
    handle = removal_handle(Secret.from_file(args.removal_key), args.patient_id)
    answer = request_central_removal(args.central_url, token, handle, timeout=args.timeout, dataset=args.dataset)
    removed = answer["removed"]
    if args.json:
        print(json.dumps(answer, indent=1, sort_keys=True))
    else:
        print("removed from the central node: " + ", ".join(
            f"{removed[k]} {k}" for k in ("patients", "studies", "instances", "records")))
    return 0


def _retry(args: argparse.Namespace) -> int:
    from incisive_lab.deid.keys import Secret
    from incisive_lab.deid.vault import Vault
    from incisive_lab.node.removal import retry_pending
    from incisive_lab.node.store import NodeStore

    token = _token(args)
    secret = Secret.from_file(args.secret_file)
    node = Path(args.node_dir)
    with NodeStore.open(node, args.db_url) as store, \
            Vault(node / NodeStore.PRIVATE / "vault.sqlite", secret) as vault:
        out = retry_pending(store.engine, vault, secret, central_url=args.central_url, token=token,
                            timeout=args.timeout)
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    else:
        print(f"done {len(out['done'])}, still pending {len(out['pending'])}, no handle {len(out['no-handle'])}")
    return 1 if out["pending"] else 0
