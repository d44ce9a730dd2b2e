"""Run the real ServerApp and ClientApp in one process: fast federated runs for tests.

:class:`InProcessRunner` calls the ServerApp (``incisive_lab.fl.serverapp:app``) with an
:class:`InProcessGrid`, a :class:`flwr.serverapp.Grid` that delivers each message to the
ClientApp (``incisive_lab.fl.clientapp:app``) of its node on a worker thread — no Ray, no
SuperLink, no network. Messages and replies go through Flower's protobuf serialisation (what
the SuperLink stores), so nothing is shared between nodes by reference, and each node keeps
one :class:`flwr.app.Context` per run (its ``node_config`` and ``state``), as a SuperNode does.

A node can be made to drop mid-run (``drop_after``): once it has answered that many
messages it disappears from :meth:`InProcessGrid.get_node_ids` and every message to it is
answered with Flower's ``NODE_UNAVAILABLE`` error, as the SuperLink does when a SuperNode
stops sending heartbeats.

Example
-------
>>> runner = InProcessRunner({"a": node_config_a, "b": node_config_b})   # doctest: +SKIP
>>> result = runner.run({"out-dir": "out", "task-name": "mg-lesion", "token": token,
...                      "rounds": 2, "min-nodes": 2})                   # doctest: +SKIP
>>> result["status"], result["final"]["evaluate"]["accuracy"]            # doctest: +SKIP
('finished', 0.81)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["InProcessGrid", "InProcessRunner"]

NodeConfig = Mapping[str, str | int | float | bool]


def _node_id(name: str) -> int:
    """A stable positive 63-bit id per node name (Flower's node ids are random 64-bit)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1 or 1


def _copy(msg: Message) -> Message:
    return message_from_proto(message_to_proto(msg))


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApps called on threads (see the module doc).

    Parameters
    ----------
    client_app
        The ClientApp every node runs.
    nodes
        Node name → node config (``context.node_config`` of that node).
    run_id
        The Flower run id.
    run_config
        The run config (also the nodes' ``context.run_config``, as in a deployment).
    drop_after
        Node name → number of messages it answers before it drops out.
    """

    def __init__(self, client_app: Any, nodes: Mapping[str, NodeConfig], *, run_id: int = 1,
                 run_config: Mapping[str, Any] | None = None, drop_after: Mapping[str, int] | None = None) -> None:
        unknown = sorted(set(drop_after or {}) - set(nodes))
        if unknown:
            raise ValueError(f"drop_after names unknown node(s): {', '.join(unknown)}")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.ids = {_node_id(name): name for name in nodes}
        if len(self.ids) != len(nodes):
            raise ValueError("two node names map to the same node id; rename one")
        self.contexts = {nid: Context(run_id=run_id, node_id=nid, node_config=dict(nodes[name]), state=RecordDict(),
                                      run_config=dict(run_config or {})) for nid, name in self.ids.items()}
        self.alive = set(self.ids)
        self.drop_after = {_node_id(n): k for n, k in (drop_after or {}).items()}
        self.answered = {nid: 0 for nid in self.ids}
        self.delivered: list[tuple[str, str]] = []  #: (node name, message type), in delivery order
        self._lock = threading.Lock()
        self._node_locks = {nid: threading.Lock() for nid in self.ids}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(nodes)), thread_name_prefix="fl-node")
        self._pending: dict[str, Future[Message]] = {}

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ Grid
    def set_run(self, run: Run) -> None:
        """Set the run (its id is used for the messages)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """A new instruction message (Flower's deprecated helper, kept for the ABC)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The nodes connected now."""
        with self._lock:
            return sorted(self.alive)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp (on a worker thread); return the ids."""
        ids = []
        for msg in messages:
            copy = _copy(msg)
            mid = uuid.uuid4().hex
            copy.metadata.__dict__["_message_id"] = mid
            copy.metadata.__dict__["_run_id"] = self._run.run_id
            copy.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            dst = copy.metadata.dst_node_id
            if dst not in self.ids:
                raise ValueError(f"message to unknown node {dst}")
            self._pending[mid] = self._pool.submit(self._deliver, dst, copy)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies that are ready, for these message ids."""
        out = []
        for mid in list(message_ids):
            fut = self._pending.get(mid)
            if fut is not None and fut.done():
                out.append(fut.result())
                del self._pending[mid]
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push the messages and wait (up to ``timeout`` seconds) for their replies."""
        ids = list(self.push_messages(messages))
        wait_futures([self._pending[m] for m in ids], timeout=timeout)
        return list(self.pull_messages(ids))

    # ------------------------------------------------------------------ nodes
    def drop(self, name: str) -> None:
        """Make node ``name`` drop out now."""
        with self._lock:
            self.alive.discard(_node_id(name))

    def _deliver(self, nid: int, msg: Message) -> Message:
        name = self.ids[nid]
        with self._lock:
            limit = self.drop_after.get(nid)
            if limit is not None and self.answered[nid] >= limit:
                self.alive.discard(nid)
            gone = nid not in self.alive
            if not gone:
                self.answered[nid] += 1
                self.delivered.append((name, msg.metadata.message_type))
        if gone:
            reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, f"node {name} is unavailable (dropped out)"),
                            reply_to=msg)
        else:
            with self._node_locks[nid]:
                try:
                    reply = self.client_app(msg, self.contexts[nid])
                except Exception as exc:  # as the SuperNode's ClientApp runtime does
                    reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                                    reply_to=msg)
        out = _copy(reply)
        out.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return out


class InProcessRunner:
    """Run federated runs in this process with the real ServerApp and ClientApp.

    Parameters
    ----------
    nodes
        Node name → node config (the keys of :mod:`incisive_lab.fl.node`).
    client_app
        The ClientApp (default ``incisive_lab.fl.clientapp:app``; tests pass one built
        with an ``on_read`` hook).
    server_app
        The ServerApp (default ``incisive_lab.fl.serverapp:app``).
    """

    def __init__(self, nodes: Mapping[str, NodeConfig], *, client_app: Any = None, server_app: Any = None) -> None:
        if not nodes:
            raise ValueError("nodes: at least one node is needed")
        self.nodes = {name: dict(cfg) for name, cfg in nodes.items()}
        if client_app is None:
            from incisive_lab.fl.clientapp import app as client_app
        if server_app is None:
            from incisive_lab.fl.serverapp import app as server_app
        self.client_app = client_app
        self.server_app = server_app
        self.last_grid: InProcessGrid | None = None

    def run(self, run_config: Mapping[str, Any], *, run_id: int | None = None,
            drop_after: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Run one federated run; return its ``result.json`` (also on failure, then with ``status: failed``).

        Parameters
        ----------
        run_config
            The run config (:mod:`incisive_lab.fl.run_config`).
        run_id
            The Flower run id (default: a new one).
        drop_after
            Node name → messages it answers before dropping out.

        Raises
        ------
        incisive_lab.fl.serverapp.RunFailed
            When the run failed (``result.json`` is written first).
        """
        rid = run_id if run_id is not None else int(time.time() * 1000) % (2**31)
        grid = InProcessGrid(self.client_app, self.nodes, run_id=rid, run_config=run_config, drop_after=drop_after)
        self.last_grid = grid
        context = Context(run_id=rid, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                          run_config=dict(run_config))
        from flwr.supercore.task_identity import TaskIdentity

        # what Flower's ServerApp runtime sets in its process (messages take their run id from it)
        saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, rid, SUPERLINK_NODE_ID
        try:
            self.server_app(grid, context)
        finally:
            TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
            grid.close()
        out = Path(str(run_config["out-dir"])) / "result.json"
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result
