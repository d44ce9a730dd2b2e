"""The ClientApp: what each node's SuperNode runs for a federated run.

``incisive_lab.fl.clientapp:app`` answers three message types, each authorised from scratch
by :class:`incisive_lab.fl.node.NodeSide` (token, task approval, TRAIN scope) before any task
code is loaded or any data read:

``train``
    loads the global model, trains it on the node's cohort with the task's ``train``
    (FedProx's proximal term when ``proximal-mu`` > 0) and replies with the new weights.
    Differential privacy (:func:`incisive_lab.fl.dp.dp_mod`) and SecAgg+
    (:func:`incisive_lab.fl.secagg.secagg_gate`) are Flower mods around this handler.
``evaluate``
    evaluates the global model on the node's held-out patients.
``query``
    answers the task's label counts on the cohort, each suppressed below the strictest
    floor of the datasets involved (shown as ``"<floor"``).

Messages
--------
Instruction content (Flower ``RecordDict``):

* ``"arrays"`` — :class:`flwr.app.ArrayRecord`, the global model's ``state_dict`` (train,
  evaluate);
* ``"config"`` — :class:`flwr.app.ConfigRecord` with ``run-id``, ``purpose``,
  ``token`` (bytes: the user's access token; bytes so Flower's logs mask it),
  ``task-code`` (bytes: ``TaskCode.to_bytes()``), ``task-sha256``, ``server-round``,
  ``rounds``, ``epochs``, ``lr``, ``batch-size``, ``proximal-mu``, ``seed``,
  ``task-config`` (JSON text), ``dp-clip``, ``dp-noise``, ``dp-delta``.

Replies: ``"arrays"`` (train), ``"metrics"`` (:class:`flwr.app.MetricRecord`: the task's
metrics, ``num-examples`` — FedAvg's weight — and ``dp-epsilon`` under DP), ``"node"``
(ConfigRecord: ``name``); a query's reply has ``"counts"`` (ConfigRecord: label → count or
``"<floor"``) and ``"node"`` (``name``, ``floor``). A refusal is an error reply with code
:data:`ERROR_REFUSED` and a reason that starts with ``node <name>:``; it is in the node's
ledger.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from incisive_lab.fl.dp import dp_mod
from incisive_lab.fl.node import Authorization, NodeSide, Refused
from incisive_lab.fl.run_config import check_task_config
from incisive_lab.fl.secagg import secagg_gate

__all__ = ["ERROR_FAILED", "ERROR_REFUSED", "ReadHook", "app", "build_client_app", "task_config"]

log = logging.getLogger("incisive_lab.fl.clientapp")

#: Error code of a refusal by the node (token, task approval, scope, task hash).
ERROR_REFUSED = 403
#: Error code of a failure of the task code or of the node after authorisation.
ERROR_FAILED = 500
#: ``hook(node_name, dataset, patient)``, called for every read of a patient's data (tests).
ReadHook = Callable[[str, str, str], None]

_STATE = "incisive.fl"


def _config(msg: Message) -> ConfigRecord:
    if "config" not in msg.content.config_records:
        raise Refused("bad-message", "the message has no 'config' record")
    return msg.content.config_records["config"]


def cfg_number(cfg: Mapping[str, Any], key: str, default: float) -> float:
    """A number from a message's config (``default`` when absent); anything else is refused."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused("bad-message", f"config {key!r} must be a number (got {type(value).__name__})")
    return float(value)


def cfg_int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    """An integer from a message's config (``default`` when absent)."""
    value = cfg_number(cfg, key, default)
    if not value.is_integer():
        raise Refused("bad-message", f"config {key!r} must be an integer (got {value})")
    return int(value)


class _BadTaskConfig(Refused):
    def __init__(self, message: str) -> None:
        super().__init__("bad-message", message)


