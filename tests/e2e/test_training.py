"""Federated training from a notebook, through every real part: the researcher's sandboxed
kernel calls ``Workbench.train``; the gateway forwards to the broker, which submits the run
to the SuperLink; each node's SuperNode runs the ClientApp on its own consenting patients;
the model lands in the researcher's workspace. Each node's ledger shows its participation,
and task code its steward did not approve is refused there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.ledger import Ledger
from tests._support.hub_session import HubSession
from tests.e2e.conftest import password

pytestmark = pytest.mark.timeout(900)

SITES = {"hospital-a": "a", "hospital-b": "b", "central": "c"}


def _cell(session: HubSession, kernel: str, code: str) -> dict[str, Any]:
    result = session.execute(kernel, code, timeout=600)
    assert result.error is None, result.text + json.dumps(result.error)[:3000]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return out


def _fl_events(node_dir: Path, run_id: str) -> list[Any]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return [e.event for e in ledger.entries() if e.event.kind == "fl-run" and e.event.resource.endswith(run_id)]


@pytest.fixture(scope="module")
def kernel(workbench: dict[str, Any]) -> Any:
    with HubSession(workbench["hub_url"].rstrip("/"), "researcher", password(workbench, "researcher")) as s:
        s.login()
        s.start_server()
        yield s, s.start_kernel()


def test_a_researcher_trains_on_three_nodes_from_a_notebook_and_gets_the_model_in_the_workspace(
        workbench: dict[str, Any], kernel: Any) -> None:
    session, kid = kernel
    got = _cell(session, kid, """
import json, hashlib
from incisive_lab import Workbench
wb = Workbench(purpose='ai-development', progress=False)
run = wb.train('mg-lesion', rounds=2, min_nodes=3, epochs=2, task_config={'test_fraction': 0.0})
status = run.wait(timeout=540)
path = run.save_model() if status == 'finished' else None
print('RESULT ' + json.dumps({'run': run.run_id, 'status': status, 'error': run.state.get('error'),
      'history': run.history(), 'trained': run.history('train'), 'result': run.result,
      'path': str(path) if path else None,
      'sha': hashlib.sha256(path.read_bytes()).hexdigest() if path else None,
      'html': '<table>' in run._repr_html_()}))
""")
    # the demo's nodes hold a handful of mammography patients each: with the task's default
    # 40% test split, every one of them may hash into the test side; the run trains on all
    # (its accuracy against centralised training is tests/fl/test_federated_vs_centralised.py)
    assert got["status"] == "finished", got["error"]
    assert [h["round"] for h in got["history"]] == [1, 2]
    assert all(sum(m["num-examples"] for m in h["nodes"].values()) > 0 for h in got["trained"])
    for row in got["history"]:
        assert set(row["nodes"]) == set(SITES)  # the train-only site b takes part too
        assert all("error" not in m for m in row["nodes"].values()), row
    assert got["html"]
    # the model is in the workspace (the kernel wrote it there), as the run's result says
    assert got["path"].startswith("/workspace/models/")
    on_disk = Path(workbench["dir"]) / "stack" / "hub" / "workspaces" / "researcher" / got["path"].removeprefix(
        "/workspace/")
    assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == got["sha"] == got["result"]["model_sha256"]
    # each node ledgered its participation under the researcher, with the approved task's hash
    for site in SITES.values():
        events = _fl_events(Path(workbench["dir"]) / "nodes" / site, got["run"])
        actions = [e.action for e in events]
        assert "start" in actions and "finish" in actions, actions
        assert {e.actor for e in events} == {"user:researcher"}
        assert {e.details["task_sha256"] for e in events} == {got["result"]["task"]["sha256"]}
        assert all(e.outcome.decision == "allowed" for e in events)
    with Ledger.open(Path(workbench["dir"]) / "stack" / "broker", read_only=True) as ledger:
        broker = [e.event for e in ledger.entries() if got["run"] in e.event.resource]
    assert [e.action for e in broker if e.kind == "fl-run"][:1] == ["submit"]
    assert any(e.kind == "fl-run" and e.action == "finish" for e in broker)
    assert any(e.kind == "access" and e.action == "retrieve" for e in broker)


def test_task_code_no_steward_approved_is_refused_at_every_node_and_ledgered(
        workbench: dict[str, Any], kernel: Any) -> None:
    session, kid = kernel
    got = _cell(session, kid, """
import json
from incisive_lab import Workbench
from incisive_lab.fl.task import TaskCode, builtin
code = builtin('mg-lesion')
files = dict(code.files)
files['task.py'] = files['task.py'] + b'\\n# my own change: not what the stewards approved\\n'
mine = TaskCode(name=code.name, version=code.version, files=files)
wb = Workbench(purpose='ai-development', progress=False)
run = wb.train(mine, rounds=1, min_nodes=1)
status = run.wait(timeout=300)
print('RESULT ' + json.dumps({'run': run.run_id, 'status': status, 'error': run.state.get('error'),
      'sha': mine.sha256, 'metrics': run.metrics}))
""")
    assert got["status"] == "failed"
    for site in SITES.values():
        events = _fl_events(Path(workbench["dir"]) / "nodes" / site, got["run"])
        assert events, site
        assert all(e.outcome.decision == "denied" for e in events)
        assert {e.details.get("task_sha256") for e in events} == {got["sha"]}
