"""Read and write clinical workbooks in the template of :mod:`incisive_lab.cdm.template`.

:func:`write_workbook` is byte-for-byte deterministic: openpyxl stamps the current time into
``docProps/core.xml`` and into every zip entry, so the saved package is rewritten with a fixed
timestamp in both places.

Examples
--------
>>> import datetime, io
>>> from incisive_lab.cdm.spreadsheet import read_workbook, write_workbook
>>> buf = io.BytesIO()
>>> write_workbook([{"patient_id": "X1234", "birth_date": datetime.date(1960, 5, 1)}], buf)
>>> read_workbook(buf)[0]["birth_date"]
datetime.date(1960, 5, 1)
"""

from __future__ import annotations

import datetime as _dt
import io
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from incisive_lab.cdm.template import COLUMNS, SHEET_NAME

__all__ = ["FIXED_TIMESTAMP", "read_workbook", "write_workbook"]

#: The timestamp written into the package metadata and the zip entries (no wall-clock time).
FIXED_TIMESTAMP = _dt.datetime(2020, 1, 1, 0, 0, 0)

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CORE_TIME = re.compile(rb"(<dcterms:(created|modified)[^>]*>)[^<]*(</dcterms:\2>)")


def _normalise_package(data: bytes) -> bytes:
    stamp = FIXED_TIMESTAMP.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            payload = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                payload = _CORE_TIME.sub(lambda m: m.group(1) + stamp + m.group(3), payload)
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            zout.writestr(entry, payload, compresslevel=6)
    return out.getvalue()


def write_workbook(
    rows: Iterable[Mapping[str, Any]],
    target: str | Path | IO[bytes],
    *,
    columns: Sequence[str] | None = None,
) -> None:
    """Write `rows` as a one-sheet workbook, deterministically.

    Parameters
    ----------
    rows : iterable of mappings
        Column name -> value; ``datetime.date`` values become Excel date cells, missing keys and
        ``None`` become empty cells.
    target : path or binary file
        Where to write the ``.xlsx`` package.
    columns : sequence of str, optional
        Header row; defaults to every template column in template order.
    """
    from openpyxl import Workbook  # heavy import kept local

    header = list(columns) if columns is not None else [c.name for c in COLUMNS]
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = SHEET_NAME
    ws.append(header)
    for row in rows:
        ws.append([row.get(name) for name in header])
    for cells in ws.iter_rows(min_row=2):
        for cell in cells:
            if isinstance(cell.value, _dt.date):
                cell.number_format = "yyyy-mm-dd"
    ws.freeze_panes = "A2"
    wb.properties.creator = "INCISIVE Lab"
    wb.properties.lastModifiedBy = "INCISIVE Lab"
    wb.properties.created = FIXED_TIMESTAMP
    wb.properties.modified = FIXED_TIMESTAMP
    buf = io.BytesIO()
    wb.save(buf)
    data = _normalise_package(buf.getvalue())
    if isinstance(target, str | Path):
        Path(target).write_bytes(data)
    else:
        target.write(data)


def read_workbook(source: str | Path | IO[bytes]) -> list[dict[str, Any]]:
    """Read the ``patients`` sheet of a clinical workbook into one dict per row.

    Date cells come back as ``datetime.date``; empty cells as ``None``.

    Raises
    ------
    ValueError
        If the workbook has no sheet named ``patients`` or no header row.
    """
    return [record for _number, record in read_numbered_rows(source)]


def read_numbered_rows(source: str | Path | IO[bytes]) -> list[tuple[int, dict[str, Any]]]:
    """Like :func:`read_workbook`, with each row's number as the steward sees it in the
    spreadsheet (the header is row 1); empty rows are skipped but keep their numbers.

    Raises
    ------
    ValueError
        If the workbook has no sheet named ``patients`` or no header row.
    """
    from openpyxl import load_workbook

    if isinstance(source, io.BytesIO):
        source.seek(0)
    wb = load_workbook(source, read_only=True, data_only=True)
    try:
        if SHEET_NAME not in wb.sheetnames:
            raise ValueError(f"no sheet named {SHEET_NAME!r} (found {wb.sheetnames})")
        rows = wb[SHEET_NAME].iter_rows(values_only=True)
        try:
            header = [str(h) if h is not None else "" for h in next(rows)]
        except StopIteration:
            raise ValueError("the sheet has no header row") from None
        out: list[tuple[int, dict[str, Any]]] = []
        for number, values in enumerate(rows, start=2):
            if all(v is None for v in values):
                continue
            record: dict[str, Any] = {}
            for name, value in zip(header, values, strict=False):
                if isinstance(value, _dt.datetime) and value.time() == _dt.time(0):
                    value = value.date()
                record[name] = value
            out.append((number, record))
        return out
    finally:
        wb.close()

