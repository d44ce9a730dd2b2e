"""Secure aggregation (SecAgg+) of the training round, with FedAvg's weighted average.

flwr 1.41 ships SecAgg+ only on its legacy path: the server side is
:class:`flwr.server.workflow.SecAggPlusWorkflow` (it needs a
:class:`flwr.server.LegacyContext` holding a legacy strategy and client manager), the node
side is :func:`flwr.client.mod.secaggplus_mod` (it expects and answers the legacy
``fitins.*``/``fitres.*`` records). This module bridges both to this project's Message-API
app, so the same ClientApp handler, the same node checks and the same DP mod run:

* :func:`secagg_gate` (a ClientApp mod): a train message carrying SecAgg+ stage records goes
  through ``secaggplus_mod``; at its "collect masked vectors" stage the legacy instruction
  is turned into this app's ``arrays``/``config`` message, handled as usual (authorisation,
  task, DP), and the reply turned back into a legacy ``FitRes`` for masking. Any other
  message passes through untouched.
* :func:`secagg_train_round` (used by the ServerApp when ``secagg = true``): one training
  round through ``SecAggPlusWorkflow`` with flwr's legacy ``FedAvg``; the server only ever
  sees the masked sum, unmasked into the weighted average.

What SecAgg+ costs and gives here: four message exchanges per round instead of one (setup,
key sharing, masked vectors, unmasking); the server learns the weighted average and each
node's example count and training metrics (sent in the clear, as in flwr), never a single
node's weights. Parameters are quantised: ``weight x parameter`` (weight = examples /
``secagg-max-weight``) must lie within ``[-secagg-clip, secagg-clip]`` and is rounded to
``2 x clip / 2**22``; the aggregate matches plain FedAvg to about 1e-4 relative.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SecAggRound", "secagg_gate", "secagg_train_round"]

#: Config key carrying the model's array names (legacy parameters are an unnamed list).
ARRAY_KEYS = "array-keys"


def _to_app_message(msg: Any) -> Any:
    """The legacy ``fitins`` instruction as this app's ``arrays``/``config`` message."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
    from flwr.app.message.message import make_message
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

    legacy_params = msg.content.array_records["fitins.parameters"]
    config = dict(msg.content.config_records["fitins.config"])
    keys = json.loads(str(config.pop(ARRAY_KEYS, "[]")))
    arrays = parameters_to_ndarrays(arrayrecord_to_parameters(legacy_params, keep_input=True))
    if len(keys) != len(arrays):
        raise ValueError("secagg: the instruction's array names do not match its arrays")
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(a)) for k, a in zip(keys, arrays, strict=True)}),
                          "config": ConfigRecord(config)})
    return make_message(metadata=msg.metadata, content=content), keys


def _to_legacy_reply(reply: Any, keys: list[str]) -> Any:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    arrays = reply.content.array_records["arrays"]
    metrics = reply.content.metric_records["metrics"]
    node = reply.content.config_records.get("node")
    values: dict[str, Any] = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    if node is not None:
        values["node"] = str(node.get("name", ""))
    fitres = FitRes(status=Status(Code.OK, "ok"),
                    parameters=ndarrays_to_parameters([arrays[k].numpy() for k in keys]),
                    num_examples=int(metrics["num-examples"]), metrics=values)
    return fitres_to_recorddict(fitres, keep_input=True)


def secagg_gate(msg: Any, ctx: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """ClientApp mod: run SecAgg+ (flwr's ``secaggplus_mod``) for train messages that carry its records."""
    from flwr.app import Message, MessageType
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN \
            or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctx)

    def handle(legacy: Any, context: Any) -> Any:
        app_msg, keys = _to_app_message(legacy)
        reply = call_next(app_msg, context)
        if reply.has_error():
            # secaggplus_mod reads the reply's content: raise so the node answers with an error
            raise RuntimeError(reply.error.reason)
        return Message(_to_legacy_reply(reply, keys), reply_to=legacy)

    return secaggplus_mod(msg, ctx, handle)


@dataclass
class SecAggRound:
    """What one SecAgg+ training round gave: the new model and what each node reported."""

    arrays: Any
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def secagg_train_round(grid: Any, context: Any, *, server_round: int, arrays: Any, config: dict[str, Any],
                       node_ids: list[int], min_nodes: int, timeout: float, clip: float,
                       max_weight: float) -> SecAggRound:
    """One training round through flwr's ``SecAggPlusWorkflow`` (FedAvg weighting).

    Parameters
    ----------
    grid, context
        The ServerApp's grid and context.
    server_round
        The round number.
    arrays
        The global model (``ArrayRecord``).
    config
        The train config every node gets (this app's keys).
    node_ids
        The nodes to ask.
    min_nodes
        Replies needed (and the reconstruction threshold's floor).
    timeout
        Seconds per exchange.
    clip, max_weight
        SecAgg+ quantisation range and largest node weight.

    Raises
    ------
    RuntimeError
        When the protocol halted (too few nodes answered a stage).
    """
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import (
        arrayrecord_to_parameters,
        parameters_to_arrayrecord,
    )
    from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow

    keys = list(arrays.keys())
    dtypes = {k: arrays[k].numpy().dtype for k in keys}
    captured: dict[str, Any] = {}

    class _Capturing(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            captured["results"] = [(proxy.node_id, dict(res.metrics), res.num_examples) for proxy, res in results]
            captured["failures"] = [str(f) for f in failures]
            return super().aggregate_fit(server_round, results, failures)

    fit_config = {**config, ARRAY_KEYS: json.dumps(keys), "server-round": server_round}
    n = len(node_ids)
    strategy = _Capturing(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_evaluate_clients=0,
                          min_available_clients=n, on_fit_config_fn=lambda _r: dict(fit_config))
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(node_id=nid, grid=grid, run_id=grid.run.run_id))
    legacy = LegacyContext(Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                                   state=RecordDict(), run_config=context.run_config),
                           config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
    params = ndarrays_to_parameters([arrays[k].numpy() for k in keys])
    legacy.state.array_records["parameters"] = parameters_to_arrayrecord(params, keep_input=True)
    legacy.state.config_records["config"] = ConfigRecord({"current_round": server_round})
    threshold = max(2, min_nodes) if n > 2 else 2
    workflow = SecAggPlusWorkflow(num_shares=n if n > 2 else 1.0, reconstruction_threshold=min(threshold, n - 1)
                                  if n > 2 else 1.0, max_weight=max_weight, clipping_range=clip, timeout=timeout)
    workflow(grid, legacy)
    if "results" not in captured:
        raise RuntimeError(f"round {server_round}: secure aggregation halted (too few nodes completed its "
                           f"stages; {min_nodes} needed)")
    out = parameters_to_ndarrays(arrayrecord_to_parameters(legacy.state.array_records["parameters"],
                                                           keep_input=True))
    new = ArrayRecord({k: Array(np.asarray(a).astype(dtypes[k], copy=False) if np.issubdtype(dtypes[k], np.floating)
                                else np.rint(np.asarray(a)).astype(dtypes[k]))
                       for k, a in zip(keys, out, strict=True)})
    replies = {nid: {**metrics, "num-examples": num} for nid, metrics, num in captured["results"]}
    return SecAggRound(arrays=new, replies=replies, failures=captured.get("failures", []))
