"""The study's plots: error against parameters, FLOPs, training cost and measured latency.

Each group of runs has its own colour and marker; a prune run is a line (its pruning curve),
the trained networks are points; the Pareto front over everything is drawn dashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI backend
import matplotlib.pyplot as plt  # noqa: E402

from mlprunes.report.pareto import pareto_front  # noqa: E402
from mlprunes.report.records import RunRecord  # noqa: E402

AXES = {
    "params": ("Parameters", "error_vs_params"),
    "flops": ("FLOPs (multiply-accumulates per image)", "error_vs_flops"),
    "macs": ("Training cost (multiply-accumulates: training + fine-tuning)",
             "error_vs_training_cost"),
    "latency": ("Measured latency, batch 1 (ms)", "latency_vs_error"),
}

# Groups a reader compares side by side get related colours: pruned (blues/greens),
# from-scratch pruned architectures (oranges), reduced baselines (reds/purples).
STYLES = [
    ("Fisher prune", "#1f77b4", "."), ("L1 prune", "#2ca02c", "."),
    ("Random prune", "#7f7f7f", "."), ("Fisher arch. from scratch (Scratch-B)", "#8c564b", "P"),
    ("Fisher arch", "#ff7f0e", "o"), ("L1 arch", "#bcbd22", "s"),
    ("Random arch", "#c7c7c7", "o"), ("Fisher family", "#e377c2", "D"),
    ("L1 family", "#9467bd", "D"), ("Full network", "#000000", "*"),
    ("Reduced depth", "#d62728", "v"), ("Reduced width", "#9467bd", "^"),
    ("Reduced growth", "#9467bd", "^"), ("Reduced depth and width", "#17becf", "<"),
    ("Bottleneck", "#8c564b", "X"), ("Trained from scratch", "#17becf", "h"),
]


def style(group: str) -> tuple[str, str]:
    for prefix, colour, marker in STYLES:
        if group.startswith(prefix):
            return colour, marker
    return "#333333", "o"


@dataclass
class Series:
    group: str
    kind: str                                   # "curve" (one prune run) or "points"
    points: list[tuple[float, float]] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def _value(record: RunRecord, axis: str) -> float | None:
    return {"params": record.params, "flops": record.flops, "macs": record.train_macs}[axis]


def series_for(records: list[RunRecord], axis: str) -> list[Series]:
    """What the error-vs-`axis` plot shows: one curve per prune run, one point set per group
    of trained networks (train, scratch, family members)."""
    out: list[Series] = []
    grouped: dict[str, Series] = {}
    for r in records:
        if r.stage == "prune":
            points = [(getattr(p, axis), p.error) for p in r.curve if getattr(p, axis)]
            if points:
                out.append(Series(r.group, "curve", points, [r.run_id]))
        elif r.stage in ("train", "scratch", "family-member"):
            x = _value(r, axis)
            if x and r.test_error is not None:
                s = grouped.setdefault(r.group, Series(r.group, "points"))
                s.points.append((x, r.test_error))
                s.run_ids.append(r.run_id)
    return out + sorted(grouped.values(), key=lambda s: s.group)


def latency_series(records: list[RunRecord]) -> list[Series]:
    """Evaluate runs: measured latency of the compressed network against its test error,
    grouped as the network they measured."""
    by_id = {r.run_id: r for r in records}
    grouped: dict[str, Series] = {}
    for r in records:
        if r.stage != "evaluate" or r.latency_ms is None or r.test_error is None:
            continue
        source = by_id.get(r.source_run_id)
        group = source.group if source is not None else "Evaluated network"
        s = grouped.setdefault(group, Series(group, "points"))
        s.points.append((r.latency_ms, r.test_error))
        s.run_ids.append(r.run_id)
    return sorted(grouped.values(), key=lambda s: s.group)


def draw(series: list[Series], axis: str, title: str, out_dir: Path,
         log_x: bool = True) -> dict[str, Path]:
    """Draw one plot as PNG and SVG; return their paths (empty if there is nothing to draw)."""
    if not any(s.points for s in series):
        return {}
    xlabel, stem = AXES[axis]
    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    labelled: set[str] = set()
    for s in series:
        colour, marker = style(s.group)
        label = None if s.group in labelled else s.group
        labelled.add(s.group)
        xs, ys = zip(*sorted(s.points))
        if s.kind == "curve":
            ax.plot(xs, ys, color=colour, marker=marker, markersize=3, linewidth=1.2,
                    alpha=0.9, label=label)
        else:  # a curve's dot marker is too small for a lone point
            ax.scatter(xs, ys, color=colour, marker="o" if marker == "." else marker, s=60,
                       edgecolors="white",
                       linewidths=0.6, zorder=3, label=label)
    # Over networks trained to the end (test error) only: curve points are validation error.
    front = pareto_front(p for s in series if s.kind == "points" for p in s.points)
    if len(front) > 1:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1, alpha=0.6,
                label="Pareto front", zorder=2)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Error (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        paths[ext] = out_dir / f"{stem}.{ext}"
        fig.savefig(paths[ext])
    plt.close(fig)
    return paths


def draw_all(records: list[RunRecord], out_dir: Path) -> dict[str, dict[str, Path]]:
    """Every plot the records allow, keyed by axis."""
    titles = {
        "params": "Error against parameters",
        "flops": "Error against FLOPs",
        "macs": "Error against training cost",
    }
    drawn = {}
    for axis, title in titles.items():
        paths = draw(series_for(records, axis), axis, title, out_dir)
        if paths:
            drawn[axis] = paths
    paths = draw(latency_series(records), "latency", "Error against measured latency", out_dir,
                 log_x=False)
    if paths:
        drawn["latency"] = paths
    return drawn
