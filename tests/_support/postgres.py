"""Throw-away PostgreSQL clusters for tests.

A test that needs PostgreSQL starts a private cluster with :func:`start_postgres` (or the
:func:`postgres_cluster` context manager), asks it for a fresh database with
:meth:`PostgresCluster.create_database`, and connects with the URL it gets back. The
cluster lives in its own temporary directory, listens **only on a Unix socket** in that
directory (no TCP port, so parallel runs cannot collide), trusts local connections as the
``postgres`` superuser, and is removed on :meth:`PostgresCluster.stop` (or at interpreter
exit if a test forgot).

The server binaries come from ``$INCISIVE_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/<version>/bin`` (Debian), else ``PATH``. When the tests run as root
(containers, CI), ``initdb`` and ``postgres`` refuse to run as root, so they are started as
the ``postgres`` system user through ``runuser``; the temporary directory is handed to that
user.

A missing PostgreSQL is an error (:class:`PostgresUnavailable`), never a skip: ``make test``
installs it (Debian package ``postgresql``), and a back-end that is not tested is not
supported.

Example
-------
>>> with postgres_cluster() as pg:                          # doctest: +SKIP
...     url = pg.create_database()
...     with psycopg.connect(url) as conn: ...
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_pg_bin", "postgres_cluster",
           "start_postgres"]

#: Settings for a throw-away cluster. ``fsync=off`` is safe here: the cluster is deleted
#: after the run and tests kill clients, not the server. Pass ``durable=True`` to keep
#: PostgreSQL's defaults.
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL server binaries are missing or the cluster did not start."""


def find_pg_bin() -> Path | None:
    """Return the directory holding ``initdb``/``pg_ctl``, or ``None`` if there is none."""
    env = os.environ.get("INCISIVE_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "pg_ctl").exists() else None
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                        else 0, reverse=True)
    for cand in candidates:
        if (Path(cand) / "pg_ctl").exists() and (Path(cand) / "initdb").exists():
            return Path(cand)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@dataclass
class PostgresCluster:
    """A running private PostgreSQL cluster (see the module docstring)."""

    root: Path
    bin_dir: Path
    run_as: str | None
    superuser: str = "postgres"
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket."""
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        """The server log (read it when a test fails)."""
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        """Return a libpq URL for ``dbname`` on this cluster's socket."""
        return f"postgresql://{self.superuser}@/{dbname}?host={self.socket_dir}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a random name unless given) and return its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        if not name.replace("_", "").isalnum():
            raise ValueError(f"unsafe database name {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`create_database` (connections are terminated)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (immediately) and delete its directory. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            _run(self, [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m",
                        "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(cluster: PostgresCluster, cmd: list[str], *, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    if cluster.run_as:
        cmd = ["runuser", "-u", cluster.run_as, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        log = cluster.log_file.read_text(errors="replace") if cluster.log_file.exists() else ""
        raise PostgresUnavailable(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}")
    return proc


def start_postgres(*, durable: bool = False, settings: Mapping[str, str] | None = None,
                   base_dir: str | os.PathLike[str] | None = None) -> PostgresCluster:
    """Initialise and start a private cluster; the caller must :meth:`~PostgresCluster.stop` it.

    Parameters
    ----------
    durable
        Keep PostgreSQL's durability defaults (``fsync=on``); the default turns fsync off
        because the cluster is thrown away.
    settings
        Extra ``postgresql.conf`` settings (name -> value).
    base_dir
        Where to create the temporary directory (default: the system temp dir). Keep it
        short: Unix socket paths are limited to ~107 characters.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (install the Debian package 'postgresql' "
            "or set INCISIVE_PG_BIN to the directory holding pg_ctl)")
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="incisive-pg-", dir=base_dir))
    cluster = PostgresCluster(root=root, bin_dir=bin_dir, run_as=run_as)
    try:
        cluster.socket_dir.mkdir()
        if run_as:
            import pwd

            pw = pwd.getpwnam(run_as)
            for path in (root, cluster.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        _run(cluster, [str(bin_dir / "initdb"), "-D", str(cluster.data_dir), "-U",
                       cluster.superuser, "--auth=trust", "--encoding=UTF8", "--locale=C",
                       "--no-instructions"])
        conf = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{cluster.socket_dir}'",
            "max_connections": "300",
            "shared_buffers": "64MB",
            **({} if durable else FAST_SETTINGS),
            **(dict(settings) if settings else {}),
        }
        options = " ".join(f"-c {k}={v}" for k, v in conf.items())
        _run(cluster, [str(bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "-l",
                       str(cluster.log_file), "-o", options, "-w", "-t", "60", "start"])
    except BaseException:
        cluster.stop()
        raise
    atexit.register(cluster.stop)
    return cluster


@contextlib.contextmanager
def postgres_cluster(**kwargs: object) -> Iterator[PostgresCluster]:
    """Context manager around :func:`start_postgres` (same keyword arguments)."""
    cluster = start_postgres(**kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()
