"""Training runs seen from a notebook: :meth:`Workbench.train` returns a :class:`TrainingRun`.

>>> run = wb.train("mg-lesion", rounds=5, strategy="fedprox")     # doctest: +SKIP
>>> run.wait()                     # a progress bar per round; returns the final status
>>> run                            # a table of per-round loss/accuracy (and a plot in Jupyter)
>>> path = run.save_model()        # the model lands in your workspace (never downloadable
...                                # except through the airlock)

Everything goes through the gateway to the broker (``/broker/fl/runs``); the nodes train on
their own consenting patients within your grants, and only model updates travel.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from incisive_lab.client import Workbench

__all__ = ["TrainingRun", "submit"]

_FINAL = ("finished", "failed", "stopped")


def submit(wb: Workbench, task: Any, cohort: Any = None, *, purpose: str | None = None,
           **options: Any) -> TrainingRun:
    """Submit a run (see :meth:`Workbench.train`)."""
    from incisive_lab.fl.task import TaskCode

    body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if isinstance(task, TaskCode):
        body["task"], body["task_code"] = task.name, base64.b64encode(task.to_bytes()).decode()
    elif isinstance(task, (str, Path)) and Path(task).is_dir():
        code = TaskCode.from_dir(Path(task))
        body["task"], body["task_code"] = code.name, base64.b64encode(code.to_bytes()).decode()
    elif isinstance(task, str):
        body["task"] = task
    else:
        raise TypeError(f"task: a built-in task name, a task directory or a TaskCode (got {type(task).__name__})")
    if cohort is not None:
        body["datasets"] = _datasets(cohort)
    chosen = wb._purpose(purpose)
    response = wb._request("POST", "/broker/fl/runs", purpose=chosen, what="training run", json=body)
    return TrainingRun(wb, response.json(), purpose=chosen)


def _datasets(cohort: Any) -> list[str]:
    """Dataset names from a list of names/references, a DatasetList or a CohortCount."""
    refs: list[Any]
    if hasattr(cohort, "refs"):
        refs = list(cohort.refs())
    elif hasattr(cohort, "datasets") and not isinstance(cohort, Mapping):
        refs = [getattr(d, "ref", None) or getattr(d, "dataset", d) for d in cohort.datasets]
    elif isinstance(cohort, str):
        refs = [cohort]
    elif isinstance(cohort, Sequence):
        refs = [getattr(d, "ref", d) for d in cohort]
    else:
        raise TypeError("cohort: a list of datasets ('node/dataset' or 'dataset'), a DatasetList or a CohortCount")
    out = []
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise TypeError(f"cohort: {ref!r} is not a dataset name")
        out.append(ref.rpartition("/")[2])
    return sorted(set(out))


class TrainingRun:
    """A federated training run: status, live metrics, the model.

    ``metrics`` holds the lines of the run's ``metrics.jsonl``: per round and phase
    (``train``, ``evaluate``, ``round``), the aggregate and every node's figures (see
    docs/fl.md for the fields).
    """

    def __init__(self, wb: Workbench, state: Mapping[str, Any], *, purpose: str | None = None) -> None:
        self._wb, self._purpose = wb, purpose
        self.state: dict[str, Any] = dict(state)

    @property
    def run_id(self) -> str:
        return str(self.state["run_id"])

    @property
    def status(self) -> str:
        return str(self.state["status"])

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return list(self.state.get("metrics") or [])

    @property
    def result(self) -> dict[str, Any] | None:
        return self.state.get("result")

    def __repr__(self) -> str:
        return f"TrainingRun({self.run_id!r}, task={self.state.get('task')!r}, status={self.status!r})"

    def refresh(self) -> TrainingRun:
        """Ask the broker for the current state."""
        self.state = self._wb._get_json(f"/broker/fl/runs/{self.run_id}", what=f"training run {self.run_id}",
                                        purpose=self._purpose)
        return self

    def stop(self) -> TrainingRun:
        """Stop the run at the SuperLink."""
        self.state = self._wb._request("POST", f"/broker/fl/runs/{self.run_id}/stop", purpose=self._purpose,
                                       what=f"training run {self.run_id}").json()
        return self

    def wait(self, timeout: float | None = None, *, poll: float = 2.0, progress: bool | None = None) -> str:
        """Wait for the run to end, with a progress bar over the rounds; returns the status.

        Raises ``TimeoutError`` after ``timeout`` seconds (the run goes on)."""
        from incisive_lab.client import _progress

        rounds = int(self.state.get("spec", {}).get("rounds") or 0) or None
        bar = _progress(self._wb.progress if progress is None else progress, rounds, f"run {self.run_id}")
        done, deadline = 0, None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                self.refresh()
                finished = sorted({int(m["round"]) for m in self.metrics if m.get("phase") == "evaluate"})
                if len(finished) > done:
                    bar.update(len(finished) - done)
                    done = len(finished)
                    last = self._last("evaluate")
                    if last:
                        bar.set_postfix(loss=f"{last.get('loss', float('nan')):.3f}",
                                        accuracy=f"{last.get('accuracy', float('nan')):.3f}")
                if self.status in _FINAL:
                    return self.status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run {self.run_id} still {self.status} after {timeout:g} s")
                time.sleep(poll)
        finally:
            bar.close()

    def _last(self, stage: str) -> dict[str, Any] | None:
        rows = [m for m in self.metrics if m.get("phase") == stage]
        return rows[-1].get("aggregated") if rows else None

    def history(self, stage: str = "evaluate") -> list[dict[str, Any]]:
        """Per round: ``{"round", "loss", "accuracy", ..., "nodes": {name: {...}}}`` for ``stage``
        (``"evaluate"`` or ``"train"``); a node that failed or refused shows ``{"error": ...}``."""
        out = []
        for m in self.metrics:
            if m.get("phase") == stage:
                out.append({"round": m.get("round"), **(m.get("aggregated") or {}), "nodes": m.get("nodes") or {}})
        return out

    def save_model(self, path: str | Path | None = None) -> Path:
        """Fetch the final model into the workspace (``<cwd>/models/<task>-<run_id>.pt`` by
        default); the file's SHA-256 is checked against the run's result."""
        if self.status != "finished":
            self.refresh()
        data = self._wb._request("GET", f"/broker/fl/runs/{self.run_id}/model", purpose=self._purpose,
                                 what=f"model of run {self.run_id}").content
        expected = (self.result or {}).get("model_sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise OSError(f"model of run {self.run_id}: its SHA-256 differs from the run's result; not saved")
        target = Path(path) if path is not None else Path.cwd() / "models" / f"{self.state.get('task')}-{self.run_id}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(data)
        tmp.replace(target)
        return target

    def plot(self) -> Any:
        """A matplotlib figure: loss and accuracy per round, aggregate and per node."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.history()
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            ax.plot([r["round"] for r in rows], [r.get(key) for r in rows], "k-o", label="federation")
            nodes = sorted({n for r in rows for n in r["nodes"]})
            for node in nodes:
                ax.plot([r["round"] for r in rows], [r["nodes"].get(node, {}).get(key) for r in rows], "--",
                        marker=".", label=node)
            ax.set_xlabel("round")
            ax.set_title(f"evaluation {key}")
        axes[1].legend(fontsize="small")
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        rows = self.history()
        head = (f"<b>run {html.escape(self.run_id)}</b> — task {html.escape(str(self.state.get('task')))}, "
                f"status <b>{html.escape(self.status)}</b>")
        if self.state.get("error"):
            head += f"<br><span style='color:#a00'>{html.escape(str(self.state['error']))}</span>"
        table = "".join(f"<tr><td>{r['round']}</td><td>{r.get('loss', float('nan')):.4f}</td>"
                        f"<td>{r.get('accuracy', float('nan')):.3f}</td><td>{len(r['nodes'])}</td></tr>"
                        for r in rows)
        out = (f"<div>{head}<table><tr><th>round</th><th>loss</th><th>accuracy</th><th>nodes</th></tr>"
               f"{table}</table>")
        if rows:
            try:
                fig = self.plot()
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=80)
                import matplotlib.pyplot as plt

                plt.close(fig)
                out += f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"
            except ImportError:
                pass
        return out + "</div>"
