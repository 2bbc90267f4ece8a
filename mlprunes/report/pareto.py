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


# Runs that end in a network.
NETWORK_STAGES = ("train", "prune", "scratch", "finetune", "family-member")


def pareto_runs(records):
    """The runs whose final networks are on the (parameters, test error) front, smallest
    first: for each, no other network is both smaller and more accurate."""
    candidates = [r for r in records if r.stage in NETWORK_STAGES
                  and r.params is not None and r.test_error is not None]
    front, best = [], float("inf")
    for r in sorted(candidates, key=lambda r: (r.params, r.test_error, r.start_time)):
        if r.test_error < best:
            front.append(r)
            best = r.test_error
    return front


def size_alias(params: float) -> str:
    """A registry alias naming a network by its size, to three figures: `params-23_2k`,
    `params-1_23m` (an alias allows no `.`)."""
    if params >= 1e6:
        return f"params-{params / 1e6:.3g}m".replace(".", "_")
    return f"params-{params / 1e3:.3g}k".replace(".", "_")
