"""Removing a withdrawn patient from the central node, which cannot tell who anyone is.

Centrally hosted data is anonymised with a one-time salt (``ingest --hosting central``):
after the run nobody can link a central patient back to a person, so a withdrawal at the
provider could not reach it. A **removal handle** restores exactly one link, usable by the
provider alone and only to delete:

``handle = HMAC-SHA256(K, "incisive-central-removal\\0" + original Patient ID)`` (hex)
    where ``K = HKDF(provider secret, "central-removal/handle")`` (:func:`removal_handle`).
    The provider computes it at central ingest (``--removal-key``, the provider's secret
    file) and again at withdrawal, from the original Patient ID its vault holds for the
    pseudonym (:func:`handle_for_pseudonym`).

The central node never stores the handle. It keeps, per anonymous patient, a **tag**
``HMAC-SHA256(handle, "incisive-central-removal-tag\\0" + dataset + "\\0" + patient_id)``
(:func:`removal_tag`) in the ``removal_handles`` table. A tag differs for every
(dataset, anonymous id), so the central node cannot join a person's rows across runs or
datasets by comparing them, as it could with a stored handle; given a handle, it finds
the person's rows by recomputing each row's tag (:func:`find_patients`: one HMAC per
centralised patient, done only on removal). Tags are deterministic, so a re-run or a
resumed ingest writes the same rows and the node's digest covers them.

Removal (:func:`remove_patient`) deletes a patient's index rows, FHIR resources, tag and,
after the database commits, the object files no instance row names any more. Those files
are listed in ``object_deletions`` in the same transaction, so a crash between the commit
and the unlinks leaves a list that the next removal or :func:`sweep` finishes. It holds
the node's ingest lock: a removal never races an ingest that could be adding the same
object.

The provider's side is :func:`request_central_removal` (HTTP client of the central node's
``POST /central/removals``, :mod:`incisive_lab.node.central_api`),
:func:`remove_centrally` (handle, request, and a retry queue when the central node cannot
be reached) and :func:`retry_pending`.

Examples
--------
>>> from incisive_lab.deid import Secret
>>> secret = Secret(bytes(32))
>>> h = removal_handle(secret, "H-204417")
>>> len(h), h == removal_handle(secret, "H-204417"), h == removal_handle(secret, "H-204418")
(64, True, False)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, delete, select, update

from incisive_lab.errors import IncisiveLabError
from incisive_lab.node._db import (
    central_removals_pending_table,
    chunks,
    fhir_table,
    fhir_tokens_table,
    insert_ignore,
    instances_table,
    object_deletions_table,
    patients_table,
    removal_handles_table,
    series_table,
    studies_table,
)

if TYPE_CHECKING:
    import httpx

    from incisive_lab.deid.keys import Secret
    from incisive_lab.deid.vault import Vault
    from incisive_lab.node.store import NodeStore

__all__ = [
    "CentralRemovalError",
    "CentralUnreachable",
    "RemovalError",
    "Removed",
    "find_patients",
    "handle_for_pseudonym",
    "pending_removals",
    "queue_central_removal",
    "record_handles",
    "removal_handle",
    "removal_tag",
    "remove_by_handle",
    "remove_centrally",
    "remove_patient",
    "request_central_removal",
    "retry_pending",
    "sweep",
]

HANDLE_LABEL = b"incisive-central-removal\x00"
TAG_LABEL = b"incisive-central-removal-tag\x00"
_KEY_LABEL = "central-removal/handle"
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: The central node's removal endpoint, relative to its base URL.
REMOVALS_PATH = "/central/removals"


class RemovalError(IncisiveLabError):
    """A removal could not be done (the message names the patient, file or field)."""


class CentralRemovalError(RemovalError):
    """The central node did not confirm a removal; ``status`` is its HTTP status (None: no answer).

    The local withdrawal stands either way; the removal is to be retried
    (:func:`remove_centrally` queues it).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CentralUnreachable(CentralRemovalError):
    """The central node could not be reached (connection refused, time-out, TLS failure)."""


# ------------------------------------------------------------------ handles and tags

