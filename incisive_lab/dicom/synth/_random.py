"""Seeded randomness and UIDs: every random choice is a pure function of (seed, purpose, ...)."""

from __future__ import annotations

import hashlib
import random

import numpy as np

__all__ = ["derive_uid", "np_rng", "py_rng", "stable_uid", "unit"]


def _digest(seed: int, parts: tuple[object, ...]) -> bytes:
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return hashlib.sha256(text.encode("utf-8")).digest()


def derive_uid(seed: int, *parts: object) -> str:
    """A ``2.25.<128-bit int>`` UID derived from the seed and `parts` (no entropy, no clock)."""
    return "2.25." + str(int.from_bytes(_digest(seed, parts)[:16], "big"))


def stable_uid(*parts: object) -> str:
    """A seed-independent ``2.25`` UID (implementation class UIDs of the fake vendors)."""
    return derive_uid(0, "stable", *parts)


def np_rng(seed: int, *parts: object) -> np.random.Generator:
    """A NumPy generator seeded from (seed, parts)."""
    return np.random.default_rng(int.from_bytes(_digest(seed, parts)[:16], "big"))


def py_rng(seed: int, *parts: object) -> random.Random:
    """A :class:`random.Random` seeded from (seed, parts)."""
    return random.Random(int.from_bytes(_digest(seed, parts), "big"))


def unit(seed: int, *parts: object) -> float:
    """A number in [0, 1) derived from (seed, parts)."""
    return int.from_bytes(_digest(seed, parts)[:8], "big") / 2.0**64
