"""Whole-folder runs: layout, report, vault and re-identification, jobs, idempotence, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest

from incisive_lab.deid import (
    LeakScanner,
    Profile,
    Secret,
    Vault,
    VaultError,
    deidentify_tree,
    write_secret_file,
)
from tests.deid import phi

warnings.filterwarnings("ignore", module="pydicom")


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (except the report)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "deid-report.json"
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder named like a PACS export (names and IDs in the paths), with planted files and junk."""
    root = tmp_path_factory.mktemp("src") / "export"
    for k, p in enumerate(phi.all_planted()):
        d = root / "VANDERBERG_ELOISE_MRN-77120934" / f"study{k % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{p.name}").write_bytes(p.data)
    (root / "notes.txt").write_text("not dicom")
    (root / "VANDERBERG_ELOISE_MRN-77120934" / "truncated.dcm").write_bytes(phi.build("CT_small.dcm").data[:3000])
    return root


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secret_file(tmp_path_factory.mktemp("keys") / "provider.key")


def test_keygen_writes_a_private_secret_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_secret_file(tmp_path / "k")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    with pytest.raises(Exception, match="refusing to replace"):
        write_secret_file(path)
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        Secret.from_file(path)
    with pytest.raises(Exception, match="does not exist"):
        Secret.from_file(tmp_path / "missing")


def test_pseudonymised_tree_layout_report_and_vault(source: Path, secret_file: Path, tmp_path: Path) -> None:
    dst, vault = tmp_path / "out", tmp_path / "vault.sqlite"
    secret = Secret.from_file(secret_file)
    run = deidentify_tree(source, dst, profile=Profile([]), secret=secret, vault=vault, report=tmp_path / "r.json")
    counts = run.counts
    # the MR variants (implicit, big endian, J2K, RLE) are one instance: later copies are duplicates
    duplicates = [f for f in run.files if "duplicate of" in f.reason]
    assert len(duplicates) == 3
    assert counts["ok"] + len(duplicates) == len(phi.BASE_FILES)
    assert counts["failed"] - sum(f.status == "failed" for f in duplicates) == 2  # notes.txt, truncated.dcm
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "incisive-deid-report/1"
    by_source = {f["source"]: f for f in report["files"]}
    assert "not a DICOM Part 10 file" in by_source["notes.txt"]["reason"]
    assert "truncated" in by_source["VANDERBERG_ELOISE_MRN-77120934/truncated.dcm"]["reason"]
    ok = [f for f in report["files"] if f["status"] == "ok"]
    assert all(f["actions"] in report["action_sets"] for f in ok)
    assert ["(0010,0010) PatientName", "Z", "basic"] in report["action_sets"][ok[0]["actions"]]
    # output paths are made of pseudonyms only
    scanner = LeakScanner(phi.TOKENS, phi.DATES)
    for path in dst.rglob("*"):
        assert scanner.scan_text(str(path), str(path.relative_to(dst)), "path") == []
    patient_dirs = {p.name for p in dst.iterdir() if p.is_dir()}
    assert patient_dirs == {run.files[0].patient} or len(patient_dirs) == 1
    # the vault maps the pseudonym back to the original identity, and accession numbers and UIDs too
    pseudonym = next(iter(patient_dirs))
    out_file = next(dst.rglob("*.dcm"))
    ds = pydicom.dcmread(out_file)
    with Vault(vault, secret) as v:
        patient, accession, uid, unknown = v.lookup([pseudonym, ds.AccessionNumber, ds.SOPInstanceUID, "PSN-NOTAPSEUDONYM"])
    assert patient is not None and patient["PatientID"] == "MRN-77120934"
    assert patient["PatientName"] == phi.PATIENT_NAME and patient["PatientBirthDate"] == "19580217"
    assert accession is not None and accession["AccessionNumber"] == "ACC99817265"
    assert uid is not None and uid["UID"] in {p.original_uids[2] for p in phi.all_planted() if len(p.original_uids) > 2}
    assert unknown is None
    # a wrong secret cannot open the vault, and the file holds none of the identities in clear
    with pytest.raises(VaultError, match="does not open"):
        Vault(vault, Secret.generate())
    raw = vault.read_bytes() + (vault.with_name(vault.name + "-wal").read_bytes() if vault.with_name(vault.name + "-wal").exists() else b"")
    assert b"MRN-77120934" not in raw and b"VANDERBERG" not in raw and pseudonym.encode() not in raw


def test_rerun_is_idempotent_and_jobs_2_matches_jobs_1(source: Path, secret_file: Path, tmp_path: Path) -> None:
    secret = Secret.from_file(secret_file)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = deidentify_tree(source, one, profile=Profile(["retain-longitudinal-modified-dates"]), secret=secret, jobs=1)
    first = tree_digest(one)
    deidentify_tree(source, one, profile=Profile(["retain-longitudinal-modified-dates"]), secret=secret, jobs=1)
    assert tree_digest(one) == first  # same input again: same bytes, nothing added
    r2 = deidentify_tree(source, two, profile=Profile(["retain-longitudinal-modified-dates"]), secret=secret, jobs=2)
    assert tree_digest(two) == first
    assert r1.as_json(timing=False) == r2.as_json(timing=False)
    assert not list(one.rglob(".*tmp*")), "no temporary files left behind"


