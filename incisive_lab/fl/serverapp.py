"""The ServerApp: what the SuperLink runs for a federated run.

``incisive_lab.fl.serverapp:app`` reads its :class:`~incisive_lab.fl.run_config.RunConfig`,
builds the task's initial model, and runs Flower's ``FedAvg`` or ``FedProx``
(:mod:`flwr.serverapp.strategy`) — or, with ``secagg = true``, FedAvg through SecAgg+
(:mod:`incisive_lab.fl.secagg`) — for ``rounds`` rounds, each a training round and a federated
evaluation on the nodes' held-out patients. Every message carries the task code and its
hash, the user's token, the purpose and the hyper-parameters; each node decides for itself
(:mod:`incisive_lab.fl.clientapp`).

Nodes: ``fraction`` of the connected nodes are asked each round, never fewer than
``min-nodes``; the run waits up to ``node-wait`` seconds for ``min-nodes`` nodes to be
connected. A node that drops or refuses mid-run is left out of that round's average; when
fewer than ``min-nodes`` nodes answer a round, the run fails (``result.json`` says why).

Outputs in ``out-dir`` (each file replaced atomically; ``metrics.jsonl`` grows by whole lines):

``metrics.jsonl``
    one JSON object per line; ``phase`` is ``train`` or ``evaluate`` (``nodes``: per node
    name its metrics — ``train_loss``, ``train_accuracy``, ``loss``, ``accuracy``,
    ``num-examples``, ``train-seconds``… — or ``{"error": reason, "code": n}``;
    ``aggregated``: Flower's example-weighted average) or ``round`` (after each round:
    ``train``, ``evaluate``, ``checkpoint``, ``seconds``, ``epsilon``). Every line has
    ``run_id``, ``round`` and ``time``.
``checkpoints/round-NNNN.pt``
    the global ``state_dict`` after each round (``torch.save``).
``model.pt``
    the final global ``state_dict``.
``result.json``
    ``status`` (``finished``/``failed``), ``error``, ``run_id``, ``mode``, ``task``
    (name, version, sha256), ``strategy``, ``secagg``, ``rounds``, ``rounds_completed``,
    ``min_nodes``, ``nodes`` (answered the last round), ``final`` (``train``/``evaluate``
    aggregates), ``model``, ``model_sha256``, ``epsilon`` and ``privacy`` (DP only, else
    null), ``started_at``, ``finished_at``; for ``mode = "query"``: ``counts`` per node.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from incisive_lab._files import write_atomic
from incisive_lab.errors import IncisiveLabError
from incisive_lab.fl.run_config import RunConfig

__all__ = ["RunFailed", "app", "run_server"]

log = logging.getLogger("incisive_lab.fl.serverapp")


class RunFailed(IncisiveLabError):
    """The federated run could not complete (the message says which round and why)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state_bytes(arrays: ArrayRecord) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(arrays.to_torch_state_dict(), buf)
    return buf.getvalue()


def _plain(record: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (record or {}).items()}


