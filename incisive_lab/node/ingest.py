"""Provider ingest: curate, de-identify, convert and store one dataset into a node.

``incisive-lab ingest --node-dir DIR --dataset NAME --dicom SRC --clinical FILE.xlsx
--hosting federated|central [--secret-file KEY] [--removal-key KEY] [--jobs N]`` runs, in order:

1. **curation** of the raw input (:mod:`incisive_lab.curation`): an error quarantines the
   affected series or patient with its reason, a warning passes;
2. **de-identification** (:func:`incisive_lab.deid.deidentify_tree`) of what was not
   quarantined and is not already in the node: pseudonymised with the provider's secret
   for federated hosting (reversible through the node's vault), anonymised for central
   hosting (irreversible); the spreadsheet with the same keys, so the same patient carries
   the same pseudonym in DICOM and FHIR;
3. **store**: each de-identified file content-addressed under ``objects/`` and indexed
   (:mod:`incisive_lab.node.store`);
4. **clinical ETL** of the de-identified spreadsheet to FHIR R4B (:mod:`incisive_lab.cdm.fhir`),
   linked to the stored imaging studies, into the node's FHIR store;
5. the **dataset record** (HealthDCAT-AP) and two **ledger** entries (``deidentify``,
   ``ingest`` or ``resume``).

Central hosting with ``--removal-key`` (the provider's secret file) also stores, per
anonymous patient, a tag of the patient's **removal handle** (:mod:`incisive_lab.node.removal`),
written before the patient's rows so that a resumed run has them too; it lets the provider,
and only the provider, have the patient removed after a withdrawal. Without it nothing is
stored, and centrally hosted patients cannot be removed on withdrawal (the summary warns).

Idempotent and crash-safe: every source file is known by the SHA-256 of its bytes once its
de-identified instance is durable in the index (:mod:`incisive_lab.node._runs`); objects
appear only complete (temporary file, fsync, rename); index and FHIR writes are
transactions that ignore what is already there. The same input again stores nothing; a run
killed at any moment is completed by the next one, which ends in the same state as a
clean run (for pseudonymisation, byte for byte: pseudonyms are keyed, not random).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from incisive_lab.errors import IncisiveLabError

__all__ = ["INGEST_OPTIONS", "IngestSummary", "ingest"]

#: The de-identification options of an ingest. Pixel data with burned-in annotation is
#: cleaned (and verified by OCR) rather than stored; dates keep their intervals (shifted
#: per patient); age, sex, size and weight are kept; descriptions are cleaned, not dropped.
INGEST_OPTIONS: tuple[str, ...] = (
    "retain-longitudinal-modified-dates",
    "retain-patient-characteristics",
    "retain-safe-private",
    "clean-descriptors",
    "clean-structured-content",
    "clean-pixel-data",
)

HOSTINGS = ("federated", "central")


@dataclass
class IngestSummary:
    """What an ingest did (also written as ``private/reports/ingest-<run>.json``)."""

    dataset: str
    hosting: str
    run: str
    resumed: bool
    files_seen: int = 0
    files_already_stored: int = 0
    files_quarantined: int = 0
    files_failed: int = 0
    instances_stored: int = 0
    bytes_stored: int = 0
    fhir_resources: int = 0
    patients_quarantined: int = 0
    removal_handles: int = 0
    curation: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 all stored (quarantines are reported, not failures); 1 some files failed."""
        return 1 if self.files_failed else 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [
            f"dataset {self.dataset} ({self.hosting}), run {self.run}{' (resumed)' if self.resumed else ''}",
            f"  files seen            {self.files_seen:>7}",
            f"  already in the node   {self.files_already_stored:>7}",
            f"  instances stored      {self.instances_stored:>7}  ({self.bytes_stored / 1e6:.1f} MB)",
            f"  quarantined           {self.files_quarantined:>7}",
            f"  failed                {self.files_failed:>7}",
            f"  FHIR resources        {self.fhir_resources:>7}  ({self.patients_quarantined} patients quarantined)",
            f"  took                  {self.seconds:>7.1f} s",
        ]
        if self.hosting == "central":
            lines.insert(-1, f"  removal handles new   {self.removal_handles:>7}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  report: {name} -> {path}" for name, path in sorted(self.reports.items())]
        return "\n".join(lines)


