"""``incisive-lab ledger ...``: operate, prove and verify a node's ledger from the shell.

Sub-commands: ``init``, ``key``, ``append``, ``checkpoint``, ``prove``, ``query``,
``verify``, ``verify-proof`` and ``witness`` (``init``, ``trust``, ``cosign``,
``status``, ``evidence``). A ledger is named by ``--node-dir DIR`` (SQLite in
``DIR/ledger/``) or ``--url postgresql://... --key-dir DIR``. Output meant for machines
is JSON on stdout; messages go to stderr.

Exit status: 0 success; 1 verification failed or a witness refused (the output says
where and why); 2 bad usage or input (:class:`~incisive_lab.errors.IncisiveLabError`).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from incisive_lab.errors import IncisiveLabError


def register(subparsers: Any) -> None:
    """Add the ``ledger`` command and its sub-commands to the ``incisive-lab`` parser."""
    ledger = subparsers.add_parser(
        "ledger", help="tamper-evident ledger: append, checkpoint, prove, verify, witness",
        description="The node's append-only Merkle log of data transactions (RFC 9162), its "
                    "signed checkpoints, proofs and witnesses. See docs/ledger.md.")
    sub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("init", help="create the ledger and node key; print the public key")
    _location(p)
    p.add_argument("--origin", help="the log's identity on first use, e.g. "
                                    "'hospital-a.example/incisive/ledger'")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("key", help="print the node's public (verifier) key")
    _location(p)
    p.set_defaults(func=_cmd_key)

    p = sub.add_parser("append", help="append event(s) given as JSON; print index and leaf hash")
    _location(p)
    p.add_argument("--event", action="append", required=True, metavar="JSON",
                   help="an event object, '@FILE' (one object, or JSON lines) or '-' (stdin); "
                        "repeat for several (appended atomically)")
    p.set_defaults(func=_cmd_append)

    p = sub.add_parser("checkpoint", help="sign a checkpoint of the current tree; print the note")
    _location(p)
    p.add_argument("--out", type=Path, help="also write the note to this file")
    p.set_defaults(func=_cmd_checkpoint)

    p = sub.add_parser("prove", help="inclusion and/or consistency proof, as JSON")
    _location(p)
    p.add_argument("--index", type=int, help="entry index to prove included")
    p.add_argument("--old-size", type=int, help="prove the tree extends this older size")
    p.add_argument("--tree-size", type=int,
                   help="prove against this stored checkpoint's size (default: a fresh one)")
    p.set_defaults(func=_cmd_prove)

    p = sub.add_parser("query", help="entries by resource/actor/kind/time, each with its proof")
    _location(p)
    p.add_argument("--resource", help="resource and everything below it (dataset:x matches "
                                      "dataset:x/series:y)")
    p.add_argument("--actor")
    p.add_argument("--kind")
    p.add_argument("--since", help="RFC 3339 time, inclusive")
    p.add_argument("--until", help="RFC 3339 time, exclusive")
    p.add_argument("--limit", type=int)
    p.add_argument("--after", type=int, default=-1, help="only entries after this index")
    p.add_argument("--redact", action="store_true",
                   help="also print events with personal data replaced by '[personal]'")
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("verify", help="recompute everything; exit 1 naming the first bad entry")
    _location(p)
    p.add_argument("--checkpoint", action="append", type=Path, default=[], metavar="FILE",
                   help="a checkpoint obtained elsewhere (e.g. from a witness) to check "
                        "against; repeatable")
    p.add_argument("--key", help="node verifier key (text or file) to trust instead of node.pub")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("verify-proof",
                       help="check a 'prove' or 'query' output offline (the steward's check)")
    p.add_argument("bundle", type=Path, help="JSON written by 'prove' or 'query' ('-' = stdin)")
    p.add_argument("--key", required=True, help="the node's verifier key (text or file)")
    p.add_argument("--witness-key", action="append", default=[],
                   help="a witness verifier key (text or file); repeatable")
    p.add_argument("--quorum", type=int, default=0, help="cosignatures required")
    p.add_argument("--old-checkpoint", type=Path,
                   help="the older checkpoint a consistency proof starts from")
    p.set_defaults(func=_cmd_verify_proof)

    w = sub.add_parser("witness", help="act as a witness for other nodes' ledgers")
    wsub = w.add_subparsers(dest="witness_command", metavar="SUBCOMMAND")
    wsub.required = True
    p = wsub.add_parser("init", help="create the witness key; print its public key")
    p.add_argument("--dir", type=Path, required=True, help="witness state directory")
    p.add_argument("--name", help="witness key name on first use, e.g. "
                                  "'hospital-b.example/witness'")
    p.set_defaults(func=_cmd_witness_init)
    p = wsub.add_parser("trust", help="trust a log's verifier key (its node.pub)")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("key", help="verifier key text or file")
    p.set_defaults(func=_cmd_witness_trust)
    p = wsub.add_parser("cosign", help="cosign a node's checkpoint if it extends the last one")
    p.add_argument("--dir", type=Path, required=True)
    _location(p, required=False)
    p.add_argument("--checkpoint", type=Path, help="checkpoint note file (instead of a ledger)")
    p.add_argument("--proof", type=Path,
                   help="consistency proof JSON ('prove --old-size' output) for --checkpoint")
    p.set_defaults(func=_cmd_witness_cosign)
    p = wsub.add_parser("status", help="trusted logs and the size last cosigned for each")
    p.add_argument("--dir", type=Path, required=True)
    p.set_defaults(func=_cmd_witness_status)
    p = wsub.add_parser("evidence", help="print the evidence of every refusal")
    p.add_argument("--dir", type=Path, required=True)
    p.set_defaults(func=_cmd_witness_evidence)


# ---------------------------------------------------------------------- helpers
def _location(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--node-dir", type=Path, help="node directory (ledger in DIR/ledger/)")
    g.add_argument("--url", help="postgresql:// URL of the ledger database (needs --key-dir)")
    p.add_argument("--key-dir", type=Path, help="directory of node.key/node.pub (with --url)")


def _open(args: argparse.Namespace, *, read_only: bool = False, origin: str | None = None) -> Any:
    from incisive_lab.ledger import Ledger

    if args.url:
        if args.key_dir is None:
            raise IncisiveLabError("--url needs --key-dir (where node.key/node.pub are kept)")
        return Ledger.open(args.url, key_dir=args.key_dir, read_only=read_only, origin=origin)
    if args.node_dir is None:
        raise IncisiveLabError("give --node-dir DIR or --url URL --key-dir DIR")
    return Ledger.open(args.node_dir, key_dir=args.key_dir, read_only=read_only, origin=origin)


def _read_text(value: str) -> str:
    """A literal value, '-' for stdin, '@FILE', or the path of an existing file."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        return _read_file(Path(value[1:]))
    if not value.lstrip().startswith(("{", "[")):
        try:
            if Path(value).is_file():
                return _read_file(Path(value))
        except OSError:
            pass
    return value


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IncisiveLabError(f"cannot read {path}: {exc.strerror}") from exc


