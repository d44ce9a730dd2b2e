"""Training runs as the broker keeps them: submit, watch, stop, and fetch the model.

The broker is the central service next to the SuperLink. A researcher's kernel submits a
run through the gateway (``POST /broker/fl/runs``); the broker verifies the token, checks the
request (:class:`RunSpec`), writes the run's folder (``<state>/fl/runs/<run_id>/``: the run
record, the task code) and hands it to a :class:`Launcher` — the SuperLink
(:class:`FlowerLauncher`, the deployment) or the in-process runner (:class:`InProcessLauncher`,
development and tests). The ServerApp writes ``metrics.jsonl``, checkpoints, ``model.pt``
and ``result.json`` into that folder; this module reads them back for the job monitor.

Nodes decide for themselves: the task's hash must be approved by their steward, the token
must verify, and only the patients the user's grants cover for the purpose are used. The
broker's own checks are the cheap ones (well-formed request, known task, a training
purpose) so that a bad request fails at once, with a sentence, instead of at every node.

Only the run's owner sees it. Every submission (allowed or refused), the end of every run
and every fetch of a model is written to the broker's ledger (kind ``fl-run``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from incisive_lab._files import write_atomic
from incisive_lab.errors import IncisiveLabError
from incisive_lab.fl.run_config import STRATEGIES, check_task_config

__all__ = ["STRATEGIES", "Coordinator", "FlowerLauncher", "InProcessLauncher", "Launcher", "RunError",
           "RunNotFound", "RunSpec", "RunView"]

log = logging.getLogger("incisive_lab.fl.coordinator")

#: Purposes a training run may declare (the sharing terms' vocabulary).
TRAINING_PURPOSES = ("ai-development", "ai-validation", "general-research", "health-research",
                     "cancer-research")
_SPEC_KEYS = frozenset({"task", "task_code", "datasets", "strategy", "rounds", "min_nodes", "epochs", "lr",
                        "batch_size", "proximal_mu", "dp", "seed", "secagg", "task_config"})
_DP_KEYS = frozenset({"clip", "noise", "delta"})
_TASK_BYTES_LIMIT = 1 << 20


class RunError(IncisiveLabError, ValueError):
    """A run request that cannot be accepted; the message names the field."""


class RunNotFound(IncisiveLabError, LookupError):
    """No such run for this user (another user's run is reported the same way)."""


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float, *,
            integer: bool) -> Any:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise RunError(f"{key}: must be {kind} (got {value!r})")
    if not low <= value <= high:
        raise RunError(f"{key}: must be between {low:g} and {high:g} (got {value!r})")
    return value


def _optional(body: Mapping[str, Any], key: str, low: float, high: float, *, integer: bool) -> Any:
    """``body[key]`` checked as :func:`_number` does; ``None`` when absent or null."""
    if body.get(key) is None:
        return None
    value = _number(body, key, low, low, high, integer=integer)
    return value if integer else float(value)


