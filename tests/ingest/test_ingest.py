"""Provider ingest end to end: a synthetic federation into real node directories.

Real parts throughout: the synthetic generator's DICOM and spreadsheets, the curation
checks, the de-identifier, the SQLite node store, fhir.resources validation, the ledger.
Interruptions are real ``SIGKILL`` s of a real ``incisive-lab ingest`` process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from incisive_lab.deid import write_secret_file
from incisive_lab.ledger import Ledger
from incisive_lab.node.ingest import ingest
from incisive_lab.node.store import NodeStore

PATIENTS, SEED = 6, 3


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sites of synthetic raw data (PHI-laden), generated once for this module."""
    from incisive_lab.dicom.synth import generate

    out = tmp_path_factory.mktemp("federation") / "raw"
    generate(out, patients=PATIENTS, seed=SEED)
    return out


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secret_file(tmp_path_factory.mktemp("keys") / "provider.key")


def _files(site: Path) -> list[Path]:
    return sorted(p for p in (site / "dicom").rglob("*") if p.is_file())


def _ingest(node: Path, federation: Path, site: str, key: Path | None, **kw: Any) -> Any:
    return ingest(node, dataset=f"site-{site}", dicom=federation / site / "dicom",
                  clinical=federation / site / "clinical.xlsx", hosting="federated" if key else "central",
                  secret_file=key, country="GR", **kw)


