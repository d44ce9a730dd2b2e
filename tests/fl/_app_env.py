"""What the Flower app's tests share: a writable copy of a federation, a token issuer, a task.

:func:`app_env` copies a (shared, read-only) federation's nodes into the test's own folder,
starts a loopback OIDC issuer serving a generated key (``tests/access/idp.py``: the nodes'
real :class:`~incisive_lab.access.TokenVerifier` fetches its JWKS over HTTP), writes
:data:`TINY_TASK` — a task in the contract's form that reads one image per patient, 8x8, into a
linear model: quick enough for many runs — and approves it at every node.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.access.idp import LoopbackIssuer, TestKey, claims

AUDIENCE = "https://fl-nodes.test/"

TINY_TASK = '''\
"""A tiny task for the Flower app's tests: one image per patient, 8x8, a linear model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from incisive_lab.fl.task import LocalData, Samples, split_by_patient

NAME = "tiny-test"
VERSION = "0.1.0"
CLASSES = ("absent", "present")


def build_model(config: Any) -> nn.Module:
    torch.manual_seed(int(config.get("seed", 0)))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def _small(ds: Any) -> torch.Tensor:
    px = np.asarray(ds.pixel_array, dtype=np.float32)
    while px.ndim > 2:
        px = px[px.shape[0] // 2]
    h, w = px.shape[0] // 8 * 8, px.shape[1] // 8 * 8
    px = px[:h, :w].reshape(8, h // 8, 8, w // 8).mean(axis=(1, 3))
    x = torch.from_numpy(px)
    return ((x - x.mean()) / (x.std() + 1e-6))[None]


def load_data(reader: Any, config: Any) -> LocalData:
    lesion = reader.observations("lesion_label")
    items = []
    seen = set()
    for series in reader.series():
        key = (series.dataset, series.patient)
        if key in seen or key not in lesion or not series.instances:
            continue
        seen.add(key)
        items.append((_small(reader.read(series.instances[0])), int(lesion[key] == "present"), key))
    train_keys, _ = split_by_patient(sorted(seen), float(config.get("test_fraction", 0.3)))
    train = [i for i in items if i[2] in train_keys]
    test = [i for i in items if i[2] not in train_keys]
    return LocalData(train=Samples.stack(train, (1, 8, 8)), test=Samples.stack(test, (1, 8, 8)),
                     patients=frozenset(p for _, _, (_, p) in items),
                     datasets=frozenset(d for _, _, (d, _) in items), classes=CLASSES)
'''


@dataclass
class AppEnv:
    """A writable federation with an issuer and an approved tiny task."""

    root: Path
    nodes: dict[str, Path]
    issuer: LoopbackIssuer
    key: TestKey
    task_dir: Path
    code: Any
    fed: Any
    reads: list[tuple[str, str, str]] = field(default_factory=list)

    def node_config(self, site: str) -> dict[str, str | int | float | bool]:
        return {"node-dir": str(self.nodes[site]), "node-name": f"hospital-{site}", "issuer": self.issuer.issuer,
                "audience": AUDIENCE, "jwks-url": self.issuer.base + self.issuer.JWKS}

    def node_configs(self) -> dict[str, dict[str, str | int | float | bool]]:
        return {f"hospital-{s}": self.node_config(s) for s in self.nodes}

    def token(self, sub: str = "researcher", **overrides: Any) -> str:
        values: dict[str, Any] = {"sub": sub, "aud": AUDIENCE, "roles": ["researcher"], "groups": None, **overrides}
        return self.key.sign(claims(self.issuer.issuer, **values))

    def runner(self, *, record_reads: bool = True) -> Any:
        from incisive_lab.fl.clientapp import build_client_app
        from incisive_lab.fl.runner import InProcessRunner

        hook = (lambda node, dataset, patient: self.reads.append((node, dataset, patient))) if record_reads else None
        return InProcessRunner(self.node_configs(), client_app=build_client_app(on_read=hook))

    def run_config(self, out: str, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"out-dir": str(self.root / out), "task-dir": str(self.task_dir),
                                "token": self.token(), "rounds": 2, "min-nodes": 2, "lr": 0.05, "epochs": 2,
                                "run-id": f"test-{out}", "node-wait": 0.0}
        base.update({k.replace("_", "-"): v for k, v in overrides.items()})
        return base

    def ledger(self, site: str, kind: str = "fl-run") -> list[Any]:
        from incisive_lab.ledger import Ledger

        with Ledger.open(self.nodes[site]) as ledger:
            return [e.event for e in ledger.query(kind=kind)]


@contextlib.contextmanager
def app_env(tmp_path: Path, fed: Any, *, approve: tuple[str, ...] | None = None) -> Iterator[AppEnv]:
    """A writable copy of ``fed`` with an issuer and the tiny task, approved at ``approve`` (default all)."""
    from incisive_lab.fl.approvals import TaskApprovals
    from incisive_lab.fl.task import TaskCode

    nodes = {}
    for site, path in fed.nodes.items():
        nodes[site] = tmp_path / f"node-{site}"
        shutil.copytree(path, nodes[site], symlinks=True)
    task_dir = tmp_path / "tiny-task"
    task_dir.mkdir()
    (task_dir / "task.py").write_text(TINY_TASK, encoding="utf-8")
    code = TaskCode.from_dir(task_dir)
    for site in nodes if approve is None else approve:
        TaskApprovals(nodes[site]).approve(code, steward=f"steward@hospital-{site}.example")
    issuer = LoopbackIssuer()
    key = TestKey.rsa("k1")
    issuer.publish(key)
    try:
        yield AppEnv(root=tmp_path, nodes=nodes, issuer=issuer, key=key, task_dir=task_dir, code=code, fed=fed)
    finally:
        issuer.close()


def federation(tmp_path_factory: Any) -> Any:
    """The shared three-site federation of these tests (18 patients, 6 per site; b train-only)."""
    from tests.fl._nodes import shared_federation

    return shared_federation(tmp_path_factory, patients=18, seed=3, sites=("a", "b", "c"))
