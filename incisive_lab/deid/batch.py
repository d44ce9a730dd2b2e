"""De-identify a whole folder: DICOM files (in parallel) and clinical spreadsheets.

:func:`deidentify_tree` walks ``src``, de-identifies every DICOM file into ``dst`` under
a layout made of pseudonyms only (``<patient>/<study UID>/<series UID>/<instance
UID>.dcm`` — source paths often carry names and IDs), de-identifies clinical
spreadsheets (``*.xlsx``) with the same pseudonyms and date shifts, writes the vault
(pseudonymisation) and a machine-readable report.

Every output file is written to a temporary name and renamed, so a killed run leaves
only complete files; rerunning is idempotent (pseudonymisation produces the same bytes).
With ``jobs > 1`` the files are shared among worker processes; the output is
identical to ``jobs = 1``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import mmap
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from incisive_lab.deid._engine import Engine, FileResult
from incisive_lab.deid.keys import Secret
from incisive_lab.deid.profile import Mode, Profile
from incisive_lab.deid.vault import Vault
from incisive_lab.errors import IncisiveLabError

__all__ = ["FileRecord", "RunReport", "deidentify_tree"]

REPORT_FORMAT = "incisive-deid-report/1"
_MIN_CHUNK, _MAX_CHUNK = 8, 64


@dataclass(slots=True)
class FileRecord:
    """The outcome for one source file (as it appears in the report)."""

    source: str
    status: str  #: ok | quarantined | failed | skipped
    output: str | None = None
    patient: str | None = None
    actions: str | None = None  #: id of the action set in the report
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    pixels_cleaned: bool = False

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "status": self.status}
        for key in ("output", "patient", "actions", "reason"):
            value = getattr(self, key)
            if value:
                d[key] = value
        if self.warnings:
            d["warnings"] = self.warnings
        if self.pixels_cleaned:
            d["pixels_cleaned"] = True
        return d


@dataclass
class RunReport:
    """What a run did; :meth:`write` stores it as JSON."""

    mode: str
    options: list[str]
    method_codes: list[dict[str, str]]
    files: list[FileRecord]
    action_sets: dict[str, list[list[str]]]
    clinical: list[dict[str, Any]]
    vault_rows: int
    seconds: float
    jobs: int

    @property
    def counts(self) -> dict[str, int]:
        """Files per status."""
        counts = {"ok": 0, "quarantined": 0, "failed": 0, "skipped": 0}
        for f in self.files:
            counts[f.status] = counts.get(f.status, 0) + 1
        return counts

    @property
    def patients(self) -> int:
        """Distinct patients (pseudonyms) in the output."""
        return len({f.patient for f in self.files if f.patient and f.status == "ok"})

    def as_json(self, *, timing: bool = True) -> dict[str, Any]:
        summary: dict[str, Any] = {"files": len(self.files), **self.counts, "patients": self.patients,
                                   "pixels_cleaned": sum(f.pixels_cleaned for f in self.files),
                                   "vault_rows": self.vault_rows,
                                   "clinical_files": len(self.clinical)}
        if timing:
            summary["seconds"] = round(self.seconds, 3)
            summary["files_per_second"] = round(len(self.files) / self.seconds, 1) if self.seconds else None
            summary["jobs"] = self.jobs
        from incisive_lab import __version__

        return {
            "format": REPORT_FORMAT,
            "tool": f"INCISIVE Lab {__version__}",
            "mode": self.mode,
            "options": self.options,
            "method_codes": self.method_codes,
            "summary": summary,
            "action_sets": self.action_sets,
            "files": [f.as_json() for f in self.files],
            "clinical": self.clinical,
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(_report_text(self.as_json()), encoding="utf-8")
        os.replace(tmp, p)
        return p


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _report_text(doc: dict[str, Any]) -> str:
    """Compact JSON with one line per top-level key and per file (fast to write, easy to grep)."""
    lines = []
    for key, value in doc.items():
        if key == "files":
            rows = ",\n".join(map(_COMPACT, value))
            lines.append(f'"files":[\n{rows}\n]')
        else:
            lines.append(f"{_COMPACT(key)}:{_COMPACT(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# --- worker side ---------------------------------------------------------------------------

class _Worker:
    """Holds one engine per process; processes chunks of files."""

    def __init__(self, profile: Profile, secret: Secret, src: Path, dst: Path, quarantine: Path | None,
                 safe_private: Path | None, vault: bool = True) -> None:
        self.engine = Engine(profile, secret, safe_private=safe_private, vault=vault)
        self.src, self.dst, self.quarantine = src, dst, quarantine
        self.made_dirs: set[Path] = set()
        self.action_ids: dict[tuple[tuple[str, str, str], ...], str] = {}

    def run(self, rels: Sequence[str]) -> ChunkResult:
        records: list[FileRecord] = []
        new_sets: dict[str, list[list[str]]] = {}
        vault_rows: list[tuple[bytes, str, bytes, bytes]] = []
        # the engine makes many small tuples and no reference cycles: the cyclic collector
        # would only spend time walking them
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for rel in rels:
                try:
                    data = _map(os.path.join(self.src, rel))
                except OSError as exc:
                    records.append(FileRecord(rel, "failed", reason=f"cannot read: {exc.strerror}"))
                    continue
                result = self.engine.process(data)  # type: ignore[arg-type]
                records.append(self._record(rel, data, result, new_sets))
                vault_rows.extend(result.vault)
                del result, data  # release the mapping
        finally:
            if was_enabled:
                gc.enable()
        return records, new_sets, vault_rows

    def _record(self, rel: str, data: bytes | mmap.mmap, result: FileResult, new_sets: dict[str, list[list[str]]]) -> FileRecord:
        if result.status != "ok":
            if result.status == "quarantined" and self.quarantine is not None:
                _atomic_write(self.quarantine / rel, [data], self.made_dirs)
            return FileRecord(rel, result.status, reason=result.reason)
        assert result.parts is not None and result.relpath is not None
        _atomic_write(self.dst / result.relpath, result.parts, self.made_dirs)
        key = tuple(result.actions)
        set_id = self.action_ids.get(key)
        if set_id is None:
            blob = json.dumps(key, separators=(",", ":")).encode()
            set_id = hashlib.sha256(blob).hexdigest()[:12]
            self.action_ids[key] = set_id
            new_sets[set_id] = [list(a) for a in key]
        return FileRecord(
            rel, "ok", output=result.relpath, patient=result.patient, actions=set_id,
            warnings=result.warnings, pixels_cleaned=result.pixels_cleaned,
        )


def _map(path: str) -> bytes | mmap.mmap:
    """The file's bytes without copying them (a read-only mapping; empty files as b"")."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