class Recorder:
    """Writes ``metrics.jsonl``, the checkpoints and knows every node's name."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.out = cfg.out_dir
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        self.metrics_path = self.out / "metrics.jsonl"
        self.names: dict[int, str] = {}
        self.rounds: dict[int, dict[str, Any]] = {}
        self.round_started: dict[int, float] = {}
        self.last_nodes: list[str] = []
        self.completed = 0

    def line(self, **fields: Any) -> None:
        """Append one JSON line (one write call, flushed and fsynced)."""
        text = json.dumps({"run_id": self.cfg.run_id, "time": _now(), **fields}, sort_keys=True) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def epsilon(self, rounds: int) -> float | None:
        from incisive_lab.fl.dp import rdp_epsilon

        return rdp_epsilon(self.cfg.dp_noise, rounds, self.cfg.dp_delta) if self.cfg.dp else None

    def replies(self, server_round: int, phase: str, replies: list[Message]) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                reason = msg.error.reason or ""
                head = reason.split(":", 1)[0]  # a node's refusal starts with "node <name>:"
                if nid not in self.names and head.startswith("node ") and " " not in head[5:]:
                    self.names[nid] = head[5:]
                nodes[self.name(nid)] = {"error": reason, "code": int(msg.error.code)}
                continue
            who = msg.content.config_records.get("node")
            if who is not None and who.get("name"):
                self.names[nid] = str(who["name"])
            metrics = msg.content.metric_records.get("metrics")
            nodes[self.name(nid)] = _plain(metrics)
        return nodes

    def phase(self, server_round: int, phase: str, nodes: dict[str, Any], aggregated: Mapping[str, Any] | None) -> None:
        agg = _plain(aggregated)
        self.rounds.setdefault(server_round, {})[phase] = agg
        extra = {"epsilon": self.epsilon(server_round)} if phase == "train" and self.cfg.dp else {}
        self.line(round=server_round, phase=phase, nodes=nodes, aggregated=agg, **extra)
        if phase == "train":
            self.last_nodes = sorted(n for n, v in nodes.items() if "error" not in v)

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        rel = f"checkpoints/round-{server_round:04d}.pt"
        write_atomic(self.out / rel, _state_bytes(arrays))
        self.completed = server_round
        started = self.round_started.get(server_round)
        done = self.rounds.get(server_round, {})
        self.line(round=server_round, phase="round", train=done.get("train", {}), evaluate=done.get("evaluate", {}),
                  checkpoint=rel, seconds=round(time.monotonic() - started, 3) if started else None,
                  epsilon=self.epsilon(server_round))


def _examples(msg: Message) -> float:
    metrics = msg.content.metric_records.get("metrics")
    value = metrics.get("num-examples", 0) if metrics is not None else 0
    return float(value) if isinstance(value, int | float) else 0.0


class _Nodes:
    """Mixin over Flower's strategies: wait for ``min-nodes``, record replies, fail clearly."""

    recorder: Recorder
    node_wait: float
    min_available_nodes: int
    min_train_nodes: int
    run_config: RunConfig

    def fresh_token(self, config: ConfigRecord) -> None:
        """Put the run's current token (see :meth:`RunConfig.current_token`) in ``config``."""
        config["token"] = self.run_config.current_token().encode()

    def wait_for_nodes(self, grid: Grid, server_round: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait
        while True:
            ids = list(grid.get_node_ids())
            if len(ids) >= self.min_available_nodes:
                return ids
            if time.monotonic() >= deadline:
                raise RunFailed(f"round {server_round}: {len(ids)} node(s) connected, min-nodes "
                                f"{self.min_available_nodes} needed (waited {self.node_wait:g} s)")
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _check(self, server_round: int, phase: str, replies: list[Message], nodes: dict[str, Any]) -> list[Message]:
        valid = [m for m in replies if not m.has_error()]
        if len(valid) < self.min_train_nodes:
            why = "; ".join(f"{n}: {v['error']}" for n, v in sorted(nodes.items()) if "error" in v) or "no reply"
            raise RunFailed(f"round {server_round} ({phase}): {len(valid)} node(s) answered, min-nodes "
                            f"{self.min_train_nodes} needed ({why})")
        return valid

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.wait_for_nodes(grid, server_round)
        self.recorder.round_started[server_round] = time.monotonic()
        self.fresh_token(config)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self.wait_for_nodes(grid, server_round)
        self.fresh_token(config)
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        got = list(replies)
        nodes = self.recorder.replies(server_round, "train", got)
        valid = self._check(server_round, "train", got, nodes)
        weighed = [m for m in valid if _examples(m) > 0]
        if not weighed:
            raise RunFailed(f"round {server_round}: no node had training examples")
        arrays, metrics = super().aggregate_train(server_round, weighed)  # type: ignore[misc]
        if arrays is None:
            raise RunFailed(f"round {server_round}: the training replies could not be aggregated")
        self.recorder.phase(server_round, "train", nodes, metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        got = list(replies)
        nodes = self.recorder.replies(server_round, "evaluate", got)
        valid = self._check(server_round, "evaluate", got, nodes)
        weighed = [m for m in valid if _examples(m) > 0]  # a node without a test split has no say
        metrics: MetricRecord | None = (super().aggregate_evaluate(server_round, weighed)  # type: ignore[misc]
                                        if weighed else None)
        self.recorder.phase(server_round, "evaluate", nodes, metrics)
        return metrics


class _FedAvg(_Nodes, FedAvg):
    pass


class _FedProx(_Nodes, FedProx):
    pass


def _strategy(cfg: RunConfig, recorder: Recorder) -> FedAvg:
    common: dict[str, Any] = {"fraction_train": cfg.fraction, "fraction_evaluate": cfg.fraction,
                              "min_train_nodes": cfg.min_nodes, "min_evaluate_nodes": cfg.min_nodes,
                              "min_available_nodes": cfg.min_nodes, "weighted_by_key": "num-examples"}
    s: FedAvg = _FedProx(**common, proximal_mu=cfg.proximal_mu) if cfg.strategy == "fedprox" else _FedAvg(**common)
    s.recorder = recorder  # type: ignore[attr-defined]
    s.node_wait = cfg.node_wait  # type: ignore[attr-defined]
    s.run_config = cfg  # type: ignore[attr-defined]
    return s


def _message_config(cfg: RunConfig, code: Any) -> ConfigRecord:
    return ConfigRecord({"run-id": cfg.run_id, "purpose": cfg.purpose, "token": cfg.token.encode(),
                         "task-code": code.to_bytes(), "task-sha256": code.sha256,
                         **cfg.train_config()})


def _weighted(replies: Mapping[int, Mapping[str, Any]]) -> dict[str, float]:
    total = sum(float(m.get("num-examples", 0)) for m in replies.values())
    out: dict[str, float] = {}
    if total <= 0:
        return out
    for m in replies.values():
        w = float(m.get("num-examples", 0)) / total
        for k, v in m.items():
            if k != "num-examples" and isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0.0) + float(v) * w
    return out


def _run_secagg(grid: Grid, context: Context, cfg: RunConfig, strategy: FedAvg, recorder: Recorder,
                arrays: ArrayRecord, base: ConfigRecord) -> ArrayRecord:
    from incisive_lab.fl.secagg import secagg_train_round

    nodes: _Nodes = strategy  # type: ignore[assignment]
    for rnd in range(1, cfg.rounds + 1):
        ids = nodes.wait_for_nodes(grid, rnd)
        recorder.round_started[rnd] = time.monotonic()
        base = ConfigRecord(dict(base))
        nodes.fresh_token(base)
        chosen = random.sample(ids, max(cfg.min_nodes, int(len(ids) * cfg.fraction)))
        try:
            done = secagg_train_round(grid, context, server_round=rnd, arrays=arrays, config=dict(base),
                                      node_ids=chosen, min_nodes=cfg.min_nodes, timeout=cfg.timeout,
                                      clip=cfg.secagg_clip, max_weight=cfg.secagg_max_weight)
        except RuntimeError as exc:
            raise RunFailed(str(exc)) from None
        per_node: dict[str, Any] = {}
        for nid, metrics in done.replies.items():
            name = str(metrics.pop("node", "")) or recorder.name(nid)
            recorder.names[nid] = name
            per_node[name] = metrics
        for nid in set(chosen) - set(done.replies):
            per_node[recorder.name(nid)] = {"error": "dropped out of secure aggregation", "code": 0}
        if len(done.replies) < cfg.min_nodes:
            raise RunFailed(f"round {rnd} (train): {len(done.replies)} node(s) answered, min-nodes "
                            f"{cfg.min_nodes} needed")
        arrays = done.arrays
        recorder.phase(rnd, "train", per_node, _weighted(done.replies))
        eval_config = ConfigRecord(dict(base))
        replies = grid.send_and_receive(strategy.configure_evaluate(rnd, arrays, eval_config, grid),
                                        timeout=cfg.timeout)
        strategy.aggregate_evaluate(rnd, replies)
        recorder.checkpoint(rnd, arrays)
    return arrays


def _run_query(grid: Grid, cfg: RunConfig, strategy: FedAvg, base: ConfigRecord) -> dict[str, Any]:
    nodes: _Nodes = strategy  # type: ignore[assignment]
    ids = nodes.wait_for_nodes(grid, 0)
    msgs = [Message(RecordDict({"config": ConfigRecord(dict(base))}), dst_node_id=nid,
                    message_type=MessageType.QUERY) for nid in ids]
    out: dict[str, Any] = {}
    for reply in grid.send_and_receive(msgs, timeout=cfg.timeout):
        nid = reply.metadata.src_node_id
        if reply.has_error():
            out[f"node-{nid}"] = {"error": reply.error.reason, "code": int(reply.error.code)}
            continue
        who = reply.content.config_records["node"]
        out[str(who["name"])] = {"counts": _plain(reply.content.config_records["counts"]), "floor": who["floor"]}
    return out


def run_server(grid: Grid, context: Context) -> dict[str, Any]:
    """The ServerApp's main: run the federated run ``context.run_config`` describes.

    Returns the ``result.json`` document. Raises :class:`RunFailed` (after writing
    ``result.json`` with ``status: failed``) when the run cannot complete.
    """
    import torch

    cfg = RunConfig.from_mapping(context.run_config, run_id=context.run_id)
    recorder = Recorder(cfg)
    started = _now()
    result: dict[str, Any] = {"run_id": cfg.run_id, "flwr_run_id": context.run_id, "mode": cfg.mode,
                              "strategy": cfg.strategy, "secagg": cfg.secagg, "rounds": cfg.rounds,
                              "min_nodes": cfg.min_nodes, "started_at": started, "epsilon": None, "privacy": None}
    try:
        code = cfg.load_task()
        result["task"] = {"name": code.name, "version": code.version, "sha256": code.sha256}
        base = _message_config(cfg, code)
        strategy = _strategy(cfg, recorder)
        if cfg.mode == "query":
            result.update(status="finished", counts=_run_query(grid, cfg, strategy, base), finished_at=_now())
            write_atomic(cfg.out_dir / "result.json", json.dumps(result, indent=2, sort_keys=True).encode())
            return result
        from incisive_lab.fl.clientapp import task_config
        from incisive_lab.fl.task import load

        task = load(code)
        torch.manual_seed(cfg.seed)
        model = task.build_model(task_config(base))
        initial = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        if cfg.secagg:
            final = _run_secagg(grid, context, cfg, strategy, recorder, initial, base)
        else:
            def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                if server_round > 0:
                    recorder.checkpoint(server_round, arrays)
                return None

            outcome = strategy.start(grid, initial, num_rounds=cfg.rounds, timeout=cfg.timeout,
                                     train_config=ConfigRecord(dict(base)), evaluate_config=ConfigRecord(dict(base)),
                                     evaluate_fn=on_round)
            final = outcome.arrays
        data = _state_bytes(final)
        write_atomic(cfg.out_dir / "model.pt", data)
        last = recorder.rounds.get(recorder.completed, {})
        result.update(status="finished", rounds_completed=recorder.completed, nodes=recorder.last_nodes,
                      final={"train": last.get("train", {}), "evaluate": last.get("evaluate", {})},
                      model="model.pt", model_sha256=hashlib.sha256(data).hexdigest())
        if cfg.dp:
            eps = recorder.epsilon(recorder.completed)
            result.update(epsilon=eps, privacy={
                "mechanism": "gaussian", "where": "node (client-side mod)", "clip": cfg.dp_clip,
                "noise_multiplier": cfg.dp_noise, "delta": cfg.dp_delta, "epsilon": eps, "accountant": "rdp",
                "adjacency": "any two datasets of one node (L2 sensitivity 2 x clip)",
                "rounds": recorder.completed})
    except Exception as exc:
        result.update(status="failed", error=str(exc), rounds_completed=recorder.completed, finished_at=_now())
        write_atomic(cfg.out_dir / "result.json", json.dumps(result, indent=2, sort_keys=True).encode())
        log.error("federated run %s failed: %s", cfg.run_id, exc)
        if isinstance(exc, RunFailed):
            raise
        raise RunFailed(f"run {cfg.run_id} failed: {exc}") from exc
    result["finished_at"] = _now()
    write_atomic(cfg.out_dir / "result.json", json.dumps(result, indent=2, sort_keys=True).encode())
    return result


#: The Flower component ``incisive_lab.fl.serverapp:app``.
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: :func:`run_server`."""
    run_server(grid, context)
