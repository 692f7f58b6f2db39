"""The order of a benchmark's conditions round by round: A B C, then C B A.

A drift of the shared host's speed over a pair of rounds then weighs on each
condition alike (bench_overhead's conditions, noisy_neighbor's static sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def round_order(conditions: Sequence[T], i: int) -> list[T]:
    """``conditions`` in round ``i`` (from 0): as given in even rounds,
    reversed in odd ones."""
    return list(conditions) if i % 2 == 0 else list(conditions)[::-1]
