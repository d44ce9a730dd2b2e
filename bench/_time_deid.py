"""Time one de-identification run in a fresh process (used by bench_deid.py).

Usage: python bench/_time_deid.py SRC DST KEY JOBS [OPTION ...]
Prints one JSON line: {"seconds": ..., "report": path}. Only the de-identification is
timed (not the interpreter's start-up), as in a long-running service or a large job.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    src, dst, key, jobs, *options = argv
    from incisive_lab.deid import Profile, Secret, deidentify_tree

    out = Path(dst)
    vault = out.with_suffix(".vault.sqlite")
    vault.unlink(missing_ok=True)
    secret = Secret.from_file(key)
    profile = Profile(options)  # the arguments are ready before the clock starts, as with the secret
    start = time.perf_counter()
    deidentify_tree(src, out, profile=profile, secret=secret, vault=vault, jobs=int(jobs),
                    report=out / "deid-report.json", progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "report": str(out / "deid-report.json")}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
