"""The ledger is a pure library: no HTTP, and nothing else of INCISIVE Lab is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import incisive_lab.ledger as ledger_pkg

PACKAGE = Path(ledger_pkg.__file__).parent
ALLOWED_PROJECT_IMPORTS = {"incisive_lab.errors"}
FORBIDDEN = {"http", "httpx", "requests", "urllib", "aiohttp", "tornado", "flask", "fastapi",
             "jupyter_server", "jupyterhub", "flwr"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_base_error_is_imported_from_the_project() -> None:
    for path in PACKAGE.rglob("*.py"):
        project = {n for n in _imports(path) if n.startswith("incisive_lab")
                   and not n.startswith("incisive_lab.ledger")}
        assert project <= ALLOWED_PROJECT_IMPORTS, (path.name, project)
        assert not {n.split(".")[0] for n in _imports(path)} & FORBIDDEN, path.name


def test_importing_the_library_loads_no_other_area() -> None:
    code = ("import sys, incisive_lab.ledger; "
            "print(sorted(m for m in sys.modules if m.startswith('incisive_lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parents[1]).stdout
    loaded = set(eval(out))
    assert all(m == "incisive_lab" or m == "incisive_lab.errors" or
               m.startswith("incisive_lab.ledger") for m in loaded), loaded
    assert "psycopg" not in out


def test_public_api_is_explicit() -> None:
    assert set(ledger_pkg.__all__) == {n for n in dir(ledger_pkg) if not n.startswith("_")
                                       } - {"annotations"}
    for name in ledger_pkg.__all__:
        obj = getattr(ledger_pkg, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
