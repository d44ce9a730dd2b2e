"""Benchmark: login to a running kernel at the hub, sandboxed against unsandboxed (issue 7).

Two real hubs run side by side (``hub/jupyterhub_config.py``, each with its own real
development IdP): one with the bubblewrap sandbox spawner as deployed (the server in its
sandbox, per-user cgroups; kernels through the ``incisive-sandbox`` provisioner), one with
``"sandbox": false`` — the same spawner, server and kernelspec without bubblewrap, the peer
this benchmark exists for (it is not a deployable setting).

A sample is what a user waits for, timed from the first request to the hub:

1. **login**: the hub's OAuth redirect, the IdP's login form, the callback (ID token
   verified against the JWKS, LoA and groups checked, auth state stored);
2. **spawn**: the single-user server started and ready, plus its OAuth handshake;
3. **kernel**: ``POST /api/kernels`` until the kernel's ``kernel_info_reply`` arrives over
   its WebSocket channel (the kernel part alone is also reported).

The server is then stopped (untimed). The two hubs are interleaved sample by sample, the
order alternating each round, after one warm-up sample each that is not counted.

Must show: sandbox overhead at most 10% (p50 of sandboxed over unsandboxed <= 1.10, for
login-to-kernel and for kernel start). Figures and raw samples go to
``bench/results/workbench.json``.

Run: ``make bench`` or ``python bench/run.py workbench`` (``--samples 4`` for a quick run).
"""

# No "from __future__ import annotations": bench/run.py loads this file as a plain module.

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench._stats import percentile  # noqa: E402  (the repository root is on the path now)

RESULTS = HERE / "results"
KINDS = ("sandboxed", "unsandboxed")
AUDIENCE = "https://federation.bench.incisive.test/"
TARGET = 1.10


def _sample(hub_url: str, user: str) -> dict[str, float]:
    from tests._support.hub_session import HubSession

    with HubSession(hub_url, user, "") as session:
        t0 = time.perf_counter()
        session.login()
        t1 = time.perf_counter()
        session.start_server()
        t2 = time.perf_counter()
        kernel = session.start_kernel()
        session.kernel_info(kernel)
        t3 = time.perf_counter()
        session.stop_server()
    return {"login": (t1 - t0) * 1000, "spawn": (t2 - t1) * 1000, "kernel": (t3 - t2) * 1000,
            "total": (t3 - t0) * 1000}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_workbench", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12, help="samples per kind (default: %(default)s)")
    args = parser.parse_args(argv)

    from tests.hub._hub import HubClient, start_hub, start_hub_idp

    gateway = {"broker": "http://127.0.0.1:9/", "nodes": {"none": "http://127.0.0.1:9/"}}
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench-workbench-") as tmp, contextlib.ExitStack() as stack:
        # BENCH_WORKBENCH_DIR keeps the hubs' folders (logs, state) for a look afterwards
        tmp = os.environ.get("BENCH_WORKBENCH_DIR", tmp)
        hubs = {}
        for kind in KINDS:
            client = HubClient.new()
            idp = stack.enter_context(start_hub_idp(Path(tmp) / kind / "idp", client=client, audience=AUDIENCE))
            hub = stack.enter_context(start_hub(Path(tmp) / kind / "hub", idp, gateway, client=client,
                                                settings={"sandbox": kind == "sandboxed"}))
            hubs[kind] = hub.url
        print(f"two hubs: {hubs['sandboxed']} (sandboxed), {hubs['unsandboxed']} (unsandboxed); "
              f"{args.samples} samples each, interleaved", flush=True)
        for kind in KINDS:  # warm-up: first spawns import and probe what later ones reuse
            _sample(hubs[kind], "researcher")
        for i in range(args.samples):
            order = KINDS if i % 2 == 0 else KINDS[::-1]
            for kind in order:
                samples[kind].append(_sample(hubs[kind], "researcher"))
            print(f"  round {i + 1}/{args.samples}: " + ", ".join(
                f"{k} {samples[k][-1]['total']:.0f} ms" for k in KINDS), flush=True)

    rows = {}
    print()
    print(f"{'phase':<22} {'sandboxed p50':>14} {'unsandboxed p50':>16} {'ratio p50':>10} "
          f"{'sandboxed p95':>14} {'unsandboxed p95':>16} {'ratio p95':>10}")
    for phase in ("login", "spawn", "kernel", "total"):
        s = [x[phase] for x in samples["sandboxed"]]
        u = [x[phase] for x in samples["unsandboxed"]]
        row = {"sandboxed_p50": percentile(s, 0.5), "unsandboxed_p50": percentile(u, 0.5),
               "sandboxed_p95": percentile(s, 0.95), "unsandboxed_p95": percentile(u, 0.95)}
        row["ratio_p50"] = row["sandboxed_p50"] / row["unsandboxed_p50"]
        row["ratio_p95"] = row["sandboxed_p95"] / row["unsandboxed_p95"]
        row["paired_median_diff_ms"] = statistics.median(a - b for a, b in zip(s, u, strict=True))
        rows[phase] = row
        label = {"total": "login to running kernel", "kernel": "kernel start (server)"}.get(phase, phase)
        print(f"{label:<22} {row['sandboxed_p50']:>11.0f} ms {row['unsandboxed_p50']:>13.0f} ms "
              f"{row['ratio_p50']:>9.2f}x {row['sandboxed_p95']:>11.0f} ms {row['unsandboxed_p95']:>13.0f} ms "
              f"{row['ratio_p95']:>9.2f}x")
    ok = rows["total"]["ratio_p50"] <= TARGET and rows["kernel"]["ratio_p50"] <= TARGET
    print(f"\nsandbox overhead, login to running kernel: {rows['total']['ratio_p50']:.3f}x p50 "
          f"(paired median {rows['total']['paired_median_diff_ms']:+.0f} ms); kernel start through the "
          f"server: {rows['kernel']['ratio_p50']:.3f}x p50; target <= {TARGET:.2f}x: "
          f"{'holds' if ok else 'DOES NOT HOLD'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workbench.json").write_text(json.dumps({
        "machine": platform.platform(), "samples": args.samples, "rows": rows, "raw": samples}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
