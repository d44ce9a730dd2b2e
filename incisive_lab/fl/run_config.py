"""The run configuration of a federated run: typed, validated, one place for every key.

A Flower run carries its settings as a flat mapping of strings to scalars (the app's
``[tool.flwr.app.config]`` defaults, overridden by ``flwr run --run-config`` or by the
in-process runner). :class:`RunConfig` reads that mapping, refuses unknown keys and bad
values with a message naming the key, and is what the ServerApp works from. Every key and
its default is in :data:`DEFAULTS`; :func:`incisive_lab.fl.app_dir.build_app_dir` writes
them into the app's ``pyproject.toml``.

==================  =========  ===============================================================
key                 type       meaning
==================  =========  ===============================================================
``out-dir``         str        where ``metrics.jsonl``, ``checkpoints/``, ``model.pt`` and
                               ``result.json`` are written (required)
``mode``            str        ``train`` (default) or ``query`` (label counts, no training)
``task-name``       str        a built-in task (``mg-lesion``, ``ct-nodule``) — or:
``task-dir``        str        a task directory (``task.py`` and friends) — or:
``task-file``       str        a file holding ``TaskCode.to_bytes()`` — or:
``task-b64``        str        ``TaskCode.to_bytes()``, base64 (exactly one of the four)
``token``           str        the user's access token (sent to every node) — or:
``token-file``      str        a file holding it (exactly one of the two); read again for every
                               round, so that whoever holds the file can pass a fresher token on
``purpose``         str        the purpose under the sharing terms (default ``ai-development``)
``run-id``          str        the id the nodes' ledgers record (default ``flwr-<run id>``)
``strategy``        str        ``fedavg`` or ``fedprox``
``rounds``          int        federated rounds (>= 1)
``min-nodes``       int        nodes that must answer every round (>= 1); fewer fails the run
``fraction``        float      share of the connected nodes asked each round (0 < f <= 1)
``node-wait``       float      seconds to wait for ``min-nodes`` nodes to be connected
``timeout``         float      seconds to wait for the replies of one round
``epochs``          int        local epochs per round (0: the task's own default)
``lr``              float      learning rate (0: the task's own default)
``batch-size``      int        local batch size (0: the task's own default)
``proximal-mu``     float      FedProx's proximal weight (> 0 with ``fedprox``, 0 otherwise)
``seed``            int        seed of model initialisation and local shuffling
``datasets``        str        comma-separated dataset names the run is limited to ("" = every
                               dataset the user's grants cover at each node)
``task-config``     str        task settings of the task's own (``test_fraction``...), a JSON
                               object of scalars (default ``{}``)
``dp-clip``         float      L2 bound of each node's update (0: differential privacy off)
``dp-noise``        float      Gaussian noise multiplier (std = noise x clip); > 0 with a clip
``dp-delta``        float      the delta epsilon is reported for (0 < delta < 1)
``secagg``          bool       aggregate with SecAgg+ (FedAvg only; see docs/fl.md)
``secagg-clip``     float      SecAgg+ quantisation range: weighted parameters in [-clip, clip]
``secagg-max-weight`` float    SecAgg+ largest per-node weight (examples) expected
==================  =========  ===============================================================
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from incisive_lab.errors import IncisiveLabError

if TYPE_CHECKING:
    from incisive_lab.fl.task import TaskCode

__all__ = ["DEFAULTS", "MODES", "RESERVED_TASK_KEYS", "STRATEGIES", "RunConfig", "RunConfigError",
           "check_task_config"]

Scalar = str | int | float | bool

#: Every run-config key and its default ("" = not set).
DEFAULTS: Mapping[str, Scalar] = {
    "out-dir": "",
    "mode": "train",
    "task-name": "",
    "task-dir": "",
    "task-file": "",
    "task-b64": "",
    "token": "",
    "token-file": "",
    "purpose": "ai-development",
    "run-id": "",
    "datasets": "",
    "strategy": "fedavg",
    "rounds": 3,
    "min-nodes": 2,
    "fraction": 1.0,
    "node-wait": 60.0,
    "timeout": 600.0,
    "epochs": 0,
    "lr": 0.0,
    "batch-size": 0,
    "proximal-mu": 0.0,
    "seed": 0,
    "task-config": "{}",
    "dp-clip": 0.0,
    "dp-noise": 0.0,
    "dp-delta": 1e-5,
    "secagg": False,
    "secagg-clip": 8.0,
    "secagg-max-weight": 1000.0,
}

#: The aggregation strategies a run may name.
STRATEGIES = ("fedavg", "fedprox")
#: What a run does.
MODES = ("train", "query")

_TASK_KEYS = ("task-name", "task-dir", "task-file", "task-b64")


class RunConfigError(IncisiveLabError, ValueError):
    """A run-config key is missing, unknown or has a bad value (the message names it)."""


def _int(values: Mapping[str, Any], key: str, lowest: int) -> int:
    v = values[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < lowest:
        raise RunConfigError(f"run config {key!r}: an integer of at least {lowest} is needed (got {v!r})")
    return v


def _float(values: Mapping[str, Any], key: str, *, low: float, high: float = math.inf,
           low_open: bool = False) -> float:
    v = values[key]
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            v = float(v)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
            or v < low or (low_open and v == low) or v > high:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high != math.inf else "")
        raise RunConfigError(f"run config {key!r}: a number {bound} is needed (got {v!r})")
    return float(v)


def _str(values: Mapping[str, Any], key: str) -> str:
    v = values[key]
    if not isinstance(v, str):
        raise RunConfigError(f"run config {key!r}: a string is needed (got {v!r})")
    return v.strip()


def _bool(values: Mapping[str, Any], key: str) -> bool:
    v = values[key]
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise RunConfigError(f"run config {key!r}: true or false is needed (got {v!r})")
    return v


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module doc for the keys).

    Build one with :meth:`from_mapping`; :meth:`to_mapping` gives the flat form back.
    """

    out_dir: Path
    task_source: tuple[str, str]
    token: str = field(repr=False)
    mode: str = "train"
    purpose: str = "ai-development"
    run_id: str = ""
    strategy: str = "fedavg"
    rounds: int = 3
    min_nodes: int = 2
    fraction: float = 1.0
    node_wait: float = 60.0
    timeout: float = 600.0
    epochs: int = 0
    lr: float = 0.0
    batch_size: int = 0
    proximal_mu: float = 0.0
    seed: int = 0
    task_config: Mapping[str, Any] = field(default_factory=dict)
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
    secagg: bool = False
    secagg_clip: float = 8.0
    secagg_max_weight: float = 1000.0
    datasets: tuple[str, ...] = ()
    token_file: Path | None = None

    @property
    def dp(self) -> bool:
        """Whether differential privacy is on (a clip and a noise multiplier are set)."""
        return self.dp_noise > 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, run_id: int | str | None = None) -> RunConfig:
        """Validate a flat run config (missing keys take :data:`DEFAULTS`).

        Parameters
        ----------
        values
            The run config (``context.run_config``).
        run_id
            The Flower run id, for the default ``run-id`` (``flwr-<id>``).

        Raises
        ------
        RunConfigError
            Naming the first unknown key, missing required key or bad value.
        """
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise RunConfigError(f"unknown run config key(s): {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(DEFAULTS))})")
        v: dict[str, Any] = {**DEFAULTS, **values}
        out_dir = _str(v, "out-dir")
        if not out_dir:
            raise RunConfigError("run config 'out-dir' is required: where the run's results are written")
        sources = [(k, _str(v, k)) for k in _TASK_KEYS if _str(v, k)]
        if len(sources) != 1:
            raise RunConfigError("run config: exactly one of 'task-name', 'task-dir', 'task-file', 'task-b64' "
                                 f"is needed (got {', '.join(k for k, _ in sources) or 'none'})")
        token, token_file = _str(v, "token"), _str(v, "token-file")
        if bool(token) == bool(token_file):
            raise RunConfigError("run config: exactly one of 'token' and 'token-file' is needed "
                                 "(the user's access token for the nodes)")
        if token_file:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise RunConfigError(f"run config 'token-file': cannot read {token_file}: {exc}") from None
            if not token:
                raise RunConfigError(f"run config 'token-file': {token_file} is empty")
        mode = _str(v, "mode").lower()
        if mode not in MODES:
            raise RunConfigError(f"run config 'mode': one of {', '.join(MODES)} (got {mode!r})")
        purpose = _str(v, "purpose").lower()
        if not purpose:
            raise RunConfigError("run config 'purpose' must name the purpose under the sharing terms")
        strategy = _str(v, "strategy").lower()
        if strategy not in STRATEGIES:
            raise RunConfigError(f"run config 'strategy': one of {', '.join(STRATEGIES)} (got {strategy!r})")
        mu = _float(v, "proximal-mu", low=0.0)
        if strategy == "fedprox" and mu <= 0:
            raise RunConfigError("run config 'proximal-mu' must be > 0 with strategy 'fedprox'")
        if strategy == "fedavg" and mu != 0:
            raise RunConfigError("run config 'proximal-mu' is FedProx's: set strategy 'fedprox' or leave it 0")
        try:
            task_config = json.loads(_str(v, "task-config") or "{}")
        except ValueError as exc:
            raise RunConfigError(f"run config 'task-config': not JSON ({exc})") from None
        if not isinstance(task_config, dict):
            raise RunConfigError("run config 'task-config' must be a JSON object")
        check_task_config(task_config, where="run config 'task-config'", error=RunConfigError)
        dp_clip = _float(v, "dp-clip", low=0.0)
        dp_noise = _float(v, "dp-noise", low=0.0)
        if (dp_clip > 0) != (dp_noise > 0):
            raise RunConfigError("run config 'dp-clip' and 'dp-noise' go together: both > 0 (differential "
                                 "privacy on) or both 0 (off)")
        secagg = _bool(v, "secagg")
        if secagg and strategy != "fedavg":
            raise RunConfigError("run config 'secagg' works with strategy 'fedavg' only")
        rid = _str(v, "run-id") or (f"flwr-{run_id}" if run_id is not None else "")
        if not rid:
            raise RunConfigError("run config 'run-id' is required outside a Flower run")
        return cls(
            out_dir=Path(out_dir), task_source=sources[0], token=token, mode=mode, purpose=purpose, run_id=rid,
            strategy=strategy, rounds=_int(v, "rounds", 1), min_nodes=_int(v, "min-nodes", 1),
            fraction=_float(v, "fraction", low=0.0, high=1.0, low_open=True),
            node_wait=_float(v, "node-wait", low=0.0), timeout=_float(v, "timeout", low=0.0, low_open=True),
            epochs=_int(v, "epochs", 0), lr=_float(v, "lr", low=0.0),
            batch_size=_int(v, "batch-size", 0), proximal_mu=mu, seed=_int(v, "seed", 0),
            task_config=task_config, dp_clip=dp_clip, dp_noise=dp_noise,
            dp_delta=_float(v, "dp-delta", low=0.0, high=1.0, low_open=True),
            secagg=secagg, secagg_clip=_float(v, "secagg-clip", low=0.0, low_open=True),
            secagg_max_weight=_float(v, "secagg-max-weight", low=0.0, low_open=True),
            datasets=_datasets(_str(v, "datasets")), token_file=Path(token_file) if token_file else None)

    def current_token(self) -> str:
        """The token to send now: ``token-file`` read again when the run has one (a fresher
        token passed on while the run goes), else — or when the file is gone or empty — the
        token the run started with."""
        if self.token_file is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                fresh = self.token_file.read_text(encoding="utf-8").strip()
                if fresh:
                    return fresh
        return self.token

    def load_task(self) -> TaskCode:
        """The run's task code, from whichever source the config names.

        Raises
        ------
        RunConfigError
            When the source cannot be read or does not hold valid task code.
        """
        from incisive_lab.fl import task as task_mod

        key, value = self.task_source
        try:
            if key == "task-name":
                return task_mod.builtin(value)
            if key == "task-dir":
                return task_mod.TaskCode.from_dir(Path(value))
            if key == "task-file":
                return task_mod.TaskCode.from_bytes(Path(value).read_bytes())
            return task_mod.TaskCode.from_bytes(base64.b64decode(value, validate=True))
        except (OSError, ValueError, binascii.Error) as exc:
            raise RunConfigError(f"run config {key!r}: {exc}") from None

    def train_config(self) -> dict[str, Scalar]:
        """The hyper-parameters every node trains with (no code, no token)."""
        return {"epochs": self.epochs, "lr": self.lr, "batch-size": self.batch_size,
                "proximal-mu": self.proximal_mu, "seed": self.seed, "rounds": self.rounds,
                "task-config": json.dumps(dict(self.task_config), sort_keys=True),
                "dp-clip": self.dp_clip, "dp-noise": self.dp_noise, "dp-delta": self.dp_delta,
                "datasets": ",".join(self.datasets)}

    def to_mapping(self) -> dict[str, Scalar]:
        """The flat form (the token included: keep it out of logs)."""
        out: dict[str, Scalar] = {k: "" for k in _TASK_KEYS}
        out[self.task_source[0]] = self.task_source[1]
        out.update({"out-dir": str(self.out_dir), "mode": self.mode, "token": self.token, "token-file": "", "purpose": self.purpose,
                    "run-id": self.run_id, "strategy": self.strategy, "rounds": self.rounds,
                    "min-nodes": self.min_nodes, "fraction": self.fraction, "node-wait": self.node_wait,
                    "timeout": self.timeout, "epochs": self.epochs, "lr": self.lr, "batch-size": self.batch_size,
                    "proximal-mu": self.proximal_mu, "seed": self.seed,
                    "task-config": json.dumps(dict(self.task_config), sort_keys=True),
                    "dp-clip": self.dp_clip, "dp-noise": self.dp_noise, "dp-delta": self.dp_delta,
                    "secagg": self.secagg, "secagg-clip": self.secagg_clip,
                    "secagg-max-weight": self.secagg_max_weight, "datasets": ",".join(self.datasets)})
        return out


