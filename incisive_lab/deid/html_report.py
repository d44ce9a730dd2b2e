"""A readable HTML page for a de-identification run (next to the JSON report).

It shows what a steward wants to see at a glance: the profile and options, how many
files were released, quarantined or failed and why, which actions were taken how
often, and thumbnails of *de-identified* images — one per series kind, plus every
image whose burned-in text was cleaned. Originals are never shown: their pixels may
carry the very text that was removed.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from pathlib import Path

import numpy as np

from incisive_lab.deid.batch import RunReport

__all__ = ["write_html_report"]

_THUMB = 160
_MAX_THUMBS = 24


def _thumbnail(path: Path) -> str | None:
    """A base64 PNG thumbnail of an instance (middle frame), or None if it has no pixels."""
    import pydicom
    from PIL import Image

    try:
        ds = pydicom.dcmread(path)
        arr = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception:
        return None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2]
    if arr.ndim == 3:
        arr = arr.mean(axis=-1)
    lo, hi = np.percentile(arr, (1, 99.5))
    img = np.clip((arr - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        img = 255 - img
    pil = Image.fromarray(img)
    pil.thumbnail((_THUMB, _THUMB))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_html_report(run: RunReport, dst: Path, path: Path, *, title: str = "De-identification report") -> Path:
    """Write the HTML page for ``run`` (outputs under ``dst``) to ``path``, atomically."""
    counts = run.counts
    actions: Counter[tuple[str, str, str]] = Counter()
    for rec in run.files:
        if rec.actions:
            for attr, act, basis in run.action_sets.get(rec.actions, []):
                actions[(attr, act, basis)] += 1
    # every image whose text was cleaned, then the middle instance of as many series as fit
    cleaned = [("text cleaned", dst / r.output) for r in run.files if r.status == "ok" and r.output and r.pixels_cleaned]
    series: dict[str, list[str]] = {}
    for rec in run.files:
        if rec.status == "ok" and rec.output and not rec.pixels_cleaned:
            series.setdefault("/".join(rec.output.split("/")[:3]), []).append(rec.output)
    middle = [("released", dst / outs[len(outs) // 2]) for outs in series.values()]
    chosen = (cleaned[: _MAX_THUMBS // 2] + middle)[:_MAX_THUMBS]
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}th{background:#f4f4f4}"
        ".ok{color:#176b1b}.bad{color:#a11}.grid{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{margin:0;text-align:center;font-size:.8em}img{border:1px solid #999;background:#000}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Mode <b>{e(run.mode)}</b>; options: {e(', '.join(run.options) or 'none (Basic Profile)')}; "
        f"{len(run.files)} files in {run.seconds:.1f} s with {run.jobs} job(s).</p>",
        "<table><tr><th>released</th><th>quarantined</th><th>failed</th><th>skipped</th><th>patients</th>"
        "<th>pixels cleaned</th><th>vault rows</th><th>spreadsheets</th></tr>",
        f"<tr><td class='ok'>{counts['ok']}</td><td>{counts['quarantined']}</td>"
        f"<td class='{'bad' if counts['failed'] else 'ok'}'>{counts['failed']}</td><td>{counts['skipped']}</td>"
        f"<td>{run.patients}</td><td>{sum(f.pixels_cleaned for f in run.files)}</td><td>{run.vault_rows}</td>"
        f"<td>{len(run.clinical)}</td></tr></table>",
        "<p>De-identification method codes: " + "; ".join(e(f"{c['code']} {c['meaning']}") for c in run.method_codes) + "</p>",
    ]
    held = [f for f in run.files if f.status in ("quarantined", "failed")]
    if held:
        parts.append(f"<h2>Not released ({len(held)})</h2><table><tr><th>source</th><th>status</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(f.source)}</td><td>{e(f.status)}</td><td>{e(f.reason)}</td></tr>" for f in held[:200]]
        parts.append("</table><p>Source paths are the provider's own: keep this page with the source data.</p>")
    if chosen:
        parts.append("<h2>De-identified images</h2><div class='grid'>")
        for label, p in chosen:
            thumb = _thumbnail(p)
            if thumb:
                parts.append(f"<figure><img src='data:image/png;base64,{thumb}' alt='{e(label)}'><figcaption>{e(label)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Actions taken</h2><table><tr><th>attribute</th><th>action</th><th>by</th><th>files</th></tr>")
    for (attr, act, basis), n in actions.most_common(60):
        parts.append(f"<tr><td>{e(attr)}</td><td>{e(act)}</td><td>{e(basis)}</td><td>{n}</td></tr>")
    parts.append("</table>")
    if run.clinical:
        parts.append("<h2>Clinical spreadsheets</h2><table><tr><th>file</th><th>rows</th><th>columns</th><th>problems</th></tr>")
        for c in run.clinical:
            cols = "; ".join(f"{k}: {', '.join(v)}" for k, v in c.get("columns", {}).items())
            parts.append(f"<tr><td>{e(c['source'])}</td><td>{c.get('rows', '')}</td><td>{e(cols)}</td>"
                         f"<td>{e('; '.join(c.get('problems', [])) or c.get('reason', ''))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
