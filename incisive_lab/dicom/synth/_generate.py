"""Orchestration: plan, render, write spreadsheets and manifests, install the tree atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from incisive_lab.errors import IncisiveLabError

__all__ = [
    "GENERATOR_VERSION",
    "INDEX_FORMAT",
    "TRUTH_FORMAT",
    "SiteCounts",
    "SynthSummary",
    "distribute_patients",
    "generate",
]

#: Version of the generator; part of the manifest and of the "same parameters" check.
GENERATOR_VERSION = "1.0.0"
#: ``format`` of ``truth/<site>.json``.
TRUTH_FORMAT = "incisive-synth-truth/1"
#: ``format`` of ``truth/index.json``.
INDEX_FORMAT = "incisive-synth-index/1"

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class SiteCounts:
    """What was written for one site (or, summed, for the whole set)."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    files: int = 0
    bytes: int = 0
    burned_in_files: int = 0
    compressed_files: int = 0

    def __add__(self, other: SiteCounts) -> SiteCounts:
        return SiteCounts(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(c: SiteCounts) -> tuple[int, ...]:
    return (c.patients, c.studies, c.series, c.files, c.bytes, c.burned_in_files,
            c.compressed_files)


@dataclass(frozen=True)
class SynthSummary:
    """The result of :func:`generate`.

    Attributes
    ----------
    out : Path
        The output folder.
    seed, patients : int
        Parameters of the run.
    sites : tuple of str
        Site names, in order.
    per_site : Mapping[str, SiteCounts]
        Counts per site.
    elapsed_seconds : float
        Wall time of the run (not written anywhere in the output).
    """

    out: Path
    seed: int
    patients: int
    sites: tuple[str, ...]
    per_site: Mapping[str, SiteCounts]
    elapsed_seconds: float

    @property
    def total(self) -> SiteCounts:
        """Counts summed over the sites."""
        total = SiteCounts()
        for counts in self.per_site.values():
            total = total + counts
        return total

    def table(self) -> str:
        """A plain-text table of the counts, one row per site and a total row."""
        head = ("site", "patients", "studies", "series", "files", "MB", "burned-in",
                "compressed")
        rows = [head]
        for name, c in [*self.per_site.items(), ("total", self.total)]:
            rows.append((name, str(c.patients), str(c.studies), str(c.series), str(c.files),
                         f"{c.bytes / 1e6:.1f}", str(c.burned_in_files),
                         str(c.compressed_files)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                           for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def distribute_patients(patients: int, sites: Sequence[str]) -> dict[str, int]:
    """Round-robin: patient *i* goes to site ``i % len(sites)``."""
    n = len(sites)
    return {s: patients // n + (1 if k < patients % n else 0) for k, s in enumerate(sites)}


def _validate(patients: int, seed: int, sites: Sequence[str]) -> tuple[str, ...]:
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise IncisiveLabError(f"--patients must be a positive integer (got {patients!r})")
    if patients > 100_000:
        raise IncisiveLabError("--patients is limited to 100000")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise IncisiveLabError(f"--seed must be a non-negative integer (got {seed!r})")
    names = tuple(sites)
    if not names:
        raise IncisiveLabError("--sites must name at least one site")
    for name in names:
        if not isinstance(name, str) or not _SITE_NAME.match(name) or name.lower() == "truth":
            raise IncisiveLabError(
                f"bad site name {name!r}: use 1-32 letters, digits, '-' or '_' (not 'truth')")
    if len({n.lower() for n in names}) != len(names):
        raise IncisiveLabError(f"--sites has duplicates: {','.join(names)}")
    return names


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _check_target(out: Path, params: dict[str, Any]) -> bool:
    """Return True when `out` holds a set made with the same parameters (to be replaced)."""
    if out.exists() and not out.is_dir():
        raise IncisiveLabError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    index_path = out / "truth" / "index.json"
    try:
        index = json.loads(index_path.read_text("utf-8"))
    except (OSError, ValueError):
        raise IncisiveLabError(
            f"{out} is not empty and was not produced by the generator (no readable "
            f"truth/index.json): refusing to write there") from None
    if index.get("format") != INDEX_FORMAT:
        raise IncisiveLabError(f"{out}: truth/index.json is not a synthetic-set index")
    differ = [f"{k}: {index.get(k)!r} there, {v!r} asked"
              for k, v in params.items() if index.get(k) != v]
    if differ:
        raise IncisiveLabError(
            f"{out} holds a synthetic set made with other parameters ({'; '.join(differ)}); "
            "choose an empty folder or the same parameters")
    return True


def _install(tmp: Path, out: Path, replace: bool) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if not replace:  # an empty folder
        out.rmdir()
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.synth-old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def generate(
    out: Path | str,
    *,
    patients: int,
    seed: int,
    sites: Sequence[str] = ("a", "b", "c"),
    progress: bool | None = None,
) -> SynthSummary:
    """Generate a synthetic multi-site set of PHI-laden DICOM and clinical spreadsheets.

    Layout: ``OUT/<site>/dicom/<PatientID>/study<k>/series<NNN>_<modality>/<NNNN>.dcm``,
    ``OUT/<site>/clinical.xlsx``, ``OUT/truth/<site>.json`` and ``OUT/truth/index.json``.

    Parameters
    ----------
    out : path
        Output folder: must not exist, be empty, or hold a set generated with the same
        parameters (which is then regenerated, byte for byte identical).
    patients : int
        Number of patients over all sites (round-robin over the sites).
    seed : int
        Seed; the output is a pure function of (patients, seed, sites, generator version).
    sites : sequence of str
        Site names (folder names); the position picks country and vendor.
    progress : bool, optional
        Show a progress bar (default: when standard error is a terminal).

    Returns
    -------
    SynthSummary

    Raises
    ------
    IncisiveLabError
        Bad parameters, or an output folder that holds something else.

    Examples
    --------
    >>> from incisive_lab.dicom.synth import generate
    >>> summary = generate(tmp_path / "set", patients=4, seed=1)  # doctest: +SKIP
    >>> summary.total.files  # doctest: +SKIP
    167
    """
    from incisive_lab.cdm.spreadsheet import write_workbook
    from incisive_lab.dicom.synth._plan import plan_site
    from incisive_lab.dicom.synth._private import PRIVATE_TAGS
    from incisive_lab.dicom.synth._render import render_site

    names = _validate(patients, seed, sites)
    out = Path(out)
    params = {"seed": seed, "patients": patients, "sites": list(names),
              "generator_version": GENERATOR_VERSION}
    replace = _check_target(out, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.synth-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    if progress is None:
        progress = sys.stderr.isatty()
    started = time.perf_counter()
    per_site: dict[str, SiteCounts] = {}
    counts = distribute_patients(patients, names)
    try:
        tmp.mkdir()
        (tmp / "truth").mkdir()
        from tqdm import tqdm

        with tqdm(total=patients, disable=not progress, unit="patient", desc="synth",
                  leave=False) as bar:
            for index, name in enumerate(names):
                plan = plan_site(seed, name, index, counts[name])
                root = tmp / name
                (root / "dicom").mkdir(parents=True)
                result = render_site(seed, plan, root, on_patient=lambda: bar.update(1))
                write_workbook([p.clinical for p in plan.patients], root / "clinical.xlsx")
                site = plan.site
                truth = {
                    "format": TRUTH_FORMAT,
                    "generator_version": GENERATOR_VERSION,
                    "site": name,
                    "seed": seed,
                    "institution": {
                        "name": site.institution,
                        "department": site.department,
                        "address": site.address,
                        "phone": site.phone,
                        "city": site.city,
                        "country": site.country.name,
                        "ae_title": site.ae_title,
                        "issuer_of_patient_id": site.mrn_issuer,
                        "legacy_issuer": plan.legacy_issuer,
                        "national_id_issuer": site.country.national_issuer,
                        "specific_character_set": site.charset,
                        "vendor": site.vendor,
                        "mr_vendor": site.mr_vendor,
                        "stations": {m: d.station for m, d in site.devices.items()},
                        "device_serial_numbers": {m: d.serial for m, d in site.devices.items()},
                        "staff": {
                            "radiologists": [x.pn for x in site.radiologists],
                            "technologists": [x.pn for x in site.technologists],
                            "referring_physicians": [x.pn for x in site.referrers],
                        },
                    },
                    "site_phi_tokens": plan.tokens(),
                    "patients": result.patients,
                    "files": result.files,
                }
                (tmp / "truth" / f"{name}.json").write_bytes(_dump(truth))
                xlsx_bytes = (root / "clinical.xlsx").stat().st_size
                per_site[name] = SiteCounts(
                    patients=len(plan.patients), studies=result.n_studies,
                    series=result.n_series, files=result.n_files,
                    bytes=result.n_bytes + xlsx_bytes, burned_in_files=result.n_burned,
                    compressed_files=result.n_compressed)
        index_doc = {
            "format": INDEX_FORMAT,
            "generator": "incisive_lab.dicom.synth",
            **params,
            "truth": {name: f"truth/{name}.json" for name in names},
            "patients_per_site": counts,
            "files_per_site": {name: c.files for name, c in per_site.items()},
            "private_tags": [
                {"creator": t.creator, "group": f"{t.group:04X}", "element_offset":
                 f"{t.offset:02X}", "vr": t.vr, "name": t.name, "safe": t.safe,
                 "identifying": t.identifying, "where": t.where}
                for t in PRIVATE_TAGS
            ],
        }
        (tmp / "truth" / "index.json").write_bytes(_dump(index_doc))
        _install(tmp, out, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthSummary(out=out, seed=seed, patients=patients, sites=names,
                        per_site=MappingProxyType(per_site),
                        elapsed_seconds=time.perf_counter() - started)