@dataclass(frozen=True)
class RunSpec:
    """What a researcher asks for (the JSON body of ``POST /fl/runs``).

    ``task`` names a built-in task (``incisive-lab fl hash --task NAME`` prints its hash);
    ``task_code`` (base64 of :meth:`TaskCode.to_bytes`) submits task code of one's own,
    which runs only at nodes whose steward approved that hash. ``datasets`` narrows the
    run to some datasets (default: every dataset the user's grants cover). ``dp`` turns on
    differential privacy at the nodes: updates clipped to L2 norm ``clip``, Gaussian noise of
    standard deviation ``noise × clip``; epsilon is reported for ``delta``. ``epochs``, ``lr``
    and ``batch_size`` left out (``None``) take the task's own tuned defaults; ``task_config``
    holds the task's own settings (``test_fraction``, ``downsample``...: see the task's doc).
    """

    task: str
    task_code: bytes | None = None
    datasets: tuple[str, ...] = ()
    strategy: str = "fedavg"
    rounds: int = 3
    min_nodes: int = 2
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    proximal_mu: float = 0.0
    dp: Mapping[str, float] | None = None
    seed: int = 0
    secagg: bool = False
    task_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Any) -> RunSpec:
        """Validate a request body; a :class:`RunError` names the first bad field."""
        if not isinstance(body, Mapping):
            raise RunError("the request body must be a JSON object")
        unknown = sorted(set(body) - _SPEC_KEYS)
        if unknown:
            raise RunError(f"{unknown[0]}: unknown field (known: {', '.join(sorted(_SPEC_KEYS))})")
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            raise RunError("task: name a task (e.g. 'mg-lesion')")
        code = None
        if body.get("task_code") is not None:
            if not isinstance(body["task_code"], str):
                raise RunError("task_code: must be base64 text")
            try:
                code = base64.b64decode(body["task_code"], validate=True)
            except ValueError as exc:
                raise RunError(f"task_code: not valid base64 ({exc})") from None
            if len(code) > _TASK_BYTES_LIMIT:
                raise RunError(f"task_code: larger than {_TASK_BYTES_LIMIT} bytes")
        datasets = body.get("datasets") or []
        if not isinstance(datasets, list) or not all(isinstance(d, str) and d for d in datasets):
            raise RunError("datasets: must be a list of dataset names")
        strategy = body.get("strategy", "fedavg")
        if strategy not in STRATEGIES:
            raise RunError(f"strategy: must be one of {', '.join(STRATEGIES)} (got {strategy!r})")
        dp = body.get("dp")
        if dp is not None:
            if not isinstance(dp, Mapping) or set(dp) - _DP_KEYS or "clip" not in dp or "noise" not in dp:
                raise RunError("dp: must be an object with 'clip', 'noise' and optionally 'delta'")
            dp = {"clip": float(_number(dp, "clip", 1.0, 1e-6, 1e6, integer=False)),
                  "noise": float(_number(dp, "noise", 1.0, 0.0, 1e3, integer=False)),
                  "delta": float(_number(dp, "delta", 1e-5, 1e-12, 0.1, integer=False))}
        secagg = body.get("secagg", False)
        if not isinstance(secagg, bool):
            raise RunError("secagg: must be true or false")
        default_mu = 0.01 if strategy == "fedprox" else 0.0
        task_config = body.get("task_config") or {}
        if not isinstance(task_config, Mapping):
            raise RunError("task_config: must be an object of the task's own settings")
        check_task_config(task_config, where="task_config", error=RunError)
        return cls(task=task.strip(), task_code=code, datasets=tuple(datasets), strategy=strategy,
                   rounds=_number(body, "rounds", 3, 1, 100, integer=True),
                   min_nodes=_number(body, "min_nodes", 2, 1, 1000, integer=True),
                   epochs=_optional(body, "epochs", 1, 100, integer=True),
                   lr=_optional(body, "lr", 1e-8, 10.0, integer=False),
                   batch_size=_optional(body, "batch_size", 1, 4096, integer=True),
                   proximal_mu=float(_number(body, "proximal_mu", default_mu, 0.0, 100.0, integer=False)),
                   dp=dp, seed=_number(body, "seed", 0, 0, 2**31 - 1, integer=True), secagg=secagg,
                   task_config=dict(task_config))


@dataclass
class RunRecord:
    """What the broker keeps of one run (``run.json``)."""

    run_id: str
    owner: str
    username: str | None
    purpose: str
    created: float
    task: str
    task_version: str
    task_sha256: str
    spec: dict[str, Any]
    engine_id: str | None = None
    status: str = "submitted"
    error: str | None = None
    finished_recorded: bool = False
    #: Expiry (epoch seconds) of the token in the run's ``token`` file (``None``: unknown).
    token_expires: int | None = None


@dataclass(frozen=True)
class RunView:
    """A run as its owner sees it: status, per-round metrics, the result when done."""

    run_id: str
    status: str
    task: str
    task_sha256: str
    spec: Mapping[str, Any]
    created: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON body of ``GET /fl/runs/<id>``."""
        return asdict(self)


class Launcher(Protocol):
    """Starts a prepared run on an engine and reports on it."""

    def start(self, run_dir: Path, run_config: Mapping[str, Any]) -> str:
        """Start the run; returns the engine's id for it."""

    def status(self, engine_id: str) -> str:
        """``running``, ``finished``, ``failed`` or ``stopped``."""

    def stop(self, engine_id: str) -> None:
        """Stop the run (no-op when it already ended)."""


