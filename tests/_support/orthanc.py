"""Throw-away Orthanc servers (Debian ``orthanc`` + ``orthanc-dicomweb``) for tests.

A test that needs a PACS starts one with :func:`start_orthanc` (or the
:func:`orthanc_server` context manager). Each server lives in its own temporary
directory (storage, index and ``config.json``), with a free HTTP port and a free DICOM
port, the DICOMweb plugin loaded, no authentication, ``RemoteAccessAllowed`` false (it
answers loopback clients only: Orthanc 1.10 has no option to bind one interface, it
listens on all of them) and ``TcpNoDelay`` on. :meth:`OrthancServer.upload` stores DICOM
files through the REST API (``POST /instances``); :meth:`OrthancServer.stop` ends the
process and removes the directory (also at interpreter exit if a test forgot).

The binary is ``$INCISIVE_ORTHANC`` if set, else ``Orthanc`` on ``PATH`` (Debian installs
``/usr/sbin/Orthanc``). The plugin is ``$INCISIVE_ORTHANC_DICOMWEB`` if set, else the
first ``libOrthancDicomWeb.so*`` under the Debian plugin folders. A missing Orthanc is an
error (:class:`OrthancUnavailable`), never a skip: ``make test`` installs it, and a
back-end that is not tested is not supported.

Example
-------
>>> with orthanc_server() as pacs:                              # doctest: +SKIP
...     pacs.upload(Path("objects").rglob("*.dcm"))
...     httpx.get(pacs.dicomweb_url + "/studies").json()
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["OrthancServer", "OrthancUnavailable", "find_dicomweb_plugin", "find_orthanc",
           "free_port", "orthanc_server", "start_orthanc"]

_PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
                 "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                 "/usr/lib/*/orthanc/libOrthancDicomWeb.so*")


class OrthancUnavailable(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is missing, or the server did not start."""


def find_orthanc() -> str:
    """The Orthanc executable (``$INCISIVE_ORTHANC``, else ``Orthanc`` on PATH or /usr/sbin)."""
    explicit = os.environ.get("INCISIVE_ORTHANC")
    if explicit:
        return explicit
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if not found:
        raise OrthancUnavailable("Orthanc is not installed (Debian package 'orthanc')")
    return found


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin library installed by Debian's ``orthanc-dicomweb``."""
    explicit = os.environ.get("INCISIVE_ORTHANC_DICOMWEB")
    if explicit:
        return Path(explicit)
    for pattern in _PLUGIN_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[0])
    raise OrthancUnavailable("the Orthanc DICOMweb plugin is not installed "
                             "(Debian package 'orthanc-dicomweb')")


