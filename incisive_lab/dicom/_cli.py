"""``incisive-lab synth``: the synthetic data generator on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["handler", "register"]


def register(subparsers: Any) -> None:
    """Add the ``synth`` sub-command to the ``incisive-lab`` parser."""
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic multi-site set of PHI-laden DICOM and clinical spreadsheets",
        description=(
            "Write OUT/<site>/dicom/..., OUT/<site>/clinical.xlsx and the ground truth "
            "OUT/truth/*.json. The output depends only on the parameters. OUT must not exist, "
            "be empty, or hold a set generated with the same parameters (then it is "
            "regenerated)."
        ),
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="output folder")
    parser.add_argument("--patients", type=int, default=50,
                        help="number of patients over all sites (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--sites", default="a,b,c",
                        help="comma-separated site names (default: a,b,c)")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the generator and print a summary table; returns the exit status."""
    from incisive_lab.dicom.synth import generate

    sites = [s.strip() for s in str(args.sites).split(",")]
    summary = generate(args.out, patients=args.patients, seed=args.seed, sites=sites)
    total = summary.total
    print(summary.table())
    print(f"\n{total.files} files, {total.bytes / 1e6:.1f} MB, {total.patients} patients in "
          f"{summary.elapsed_seconds:.1f} s -> {summary.out}")
    return 0
