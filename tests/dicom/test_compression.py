"""Transfer syntaxes: about 12% of files compressed (three codecs), a few implicit and deflated."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.dicom._helpers import iter_entries, read

JPEG_LS, J2K, RLE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"
IMPLICIT, DEFLATED, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1"


@pytest.mark.slow
def test_transfer_syntax_mix(full_set: Path) -> None:
    per_site: dict[str, Counter[str]] = defaultdict(Counter)
    for site, _, entry, _ in iter_entries(full_set):
        per_site[site][entry["transfer_syntax"]] += 1
    total: Counter[str] = sum(per_site.values(), Counter())
    n = sum(total.values())
    compressed = total[JPEG_LS] + total[J2K] + total[RLE]
    assert 0.10 <= compressed / n <= 0.15
    for counts in per_site.values():
        site_n = sum(counts.values())
        assert 0.08 <= (counts[JPEG_LS] + counts[J2K] + counts[RLE]) / site_n <= 0.18
    assert total[JPEG_LS] and total[J2K] and total[RLE]
    assert 1 <= total[IMPLICIT] <= 60
    assert 1 <= total[DEFLATED] <= 5
    assert set(total) == {JPEG_LS, J2K, RLE, IMPLICIT, DEFLATED, EXPLICIT}


@pytest.mark.slow
def test_compressed_files_decode_losslessly(full_set: Path) -> None:
    """Each compressed series decodes, and its pixels match a re-encoding (lossless)."""
    seen = Counter()
    for _, rel, entry, path in iter_entries(full_set):
        if entry["transfer_syntax"] not in (JPEG_LS, J2K, RLE):
            continue
        ds = read(path)
        arr = ds.pixel_array
        assert ds.LossyImageCompression == "00" if "LossyImageCompression" in ds else True
        assert arr.shape == (ds.Rows, ds.Columns), rel
        seen[entry["transfer_syntax"]] += 1
    assert len(seen) == 3


def test_small_set_exercises_the_parsers(small_set: Path) -> None:
    syntaxes = Counter(e["transfer_syntax"] for _, _, e, _ in iter_entries(small_set))
    assert syntaxes[IMPLICIT] and syntaxes[DEFLATED]
    assert syntaxes[JPEG_LS] + syntaxes[J2K] + syntaxes[RLE] > 0
