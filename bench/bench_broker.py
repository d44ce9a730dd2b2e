"""Benchmark: the broker's federated count over 3 and over 20 nodes, and with dead nodes (issue 6).

One run, one machine. Three **real** nodes (``incisive-lab node serve``, each its own
process, each a fresh copy of one synthetic site ingested by the real ingest; real access
tokens of the development identity provider, verified, the sharing terms checked, the
differencing guard consulted and every answer ledgered durably) and seventeen **light**
nodes: one process on loopback that answers ``POST /cohort/count`` with a well-formed
suppressed answer at once (no token check, no database), standing in for nodes on other
machines — on a 2-core machine 20 real node processes would measure the CPU contention of
the nodes, not the broker. The broker (``incisive-lab broker serve``, its own process,
verifying every token and ledgering every query) is asked the same federated count:

* **3 nodes**: the three real nodes;
* **20 nodes**: the same three real nodes and the seventeen light ones;
* **dead nodes**: the three real nodes, one URL with nothing listening and one that
  accepts TCP and never answers (a black hole), with a per-node timeout of ``--timeout``.

Requests to the 3- and 20-node brokers are interleaved one by one after a warm-up that is
not counted; tokens rotate over a few researchers so that no node's daily query budget
runs out. Must show: p50 and p95 of 20 nodes at most 1.5x those of 3 nodes, and the median
dead-node answer back within the timeout plus the median 3-node answer (a dead node costs
no more than the timeout; p95 and max are printed), with statuses ``error`` and
``timeout`` and ``partial: true``. Figures
go to ``bench/results/broker.json``.

Run: ``make bench`` or ``python bench/run.py broker`` (``--samples 40`` for a quick run).
"""

# No "from __future__ import annotations": bench/run.py loads this file as a plain module.

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench._stats import percentile  # noqa: E402  (the repository root is on the path now)

RESULTS = HERE / "results"
AUDIENCE = "https://federation-bench.incisive-lab.example/"
TERMS = {"hosting": "federated", "visibility": "visible", "organisations": ["*"],
         "roles": ["researcher"], "purposes": ["ai-development"], "min_loa": "substantial",
         "floor": 3, "expires": None}
USERS = tuple({"username": f"bench{i}", "name": f"Bench {i}", "email": f"bench{i}@incisive.test",
               "roles": ["researcher"], "groups": ["/incisive/researcher"], "loa": "substantial"}
              for i in range(6))
QUERY = {"criteria": {"imaging": {"modality": ["CT", "MR"]}}}
LIGHT_ANSWER = json.dumps({"format": "incisive-cohort-answer/1", "query_id": 1, "denied": {},
                           "criteria": QUERY["criteria"],
                           "datasets": [{"dataset": "light", "count": "<10", "suppressed": True,
                                         "floor": 10, "rounding": 1}]}).encode()


def _free_port() -> int:
    from tests._support.orthanc import free_port

    return free_port()


def _process(cmd: list[str], url: str, log: Path, what: str) -> Any:
    from tests._support.node_server import serve_process

    return serve_process(cmd, url, log, what)


def _node(node_dir: Path, issuer: str, log: Path) -> Any:
    port = _free_port()
    cmd = [sys.executable, "-m", "incisive_lab.cli", "node", "serve", "--node-dir", str(node_dir),
           "--issuer", issuer, "--audience", AUDIENCE, "--port", str(port)]
    return _process(cmd, f"http://127.0.0.1:{port}", log, f"node {node_dir.name}")


def _broker(config: dict[str, Any], issuer: str, work: Path, name: str) -> Any:
    port = _free_port()
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "incisive_lab.cli", "broker", "serve", "--nodes", str(path),
           "--issuer", issuer, "--audience", AUDIENCE, "--port", str(port), "--state-dir", str(work / name)]
    return _process(cmd, f"http://127.0.0.1:{port}", work / f"{name}.log", f"broker {name}")


# ------------------------------------------------------------------------------ light nodes