class InProcessLauncher:
    """Runs the ServerApp in a thread of this process, with the in-process runner
    delivering messages to each node's ClientApp (no Ray, no network): for development and
    tests. ``nodes`` maps a node name to its node config (as a SuperNode's ``--node-config``)."""

    def __init__(self, nodes: Mapping[str, Mapping[str, Any]]) -> None:
        self.nodes = {name: dict(cfg) for name, cfg in nodes.items()}
        self._threads: dict[str, threading.Thread] = {}
        self._outcome: dict[str, str] = {}

    def start(self, run_dir: Path, run_config: Mapping[str, Any]) -> str:
        from incisive_lab.fl.runner import InProcessRunner

        engine_id = uuid.uuid4().hex[:12]

        def main() -> None:
            try:
                InProcessRunner(self.nodes).run(dict(run_config))
                self._outcome[engine_id] = "finished"
            except Exception as exc:  # the run's failure is its status, not the broker's crash
                log.warning("in-process run %s failed: %s", engine_id, exc)
                self._outcome[engine_id] = "failed"
                _write_json(run_dir / "error.json", {"error": f"{type(exc).__name__}: {exc}"})

        thread = threading.Thread(target=main, name=f"fl-run-{engine_id}", daemon=True)
        self._threads[engine_id] = thread
        thread.start()
        return engine_id

    def status(self, engine_id: str) -> str:
        if engine_id in self._outcome:
            return self._outcome[engine_id]
        return "running" if engine_id in self._threads else "failed"

    def stop(self, engine_id: str) -> None:
        raise RunError("the in-process runner cannot stop a run; it ends after its last round")


class FlowerLauncher:
    """Submits runs to a SuperLink through its Control API (flwr's own CLI, with a private
    ``FLWR_HOME``) and reads their status back."""

    def __init__(self, app_dir: Path, control_address: str, *, tls_root: Path | None = None,
                 flwr_home: Path | None = None) -> None:
        from incisive_lab.fl.deploy import Control

        self.app_dir = Path(app_dir)
        self.control = Control(control_address, tls_root=tls_root, flwr_home=flwr_home)

    def start(self, run_dir: Path, run_config: Mapping[str, Any]) -> str:
        return str(self.control.submit(self.app_dir, dict(run_config)))

    def status(self, engine_id: str) -> str:
        status = self.control.run_status(int(engine_id))
        if not status.finished:
            return "running"
        return {"completed": "finished", "stopped": "stopped"}.get(status.sub_status, "failed")

    def stop(self, engine_id: str) -> None:
        self.control.stop_run(int(engine_id))


