"""Shared test helpers: a ledger "site" on either back-end, and event factories."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incisive_lab.ledger import Event, Ledger, Outcome

BACKENDS = ("sqlite", "postgres")


def make_event(i: int = 0, **overrides: Any) -> Event:
    """A valid access event that differs with ``i`` (actor, resource, time, details)."""
    fields: dict[str, Any] = {
        "kind": "access",
        "actor": f"user:researcher{i % 5}@idp.example",
        "action": ("read", "view", "retrieve", "stream")[i % 4],
        "resource": f"dataset:ds{i % 3}/series:1.2.826.0.1.3680043.8.498.{i}",
        "purpose": "research:project-7",
        "outcome": Outcome.allow("grant g-12") if i % 7 else Outcome.deny("no grant"),
        "details": {"instances": i % 50, "bytes": 1024 * i, "patient": f"pseudo-{i % 11}"},
        "time": f"2025-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
    }
    fields.update(overrides)
    return Event(**fields)


@dataclass
class Site:
    """Where one ledger lives: a node directory (SQLite) or a database URL plus key dir."""

    backend: str
    location: str
    key_dir: Path | None
    root: Path
    _triggers_off: bool = field(default=False, repr=False)

    def open(self, **kwargs: Any) -> Ledger:
        """Open the ledger at this site."""
        if self.key_dir is not None and "key_dir" not in kwargs:
            kwargs["key_dir"] = self.key_dir
        return Ledger.open(self.location, **kwargs)

    @property
    def db_path(self) -> Path:
        """The SQLite file (SQLite sites only)."""
        return Path(self.location) / "ledger" / "ledger.sqlite"

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run raw SQL with the append-only triggers out of the way (to simulate tampering).

        Write statements with ``?`` placeholders; they work on both back-ends.
        """
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.db_path, isolation_level=None)
            try:
                if not self._triggers_off:
                    names = [r[0] for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'trigger'")]
                    for name in names:
                        conn.execute(f"DROP TRIGGER {name}")
                    self._triggers_off = True
                cur = conn.execute(statement, tuple(params))
                return cur.fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            cur = conn.execute(statement.replace("?", "%s"), tuple(params))
            return cur.fetchall() if cur.description else []
