"""``incisive-lab demo``: the embedded default, end to end, on one machine.

At this stage of the project the demo generates a synthetic federation (three hospital
sites with PHI-laden DICOM and clinical spreadsheets) and ingests each site into its own
node as the repository would (``incisive-lab ingest``: curation, de-identification,
content-addressed store and index, FHIR, dataset record, ledger) — two federated sites
pseudonymised (keyed by their provider's secret, reversible through their vault), one
site anonymised for the central node. It then checks everything the nodes hold (every
stored DICOM object, OCR of every cleaned image, the FHIR resources and the public dataset
records) with the leak scanner against the generator's ground truth, verifies each node's
ledger, and prints a summary with where the reports are. A second run reuses what exists
and adds nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(".incisive") / "demo"


def register(sub: Any) -> None:
    """Add ``demo`` to the ``incisive-lab`` parser."""
    p = sub.add_parser("demo", help="run the embedded demo (synthetic federation ingested into nodes, checked for leaks)",
                       description=__doc__)
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the demo keeps its data (default: %(default)s)")
    p.add_argument("--patients", type=int, default=50, help="synthetic patients over all sites (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for curation and de-identification (default: %(default)s)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import json

    from incisive_lab.deid import LeakScanner, write_secret_file
    from incisive_lab.dicom.synth import generate
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.ingest import INGEST_OPTIONS, ingest
    from incisive_lab.node.store import NodeStore

    root: Path = args.dir
    synth = root / "synthetic"
    print(f"1/3 synthetic federation: {args.patients} patients, seed {args.seed} -> {synth}", flush=True)
    summary = generate(synth, patients=args.patients, seed=args.seed)
    print(summary.table())
    index = json.loads((synth / "truth" / "index.json").read_text())
    sites: list[str] = list(index["sites"])
    hosting = {site: ("central" if i == len(sites) - 1 and len(sites) > 1 else "federated") for i, site in enumerate(sites)}
    print(f"2/3 ingesting each site into its node ({', '.join(f'{s}: {h}' for s, h in hosting.items())}); "
          f"de-identification options: {', '.join(INGEST_OPTIONS)}", flush=True)
    runs = {}
    for site in sites:
        key = None
        if hosting[site] == "federated":
            key = root / "keys" / f"{site}.key"
            if not key.exists():
                write_secret_file(key)
        clinical = synth / site / "clinical.xlsx"
        runs[site] = ingest(root / "nodes" / site, dataset=f"site-{site}", dicom=synth / site / "dicom",
                            clinical=clinical if clinical.exists() else None, hosting=hosting[site],
                            secret_file=key, jobs=args.jobs, title=f"Synthetic site {site}", progress=None)
    print("3/3 checking everything the nodes hold for the planted identities (leak scanner, OCR of cleaned "
          "images, FHIR, dataset records) and verifying each ledger ...", flush=True)
    total_leaks = 0
    ledgers_ok = True
    for site in sites:
        node = root / "nodes" / site
        truth = json.loads((synth / "truth" / f"{site}.json").read_text())
        tokens = [t for t in truth["site_phi_tokens"] + [t for p in truth["patients"] for t in p["phi_tokens"]] if len(t) >= 4]
        scanner = LeakScanner(tokens)
        cleaned = _cleaned_sop_uids(node)
        with NodeStore.open(node) as store:
            for st in store.index.studies():
                for inst in store.index.instances(study_uid=st.study_uid):
                    path = store.object_path(inst.sha256)
                    data = path.read_bytes()
                    total_leaks += len(scanner.scan_file(inst.sop_uid, data, relpath=path.name))
                    if inst.sop_uid in cleaned:
                        total_leaks += len(scanner.scan_pixels(inst.sop_uid, data))
            for rtype in store.fhir.counts_by_type():
                for res in store.fhir.search(rtype):
                    total_leaks += len(scanner.scan_bytes(f"{rtype}/{res['id']}", json.dumps(res).encode()))
        for record in (node / "datasets").glob("*.json"):
            total_leaks += len(scanner.scan_bytes(record.name, record.read_bytes()))
        with Ledger.open(node, read_only=True) as ledger:
            ledgers_ok &= ledger.verify().ok
    print()
    print(f"{'site':<5} {'hosting':<10} {'stored':>7} {'quarant.':>8} {'failed':>6} {'FHIR':>6} {'seconds':>8}  curation report")
    for site, run in runs.items():
        print(f"{site:<5} {run.hosting:<10} {run.instances_stored + run.files_already_stored:>7} "
              f"{run.files_quarantined:>8} {run.files_failed:>6} {run.fhir_resources:>6} {run.seconds:>8.1f}  "
              f"{run.reports['curation_html']}")
    print()
    print(f"leaks found in what the nodes hold: {total_leaks}")
    print(f"ledgers verified: {'yes' if ledgers_ok else 'NO'}")
    print(f"nodes: {root / 'nodes'} (each: objects/, node.sqlite, datasets/, ledger/, private/)")
    print("re-identify a pseudonym (the provider's tool; written to its node's ledger): incisive-lab reidentify "
          f"--vault {root / 'nodes' / sites[0] / 'private' / 'vault.sqlite'} --secret-file {root / 'keys' / (sites[0] + '.key')} "
          f"--node-dir {root / 'nodes' / sites[0]} --purpose '...' PSEUDONYM")
    return 0 if total_leaks == 0 and ledgers_ok and all(r.files_failed == 0 for r in runs.values()) else 1


def _cleaned_sop_uids(node: Path) -> set[str]:
    """SOP Instance UIDs whose pixels the de-identifier cleaned (from the node's private reports)."""
    import json

    out = set()
    for report in (node / "private" / "reports").glob("deid-*.json"):
        for rec in json.loads(report.read_text())["files"]:
            if rec.get("pixels_cleaned") and rec.get("output"):
                out.add(Path(rec["output"]).stem)
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_demo(argparse.Namespace(dir=DEFAULT_DIR, patients=50, seed=0, jobs=2)))
