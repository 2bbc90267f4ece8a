"""A self-contained HTML report (plots embedded as data URIs) for the MLflow artifact view."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

from mlprunes.report.answers import Answer, BoardRow, leaderboard
from mlprunes.report.records import RunRecord, schedule_caveats
from mlprunes.report.table import configurations, configurations_html, html_table, rows

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px;
       color: #222; max-width: 1200px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
p.meta { color: #666; margin-top: 0; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots figure { margin: 0; flex: 1 1 520px; } .plots img { width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 4px 8px; text-align: left; }
th { background: #f5f5f5; position: sticky; top: 0; }
td:nth-child(n+5):nth-child(-n+9) { text-align: right; font-variant-numeric: tabular-nums; }
ul.best li { margin: 2px 0; }
section.answer { border-left: 4px solid #1f77b4; padding: 2px 12px; margin: 10px 0; }
section.answer h3 { font-size: 15px; margin: 6px 0; }
.verdict { font-weight: 600; }
table.answers td:nth-child(n+3):nth-child(-n+7) { text-align: right;
                                              font-variant-numeric: tabular-nums; }
"""

CAPTIONS = {
    "params": "Test error. A pruning curve is its checkpoints' test error (starting at the "
              "base network); points are networks trained to the end. With several seeds, "
              "lines and points are means, bands and bars one standard deviation. The dashed "
              "line is the Pareto front of the trained networks.",
    "validation": "The validation error measured while pruning, the curve pruning decisions "
                  "were made on (test error is on the other plots).",
    "flops": "Multiply-accumulates of convolutions and linear layers per image.",
    "macs": "Training compute spent on each network (forward + backward taken as three "
            "forward passes). A pruning curve starts at its base network's cost and adds its "
            "fine-tuning, which runs the masked network at full width.",
    "latency": "Measured by evaluate runs: the compressed network at batch 1 on the device "
               "that ran them.",
    "q1": "Question 1: each reduced baseline against the pruning test curves.",
    "q2": "Question 2: pruned architectures trained anew against the pruned networks, as "
          "pruned and fine-tuned on after pruning.",
    "q3": "Question 3: family members against the pruning test curve they were scaled from.",
    "q4": "Question 4: the pruned network and a reduced network of about its size, timed in "
          "turn by one evaluate run.",
    "leaderboard": "The leaderboard: each criterion's test error at the checkpoints nearest 2x, "
                   "4x and 8x fewer MACs (mean and 95% interval over seeds).",
}


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if unit != "ms" else f"{value:+.3g}"


def answers_html(answers: list[Answer]) -> str:
    """The Answers section: per question, each comparison's difference, interval and verdict."""
    parts = []
    for a in answers:
        body = []
        for c in a.comparisons:
            d = c.difference
            interval = (f"[{_number(d.low, c.unit)}, {_number(d.high, c.unit)}]"
                        if d is not None and d.has_interval else "")
            means = (f"{sum(c.first_values) / len(c.first_values):.3g} vs "
                     f"{sum(c.second_values) / len(c.second_values):.3g}"
                     if c.first_values and c.second_values else "")
            at = f"{c.at_params:,.0f}" if c.at_params else ""
            body.append(
                f"<tr><td>{html.escape(c.title)}</td><td>{at}</td><td>{means}</td>"
                f"<td>{_number(d.value, c.unit) if d is not None else ''}</td>"
                f"<td>{interval}</td><td>{d.n if d is not None else 0}</td>"
                f'<td class="verdict">{html.escape(c.verdict)}</td>'
                f"<td>{html.escape(c.first_budget)}<br>{html.escape(c.second_budget)}</td>"
                f"<td>{html.escape(c.note)}</td></tr>")
        unit = "ms" if a.question == 4 else "points of test error"
        table = (f'<table class="answers"><thead><tr><th>Comparison (first vs second)</th>'
                 f"<th>At params</th><th>Means</th><th>Difference ({unit})</th>"
                 f"<th>95% CI</th><th>n</th><th>Verdict</th>"
                 f"<th>Training (first, second)</th><th>Note</th></tr></thead>"
                 f"<tbody>{''.join(body)}</tbody></table>" if body else "")
        parts.append(f'<section class="answer" id="q{a.question}"><h3>{a.question}. '
                     f"{html.escape(a.text)}</h3><p><span class=\"verdict\">"
                     f"{html.escape(a.summary)}</span></p>{table}</section>")
    return "\n".join(parts)


