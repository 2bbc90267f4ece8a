"""The study's plots: test error against parameters, FLOPs and training cost; the pruning
curves' validation error; measured latency; and one figure per question.

Each group of runs has its own colour and marker. A prune configuration is a line (its curve;
with replicates, their mean and a +/- one standard deviation band); each trained configuration
is a point (with replicates, their mean with a standard-deviation bar); the Pareto front over
the trained configurations is drawn dashed. Validation and test error are never on one axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI backend
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator  # noqa: E402

from mlprunes.report.answers import Answer, is_reduced, leaderboard  # noqa: E402
from mlprunes.report.colours import style  # noqa: E402
from mlprunes.report.pareto import pareto_front  # noqa: E402
from mlprunes.report.records import RunRecord, criterion_name, replicate_groups  # noqa: E402
from mlprunes.report.stats import mean, mean_curve, std  # noqa: E402

AXES = {
    "params": ("Parameters", "error_vs_params"),
    "flops": ("FLOPs (multiply-accumulates per image)", "error_vs_flops"),
    "macs": ("Training cost (multiply-accumulates: training + fine-tuning)",
             "error_vs_training_cost"),
    "latency": ("Measured latency, batch 1 (ms)", "latency_vs_error"),
}
TEST, VALIDATION = "Test error (%)", "Validation error (%)"

@dataclass
class Series:
    group: str
    kind: str                                   # "curve" (a prune configuration) or "points"
    points: list[tuple[float, float]] = field(default_factory=list)   # means over replicates
    run_ids: list[str] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)   # std of each point's y ([]: one run)
    n: list[int] = field(default_factory=list)          # replicates behind each point


def _value(record: RunRecord, axis: str) -> float | None:
    return {"params": record.params, "flops": record.flops, "macs": record.train_macs}[axis]


def series_for(records: list[RunRecord], axis: str, error: str = "test") -> list[Series]:
    """What the error-vs-`axis` plot shows: a curve per prune configuration (its test curve,
    or with `error="validation"` its validation curve), a point per trained configuration
    (train, scratch, family members; test error). Replicates are averaged."""
    out: list[Series] = []
    prunes = [r for r in records if r.stage == "prune"]
    for runs in replicate_groups(prunes):
        curves = [[(getattr(p, axis), p.error) for p in
                   (r.test_curve if error == "test" else r.curve) if getattr(p, axis)]
                  for r in runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        ids = [r.run_id for r in runs]
        if len(curves) == 1:
            out.append(Series(runs[0].group, "curve", sorted(curves[0]), ids))
        else:
            band = mean_curve(curves, log_x=axis != "latency")
            if band.xs:
                out.append(Series(runs[0].group, "curve", list(zip(band.xs, band.means)), ids,
                                  band.stds, [band.n] * len(band.xs)))
    if error != "test":
        return out
    grouped: dict[str, Series] = {}
    trained = [r for r in records if r.stage in ("train", "scratch", "finetune", "family-member")
               and r.test_error is not None and _value(r, axis)]
    for runs in replicate_groups(trained):
        s = grouped.setdefault(runs[0].group, Series(runs[0].group, "points"))
        s.points.append((mean([_value(r, axis) for r in runs]),
                         mean([r.test_error for r in runs])))
        s.spread.append(std([r.test_error for r in runs]))
        s.n.append(len(runs))
        s.run_ids += [r.run_id for r in runs]
    return out + sorted(grouped.values(), key=lambda s: s.group)


def latency_series(records: list[RunRecord]) -> list[Series]:
    """Evaluate runs: measured latency of the compressed network against its test error,
    grouped as the network they measured; a network timed beside it (a matched reduced
    network) is a point of its own group."""
    by_id = {r.run_id: r for r in records}
    grouped: dict[str, Series] = {}

    def add(group: str, latency: float, error: float, run_id: str) -> None:
        s = grouped.setdefault(group, Series(group, "points"))
        s.points.append((latency, error))
        s.run_ids.append(run_id)

    for r in records:
        if r.stage != "evaluate" or r.latency_ms is None or r.test_error is None:
            continue
        source = by_id.get(r.source_run_id)
        add(source.group if source is not None else "Evaluated network", r.latency_ms,
            r.test_error, r.run_id)
        matched = by_id.get(r.matched_run_id)
        if matched is not None and matched.test_error is not None and "matched_b1" in r.latency:
            add(matched.group, r.latency["matched_b1"], matched.test_error, r.run_id)
    return sorted(grouped.values(), key=lambda s: s.group)


def _log_ticks(ax) -> None:
    """Readable log-scale ticks: 20k, 50k, 100k rather than 10^4.5."""
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())


def _save(fig, out_dir: Path, stem: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        paths[ext] = out_dir / f"{stem}.{ext}"
        fig.savefig(paths[ext], bbox_inches="tight")
    plt.close(fig)
    return paths


def draw(series: list[Series], axis: str, title: str, out_dir: Path, log_x: bool = True,
         ylabel: str = TEST, stem: str | None = None) -> dict[str, Path]:
    """Draw one plot as PNG and SVG; return their paths (empty if there is nothing to draw)."""
    if not any(s.points for s in series):
        return {}
    xlabel, default_stem = AXES[axis]
    fig, ax = plt.subplots(figsize=(8.5, 5.0), dpi=110)
    labelled: set[str] = set()
    for s in series:
        colour, marker = style(s.group)
        label = None if s.group in labelled else s.group
        labelled.add(s.group)
        order = sorted(range(len(s.points)), key=lambda i: s.points[i])
        xs = [s.points[i][0] for i in order]
        ys = [s.points[i][1] for i in order]
        spread = [s.spread[i] for i in order] if s.spread else []
        if s.kind == "curve":
            ax.plot(xs, ys, color=colour, marker=marker, markersize=3, linewidth=1.2,
                    alpha=0.9, label=label + (f" (mean of {s.n[0]})" if s.n and label
                                              else "") if label else None)
            if spread:
                ax.fill_between(xs, [y - d for y, d in zip(ys, spread)],
                                [y + d for y, d in zip(ys, spread)], color=colour, alpha=0.18,
                                linewidth=0)
        else:  # a curve's dot marker is too small for a lone point
            shape = "o" if marker == "." else marker
            if any(spread):
                ax.errorbar(xs, ys, yerr=spread, fmt="none", ecolor=colour, elinewidth=1,
                            capsize=3, zorder=3)
            ax.scatter(xs, ys, color=colour, marker=shape, s=60, edgecolors="white",
                       linewidths=0.6, zorder=4, label=label)
    # Over networks trained to the end only: what one could have trained instead.
    front = pareto_front(p for s in series if s.kind == "points" for p in s.points)
    if len(front) > 1 and axis != "latency":
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1, alpha=0.6,
                label="Pareto front (trained networks)", zorder=2)
    if log_x:
        ax.set_xscale("log")
        _log_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), framealpha=0.9,
              title="mean \u00b1 std over seeds" if any(s.spread for s in series) else None,
              title_fontsize=8)
    return _save(fig, out_dir, stem or default_stem)


def draw_latency_answer(answer: Answer, out_dir: Path) -> dict[str, Path]:
    """Question 4: the pruned and the reduced network's latency at each batch size, mean and
    std over seeds."""
    shown = [c for c in answer.comparisons if c.first_values]
    if not shown:
        return {}
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown) + 1.5, 4.0), dpi=110,
                             squeeze=False)
    for ax, c in zip(axes[0], shown):
        names = ["pruned", "reduced"]
        values = [c.first_values, c.second_values]
        ax.bar(names, [mean(v) for v in values], yerr=[std(v) for v in values], capsize=4,
               color=[style(c.first)[0], style(c.second)[0]], alpha=0.85)
        ax.set_title(c.first.rsplit(", ", 1)[-1] + f" (n={len(c.first_values)})", fontsize=10)
        ax.set_ylabel("Latency (ms)")
        ax.grid(True, axis="y", alpha=0.25)
    fig.suptitle("Q4: measured latency at matched size (mean \u00b1 std over seeds)",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "q4_latency")


def draw_leaderboard(records: list[RunRecord], out_dir: Path) -> dict[str, Path]:
    """Each criterion's test error against the MACs reduction it reached (mean, 95% interval
    over seeds as bars); the uniform-width networks as black crosses."""
    rows = leaderboard(records)
    if not rows:
        return {}
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for criterion in sorted({r.criterion for r in rows}):
        mine = sorted((r for r in rows if r.criterion == criterion), key=lambda r: r.reduction)
        xs = [mean(r.reached) for r in mine]
        ys, bars = [], []
        for r in mine:
            m, low, _ = r.interval()
            ys.append(m)
            bars.append(m - low if low is not None else 0.0)
        name = criterion_name(criterion)
        colour, _ = style(f"{name} prune")
        ax.errorbar(xs, ys, yerr=bars, marker="o", capsize=3, label=name, color=colour)
    uniform = {(r.uniform_reduction, r.uniform) for r in rows if r.uniform is not None}
    if uniform:
        ax.scatter(*zip(*sorted(uniform)), marker="x", color="#000000", zorder=5,
                   label="Uniform width")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Fewer MACs than the base network (x)")
    ax.set_ylabel(TEST)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    ax.set_title("Leaderboard: criteria at fewer MACs (mean, 95% CI over seeds)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "leaderboard")


QUESTION_PLOTS = {
    1: ("Q1: pruned and fine-tuned vs reduced networks", "q1_pruned_vs_reduced",
        lambda r: r.stage in ("prune", "finetune") or is_reduced(r)),
    2: ("Q2: pruned architectures trained from scratch", "q2_scratch_vs_pruned",
        lambda r: r.stage in ("prune", "scratch", "finetune")),
    3: ("Q3: a family scaled from one pruning run", "q3_family_vs_pruned",
        lambda r: r.stage in ("prune", "family-member")),
}


def draw_all(records: list[RunRecord], out_dir: Path,
             answers: list[Answer] = ()) -> dict[str, dict[str, Path]]:
    """Every plot the records allow, keyed by name: the overview axes, the pruning curves'
    validation error, latency, then one per question."""
    titles = {
        "params": "Test error against parameters",
        "flops": "Test error against FLOPs",
        "macs": "Test error against training cost",
    }
    drawn = {}
    for axis, title in titles.items():
        paths = draw(series_for(records, axis), axis, title, out_dir)
        if paths:
            drawn[axis] = paths
    paths = draw(series_for(records, "params", error="validation"), "params",
                 "Pruning curves: validation error while pruning", out_dir,
                 ylabel=VALIDATION, stem="pruning_curves_validation")
    if paths:
        drawn["validation"] = paths
    paths = draw(latency_series(records), "latency", "Test error against measured latency",
                 out_dir, log_x=False)
    if paths:
        drawn["latency"] = paths
    for q, (title, stem, keep) in QUESTION_PLOTS.items():
        chosen = [r for r in records if keep(r)]
        if any(r.stage != "prune" for r in chosen):
            paths = draw(series_for(chosen, "params"), "params", title, out_dir, stem=stem)
            if paths:
                drawn[f"q{q}"] = paths
    paths = draw_leaderboard(records, out_dir)
    if paths:
        drawn["leaderboard"] = paths
    for answer in answers:
        if answer.question == 4:
            paths = draw_latency_answer(answer, out_dir)
            if paths:
                drawn["q4"] = paths
    return drawn
