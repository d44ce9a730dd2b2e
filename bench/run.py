"""Run the benchmarks: ``make bench`` (all) or ``python bench/run.py deid ledger``.

Each ``bench/bench_<name>.py`` exposes ``main(argv) -> int``: it measures our code and a
peer in the same run, prints a table with ratios, states which of its issue's
"must show" lines hold, and writes its figures to ``bench/results/<name>.json``.
Benchmarks are not tests: nothing here asserts on wall-clock time inside the suite.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    available = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    wanted = argv or list(available)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    failed = []
    for name in wanted:
        print(f"\n=== bench: {name} ===", flush=True)
        start = time.perf_counter()
        rc = _load(available[name]).main([])
        print(f"=== {name}: {'ok' if rc == 0 else 'FAILED'} in {time.perf_counter() - start:.1f} s ===")
        if rc:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks whose targets did not hold: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main(sys.argv[1:]))