def test_anonymised_tree_cannot_be_reidentified(source: Path, secret_file: Path, tmp_path: Path) -> None:
    secret = Secret.from_file(secret_file)
    pseud = deidentify_tree(source, tmp_path / "p", profile=Profile([]), secret=secret, vault=tmp_path / "v.sqlite")
    anon1 = deidentify_tree(source, tmp_path / "a1", profile=Profile([], mode="anonymize"))
    anon2 = deidentify_tree(source, tmp_path / "a2", profile=Profile([], mode="anonymize"))
    p_ids = {f.patient for f in pseud.files if f.patient}
    a_ids = {f.patient for f in anon1.files if f.patient}
    assert a_ids and all(a.startswith("ANO-") for a in a_ids)
    assert not a_ids & p_ids and not a_ids & {f.patient for f in anon2.files if f.patient}
    assert anon1.vault_rows == 0
    out = next((tmp_path / "a1").rglob("*.dcm"))
    ds = pydicom.dcmread(out)
    with Vault(tmp_path / "v.sqlite", secret) as v:
        assert v.lookup([str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)]) == [None, None, None]
    with pytest.raises(Exception, match="keeps no vault"):
        deidentify_tree(source, tmp_path / "a3", profile=Profile([], mode="anonymize"), vault=tmp_path / "v2.sqlite")
    with pytest.raises(Exception, match="do not pass --secret-file"):
        deidentify_tree(source, tmp_path / "a3", profile=Profile([], mode="anonymize"), secret=secret)


def test_bad_arguments_fail_before_writing(source: Path, secret_file: Path, tmp_path: Path) -> None:
    secret = Secret.from_file(secret_file)
    with pytest.raises(Exception, match="does not exist"):
        deidentify_tree(tmp_path / "nope", tmp_path / "o", profile=Profile([]), secret=secret)
    with pytest.raises(Exception, match="overlap"):
        deidentify_tree(source, source / "inside", profile=Profile([]), secret=secret)
    with pytest.raises(Exception, match="needs the provider's secret"):
        deidentify_tree(source, tmp_path / "o", profile=Profile([]))
    assert not (tmp_path / "o").exists()


def test_files_restricts_the_run_to_the_given_paths(source: Path, secret_file: Path, tmp_path: Path) -> None:
    """Ingest passes what curation did not quarantine: only those files are read and written."""
    secret = Secret.from_file(secret_file)
    everything = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.dcm") if p.name != "truncated.dcm")
    chosen = everything[::2]
    run = deidentify_tree(source, tmp_path / "o", profile=Profile([]), secret=secret, files=chosen)
    assert sorted(f.source for f in run.files) == sorted(chosen)
    assert len(list((tmp_path / "o").rglob("*.dcm"))) == sum(f.status == "ok" for f in run.files)
    for bad, why in [("../escape.dcm", "not a relative path"), ("/etc/passwd", "not a relative path"),
                     ("missing.dcm", "is not a file")]:
        with pytest.raises(Exception, match=why):
            deidentify_tree(source, tmp_path / "x", profile=Profile([]), secret=secret, files=[bad])
    assert not (tmp_path / "x").exists()


def test_unreadable_file_is_reported(tmp_path: Path, secret_file: Path) -> None:
    """A file that cannot be read (a dangling link; tests run as root, so permissions would not stop it)."""
    src = tmp_path / "s"
    src.mkdir()
    (src / "gone.dcm").symlink_to(tmp_path / "does-not-exist.dcm")
    (src / "ok.dcm").write_bytes(phi.build("CT_small.dcm").data)
    run = deidentify_tree(src, tmp_path / "o", profile=Profile([]), secret=Secret.from_file(secret_file))
    status = {f.source: (f.status, f.reason) for f in run.files}
    assert status["ok.dcm"][0] == "ok"
    assert status["gone.dcm"][0] == "failed" and "cannot read" in status["gone.dcm"][1]