def _walk(src: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = os.path.relpath(root, src)
        for name in sorted(files):
            if name.startswith("."):
                continue
            out.append(name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/"))
    return out


def _atomic_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _check_args(node_dir: Path, dataset: str, dicom: Path, clinical: Path | None, hosting: str,
                secret_file: Path | None, jobs: int, removal_key: Path | None = None) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", dataset):
        raise IncisiveLabError(
            f"--dataset {dataset!r}: use 1-64 lower-case letters, digits, '.', '_' or '-' (it names files and URLs)"
        )
    if hosting not in HOSTINGS:
        raise IncisiveLabError(f"--hosting must be one of {', '.join(HOSTINGS)} (got {hosting!r})")
    if not dicom.is_dir():
        raise IncisiveLabError(f"--dicom {dicom}: not a folder")
    if clinical is not None and not clinical.is_file():
        raise IncisiveLabError(f"--clinical {clinical}: no such file")
    if hosting == "federated" and secret_file is None:
        raise IncisiveLabError("--hosting federated pseudonymises with the provider's secret: pass --secret-file")
    if hosting == "central" and secret_file is not None:
        raise IncisiveLabError(
            "--hosting central anonymises irreversibly with a one-time salt: do not pass --secret-file"
        )
    if hosting == "federated" and removal_key is not None:
        raise IncisiveLabError(
            "--removal-key is for --hosting central: a federated node removes a withdrawn patient "
            "through its own index"
        )
    if jobs < 1:
        raise IncisiveLabError(f"--jobs must be at least 1 (got {jobs})")
    node_res, src_res = node_dir.resolve(), dicom.resolve()
    if node_res == src_res or src_res in node_res.parents or node_res in src_res.parents:
        raise IncisiveLabError(f"--node-dir {node_dir} and --dicom {dicom} overlap; keep them apart")


def ingest(
    node_dir: str | os.PathLike[str],
    *,
    dataset: str,
    dicom: str | os.PathLike[str],
    clinical: str | os.PathLike[str] | None,
    hosting: str,
    secret_file: str | os.PathLike[str] | None = None,
    removal_key: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    actor: str | None = None,
    title: str | None = None,
    description: str | None = None,
    country: str | None = None,
    db_url: str | None = None,
    progress: bool | None = None,
    after_step: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Ingest one dataset into the node at ``node_dir`` (see the module docstring).

    Parameters
    ----------
    node_dir : path
        The node directory (created on first use).
    dataset : str
        The dataset's name (lower case; names files and URLs). Later runs with the same
        name append to it.
    dicom : path
        Folder of the provider's raw DICOM files (any layout).
    clinical : path or None
        The clinical spreadsheet in the project's template (``docs/clinical-template.md``).
    hosting : ``"federated"`` or ``"central"``
        Federated: pseudonymise (reversible by the provider); central: anonymise.
    secret_file : path, optional
        The provider's secret (federated hosting only).
    removal_key : path, optional
        Central hosting only: the provider's secret file, used only to compute each
        patient's removal handle (:func:`incisive_lab.node.removal.removal_handle`), of
        which the node keeps a tag. Without it centrally hosted patients cannot be removed
        on withdrawal.
    jobs : int
        Processes for curation and de-identification.
    actor : str, optional
        Who runs it, for the ledger (default ``steward:<login name>``).
    title, description, country : str, optional
        For the dataset record (HealthDCAT-AP).
    db_url : str, optional
        A ``postgresql+psycopg://`` URL for the node index and FHIR store (default: SQLite
        in the node directory).
    progress : bool, optional
        Progress bars (default: when stderr is a terminal).
    after_step : callable, optional
        Called with each step's name once it is done (tests use it to interrupt a run).

    Returns
    -------
    IngestSummary

    Raises
    ------
    IncisiveLabError
        Bad arguments, an unreadable spreadsheet, another ingest running on the node.
    """
    started = time.perf_counter()
    node = Path(node_dir)
    src = Path(dicom)
    sheet = Path(clinical) if clinical is not None else None
    key = Path(secret_file) if secret_file is not None else None
    rkey = Path(removal_key) if removal_key is not None else None
    _check_args(node, dataset, src, sheet, hosting, key, jobs, rkey)
    step = after_step or (lambda _name: None)
    show = sys.stderr.isatty() if progress is None else progress
    actor = actor or f"steward:{_login()}"

    from incisive_lab.deid import Profile, Secret, deidentify_tree
    from incisive_lab.node._runs import RunBook, hash_files, node_lock, sha256_file

    secret = Secret.from_file(key) if key is not None else None  # fail on a bad key before any work
    removal_secret = Secret.from_file(rkey) if rkey is not None else None
    if sheet is not None:  # a spreadsheet that cannot be read at all stops the run before any work
        from incisive_lab.cdm.fhir import read_clinical_rows

        read_clinical_rows(sheet)
    private = node / "private"
    node.mkdir(parents=True, exist_ok=True)
    with node_lock(private), RunBook(private) as book:
        state = book.begin(dataset)
        summary = IngestSummary(dataset=dataset, hosting=hosting, run=state.id, resumed=state.resumed)
        if hosting == "central" and removal_secret is None:
            summary.warnings.append(
                "no --removal-key: the node keeps no removal handle, so these centrally hosted patients "
                "cannot be removed if they withdraw consent"
            )
        reports = private / "reports"
        rels = _walk(src)
        dicom_rels = [r for r in rels if not r.lower().endswith((".xlsx", ".csv", ".txt", ".md"))]
        summary.files_seen = len(dicom_rels)
        hashes = hash_files(src, dicom_rels)
        by_rel = dict(zip(dicom_rels, hashes, strict=True))
        known = book.known(hashes)
        todo = [r for r in dicom_rels if by_rel[r] not in known]
        summary.files_already_stored = len(dicom_rels) - len(todo)
        step("scan")

        # 1. curation of the raw input (all of it: series and links span old and new files)
        label = _labeler(hosting, secret if hosting == "federated" else Secret(book.run_salt(state.id), ephemeral=True))
        from incisive_lab.curation import run_curation

        curation = run_curation(src, sheet, jobs=jobs, label=label, progress=show)
        quarantined_files = curation.quarantined_files
        curation_json = reports / f"curation-{state.id}.json"
        curation_html = reports / f"curation-{state.id}.html"
        curation.write_json(curation_json)
        curation.write_html(curation_html)
        summary.reports.update(curation_json=str(curation_json), curation_html=str(curation_html))
        summary.curation = _curation_counts(curation)
        step("curation")

        # 2. de-identification of what is new and not quarantined
        if hosting == "federated":
            profile = Profile(INGEST_OPTIONS, mode="pseudonymize")
            vault: Path | None = private / "vault.sqlite"
        else:
            profile = Profile(INGEST_OPTIONS, mode="anonymize")
            secret = Secret(book.run_salt(state.id), ephemeral=True)
            vault = None
        staging = private / "staging" / state.id
        if staging.exists():
            shutil.rmtree(staging)  # an interrupted run's half: redone from the sources
        deid_files = [r for r in todo if r not in quarantined_files]
        summary.files_quarantined = len([r for r in dicom_rels if r in quarantined_files])
        deid_report = reports / f"deid-{state.id}.json"
        run = deidentify_tree(
            src, staging / "dicom", profile=profile, secret=secret, vault=vault, jobs=jobs,
            report=deid_report, quarantine=private / "quarantine", progress=show, files=deid_files,
        )
        summary.reports["deidentification"] = str(deid_report)
        summary.files_quarantined += run.counts.get("quarantined", 0)
        summary.files_failed = run.counts.get("failed", 0)
        step("deidentify")

        # 3. store and index; then remember the sources as stored
        from incisive_lab.node.store import NodeStore

        with NodeStore.open(node, db_url=db_url) as store:
            stored = [f for f in run.files if f.status == "ok" and f.output]
            if removal_secret is not None:  # tags first: a resumed run never re-reads stored files
                handles, unmatched = _dicom_handles(src, stored, salt=secret, key=removal_secret)
                summary.removal_handles += _record_handles(store, dataset, handles)
                summary.warnings += unmatched
            added = store.add_deidentified(
                staging / "dicom", [f.output for f in stored if f.output], dataset=dataset,
                codes=_body_part_codes(curation), progress=show,
            )
            summary.instances_stored = added.instances
            summary.bytes_stored = added.bytes
            book.record(dataset, state.id, ((by_rel[f.source], f.source, "stored") for f in stored))
            step("store")

            # 4. clinical spreadsheet -> FHIR, linked to the stored studies
            # (pseudonymised: always, since the same rows give the same resources and a corrected
            # row replaces its resource; anonymised: once per spreadsheet content, since another
            # run's salt would give its patients new identities)
            sheet_sha = sha256_file(sheet) if sheet is not None else ""
            if sheet is not None and not (hosting == "central" and book.known([sheet_sha])):
                if removal_secret is not None:
                    summary.removal_handles += _record_handles(
                        store, dataset, _sheet_handles(sheet, salt=secret, key=removal_secret))
                etl_report = reports / f"clinical-{state.id}.json"
                fhir_new, quarantined = _clinical(
                    sheet, staging, profile=profile, secret=secret, vault=vault, store=store, dataset=dataset,
                    hosting=hosting, skip=curation.quarantined_patients, report=etl_report,
                )
                summary.fhir_resources = fhir_new
                summary.patients_quarantined = quarantined
                summary.reports["clinical"] = str(etl_report)
                book.record(dataset, state.id, [(sheet_sha, sheet.name, "stored")])
            step("fhir")

            if removal_secret is not None:  # tags of patients held back by curation or the ETL
                from incisive_lab.node.removal import prune_handles

                summary.removal_handles -= prune_handles(store, dataset)

            # 5. dataset record (rewritten only when the dataset changed) and ledger
            record = store.dataset_record_path(dataset)
            changed = summary.instances_stored or summary.fhir_resources or not record.exists()
            record = record if not changed else store.write_dataset_record(
                dataset, hosting=hosting, title=title, description=description, country=country,
                provenance=_provenance(profile),
                curation=_curation_counts(curation),
            )
            summary.reports["dataset"] = str(record)
        step("dataset")
        summary.seconds = round(time.perf_counter() - started, 3)
        _ledger(node, actor=actor, dataset=dataset, hosting=hosting, profile=profile, summary=summary,
                deid_report=deid_report, source_sha256=_manifest_digest(dicom_rels, hashes))
        step("ledger")
        book.finish(state.id)
        shutil.rmtree(staging, ignore_errors=True)
        _atomic_json(reports / f"ingest-{state.id}.json", summary.as_json())
        return summary


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _manifest_digest(rels: Sequence[str], hashes: Sequence[str]) -> str:
    h = hashlib.sha256()
    for rel, sha in sorted(zip(rels, hashes, strict=True)):
        h.update(f"{sha}  {rel}\n".encode())
    return h.hexdigest()


def _labeler(hosting: str, secret: Any) -> Callable[[str], str]:
    """Curation reports name patients by the pseudonym (or anonymous id) they will carry."""
    from incisive_lab.deid.keys import Pseudonymizer

    pseudonymizer = Pseudonymizer(secret)
    return pseudonymizer.patient


def _curation_counts(curation: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for (check, severity), n in sorted(curation.counts().items()):
        out[f"{check}:{severity}"] = n
    out["quarantined_files"] = len(curation.quarantined_files)
    out["quarantined_patients"] = len(curation.quarantined_patients)
    return out


def _body_part_codes(curation: Any) -> dict[str, str]:
    """``BodyPartExamined`` value -> SNOMED CT code, as curation normalised them."""
    return {s.body_part_value: s.body_part.code for s in curation.series.values() if s.body_part_value and s.body_part}


def _clinical(sheet: Path, staging: Path, *, profile: Any, secret: Any, vault: Path | None, store: Any,
              dataset: str, hosting: str, skip: frozenset[str], report: Path) -> tuple[int, int]:
    """De-identify the spreadsheet with the DICOM's keys, convert it to FHIR linked to the
    stored studies, and put the resources; returns (resources new or changed, patients quarantined)."""
    from incisive_lab.cdm.fhir import SeriesSummary, StudySummary, workbook_to_fhir
    from incisive_lab.deid.clinical import deidentify_workbook
    from incisive_lab.deid.vault import Vault

    out = staging / "clinical" / sheet.name
    out.parent.mkdir(parents=True, exist_ok=True)
    v = Vault(vault, secret, create=True) if vault is not None else None
    try:
        clinical_report = deidentify_workbook(sheet, out, profile=profile, secret=secret, vault=v, source_name=sheet.name)
    finally:
        if v is not None:
            v.close()
    index = store.index
    studies = []
    for st in index.studies(dataset=dataset):
        series = tuple(
            SeriesSummary(se.series_uid, se.modality or "", se.number_of_instances, se.series_number)
            for se in index.series(study_uid=st.study_uid)
        )
        started = None
        if st.study_date and len(st.study_date) == 8 and st.study_date.isdigit():
            import datetime as dt

            started = dt.date(int(st.study_date[:4]), int(st.study_date[4:6]), int(st.study_date[6:]))
        studies.append(StudySummary(st.patient_id, st.study_uid, accession=st.accession_number, started=started,
                                    modalities=st.modalities_in_study, series=series))
    etl = workbook_to_fhir(out, imaging=studies, identifier_system=f"urn:incisive:dataset:{dataset}:pseudonym",
                           require_pseudonyms=hosting == "federated")
    resources: list[dict[str, Any]] = []
    cancer: dict[str, tuple[str, str | None]] = {}
    held = set(skip)
    for pseudonym, pr in sorted(etl.patients.items()):
        if pseudonym in held:
            continue
        resources.extend(pr.resources)
        for res in pr.resources:
            if res.get("resourceType") == "Condition":
                coding = (res.get("code") or {}).get("coding") or []
                snomed = [c for c in coding if c.get("system") == "http://snomed.info/sct"]
                if snomed:
                    cancer[pseudonym] = (snomed[0]["code"], snomed[0].get("display"))
    results = store.fhir.put_many(resources, dataset=dataset)
    index.set_cancer_types(dataset, cancer)
    doc = {"deidentification": clinical_report, "etl": etl.to_dict(),
           "held_by_curation": sorted(held & set(etl.patients))}
    _atomic_json(report, doc)
    changed = sum(1 for r in results if r.created or r.changed)
    return changed, len(etl.quarantined) + len(held & set(etl.patients))


def _record_handles(store: Any, dataset: str, handles: dict[str, str]) -> int:
    from incisive_lab.node.removal import record_handles

    return record_handles(store, dataset, handles)


def _dicom_handles(src: Path, stored: Sequence[Any], *, salt: Any, key: Any) -> tuple[dict[str, str], list[str]]:
    """``anonymous id -> removal handle`` of the patients of ``stored`` files, and a warning per
    patient without one.

    The original Patient ID is read back from one source file per anonymous id and checked
    against it (the anonymous id is the salt's keyed hash of the same ID), so a tag is only
    ever stored for the ID the de-identifier used.
    """
    import pydicom

    from incisive_lab.deid.keys import Pseudonymizer
    from incisive_lab.node.removal import removal_handle

    pseudo = Pseudonymizer(salt)
    first: dict[str, str] = {}
    for f in stored:
        if f.patient and f.patient not in first:
            first[f.patient] = f.source
    handles: dict[str, str] = {}
    missing: list[str] = []
    for anon, rel in sorted(first.items()):
        try:
            ds = pydicom.dcmread(src / rel, stop_before_pixels=True, specific_tags=["PatientID"])
            value = ds.get("PatientID", "")
            read = "" if value is None else str(value)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            read = ""
        match = next((c for c in dict.fromkeys((read, read.rstrip(" \x00"), read.strip())) if c
                      and pseudo.patient(c) == anon), None)
        if match is None:
            missing.append(f"patient {anon}: no original Patient ID could be matched in {rel}; "
                           "no removal handle (cannot be removed on withdrawal)")
            continue
        handles[anon] = removal_handle(key, match)
    return handles, missing


def _sheet_handles(sheet: Path, *, salt: Any, key: Any) -> dict[str, str]:
    """``anonymous id -> removal handle`` of every row of the spreadsheet with a patient_id
    (tags of patients the ETL holds back are pruned at the end of the run)."""
    from incisive_lab.cdm.spreadsheet import read_workbook
    from incisive_lab.deid.keys import Pseudonymizer
    from incisive_lab.node.removal import removal_handle

    pseudo = Pseudonymizer(salt)
    out: dict[str, str] = {}
    try:
        rows = read_workbook(sheet)
    except Exception:  # an unreadable sheet is reported by the clinical step
        return out
    for row in rows:
        value = row.get("patient_id")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = "" if value is None else str(value).strip()
        if text:
            out[pseudo.patient(text)] = removal_handle(key, text)
    return out


def _provenance(profile: Any) -> dict[str, Any]:
    return {
        "deidentification": {
            "mode": profile.mode.value,
            "options": sorted(o.value for o in profile.options),
            "method_codes": [{"code": c, "meaning": m} for c, m in profile.method_codes()],
        },
    }


def _ledger(node: Path, *, actor: str, dataset: str, hosting: str, profile: Any, summary: IngestSummary,
            deid_report: Path, source_sha256: str) -> None:
    """Two entries, durable before the run is marked finished: the de-identification and the ingest."""
    from incisive_lab.ledger import Event, Ledger, Outcome
    from incisive_lab.node._runs import sha256_file

    report_sha = sha256_file(deid_report) if deid_report.exists() else None
    resource = f"dataset:{dataset}"
    purpose = "ingest"
    deid_details: dict[str, Any] = {
        "dataset": dataset,
        "profile": "DICOM PS3.15 Basic Application Level Confidentiality Profile",
        "options": sorted(o.value for o in profile.options),
        "instances": summary.instances_stored,
    }
    if report_sha:
        deid_details["report_sha256"] = report_sha
    if hosting == "federated":
        deid_details["vault"] = "private/vault.sqlite"
    ingest_details: dict[str, Any] = {
        "dataset": dataset,
        "files": summary.files_seen,
        "instances": summary.instances_stored,
        "bytes": summary.bytes_stored,
        "clinical_records": summary.fhir_resources,
        "source_sha256": source_sha256,
        "hosting": "node" if hosting == "federated" else "central",  # the ledger schema's terms
    }
    events = [
        Event(kind="deidentify", actor=actor, action="pseudonymise" if hosting == "federated" else "anonymise",
              resource=resource, purpose=purpose, outcome=Outcome.allow("provider ingest"), details=deid_details),
        Event(kind="ingest", actor=actor, action="resume" if summary.resumed else "ingest", resource=resource,
              purpose=purpose, outcome=Outcome.allow(f"{summary.instances_stored} new instances"),
              details=ingest_details),
    ]
    with Ledger.open(node) as ledger:
        ledger.append_many(events)
