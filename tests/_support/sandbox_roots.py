"""What a sandbox's ``/`` may list: the system directories, plus the first component of
each host path the sandbox binds for Python (the prefixes and the editable sources), which
depends on where the checkout lives (``/work/...`` here, ``/check/...`` in CI)."""
from __future__ import annotations

import sys
from pathlib import Path

SYSTEM = frozenset({"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run",
                    "sbin", "tmp", "usr"})
REPO = Path(__file__).resolve().parents[2]


def host_tops() -> frozenset[str]:
    """Top-level names of the Python prefixes and of the repository, as bound."""
    paths = (sys.prefix, sys.base_prefix, REPO)
    return frozenset(Path(p).resolve().parts[1] for p in paths if len(Path(p).resolve().parts) > 1)


def allowed_root(*extra: str) -> frozenset[str]:
    """The names a sandbox's ``/`` may hold, with ``extra`` (``workspace``, …) added."""
    return SYSTEM | host_tops() | frozenset(extra)
