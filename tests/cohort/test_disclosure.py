"""Suppression and rounding: no disclosed number is ever below the floor."""

from __future__ import annotations

import itertools

import pytest

from incisive_lab.cohort import CohortError, disclose, effective_floor


@pytest.mark.parametrize(("n", "floor", "rounding", "shown"), [
    (0, 10, 1, "<10"),
    (9, 10, 1, "<10"),
    (10, 10, 1, 10),
    (23, 10, 1, 23),
    (23, 10, 5, 25),
    (22, 10, 5, 20),
    (11, 10, 10, 10),
    (15, 10, 10, 20),
    (13, 12, 10, 20),   # nearest multiple (10) is below the floor: raised to 20
    (11, 12, 10, "<12"),
    (3, 3, 1, 3),
    (2, 3, 1, "<3"),
])
def test_disclose(n: int, floor: int, rounding: int, shown: int | str) -> None:
    count = disclose(n, floor=floor, rounding=rounding)
    assert count.to_json() == shown
    assert count.suppressed == isinstance(shown, str)
    assert count.floor == floor and count.rounding == rounding


def test_no_number_below_the_floor_for_any_count_floor_and_rounding() -> None:
    for n, floor, rounding in itertools.product(range(0, 120), range(3, 25), (1, 2, 5, 10, 20, 50)):
        value = disclose(n, floor=floor, rounding=rounding).to_json()
        if isinstance(value, int):
            assert value >= floor and n >= floor
            assert value % rounding == 0
            assert abs(value - n) <= max(rounding, floor)
        else:
            assert value == f"<{floor}" and n < floor


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": -1, "floor": 10}, "count"),
    ({"n": 5, "floor": 2}, "floor must be an integer of at least 3"),
    ({"n": 5, "floor": 10, "rounding": 0}, "rounding"),
    ({"n": 5, "floor": 10, "rounding": 5000}, "rounding must be at most"),
    ({"n": 5, "floor": 10.0}, "floor"),
    ({"n": True, "floor": 10}, "count"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(CohortError, match=message):
        disclose(**kwargs)


def test_effective_floor_is_the_larger_and_a_lower_broker_floor_is_ignored() -> None:
    assert effective_floor(10) == 10
    assert effective_floor(10, broker_floor=20) == 20
    assert effective_floor(10, broker_floor=5) == 10
    assert effective_floor(10, broker_floor=0) == 10
    with pytest.raises(CohortError, match="node floor"):
        effective_floor(1)
    with pytest.raises(CohortError, match="broker floor"):
        effective_floor(10, broker_floor=-3)
