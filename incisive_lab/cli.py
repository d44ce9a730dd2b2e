"""The ``incisive-lab`` command.

Each area of the library registers its own sub-commands from a small ``_cli`` module
(``register(subparsers)``); heavy imports happen inside the handlers, so that
``incisive-lab --help`` stays fast.

Exit status: 0 success; 1 the command ran but some items failed (each one reported);
2 bad usage, bad configuration or input that could not be processed at all;
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from incisive_lab import __version__
from incisive_lab.errors import IncisiveLabError

#: Modules that contribute sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "incisive_lab.dicom._cli",
    "incisive_lab.deid._cli",
    "incisive_lab.ledger._cli",
    "incisive_lab.node._cli",
    "incisive_lab.node._central_cli",
    "incisive_lab.federation._cli",
    "incisive_lab.fl._cli",
    "incisive_lab._demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="incisive-lab",
        description="INCISIVE Lab: federated cancer-imaging research workbench.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # an area that has not landed yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except IncisiveLabError as exc:
        print(f"incisive-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("incisive-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