def _light_nodes_main(count: int, ready_file: str) -> None:
    """Serve ``count`` light nodes on loopback in this process (run with ``--light-nodes``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                body = LIGHT_ANSWER if head.startswith(b"POST /cohort/count") else b'{"status": "ok"}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(count)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        Path(ready_file).write_text(json.dumps(ports))
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def _light_nodes(count: int, work: Path) -> Iterator[list[str]]:
    ready = work / "light-ports.json"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--light-nodes", str(count), str(ready)],
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the light nodes did not start")
            time.sleep(0.05)  # waiting for the process's ready file
        yield [f"http://127.0.0.1:{p}" for p in json.loads(ready.read_text())]
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _blackhole() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for s in accepted:
            s.close()
        sock.close()


# ------------------------------------------------------------------------------ data

def _base_node(work: Path) -> Path:
    """One synthetic site ingested once (cached under the work folder)."""
    from incisive_lab.deid import write_secret_file
    from incisive_lab.dicom.synth import generate
    from incisive_lab.node.ingest import ingest

    node = work / "base" / "node"
    if (node / "datasets" / "site-a.json").exists():
        return node
    shutil.rmtree(work / "base", ignore_errors=True)
    generate(work / "base" / "raw", patients=6, seed=3, sites=("a",), progress=False)
    key = write_secret_file(work / "base" / "provider.key")
    ingest(node, dataset="site-a", dicom=work / "base" / "raw" / "a" / "dicom",
           clinical=work / "base" / "raw" / "a" / "clinical.xlsx", hosting="federated", secret_file=key,
           country="GR", progress=False)
    return node


# ------------------------------------------------------------------------------ measuring

def main(argv: list[str]) -> int:
    if argv[:1] == ["--light-nodes"]:
        _light_nodes_main(int(argv[1]), argv[2])
        return 0
    import httpx

    from tests._support.idp import DEFAULT_USERS, start_idp

    ap = argparse.ArgumentParser(prog="bench_broker")
    ap.add_argument("--samples", type=int, default=150, help="timed counts per configuration")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=1.0, help="per-node timeout of the dead-node broker (s)")
    ap.add_argument("--dead-samples", type=int, default=20)
    ap.add_argument("--work", type=Path, default=RESULTS / "work-broker")
    args = ap.parse_args(argv)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = _base_node(work)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    for name in ("real-1", "real-2", "real-3"):  # fresh copies: each node's guard and budget start empty
        shutil.copytree(base, run / name, symlinks=True)

    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(start_idp(run / "idp", audience=AUDIENCE, access_token_ttl=3600,
                                            users=(*DEFAULT_USERS, *USERS)))
        tokens = [idp.token(u["username"]) for u in USERS]
        steward = {"Authorization": f"Bearer {idp.token('steward')}"}
        real = [stack.enter_context(_node(run / n, idp.issuer, run / f"{n}.log")) for n in ("real-1", "real-2", "real-3")]
        for url in real:
            r = httpx.put(url + "/governance/terms/site-a", json=TERMS, headers=steward, timeout=30)
            if r.status_code != 200:
                raise SystemExit(f"setting terms failed: {r.text}")
        light = stack.enter_context(_light_nodes(17, run))
        dead_url = f"http://127.0.0.1:{_free_port()}"
        hole = stack.enter_context(_blackhole())

        def cfg(urls: list[str], timeout: float = 10.0) -> dict[str, Any]:
            return {"timeout": timeout, "nodes": [{"name": f"n{i:02d}", "url": u} for i, u in enumerate(urls)]}

        brokers = {
            "3 nodes": stack.enter_context(_broker(cfg(real), idp.issuer, run, "b3")),
            "20 nodes": stack.enter_context(_broker(cfg(real + light), idp.issuer, run, "b20")),
            "dead nodes": stack.enter_context(_broker(cfg([*real, dead_url, hole], args.timeout), idp.issuer,
                                                      run, "bdead")),
        }
        client = stack.enter_context(httpx.Client(timeout=60))
        turn = [0]

        def ask(url: str) -> tuple[float, dict[str, Any]]:
            token = tokens[turn[0] % len(tokens)]
            turn[0] += 1
            start = time.perf_counter()
            r = client.post(url + "/cohort/count", json=QUERY,
                            headers={"Authorization": f"Bearer {token}", "X-Purpose": "ai-development"})
            took = time.perf_counter() - start
            if r.status_code != 200:
                raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:500]}")
            return took, r.json()

        # correctness before timing: every node answers where it should
        for label in ("3 nodes", "20 nodes"):
            _, answer = ask(brokers[label])
            bad = [n for n in answer["nodes"] if n["status"] != "ok"]
            if bad or answer["partial"]:
                raise SystemExit(f"{label}: not every node answered: {bad}")
            if not any(isinstance(d["count"], int) for d in answer["datasets"]):
                raise SystemExit(f"{label}: the real nodes showed no count (floor 3 should let one through)")
        for _ in range(args.warmup):
            for label in ("3 nodes", "20 nodes"):
                ask(brokers[label])
        times: dict[str, list[float]] = {"3 nodes": [], "20 nodes": []}
        for _ in range(args.samples):
            for label in ("3 nodes", "20 nodes"):
                times[label].append(ask(brokers[label])[0])
        dead: list[float] = []
        statuses: set[tuple[str, ...]] = set()
        for _ in range(args.dead_samples):
            took, answer = ask(brokers["dead nodes"])
            dead.append(took)
            statuses.add(tuple(n["status"] for n in answer["nodes"]))
            if not answer["partial"]:
                raise SystemExit("dead nodes: the answer is not marked partial")

    stats = {label: {"p50_ms": percentile(v, 0.5) * 1000, "p95_ms": percentile(v, 0.95) * 1000, "n": len(v)}
             for label, v in {**times, "dead nodes": dead}.items()}
    stats["dead nodes"]["max_ms"] = max(dead) * 1000
    r50 = stats["20 nodes"]["p50_ms"] / stats["3 nodes"]["p50_ms"]
    r95 = stats["20 nodes"]["p95_ms"] / stats["3 nodes"]["p95_ms"]
    # the dead-node answer = the healthy answer with the node time replaced by the timeout
    budget_ms = args.timeout * 1000 + stats["3 nodes"]["p50_ms"]
    print(f"{'configuration':<14} {'p50 ms':>9} {'p95 ms':>9} {'n':>5}")
    for label, s in stats.items():
        print(f"{label:<14} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} {s['n']:5d}")
    print(f"\n20 / 3 nodes: p50 {r50:.2f}x, p95 {r95:.2f}x (target <= 1.5x)")
    print(f"dead nodes (timeout {args.timeout:g} s): max {stats['dead nodes']['max_ms']:.0f} ms, "
          f"{stats['dead nodes']['max_ms'] / (args.timeout * 1000):.2f}x the timeout; p50 {stats['dead nodes']['p50_ms']:.0f} ms "
          f"against timeout + 3-node p50 "
          f"= {budget_ms:.0f} ms; statuses seen {sorted(statuses)}")
    expected = ("ok", "ok", "ok", "error", "timeout")
    checks = {
        "20 nodes cost at most 1.5x 3 nodes (p50 and p95)": r50 <= 1.5 and r95 <= 1.5,
        "a dead node costs no more than the timeout (p50)": stats["dead nodes"]["p50_ms"] <= budget_ms,
        "dead nodes: statuses ok x3, error (nothing listening), timeout (black hole)": statuses == {expected},
    }
    for line, held in checks.items():
        print(f"  {'holds' if held else 'FAILS'}: {line}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "broker.json").write_text(json.dumps({
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "setup": {"real_nodes": 3, "light_nodes": 17, "samples": args.samples, "timeout_s": args.timeout,
                  "query": QUERY},
        "stats": stats, "ratio_20_over_3": {"p50": r50, "p95": r95},
        "dead_budget_ms": budget_ms, "checks": checks}, indent=1))
    return 0 if all(checks.values()) else 1


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
