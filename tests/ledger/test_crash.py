"""kill -9 during concurrent appends from several processes loses no acknowledged entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .helpers import Site, make_event

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 4
THREADS = 2
ACKS_BEFORE_KILL = 40  # per process


def _run_and_kill(site: Site) -> list[tuple[int, str]]:
    """Start the appenders, let each acknowledge some entries, SIGKILL them all."""
    key_dir = str(site.key_dir) if site.key_dir else "-"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ledger.appender", site.location,
                               key_dir, str(w), str(THREADS)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(PROCESSES)]
    acks: list[list[tuple[int, str]]] = [[] for _ in procs]

    def read(k: int) -> None:
        stdout = procs[k].stdout
        assert stdout is not None
        for line in stdout:
            if line.count(" ") == 1 and line.endswith("\n"):  # a complete line only
                idx, leaf = line.split()
                acks[k].append((int(idx), leaf))

    readers = [threading.Thread(target=read, args=(k,), daemon=True) for k in range(len(procs))]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 120  # a safety net, not an assertion on speed
        while min(len(a) for a in acks) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs
                                                      if p.poll() is not None and p.stderr]
    finally:
        for p in procs:  # no goodbye: SIGKILL while they are appending
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()
        for r in readers:
            r.join(timeout=30)
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    acknowledged = [a for per in acks for a in per]
    assert len(acknowledged) >= PROCESSES * ACKS_BEFORE_KILL
    return acknowledged


def test_kill_9_during_concurrent_appends(site: Site) -> None:
    with site.open(origin="hospital-a.example/ledger") as ledger:
        ledger.append(make_event(0))  # create it (and the key) before the children start
    acknowledged: list[tuple[int, str]] = []
    for _ in range(2):  # kill, recover, kill again
        acknowledged += _run_and_kill(site)
        with site.open() as ledger:
            result = ledger.verify()
            assert result.ok, result.summary()
            assert ledger.size > max(idx for idx, _ in acknowledged)
            stored = {e.index: e.leaf_hash.hex() for e in ledger.entries()}
            missing = [(idx, leaf) for idx, leaf in acknowledged if stored.get(idx) != leaf]
            assert missing == []
            assert len({idx for idx, _ in acknowledged}) == len(acknowledged)
    with site.open() as ledger:
        ledger.append(make_event(1))  # and it keeps working
        assert ledger.verify().ok
