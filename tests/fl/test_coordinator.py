"""The broker's bookkeeping of training runs, at the launcher seam (the engine itself is
exercised by test_federated_run.py): requests are checked field by field, runs are their
owner's only, and submissions, refusals, ends and model fetches are ledgered."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.fl.coordinator import Coordinator, RunError, RunNotFound, RunSpec
from incisive_lab.ledger import Ledger


class EngineAtTheSeam:
    """Records what it was asked to run; the test plays the ServerApp's part by writing the
    run folder's files, as the real one does."""

    def __init__(self) -> None:
        self.started: list[tuple[Path, dict[str, Any]]] = []
        self.states: dict[str, str] = {}

    def start(self, run_dir: Path, run_config: Mapping[str, Any]) -> str:
        self.started.append((run_dir, dict(run_config)))
        engine_id = str(len(self.started))
        self.states[engine_id] = "running"
        return engine_id

    def status(self, engine_id: str) -> str:
        return self.states[engine_id]

    def stop(self, engine_id: str) -> None:
        self.states[engine_id] = "stopped"


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    ledger = Ledger.open(tmp_path / "broker")
    engine = EngineAtTheSeam()
    yield Coordinator(tmp_path / "fl", engine, ledger=ledger), engine, ledger
    ledger.close()


def entries(ledger: Ledger, kind: str) -> list[Any]:
    return [e for e in ledger.entries() if e.event.kind == kind]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "task"),
    ({"task": "mg-lesion", "rounds": 0}, "rounds"),
    ({"task": "mg-lesion", "rounds": 2.5}, "rounds"),
    ({"task": "mg-lesion", "strategy": "fedsgd"}, "strategy"),
    ({"task": "mg-lesion", "lr": "fast"}, "lr"),
    ({"task": "mg-lesion", "dp": {"clip": 1.0}}, "dp"),
    ({"task": "mg-lesion", "dp": {"clip": -1, "noise": 1}}, "clip"),
    ({"task": "mg-lesion", "datasets": "site-a"}, "datasets"),
    ({"task": "mg-lesion", "task_code": "***"}, "task_code"),
    ({"task": "mg-lesion", "cohort_sql": "1=1"}, "cohort_sql"),
    ({"task": "mg-lesion", "secagg": "yes"}, "secagg"),
    ({"task": "mg-lesion", "epochs": 0}, "epochs"),
    ({"task": "mg-lesion", "task_config": [1]}, "task_config"),
    ({"task": "mg-lesion", "task_config": {"epochs": 50}}, "task_config: 'epochs' is a setting of the run"),
    ({"task": "mg-lesion", "task_config": {"a b": 1}}, "task_config: 'a b' is not a setting name"),
    ({"task": "mg-lesion", "task_config": {"x": {"nested": 1}}}, "task_config: 'x' must be"),
])
def test_a_bad_request_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(RunError, match=f"^{field}"):
        RunSpec.from_json(body)


def test_fedprox_gets_a_proximal_term_by_default_and_fedavg_none() -> None:
    assert RunSpec.from_json({"task": "t", "strategy": "fedprox"}).proximal_mu > 0
    assert RunSpec.from_json({"task": "t"}).proximal_mu == 0


def test_left_out_hyper_parameters_are_the_tasks_own_and_task_settings_reach_the_run(setup: Any) -> None:
    from incisive_lab.fl.clientapp import task_config
    from incisive_lab.fl.run_config import RunConfig
    from incisive_lab.fl.task import builtin, load

    coord, engine, _ = setup
    coord.submit("rita", "rita", "TOKEN", "ai-development",
                 {"task": "mg-lesion", "rounds": 1, "task_config": {"test_fraction": 0.25}})
    coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "mg-lesion", "rounds": 1, "epochs": 2,
                                                              "lr": 0.01})
    task = load(builtin("mg-lesion"))
    got = []
    for _, config in engine.started:
        sent = RunConfig.from_mapping(config).train_config()  # what every node's message carries
        got.append(task.config(task_config({**sent, "server-round": 1})))
    # nothing set: the task's tuned values (8 epochs, lr 0.003, batch 8), its own setting passed on
    assert (got[0]["epochs"], got[0]["lr"], got[0]["batch_size"], got[0]["test_fraction"]) == (8, 3e-3, 8, 0.25)
    assert (got[1]["epochs"], got[1]["lr"], got[1]["batch_size"], got[1]["test_fraction"]) == (2, 0.01, 8, 0.4)


def test_a_run_is_prepared_started_and_seen_only_by_its_owner(setup: Any) -> None:
    coord, engine, ledger = setup
    view = coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "mg-lesion", "rounds": 2})
    assert view.status == "running" and view.task == "mg-lesion" and len(view.task_sha256) == 64
    run_dir, config = engine.started[0]
    from incisive_lab.fl.task import TaskCode, builtin

    assert TaskCode.from_bytes((run_dir / "task.bin").read_bytes()).sha256 == builtin("mg-lesion").sha256
    assert config  # the run config the ServerApp gets
    with pytest.raises(RunNotFound):
        coord.get("mallory", view.run_id)
    with pytest.raises(RunNotFound):
        coord.model("mallory", view.run_id)
    assert [v.run_id for v in coord.list("rita")] == [view.run_id] and coord.list("mallory") == []
    [submitted] = entries(ledger, "fl-run")
    assert submitted.event.action == "submit" and submitted.event.outcome.decision == "allowed"
    assert submitted.event.actor == "user:rita"