_IOV_MAX = 512


def _atomic_write(path: Path, parts: Sequence[bytes | memoryview | mmap.mmap], made: set[Path]) -> None:
    """Write the slices to a temporary file with writev, then rename it into place."""
    parent = path.parent
    if parent not in made:
        parent.mkdir(parents=True, exist_ok=True)
        made.add(parent)
    tmp = parent / f".{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, len(parts), _IOV_MAX):
            batch = parts[i : i + _IOV_MAX]
            want = sum(map(len, batch))
            done = os.writev(fd, batch)
            if done < want:  # a short write: finish the rest plainly
                rest = memoryview(b"".join(bytes(p) for p in batch))[done:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


ChunkResult = tuple[list[FileRecord], dict[str, list[list[str]]], list[tuple[bytes, str, bytes, bytes]]]


def _next_index(counter: Any) -> int:
    with counter.get_lock():
        i = int(counter.value)
        counter.value = i + 1
    return i


def die_with_parent() -> None:
    """Ask Linux to kill this (forked) worker when its parent dies, e.g. by ``kill -9``:
    an orphaned worker would go on writing for a run that no longer exists."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers end when their work does
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _child(counter: Any, queue: Any, args: tuple[Any, ...], chunks: list[list[str]]) -> None:
    """A forked worker: take chunk indices from the shared counter until none are left."""
    die_with_parent()
    worker = _Worker(*args)
    while (i := _next_index(counter)) < len(chunks):
        try:
            queue.put(("ok", i, worker.run(chunks[i])))
        except BaseException as exc:  # reported; the parent redoes the chunk and raises there
            queue.put(("error", i, f"{type(exc).__name__}: {exc}"))
    queue.put(("done", os.getpid(), None))


def _run_chunks(chunks: list[list[str]], jobs: int, args: tuple[Any, ...], absorb: Any) -> None:
    """Process every chunk with ``jobs`` processes in all: this one and ``jobs - 1`` forked children.

    Every process takes the next chunk from a shared counter, so the load balances
    itself, and the parent's bookkeeping (results, vault) happens between its own
    chunks instead of competing with ``jobs`` busy workers. A chunk that a child did
    not finish (it died, or raised) is done again here, so nothing is lost and a real
    error surfaces in this process.
    """
    children = min(jobs, len(chunks)) - 1
    if children <= 0:
        worker = _Worker(*args)
        for chunk in chunks:
            absorb(worker.run(chunk))
        return
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    queue = ctx.Queue()
    done: set[int] = set()
    finished = 0
    # forked children share this heap copy-on-write; freezing it keeps their garbage
    # collector from touching (and so copying) every inherited page
    gc.freeze()
    procs = [ctx.Process(target=_child, args=(counter, queue, args, chunks), daemon=True) for _ in range(children)]
    try:
        for proc in procs:
            proc.start()
        # the children are already at work: this process builds its engine (tables,
        # profile decisions) at the same time as they build theirs, not before them
        worker = _Worker(*args)

        def handle(msg: tuple[str, Any, Any]) -> None:
            nonlocal finished
            kind, key, payload = msg
            if kind == "ok":
                done.add(key)
                absorb(payload)
            elif kind == "done":
                finished += 1

        while (i := _next_index(counter)) < len(chunks):
            absorb(worker.run(chunks[i]))
            done.add(i)
            while True:
                try:
                    handle(queue.get_nowait())
                except Empty:
                    break
        while finished < children:
            try:
                handle(queue.get(timeout=0.2))
            except Empty:
                if not any(p.is_alive() for p in procs):
                    break  # a child died without saying so: its chunks are redone below
        for proc in procs:
            proc.join()
    finally:
        gc.unfreeze()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    missed = [i for i in range(len(chunks)) if i not in done]
    if missed:
        worker = _Worker(*args)
        for i in missed:
            absorb(worker.run(chunks[i]))


# --- driver --------------------------------------------------------------------------------

_SPREADSHEET_SUFFIXES = (".xlsx",)


def _guided_chunks(items: list[str], jobs: int) -> list[list[str]]:
    """Chunks that shrink towards the end ("guided" scheduling): large ones keep the
    inter-process traffic low, small last ones keep every worker busy until the end."""
    chunks = []
    i = 0
    while i < len(items):
        size = max(_MIN_CHUNK, min(_MAX_CHUNK, (len(items) - i) // (jobs * 4)))
        chunks.append(items[i : i + size])
        i += size
    return chunks


def _walk(src: Path, exclude: Sequence[Path]) -> Iterator[str]:
    excluded = {str(p) for p in exclude}
    base = str(src)
    for root, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in excluded)
        rel_root = os.path.relpath(root, base)
        for name in sorted(files):
            yield name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")


def _checked_files(src: Path, files: Sequence[str]) -> list[str]:
    rels = []
    for rel in dict.fromkeys(files):  # once each, in the given order
        if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
            raise IncisiveLabError(f"files=: {rel!r} is not a relative path inside {src}")
        if not (src / rel).is_file():
            raise IncisiveLabError(f"files=: {rel!r} is not a file under {src}")
        rels.append(rel)
    return rels


def deidentify_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    profile: Profile,
    secret: Secret | None = None,
    vault: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    report: str | os.PathLike[str] | None = None,
    quarantine: str | os.PathLike[str] | None = None,
    safe_private: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    files: Sequence[str] | None = None,
) -> RunReport:
    """De-identify every file under ``src`` into ``dst``.

    Parameters
    ----------
    src, dst : path
        Source folder (or a single file) and destination folder (created if needed;
        must not overlap ``src``).
    profile : Profile
        Mode and options.
    secret : Secret, optional
        The provider's secret; required for pseudonymisation. Anonymisation makes its
        own random salt and must not be given one.
    vault : path, optional
        Pseudonymisation only: the vault file to create or extend.
    jobs : int
        Worker processes (1 = in this process).
    report : path, optional
        Where to write the JSON report.
    quarantine : path, optional
        Where to copy quarantined originals for a steward to review (provider side only).
    safe_private : path, optional
        Extra safe-private table (JSON).
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).
    files : sequence of str, optional
        Only these paths, relative to ``src`` with ``/`` separators (e.g. what curation did
        not quarantine); default: every file under ``src``. A path that is absent, or
        that leaves ``src``, is an error.

    Returns
    -------
    RunReport

    Raises
    ------
    IncisiveLabError
        For bad arguments (missing source, overlapping folders, a secret with
        anonymisation, ...). Problems with individual files do not raise: they are
        reported per file.
    """
    started = time.perf_counter()
    src_path, dst_path = Path(src), Path(dst)
    if not src_path.exists():
        raise IncisiveLabError(f"source {src_path} does not exist")
    if jobs < 1:
        raise IncisiveLabError(f"--jobs must be at least 1 (got {jobs})")
    src_res, dst_res = src_path.resolve(), dst_path.resolve()
    if src_path.is_dir() and (dst_res == src_res or src_res in dst_res.parents or dst_res in src_res.parents):
        raise IncisiveLabError(f"destination {dst_path} and source {src_path} overlap; choose a separate folder")
    if profile.mode is Mode.ANONYMIZE:
        if secret is not None and not secret.ephemeral:
            raise IncisiveLabError("--mode anonymize uses a fresh random salt per run: do not pass --secret-file")
        if vault is not None:
            raise IncisiveLabError("--mode anonymize is irreversible and keeps no vault: do not pass --vault")
        if secret is None:  # a resumed run passes the salt it started with
            secret = Secret.generate(ephemeral=True)
    elif secret is None:
        raise IncisiveLabError("--mode pseudonymize needs the provider's secret (--secret-file)")

    if files is not None:
        if not src_path.is_dir():
            raise IncisiveLabError(f"files= needs a source folder; {src_path} is not one")
        base, rels = src_path, _checked_files(src_path, files)
    elif src_path.is_file():
        base, rels = src_path.parent, [src_path.name]
    else:
        exclude = [p.resolve() for p in (dst_path, Path(quarantine) if quarantine else None) if p is not None]
        base, rels = src_path, list(_walk(src_path, exclude))
    dicom_rels = [r for r in rels if not r.lower().endswith(_SPREADSHEET_SUFFIXES)]
    sheet_rels = [r for r in rels if r.lower().endswith(_SPREADSHEET_SUFFIXES)]
    dst_path.mkdir(parents=True, exist_ok=True)
    qpath = Path(quarantine) if quarantine else None
    sp = Path(safe_private) if safe_private else None
    vault_obj = Vault(vault, secret, create=True) if vault is not None else None

    records: list[FileRecord] = []
    action_sets: dict[str, list[list[str]]] = {}
    vault_count = 0
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=len(dicom_rels), unit="file", desc="de-identifying", disable=not show, file=sys.stderr)
    chunks = _guided_chunks(dicom_rels, jobs)
    pending_vault: list[tuple[bytes, str, bytes, bytes]] = []

    def absorb(result: ChunkResult) -> None:
        nonlocal vault_count
        recs, sets, vrows = result
        records.extend(recs)
        action_sets.update(sets)
        if vault_obj is not None and vrows:
            pending_vault.extend(vrows)
            if len(pending_vault) >= 1000:  # written while the workers go on
                vault_count += vault_obj.add_rows(pending_vault)
                pending_vault.clear()
        bar.update(len(recs))

    try:
        args = (profile, secret, base, dst_path, qpath, sp, vault_obj is not None)
        _run_chunks(chunks, jobs, args, absorb)
        if vault_obj is not None and pending_vault:
            vault_count += vault_obj.add_rows(pending_vault)
        bar.close()
        records.sort(key=lambda r: r.source)
        _resolve_duplicates(records, profile, secret, base, dst_path, sp)
        clinical = []
        if sheet_rels:
            from incisive_lab.deid.clinical import deidentify_workbook

            for rel in sheet_rels:
                clinical.append(deidentify_workbook(base / rel, dst_path / rel, profile=profile, secret=secret, vault=vault_obj, source_name=rel))
    finally:
        bar.close()
        if vault_obj is not None:
            vault_obj.close()
    used = {r.actions for r in records if r.actions}
    run = RunReport(
        mode=profile.mode.value,
        options=sorted(o.value for o in profile.options),
        method_codes=[{"code": c, "scheme": "DCM", "meaning": m} for c, m in profile.method_codes()],
        files=records,
        action_sets={k: action_sets[k] for k in sorted(used)},
        clinical=clinical,
        vault_rows=vault_count,
        seconds=time.perf_counter() - started,
        jobs=jobs,
    )
    if report is not None:
        run.write(report)
    return run


def _resolve_duplicates(records: list[FileRecord], profile: Profile, secret: Secret, base: Path, dst: Path,
                        safe_private: Path | None) -> None:
    """Several sources that map to one output (same SOP Instance UID): keep the first, deterministically.

    Only duplicates are fingerprinted (by de-identifying them again here), so the common
    case pays nothing; the first source's version is (re)written so the result does not
    depend on which worker renamed its file last.
    """
    by_output: dict[str, list[FileRecord]] = {}
    for r in records:
        if r.status == "ok" and r.output:
            by_output.setdefault(r.output, []).append(r)
    engine: Engine | None = None
    for output, group in by_output.items():
        if len(group) < 2:
            continue
        engine = engine or Engine(profile, secret, safe_private=safe_private)
        winner, *others = group  # records are sorted by source path
        first = engine.process((base / winner.source).read_bytes())
        assert first.output is not None
        for other in others:
            same = engine.process((base / other.source).read_bytes()).output == first.output
            other.status = "skipped" if same else "failed"
            other.reason = (
                f"duplicate of {winner.source} (same SOP Instance UID{', same content' if same else ', different content'})"
            )
            other.output = None
        _atomic_write(dst / output, [first.output], set())
