"""Federated runs with the real ServerApp and ClientApp, in process, on real node stores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from incisive_lab.fl.serverapp import RunFailed  # noqa: E402
from tests.fl._app_env import AppEnv  # noqa: E402

torch.set_num_threads(1)

NODES = ("hospital-a", "hospital-b", "hospital-c")


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fedavg_run_writes_metrics_checkpoints_and_result(env: AppEnv) -> None:
    cfg = env.run_config("fedavg")
    result = env.runner().run(cfg)
    out = Path(cfg["out-dir"])
    assert result["status"] == "finished" and result["rounds_completed"] == 2
    assert result["strategy"] == "fedavg" and result["task"]["sha256"] == env.code.sha256
    assert result["nodes"] == list(NODES)  # the train-only site b trained too
    assert set(result["final"]["evaluate"]) >= {"accuracy", "loss"}
    model = (out / "model.pt").read_bytes()
    assert hashlib.sha256(model).hexdigest() == result["model_sha256"]
    state = torch.load(out / "model.pt")
    assert set(state) == {"1.weight", "1.bias"}
    for rnd in (1, 2):
        assert set(torch.load(out / "checkpoints" / f"round-{rnd:04d}.pt")) == set(state)
    assert torch.equal(torch.load(out / "checkpoints" / "round-0002.pt")["1.weight"], state["1.weight"])
    lines = _lines(out)
    assert [(x["round"], x["phase"]) for x in lines] == [
        (1, "train"), (1, "evaluate"), (1, "round"), (2, "train"), (2, "evaluate"), (2, "round")]
    train = lines[0]
    assert set(train["nodes"]) == set(NODES)
    for metrics in train["nodes"].values():
        assert metrics["num-examples"] > 0 and "train_loss" in metrics and "train-seconds" in metrics
    assert {"train_loss", "train_accuracy"} <= set(train["aggregated"])
    assert lines[2]["checkpoint"] == "checkpoints/round-0001.pt"
    assert result["final"]["evaluate"] == lines[4]["aggregated"]
    # each node's ledger: start, then a train and an evaluate round each round, finish
    for site in ("a", "b", "c"):
        events = [e for e in env.ledger(site) if e.details["run_id"] == "test-fedavg"]
        assert [(e.action, e.outcome.reason) for e in events] == [
            ("start", "grant"), ("round", "train"), ("round", "evaluate"), ("round", "train"),
            ("finish", "grant"), ("round", "evaluate")]
        start = events[0]
        assert start.actor == "user:researcher" and start.purpose == "ai-development"
        assert start.details["datasets"] == [f"site-{site}"] and start.details["cohort_size"] > 0
        assert start.details["task_sha256"] == env.code.sha256


def test_fedprox_run(env: AppEnv) -> None:
    cfg = env.run_config("fedprox", strategy="fedprox", proximal_mu=0.5)
    result = env.runner().run(cfg)
    assert result["status"] == "finished" and result["strategy"] == "fedprox"
    lines = _lines(Path(cfg["out-dir"]))
    # round 2 starts from a global model the nodes then move away from: the proximal term is live
    assert all(m["proximal_term"] > 0 for m in lines[3]["nodes"].values())


def test_fedprox_changes_the_model(env: AppEnv) -> None:
    a = env.runner().run(env.run_config("plain", rounds=1))
    b = env.runner().run(env.run_config("prox", rounds=1, strategy="fedprox", proximal_mu=5.0))
    assert a["model_sha256"] != b["model_sha256"]


def test_a_node_dropping_mid_run_is_tolerated(env: AppEnv) -> None:
    runner = env.runner()
    cfg = env.run_config("drop")
    result = runner.run(cfg, drop_after={"hospital-c": 2})  # answers round 1 (train, evaluate), then gone
    assert result["status"] == "finished" and result["rounds_completed"] == 2
    assert result["nodes"] == ["hospital-a", "hospital-b"]
    round2 = _lines(Path(cfg["out-dir"]))[3]
    assert round2["nodes"]["hospital-c"]["code"] == 5  # Flower's NODE_UNAVAILABLE
    assert set(round2["nodes"]) == set(NODES)


def test_the_run_fails_clearly_when_too_few_nodes_remain(env: AppEnv) -> None:
    cfg = env.run_config("fail", min_nodes=3)
    with pytest.raises(RunFailed, match=r"round 2 \(train\): 2 node\(s\) answered, min-nodes 3 needed"):
        env.runner().run(cfg, drop_after={"hospital-c": 2})
    result = json.loads((Path(cfg["out-dir"]) / "result.json").read_text())
    assert result["status"] == "failed" and result["rounds_completed"] == 1
    assert "hospital-c" in result["error"] and "unavailable" in result["error"]
    assert not (Path(cfg["out-dir"]) / "model.pt").exists()


def test_too_few_connected_nodes_fail_before_training(env: AppEnv) -> None:
    cfg = env.run_config("few", min_nodes=4)
    with pytest.raises(RunFailed, match=r"3 node\(s\) connected, min-nodes 4 needed"):
        env.runner().run(cfg)


def test_a_withdrawn_patient_is_never_read(env: AppEnv) -> None:
    from incisive_lab.governance.store import Governance
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.store import NodeStore

    runner = env.runner()
    runner.run(env.run_config("before", rounds=1))
    read_a = {p for n, d, p in env.reads if n == "hospital-a"}
    assert read_a
    gone = sorted(read_a)[0]
    with NodeStore.open(env.nodes["a"]) as store, Ledger.open(env.nodes["a"]) as ledger:
        Governance(store.engine, ledger).withdraw_patient("site-a", gone, steward="steward@hospital-a.example")
    env.reads.clear()
    result = runner.run(env.run_config("after", rounds=2))
    assert result["status"] == "finished"
    read_now = {p for n, d, p in env.reads if n == "hospital-a"}
    assert gone not in read_now and read_now == read_a - {gone}
    assert {n for n, _, _ in env.reads} == set(NODES)


def test_a_withdrawal_mid_run_takes_effect_at_the_next_message(env: AppEnv) -> None:
    """The scope is computed afresh for every message: withdraw after round 1's training."""
    from incisive_lab.fl.clientapp import build_client_app
    from incisive_lab.fl.runner import InProcessRunner
    from incisive_lab.governance.store import Governance
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.store import NodeStore

    state: dict[str, Any] = {"withdrawn": None, "after": set()}

    def hook(node: str, dataset: str, patient: str) -> None:
        if node != "hospital-a":
            return
        if state["withdrawn"] is None:
            state["first"] = patient
        else:
            state["after"].add(patient)

    app = build_client_app(on_read=hook)

    def client(msg: Any, context: Any) -> Any:
        reply = app(msg, context)
        name = context.node_config["node-name"]
        if name == "hospital-a" and msg.metadata.message_type == "train" and state["withdrawn"] is None:
            with NodeStore.open(env.nodes["a"]) as store, Ledger.open(env.nodes["a"]) as ledger:
                Governance(store.engine, ledger).withdraw_patient("site-a", state["first"],
                                                                  steward="steward@hospital-a.example")
            state["withdrawn"] = state["first"]
        return reply

    result = InProcessRunner(env.node_configs(), client_app=client).run(env.run_config("mid", rounds=2))
    assert result["status"] == "finished"
    assert state["after"] and state["withdrawn"] not in state["after"]


