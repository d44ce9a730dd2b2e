"""Centralised training: the federated run's peer, on the union of the nodes' data.

:func:`train_centralised` loads a task's data from several nodes' readers, pools the train
splits and the test splits (each patient stays on the side :func:`~incisive_lab.fl.task.split_by_patient`
put it at its node, so the pooled test set is exactly the union of the nodes' test sets), and
trains one model for ``rounds`` rounds of ``config["epochs"]`` epochs — the same number of
passes over the data as a federated run with the same config — evaluating after each round.
It is what the benchmark and the tests compare a federated run against; it is not something
a deployment does (it needs every node's data in one process).

Example
-------
>>> result = train_centralised(builtin("mg-lesion"), readers, {"epochs": 2, "lr": 2e-3}, rounds=5)  # doctest: +SKIP
>>> result["final"]["accuracy"], result["majority_baseline"]                # doctest: +SKIP
(0.93, 0.74)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from incisive_lab.fl.data import CohortReader
from incisive_lab.fl.task import LoadedTask, LocalData, Samples, TaskCode, load

__all__ = ["majority_baseline", "pool", "train_centralised"]


def _concat(parts: Sequence[Any]) -> Any:
    import torch

    if all(isinstance(p, Samples) for p in parts):
        nonempty = [p for p in parts if len(p)] or list(parts[:1])
        return Samples(torch.cat([p.x for p in nonempty]), torch.cat([p.y for p in nonempty]),
                       [k for p in nonempty for k in p.patients])
    return torch.utils.data.ConcatDataset(list(parts))


def pool(parts: Sequence[LocalData]) -> LocalData:
    """One :class:`LocalData` holding every part's train and test samples."""
    if not parts:
        raise ValueError("parts: no node data to pool")
    classes = parts[0].classes
    for p in parts[1:]:
        if p.classes != classes:
            raise ValueError(f"parts: class names differ ({classes} vs {p.classes})")
    return LocalData(train=_concat([p.train for p in parts]), test=_concat([p.test for p in parts]),
                     patients=frozenset().union(*(p.patients for p in parts)),
                     datasets=frozenset().union(*(p.datasets for p in parts)), classes=classes)


def majority_baseline(data: LocalData) -> float:
    """Accuracy on ``data.test`` of always answering the test split's most frequent class."""
    labels = (data.test.labels if isinstance(data.test, Samples)
              else [int(data.test[i][1]) for i in range(len(data.test))])
    if not labels:
        return 0.0
    return max(labels.count(c) for c in set(labels)) / len(labels)


def train_centralised(task: LoadedTask | TaskCode, readers: Sequence[CohortReader],
                      config: Mapping[str, Any], rounds: int) -> dict[str, Any]:
    """Train ``task`` on the union of the readers' data; evaluate after every round.

    Parameters
    ----------
    task
        The task (a :class:`TaskCode` is loaded first).
    readers
        One reader per node (each bound to that node's scope).
    config
        The task's config (as a federated run gets it: ``epochs``, ``lr``, ``batch_size``,
        ``seed``...; ``proximal_mu`` is ignored here: there is no global model to stay near).
    rounds
        Rounds of ``config["epochs"]`` epochs each.

    Returns
    -------
    dict
        ``rounds`` (per round: ``round``, the training metrics, ``loss``, ``accuracy``,
        ``num_examples``, ``train_seconds``), ``final`` (the last evaluation),
        ``majority_baseline``, ``num_train``, ``num_test``, ``label_counts``, ``state``
        (the final model's ``state_dict``).
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds: expected a positive integer, got {rounds!r}")
    if not readers:
        raise ValueError("readers: no node to train on")
    loaded = load(task) if isinstance(task, TaskCode) else task
    data = pool([loaded.load_data(r, config) for r in readers])
    model = loaded.build_model(config)
    cfg = {k: v for k, v in loaded.config(config).items() if k != "proximal_mu"}
    base_seed = int(cfg.get("seed", 0))
    history: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        started = time.perf_counter()
        fit = loaded.train(model, data, {**cfg, "seed": base_seed + rnd})
        seconds = time.perf_counter() - started
        fit["num_train_examples"] = fit.pop("num_examples", len(data.train))
        history.append({"round": rnd, **fit, **loaded.evaluate(model, data),
                        "train_seconds": round(seconds, 3)})
    final = {k: history[-1][k] for k in ("loss", "accuracy", "num_examples")}
    return {"rounds": history, "final": final, "majority_baseline": majority_baseline(data),
            "num_train": len(data.train), "num_test": len(data.test),
            "label_counts": loaded.label_counts(data),
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
