"""Benchmark: provider ingest vs. de-identification alone (issue 4).

One run, one synthetic set (default: 50 patients, ~2,150 DICOM files over 3 sites, with
their clinical spreadsheets). For each site, side by side and interleaved (medians of
``--repeat`` rounds), both as the command a steward types, ``--jobs 2``:

- **de-identification alone**: ``incisive-lab deid SITE OUT`` over the site's DICOM and
  spreadsheet, with the ingest's own profile (:data:`incisive_lab.node.ingest.INGEST_OPTIONS`,
  pseudonymised for sites a and b, anonymised for c as central hosting);
- **ingest**: ``incisive-lab ingest`` of the same input into a fresh node (curation, the
  same de-identification, content-addressed store and index, FHIR, dataset record, ledger).

Must show: ingest costs at most 1.5x de-identification alone. For information, the same
ratio against de-identification without Clean Pixel Data (the fastest profile) is printed.

Run: ``make bench`` or ``python bench/run.py ingest``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SITES = {"a": "federated", "b": "federated", "c": "central"}


def _synth(work: Path, patients: int, seed: int) -> Path:
    from incisive_lab.dicom.synth import generate

    out = work / f"synth-{patients}-{seed}"
    if not (out / "truth" / "index.json").exists():
        if out.exists():
            shutil.rmtree(out)
        generate(out, patients=patients, seed=seed)
    return out


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_ingest")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=RESULTS / "work-ingest")
    args = parser.parse_args(argv)
    from incisive_lab.deid import write_secret_file
    from incisive_lab.node.ingest import INGEST_OPTIONS

    args.work.mkdir(parents=True, exist_ok=True)
    synth = _synth(args.work, args.patients, args.seed)
    key = args.work / "provider.key"
    if not key.exists():
        write_secret_file(key)
    n_files = sum(1 for s in SITES for p in (synth / s / "dicom").rglob("*") if p.is_file())
    print(f"synthetic set: {n_files} DICOM files and {len(SITES)} spreadsheets, {args.patients} patients, "
          f"seed {args.seed}; --jobs 2; medians of {args.repeat} interleaved rounds", flush=True)
    cli = [sys.executable, "-m", "incisive_lab.cli"]
    out = args.work / "out"

    def deid(site: str, options: tuple[str, ...]) -> float:
        dst = out / f"deid-{site}"
        shutil.rmtree(dst, ignore_errors=True)
        (out / f"vault-{site}.sqlite").unlink(missing_ok=True)
        cmd = [*cli, "deid", str(synth / site), str(dst), "--jobs", "2", "--no-progress"]
        if SITES[site] == "federated":
            cmd += ["--secret-file", str(key), "--vault", str(out / f"vault-{site}.sqlite")]
        else:
            cmd += ["--mode", "anonymize"]
        if options:
            cmd += ["--option", *options]
        return _timed(cmd)

    def ingest(site: str) -> float:
        node = out / f"node-{site}"
        shutil.rmtree(node, ignore_errors=True)
        cmd = [*cli, "ingest", "--node-dir", str(node), "--dataset", f"site-{site}", "--dicom",
               str(synth / site / "dicom"), "--clinical", str(synth / site / "clinical.xlsx"),
               "--hosting", SITES[site], "--jobs", "2", "--country", "GR"]
        if SITES[site] == "federated":
            cmd += ["--secret-file", str(key)]
        return _timed(cmd)

    out.mkdir(parents=True, exist_ok=True)
    rounds: dict[str, list[float]] = {"deid": [], "deid-fastest": [], "ingest": []}
    for r in range(max(1, args.repeat)):
        totals = {"deid": 0.0, "deid-fastest": 0.0, "ingest": 0.0}
        for site in SITES:
            totals["deid"] += deid(site, INGEST_OPTIONS)
            totals["ingest"] += ingest(site)
            fastest = tuple(o for o in INGEST_OPTIONS if o != "clean-pixel-data")
            totals["deid-fastest"] += deid(site, fastest)
        for k, v in totals.items():
            rounds[k].append(v)
        print(f"  round {r + 1}: de-identification {totals['deid']:.2f} s, ingest {totals['ingest']:.2f} s, "
              f"de-identification without clean-pixel-data {totals['deid-fastest']:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    ratio = med["ingest"] / med["deid"]
    info = med["ingest"] / med["deid-fastest"]
    print()
    print(f"{'measure':<58} {'seconds':>8} {'files/s':>8}")
    print("-" * 76)
    for label, k in (("de-identification alone (ingest profile)", "deid"),
                     ("ingest (curate, de-identify, store, FHIR, record, ledger)", "ingest"),
                     ("de-identification without clean-pixel-data", "deid-fastest")):
        print(f"{label:<58} {med[k]:>8.2f} {n_files / med[k]:>8.0f}")
    print()
    ok = ratio <= 1.5
    print(f"  {'PASS' if ok else 'FAIL'}  ingest <= 1.5x de-identification alone (same profile): {ratio:.2f}x")
    print(f"  (for information: ingest / de-identification without clean-pixel-data: {info:.2f}x)")
    RESULTS.mkdir(exist_ok=True)
    result = {"files": n_files, "patients": args.patients, "seed": args.seed, "jobs": 2, "rounds": rounds,
              "medians_seconds": med, "ratio_ingest_over_deid": round(ratio, 3),
              "ratio_ingest_over_deid_without_pixel_cleaning": round(info, 3), "options": list(INGEST_OPTIONS),
              "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    print(f"\nfigures written to {RESULTS / 'ingest.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main(sys.argv[1:]))
