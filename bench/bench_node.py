"""Benchmark: the node's DICOMweb service against Orthanc, same 100,000 instances (issue 5).

One run, one machine, one synthetic data set (default: 100,000 de-identified-looking CT and
MR instances, 128x128 16-bit, ~890 pseudonymous patients with one study each and 2-4
series of 25-50 instances), stored twice: in a node (``NodeStore.add_dicom_files``) served
by ``incisive-lab node serve`` in its own process, and in Orthanc 1.10 with its DICOMweb
plugin (Debian packages). The same httpx client asks both the same requests, interleaved
request by request, after a warm-up that is not counted:

* QIDO-RS study search: ``/studies?PatientID=...``, a 30-day ``StudyDate`` range with
  ``limit=100``, and the same range with ``ModalitiesInStudy=MR``;
* WADO-RS series metadata: first touch (a series not asked for before in this run) and
  warm (asked again);
* WADO-RS series retrieval: ``multipart/related; type="application/dicom";
  transfer-syntax=*`` (as stored, what viewers ask for), the whole body read.

Every request to the node carries a real access token of the development identity
provider (npm oidc-provider), which the node verifies (JWKS, claims, level of assurance,
roles); the researcher reads under a grant of every patient, so every request computes
the caller's read scope (grants, terms, withdrawals) and filters by it in SQL; and every
answer is ledgered durably before it leaves: that is what the node does, so it is measured. Orthanc runs with authentication off, as a PACS behind a hospital
firewall usually does. Both answers are checked against each other (same studies, same
number of instances and parts) before any timing counts.

Orthanc is configured as a performance-minded operator would (see :data:`ORTHANC_CONFIG`):
``StorageAccessOnFind: Never`` (QIDO from its database only, as the node answers from its
index), a 1 GiB storage cache, no storage or HTTP compression (the node compresses
neither), 16 HTTP threads, and
``SeriesMetadata: Full`` (the full header of every instance, which is what the node
returns and what viewers need); its ``MainDicomTags`` mode is measured too, for
information (it returns only the attributes Orthanc keeps in its database).

Must show: p50 and p95 of each operation no slower than Orthanc's. A second table with 8
concurrent clients is printed for information. The generated files, the node and
Orthanc's storage and index are kept under ``bench/results/work-node`` (keyed by the
generator version, the count and the seed) and reused by the next run after their counts
are checked; figures go to ``bench/results/node.json``.

Run: ``make bench`` or ``python bench/run.py node`` (``--count 5000`` for a quick run).
"""

# No "from __future__ import annotations": bench/run.py loads this file without registering it
# in sys.modules, where dataclasses look up string annotations.

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench._stats import percentile  # noqa: E402  (the repository root is on the path now)

RESULTS = HERE / "results"
GENERATOR_VERSION = 1
AUDIENCE = "https://node-bench.incisive-lab.example/"
DATASET = "bench-synthetic"
SIZE = 128  #: rows and columns of every image

#: Orthanc options replacing the test defaults of :mod:`tests._support.orthanc`.
ORTHANC_CONFIG: dict[str, Any] = {
    "StorageAccessOnFind": "Never",
    "MaximumStorageCacheSize": 1024,
    "HttpThreadsCount": 16,
    "StorageCompression": False,
    "HttpCompressionEnabled": False,  # no gzip of answers on a LAN (the node does not compress)
    "LimitFindResults": 0,
    "LimitFindInstances": 0,
}
#: ... and while loading the store only (the load is not measured).
ORTHANC_LOAD_CONFIG: dict[str, Any] = {"SyncStorageArea": False, "StoreMD5ForAttachments": False,
                                       "MaximumStorageCacheSize": 0}
ORTHANC_DICOMWEB = {"StudiesMetadata": "Full", "SeriesMetadata": "Full"}
ORTHANC_DICOMWEB_MAIN_TAGS = {"StudiesMetadata": "MainDicomTags", "SeriesMetadata": "MainDicomTags"}

MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored
DICOM_JSON = "application/dicom+json"


# ============================================================================ the data

@dataclass
class SeriesPlan:
    """One series of the synthetic set."""

    uid: str
    number: int
    modality: str
    description: str
    instances: int


@dataclass
class StudyPlan:
    """One patient's one study."""

    patient_id: str
    study_uid: str
    date: str
    time: str
    sex: str
    age: str
    body_part: str
    description: str
    modality: str
    series: list[SeriesPlan] = field(default_factory=list)


_CT_SERIES = ("AXIAL 5.0 SOFT TISSUE", "AXIAL 1.25 LUNG", "CORONAL MPR 3.0")
_MR_SERIES = ("T2 TSE AX", "T1 VIBE AX", "DWI B800 AX", "T1 VIBE AX POST")


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID under the 2.25 arc (PS3.5 B.2) from ``seed`` and ``parts``."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def plan_studies(count: int, seed: int) -> list[StudyPlan]:
    """The studies and series of a set of exactly ``count`` instances (deterministic)."""
    rng = random.Random(seed)
    studies: list[StudyPlan] = []
    total = 0
    p = 0
    while total < count:
        p += 1
        mr = rng.random() < 0.4
        day = rng.randrange(9 * 365)
        y, rest = 2015 + day // 365, day % 365
        date = f"{y:04d}{1 + rest // 31 % 12:02d}{1 + rest % 28:02d}"
        study = StudyPlan(
            patient_id=f"PSN-{p:06d}", study_uid=_uid(seed, "study", p), date=date,
            time=f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            sex=rng.choice("FM"), age=f"{rng.randrange(35, 86):03d}Y",
            body_part=rng.choice(("BREAST", "PROSTATE")) if mr else rng.choice(("CHEST", "ABDOMEN")),
            description="MR PELVIS/BREAST" if mr else "CT THORAX ABDOMEN",
            modality="MR" if mr else "CT")
        names = _MR_SERIES[:rng.randrange(3, 5)] if mr else _CT_SERIES[:rng.randrange(2, 4)]
        for number, name in enumerate(names, start=2):
            n = min(rng.randrange(25, 41) if mr else rng.randrange(30, 51), count - total)
            if n <= 0:
                break
            study.series.append(SeriesPlan(_uid(seed, "series", p, number), number, study.modality, name, n))
            total += n
        studies.append(study)
    return studies


