"""Differential privacy at the node: a Flower mod that clips and noises each model update.

:func:`dp_mod` wraps the ClientApp's train handler. When the run asks for it (``dp-clip`` and
``dp-noise`` in the train message's config), it takes the update the task produced
(``new - global`` over every floating-point array, as one vector), scales it to an L2 norm
of at most ``C = dp-clip``, adds Gaussian noise of standard deviation ``dp-noise x C`` to
every coordinate, and sends ``global + noised update``. Integer buffers (BatchNorm's batch
counter) are sent back unchanged from the global model. The noise comes from the operating
system's entropy, never from the run's seed, so nobody can replay it.

Accounting (:func:`rdp_epsilon`): each round is one Gaussian mechanism over the node's
whole local dataset. Two local datasets may produce any two updates in the clipping ball,
so the L2 sensitivity is ``2C`` (replace-one adjacency at the level of a node's dataset:
this is *local*, node-level differential privacy, which holds against the server and
everyone after it). The Rényi DP of order ``a`` of one round is ``a x 2^2 / (2 sigma^2)``
(sigma = ``dp-noise``), rounds compose by addition, and the (epsilon, delta) guarantee is
the best over a grid of orders of ``RDP(a) + log((a-1)/a) - (log delta + log a)/(a-1)``
(Balle et al. 2020, the conversion Opacus and TF Privacy use). No sampling amplification
is claimed: a node may be asked every round. The example count each node reports (for
FedAvg's weights) is not protected.

The ServerApp reports the epsilon after each round in ``metrics.jsonl`` and the final one
in ``result.json``; each node also reports its own (``dp-epsilon`` in its metrics).

Example
-------
>>> round(rdp_epsilon(1.0, rounds=1, delta=1e-5), 1)
10.7
>>> rdp_epsilon(1.0, rounds=10, delta=1e-5) > rdp_epsilon(1.0, rounds=1, delta=1e-5)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_ORDERS", "dp_mod", "rdp_epsilon"]

#: Rényi orders searched for the best conversion (as Opacus's default grid).
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
                                          + [128.0, 256.0, 512.0, 1024.0])
#: Key of the node's DP bookkeeping in ``context.state``.
STATE_KEY = "incisive.dp"


def rdp_epsilon(noise_multiplier: float, rounds: int, delta: float, *, sensitivity: float = 2.0,
                orders: Sequence[float] = DEFAULT_ORDERS) -> float:
    """Epsilon after ``rounds`` Gaussian releases, at ``delta`` (see the module doc).

    Parameters
    ----------
    noise_multiplier
        Noise standard deviation divided by the clipping bound (> 0).
    rounds
        Releases composed (>= 0; 0 gives 0).
    delta
        The delta of the guarantee (0 < delta < 1).
    sensitivity
        L2 sensitivity in units of the clipping bound (2: any two local datasets).
    orders
        Rényi orders to search (> 1).
    """
    if not noise_multiplier > 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier must be > 0 (got {noise_multiplier!r})")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be between 0 and 1 (got {delta!r})")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0 (got {rounds!r})")
    if rounds == 0:
        return 0.0
    best = math.inf
    for a in orders:
        if a <= 1:
            continue
        rdp = rounds * a * sensitivity ** 2 / (2.0 * noise_multiplier ** 2)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


def _float_keys(arrays: Any) -> list[str]:
    return [k for k in arrays if np.issubdtype(arrays[k].numpy().dtype, np.floating)]


def _number(record: Any, key: str, default: float) -> float:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan  # refused below (nan is never > 0)
    return float(value)


def dp_mod(msg: Any, ctx: Any, call_next: Any) -> Any:
    """Flower mod: clip the node's update to ``dp-clip`` (L2) and add Gaussian noise.

    Active on train messages whose ``config`` record has ``dp-noise > 0`` (and a
    ``dp-clip > 0``); otherwise it passes the message through. Adds ``dp-epsilon`` (this
    node's epsilon so far, at ``dp-delta``) to the reply's metrics.
    """
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType

    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN or "config" not in msg.content.config_records:
        return call_next(msg, ctx)
    config = msg.content.config_records["config"]
    noise, clip, delta = (_number(config, k, d) for k, d in (("dp-noise", 0.0), ("dp-clip", 0.0), ("dp-delta", 1e-5)))
    if noise == 0:
        return call_next(msg, ctx)
    if not (noise > 0 and clip > 0 and 0 < delta < 1 and math.isfinite(noise) and math.isfinite(clip)):
        from flwr.app import Error
        from flwr.common.constant import ErrorCode

        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, "dp_mod: dp-noise > 0 needs dp-clip > 0 and "
                                                                  "0 < dp-delta < 1 (numbers)"), reply_to=msg)
    original = msg.content.array_records["arrays"]
    before = {k: original[k].numpy().copy() for k in original}
    out = call_next(msg, ctx)
    if out.has_error():
        return out
    sent = out.content.array_records["arrays"]
    if list(sent) != list(before):
        from flwr.app import Error
        from flwr.common.constant import ErrorCode

        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, "dp_mod: the reply's arrays do not match the "
                                                                  "global model's"), reply_to=msg)
    floats = _float_keys(sent)
    updates = {k: sent[k].numpy().astype(np.float64) - before[k].astype(np.float64) for k in floats}
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in updates.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    rng = np.random.default_rng()  # OS entropy: the noise must not be reproducible from the run
    noised: dict[str, Array] = {}
    for k in sent:
        if k in updates:
            u = updates[k] * scale + rng.normal(0.0, noise * clip, size=updates[k].shape)
            noised[k] = Array(np.asarray(before[k] + u, dtype=before[k].dtype))
        else:
            noised[k] = Array(np.asarray(before[k]))
    out.content.array_records["arrays"] = ArrayRecord(noised)
    state = ctx.state.config_records.get(STATE_KEY) or ConfigRecord({"releases": 0})
    releases = int(_number(state, "releases", 0)) + 1
    ctx.state.config_records[STATE_KEY] = ConfigRecord({"releases": releases})
    metrics = out.content.metric_records.get("metrics")
    if metrics is not None:
        metrics["dp-epsilon"] = rdp_epsilon(noise, releases, delta)
    return out