@pytest.fixture(scope="module")
def nodes(federation: Path, key: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Sites a and b ingested into their own federated nodes, site c anonymised into a central node."""
    base = tmp_path_factory.mktemp("nodes")
    out = {}
    for site, k in (("a", key), ("b", key), ("c", None)):
        node = base / f"node-{site}"
        out[site] = (node, _ingest(node, federation, site, k, jobs=2))
    return out


def test_index_counts_equal_the_files_and_objects_are_the_index(nodes: dict[str, Any], federation: Path) -> None:
    for site, (node, summary) in nodes.items():
        files = _files(federation / site)
        assert summary.files_seen == len(files)
        assert summary.instances_stored + summary.files_quarantined + summary.files_failed == len(files)
        assert summary.instances_stored > 0
        with NodeStore.open(node) as store:
            counts = store.counts(dataset=f"site-{site}")
            assert counts.instances == summary.instances_stored
            stored = {row.sha256 for st in store.index.studies(dataset=f"site-{site}")
                      for row in store.index.instances(study_uid=st.study_uid)}
            assert len(stored) == counts.instances
            assert all(store.has_object(sha) for sha in stored)
            assert not store.verify_objects(), "every object's bytes match its name"


def test_fhir_is_valid_linked_to_imaging_and_shares_the_dicom_pseudonym(nodes: dict[str, Any]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    node, _ = nodes["a"]
    with NodeStore.open(node) as store:
        studies = {st.study_uid: st for st in store.index.studies(dataset="site-a")}
        patients = {st.patient_id for st in studies.values()}
        by_type = store.fhir.counts_by_type(dataset="site-a")
        for rtype in ("Patient", "Condition", "Observation", "ImagingStudy", "Consent"):
            assert by_type.get(rtype, 0) > 0, rtype
        for rtype in by_type:
            for res in store.fhir.search(rtype):
                get_fhir_model_class(rtype).model_validate(res)  # raises if invalid
        fhir_patients = {r["id"] for r in store.fhir.search("Patient")}
        assert fhir_patients == patients, "the same patients, by the same pseudonym, in DICOM and FHIR"
        assert all(p.startswith("PSN-") for p in patients)
        linked = 0
        for res in store.fhir.search("ImagingStudy"):
            uid = next(i["value"] for i in res["identifier"] if i["system"] == "urn:dicom:uid")
            study = studies[uid.removeprefix("urn:oid:")]
            assert res["subject"]["reference"] == f"Patient/{study.patient_id}"
            linked += 1
        assert linked == len(studies)
        # and in the stored DICOM bytes themselves
        some = store.index.instances(study_uid=next(iter(studies)))[0]
        ds = pydicom.dcmread(store.object_path(some.sha256), stop_before_pixels=True)
        assert ds.PatientID == studies[str(ds.StudyInstanceUID)].patient_id


def test_same_patient_same_pseudonym_across_sites_and_runs(nodes: dict[str, Any]) -> None:
    """Federated nodes share the provider's key here, so a pseudonym is a function of the patient."""
    a = NodeStore.open(nodes["a"][0])
    b = NodeStore.open(nodes["b"][0])
    with a, b:
        pa = {st.patient_id for st in a.index.studies()}
        pb = {st.patient_id for st in b.index.studies()}
    assert pa and pb and not pa & pb  # different patients at different sites


def test_central_hosting_is_anonymised_and_keeps_no_vault(nodes: dict[str, Any]) -> None:
    node, _summary = nodes["c"]
    with NodeStore.open(node) as store:
        patients = {st.patient_id for st in store.index.studies()}
        assert patients and all(p.startswith("ANO-") for p in patients)
        assert {r["id"] for r in store.fhir.search("Patient")} == patients
    assert not (node / "private" / "vault.sqlite").exists()
    assert not list((node / "private" / "runs").glob("*.salt")), "the one-time salt is destroyed at the end"


def test_central_rerun_adds_nothing_not_even_new_anonymous_patients(nodes: dict[str, Any], federation: Path) -> None:
    node, _ = nodes["c"]
    with NodeStore.open(node) as store:
        before = store.digest()
    again = _ingest(node, federation, "c", None, jobs=1)
    assert again.instances_stored == 0 and again.fhir_resources == 0
    with NodeStore.open(node) as store:
        assert store.digest() == before


def test_ledger_records_the_deidentification_and_the_ingest(nodes: dict[str, Any]) -> None:
    node, summary = nodes["a"]
    with Ledger.open(node, read_only=True) as ledger:
        entries = [e.event for e in ledger.entries()]
        assert ledger.verify().ok
    kinds = [(e.kind, e.action) for e in entries]
    assert ("deidentify", "pseudonymise") in kinds and ("ingest", "ingest") in kinds
    ing = next(e for e in entries if e.kind == "ingest")
    assert ing.resource == "dataset:site-a" and ing.details["instances"] == summary.instances_stored
    assert ing.details["hosting"] == "node"


def test_dataset_record_and_reports(nodes: dict[str, Any]) -> None:
    node, summary = nodes["a"]
    record = json.loads((node / "datasets" / "site-a.json").read_text())
    assert record["@type"] == "dcat:Dataset" and record["dct:identifier"] == "site-a"
    assert record["dct:spatial"]["@id"].endswith("/GRC")
    text = json.dumps(record)
    assert "PSN-" not in text, "the public record names no patient"
    for name in ("curation_json", "curation_html", "deidentification", "clinical"):
        assert Path(summary.reports[name]).is_file(), name
    assert "<html" in Path(summary.reports["curation_html"]).read_text().lower()


def test_rerun_adds_nothing(nodes: dict[str, Any], federation: Path, key: Path) -> None:
    node, _ = nodes["b"]
    with NodeStore.open(node) as store:
        before = store.digest()
    record = (node / "datasets" / "site-b.json").read_bytes()
    again = _ingest(node, federation, "b", key, jobs=1)
    assert again.instances_stored == 0 and again.fhir_resources == 0
    assert again.files_already_stored == again.files_seen - again.files_quarantined
    with NodeStore.open(node) as store:
        assert store.digest() == before
    assert (node / "datasets" / "site-b.json").read_bytes() == record


def test_new_patients_later_are_appended_under_their_pseudonyms(federation: Path, key: Path, tmp_path: Path) -> None:
    """Half a site's patients first, the rest later: the second run adds exactly the rest."""
    src = federation / "a" / "dicom"
    patients = sorted(p for p in src.iterdir() if p.is_dir())
    assert len(patients) >= 2, "the generator lays out one folder per patient"
    first = tmp_path / "first" / "dicom"
    first.mkdir(parents=True)
    for p in patients[: len(patients) // 2]:
        os.symlink(p, first / p.name)
    node = tmp_path / "node"
    one = ingest(node, dataset="a", dicom=first, clinical=None, hosting="federated", secret_file=key)
    whole = ingest(node, dataset="a", dicom=src, clinical=None, hosting="federated", secret_file=key)
    clean = ingest(tmp_path / "clean", dataset="a", dicom=src, clinical=None, hosting="federated", secret_file=key)
    assert one.instances_stored + whole.instances_stored == clean.instances_stored
    with NodeStore.open(node) as s1, NodeStore.open(tmp_path / "clean") as s2:
        assert s1.digest() == s2.digest()


# --- interruptions ------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from incisive_lab.node.ingest import ingest
    node, src, sheet, key, kill_at = sys.argv[1:6]
    def step(name):
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    ingest(node, dataset="site-a", dicom=src, clinical=sheet, hosting="federated", secret_file=key,
           jobs=2, country="GR", after_step=step)
    """
)


def _digest(node: Path) -> str:
    with NodeStore.open(node) as store:
        return store.digest()


@pytest.fixture(scope="module")
def clean_digest(federation: Path, key: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    node = tmp_path_factory.mktemp("clean") / "node"
    _ingest(node, federation, "a", key, jobs=2)
    return _digest(node)


def _no_partial_files(node: Path) -> None:
    objects = node / "objects"
    for p in objects.rglob("*"):
        rel = p.relative_to(objects).parts
        if p.is_file() and len(rel) == 2 and rel[0] != "tmp":  # objects/<aa>/<sha256>.dcm
            assert p.suffix == ".dcm" and len(p.stem) == 64, p
            pydicom.dcmread(p, stop_before_pixels=True)  # complete, readable


@pytest.mark.parametrize("kill_at", ["scan", "curation", "deidentify", "store", "fhir", "dataset", "ledger"])
def test_kill_9_after_each_step_then_rerun_equals_a_clean_run(
    kill_at: str, federation: Path, key: Path, tmp_path: Path, clean_digest: str
) -> None:
    node = tmp_path / "node"
    site = federation / "a"
    args = [str(node), str(site / "dicom"), str(site / "clinical.xlsx"), str(key), kill_at]
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    _no_partial_files(node)
    summary = _ingest(node, federation, "a", key, jobs=2)
    assert summary.resumed
    assert _digest(node) == clean_digest
    with Ledger.open(node, read_only=True) as ledger:
        actions = [e.event.action for e in ledger.entries() if e.event.kind == "ingest"]
    assert actions[-1] == "resume"


def test_kill_9_at_random_moments_then_rerun_equals_a_clean_run(
    federation: Path, key: Path, tmp_path: Path, clean_digest: str
) -> None:
    rng = random.Random(20261122)
    site = federation / "a"
    node = tmp_path / "node"
    cmd = [sys.executable, "-m", "incisive_lab.cli", "ingest", "--node-dir", str(node), "--dataset", "site-a",
           "--dicom", str(site / "dicom"), "--clinical", str(site / "clinical.xlsx"), "--hosting", "federated",
           "--secret-file", str(key), "--jobs", "2", "--country", "GR"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
    full = time.perf_counter() - started
    import shutil

    kills, upper = 0, 0.8
    while not kills:  # a run that ends before its kill time is no interruption: start over, sooner
        assert upper > 0.05, "no run could be interrupted"
        shutil.rmtree(node)
        for _ in range(4):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
            try:
                proc.wait(timeout=rng.uniform(0.1, upper) * full)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            _no_partial_files(node)
        upper /= 2
    final = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert _digest(node) == clean_digest


def test_interrupted_central_run_keeps_one_anonymous_id_per_patient(federation: Path, tmp_path: Path) -> None:
    node = tmp_path / "node"
    site = federation / "c"
    child = _CHILD.replace('hosting="federated", secret_file=key', 'hosting="central", secret_file=None')
    done = subprocess.run([sys.executable, "-c", child, str(node), str(site / "dicom"), str(site / "clinical.xlsx"),
                           "-", "store"], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert list((node / "private" / "runs").glob("*.salt")), "the salt is kept while the run is unfinished"
    ingest(node, dataset="site-a", dicom=site / "dicom", clinical=site / "clinical.xlsx", hosting="central")
    clean = ingest(tmp_path / "clean", dataset="site-a", dicom=site / "dicom", clinical=site / "clinical.xlsx",
                   hosting="central")
    with NodeStore.open(node) as s1, NodeStore.open(tmp_path / "clean") as s2:
        assert s1.counts() == s2.counts()
    assert clean.instances_stored == s1.counts().instances
    assert not list((node / "private" / "runs").glob("*.salt"))


# --- command line and bad input ---------------------------------------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "incisive_lab.cli", "ingest", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_command_line_arguments_are_checked_before_any_work(federation: Path, key: Path, tmp_path: Path) -> None:
    site = federation / "a"
    base = ["--node-dir", str(tmp_path / "n"), "--dataset", "site-a", "--dicom", str(site / "dicom")]
    cases = [
        ([*base, "--hosting", "federated"], "pass --secret-file"),
        ([*base, "--hosting", "central", "--secret-file", str(key)], "do not pass --secret-file"),
        (["--node-dir", str(tmp_path / "n"), "--dataset", "Bad Name", "--dicom", str(site / "dicom"),
          "--hosting", "central"], "--dataset"),
        ([*base, "--hosting", "central", "--clinical", str(tmp_path / "none.xlsx")], "no such file"),
        (["--node-dir", str(site / "dicom" / "n"), "--dataset", "x", "--dicom", str(site / "dicom"),
          "--hosting", "central"], "overlap"),
    ]
    for args, message in cases:
        done = _cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert not (tmp_path / "n").exists()


def test_malformed_spreadsheet_is_refused_with_its_name_and_nothing_is_stored(
    federation: Path, key: Path, tmp_path: Path
) -> None:
    import openpyxl

    bad = tmp_path / "clinical.xlsx"
    wb = openpyxl.load_workbook(federation / "a" / "clinical.xlsx")
    ws = wb["patients"]
    header = [c.value for c in ws[1]]
    ws.delete_cols(header.index("cancer_type") + 1)
    wb.save(bad)
    done = _cli("--node-dir", str(tmp_path / "n"), "--dataset", "site-a", "--dicom", str(federation / "a" / "dicom"),
                "--clinical", str(bad), "--hosting", "federated", "--secret-file", str(key), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "clinical.xlsx" in done.stderr and "cancer_type" in done.stderr
    empty = tmp_path / "empty.xlsx"
    empty.write_bytes(b"")
    text = tmp_path / "notes.xlsx"
    text.write_text("patient_id,cancer_type\n1,lung\n")
    for sheet in (empty, text):
        done = _cli("--node-dir", str(tmp_path / "n"), "--dataset", "site-a", "--dicom",
                    str(federation / "a" / "dicom"), "--clinical", str(sheet), "--hosting", "central", cwd=tmp_path)
        assert done.returncode == 2 and sheet.name in done.stderr, done.stderr
    assert not (tmp_path / "n").exists(), "refused before anything was written"


def test_one_ingest_at_a_time(federation: Path, key: Path, tmp_path: Path) -> None:
    from incisive_lab.errors import IncisiveLabError
    from incisive_lab.node._runs import node_lock

    node = tmp_path / "n"
    with node_lock(node / "private"), pytest.raises(IncisiveLabError, match="another ingest"):
        _ingest(node, federation, "a", key)


def test_ingest_on_postgresql_holds_the_same_content_as_on_sqlite(
    federation: Path, key: Path, tmp_path: Path, clean_digest: str, pg_cluster: Any
) -> None:
    """The same code on the scale-out back-end: a real throw-away PostgreSQL cluster."""
    url = pg_cluster.create_database()
    node = tmp_path / "node"
    first = _ingest(node, federation, "a", key, jobs=2, db_url=url)
    again = _ingest(node, federation, "a", key, jobs=1, db_url=url)
    with NodeStore.open(node, url) as store:
        digest = store.digest()
        assert store.counts().instances == first.instances_stored
    assert again.instances_stored == 0 and again.fhir_resources == 0
    assert not (node / "node.sqlite").exists(), "the index and FHIR store live in PostgreSQL"
    assert digest == clean_digest


def test_another_process_ingesting_blocks_and_its_death_frees_the_node(federation: Path, key: Path,
                                                                       tmp_path: Path) -> None:
    from incisive_lab.errors import IncisiveLabError

    node = tmp_path / "n"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from incisive_lab.node._runs import node_lock\n"
         "with node_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(node / "private")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(IncisiveLabError, match="another ingest"):
            _ingest(node, federation, "a", key)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _ingest(node, federation, "a", key).instances_stored > 0  # a killed holder frees the node
