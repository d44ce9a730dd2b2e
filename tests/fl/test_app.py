"""The ClientApp's refusals: unapproved or tampered task code, bad tokens, no grant — ledgered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict  # noqa: E402
from flwr.app.message.message import make_message  # noqa: E402

from incisive_lab.fl.clientapp import ERROR_REFUSED, build_client_app  # noqa: E402
from incisive_lab.fl.serverapp import RunFailed  # noqa: E402
from tests.fl._app_env import AppEnv, app_env  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def env(tmp_path: Path, fed: Any) -> Iterator[AppEnv]:
    with app_env(tmp_path, fed, approve=("a", "b")) as e:  # hospital-c has not approved the task
        yield e


def _message(env: AppEnv, code: Any, *, sha: str | None = None, token: str | None = None,
             kind: str = "train") -> Message:
    from incisive_lab.fl.task import load

    model = load(env.code).build_model({"seed": 0})
    config = ConfigRecord({"run-id": "unit-1", "purpose": "ai-development", "token": (token or env.token()).encode(),
                           "task-code": code.to_bytes(), "task-sha256": sha or code.sha256, "server-round": 1,
                           "rounds": 1, "epochs": 1, "lr": 0.05, "batch-size": 16, "proximal-mu": 0.0, "seed": 0,
                           "task-config": "{}", "dp-clip": 0.0, "dp-noise": 0.0, "dp-delta": 1e-5})
    meta = Metadata(run_id=1, message_id="m-1", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=3600.0, message_type=kind)
    return make_message(meta, RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}))


def _call(env: AppEnv, site: str, msg: Message, **hooks: Any) -> Message:
    app = build_client_app(**hooks)
    context = Context(run_id=1, node_id=7, node_config=env.node_config(site), state=RecordDict(), run_config={})
    reply: Message = app(msg, context)
    return reply


def _denials(env: AppEnv, site: str) -> list[Any]:
    return [e for e in env.ledger(site) if not e.outcome.allowed]


def test_an_approved_task_trains_at_the_node(env: AppEnv) -> None:
    reply = _call(env, "a", _message(env, env.code))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert float(reply.content.metric_records["metrics"]["num-examples"]) > 0  # type: ignore[arg-type]
    assert reply.content.config_records["node"]["name"] == "hospital-a"


def test_an_unapproved_task_is_refused_and_ledgered(env: AppEnv) -> None:
    reads: list[Any] = []
    reply = _call(env, "c", _message(env, env.code), on_read=lambda *a: reads.append(a))
    assert reply.has_error() and reply.error.code == ERROR_REFUSED
    assert "hospital-c" in str(reply.error.reason) and "not approved" in str(reply.error.reason)
    assert not reads
    (denied,) = _denials(env, "c")
    assert (denied.action, denied.outcome.reason, denied.actor) == ("approve", "task-not-approved", "user:researcher")
    assert denied.details["task_sha256"] == env.code.sha256 and denied.details["run_id"] == "unit-1"


def test_a_run_goes_on_without_the_node_that_refuses(env: AppEnv) -> None:
    cfg = env.run_config("partial", rounds=1)
    result = env.runner().run(cfg)
    assert result["status"] == "finished" and result["nodes"] == ["hospital-a", "hospital-b"]
    train = json.loads((Path(cfg["out-dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert "not approved" in train["nodes"]["hospital-c"]["error"]
    assert [e.outcome.reason for e in _denials(env, "c")] == ["task-not-approved", "task-not-approved"]


def test_an_unapproved_task_fails_a_run_that_needs_every_node(env: AppEnv) -> None:
    with pytest.raises(RunFailed, match="not approved"):
        env.runner().run(env.run_config("strict", rounds=1, min_nodes=3))


def test_tampered_task_code_is_refused_before_it_is_loaded(env: AppEnv, tmp_path: Path) -> None:
    from incisive_lab.fl.task import TaskCode

    marker = tmp_path / "loaded"
    evil = env.task_dir.parent / "evil"
    evil.mkdir()
    source = (env.task_dir / "task.py").read_text()
    (evil / "task.py").write_text(source + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    tampered = TaskCode.from_dir(evil)
    reply = _call(env, "a", _message(env, tampered, sha=env.code.sha256))  # claims the approved hash
    assert reply.has_error() and reply.error.code == ERROR_REFUSED and "hashes to" in str(reply.error.reason)
    assert not marker.exists()
    (denied,) = _denials(env, "a")
    assert (denied.action, denied.outcome.reason) == ("approve", "task-hash-mismatch")
    # under its own hash it is simply not approved
    reply = _call(env, "a", _message(env, tampered))
    assert "not approved" in str(reply.error.reason) and not marker.exists()


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"exp": 1_000_000}, "token-expired"),
    ({"aud": "https://other-node.test/"}, "token-wrong-audience"),
    ({"acr": "http://eidas.europa.eu/LoA/low"}, "token-loa-too-low"),
])
def test_bad_tokens_are_refused_and_ledgered(env: AppEnv, overrides: dict[str, Any], reason: str) -> None:
    reply = _call(env, "a", _message(env, env.code, token=env.token(**overrides)))
    assert reply.has_error() and reply.error.code == ERROR_REFUSED
    (denied,) = _denials(env, "a")
    assert (denied.action, denied.outcome.reason, denied.actor) == ("start", reason, "anonymous")


def test_a_forged_token_is_refused(env: AppEnv) -> None:
    from tests.access.idp import TestKey, claims
    from tests.fl._app_env import AUDIENCE

    forged = TestKey.rsa("k1").sign(claims(env.issuer.issuer, sub="researcher", aud=AUDIENCE))
    reply = _call(env, "a", _message(env, env.code, token=forged))
    assert reply.has_error() and "bad-signature" in str(reply.error.reason)


def test_a_user_without_a_grant_is_refused(env: AppEnv) -> None:
    reply = _call(env, "a", _message(env, env.code, token=env.token(sub="someone-else")))
    assert reply.has_error() and reply.error.code == ERROR_REFUSED
    (denied,) = _denials(env, "a")
    assert (denied.action, denied.outcome.reason, denied.actor) == ("start", "no-grant", "user:someone-else")


def test_a_train_only_dataset_is_trained_on_but_never_viewable(env: AppEnv) -> None:
    from incisive_lab.governance.policy import Action
    from incisive_lab.governance.store import Governance
    from incisive_lab.ledger import Ledger
    from incisive_lab.node.store import NodeStore

    with NodeStore.open(env.nodes["b"]) as store, Ledger.open(env.nodes["b"]) as ledger:
        gov = Governance(store.engine, ledger)
        assert not gov.read_scope(env.fed.requester, "ai-development")  # view: train-only
        assert gov.read_scope(env.fed.requester, "ai-development", action=Action.TRAIN)
    reply = _call(env, "b", _message(env, env.code))
    assert not reply.has_error()


def test_a_revoked_approval_refuses_the_next_message(env: AppEnv) -> None:
    from incisive_lab.fl.approvals import TaskApprovals

    assert not _call(env, "a", _message(env, env.code)).has_error()
    TaskApprovals(env.nodes["a"]).revoke(env.code.sha256, steward="steward@hospital-a.example")
    reply = _call(env, "a", _message(env, env.code))
    assert reply.has_error() and "not approved" in str(reply.error.reason)


def test_a_misconfigured_node_refuses(env: AppEnv) -> None:
    app = build_client_app()
    context = Context(run_id=1, node_id=7, node_config={**env.node_config("a"), "issuer": "http://idp.example"},
                      state=RecordDict(), run_config={})
    reply = app(_message(env, env.code), context)
    assert reply.has_error() and "issuer" in str(reply.error.reason)

