"""Child process for the crash test: append forever, print each acknowledged entry.

``python -m tests.ledger.appender LOCATION KEY_DIR|- WORKER THREADS``. Each line on stdout
(``<index> <leaf hash hex>``) is written only after ``append`` returned, i.e. after the
entry is durable; the parent kills this process with SIGKILL at an arbitrary moment.
"""

from __future__ import annotations

import sys
import threading

from incisive_lab.ledger import Ledger

from .helpers import make_event


def main(argv: list[str]) -> int:
    location, key_dir, worker, threads = argv[0], argv[1], int(argv[2]), int(argv[3])
    ledger = Ledger.open(location, key_dir=None if key_dir == "-" else key_dir)
    out = threading.Lock()

    def run(t: int) -> None:
        seq = 0
        while True:
            seq += 1
            n = (worker * 100 + t) * 1_000_000 + seq
            if seq % 5 == 0:
                refs = ledger.append_many([make_event(n), make_event(n + 500_000)])
            else:
                refs = [ledger.append(make_event(n))]
            with out:
                for ref in refs:
                    sys.stdout.write(f"{ref.index} {ref.leaf_hash.hex()}\n")
                sys.stdout.flush()

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
