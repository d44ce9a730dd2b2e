"""Task code (hash, bytes, loading), the default trainer (determinism, FedProx) and the two
built-in tasks learning on the synthetic federation (centralised, against the majority class).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from incisive_lab.fl.centralised import majority_baseline, pool, train_centralised
from incisive_lab.fl.task import (
    MAX_FILES,
    LocalData,
    Samples,
    TaskCode,
    TaskError,
    builtin,
    builtin_names,
    load,
    split_by_patient,
    train_supervised,
)
from tests.fl._nodes import Federation, shared_federation

torch.set_num_threads(1)

TINY = b'''
NAME = "tiny"
VERSION = "0.1"
import torch
from incisive_lab.fl.task import LocalData, Samples

STATE = {"loaded": 0}
STATE["loaded"] += 1

def build_model(config):
    torch.manual_seed(int(config.get("seed", 0)))
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))

def load_data(reader, config):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return LocalData(Samples(x[:30], y[:30]), Samples(x[30:], y[30:]), frozenset({"p"}),
                     frozenset({"d"}))
'''


def tiny() -> TaskCode:
    return TaskCode("tiny", "0.1", {"task.py": TINY, "defaults.json": b'{"epochs": 2}'})


# ----------------------------------------------------------------------- task code


def test_hash_is_stable_and_bytes_are_deterministic() -> None:
    a, b = builtin("mg-lesion"), builtin("mg-lesion")
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    assert a.to_bytes() == b.to_bytes()
    back = TaskCode.from_bytes(a.to_bytes())
    assert back == a and back.sha256 == a.sha256 and back.to_bytes() == a.to_bytes()
    assert builtin("ct-nodule").sha256 != a.sha256
    assert builtin_names() == ["ct-nodule", "mg-lesion"]
    reordered = TaskCode("tiny", "0.1", dict(reversed(list(tiny().files.items()))))
    assert reordered.sha256 == tiny().sha256 and reordered.to_bytes() == tiny().to_bytes()


def test_hash_changes_with_any_byte_name_version_or_path() -> None:
    # task.py is parsed (a flip may make it unparsable, hence refused); helper.py is not
    code = TaskCode("tiny", "0.1", {"task.py": b"X = 1\n", "helper.py": TINY,
                                    "defaults.json": b'{"epochs": 2}'})
    seen = {code.sha256}
    refused = 0
    for path, content in code.files.items():
        for i in range(len(content)):
            changed = bytearray(content)
            changed[i] ^= 0x01
            try:
                variant = TaskCode("tiny", "0.1", {**code.files, path: bytes(changed)})
            except TaskError:
                assert path == "task.py"
                refused += 1
                continue
            assert variant.sha256 not in seen, (path, i)
            seen.add(variant.sha256)
    assert len(seen) + refused == 1 + sum(len(c) for c in code.files.values())
    assert len(seen) > len(TINY)
    renamed = {"task.py": code.files["task.py"], "defaults2.json": code.files["defaults.json"]}
    # framing: moving a byte from one file's end to the next file's start changes the hash
    split_a = TaskCode("x", "1", {"a.py": b"ab", "b.py": b"c", "task.py": b""})
    split_b = TaskCode("x", "1", {"a.py": b"a", "b.py": b"bc", "task.py": b""})
    others = [TaskCode("tiny", "0.1", renamed), TaskCode("tiny", "0.1", {"task.py": TINY}),
              split_a, split_b, TaskCode("x", "2", {"a.py": b"ab", "b.py": b"c", "task.py": b""}),
              TaskCode("y", "1", {"a.py": b"ab", "b.py": b"c", "task.py": b""})]
    assert len({c.sha256 for c in others} | {code.sha256}) == len(others) + 1


@pytest.mark.parametrize(("data", "message"), [
    ("text", "data: expected bytes"),
    (b"\xff\xfe", "data: not a serialised task"),
    (b"[1, 2]", "format"),
    (b'{"format": "other/1"}', "format 'other/1'"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", "files": [], "sha256": ""}',
     "files must be an object"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", "files": {}, "extra": 1}',
     "unknown fields"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", "files": {"task.py": "!!"}}',
     "not valid base64"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", "files": {}}',
     "must contain task.py"),
    (b'{"format": "incisive-fl-task/1", "name": "", "version": "1", "files": {"task.py": ""}}',
     "name:"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": 1, "files": {"task.py": ""}}',
     "version:"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", '
     b'"files": {"task.py": "", "../up.py": ""}}', "not a plain relative POSIX path"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", '
     b'"files": {"task.py": "", "/abs.py": ""}}', "not a plain relative POSIX path"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", '
     b'"files": {"task.py": "", "run.sh": ""}}', "only .py, .json"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", '
     b'"files": {"task.py": "/w=="}}', "not UTF-8"),
    (b'{"format": "incisive-fl-task/1", "name": "x", "version": "1", '
     b'"files": {"task.py": ""}, "sha256": "00"}', "does not match the content"),
])
def test_from_bytes_rejects_bad_input_clearly(data: Any, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        TaskCode.from_bytes(data)


def test_task_code_checks_its_fields() -> None:
    with pytest.raises(TaskError, match=r"version: '0.2' differs from task.py's VERSION"):
        TaskCode("tiny", "0.2", {"task.py": TINY})
    with pytest.raises(TaskError, match=r"task\.py does not parse"):
        TaskCode("x", "1", {"task.py": b"def ("})
    with pytest.raises(TaskError, match="at most"):
        TaskCode("x", "1", {"task.py": b"", **{f"f{i}.py": b"" for i in range(MAX_FILES)}})
    with pytest.raises(TaskError, match="content must be bytes"):
        TaskCode("x", "1", {"task.py": "text"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="known: ct-nodule, mg-lesion"):
        builtin("nope")


def test_from_dir_reads_py_and_json_and_refuses_links_and_other_files(tmp_path: Path) -> None:
    d = tmp_path / "t"
    (d / "sub").mkdir(parents=True)
    (d / "task.py").write_bytes(TINY)
    (d / "sub" / "helper.py").write_text("X = 1\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\0")
    code = TaskCode.from_dir(d)
    assert (code.name, code.version) == ("tiny", "0.1")
    assert sorted(code.files) == ["sub/helper.py", "task.py"]
    (d / "notes.txt").write_text("hi")
    with pytest.raises(TaskError, match=r"notes\.txt: only \.py, \.json"):
        TaskCode.from_dir(d)
    (d / "notes.txt").unlink()
    os.symlink(d / "task.py", d / "link.py")
    with pytest.raises(TaskError, match=r"link\.py is a symbolic link"):
        TaskCode.from_dir(d)
    with pytest.raises(TaskError, match="not a directory"):
        TaskCode.from_dir(tmp_path / "missing")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "task.py").write_text("def build_model(c): pass\n")
    with pytest.raises(TaskError, match="declares no NAME/VERSION"):
        TaskCode.from_dir(bare)
    assert TaskCode.from_dir(bare, name="bare", version="1").name == "bare"


def test_load_runs_the_code_in_a_fresh_namespace() -> None:
    before = set(sys.modules)
    one, two = load(tiny()), load(tiny())
    assert one.module is not two.module
    assert one.module.STATE == {"loaded": 1} and two.module.STATE == {"loaded": 1}
    assert one.module.__name__ not in sys.modules
    assert {m for m in set(sys.modules) - before if "task" in m and "incisive_fl" in m} == set()
    assert one.sha256 == tiny().sha256 and one.module.TASK_FILES["defaults.json"] == b'{"epochs": 2}'
    with pytest.raises(TaskError, match="defines no build_model"):
        load(TaskCode("x", "1", {"task.py": b"def load_data(r, c): pass\n"}))
    with pytest.raises(TaskError, match="code: expected a TaskCode"):
        load(tiny().to_bytes())  # type: ignore[arg-type]


# ----------------------------------------------------------------------- the trainer


def _tiny_data() -> tuple[Any, LocalData]:
    task = load(tiny())
    return task, task.load_data(None, {})  # type: ignore[arg-type]  # the tiny task reads nothing


def test_training_is_deterministic_given_a_seed() -> None:
    task, data = _tiny_data()
    states = []
    for seed in (3, 3, 4):
        model = task.build_model({"seed": 0})
        metrics = task.train(model, data, {"seed": seed, "epochs": 3, "batch_size": 8})
        assert metrics["num_examples"] == 30 and 0.0 <= metrics["train_accuracy"] <= 1.0
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    ev = task.evaluate(model, data)
    assert ev["num_examples"] == 10 and set(ev) == {"loss", "accuracy", "num_examples"}
    assert task.label_counts(data) == {
        "negative": int((data.train.y == 0).sum() + (data.test.y == 0).sum()),
        "positive": int((data.train.y == 1).sum() + (data.test.y == 1).sum())}


def test_fedprox_proximal_term_changes_training_and_pulls_towards_the_global_model() -> None:
    task, data = _tiny_data()
    global_model = task.build_model({"seed": 9})
    global_state = {k: v.clone() for k, v in global_model.state_dict().items()}

    def run(mu: float) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        model = task.build_model({"seed": 9})
        metrics = task.train(model, data, {"seed": 1, "epochs": 5, "lr": 0.05, "proximal_mu": mu},
                             global_state=global_state)
        return model.state_dict(), metrics

    def distance(state: dict[str, torch.Tensor]) -> float:
        return float(sum(((state[k] - global_state[k]) ** 2).sum() for k in state))

    plain, m0 = run(0.0)
    prox, m1 = run(5.0)
    assert m0["proximal_term"] == 0.0 and m1["proximal_term"] > 0.0
    assert not all(torch.equal(plain[k], prox[k]) for k in plain)
    assert distance(prox) < distance(plain)
    with pytest.raises(ValueError, match="global_state"):
        task.train(task.build_model({}), data, {"proximal_mu": 0.1})
    with pytest.raises(ValueError, match=r"config\['epochs'\]"):
        train_supervised(task.build_model({}), data, {"epochs": "two"})


def test_split_by_patient_is_per_patient_and_deterministic() -> None:
    keys = [("site-a", f"PSN-{i}") for i in range(200)]
    train, test = split_by_patient(keys, 0.4)
    assert train.isdisjoint(test) and train | test == set(keys)
    assert 0.25 < len(test) / 200 < 0.55
    _, sub_test = split_by_patient(keys[:50], 0.4)
    assert sub_test == test & set(keys[:50])  # a patient's side does not depend on the others
    assert split_by_patient(keys, 0.4, salt="x") != (train, test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_patient(keys, 1.0)


def test_pool_and_majority_baseline() -> None:
    a = LocalData(Samples(torch.zeros(2, 1), torch.tensor([0, 1])), Samples(torch.zeros(3, 1), torch.tensor([0, 0, 1])),
                  frozenset({"p1"}), frozenset({"d1"}))
    b = LocalData(Samples(torch.zeros(1, 1), torch.tensor([1])), Samples(torch.zeros(1, 1), torch.tensor([0])),
                  frozenset({"p2"}), frozenset({"d2"}))
    both = pool([a, b])
    assert len(both.train) == 3 and len(both.test) == 4 and both.patients == {"p1", "p2"}
    assert majority_baseline(both) == 0.75


# ----------------------------------------------------------------------- the built-in tasks


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return shared_federation(tmp_path_factory)


@pytest.fixture(scope="module")
def readers(federation: Federation) -> Iterator[list[Any]]:
    with federation.readers() as opened:
        yield list(opened.values())


def _truth_labels(federation: Federation, cancer: str) -> int:
    return sum(1 for site in federation.truth for p in federation.truth[site]["patients"]
               if p["cancer_type"] == cancer and p["lesion"])


@pytest.mark.parametrize(("name", "cancer", "rounds"), [("mg-lesion", "breast", 8),
                                                         ("ct-nodule", "lung", 8)])
def test_builtin_task_learns_well_above_the_majority_class(
        federation: Federation, readers: list[Any], name: str, cancer: str, rounds: int) -> None:
    task = load(builtin(name))
    result = train_centralised(task, readers, {"seed": 0}, rounds=rounds)
    baseline, final = result["majority_baseline"], result["final"]["accuracy"]
    print(f"{name}: accuracy {final:.3f} vs majority {baseline:.3f} "
          f"({result['num_train']} train / {result['num_test']} test samples)")
    assert result["num_test"] >= 12 and 0.5 <= baseline < 1.0
    # clearly above: at least half of the way from the majority class to perfect
    assert final >= baseline + (1.0 - baseline) / 2, result["rounds"]
    # positives are the lesion side's images / lungs of the patients with a lesion
    positives = result["label_counts"][task.module.CLASSES[1]]
    assert positives >= _truth_labels(federation, cancer) * (2 if cancer == "breast" else 1)
    # the per-site data is what a node trains on: every site contributes, train-only b too
    parts = [task.load_data(r, {}) for r in readers]
    assert all(len(p.train) > 0 for p in parts)
    assert {d for p in parts for d in p.datasets} == {"site-a", "site-b", "site-c"}