def test_query_answers_label_counts_under_the_floor_rules(env: AppEnv) -> None:
    cfg = env.run_config("query", mode="query")
    result = env.runner().run(cfg)
    assert result["status"] == "finished" and set(result["counts"]) == set(NODES)
    for answer in result["counts"].values():
        assert answer["floor"] == 3
        assert set(answer["counts"]) == {"absent", "present"}
        for value in answer["counts"].values():
            assert value == "<3" or (isinstance(value, int) and value >= 3)
    counted = env.ledger("a", kind="query")
    assert counted and counted[-1].action == "count" and counted[-1].details["floor"] == 3


def test_run_config_errors_name_the_key(env: AppEnv) -> None:
    from incisive_lab.fl.run_config import RunConfig, RunConfigError

    good = env.run_config("cfg")
    RunConfig.from_mapping(good)
    for bad, key in (({"rounds": 0}, "'rounds'"), ({"strategy": "fedsgd"}, "'strategy'"),
                     ({"strategy": "fedprox"}, "'proximal-mu'"), ({"dp-noise": 1.0}, "'dp-clip'"),
                     ({"fraction": 1.5}, "'fraction'"), ({"colour": "red"}, "colour"),
                     ({"task-name": "mg-lesion"}, "exactly one of 'task-name'"), ({"token": ""}, "'token'"),
                     ({"task-config": "[1]"}, "'task-config'"), ({"mode": "sing"}, "'mode'"),
                     ({"task-config": '{"lr": 1}'}, "'task-config': 'lr' is a setting of the run"),
                     ({"epochs": -1}, "'epochs'"), ({"lr": -0.1}, "'lr'"), ({"batch-size": 1.5}, "'batch-size'")):
        with pytest.raises(RunConfigError, match=key):
            RunConfig.from_mapping({**good, **bad})


def test_a_token_passed_on_mid_run_is_what_the_nodes_get_next(env: AppEnv) -> None:
    """The run's token file is read again for every round's messages: a token replaced while
    round 1 trains is the one round 1's evaluation carries (here one the nodes refuse: a
    user without grants, so the run fails there and the nodes' ledgers name that user)."""
    from incisive_lab.fl.clientapp import build_client_app
    from incisive_lab.fl.runner import InProcessRunner

    token_file = env.root / "run-token"
    token_file.write_text(env.token())
    replaced: list[str] = []

    def hook(node: str, dataset: str, patient: str) -> None:
        if not replaced:
            token_file.write_text(env.token(sub="mallory"))
            replaced.append(node)

    cfg = env.run_config("pass-on", rounds=2, min_nodes=3)
    del cfg["token"]
    cfg["token-file"] = str(token_file)
    with pytest.raises(RunFailed, match=r"round 1 \(evaluate\)"):
        InProcessRunner(env.node_configs(), client_app=build_client_app(on_read=hook)).run(cfg)
    for site in ("a", "b", "c"):
        events = [e for e in env.ledger(site) if e.details.get("run_id") == "test-pass-on"]
        assert [(e.actor, e.outcome.decision) for e in events][:2] == [("user:researcher", "allowed")] * 2
        assert events[-1].actor == "user:mallory" and events[-1].outcome.decision == "denied"