def task_config(cfg: ConfigRecord) -> dict[str, Any]:
    """The settings a task's ``build_model``/``load_data``/``train`` get from a message's config."""
    try:
        extra = json.loads(str(cfg.get("task-config", "{}")))
    except ValueError:
        raise Refused("bad-message", "config 'task-config' is not JSON") from None
    if not isinstance(extra, dict):
        raise Refused("bad-message", "config 'task-config' is not a JSON object")
    check_task_config(extra, where="config 'task-config'", error=_BadTaskConfig)
    rnd = cfg_int(cfg, "server-round", 0)
    out = {**extra, "proximal_mu": cfg_number(cfg, "proximal-mu", 0.0),
           "seed": cfg_int(cfg, "seed", 0) + rnd, "round": rnd}
    # 0 (or absent): the task's own default (its DEFAULTS, else the trainer's)
    for key, name, value in (("epochs", "epochs", cfg_int(cfg, "epochs", 0)),
                             ("lr", "lr", cfg_number(cfg, "lr", 0.0)),
                             ("batch-size", "batch_size", cfg_int(cfg, "batch-size", 0))):
        if value < 0:
            raise Refused("bad-message", f"config {key!r} must not be negative (got {value})")
        if value > 0:
            out[name] = value
    return out


def _privacy(cfg: ConfigRecord) -> str | None:
    noise = cfg_number(cfg, "dp-noise", 0.0)
    if noise <= 0:
        return None
    return (f"local DP: clip {cfg_number(cfg, 'dp-clip', 0.0)}, noise multiplier {noise}, "
            f"delta {cfg_number(cfg, 'dp-delta', 1e-5)}")


def _load_state(model: Any, arrays: ArrayRecord) -> None:
    state = arrays.to_torch_state_dict()
    model.load_state_dict(state, strict=True)


def _metrics(values: Mapping[str, Any]) -> MetricRecord:
    out: dict[str, int | float | list[int] | list[float]] = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out["num-examples" if k == "num_examples" else k] = v
    if "num-examples" not in out:
        raise ValueError("the task's metrics lack num_examples")
    out["num-examples"] = int(out["num-examples"])  # type: ignore[arg-type]
    return MetricRecord(out)


