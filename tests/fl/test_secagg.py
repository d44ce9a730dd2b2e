"""SecAgg+ (flwr's legacy workflow and mod, bridged to this app) gives FedAvg's aggregate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from tests.fl._app_env import AppEnv  # noqa: E402

torch.set_num_threads(1)


def test_secagg_aggregate_equals_fedavg(env: AppEnv) -> None:
    runner = env.runner(record_reads=False)
    plain_cfg = env.run_config("plain", rounds=1)
    secure_cfg = env.run_config("secure", rounds=1, secagg=True, secagg_max_weight=8.0, secagg_clip=8.0)
    plain, secure = runner.run(plain_cfg), runner.run(secure_cfg)
    assert plain["status"] == secure["status"] == "finished" and secure["secagg"] is True
    a = torch.load(Path(plain_cfg["out-dir"]) / "model.pt")
    b = torch.load(Path(secure_cfg["out-dir"]) / "model.pt")
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), (k, float((a[k] - b[k]).abs().max()))
    assert not torch.equal(a["1.weight"], b["1.weight"])  # it did go through quantisation and masking
    # four exchanges (setup, key shares, masked vectors, unmasking) with each node, then evaluation
    grid = runner.last_grid
    assert [t for n, t in grid.delivered if n == "hospital-a"] == ["train"] * 4 + ["evaluate"]
    lines = [json.loads(x) for x in (Path(secure_cfg["out-dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert set(lines[0]["nodes"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert lines[0]["aggregated"]["train_loss"] == pytest.approx(
        json.loads((Path(plain_cfg["out-dir"]) / "metrics.jsonl").read_text().splitlines()[0])["aggregated"][
            "train_loss"])


def test_secagg_with_dp_and_a_refusing_node(env: AppEnv) -> None:
    from incisive_lab.fl.approvals import TaskApprovals

    TaskApprovals(env.nodes["c"]).revoke(env.code.sha256, steward="steward@hospital-c.example")
    cfg = env.run_config("secure-dp", rounds=1, secagg=True, dp_clip=1.0, dp_noise=0.5, min_nodes=2)
    result = env.runner(record_reads=False).run(cfg)
    assert result["status"] == "finished" and result["nodes"] == ["hospital-a", "hospital-b"]
    assert result["epsilon"] > 0