def test_the_end_of_a_run_is_ledgered_once_with_the_model_hash_and_the_model_goes_to_its_owner(setup: Any) -> None:
    coord, engine, ledger = setup
    view = coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "mg-lesion", "rounds": 1})
    run_dir, _ = engine.started[0]
    with pytest.raises(RunNotFound, match="no model yet"):
        coord.model("rita", view.run_id)
    model = b"model bytes"
    (run_dir / "metrics.jsonl").write_text(json.dumps({"round": 1, "phase": "evaluate",
                                                       "aggregated": {"loss": 0.5, "accuracy": 0.8}}) + "\n"
                                           + '{"round": 2, "sta')  # a line being written: not read yet
    (run_dir / "model.pt").write_bytes(model)
    (run_dir / "result.json").write_text(json.dumps({"status": "finished", "nodes": ["b", "a"],
                                                     "model_sha256": hashlib.sha256(model).hexdigest()}))
    engine.states["1"] = "finished"
    for _ in range(2):
        got = coord.get("rita", view.run_id)
    assert got.status == "finished" and got.metrics == [{"round": 1, "phase": "evaluate",
                                                         "aggregated": {"loss": 0.5, "accuracy": 0.8}}]
    assert coord.model("rita", view.run_id) == model
    finished = [e for e in entries(ledger, "fl-run") if e.event.action == "finish"]
    assert len(finished) == 1 and finished[0].event.details["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert finished[0].event.details["nodes"] == ["a", "b"]
    [fetch] = entries(ledger, "access")
    assert fetch.event.action == "retrieve" and fetch.event.details["bytes"] == len(model)


def test_refusals_are_ledgered_and_nothing_starts(setup: Any) -> None:
    coord, engine, ledger = setup
    with pytest.raises(RunError, match="purpose"):
        coord.submit("rita", "rita", "TOKEN", "education", {"task": "mg-lesion"})
    with pytest.raises(RunError, match="unknown task"):
        coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "no-such-task"})
    assert engine.started == []
    refused = entries(ledger, "fl-run")
    assert [e.event.outcome.decision for e in refused] == ["denied", "denied"]


def test_a_run_the_engine_lost_is_failed_with_a_reason_and_a_stop_is_passed_on(setup: Any) -> None:
    coord, engine, _ = setup
    first = coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "mg-lesion"})
    engine.states["1"] = "finished"  # ended without writing a result
    lost = coord.get("rita", first.run_id)
    assert lost.status == "failed" and "without a result" in (lost.error or "")
    second = coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "mg-lesion"})
    assert coord.stop("rita", second.run_id).status == "stopped"


def test_a_fresher_token_of_the_owner_is_passed_on_to_their_running_runs_only(setup: Any) -> None:
    coord, engine, _ = setup
    mine = coord.submit("rita", "rita", "TOKEN-1", "ai-development", {"task": "mg-lesion"}, token_expires=1000)
    done = coord.submit("rita", "rita", "TOKEN-1", "ai-development", {"task": "mg-lesion"}, token_expires=1000)
    other = coord.submit("otto", "otto", "OTTO-1", "ai-development", {"task": "mg-lesion"}, token_expires=1000)
    dirs = {v.run_id: run_dir for v, (run_dir, _) in zip((mine, done, other), engine.started, strict=True)}
    engine.states["2"] = "failed"
    assert coord.get("rita", done.run_id).status == "failed"
    assert not (dirs[done.run_id] / "token").exists()  # an ended run's token is gone

    assert coord.pass_on_token("rita", "TOKEN-2", 1600) == 1
    assert (dirs[mine.run_id] / "token").read_text() == "TOKEN-2"
    assert oct((dirs[mine.run_id] / "token").stat().st_mode & 0o777) == "0o600"
    assert not (dirs[done.run_id] / "token").exists()  # not brought back
    assert (dirs[other.run_id] / "token").read_text() == "OTTO-1"  # another user's run: untouched
    # an older or equal token never replaces a fresher one
    assert coord.pass_on_token("rita", "TOKEN-OLD", 1200) == 0
    assert coord.pass_on_token("rita", "TOKEN-SAME", 1600) == 0
    assert (dirs[mine.run_id] / "token").read_text() == "TOKEN-2"


def test_the_server_app_reads_the_token_file_again_for_every_round(tmp_path: Path) -> None:
    from incisive_lab.fl.run_config import RunConfig

    token = tmp_path / "token"
    token.write_text("FIRST\n")
    cfg = RunConfig.from_mapping({"out-dir": str(tmp_path), "task-name": "mg-lesion", "token-file": str(token),
                                  "run-id": "r"})
    assert cfg.current_token() == "FIRST"
    token.write_text("SECOND")
    assert cfg.current_token() == "SECOND"
    token.unlink()  # the run is ending (its file removed): the token it started with
    assert cfg.current_token() == "FIRST"


def test_a_run_ending_while_it_is_looked_at_is_finished_not_failed(setup: Any) -> None:
    """The ServerApp writes result.json, then its run ends: a look in between must not take
    the run for one that ended without a result."""
    coord, engine, _ = setup
    view = coord.submit("rita", "rita", "TOKEN", "ai-development", {"task": "mg-lesion", "rounds": 1})
    run_dir, _ = engine.started[0]
    model = b"model"

    def ends_now(engine_id: str) -> str:  # the run finishes as the engine is asked
        (run_dir / "model.pt").write_bytes(model)
        (run_dir / "result.json").write_text(json.dumps({
            "status": "finished", "nodes": ["a"], "model_sha256": hashlib.sha256(model).hexdigest()}))
        return "finished"

    engine.status = ends_now  # type: ignore[method-assign]
    got = coord.get("rita", view.run_id)
    assert got.status == "finished" and got.error is None
