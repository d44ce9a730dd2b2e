"""``incisive-lab demo``: the embedded default, end to end, on one machine.

At this stage of the project the demo generates a synthetic federation (three hospital
sites with PHI-laden DICOM and clinical spreadsheets), de-identifies it as the
repository would — two federated sites pseudonymised (keyed by their provider's secret,
reversible through their vault), one site anonymised for the central node — checks
every output with the leak scanner against the generator's ground truth, and prints a
summary with where the reports are. A second run reuses what exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(".incisive") / "demo"
#: What a research repository keeps: intervals between dates, age and sex, cleaned text and pixels.
DEMO_OPTIONS = (
    "retain-longitudinal-modified-dates",
    "retain-patient-characteristics",
    "retain-safe-private",
    "clean-descriptors",
    "clean-structured-content",
    "clean-pixel-data",
)


def register(sub: Any) -> None:
    """Add ``demo`` to the ``incisive-lab`` parser."""
    p = sub.add_parser("demo", help="run the embedded demo (synthetic federation, de-identified and checked)",
                       description=__doc__)
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the demo keeps its data (default: %(default)s)")
    p.add_argument("--patients", type=int, default=50, help="synthetic patients over all sites (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for de-identification (default: %(default)s)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import json
    import shutil

    from incisive_lab.deid import LeakScanner, Profile, Secret, deidentify_tree, write_secret_file
    from incisive_lab.deid.html_report import write_html_report
    from incisive_lab.dicom.synth import generate

    root: Path = args.dir
    synth = root / "synthetic"
    print(f"1/3 synthetic federation: {args.patients} patients, seed {args.seed} -> {synth}", flush=True)
    summary = generate(synth, patients=args.patients, seed=args.seed)
    print(summary.table())
    index = json.loads((synth / "truth" / "index.json").read_text())
    sites: list[str] = list(index["sites"])
    hosting = {site: ("central" if i == len(sites) - 1 and len(sites) > 1 else "federated") for i, site in enumerate(sites)}
    print(f"2/3 de-identifying ({', '.join(f'{s}: {h}' for s, h in hosting.items())}); options: {', '.join(DEMO_OPTIONS)}", flush=True)
    rows = []
    for site in sites:
        out = root / "deid" / site
        if out.exists():
            shutil.rmtree(out)  # anonymisation is random per run: start clean
        mode = "anonymize" if hosting[site] == "central" else "pseudonymize"
        secret = vault = None
        if mode == "pseudonymize":
            key = root / "keys" / f"{site}.key"
            if not key.exists():
                write_secret_file(key)
            secret, vault = Secret.from_file(key), root / "vaults" / f"{site}.sqlite"
        report = root / "reports" / f"{site}.json"
        run = deidentify_tree(synth / site, out, profile=Profile(DEMO_OPTIONS, mode=mode), secret=secret, vault=vault,
                              jobs=args.jobs, report=report, progress=None)
        html = write_html_report(run, out, report.with_suffix(".html"), title=f"Site {site} ({mode})")
        rows.append((site, mode, run, report, html, out))
    print("3/3 checking every output for the planted identities (leak scanner, OCR of cleaned images) ...", flush=True)
    total_leaks = 0
    for site, _mode, run, _report, _html, out in rows:
        truth = json.loads((synth / "truth" / f"{site}.json").read_text())
        tokens = [t for t in truth["site_phi_tokens"] + [t for p in truth["patients"] for t in p["phi_tokens"]] if len(t) >= 4]
        scanner = LeakScanner(tokens)
        for rec in run.files:
            if rec.status == "ok" and rec.output:
                data = (out / rec.output).read_bytes()
                total_leaks += len(scanner.scan_file(rec.source, data, relpath=rec.output))
                if rec.pixels_cleaned:
                    total_leaks += len(scanner.scan_pixels(rec.source, data))
    print()
    print(f"{'site':<5} {'mode':<13} {'released':>8} {'quarant.':>8} {'failed':>6} {'patients':>8} {'files/s':>8}  report")
    for site, mode, run, _report, html, _out in rows:
        c = run.counts
        print(f"{site:<5} {mode:<13} {c['ok']:>8} {c['quarantined']:>8} {c['failed']:>6} {run.patients:>8} "
              f"{len(run.files) / run.seconds:>8.0f}  {html}")
    print()
    print(f"leaks found in de-identified output: {total_leaks}")
    print(f"de-identified data: {root / 'deid'}   vaults (provider side): {root / 'vaults'}   JSON reports: {root / 'reports'}")
    print("re-identify a pseudonym (the provider's tool; written to its node's ledger): incisive-lab reidentify "
          f"--vault {root / 'vaults' / (sites[0] + '.sqlite')} --secret-file {root / 'keys' / (sites[0] + '.key')} "
          f"--node-dir {root / 'nodes' / sites[0]} --purpose '...' PSEUDONYM")
    return 0 if total_leaks == 0 and all(r[2].counts["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_demo(argparse.Namespace(dir=DEFAULT_DIR, patients=50, seed=0, jobs=2)))