class _Handler:
    """One message's work at one node (see the module doc)."""

    def __init__(self, on_read: ReadHook | None) -> None:
        self.on_read = on_read

    def __call__(self, msg: Message, context: Context, kind: str) -> Message:
        try:
            node = NodeSide.open(context.node_config)
        except Exception as exc:  # a misconfigured node: nothing was read
            log.error("node configuration refused: %s", exc)
            return Message(Error(ERROR_REFUSED, f"node misconfigured: {exc}"), reply_to=msg)
        try:
            return self._handle(node, msg, context, kind)
        except Refused as exc:
            return Message(Error(ERROR_REFUSED, str(exc)), reply_to=msg)
        finally:
            node.close()

    def _handle(self, node: NodeSide, msg: Message, context: Context, kind: str) -> Message:
        cfg = _config(msg)
        run_id = str(cfg.get("run-id", "") or f"flwr-{context.run_id}")
        purpose = str(cfg.get("purpose", ""))
        token_bytes = cfg.get("token")
        token = token_bytes.decode("utf-8", "replace") if isinstance(token_bytes, bytes) else str(token_bytes or "")
        sha = str(cfg.get("task-sha256", ""))
        code_bytes = cfg.get("task-code")
        if not isinstance(code_bytes, bytes):
            raise node.refuse("bad-message", "the message carries no task code", run_id=run_id, purpose=purpose,
                              task_sha256=sha)
        auth = node.authorize(token, purpose, sha, run_id)
        code = node.task_code(auth, code_bytes)
        try:
            return self._run_task(node, auth, code, msg, context, cfg, kind)
        except Refused:
            raise
        except Exception as exc:
            from incisive_lab.ledger import Outcome

            log.exception("task %s failed at node %s", auth.task_sha256, node.name)
            reason = f"task-error: {type(exc).__name__}"
            node._event(actor=auth.actor, action="fail", run_id=run_id, purpose=auth.purpose,
                        outcome=Outcome.deny(reason), task_sha256=auth.task_sha256)
            return Message(Error(ERROR_FAILED, f"node {node.name}: the task failed: {type(exc).__name__}: {exc}"),
                           reply_to=msg)

    def _run_task(self, node: NodeSide, auth: Authorization, code: Any, msg: Message, context: Context,
                  cfg: ConfigRecord, kind: str) -> Message:
        from incisive_lab.fl.task import load

        hook = self.on_read
        name = node.name
        on_read = (lambda dataset, patient: hook(name, dataset, patient)) if hook is not None else None
        task = load(code)  # only now: the code is approved and is the code approved
        reader = node.reader(auth, on_read=on_read,
                             datasets=[d for d in str(cfg.get("datasets", "") or "").split(",") if d])
        tconf = task_config(cfg)
        loading = time.perf_counter()
        data = task.load_data(reader, tconf)
        load_seconds = time.perf_counter() - loading
        datasets = sorted(data.datasets)
        if not data.patients:
            raise node.refuse("empty-cohort", "the task found no usable data in the cohort", run_id=auth.run_id,
                              purpose=auth.purpose, actor=auth.actor, task_sha256=auth.task_sha256)
        rnd = cfg_int(cfg, "server-round", 0)
        rounds = cfg_int(cfg, "rounds", 0) or None
        who = ConfigRecord({"name": name})
        if kind == "query":
            return self._query(node, auth, task, data, datasets, msg)
        arrays = msg.content.array_records.get("arrays")
        if arrays is None:
            raise Refused("bad-message", f"node {name}: the {kind} message carries no model ('arrays')")
        model = task.build_model(tconf)
        _load_state(model, arrays)
        if kind == "evaluate":
            began = time.perf_counter()
            metrics = {**task.evaluate(model, data), "evaluate-seconds": time.perf_counter() - began,
                       "load-seconds": load_seconds}
            node.participate(auth, "round", round=rnd, rounds=rounds, datasets=datasets,
                             cohort_size=len(data.patients), reason="evaluate")
            return Message(RecordDict({"metrics": _metrics(metrics), "node": who}), reply_to=msg)
        state = context.state.config_records.get(_STATE)
        privacy = _privacy(cfg)
        if state is None or not state.get("started"):
            node.participate(auth, "start", round=rnd, rounds=rounds, datasets=datasets,
                             cohort_size=len(data.patients), privacy=privacy)
            context.state.config_records[_STATE] = ConfigRecord({"started": True})
        global_state = None
        if tconf["proximal_mu"] > 0:
            global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        began = time.perf_counter()
        metrics = {**task.train(model, data, tconf, global_state=global_state),
                   "train-seconds": time.perf_counter() - began, "load-seconds": load_seconds}
        node.participate(auth, "round", round=rnd, rounds=rounds, datasets=datasets,
                         cohort_size=len(data.patients), privacy=privacy, reason="train")
        if rounds is not None and rnd >= rounds:
            node.participate(auth, "finish", round=rnd, rounds=rounds, datasets=datasets,
                             cohort_size=len(data.patients), privacy=privacy)
        state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return Message(RecordDict({"arrays": ArrayRecord(state_dict), "metrics": _metrics(metrics),
                                   "node": who}), reply_to=msg)

    def _query(self, node: NodeSide, auth: Authorization, task: Any, data: Any, datasets: list[str],
               msg: Message) -> Message:
        import hashlib

        from incisive_lab.cohort.disclosure import disclose
        from incisive_lab.ledger import Event, Outcome

        floor = node.floor(datasets)
        counts = task.label_counts(data)
        shown: dict[str, int | str] = {}
        for label, n in sorted(counts.items()):
            shown[str(label)] = disclose(int(n), floor=floor).to_json()
        suppressed = any(isinstance(v, str) for v in shown.values())
        node.ledger.append(Event(
            kind="query", actor=auth.actor, action="count", resource=f"fl-run:{auth.run_id}", purpose=auth.purpose,
            outcome=Outcome.allow("grant"), details={
                "datasets": datasets, "nodes": [node.name], "floor": floor, "suppressed": suppressed,
                "results": sum(1 for v in shown.values() if not isinstance(v, str)),
                "query_sha256": hashlib.sha256(f"label-counts:{auth.task_sha256}".encode()).hexdigest()}))
        return Message(RecordDict({"counts": ConfigRecord(shown),  # type: ignore[arg-type]
                                   "node": ConfigRecord({"name": node.name, "floor": floor})}), reply_to=msg)


def build_client_app(*, on_read: ReadHook | None = None) -> ClientApp:
    """A ClientApp (the deployed one is :data:`app`); ``on_read`` observes every patient read (tests)."""
    client = ClientApp()
    handler = _Handler(on_read)

    @client.train(mods=[secagg_gate, dp_mod])
    def train(msg: Message, context: Context) -> Message:
        return handler(msg, context, "train")

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handler(msg, context, "evaluate")

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        return handler(msg, context, "query")

    return client


#: The Flower component ``incisive_lab.fl.clientapp:app``.
app = build_client_app()