def test_duplicate_instances_are_written_once(tmp_path: Path, secret_file: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    data = phi.build("MR_small_implicit.dcm").data
    (src / "a.dcm").write_bytes(data)
    (src / "b.dcm").write_bytes(data)
    run = deidentify_tree(src, tmp_path / "o", profile=Profile([]), secret=Secret.from_file(secret_file), jobs=2)
    status = {f.source: f for f in run.files}
    assert status["a.dcm"].status == "ok"
    assert status["b.dcm"].status == "skipped" and "duplicate of a.dcm" in status["b.dcm"].reason
    assert len(list((tmp_path / "o").rglob("*.dcm"))) == 1


def test_quarantined_originals_are_copied_for_review_only_when_asked(tmp_path: Path, secret_file: Path) -> None:
    import io

    ds = pydicom.dcmread(io.BytesIO(phi.build("CT_small.dcm").data))
    ds.BurnedInAnnotation = "YES"
    src = tmp_path / "s"
    src.mkdir()
    ds.save_as(src / "burned.dcm", enforce_file_format=True)
    run = deidentify_tree(src, tmp_path / "o", profile=Profile([]), secret=Secret.from_file(secret_file),
                          quarantine=tmp_path / "q")
    assert run.files[0].status == "quarantined"
    assert (tmp_path / "q" / "burned.dcm").exists()
    assert not list((tmp_path / "o").rglob("*.dcm"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "incisive_lab.cli", *args], capture_output=True, text=True, timeout=300)


def test_command_line_round_trip(source: Path, tmp_path: Path) -> None:
    key = tmp_path / "provider.key"
    assert _cli("keygen", str(key)).returncode == 0
    res = _cli("deid", str(source), str(tmp_path / "out"), "--secret-file", str(key), "--vault", str(tmp_path / "v.sqlite"),
               "--option", "retain-longitudinal-modified-dates", "clean-descriptors", "--jobs", "2")
    assert res.returncode == 1, res.stderr  # two files failed: status 1
    assert "failed: notes.txt: not a DICOM Part 10 file" in res.stderr
    assert "report:" in res.stdout
    report = json.loads((tmp_path / "out" / "deid-report.json").read_text())
    assert report["options"] == ["clean-descriptors", "retain-longitudinal-modified-dates"]
    pseudonym = next(f["patient"] for f in report["files"] if f["status"] == "ok")
    node = tmp_path / "node"
    res = _cli("reidentify", "--vault", str(tmp_path / "v.sqlite"), "--secret-file", str(key), "--node-dir", str(node),
               "--purpose", "incidental finding", "--actor", "user:steward-1", pseudonym, "PSN-UNKNOWN")
    assert res.returncode == 1, res.stderr  # one pseudonym unknown
    answer = json.loads(res.stdout)
    assert answer[0]["original"]["PatientID"] == "MRN-77120934" and answer[1] == {"pseudonym": "PSN-UNKNOWN", "found": False}
    # both lookups are on the node's ledger, under the pseudonym, with their outcome
    from incisive_lab.ledger import Ledger

    with Ledger.open(node, read_only=True) as ledger:
        entries = [e.event for e in ledger.entries()]
    assert [(e.kind, e.actor, e.resource, e.outcome.decision, e.purpose) for e in entries] == [
        ("reidentify", "user:steward-1", f"patient:{pseudonym}", "allowed", "incidental finding"),
        ("reidentify", "user:steward-1", "pseudonym:PSN-UNKNOWN", "denied", "incidental finding"),
    ]
    # a wrong secret is refused, and the refusal is ledgered too
    other = tmp_path / "other.key"
    assert _cli("keygen", str(other)).returncode == 0
    res = _cli("reidentify", "--vault", str(tmp_path / "v.sqlite"), "--secret-file", str(other), "--node-dir", str(node),
               "--purpose", "test", pseudonym)
    assert res.returncode == 2 and "does not open vault" in res.stderr
    with Ledger.open(node, read_only=True) as ledger:
        last = list(ledger.entries())[-1].event
    assert (last.resource, last.outcome.decision) == ("vault:v.sqlite", "denied")
    res = _cli("reidentify", "--vault", str(tmp_path / "v.sqlite"), "--secret-file", str(key), pseudonym)
    assert res.returncode == 2 and "--node-dir" in res.stderr  # never off the record
    res = _cli("deid", "--describe", "--option", "retain-uids", "--format", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["options"] == ["retain-uids"]
    res = _cli("deid", str(source), str(tmp_path / "x"), "--mode", "anonymize", "--option", "retain-uids")
    assert res.returncode == 2 and "cannot be used with --mode anonymize" in res.stderr
    res = _cli("deid", str(source), str(tmp_path / "x"), "--option", "retain-everything")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_a_worker_that_dies_loses_nothing(tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child process killed mid-run (say by the OOM killer): its chunks are redone, output complete."""
    import os
    import time

    from incisive_lab.deid import batch

    src = tmp_path / "s"
    src.mkdir()
    for k, p in enumerate(phi.all_planted()):
        (src / f"{k:02d}-{p.name}").write_bytes(p.data)
    secret = Secret.from_file(secret_file)
    reference = deidentify_tree(src, tmp_path / "ref", profile=Profile([]), secret=secret, jobs=1)
    parent = os.getpid()
    real_run = batch._Worker.run

    marker = tmp_path / "a-child-died"

    def dying_run(self, rels):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            marker.write_text(",".join(rels))
            os._exit(9)  # the child vanishes without a word, holding its chunk
        time.sleep(0.05)  # let the child start and take a chunk
        return real_run(self, rels)

    monkeypatch.setattr(batch, "_MIN_CHUNK", 1)
    monkeypatch.setattr(batch._Worker, "run", dying_run)
    run = deidentify_tree(src, tmp_path / "out", profile=Profile([]), secret=secret, jobs=2)
    assert marker.exists(), "the child took a chunk and died"
    assert run.as_json(timing=False) == reference.as_json(timing=False)
    assert tree_digest(tmp_path / "out") == tree_digest(tmp_path / "ref")