def leaderboard_html(rows: list[BoardRow]) -> str:
    """The Leaderboard section: each criterion at each MACs reduction, mean test error and its
    95% interval over seeds, beside its architectures from scratch and a uniform network."""
    if not rows:
        return ""
    body = []
    for row in sorted(rows, key=lambda r: (r.reduction, r.interval()[0])):
        m, low, high = row.interval()
        ci = f"[{low:.2f}, {high:.2f}]" if low is not None else ""
        scratch = f"{sum(row.scratch) / len(row.scratch):.2f}" if row.scratch else ""
        uniform = (f"{row.uniform:.2f} ({row.uniform_reduction:.2f}x)"
                   if row.uniform is not None else "")
        body.append(f"<tr><td>{row.reduction:g}x</td><td>{html.escape(row.criterion)}</td>"
                    f"<td>{sum(row.reached) / len(row.reached):.2f}x</td><td>{m:.2f}</td>"
                    f"<td>{ci}</td><td>{len(row.errors)}</td><td>{scratch}</td>"
                    f"<td>{uniform}</td></tr>")
    return ('<h2 id="leaderboard">Leaderboard</h2>\n<p class="meta">Test error (%) of each '
            "criterion's pruned network at the checkpoint nearest each MACs reduction (read "
            "there, never the best of several evaluations), mean and 95% interval over seeds; "
            "beside it, the same architectures trained from scratch (Scratch-E) and the "
            "uniform-width network nearest that many MACs. Question 5 compares each with "
            "random pruning, paired by seed.</p>\n"
            '<table class="answers"><thead><tr><th>Fewer MACs</th><th>Criterion</th>'
            "<th>Reached</th><th>Mean</th><th>95% CI</th><th>n</th><th>From scratch</th>"
            f"<th>Uniform width</th></tr></thead><tbody>{''.join(body)}</tbody></table>")


def caveats_html(records: list[RunRecord]) -> str:
    """The Caveats section: each prune configuration's schedule set against the paper's."""
    items = schedule_caveats(records)
    if not items:
        return ""
    listed = "".join(f"<li>{html.escape(text)}</li>" for text in items)
    return f'<h2 id="caveats">Caveats</h2>\n<ul class="caveats">{listed}</ul>'


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def best_by_group(records: list[RunRecord]) -> list[tuple[str, dict]]:
    """The configuration with the lowest mean test error in each group of networks (a mean
    over its seeds, not the luckiest seed). Groups hold networks of different sizes: the
    Answers compare at matched size."""
    best: dict[str, dict] = {}
    for row in configurations(records):
        if row["test_error_mean"] is None:
            continue
        if row["group"] not in best or row["test_error_mean"] < best[row["group"]][
                "test_error_mean"]:
            best[row["group"]] = row
    return sorted(best.items(), key=lambda kv: kv[1]["test_error_mean"])


def render(records: list[RunRecord], plots: dict[str, dict[str, Path]], title: str,
           subtitle: str = "", answers: list[Answer] = ()) -> str:
    table = rows(records)
    figures = "\n".join(
        f'<figure id="plot-{axis}"><img alt="{html.escape(axis)} plot" src="{_image(p["png"])}">'
        f"<figcaption>{html.escape(CAPTIONS.get(axis, ''))}</figcaption></figure>"
        for axis, p in plots.items())
    best = "\n".join(
        f"<li><b>{html.escape(group)}</b>: {row['test_error_mean']:.2f}% test error"
        + (f" (mean of {row['n']})" if row["n"] > 1 else "")
        + f" with {(row['params'] or 0):,.0f} params ({html.escape(row['configuration'])})"
          f"</li>" for group, row in best_by_group(records))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(subtitle)} {len(table)} runs; made {stamp} by mlprunes compare.</p>
<h2 id="answers">Answers</h2>
<p class="meta">Differences are the first minus the second, at matched size, with a 95%
confidence interval over seeds (Welch's for question 1; paired by seed for 2 to 5). Negative
differences favour the first.</p>
{answers_html(list(answers))}
{leaderboard_html(leaderboard(records))}
{caveats_html(records)}
<h2>Lowest error in each group (any size)</h2>
<ul class="best">{best}</ul>
<h2>Plots</h2>
<div class="plots">{figures}</div>
<h2>Configurations</h2>
<p class="meta">Runs that differ only in their seed, as one row: mean, standard deviation
and n.</p>
{configurations_html(configurations(records))}
<h2>Runs</h2>
{html_table(table)}
</body></html>
"""
