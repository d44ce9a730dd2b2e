"""Synthetic, PHI-laden, multi-site DICOM and clinical spreadsheets with ground truth.

Use :func:`generate` (or ``incisive-lab synth OUT --patients N --seed S``). Everything written is
a pure function of the parameters; ``OUT/truth/`` lists every planted PHI string, every real date,
the burned-in text of every file and where the lesions are. See ``docs/synthetic-data.md``.
"""

from incisive_lab.dicom.synth._generate import (
    GENERATOR_VERSION,
    INDEX_FORMAT,
    TRUTH_FORMAT,
    SiteCounts,
    SynthSummary,
    distribute_patients,
    generate,
)
from incisive_lab.dicom.synth._private import PRIVATE_TAGS, SAFE_PRIVATE_TAGS, PrivateTag

__all__ = [
    "GENERATOR_VERSION",
    "INDEX_FORMAT",
    "PRIVATE_TAGS",
    "SAFE_PRIVATE_TAGS",
    "TRUTH_FORMAT",
    "PrivateTag",
    "SiteCounts",
    "SynthSummary",
    "distribute_patients",
    "generate",
]
