"""Fixtures of the hub's tests: the hub ledger, and sandbox spawners outside a hub.

``make_spawner`` builds a real :class:`~incisive_hub.SandboxSpawner` for a user of an
in-memory JupyterHub database (as JupyterHub's own spawner tests do), so the sandbox and the
cgroups are exercised with real ``bwrap`` processes without a running hub. Every spawner it
made is stopped (its cgroups removed) after the test.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from incisive_hub import HubLedger, SandboxSpawner


@pytest.fixture
def hub_ledger(tmp_path: Path) -> Iterator[HubLedger]:
    """The process's :class:`HubLedger`, writing to ``tmp_path/ledger``."""
    HubLedger.clear_instance()
    ledger = HubLedger.instance(directory=str(tmp_path / "ledger"), origin="test.hub/ledger")
    yield ledger
    ledger.close()
    HubLedger.clear_instance()


#: Runs first in every test program: listen on the server's port (the spawner's start()
#: waits for it), then the program's own code.
PRELUDE = """
import json, os, socket, sys, time
from urllib.parse import urlsplit
_listener = socket.socket()
_listener.bind(("127.0.0.1", urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port))
_listener.listen()
def report(**values):
    tmp = "/workspace/.result.tmp" if os.path.isdir("/workspace") else os.environ["HOME"] + "/.result.tmp"
    with open(tmp, "w") as fh:
        json.dump(values, fh)
    os.replace(tmp, tmp.replace(".result.tmp", "result.json"))
"""


@pytest.fixture
def make_spawner(tmp_path: Path, hub_ledger: HubLedger) -> Iterator[Callable[..., SandboxSpawner]]:
    """``make_spawner(name, code=None, **traits)``: a spawner for hub user ``name`` whose
    command is ``python -c PRELUDE + code`` (or the real single-user server when ``code`` is
    None), with the hub state in ``tmp_path/state``."""
    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.roles import assign_default_roles, create_role, get_default_roles
    from jupyterhub.user import User

    db = orm.new_session_factory("sqlite://")()
    for role in get_default_roles():
        create_role(db, role)
    state = tmp_path / "state"
    state.mkdir()
    (state / "gateway.json").write_text(json.dumps({"broker": "http://127.0.0.1:9/",
                                                    "nodes": {}, "token": "hub"}))
    made: list[SandboxSpawner] = []

    def make(name: str, code: str | None = None, **traits: Any) -> SandboxSpawner:
        orm_user = orm.User(name=name)
        db.add(orm_user)
        db.commit()
        assign_default_roles(db, orm_user)
        db.commit()
        user = User(orm_user, {})
        if code is not None:
            traits.setdefault("cmd", [sys.executable, "-c", PRELUDE + code])
        traits.setdefault("mem_limit", "512M")
        traits.setdefault("cpu_limit", 1.0)
        traits.setdefault("pids_limit", 64)
        spawner: SandboxSpawner = user._new_spawner(
            "", spawner_class=SandboxSpawner, hub=Hub(), hub_state=str(state),
            oauth_client_id=f"jupyterhub-user-{name}", term_timeout=5, kill_timeout=5, **traits)
        made.append(spawner)
        return spawner

    yield make
    for spawner in made:
        if spawner.proc is not None and spawner.proc.poll() is None:
            asyncio.run(spawner.stop(now=True))
        else:
            spawner._remove_limits()
    db.close()


def result(spawner: SandboxSpawner, timeout: float = 60.0) -> dict[str, Any]:
    """What the test program reported (``report(...)``), once it has."""
    import time

    path = spawner.workspace_dir / "result.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if spawner.proc is not None and spawner.proc.poll() is not None and not path.exists():
            raise AssertionError(f"the program exited with {spawner.proc.returncode} "
                                 "without a report")
        if time.monotonic() > deadline:
            raise AssertionError(f"no report within {timeout} s")
        time.sleep(0.05)
    data: dict[str, Any] = json.loads(path.read_text())
    return data
