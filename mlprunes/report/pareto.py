"""The Pareto front of (cost, error) points: no other point is both cheaper and better."""

from __future__ import annotations

from typing import Iterable


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by any other (lower x and lower error), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], p[1])):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front