def _key(value: str) -> Any:
    from incisive_lab.ledger import VerifierKey

    return VerifierKey.parse(_read_text(value).strip())


def _json_in(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IncisiveLabError(f"{what} is not valid JSON: {exc}") from exc


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------- commands
def _cmd_init(args: argparse.Namespace) -> int:
    with _open(args, origin=args.origin) as ledger:
        print(f"origin: {ledger.origin}", file=sys.stderr)
        print(f"entries: {ledger.size}", file=sys.stderr)
        print(ledger.public_key)
    return 0


def _cmd_key(args: argparse.Namespace) -> int:
    with _open(args, read_only=True) as ledger:
        print(ledger.public_key)
    return 0


def _cmd_append(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import Event

    events: list[Any] = []
    for value in args.event:
        text = _read_text(value).strip()
        try:
            items = [json.loads(text)]
        except json.JSONDecodeError:  # JSON lines
            items = [_json_in(line, "event") for line in text.splitlines() if line.strip()]
        for item in items:
            events.extend(item if isinstance(item, list) else [item])
    parsed = [Event.from_dict(e) for e in events]
    with _open(args) as ledger:
        refs = ledger.append_many(parsed)
    for ref in refs:
        print(json.dumps({"index": ref.index,
                          "leaf_hash": base64.b64encode(ref.leaf_hash).decode()}))
    return 0


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        note = str(ledger.checkpoint())
    if args.out:
        args.out.write_text(note, encoding="utf-8")
    sys.stdout.write(note)
    return 0


def _cmd_prove(args: argparse.Namespace) -> int:
    if args.index is None and args.old_size is None:
        raise IncisiveLabError("give --index I (inclusion) and/or --old-size N (consistency)")
    from incisive_lab.ledger import ProvenEntry

    with _open(args, read_only=False) as ledger:
        if args.tree_size is None:
            cp = ledger.checkpoint()
        else:
            cp = ledger.checkpoint_at(args.tree_size)
            if cp is None:
                raise IncisiveLabError(f"no stored checkpoint of size {args.tree_size}; "
                                       "checkpoints: "
                                       f"{[c.size for c in ledger.checkpoints()]}")
        out: dict[str, Any] = {"checkpoint": str(cp)}
        if args.index is not None:
            entry = ledger.entry(args.index)
            proof = ledger.inclusion_proof(args.index, cp.size)
            out["entries"] = [ProvenEntry(entry.index, entry.leaf_hash, entry.data,
                                          proof).to_dict()]
        if args.old_size is not None:
            out["consistency_proof"] = ledger.consistency_proof(args.old_size, cp.size).to_dict()
            old = ledger.checkpoint_at(args.old_size)
            if old is not None:
                out["old_checkpoint"] = str(old)
    _print_json(out)
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        result = ledger.query(resource=args.resource, actor=args.actor, kind=args.kind,
                              since=args.since, until=args.until, limit=args.limit,
                              after=args.after)
    out = result.to_dict()
    if args.redact:
        for item, entry in zip(out["entries"], result, strict=True):
            item["event"] = entry.event.to_dict(redact=True)
    _print_json(out)
    print(f"{len(result)} entries, proven against tree size {result.checkpoint.size}",
          file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import Checkpoint

    trusted = [Checkpoint.parse(_read_file(p)) for p in args.checkpoint]
    with _open(args, read_only=True) as ledger:
        result = ledger.verify(trusted=trusted, log_key=_key(args.key) if args.key else None)
    if args.json:
        _print_json({"ok": result.ok, "size": result.size,
                     "first_bad_index": result.first_bad_index,
                     "root": base64.b64encode(result.root).decode() if result.root else None,
                     "problems": [{"index": p.index, "where": p.where, "message": p.message}
                                  for p in result.problems]})
    else:
        print(result.summary())
    if not result.ok and result.first_bad_index is not None:
        print(f"first bad entry: index {result.first_bad_index}", file=sys.stderr)
    return 0 if result.ok else 1


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import (
        Checkpoint,
        ConsistencyProof,
        LedgerError,
        QueryResult,
    )

    text = sys.stdin.read() if str(args.bundle) == "-" else _read_file(args.bundle)
    data = _json_in(text, "the proof bundle")
    if not isinstance(data, dict) or "checkpoint" not in data:
        raise IncisiveLabError("the proof bundle has no checkpoint")
    log_key = _key(args.key)
    witnesses = [_key(k) for k in args.witness_key]
    try:
        result = QueryResult.from_dict(data)
        result.verify(log_key, witnesses, args.quorum)
        for entry in result:
            print(f"entry {entry.index}: included in tree size {result.checkpoint.size}")
        if "consistency_proof" in data:
            proof = ConsistencyProof.from_dict(data["consistency_proof"])
            old_text = (_read_file(args.old_checkpoint) if args.old_checkpoint
                        else data.get("old_checkpoint"))
            if not old_text:
                raise IncisiveLabError("a consistency proof needs --old-checkpoint")
            old = Checkpoint.parse(old_text)
            old.verify(log_key)
            if proof.old_size != old.size or proof.new_size != result.checkpoint.size:
                raise LedgerError("the consistency proof is for other sizes than the checkpoints")
            proof.verify(old.root, result.checkpoint.root)
            print(f"tree size {proof.new_size} extends tree size {proof.old_size}")
    except LedgerError as exc:
        print(f"proof does NOT verify: {exc}")
        return 1
    print("proof verifies")
    return 0


def _cmd_witness_init(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import Witness

    w = Witness.open(args.dir, name=args.name)
    print(w.public_key)
    return 0


def _cmd_witness_trust(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import Witness

    key = Witness.open(args.dir).trust(_key(args.key))
    print(f"trusting {key}", file=sys.stderr)
    return 0


def _cmd_witness_cosign(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import ConsistencyProof, Witness, WitnessRefusal

    witness = Witness.open(args.dir)
    try:
        if args.checkpoint is not None:
            note = _read_file(args.checkpoint)
            if args.proof is not None:
                raw = _json_in(_read_file(args.proof), "the proof")
                proof = ConsistencyProof.from_dict(raw.get("consistency_proof", raw))
                cos = witness.cosign(note, proof)
            else:
                cos = witness.cosign(note, [])
            print(cos.line)
            return 0
        if args.node_dir is None and args.url is None:
            raise IncisiveLabError("give --node-dir/--url of the ledger, or --checkpoint")
        with _open(args) as ledger:
            cp, errors = ledger.collect_cosignatures([witness])
        if errors:
            raise errors[0]
        sys.stdout.write(str(cp))
        return 0
    except WitnessRefusal as exc:
        print(f"incisive-lab: refused: {exc}", file=sys.stderr)
        print(exc.evidence.to_json())
        return 1


def _cmd_witness_status(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import Witness

    w = Witness.open(args.dir)
    logs = []
    for origin, keys in sorted(w.trusted_logs().items()):
        cp = w.latest(origin)
        logs.append({"origin": origin, "keys": [str(k) for k in keys],
                     "cosigned_size": None if cp is None else cp.size})
    _print_json({"witness": w.name, "key": w.public_key, "logs": logs,
                 "refusals": len(w.evidence())})
    return 0


def _cmd_witness_evidence(args: argparse.Namespace) -> int:
    from incisive_lab.ledger import Witness

    _print_json([e.to_dict() for e in Witness.open(args.dir).evidence()])
    return 0
