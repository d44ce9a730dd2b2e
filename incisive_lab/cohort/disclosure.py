"""Small-count suppression and rounding of per-patient counts.

A count leaves the node only as a :class:`Count`:

* below the floor (zero included) it is the string ``"<floor"`` (e.g. ``"<10"``), never a
  number, and ``suppressed`` is true;
* at or above the floor it is the number, rounded to the nearest multiple of ``rounding``
  (half up) when ``rounding > 1``; a rounded value that would fall below the floor is raised
  to the smallest multiple of ``rounding`` that is at least the floor, so no number in an
  answer is ever below the floor.

The floor is the dataset's (from its sharing terms, default 10, at least :data:`MIN_FLOOR`);
a broker may raise it for its answers but never lower it: :func:`effective_floor`.

Examples
--------
>>> disclose(7, floor=10).to_json()
'<10'
>>> disclose(23, floor=10, rounding=5).to_json()
25
>>> disclose(11, floor=12, rounding=10).to_json()
'<12'
>>> disclose(13, floor=12, rounding=10).to_json()
20
>>> effective_floor(10, broker_floor=5)
10
"""

from __future__ import annotations

from dataclasses import dataclass

from incisive_lab.cohort.criteria import CohortError

__all__ = ["DEFAULT_FLOOR", "MAX_ROUNDING", "MIN_FLOOR", "Count", "check_rounding", "disclose",
           "effective_floor"]

#: The floor when a dataset's terms do not set one (as in the sharing terms).
DEFAULT_FLOOR = 10
#: No floor may be lower: counts of 1 or 2 identify people (the sharing terms' minimum).
MIN_FLOOR = 3
#: Largest accepted rounding base.
MAX_ROUNDING = 1000


def _int(value: object, name: str, lowest: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
        raise CohortError(f"{name} must be an integer of at least {lowest} (got {value!r})")
    return value


def effective_floor(node_floor: int, broker_floor: int | None = None) -> int:
    """The floor that applies: the node's, raised (never lowered) by the broker's.

    Raises
    ------
    CohortError
        When the node floor is below :data:`MIN_FLOOR` or a floor is not an integer.
    """
    floor = _int(node_floor, "node floor", MIN_FLOOR)
    if broker_floor is not None:
        floor = max(floor, _int(broker_floor, "broker floor", 0))
    return floor


@dataclass(frozen=True, slots=True)
class Count:
    """A disclosed per-patient count.

    Attributes
    ----------
    value : int or None
        The number shown, or ``None`` when suppressed.
    floor : int
        The floor that applied.
    rounding : int
        The rounding base (1: exact).
    """

    value: int | None
    floor: int
    rounding: int = 1

    @property
    def suppressed(self) -> bool:
        """Whether the count was below the floor (shown as ``"<floor"``)."""
        return self.value is None

    @property
    def text(self) -> str:
        """The count as shown: the number or ``"<floor"``."""
        return f"<{self.floor}" if self.value is None else str(self.value)

    def to_json(self) -> int | str:
        """The number, or the string ``"<floor"``."""
        return self.text if self.value is None else self.value

    def __repr__(self) -> str:
        return f"Count({self.text}, floor={self.floor}, rounding={self.rounding})"


def check_rounding(rounding: int) -> int:
    """Return `rounding` if it is a valid rounding base (1..:data:`MAX_ROUNDING`), else raise."""
    _int(rounding, "rounding", 1)
    if rounding > MAX_ROUNDING:
        raise CohortError(f"rounding must be at most {MAX_ROUNDING} (got {rounding})")
    return rounding


def disclose(n: int, *, floor: int, rounding: int = 1) -> Count:
    """Suppress and round the per-patient count `n`.

    Parameters
    ----------
    n
        The true number of patients (>= 0).
    floor
        The effective floor (>= :data:`MIN_FLOOR`).
    rounding
        Round shown counts to a multiple of this (1 = exact, at most :data:`MAX_ROUNDING`).

    Raises
    ------
    CohortError
        On a negative count, a floor below :data:`MIN_FLOOR` or a bad rounding base.
    """
    _int(n, "count", 0)
    _int(floor, "floor", MIN_FLOOR)
    check_rounding(rounding)
    if n < floor:
        return Count(None, floor, rounding)
    shown = (n + rounding // 2) // rounding * rounding
    if shown < floor:
        shown = -(-floor // rounding) * rounding
    return Count(shown, floor, rounding)
