"""The data steward's HTML page and its thumbnails.

The page is self-contained (inline CSS, PNG thumbnails as data URIs): a summary table by check
and severity, the quarantined items with their reasons, and every finding. Patients appear by
their label, files by relative path; series by the label, modality and first file.

Thumbnails are made only for series with errors, from one file (the first one an error names,
else the middle one), scaled to at most 128 pixels. They are *not* made for files that may carry
burned-in text (secondary captures, Burned In Annotation not ``NO``): the page shows a
placeholder instead, so that no name rendered into pixels reaches the report. Series whose pixel
data cannot be decoded also get a placeholder.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from incisive_lab.curation.findings import CHECKS, Finding

if TYPE_CHECKING:
    from incisive_lab.curation._instance import InstanceInfo
    from incisive_lab.curation.result import CurationResult

__all__ = ["make_thumbnails", "render_html"]

#: Most series given a thumbnail in one report.
MAX_THUMBNAILS = 60
_SIZE = 128
PLACEHOLDER_TEXT = "no thumbnail: may carry burned-in text"
PLACEHOLDER_UNDECODABLE = "no thumbnail: pixels not decodable"


def _png_data_uri(path: Path) -> str | None:
    import numpy as np
    import pydicom
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        from pydicom.pixels import pixel_array

        arr = np.asarray(pixel_array(ds, index=0), dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        return None
    lo, hi = np.percentile(arr, (1, 99))
    scaled = np.clip((arr - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255 - scaled
    img = Image.fromarray(scaled.astype(np.uint8), "L")
    img.thumbnail((_SIZE, _SIZE))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_thumbnails(root: Path, infos: Sequence[InstanceInfo], findings: Iterable[Finding]) -> dict[str, str]:
    """SeriesInstanceUID -> PNG data URI (or ``"placeholder:<why>"``) for series with errors."""
    by_series: dict[str, list[InstanceInfo]] = defaultdict(list)
    for i in infos:
        if i.readable:
            by_series[i.series_uid].append(i)
    named: dict[str, str] = {}
    for f in findings:
        if f.severity == "error" and f.series and f.series in by_series:
            named.setdefault(f.series, f.file or "")
    out: dict[str, str] = {}
    for uid in list(named)[:MAX_THUMBNAILS]:
        members = sorted(by_series[uid], key=lambda i: i.path)
        pick = next((i for i in members if i.path == named[uid] and i.pixel_ok), None)
        pick = pick or next((i for i in members[len(members) // 2:] + members if i.pixel_ok), None)
        if any(i.may_show_text for i in members):
            out[uid] = f"placeholder:{PLACEHOLDER_TEXT}"
        elif pick is None:
            out[uid] = f"placeholder:{PLACEHOLDER_UNDECODABLE}"
        else:
            try:
                uri = _png_data_uri(root / pick.path)
            except Exception:
                uri = None
            out[uid] = uri or f"placeholder:{PLACEHOLDER_UNDECODABLE}"
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f2f2f2}.error{color:#a00;font-weight:600}.warning{color:#a60}
.ph{display:inline-block;width:128px;height:96px;background:#ddd;color:#555;font-size:.75rem;
padding:4px;box-sizing:border-box}code{font-size:.85rem}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def render_html(result: CurationResult) -> str:
    """The report as one self-contained HTML page."""
    s = result.summary()
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Curation report</title>",
           f"<style>{_CSS}</style></head><body><h1>Curation report</h1>",
           "<p>Errors quarantine the series or patient shown; warnings pass. Patients appear by "
           "label, files by path relative to the DICOM folder.</p>",
           "<table><tr><th>files checked</th><th>series</th><th>patients</th><th>clinical rows</th>"
           "<th>errors</th><th>warnings</th><th>quarantined files</th><th>quarantined series</th>"
           "<th>quarantined patients</th></tr>",
           f"<tr><td>{s['files_checked']}</td><td>{s['series']}</td><td>{s['patients']}</td>"
           f"<td>{s['clinical_rows']}</td><td class='error'>{s['errors']}</td>"
           f"<td class='warning'>{s['warnings']}</td><td>{s['quarantined_files']}</td>"
           f"<td>{s['quarantined_series']}</td><td>{s['quarantined_patients']}</td></tr></table>",
           "<h2>Checks</h2><table><tr><th>check</th><th>severity</th><th>scope</th>"
           "<th>an error quarantines</th><th>what it means</th><th>findings</th></tr>"]
    counts = Counter(f.check for f in result.findings)
    for c in CHECKS.values():
        out.append(f"<tr><td><code>{_e(c.id)}</code></td><td class='{c.severity}'>{c.severity}</td>"
                   f"<td>{c.scope}</td><td>{_e(c.quarantines or '—')}</td><td>{_e(c.title)}</td>"
                   f"<td>{counts.get(c.id, 0)}</td></tr>")
    out.append("</table><h2>Quarantined</h2>")
    if not result.quarantine:
        out.append("<p>Nothing is quarantined.</p>")
    else:
        out.append("<table><tr><th>what</th><th>patient</th><th>series / file</th><th>files</th>"
                   "<th>rows</th><th>reasons</th><th>thumbnail</th></tr>")
        for item in result.quarantine:
            series = result.series.get(item.key) if item.kind == "series" else None
            where = (f"{_e(series.modality_value)} {_e(series.body_part_value)} — "
                     f"<code>{_e(series.first_file)}</code>" if series else
                     f"<code>{_e(item.key)}</code>" if item.kind == "file" else "all images and the clinical row")
            thumb = ""
            uri = result.thumbnails.get(item.key, "") if item.kind == "series" else ""
            if uri.startswith("data:image/png"):
                thumb = f"<img alt='thumbnail' src='{uri}'>"
            elif uri.startswith("placeholder:"):
                thumb = f"<span class='ph'>{_e(uri.split(':', 1)[1])}</span>"
            reasons = "<br>".join(_e(r) for r in item.reasons)
            out.append(f"<tr><td>{item.kind}</td><td>{_e(item.patient)}</td><td>{where}</td>"
                       f"<td>{len(item.files)}</td><td>{_e(', '.join(map(str, item.rows)))}</td>"
                       f"<td>{reasons}</td><td>{thumb}</td></tr>")
        out.append("</table>")
    out.append("<h2>Findings</h2>")
    if not result.findings:
        out.append("<p>No findings.</p>")
    else:
        out.append("<table><tr><th>severity</th><th>check</th><th>patient</th><th>file / row</th>"
                   "<th>attribute / column</th><th>message</th></tr>")
        for f in result.findings:
            place = f"<code>{_e(f.file)}</code>" if f.file else (f"row {f.row}" if f.row else "")
            out.append(f"<tr><td class='{f.severity}'>{f.severity}</td><td><code>{_e(f.check)}</code></td>"
                       f"<td>{_e(f.patient)}</td><td>{place}</td><td>{_e(f.attribute)}</td>"
                       f"<td>{_e(f.message)}</td></tr>")
        out.append("</table>")
    out.append("<h2>Series codes</h2><table><tr><th>patient</th><th>first file</th><th>files</th>"
               "<th>modality</th><th>body part</th></tr>")
    for sr in result.series.values():
        mod = f"{_e(sr.modality.code)} ({_e(sr.modality.meaning)})" if sr.modality else _e(sr.modality_value)
        body = (f"SCT {_e(sr.body_part.code)} {_e(sr.body_part.meaning)}" if sr.body_part
                else _e(sr.body_part_value or "—"))
        out.append(f"<tr><td>{_e(sr.patient)}</td><td><code>{_e(sr.first_file)}</code></td>"
                   f"<td>{len(sr.files)}</td><td>{mod}</td><td>{body}</td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)
