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

Then it starts the workbench on this machine (``incisive_lab._demo_stack``): the OIDC
provider with demo users, the three nodes, the broker and JupyterHub, and prints the URL
and the logins. ``--detach`` starts them in the background and writes
``.incisive/demo.json`` (URLs, ports, users and passwords); ``incisive-lab demo stop`` stops
them; ``incisive-lab demo status`` prints what runs. ``--data-only`` stops after the data.
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
    p.add_argument("action", nargs="?", choices=("start", "stop", "status"), default="start",
                   help="start (default), stop a detached demo, or print its status")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the demo keeps its data (default: %(default)s)")
    p.add_argument("--detach", action="store_true", help="start the services in the background and return")
    p.add_argument("--data-only", action="store_true", help="only generate, ingest and check the data")
    p.add_argument("--hub-port", type=int, default=8000, help="the hub's port when free (default: %(default)s)")
    p.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--patients", type=int, default=50, help="synthetic patients over all sites (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for curation and de-identification (default: %(default)s)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from incisive_lab import _demo_stack as stack

    if args.action == "stop":
        stopped = stack.stop_running(args.dir)
        print("demo stopped" if stopped else "no demo was running")
        return 0
    if args.action == "status" or (not args.data_only and not args.supervise):
        running = stack.read_state(args.dir)
        if running is not None:
            print(f"the demo is already running (started {running.get('started', '?')}):")
            _print_access(running)
            return 0
        if args.action == "status":
            print("no demo is running")
            return 3
    if args.supervise:
        return _supervise(args)
    rc = _data(args)
    if rc or args.data_only:
        return rc
    if args.detach:
        return _detach(args)
    return _supervise(args)


def _print_access(state: dict[str, Any]) -> None:
    print(f"  JupyterHub:        {state['hub_url']}")
    print(f"  identity provider: {state['idp_url']}")
    print(f"  broker:            {state['broker_url']}")
    for name, url in state["nodes"].items():
        print(f"  node {name + ':':<13} {url}")
    print("  demo logins (user / password):")
    for user in state["users"]:
        note = f"   ({user['note']})" if user.get("note") else ""
        print(f"    {user['username']:<11} {user['password']:<14} {','.join(user['roles']) or '-'}, "
              f"LoA {user['loa']}{note}")
    print(f"  logs: {state['logs']}")


def _supervise(args: argparse.Namespace) -> int:
    """Start the services, write the state file, and keep them running until stopped."""
    import time

    from incisive_lab import _demo_stack as stack

    print("4/4 starting the workbench: identity provider, nodes, broker, hub", flush=True)
    plan = stack.prepare(args.dir, hub_port=args.hub_port)
    services = stack.Stack(plan)
    with stack.signals_stop():
        try:
            services.start(progress=lambda m: print(m, flush=True))
            state = services.describe()
            path = stack.write_state(args.dir, state)
            print(f"\nthe workbench is running (state in {path}); open {state['hub_url']} and log in:")
            _print_access(state)
            print("stop it with Ctrl-C or `incisive-lab demo stop`", flush=True)
            while True:
                dead = services.dead()
                if dead:
                    print(f"stopped unexpectedly: {', '.join(dead)}; see {state['logs']}", flush=True)
                    return 1
                time.sleep(1)  # watching the services
        except KeyboardInterrupt:
            print("stopping the workbench ...", flush=True)
            return 0
        finally:
            services.stop()
            stack.state_file(args.dir).unlink(missing_ok=True)


def _detach(args: argparse.Namespace) -> int:
    """Run the supervisor in the background; return once its services are ready."""
    import subprocess
    import time

    from incisive_lab import _demo_stack as stack

    log = args.dir / "stack" / "logs" / "supervisor.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "incisive_lab.cli", "demo", "--supervise", "--dir", str(args.dir),
           "--hub-port", str(args.hub_port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    print(f"4/4 starting the workbench in the background (log: {log}) ...", flush=True)
    while True:
        state = stack.read_state(args.dir)
        if state is not None and state.get("supervisor_pid") == proc.pid:
            print(f"the workbench is running in the background; state in {stack.state_file(args.dir)}")
            _print_access(state)
            print("stop it with `incisive-lab demo stop`")
            return 0
        if proc.poll() is not None:
            print(f"the workbench did not start; the end of {log}:", file=sys.stderr)
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        time.sleep(0.3)  # waiting for the supervisor


def _data(args: argparse.Namespace) -> int:
    import json

    from incisive_lab.deid import LeakScanner, write_secret_file
    from incisive_lab.deid.scanner import Finding
    from incisive_lab.dicom.synth import generate
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.ingest import INGEST_OPTIONS, ingest
    from incisive_lab.node.store import NodeStore

    root: Path = args.dir
    synth = root / "synthetic"
    print(f"1/4 synthetic federation: {args.patients} patients, seed {args.seed} -> {synth}", flush=True)
    summary = generate(synth, patients=args.patients, seed=args.seed)
    print(summary.table())
    index = json.loads((synth / "truth" / "index.json").read_text())
    sites: list[str] = list(index["sites"])
    hosting = {site: ("central" if i == len(sites) - 1 and len(sites) > 1 else "federated") for i, site in enumerate(sites)}
    print(f"2/4 ingesting each site into its node ({', '.join(f'{s}: {h}' for s, h in hosting.items())}); "
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
    print("3/4 checking everything the nodes hold for the planted identities (leak scanner, OCR of cleaned "
          "images, FHIR, dataset records) and verifying each ledger ...", flush=True)
    findings: list[tuple[str, Finding]] = []
    ledgers_ok = True
    for site in sites:
        node = root / "nodes" / site
        truth = json.loads((synth / "truth" / f"{site}.json").read_text())
        tokens = [t for t in truth["site_phi_tokens"] + [t for p in truth["patients"] for t in p["phi_tokens"]] if len(t) >= 4]
        scanner = LeakScanner(tokens)
        found: list[Finding] = []
        cleaned = _cleaned_sop_uids(node)
        with NodeStore.open(node) as store:
            for st in store.index.studies():
                for inst in store.index.instances(study_uid=st.study_uid):
                    path = store.object_path(inst.sha256)
                    data = path.read_bytes()
                    found += scanner.scan_file(inst.sop_uid, data, relpath=path.name)
                    if inst.sop_uid in cleaned:
                        found += scanner.scan_pixels(inst.sop_uid, data)
            for rtype in store.fhir.counts_by_type():
                for res in store.fhir.search(rtype):
                    found += scanner.scan_bytes(f"{rtype}/{res['id']}", json.dumps(res).encode())
        for record in (node / "datasets").glob("*.json"):
            found += scanner.scan_bytes(record.name, record.read_bytes())
        findings += [(site, f) for f in found]
        with Ledger.open(node, read_only=True) as ledger:
            ledgers_ok &= ledger.verify().ok
    print()
    print(f"{'site':<5} {'hosting':<10} {'stored':>7} {'quarant.':>8} {'failed':>6} {'FHIR':>6} {'seconds':>8}  curation report")
    for site, run in runs.items():
        print(f"{site:<5} {run.hosting:<10} {run.instances_stored + run.files_already_stored:>7} "
              f"{run.files_quarantined:>8} {run.files_failed:>6} {run.fhir_resources:>6} {run.seconds:>8.1f}  "
              f"{run.reports['curation_html']}")
    print()
    print(f"leaks found in what the nodes hold: {len(findings)}")
    for site, finding in findings[:20]:
        print(f"  site {site}: {finding}")
    if len(findings) > 20:
        print(f"  ... and {len(findings) - 20} more")
    print(f"ledgers verified: {'yes' if ledgers_ok else 'NO'}")
    print(f"nodes: {root / 'nodes'} (each: objects/, node.sqlite, datasets/, ledger/, private/)")
    print("re-identify a pseudonym (the provider's tool; written to its node's ledger): incisive-lab reidentify "
          f"--vault {root / 'nodes' / sites[0] / 'private' / 'vault.sqlite'} --secret-file {root / 'keys' / (sites[0] + '.key')} "
          f"--node-dir {root / 'nodes' / sites[0]} --purpose '...' PSEUDONYM")
    return 0 if not findings and ledgers_ok and all(r.files_failed == 0 for r in runs.values()) else 1


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
    sys.exit(_demo(argparse.Namespace(action="start", dir=DEFAULT_DIR, patients=50, seed=0, jobs=2,
                                      detach=False, data_only=False, hub_port=8000, supervise=False)))