def removal_handle(secret: Secret, original_patient_id: str) -> str:
    """The removal handle of a patient: keyed by the provider's secret, hex SHA-256 HMAC.

    Parameters
    ----------
    secret
        The provider's secret (``Secret.from_file``); an ephemeral anonymisation salt is
        refused (a handle made with it could never be made again).
    original_patient_id
        The Patient ID (0010,0020) of the provider's own records, exactly as the
        de-identifier read it (trailing spaces and NULs removed).

    Raises
    ------
    RemovalError
        An empty Patient ID or an ephemeral key.
    """
    if secret.ephemeral:
        raise RemovalError("removal handle: an ephemeral anonymisation salt cannot make a handle "
                           "(use the provider's secret file)")
    if not original_patient_id or not original_patient_id.strip():
        raise RemovalError("removal handle: the original Patient ID is empty")
    key = secret.derive(_KEY_LABEL)
    return hmac.new(key, HANDLE_LABEL + original_patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def check_handle(handle: Any, *, where: str = "handle") -> str:
    """Return ``handle`` if it is 64 lower-case hex digits; raise RemovalError naming ``where``."""
    if not isinstance(handle, str) or not _HEX64.fullmatch(handle):
        raise RemovalError(f"{where}: a removal handle is 64 lower-case hexadecimal digits")
    return handle


def removal_tag(handle: str, dataset: str, patient_id: str) -> str:
    """What the central node stores for one anonymous patient: ``HMAC(handle, dataset, id)`` hex."""
    key = bytes.fromhex(check_handle(handle))
    msg = TAG_LABEL + dataset.encode("utf-8") + b"\x00" + patient_id.encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def original_patient_id(entry: Mapping[str, Any] | None) -> str | None:
    """The original Patient ID in a vault entry of kind ``patient`` (DICOM first, then the
    clinical spreadsheet's ``patient_id``); None when the entry has none."""
    if not entry or entry.get("kind") != "patient":
        return None
    for key in ("PatientID", "clinical.patient_id"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def handle_for_pseudonym(vault: Vault, secret: Secret, pseudonym: str) -> str | None:
    """The removal handle of the patient behind ``pseudonym``, from the provider's vault.

    Returns None when the vault does not know ``pseudonym`` as a patient pseudonym or holds
    no original Patient ID for it (a DICOM file without one): such a patient has no handle.

    Raises
    ------
    VaultError
        The vault was tampered with.
    """
    found = vault.lookup([pseudonym])[0]
    original = original_patient_id(found)
    return removal_handle(secret, original) if original is not None else None


def record_handles(store: NodeStore, dataset: str, handles: Mapping[str, str]) -> int:
    """Store the tag of each ``anonymous patient id -> handle`` (existing rows are kept).

    Returns how many rows were new. Used by the central ingest.
    """
    if not handles:
        return 0
    rows = [{"dataset": dataset, "patient_id": pid, "tag": removal_tag(h, dataset, pid)}
            for pid, h in sorted(handles.items())]
    t = removal_handles_table
    with store.engine.connect().execution_options(write=True) as conn, conn.begin():
        before = _count_tags(conn, dataset)
        for part in chunks(rows, 500):
            conn.execute(insert_ignore(conn, t), list(part))
        return _count_tags(conn, dataset) - before


def _count_tags(conn: Connection, dataset: str) -> int:
    t = removal_handles_table
    return len(conn.execute(select(t.c.patient_id).where(t.c.dataset == dataset)).all())


def prune_handles(store: NodeStore, dataset: str) -> int:
    """Delete tags of ``dataset`` whose patient the node does not hold (neither index nor FHIR
    Patient); returns how many. Run at the end of a central ingest."""
    t, p, f = removal_handles_table, patients_table, fhir_table
    with store.engine.connect().execution_options(write=True) as conn, conn.begin():
        tagged = {r.patient_id for r in conn.execute(select(t.c.patient_id).where(t.c.dataset == dataset))}
        if not tagged:
            return 0
        held = {r.patient_id for r in conn.execute(select(p.c.patient_id).where(p.c.dataset == dataset))}
        held |= {r.id for r in conn.execute(select(f.c.id).where(f.c.resource_type == "Patient",
                                                                 f.c.dataset == dataset))}
        gone = sorted(tagged - held)
        for part in chunks(gone, 500):
            conn.execute(delete(t).where(t.c.dataset == dataset, t.c.patient_id.in_(list(part))))
    return len(gone)


def find_patients(store: NodeStore, handle: str, *, dataset: str | None = None) -> list[tuple[str, str]]:
    """The ``(dataset, anonymous patient id)`` pairs whose tag ``handle`` makes (sorted).

    Each stored tag is recomputed with the handle (one HMAC per row of the table, of
    ``dataset`` if given): the table holds no value to look up directly.
    """
    check_handle(handle)
    t = removal_handles_table
    q = select(t.c.dataset, t.c.patient_id, t.c.tag)
    if dataset is not None:
        q = q.where(t.c.dataset == dataset)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    return sorted((r.dataset, r.patient_id) for r in rows
                  if hmac.compare_digest(removal_tag(handle, r.dataset, r.patient_id), r.tag))


# ------------------------------------------------------------------ removal at a node

@dataclass(frozen=True, slots=True)
class Removed:
    """What a removal deleted (zeros when there was nothing to delete)."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    records: int = 0   #: FHIR resources
    objects: int = 0   #: object files unlinked (this removal's and earlier unfinished ones)

    def __add__(self, other: Removed) -> Removed:
        return Removed(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_json(self) -> dict[str, int]:
        """As a JSON object."""
        return asdict(self)


def remove_patient(store: NodeStore, dataset: str, patient_id: str) -> Removed:
    """Delete one patient of ``dataset`` from the node; safe to repeat.

    In one database transaction: the patient's instances, series, studies and patient rows,
    its removal tag, and its FHIR resources (those whose ``patient_ref`` is
    ``Patient/<id>``, the Patient included, with their search tokens: of ``dataset``, or of
    no dataset when no other dataset holds the same id); the objects whose last instance
    row goes are listed in ``object_deletions``. After the commit the dataset's
    HealthDCAT-AP record is rewritten with the new counts (when the dataset has one; left
    alone when they are already those) and the listed files are unlinked (:func:`sweep`).

    Raises
    ------
    RemovalError
        An ingest is running on the node (retry when it is done), or the dataset's record
        cannot be read back to be rewritten (named).
    """
    from incisive_lab.node._runs import node_lock

    if not dataset or not patient_id:
        raise RemovalError("remove_patient: dataset and patient_id are required")
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(node_lock(store.dir / store.PRIVATE))
        except IncisiveLabError:
            raise RemovalError(f"{store.dir}: an ingest (or another removal) is running on this node; retry "
                               f"the removal of patient {patient_id} when it is done") from None
        removed = _delete_rows(store, dataset, patient_id)
        # always (a no-op when the counts are those written): a removal interrupted after
        # its commit left a record with the old counts, which this run corrects
        _rewrite_record(store, dataset)
        objects = sweep(store)
    return Removed(removed.patients, removed.studies, removed.series, removed.instances, removed.records,
                   objects)


def _delete_rows(store: NodeStore, dataset: str, patient_id: str) -> Removed:
    st, se, it, pt = studies_table, series_table, instances_table, patients_table
    ft, tt, rt, dt_ = fhir_table, fhir_tokens_table, removal_handles_table, object_deletions_table
    ref = f"Patient/{patient_id}"
    with store.engine.connect().execution_options(write=True) as conn, conn.begin():
        studies = [r.study_uid for r in conn.execute(
            select(st.c.study_uid).where(st.c.dataset == dataset, st.c.patient_id == patient_id))]
        shas: set[str] = set()
        n_instances = n_series = 0
        for part in chunks(studies, 500):
            uids = list(part)
            shas |= {r.sha256 for r in conn.execute(select(it.c.sha256).where(it.c.study_uid.in_(uids)))}
            n_instances += conn.execute(delete(it).where(it.c.study_uid.in_(uids))).rowcount or 0
            n_series += conn.execute(delete(se).where(se.c.study_uid.in_(uids))).rowcount or 0
            conn.execute(delete(st).where(st.c.study_uid.in_(uids)))
        n_patients = conn.execute(delete(pt).where(pt.c.dataset == dataset, pt.c.patient_id == patient_id)
                                  ).rowcount or 0
        conn.execute(delete(rt).where(rt.c.dataset == dataset, rt.c.patient_id == patient_id))
        elsewhere = conn.execute(select(pt.c.dataset).where(pt.c.patient_id == patient_id).limit(1)).first()
        owned = ft.c.dataset == dataset if elsewhere is not None else (
            (ft.c.dataset == dataset) | ft.c.dataset.is_(None))
        resources = [(r.resource_type, r.id) for r in conn.execute(
            select(ft.c.resource_type, ft.c.id).where(ft.c.patient_ref == ref, owned))]
        for rtype, rid in resources:
            conn.execute(delete(tt).where(tt.c.resource_type == rtype, tt.c.id == rid))
            conn.execute(delete(ft).where(ft.c.resource_type == rtype, ft.c.id == rid))
        still: set[str] = set()
        for part in chunks(sorted(shas), 500):
            still |= {r.sha256 for r in conn.execute(select(it.c.sha256).where(it.c.sha256.in_(list(part))))}
        orphans = sorted(shas - still)
        if orphans:
            conn.execute(insert_ignore(conn, dt_), [{"sha256": s} for s in orphans])
    return Removed(patients=n_patients, studies=len(studies), series=n_series, instances=n_instances,
                   records=len(resources))


def sweep(store: NodeStore) -> int:
    """Unlink the object files listed in ``object_deletions`` that no instance row names;
    returns how many files were unlinked. Idempotent: a file already gone counts as done."""
    dt_, it = object_deletions_table, instances_table
    with store.engine.connect() as conn:
        listed = [r.sha256 for r in conn.execute(select(dt_.c.sha256))]
    if not listed:
        return 0
    with store.engine.connect() as conn:
        still = {r.sha256 for part in chunks(listed, 500)
                 for r in conn.execute(select(it.c.sha256).where(it.c.sha256.in_(list(part))))}
    doomed = [s for s in listed if s not in still]
    unlinked = _unlink_objects(store, doomed)
    with store.engine.connect().execution_options(write=True) as conn, conn.begin():
        for part in chunks(listed, 500):
            conn.execute(delete(dt_).where(dt_.c.sha256.in_(list(part))))
    return unlinked


def _unlink_objects(store: NodeStore, shas: Sequence[str]) -> int:
    """Unlink the object files of ``shas`` and fsync their directories (the crash seam of the tests)."""
    unlinked = 0
    dirs: set[Path] = set()
    for sha in shas:
        path = store.object_path(sha)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise RemovalError(f"{path}: cannot delete the object: {exc.strerror}") from None
        unlinked += 1
        dirs.add(path.parent)
    for d in sorted(dirs):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return unlinked


def _rewrite_record(store: NodeStore, dataset: str) -> None:
    """Rebuild the dataset's record from the index, keeping its provenance and curation."""
    from incisive_lab.node.dataset import build_record, write_record

    path = store.dataset_record_path(dataset)
    info = store.index.dataset(dataset)
    if info is None or not path.is_file():
        return  # an ingest that has not finished publishes its record itself
    try:
        old = json.loads(path.read_text("utf-8"))
        provenance = old["dct:provenance"]["incisive:details"]
        curation = old["incisive:curation"]
        if not isinstance(provenance, dict) or not isinstance(curation, dict):
            raise TypeError("not objects")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RemovalError(f"{path}: the dataset record cannot be read back to be rewritten "
                           f"(dct:provenance/incisive:details, incisive:curation): {exc}") from None
    write_record(path, build_record(store, info, provenance=provenance, curation=curation))


def remove_by_handle(store: NodeStore, handle: str, *, dataset: str | None = None
                     ) -> list[tuple[str, str, Removed]]:
    """Remove every patient whose tag ``handle`` makes; returns ``(dataset, patient, Removed)`` each."""
    return [(ds, pid, remove_patient(store, ds, pid)) for ds, pid in find_patients(store, handle, dataset=dataset)]


# ------------------------------------------------------------------ the provider's side

def request_central_removal(central_url: str, token: str, handle: str, *, timeout: float = 10.0,
                            dataset: str | None = None, http: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """Ask the central node to remove the patient of ``handle``; returns its answer.

    Parameters
    ----------
    central_url
        The central node's base URL (``https://central.example``).
    token
        A steward's access token **for the central node's audience** (a token issued for
        the provider's own node is refused there: ``wrong-audience``).
    handle
        From :func:`handle_for_pseudonym` or :func:`removal_handle`.
    timeout
        Seconds for connecting and for the answer.
    dataset
        Only this central dataset (default: every dataset holding the handle).
    http
        An httpx transport (tests); default: the network.

    Returns
    -------
    dict
        ``{"removed": {"patients", "studies", "instances", "records"}}`` (zeros when the
        central node holds nothing for the handle, or no longer).

    Raises
    ------
    CentralUnreachable
        No answer (connection refused, time-out).
    CentralRemovalError
        Any answer but 200 (the message names the status and the central node's reason),
        or a 200 whose body is not the expected JSON.
    """
    import httpx

    check_handle(handle)
    if not central_url.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise RemovalError(f"central_url {central_url!r}: use https (plain http only on loopback)")
    url = central_url.rstrip("/") + REMOVALS_PATH
    body: dict[str, Any] = {"handle": handle}
    if dataset is not None:
        body["dataset"] = dataset
    try:
        with httpx.Client(transport=http, timeout=timeout) as client:
            r = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError as exc:
        raise CentralUnreachable(f"central node {url} unreachable ({type(exc).__name__}: {exc}); "
                                 "the central removal is pending") from None
    if r.status_code != 200:
        try:
            detail = r.json()
            reason = f"{detail.get('error')}: {detail.get('message')}" if isinstance(detail, dict) else r.text
        except ValueError:
            reason = r.text[:200]
        raise CentralRemovalError(f"central node {url} answered HTTP {r.status_code} ({reason}); "
                                  "the central removal is pending", status=r.status_code)
    try:
        answer = r.json()
        removed = answer["removed"]
        if not all(isinstance(removed.get(k), int) for k in ("patients", "studies", "instances", "records")):
            raise TypeError("counts missing")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CentralRemovalError(f"central node {url} answered 200 without the removal counts "
                                  "(body: 'removed' with patients, studies, instances, records)",
                                  status=r.status_code) from None
    return dict(answer)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def queue_central_removal(engine: Engine, pseudonym: str, dataset: str, reason: str) -> None:
    """Queue the central removal of ``pseudonym`` (or count one more attempt); :func:`retry_pending`
    sends it. For a withdrawal recorded while the central node cannot be asked at all (no token
    for it came with the request)."""
    t = central_removals_pending_table
    error = reason
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        row = conn.execute(select(t.c.attempts).where(t.c.pseudonym == pseudonym)).first()
        if row is None:
            conn.execute(t.insert().values(pseudonym=pseudonym, dataset=dataset, requested_at=_now(),
                                           attempts=1, last_error=error[:1000]))
        else:
            conn.execute(update(t).where(t.c.pseudonym == pseudonym)
                         .values(attempts=row.attempts + 1, last_error=error[:1000]))


def _dequeue(engine: Engine, pseudonym: str) -> None:
    t = central_removals_pending_table
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        conn.execute(delete(t).where(t.c.pseudonym == pseudonym))


def pending_removals(engine: Engine) -> list[dict[str, Any]]:
    """The central removals still to be confirmed, oldest first (pseudonym, dataset,
    requested_at, attempts, last_error)."""
    t = central_removals_pending_table
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.requested_at, t.c.pseudonym)).all()
    return [dict(r._mapping) for r in rows]


def remove_centrally(engine: Engine, vault: Vault, secret: Secret, pseudonym: str, *, dataset: str,
                     central_url: str, token: str, timeout: float = 10.0,
                     http: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """The provider's half of a withdrawal: ask the central node to remove the patient.

    Call it after the local withdrawal is recorded (it does not undo or wait for it).

    Parameters
    ----------
    engine
        The provider node's database (``store.engine``): the retry queue is kept there.
    vault, secret
        The provider's vault and secret (the ingest's ``--secret-file``).
    pseudonym, dataset
        The withdrawn patient and the dataset of the withdrawal.
    central_url, token, timeout, http
        As for :func:`request_central_removal` (the token is for the central audience).

    Returns
    -------
    dict
        ``{"status": "done", "removed": {...}}``; ``{"status": "pending", "error": ...}``
        when the central node did not confirm (queued; :func:`retry_pending` retries);
        ``{"status": "no-handle", "message": ...}`` when the vault holds no original
        Patient ID for ``pseudonym`` (nothing to send; not queued).
    """
    handle = handle_for_pseudonym(vault, secret, pseudonym)
    if handle is None:
        return {"status": "no-handle",
                "message": f"the vault holds no original Patient ID for {pseudonym}: no removal handle"}
    try:
        answer = request_central_removal(central_url, token, handle, timeout=timeout, http=http)
    except CentralRemovalError as exc:
        queue_central_removal(engine, pseudonym, dataset, str(exc))
        return {"status": "pending", "error": str(exc)}
    _dequeue(engine, pseudonym)
    return {"status": "done", "removed": answer["removed"]}


def retry_pending(engine: Engine, vault: Vault, secret: Secret, *, central_url: str, token: str,
                  timeout: float = 10.0, http: httpx.BaseTransport | None = None) -> dict[str, list[str]]:
    """Retry every queued central removal; returns ``{"done": [...], "pending": [...]}`` (pseudonyms).

    A pseudonym whose vault entry no longer has an original Patient ID is dropped from the
    queue and listed under ``"no-handle"``.
    """
    out: dict[str, list[str]] = {"done": [], "pending": [], "no-handle": []}
    for item in pending_removals(engine):
        result = remove_centrally(engine, vault, secret, item["pseudonym"], dataset=item["dataset"],
                                  central_url=central_url, token=token, timeout=timeout, http=http)
        if result["status"] == "no-handle":
            _dequeue(engine, item["pseudonym"])
        out[result["status"]].append(item["pseudonym"])
    return out


def tags_present(store: NodeStore, dataset: str) -> dict[str, str]:
    """``anonymous patient id -> tag`` of ``dataset`` (for tests and audits)."""
    t = removal_handles_table
    with store.engine.connect() as conn:
        return {r.patient_id: r.tag for r in conn.execute(
            select(t.c.patient_id, t.c.tag).where(t.c.dataset == dataset))}