def _write_json(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class Coordinator:
    """The broker's training runs (see the module doc).

    Parameters
    ----------
    state_dir
        Where runs are kept (``<state_dir>/runs/<run_id>/``).
    launcher
        The engine.
    ledger
        The broker's ledger (``None``: not recorded — tests of the pure logic only).
    run_config
        Extra run-config entries every run gets (e.g. the SuperLink's minimum wait).
    """

    def __init__(self, state_dir: Path, launcher: Launcher, *, ledger: Any = None,
                 run_config: Mapping[str, Any] | None = None) -> None:
        self.root = Path(state_dir) / "runs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.launcher, self.ledger = launcher, ledger
        self.extra = dict(run_config or {})
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ ledger

    def _record(self, actor: str, action: str, resource: str, purpose: str, *, allowed: bool = True,
                reason: str = "", **details: Any) -> None:
        if self.ledger is None:
            return
        from incisive_lab.ledger import Event, Outcome

        self.ledger.append(Event(kind="fl-run", actor=actor, action=action, resource=resource,
                                 purpose=purpose or "unspecified",
                                 outcome=Outcome.allow() if allowed else Outcome.deny(reason),
                                 details={k: v for k, v in details.items() if v is not None}))

    # ------------------------------------------------------------------ runs

    def submit(self, subject: str, username: str | None, token: str, purpose: str, body: Any, *,
               token_expires: int | None = None) -> RunView:
        """Accept a run request (or refuse it, ledgered) and start it.

        ``token`` (the caller's verified access token, expiring at ``token_expires``) goes to
        the nodes with every message; :meth:`pass_on_token` replaces it with a later one."""
        actor = f"user:{subject}"
        try:
            if purpose not in TRAINING_PURPOSES:
                raise RunError(f"purpose: training needs one of {', '.join(TRAINING_PURPOSES)} "
                               f"(got {purpose or 'none'!r}; send X-Purpose)")
            spec = RunSpec.from_json(body)
            code = self._task_code(spec)
        except RunError as exc:
            self._record(actor, "submit", "fl-run:new", purpose, allowed=False, reason="invalid")
            raise exc
        run_id = uuid.uuid4().hex[:16]
        run_dir = self.root / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "task.bin").write_bytes(code.to_bytes())
        spec_doc = {k: v for k, v in asdict(spec).items() if k != "task_code"}
        spec_doc["datasets"] = list(spec.datasets)
        record = RunRecord(run_id=run_id, owner=subject, username=username, purpose=purpose, created=time.time(),
                           task=code.name, task_version=code.version, task_sha256=code.sha256, spec=spec_doc,
                           token_expires=token_expires)
        self._save(record)
        self._record(actor, "submit", f"fl-run:{run_id}", purpose, run_id=run_id, task_sha256=code.sha256,
                     rounds=spec.rounds, privacy=_privacy(spec))
        try:
            record.engine_id = self.launcher.start(run_dir, self._run_config(spec, run_dir, token, purpose, code))
            record.status = "running"
        except Exception as exc:
            record.status, record.error = "failed", f"the run could not be started: {exc}"
            self._record(actor, "fail", f"fl-run:{run_id}", purpose, run_id=run_id, task_sha256=code.sha256)
        self._save(record)
        return self._view(record)

    def _task_code(self, spec: RunSpec) -> Any:
        from incisive_lab.fl.task import TaskCode, builtin, builtin_names

        if spec.task_code is not None:
            try:
                code = TaskCode.from_bytes(spec.task_code)
            except (ValueError, KeyError) as exc:
                raise RunError(f"task_code: {exc}") from None
            if code.name != spec.task:
                raise RunError(f"task: the code is task {code.name!r}, not {spec.task!r}")
            return code
        try:
            return builtin(spec.task)
        except (ValueError, KeyError):
            raise RunError(f"task: unknown task {spec.task!r} (built-in: {', '.join(builtin_names())}; "
                           "or send your own as task_code)") from None

    def _run_config(self, spec: RunSpec, run_dir: Path, token: str, purpose: str, code: Any) -> dict[str, Any]:
        """The ServerApp's run config (see :mod:`incisive_lab.fl.run_config`). The token goes
        by file (0600, removed when the run ends), so that it is not kept in the SuperLink's
        state with the run."""
        token_file = run_dir / "token"
        write_atomic(token_file, token.encode(), private=True)
        config: dict[str, Any] = {
            "out-dir": str(run_dir), "task-file": str(run_dir / "task.bin"), "token-file": str(token_file),
            "purpose": purpose, "run-id": f"broker-{run_dir.name}", "strategy": spec.strategy,
            "rounds": spec.rounds, "min-nodes": spec.min_nodes, "epochs": spec.epochs or 0,
            "lr": spec.lr or 0.0, "batch-size": spec.batch_size or 0, "proximal-mu": spec.proximal_mu,
            "seed": spec.seed, "secagg": spec.secagg, "datasets": ",".join(spec.datasets),
            "task-config": json.dumps(dict(spec.task_config), sort_keys=True)}
        if spec.dp:
            config.update({"dp-clip": spec.dp["clip"], "dp-noise": spec.dp["noise"], "dp-delta": spec.dp["delta"]})
        config.update(self.extra)
        from incisive_lab.fl.run_config import RunConfig, RunConfigError

        try:
            RunConfig.from_mapping(config)
        except RunConfigError as exc:
            raise RunError(str(exc)) from None
        return config

    def _path(self, run_id: str) -> Path:
        if not run_id.isalnum() or len(run_id) > 64:
            raise RunNotFound(f"no run {run_id!r}")
        return self.root / run_id / "run.json"

    def _load(self, subject: str, run_id: str) -> RunRecord:
        doc = _read_json(self._path(run_id))
        if doc is None or doc.get("owner") != subject:
            raise RunNotFound(f"no run {run_id!r} of yours")
        return RunRecord(**doc)

    def _save(self, record: RunRecord) -> None:
        _write_json(self.root / record.run_id / "run.json", asdict(record))

    def _refresh(self, record: RunRecord) -> RunRecord:
        if record.status not in ("running", "stopping") or record.engine_id is None:
            return record
        run_dir = self.root / record.run_id
        # the engine first: the ServerApp writes result.json before its run ends, so once the
        # engine says the run ended, the result (if any) is there to read (read before asking,
        # a run ending in between looked like one that ended without a result)
        engine = self.launcher.status(record.engine_id)
        result = _read_json(run_dir / "result.json")
        if result is not None and result.get("status") == "finished":
            record.status = "finished"
        elif engine in ("failed", "stopped") or (result is not None and result.get("status") == "failed"):
            record.status = "stopped" if record.status == "stopping" or engine == "stopped" else "failed"
            error = _read_json(run_dir / "error.json") or {}
            record.error = (result or {}).get("error") or error.get("error") or f"the engine reports {engine}"
        elif engine == "finished" and result is None:
            record.status, record.error = "failed", "the run ended without a result"
        if record.status not in ("running", "stopping"):
            (run_dir / "token").unlink(missing_ok=True)
        if record.status not in ("running", "stopping") and not record.finished_recorded:
            with self._lock:
                model = run_dir / "model.pt"
                sha = hashlib.sha256(model.read_bytes()).hexdigest() if model.exists() else None
                self._record(f"user:{record.owner}", "finish" if record.status == "finished" else
                             "stop" if record.status == "stopped" else "fail", f"fl-run:{record.run_id}",
                             record.purpose, run_id=record.run_id, task_sha256=record.task_sha256,
                             model_sha256=sha, rounds=record.spec.get("rounds"),
                             nodes=sorted((result or {}).get("nodes", [])) or None,
                             privacy=(result or {}).get("privacy"))
                record.finished_recorded = True
        self._save(record)
        return record

    def _view(self, record: RunRecord) -> RunView:
        run_dir = self.root / record.run_id
        metrics: list[dict[str, Any]] = []
        try:
            with open(run_dir / "metrics.jsonl") as fh:
                for line in fh:
                    if line.endswith("\n"):  # a line still being written is read next time
                        metrics.append(json.loads(line))
        except FileNotFoundError:
            pass
        return RunView(run_id=record.run_id, status=record.status, task=record.task, task_sha256=record.task_sha256,
                       spec=record.spec, created=record.created, metrics=metrics,
                       result=_read_json(run_dir / "result.json"), error=record.error)

    def pass_on_token(self, subject: str, token: str, expires_at: int) -> int:
        """Give the user's running runs a token that expires later than the one they hold.

        A run sends its owner's access token to the nodes with every message, and access
        tokens are short-lived (minutes); the ServerApp reads the run's ``token`` file again
        for every round. The routes call this with the verified token of every request the
        owner makes about their runs — the Workbench asks while it waits for a run, through
        the gateway, which refreshes the user's token — so a run lasts as long as its owner's
        session does. A run whose owner is gone keeps its last token and fails, refused by
        the nodes, once that expires: nothing else stands in for the user.

        Returns
        -------
        int
            How many runs got the token.
        """
        passed = 0
        with self._lock:
            for path in self.root.glob("*/run.json"):
                doc = _read_json(path)
                if doc is None or doc.get("owner") != subject or doc.get("status") not in ("running", "stopping"):
                    continue
                record = RunRecord(**doc)
                token_file = path.parent / "token"
                if record.token_expires is not None and expires_at <= record.token_expires:
                    continue
                if not token_file.exists():
                    continue  # the run is ending: its token is gone, and stays gone
                write_atomic(token_file, token.encode(), private=True)
                record.token_expires = expires_at
                self._save(record)
                passed += 1
        return passed

    def get(self, subject: str, run_id: str) -> RunView:
        """The run, refreshed from the engine and its folder."""
        return self._view(self._refresh(self._load(subject, run_id)))

    def list(self, subject: str) -> list[RunView]:
        """The user's runs, newest first."""
        out = []
        for path in self.root.glob("*/run.json"):
            doc = _read_json(path)
            if doc is not None and doc.get("owner") == subject:
                out.append(self._view(self._refresh(RunRecord(**doc))))
        return sorted(out, key=lambda v: -v.created)

    def stop(self, subject: str, run_id: str) -> RunView:
        """Ask the engine to stop the run."""
        record = self._refresh(self._load(subject, run_id))
        if record.status == "running" and record.engine_id is not None:
            self.launcher.stop(record.engine_id)
            record.status = "stopping"
            self._save(record)
        return self._view(self._refresh(record))

    def model(self, subject: str, run_id: str) -> bytes:
        """The final model's bytes (only to the owner, only when finished); ledgered."""
        record = self._refresh(self._load(subject, run_id))
        path = self.root / run_id / "model.pt"
        if record.status != "finished" or not path.exists():
            raise RunNotFound(f"run {run_id} has no model yet (status: {record.status})")
        data = path.read_bytes()
        if self.ledger is not None:
            from incisive_lab.ledger import Event, Outcome

            self.ledger.append(Event(kind="access", actor=f"user:{subject}", action="retrieve",
                                     resource=f"fl-run:{run_id}/model.pt", purpose=record.purpose,
                                     outcome=Outcome.allow(), details={"bytes": len(data), "via": "broker",
                                                                       "format": "derived"}))
        return data


def _privacy(spec: RunSpec) -> str | None:
    parts = []
    if spec.dp:
        parts.append(f"client-side DP: clip {spec.dp['clip']:g}, noise multiplier {spec.dp['noise']:g}, "
                     f"delta {spec.dp['delta']:g}")
    if spec.secagg:
        parts.append("SecAgg+")
    return "; ".join(parts) or None