def free_port() -> int:
    """A TCP port free on loopback right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class OrthancServer:
    """One running Orthanc: its directory, ports, process and URLs."""

    root: Path
    http_port: int
    dicom_port: int
    process: subprocess.Popen[bytes]
    _stopped: bool = field(default=False, repr=False)
    keep: bool = field(default=False, repr=False)  #: keep ``root`` (storage, index) at stop

    @property
    def url(self) -> str:
        """The REST API root, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``."""
        return f"{self.url}/dicom-web"

    @property
    def log(self) -> str:
        """What Orthanc wrote to its log so far."""
        path = self.root / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def upload(self, files: Iterable[Path]) -> int:
        """Store DICOM files through ``POST /instances``; return how many were stored.

        Raises
        ------
        RuntimeError
            When Orthanc refuses a file (the message names it).
        """
        n = 0
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for path in files:
                r = client.post("/instances", content=Path(path).read_bytes(),
                                headers={"Content-Type": "application/dicom"})
                if r.status_code != 200:
                    raise RuntimeError(f"Orthanc refused {path}: {r.status_code} {r.text[:200]}")
                n += 1
        return n

    def upload_many(self, files: Iterable[Path], *, threads: int = 4,
                    progress: bool = False, total: int | None = None) -> int:
        """Store DICOM files through ``POST /instances`` from ``threads`` keep-alive clients.

        Like :meth:`upload`, for large sets (Orthanc stores concurrent uploads in parallel);
        ``progress`` shows a tqdm bar of ``total`` files.
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        local = threading.local()
        clients: list[httpx.Client] = []
        lock = threading.Lock()

        def one(path: Path) -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(base_url=self.url, timeout=120)
                with lock:
                    clients.append(client)
            r = client.post("/instances", content=Path(path).read_bytes(),
                            headers={"Content-Type": "application/dicom"})
            if r.status_code != 200:
                raise RuntimeError(f"Orthanc refused {path}: {r.status_code} {r.text[:200]}")

        bar: Any = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="file", desc="orthanc upload")
        n = 0
        try:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(one, files):
                    n += 1
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            for client in clients:
                client.close()
        return n

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its directory
        (unless it was started with a ``root`` to keep)."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _config(root: Path, http_port: int, dicom_port: int, plugin: Path) -> dict[str, object]:
    return {
        "Name": "incisive-test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomPort": dicom_port,
        "DicomAet": "INCISIVETEST",
        "DicomAlwaysAllowStore": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "TcpNoDelay": True,
        "KeepAlive": True,
        "HttpThreadsCount": 16,
        "HttpDescribeErrors": True,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "SaveJobs": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "QidoCaseSensitive": True,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def start_orthanc(*, attempts: int = 3, timeout: float = 30.0, root: Path | None = None,
                  config: Mapping[str, Any] | None = None,
                  dicomweb: Mapping[str, Any] | None = None) -> OrthancServer:
    """Start a fresh Orthanc on free loopback ports and wait for ``GET /system``.

    Parameters
    ----------
    attempts, timeout
        Tries, and seconds to wait for each.
    root
        A directory to keep (storage, index, configuration and log) instead of a
        temporary one removed at stop: a later call with the same ``root`` serves the
        same data (benchmarks reuse a large store this way).
    config
        Top-level configuration options that replace the defaults (e.g.
        ``{"SyncStorageArea": False}`` while loading a throw-away store).
    dicomweb
        Options of the ``DicomWeb`` section that replace its defaults (e.g.
        ``{"SeriesMetadata": "MainDicomTags"}``).

    Raises
    ------
    OrthancUnavailable
        When the binary or plugin is missing, or the server does not answer in time
        (the message carries the end of its log).
    """
    binary = find_orthanc()
    plugin = find_dicomweb_plugin()
    last_log = ""
    keep = root is not None
    for _ in range(attempts):
        where = Path(root).resolve() if root is not None else Path(tempfile.mkdtemp(prefix="incisive-orthanc-"))
        where.mkdir(parents=True, exist_ok=True)
        http_port, dicom_port = free_port(), free_port()
        while dicom_port == http_port:
            dicom_port = free_port()
        settings = _config(where, http_port, dicom_port, plugin)
        settings.update(config or {})
        web = dict(settings["DicomWeb"])  # type: ignore[call-overload]
        web.update(dicomweb or {})
        settings["DicomWeb"] = web
        config_file = where / "config.json"
        config_file.write_text(json.dumps(settings, indent=2))
        log = (where / "orthanc.log").open("wb")
        proc = subprocess.Popen([binary, str(config_file)], cwd=where, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        server = OrthancServer(where, http_port, dicom_port, proc, keep=keep)
        atexit.register(server.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/system", timeout=2).status_code == 200:
                    return server
            time.sleep(0.05)
        last_log = server.log[-2000:]
        server.stop()
    raise OrthancUnavailable(f"Orthanc did not start; its log ends with:\n{last_log}")


@contextlib.contextmanager
def orthanc_server() -> Iterator[OrthancServer]:
    """A fresh Orthanc for the ``with`` block (see :func:`start_orthanc`)."""
    server = start_orthanc()
    try:
        yield server
    finally:
        server.stop()