#: Settings a run carries in keys of their own, never inside ``task-config``.
RESERVED_TASK_KEYS = frozenset({"epochs", "lr", "batch_size", "proximal_mu", "seed", "round"})


def check_task_config(values: Mapping[str, Any], *, where: str, error: type[Exception]) -> None:
    """Refuse a task config that is not a small mapping of names to scalars, or that sets a
    key the run carries itself (:data:`RESERVED_TASK_KEYS`), with ``error`` naming ``where``."""
    if len(values) > 64:
        raise error(f"{where}: at most 64 settings (got {len(values)})")
    for key, value in values.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
            raise error(f"{where}: {key!r} is not a setting name (letters, digits, '_')")
        if key in RESERVED_TASK_KEYS:
            raise error(f"{where}: {key!r} is a setting of the run itself: set it there, not here")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise error(f"{where}: {key!r} must be a string, number, true/false or null "
                        f"(got {type(value).__name__})")
        if isinstance(value, str) and len(value) > 256:
            raise error(f"{where}: {key!r} is longer than 256 characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{where}: {key!r} must be a finite number")


def _datasets(value: str) -> tuple[str, ...]:
    names = tuple(sorted({n.strip() for n in value.split(",") if n.strip()}))
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", n)]
    if bad:
        raise RunConfigError(f"run config 'datasets': {bad[0]!r} is not a dataset name")
    return names