_LONG_VRS = frozenset(("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))


def _el(tag: int, vr: str, value: bytes | str) -> bytes:
    """One explicit VR little endian element (value padded to an even length)."""
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(raw)) + raw
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


def _us(tag: int, value: int) -> bytes:
    return _el(tag, "US", struct.pack("<H", value))


def _pixels(seed: int, series_uid: str) -> bytes:
    import numpy as np

    rng = np.random.default_rng(int(hashlib.sha256(f"{seed}{series_uid}".encode()).hexdigest()[:8], 16))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    img = np.where(r < SIZE * 0.42, 1040, 24) + rng.integers(0, 40, (SIZE, SIZE))
    return img.astype("<u2").tobytes()


_META_FIXED = (_el(0x00020001, "OB", b"\0\1"),)
_TS = "1.2.840.10008.1.2.1"
_IMPL_UID = "2.25.120398453112905187062371196812231145093"


def _series_elements(seed: int, study: StudyPlan, series: SeriesPlan) -> dict[int, bytes]:
    mr = series.modality == "MR"
    e: dict[int, bytes] = {
        0x00080005: _el(0x00080005, "CS", "ISO_IR 192"),
        0x00080008: _el(0x00080008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
        0x00080016: _el(0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.4" if mr else "1.2.840.10008.5.1.4.1.1.2"),
        0x00080020: _el(0x00080020, "DA", study.date),
        0x00080021: _el(0x00080021, "DA", study.date),
        0x00080023: _el(0x00080023, "DA", study.date),
        0x00080030: _el(0x00080030, "TM", study.time),
        0x00080031: _el(0x00080031, "TM", study.time),
        0x00080033: _el(0x00080033, "TM", study.time),
        0x00080050: _el(0x00080050, "SH", f"A{study.patient_id[4:]}"),
        0x00080060: _el(0x00080060, "CS", series.modality),
        0x00080070: _el(0x00080070, "LO", "SYNTHETIC"),
        0x00080090: _el(0x00080090, "PN", ""),
        0x00081030: _el(0x00081030, "LO", study.description),
        0x0008103E: _el(0x0008103E, "LO", series.description),
        0x00081090: _el(0x00081090, "LO", "BENCH-1"),
        0x00100010: _el(0x00100010, "PN", study.patient_id),
        0x00100020: _el(0x00100020, "LO", study.patient_id),
        0x00100030: _el(0x00100030, "DA", ""),
        0x00100040: _el(0x00100040, "CS", study.sex),
        0x00101010: _el(0x00101010, "AS", study.age),
        0x00120062: _el(0x00120062, "CS", "YES"),
        0x00120063: _el(0x00120063, "LO", "INCISIVE bench synthetic"),
        0x00120064: _el(0x00120064, "SQ", _item(
            _el(0x00080100, "SH", "113100") + _el(0x00080102, "SH", "DCM")
            + _el(0x00080104, "LO", "Basic Application Confidentiality Profile"))),
        0x00180015: _el(0x00180015, "CS", study.body_part),
        0x00180050: _el(0x00180050, "DS", "3" if mr else "1.25"),
        0x0020000D: _el(0x0020000D, "UI", study.study_uid),
        0x0020000E: _el(0x0020000E, "UI", series.uid),
        0x00200010: _el(0x00200010, "SH", "1"),
        0x00200011: _el(0x00200011, "IS", str(series.number)),
        0x00200037: _el(0x00200037, "DS", "1\\0\\0\\0\\1\\0"),
        0x00200052: _el(0x00200052, "UI", _uid(seed, "for", study.study_uid)),
        0x00280002: _us(0x00280002, 1),
        0x00280004: _el(0x00280004, "CS", "MONOCHROME2"),
        0x00280010: _us(0x00280010, SIZE),
        0x00280011: _us(0x00280011, SIZE),
        0x00280030: _el(0x00280030, "DS", "2.5\\2.5"),
        0x00280100: _us(0x00280100, 16),
        0x00280101: _us(0x00280101, 12),
        0x00280102: _us(0x00280102, 11),
        0x00280103: _us(0x00280103, 0),
        0x00281050: _el(0x00281050, "DS", "300" if mr else "40"),
        0x00281051: _el(0x00281051, "DS", "600" if mr else "400"),
        0x7FE00010: _el(0x7FE00010, "OW", _pixels(seed, series.uid)),
    }
    if mr:
        e[0x00180080] = _el(0x00180080, "DS", "4000")
        e[0x00180081] = _el(0x00180081, "DS", "90")
        e[0x00180087] = _el(0x00180087, "DS", "1.5")
    else:
        e[0x00180060] = _el(0x00180060, "DS", "120")
        e[0x00181210] = _el(0x00181210, "SH", "STANDARD")
        e[0x00281052] = _el(0x00281052, "DS", "-1024")
        e[0x00281053] = _el(0x00281053, "DS", "1")
        e[0x00281054] = _el(0x00281054, "LO", "HU")
    return e


def _item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def _instance_bytes(elements: dict[int, bytes], order: list[int], sop_class: str, sop_uid: str,
                    number: int, z: float) -> bytes:
    elements[0x00080018] = _el(0x00080018, "UI", sop_uid)
    elements[0x00200013] = _el(0x00200013, "IS", str(number))
    elements[0x00200032] = _el(0x00200032, "DS", f"-160\\-160\\{z:g}")
    elements[0x00201041] = _el(0x00201041, "DS", f"{z:g}")
    meta = b"".join((*_META_FIXED, _el(0x00020002, "UI", sop_class), _el(0x00020003, "UI", sop_uid),
                     _el(0x00020010, "UI", _TS), _el(0x00020012, "UI", _IMPL_UID),
                     _el(0x00020013, "SH", "INCISIVE_BENCH")))
    head = b"\0" * 128 + b"DICM" + _el(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    return head + b"".join(elements[t] for t in order)


def generate(out: Path, count: int, seed: int) -> list[StudyPlan]:
    """Write the synthetic set under ``out/dicom`` (one folder per patient and series)."""
    from tqdm import tqdm

    studies = plan_studies(count, seed)
    dicom = out / "dicom"
    with tqdm(total=count, unit="file", desc="generate") as bar:
        for study in studies:
            for series in study.series:
                elements = _series_elements(seed, study, series)
                order = sorted({*elements, 0x00080018, 0x00200013, 0x00200032, 0x00201041})
                folder = dicom / study.patient_id / str(series.number)
                folder.mkdir(parents=True, exist_ok=True)
                sop_class = ("1.2.840.10008.5.1.4.1.1.4" if series.modality == "MR"
                             else "1.2.840.10008.5.1.4.1.1.2")
                for i in range(1, series.instances + 1):
                    data = _instance_bytes(elements, order, sop_class, f"{series.uid}.{i}", i,
                                           -10.0 - 2.5 * i)
                    (folder / f"{i:03d}.dcm").write_bytes(data)
                bar.update(series.instances)
    return studies


def _files(data: Path, studies: list[StudyPlan]) -> Iterator[Path]:
    for study in studies:
        for series in study.series:
            for i in range(1, series.instances + 1):
                yield data / "dicom" / study.patient_id / str(series.number) / f"{i:03d}.dcm"


# ============================================================================ the two stores

def _ensure_data(work: Path, count: int, seed: int, rebuild: bool) -> tuple[Path, list[StudyPlan], dict[str, float]]:
    """The generated set, the node and Orthanc's store, built once and checked each run."""
    from incisive_lab.node.store import NodeStore

    root = work.resolve() / f"gen{GENERATOR_VERSION}-n{count}-s{seed}"
    done = root / "complete.json"
    times: dict[str, float] = {}
    if rebuild and root.exists():
        shutil.rmtree(root)
    if done.exists():
        studies = [StudyPlan(**{**s, "series": [SeriesPlan(**x) for x in s["series"]]})
                   for s in json.loads((root / "plan.json").read_text())]
        ok = True
        with NodeStore.open(root / "node", durable=False) as store:
            ok = store.counts().instances == count
        if ok:
            ok = _orthanc_count(root / "orthanc") == count
        if ok:
            print(f"cached set: {root} ({count} instances in the node and in Orthanc)", flush=True)
            return root, studies, json.loads(done.read_text())["build_seconds"]
        print("cached set is incomplete: rebuilding", flush=True)
        shutil.rmtree(root)
    shutil.rmtree(root, ignore_errors=True)  # a build that did not finish
    root.mkdir(parents=True)
    start = time.perf_counter()
    studies = generate(root, count, seed)
    (root / "plan.json").write_text(json.dumps([asdict(s) for s in studies]))
    times["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    with NodeStore.open(root / "node", durable=False) as store:
        summary = store.add_dicom_files(_files(root, studies), dataset=DATASET, link=True, progress=True,
                                        batch=2000)
        if summary.instances != count:
            raise SystemExit(f"the node indexed {summary.instances} of {count} instances")
    times["node"] = time.perf_counter() - start
    start = time.perf_counter()
    from tests._support.orthanc import start_orthanc

    server = start_orthanc(root=root / "orthanc", config={**ORTHANC_CONFIG, **ORTHANC_LOAD_CONFIG},
                           dicomweb=ORTHANC_DICOMWEB)
    try:
        server.upload_many(_files(root, studies), threads=4, progress=True, total=count)
    finally:
        server.stop()
    times["orthanc"] = time.perf_counter() - start
    if _orthanc_count(root / "orthanc") != count:
        raise SystemExit("Orthanc does not hold every instance after the load")
    done.write_text(json.dumps({"count": count, "seed": seed, "generator": GENERATOR_VERSION,
                                "build_seconds": times}, indent=1))
    return root, studies, times


def _orthanc_count(root: Path) -> int:
    import httpx

    from tests._support.orthanc import start_orthanc

    if not (root / "index").exists():
        return -1
    server = start_orthanc(root=root, config=ORTHANC_CONFIG, dicomweb=ORTHANC_DICOMWEB)
    try:
        return int(httpx.get(server.url + "/statistics", timeout=60).json()["CountInstances"])
    finally:
        server.stop()


def _node_service(node: Path, issuer: str, log: Path) -> Any:
    """``incisive-lab node serve`` in its own process; yields its base URL."""
    from tests._support.node_server import serve_process
    from tests._support.orthanc import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "incisive_lab.cli", "node", "serve", "--node-dir", str(node),
           "--issuer", issuer, "--audience", AUDIENCE, "--port", str(port)]
    return serve_process(cmd, f"http://127.0.0.1:{port}", log, "the node service")


# ============================================================================ measuring

@dataclass
class Op:
    """One measured operation: a label and a request per sample for each server."""

    key: str
    label: str
    paths: list[str]
    accept: str
    check: Callable[[Any, Any], None] | None = None


class Timer:
    """Times requests of one client to one server (ms per request, the body fully read)."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        import httpx

        self.base = base
        self.client = httpx.Client(headers=headers, timeout=120)

    def get(self, path: str, accept: str) -> tuple[float, Any]:
        start = time.perf_counter()
        r = self.client.get(self.base + path, headers={"Accept": accept})
        body = r.content
        elapsed = (time.perf_counter() - start) * 1000
        if r.status_code != 200:
            raise SystemExit(f"GET {self.base}{path}: {r.status_code} {body[:300]!r}")
        return elapsed, (r.headers.get("content-type", ""), body)

    def close(self) -> None:
        self.client.close()


def _parts(reply: tuple[str, bytes]) -> int:
    ctype, body = reply
    boundary = ctype.split("boundary=", 1)[1].split(";")[0].strip('"')
    return body.count(b"--" + boundary.encode() + b"\r\n")


def _study_uids(reply: tuple[str, bytes]) -> list[str]:
    return sorted(item["0020000D"]["Value"][0] for item in json.loads(reply[1]))


def _check_same_studies(ours: Any, theirs: Any) -> None:
    if _study_uids(ours) != _study_uids(theirs):
        raise SystemExit(f"study search: the node and Orthanc disagree ({len(_study_uids(ours))} vs "
                         f"{len(_study_uids(theirs))} studies)")


def _check_same_metadata(ours: Any, theirs: Any) -> None:
    a, b = json.loads(ours[1]), json.loads(theirs[1])
    uids = sorted(i["00080018"]["Value"][0] for i in a)
    if uids != sorted(i["00080018"]["Value"][0] for i in b):
        raise SystemExit(f"series metadata: the node and Orthanc disagree ({len(a)} vs {len(b)} instances)")


def _check_same_parts(ours: Any, theirs: Any) -> None:
    if _parts(ours) != _parts(theirs):
        raise SystemExit(f"series retrieval: {_parts(ours)} parts from the node, {_parts(theirs)} from Orthanc")


def _run_interleaved(op: Op, servers: dict[str, Timer], rng: random.Random) -> dict[str, list[float]]:
    """Each sample asks every server once, in a random order; returns ms per server."""
    out: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    for path in op.paths:
        rng.shuffle(names)
        replies = {}
        for name in names:
            ms, reply = servers[name].get(path, op.accept)
            out[name].append(ms)
            replies[name] = reply
        if op.check is not None and "node" in replies and "orthanc" in replies:
            op.check(replies["node"], replies["orthanc"])
    return out


def _concurrent(base: str, headers: dict[str, str], paths: list[str], accept: str,
                clients: int) -> tuple[list[float], float]:
    """``clients`` threads, each with its own keep-alive client, share ``paths``."""
    timers = [Timer(base, headers) for _ in range(clients)]
    lock = threading.Lock()
    todo = list(paths)
    times: list[float] = []

    def worker(t: Timer) -> None:
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop()
            ms, _ = t.get(path, accept)
            with lock:
                times.append(ms)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, timers))
    wall = time.perf_counter() - start
    for t in timers:
        t.close()
    return times, len(paths) / wall


def _date_window(rng: random.Random, days: int = 30) -> str:
    import datetime as dt

    start = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(9 * 365 - days))
    end = start + dt.timedelta(days=days)
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_node")
    parser.add_argument("--count", type=int, default=100_000, help="instances (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--searches", type=int, default=200, help="study searches per server")
    parser.add_argument("--metadata", type=int, default=200, help="series metadata requests (first touch)")
    parser.add_argument("--retrievals", type=int, default=100, help="series retrievals")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the second table (0: skip)")
    parser.add_argument("--work", type=Path, default=RESULTS / "work-node")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the set and both stores")
    args = parser.parse_args(argv)

    from tests._support.idp import start_idp
    from tests._support.node_server import grant_access
    from tests._support.orthanc import start_orthanc

    args.work.mkdir(parents=True, exist_ok=True)
    root, studies, build = _ensure_data(args.work, args.count, args.seed, args.rebuild)
    n_series = sum(len(s.series) for s in studies)
    print(f"synthetic set: {args.count} instances, {len(studies)} patients/studies, {n_series} series, "
          f"{SIZE}x{SIZE} 16-bit, seed {args.seed}; build: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in build.items()), flush=True)

    rng = random.Random(args.seed * 1009 + 1)
    all_series = [(st, se) for st in studies for se in st.series]
    rng.shuffle(all_series)
    n_meta = min(args.metadata, len(all_series) // 3)
    warm_series, first_series, rest = (all_series[:20], all_series[20:20 + n_meta],
                                       all_series[20 + n_meta:])

    def series_path(pair: tuple[StudyPlan, SeriesPlan], suffix: str = "") -> str:
        return f"/studies/{pair[0].study_uid}/series/{pair[1].uid}{suffix}"

    searches = []
    for i in range(args.searches):
        kind = i % 3
        if kind == 0:
            searches.append(("patient", f"/studies?PatientID={rng.choice(studies).patient_id}"))
        elif kind == 1:
            searches.append(("dates", f"/studies?StudyDate={_date_window(rng)}&limit=100"))
        else:
            searches.append(("dates+mr", f"/studies?StudyDate={_date_window(rng)}&ModalitiesInStudy=MR"
                                         f"&limit=100"))
    ops = [
        Op("qido_patient", "QIDO-RS studies ?PatientID=", [p for k, p in searches if k == "patient"],
           DICOM_JSON, _check_same_studies),
        Op("qido_dates", "QIDO-RS studies ?StudyDate=30-day range&limit=100",
           [p for k, p in searches if k == "dates"], DICOM_JSON, _check_same_studies),
        Op("qido_dates_mr", "QIDO-RS studies ?StudyDate=range&ModalitiesInStudy=MR",
           [p for k, p in searches if k == "dates+mr"], DICOM_JSON, _check_same_studies),
        Op("metadata_first", "WADO-RS series metadata, first touch",
           [series_path(p, "/metadata") for p in first_series], DICOM_JSON, _check_same_metadata),
        Op("metadata_warm", "WADO-RS series metadata, warm (asked before)",
           [series_path(rng.choice(first_series), "/metadata") for _ in range(n_meta)], DICOM_JSON,
           _check_same_metadata),
        Op("retrieve", "WADO-RS series retrieval (whole body)",
           [series_path(rng.choice(rest)) for _ in range(args.retrievals)], MULTIPART_DICOM,
           _check_same_parts),
    ]
    other = random.Random(args.seed * 1009 + 2)  # warm-up queries that are not measured
    warmup = ([f"/studies?PatientID={other.choice(studies).patient_id}" for _ in range(10)]
              + [f"/studies?StudyDate={_date_window(other)}&limit=100" for _ in range(10)]
              + [f"/studies?StudyDate={_date_window(other)}&ModalitiesInStudy=MR&limit=100" for _ in range(10)]
              + [series_path(p, "/metadata") for p in warm_series] + [series_path(p) for p in warm_series[:10]])

    results: dict[str, dict[str, list[float]]] = {}
    concurrent: dict[str, dict[str, Any]] = {}
    info: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(start_idp(args.work / "idp", audience=AUDIENCE, access_token_ttl=3600))
        token = idp.token("researcher")
        headers = {"Authorization": f"Bearer {token}", "X-Purpose": "ai-development; project=bench"}
        orthanc = start_orthanc(root=root / "orthanc", config=ORTHANC_CONFIG, dicomweb=ORTHANC_DICOMWEB)
        stack.callback(orthanc.stop)
        node_url = stack.enter_context(_node_service(root / "node", idp.issuer, args.work / "node-service.log"))
        # the researcher reads under a grant of every patient: each request checks the read scope
        tokens = {"researcher": token, "steward": idp.token("steward")}
        grant_access(node_url, tokens.__getitem__, datasets=[DATASET])
        servers = {"node": Timer(node_url + "/dicomweb", headers), "orthanc": Timer(orthanc.dicomweb_url, headers)}
        for t in servers.values():
            stack.callback(t.close)
        print(f"node service {node_url} (pid of its own), Orthanc {orthanc.url}; "
              f"warm-up: {len(warmup)} requests each", flush=True)
        for path in warmup:
            for t in servers.values():
                t.get(path, MULTIPART_DICOM if not path.startswith("/studies?") and not path.endswith("/metadata")
                      else DICOM_JSON)
        for op in ops:
            start = time.perf_counter()
            results[op.key] = _run_interleaved(op, servers, rng)
            print(f"  {op.label}: {len(op.paths)} samples each, {time.perf_counter() - start:.1f} s", flush=True)
        if args.clients:
            for key, paths, accept in (
                    ("qido_patient", [p for k, p in searches if k == "patient"] * 3, DICOM_JSON),
                    ("metadata_warm", [series_path(p, "/metadata") for p in first_series], DICOM_JSON),
                    ("retrieve", [series_path(rng.choice(rest)) for _ in range(args.retrievals)], MULTIPART_DICOM)):
                concurrent[key] = {}
                for name, base in (("node", node_url + "/dicomweb"), ("orthanc", orthanc.dicomweb_url)):
                    times, rate = _concurrent(base, headers, paths, accept, args.clients)
                    concurrent[key][name] = {"p50_ms": percentile(times, 0.5), "p95_ms": percentile(times, 0.95),
                                             "requests_per_s": rate}
        orthanc.stop()
        # Orthanc's lighter metadata mode, for information: the attributes of its database only.
        light = start_orthanc(root=root / "orthanc", config=ORTHANC_CONFIG, dicomweb=ORTHANC_DICOMWEB_MAIN_TAGS)
        stack.callback(light.stop)
        lt = Timer(light.dicomweb_url, headers)
        stack.callback(lt.close)
        for path in [series_path(p, "/metadata") for p in warm_series]:
            lt.get(path, DICOM_JSON)
        info["metadata_main_tags"] = _run_interleaved(
            Op("metadata_main_tags", "", [series_path(rng.choice(rest), "/metadata") for _ in range(n_meta)],
               DICOM_JSON), {"orthanc": lt}, rng)

    rows = []
    print()
    print(f"{'operation (sequential, one client)':<56} {'node p50':>9} {'p95':>8} {'Orthanc p50':>12} "
          f"{'p95':>8} {'p50 x':>6} {'p95 x':>6}")
    print("-" * 110)
    ok = True
    for op in ops:
        a, b = results[op.key]["node"], results[op.key]["orthanc"]
        row = {"operation": op.key, "label": op.label, "samples": len(a),
               "node_p50_ms": percentile(a, 0.5), "node_p95_ms": percentile(a, 0.95),
               "orthanc_p50_ms": percentile(b, 0.5), "orthanc_p95_ms": percentile(b, 0.95)}
        row["ratio_p50"] = row["node_p50_ms"] / row["orthanc_p50_ms"]
        row["ratio_p95"] = row["node_p95_ms"] / row["orthanc_p95_ms"]
        row["holds"] = row["ratio_p50"] <= 1.0 and row["ratio_p95"] <= 1.0
        ok &= row["holds"]
        rows.append(row)
        print(f"{op.label:<56} {row['node_p50_ms']:>9.2f} {row['node_p95_ms']:>8.2f} {row['orthanc_p50_ms']:>12.2f} "
              f"{row['orthanc_p95_ms']:>8.2f} {row['ratio_p50']:>6.2f} {row['ratio_p95']:>6.2f}")
    light_ms = info["metadata_main_tags"]["orthanc"]
    print(f"{'  for information: Orthanc SeriesMetadata=MainDicomTags':<56} {'':>9} {'':>8} "
          f"{percentile(light_ms, 0.5):>12.2f} {percentile(light_ms, 0.95):>8.2f}")
    print("(ms per request; ratio = node / Orthanc, below 1 is faster)")
    if concurrent:
        print()
        print(f"{args.clients} concurrent clients (for information)".ljust(56)
              + f" {'node p50':>9} {'p95':>8} {'req/s':>7} {'Orthanc p50':>12} {'p95':>8} {'req/s':>7}")
        print("-" * 112)
        for key, by in concurrent.items():
            n, o = by["node"], by["orthanc"]
            print(f"{key:<56} {n['p50_ms']:>9.2f} {n['p95_ms']:>8.2f} {n['requests_per_s']:>7.0f} "
                  f"{o['p50_ms']:>12.2f} {o['p95_ms']:>8.2f} {o['requests_per_s']:>7.0f}")
    print()
    for row in rows:
        print(f"  {'PASS' if row['holds'] else 'FAIL'}  {row['label']}: p50 {row['ratio_p50']:.2f}x, "
              f"p95 {row['ratio_p95']:.2f}x Orthanc's")
    print(f"  {'PASS' if ok else 'FAIL'}  p50 and p95 of QIDO-RS study search, series metadata and "
          "WADO-RS series retrieval no slower than Orthanc's")
    RESULTS.mkdir(exist_ok=True)
    result = {
        "instances": args.count, "studies": len(studies), "series": n_series, "seed": args.seed,
        "generator": GENERATOR_VERSION, "image": f"{SIZE}x{SIZE} uint16", "build_seconds": build,
        "sequential": rows, "concurrent_clients": args.clients, "concurrent": concurrent,
        "orthanc_main_dicom_tags_metadata": {"p50_ms": percentile(light_ms, 0.5), "p95_ms": percentile(light_ms, 0.95)},
        "orthanc_config": {**ORTHANC_CONFIG, "DicomWeb": ORTHANC_DICOMWEB},
        "orthanc_version": _orthanc_version(), "targets_hold": ok,
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "machine": platform.machine(),
        "raw_ms": results,
    }
    (RESULTS / "node.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nfigures written to {RESULTS / 'node.json'}")
    return 0 if ok else 1


def _orthanc_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        from tests._support.orthanc import find_orthanc

        done = subprocess.run([find_orthanc(), "--version"], capture_output=True, text=True, timeout=10)
        return done.stdout.splitlines()[0].strip() if done.stdout else ""
    return ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
