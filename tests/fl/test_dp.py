"""Differential privacy as a Flower mod: clipping and noise change the updates; epsilon is reported."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message  # noqa: E402

from incisive_lab.fl.dp import dp_mod, rdp_epsilon  # noqa: E402
from tests.fl._app_env import AppEnv  # noqa: E402

torch.set_num_threads(1)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    eps = [rdp_epsilon(1.0, r, 1e-5) for r in range(0, 6)]
    assert eps[0] == 0.0 and all(a < b for a, b in itertools.pairwise(eps))
    assert rdp_epsilon(4.0, 3, 1e-5) < rdp_epsilon(1.0, 3, 1e-5)
    assert rdp_epsilon(1.0, 3, 1e-3) < rdp_epsilon(1.0, 3, 1e-6)
    # one round at sigma 1 with sensitivity 2: RDP(a) = 2a; the conversion's minimum, checked by hand
    a = np.linspace(1.01, 100, 200000)
    by_hand = float(np.min(2 * a + np.log((a - 1) / a) - (math.log(1e-5) + np.log(a)) / (a - 1)))
    assert rdp_epsilon(1.0, 1, 1e-5) == pytest.approx(by_hand, rel=2e-2)
    for bad in ({"noise_multiplier": 0.0}, {"delta": 1.0}, {"rounds": -1}):
        kwargs: dict[str, Any] = {"noise_multiplier": 1.0, "rounds": 1, "delta": 1e-5, **bad}
        with pytest.raises(ValueError):
            rdp_epsilon(**kwargs)


def _train_message(arrays: dict[str, Any], **config: Any) -> Message:
    meta = Metadata(run_id=1, message_id="m", src_node_id=1, dst_node_id=2, reply_to_message_id="", group_id="",
                    created_at=time.time(), ttl=60.0, message_type="train")
    return make_message(meta, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                          "config": ConfigRecord(config)}))


def _trainer(step: float) -> Any:
    """A stand-in for the ClientApp: moves every float array by ``step``, bumps the int counter."""
    def call_next(msg: Message, ctx: Context) -> Message:
        arrays = msg.content.array_records["arrays"]
        out = {k: Array(np.asarray(arrays[k].numpy() + (step if arrays[k].numpy().dtype.kind == "f" else 7)))
               for k in arrays}
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord({"num-examples": 4})}),
                       reply_to=msg)
    return call_next


def _ctx() -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})


GLOBAL: dict[str, Any] = {"w": np.zeros((10, 10), dtype=np.float32), "b": np.zeros(10, dtype=np.float32),
          "n": np.array(3, dtype=np.int64)}


def test_without_dp_the_mod_changes_nothing() -> None:
    reply = dp_mod(_train_message(GLOBAL), _ctx(), _trainer(1.0))
    assert np.all(reply.content.array_records["arrays"]["w"].numpy() == 1.0)
    assert "dp-epsilon" not in reply.content.metric_records["metrics"]


def test_the_mod_clips_and_noises_the_update() -> None:
    ctx = _ctx()
    plain = _trainer(1.0)(_train_message(GLOBAL), ctx).content.array_records["arrays"]
    msg = _train_message(GLOBAL, **{"dp-clip": 1.0, "dp-noise": 0.1, "dp-delta": 1e-5})
    reply = dp_mod(msg, ctx, _trainer(1.0))
    arrays = reply.content.array_records["arrays"]
    update = np.concatenate([arrays["w"].numpy().ravel(), arrays["b"].numpy().ravel()])
    assert not np.allclose(arrays["w"].numpy(), plain["w"].numpy())  # the update changed
    # the raw update has norm sqrt(110) ~ 10.5; clipped to 1, plus noise of std 0.1 on 110 coordinates
    assert 0.5 < np.linalg.norm(update) < 2.0
    assert int(arrays["n"].numpy()) == 3  # integer buffers are sent back as the global model had them
    # the noise is fresh: the same update twice does not give the same reply
    again = dp_mod(_train_message(GLOBAL, **{"dp-clip": 1.0, "dp-noise": 0.1, "dp-delta": 1e-5}), ctx,
                   _trainer(1.0)).content.array_records["arrays"]
    assert not np.array_equal(again["w"].numpy(), arrays["w"].numpy())
    eps = [reply.content.metric_records["metrics"]["dp-epsilon"],
           dp_mod(_train_message(GLOBAL, **{"dp-clip": 1.0, "dp-noise": 0.1, "dp-delta": 1e-5}), ctx,
                  _trainer(1.0)).content.metric_records["metrics"]["dp-epsilon"]]
    assert eps[0] == pytest.approx(rdp_epsilon(0.1, 1, 1e-5))
    assert eps[1] == pytest.approx(rdp_epsilon(0.1, 3, 1e-5))  # this node's third release


def test_a_small_update_is_not_scaled_up() -> None:
    msg = _train_message(GLOBAL, **{"dp-clip": 100.0, "dp-noise": 1e-9})
    arrays = dp_mod(msg, _ctx(), _trainer(0.01)).content.array_records["arrays"]
    assert np.allclose(arrays["w"].numpy(), 0.01, atol=1e-5)


def test_bad_dp_settings_are_an_error_reply() -> None:
    reply = dp_mod(_train_message(GLOBAL, **{"dp-noise": 1.0}), _ctx(), _trainer(1.0))
    assert reply.has_error() and "dp-clip" in reply.error.reason


def test_a_dp_run_reports_epsilon_growing_with_rounds(env: AppEnv) -> None:
    runner = env.runner(record_reads=False)
    plain = runner.run(env.run_config("plain", rounds=3))
    cfg = env.run_config("dp", rounds=3, dp_clip=0.5, dp_noise=0.8, dp_delta=1e-5)
    result = runner.run(cfg)
    assert result["status"] == "finished"
    assert result["model_sha256"] != plain["model_sha256"]
    assert result["epsilon"] == pytest.approx(rdp_epsilon(0.8, 3, 1e-5))
    assert result["privacy"]["noise_multiplier"] == 0.8 and result["privacy"]["accountant"] == "rdp"
    assert plain["epsilon"] is None and plain["privacy"] is None
    lines = [json.loads(x) for x in (Path(cfg["out-dir"]) / "metrics.jsonl").read_text().splitlines()]
    per_round = [x["epsilon"] for x in lines if x["phase"] == "round"]
    assert len(per_round) == 3 and per_round[0] < per_round[1] < per_round[2]
    for node in (x for x in lines if x["phase"] == "train"):
        for metrics in node["nodes"].values():
            assert metrics["dp-epsilon"] == pytest.approx(rdp_epsilon(0.8, node["round"], 1e-5))
    start = next(e for e in env.ledger("a") if e.action == "start" and e.details["run_id"] == "test-dp")
    assert "noise multiplier 0.8" in start.details["privacy"]
