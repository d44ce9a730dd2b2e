"""The instrumented seam: CohortReader lists and reads only the scope, and records reads.

One small federation (16 patients, sites a and b, b train-only) built by the real ingest for
this module; a withdrawal is recorded on it, so it is not shared with other modules.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from incisive_lab.fl.data import CohortReader, InstanceRef
from incisive_lab.fl.task import builtin, load
from incisive_lab.governance.scope import ReadScope
from incisive_lab.node.store import NodeStore
from tests.fl._nodes import SMALL, Federation, build_federation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return build_federation(tmp_path_factory.mktemp("fl-data") / "fed", **SMALL)


@pytest.fixture()
def store_a(fed: Federation) -> Iterator[NodeStore]:
    with NodeStore.open(fed.nodes["a"], durable=False) as store:
        yield store


def _lesion_patients(fed: Federation, site: str) -> int:
    return sum(1 for p in fed.truth[site]["patients"] if p["lesion"])


def test_train_scope_includes_train_only_datasets_and_view_scope_does_not(fed: Federation) -> None:
    from incisive_lab.governance.store import Governance
    from incisive_lab.ledger import Ledger

    scope = fed.train_scope("b")
    assert fed.visibility["b"] == "train-only"
    assert scope.cohorts.get("site-b")
    with NodeStore.open(fed.nodes["b"]) as store, Ledger.open(fed.nodes["b"]) as ledger:
        view = Governance(store.engine, ledger).read_scope(fed.requester, fed.purpose)
    assert not view.cohorts.get("site-b")


def test_reader_lists_patients_series_and_clinical_values_in_scope(fed: Federation) -> None:
    with fed.readers(("a",)) as readers:
        reader = readers["a"]
        patients = reader.patients()
        assert patients and all(d == "site-a" for d, _ in patients)
        # the consenting patients (the synthetic clinical data has non-consenting ones)
        assert {p for _, p in patients} == reader.scope.cohorts["site-a"]
        assert 0 < len(patients) <= len(fed.truth["a"]["patients"])
        assert reader.read_patients == set()  # listing reads nobody's data
        labels = reader.observations("lesion_label")
        assert set(labels) == set(patients)
        assert set(labels.values()) == {"present", "absent"}
        assert sum(v == "present" for v in labels.values()) <= _lesion_patients(fed, "a")
        paired = sum(1 for p in fed.truth["a"]["patients"] if p["cancer_type"] in ("lung", "breast"))
        assert set(reader.laterality().values()) <= {"left", "right"}
        assert 0 < len(reader.laterality()) <= paired
        assert reader.read_patients == set(labels)
        series = reader.series(modality="MG")
        assert series and all(s.modality == "MG" and len(s.instances) == 4 for s in series)
        chest = reader.series(modality="CT", body_part="chest")
        assert chest and all(s.body_part == "CHEST" for s in chest)
        assert reader.series(modality="XA") == []


def test_read_records_the_patient_and_calls_on_read(fed: Federation) -> None:
    seen: list[tuple[str, str, str]] = []
    with fed.readers(("a",), on_read=lambda *a: seen.append(a)) as readers:
        reader = readers["a"]
        ref = reader.series(modality="MG")[0].instances[0]
        ds = reader.read(ref)
        assert ds.Modality == "MG" and ds.pixel_array.shape == (640, 512)
        assert reader.read_patients == {(ref.dataset, ref.patient)}
        assert seen == [("a", ref.dataset, ref.patient)]


def test_reader_refuses_outside_the_scope(fed: Federation, store_a: NodeStore) -> None:
    everyone = CohortReader(store_a, fed.train_scope("a"))
    series = everyone.series()
    inside, outside = series[0], next(s for s in series if s.patient != series[0].patient)
    narrow = CohortReader(store_a, ReadScope(fed.purpose, {"site-a": frozenset({inside.patient})}))
    assert {p for _, p in narrow.patients()} == {inside.patient}
    assert {s.patient for s in narrow.series()} == {inside.patient}
    assert set(narrow.observations("lesion_label")) == {("site-a", inside.patient)}
    with pytest.raises(PermissionError, match=rf"dataset 'site-a', patient '{outside.patient}'"):
        narrow.read(outside.instances[0])
    # a forged reference naming an in-scope patient is judged by what the index says
    forged = InstanceRef("site-a", inside.patient, inside.study_uid, inside.series_uid,
                         outside.instances[0].sop_uid, 1, outside.instances[0].sha256)
    with pytest.raises(PermissionError, match=outside.patient):
        narrow.read(forged)
    unknown = InstanceRef("site-a", inside.patient, "1.2", "1.2.3", "1.2.3.4", 1, "0" * 64)
    with pytest.raises(PermissionError, match="not held by this node"):
        narrow.read(unknown)
    assert narrow.read_patients == {("site-a", inside.patient)}
    empty = CohortReader(store_a, ReadScope(fed.purpose, {}))
    assert empty.patients() == [] and empty.series() == [] and empty.observations("lesion_label") == {}
    with pytest.raises(PermissionError):
        empty.read(inside.instances[0])
    with pytest.raises(TypeError, match="scope"):
        CohortReader(store_a, {"site-a": {inside.patient}})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code_or_name"):
        narrow.observations("")


def test_a_tampered_object_is_not_parsed(fed: Federation, tmp_path: Path) -> None:
    node = tmp_path / "node"
    shutil.copytree(fed.nodes["a"], node)
    with NodeStore.open(node, durable=False) as store:
        reader = CohortReader(store, fed.train_scope("a"))
        ref = reader.series(modality="MG")[0].instances[0]
        path = store.object_path(ref.sha256)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.chmod(0o644)
        path.unlink()
        path.write_bytes(bytes(data))
        with pytest.raises(OSError, match="does not match"):
            reader.read(ref)
        assert reader.read_patients == set()


def test_a_withdrawn_patient_is_never_read_by_a_task(fed: Federation) -> None:
    with fed.readers(("a",)) as readers:
        mg = readers["a"].series(modality="MG")
    withdrawn = mg[0].patient
    fed.withdraw("a", withdrawn)
    scope = fed.train_scope("a")
    assert not scope.allows("site-a", withdrawn)
    reads: list[tuple[str, str, str]] = []
    for name in ("mg-lesion", "ct-nodule"):
        task = load(builtin(name))
        with fed.readers(on_read=lambda *a: reads.append(a)) as readers:
            for reader in readers.values():
                data = task.load_data(reader, {})
                assert withdrawn not in data.patients
                assert ("site-a", withdrawn) not in reader.read_patients
            with pytest.raises(PermissionError, match=withdrawn):
                readers["a"].read(mg[0].instances[0])
    assert reads and all(p != withdrawn for _, _, p in reads)
    assert {d for _, d, _ in reads} == {"site-a", "site-b"}  # the train-only site trained too
