"""Sub-commands: ``deid``, ``reidentify`` and ``keygen``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from incisive_lab.errors import IncisiveLabError

_OPTION_NAMES = (
    "retain-longitudinal-full-dates",
    "retain-longitudinal-modified-dates",
    "retain-patient-characteristics",
    "retain-device-identity",
    "retain-institution-identity",
    "retain-uids",
    "retain-safe-private",
    "clean-descriptors",
    "clean-pixel-data",
    "clean-structured-content",
    "clean-graphics",
)


def register(sub: Any) -> None:
    """Add the de-identification commands to the ``incisive-lab`` parser."""
    p = sub.add_parser(
        "deid",
        help="de-identify DICOM files and clinical spreadsheets (DICOM PS3.15)",
        description="De-identify every DICOM file (and clinical .xlsx) under SRC into DST, following DICOM "
        "PS3.15 Table E.1-1 with the chosen options. Exit status: 0 done (quarantined files are reported), "
        "1 some files failed, 2 bad arguments.",
    )
    p.add_argument("src", nargs="?", metavar="SRC", help="source folder or file")
    p.add_argument("dst", nargs="?", metavar="DST", help="destination folder")
    p.add_argument("--mode", choices=("pseudonymize", "anonymize"), default="pseudonymize",
                   help="pseudonymize: keyed and reversible by the provider (vault); anonymize: irreversible, "
                   "a fresh random salt per run (default: %(default)s)")
    p.add_argument("--secret-file", metavar="KEY", help="the provider's secret (pseudonymize); see `incisive-lab keygen`")
    p.add_argument("--vault", metavar="VAULT", help="pseudonym vault to create or extend (pseudonymize only)")
    p.add_argument("--option", dest="options", action="extend", nargs="+", default=[], metavar="NAME",
                   choices=_OPTION_NAMES, help="PS3.15 option(s): " + ", ".join(_OPTION_NAMES))
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    p.add_argument("--report", metavar="FILE", help="write the JSON report here (default: DST/deid-report.json); "
                   "a readable HTML page is written beside it (same name, .html)")
    p.add_argument("--quarantine", metavar="DIR", help="copy quarantined originals here for review (provider side)")
    p.add_argument("--safe-private", metavar="FILE", help="extra safe private attributes (JSON, see docs/deidentification.md)")
    p.add_argument("--describe", action="store_true", help="print the conformance statement for the options and exit")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format of --describe")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="show a progress bar (default: on a terminal)")
    p.set_defaults(func=_deid)

    r = sub.add_parser(
        "reidentify",
        help="map pseudonyms back to the original identifiers (the provider's tool; ledgered)",
        description="Look pseudonyms (patient, accession number or UID) up in the vault. Every lookup, found or "
        "not, and a refused secret, is written to the node's ledger first. Prints JSON; exit 1 if any "
        "pseudonym is unknown.",
    )
    r.add_argument("pseudonyms", nargs="+", metavar="PSEUDONYM")
    r.add_argument("--vault", required=True, metavar="VAULT")
    r.add_argument("--secret-file", required=True, metavar="KEY")
    r.add_argument("--node-dir", required=True, metavar="DIR",
                   help="the provider's node directory, whose ledger records the re-identification")
    r.add_argument("--purpose", required=True, help="why (e.g. 'incidental finding, case 2026-17')")
    r.add_argument("--actor", help="who (default: user:<login name> of this session)")
    r.add_argument("--case", help="reference of the case or request, recorded with the purpose")
    r.set_defaults(func=_reidentify)

    k = sub.add_parser("keygen", help="create a provider secret file (32 random bytes, mode 0600)")
    k.add_argument("path", metavar="KEY")
    k.set_defaults(func=_keygen)


def _deid(args: argparse.Namespace) -> int:
    from pathlib import Path

    from incisive_lab.deid.batch import deidentify_tree
    from incisive_lab.deid.keys import Secret
    from incisive_lab.deid.profile import Profile

    profile = Profile(args.options, mode=args.mode)
    if args.describe:
        if args.format == "json":
            print(json.dumps(profile.describe(), indent=1))
        else:
            sys.stdout.write(profile.describe_text())
        return 0
    if not args.src or not args.dst:
        raise IncisiveLabError("deid needs SRC and DST (or --describe)")
    secret = Secret.from_file(args.secret_file) if args.secret_file else None
    if args.mode == "pseudonymize" and args.vault is None:
        print("incisive-lab: warning: no --vault given: pseudonyms will not be reversible with `reidentify`",
              file=sys.stderr)
    report_path = Path(args.report) if args.report else Path(args.dst) / "deid-report.json"
    run = deidentify_tree(
        args.src, args.dst, profile=profile, secret=secret, vault=args.vault, jobs=args.jobs,
        report=report_path, quarantine=args.quarantine, safe_private=args.safe_private, progress=args.progress,
    )
    c = run.counts
    rate = len(run.files) / run.seconds if run.seconds else 0.0
    print(f"de-identified {c['ok']} of {len(run.files)} files ({run.patients} patients) in {run.seconds:.1f} s "
          f"({rate:.0f} files/s, {args.jobs} job{'s' if args.jobs != 1 else ''}); "
          f"quarantined {c['quarantined']}, failed {c['failed']}, skipped {c['skipped']}")
    if run.clinical:
        print(f"clinical spreadsheets: {len(run.clinical)} ({sum(x.get('rows', 0) for x in run.clinical)} rows)")
    if run.vault_rows:
        print(f"vault: {run.vault_rows} rows written to {args.vault}")
    for f in run.files:
        if f.status in ("failed", "quarantined"):
            print(f"  {f.status}: {f.source}: {f.reason}", file=sys.stderr)
    from incisive_lab.deid.html_report import write_html_report

    html_path = write_html_report(run, Path(args.dst), report_path.with_suffix(".html"))
    print(f"report: {report_path} (readable: {html_path})")
    return 1 if c["failed"] else 0


def _reidentify(args: argparse.Namespace) -> int:
    from incisive_lab.deid.reidentify import reidentify

    results = reidentify(
        args.pseudonyms, vault=args.vault, secret_file=args.secret_file, node_dir=args.node_dir,
        purpose=args.purpose, actor=args.actor, case=args.case,
    )
    print(json.dumps(results, indent=1))
    return 0 if all(r["found"] for r in results) else 1


def _keygen(args: argparse.Namespace) -> int:
    from incisive_lab.deid.keys import write_secret_file

    path = write_secret_file(args.path)
    print(f"wrote a new secret to {path} (mode 0600); keep it safe: it cannot be recovered, and every "
          "pseudonym depends on it")
    return 0
