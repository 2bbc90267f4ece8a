"""A self-contained HTML report (plots embedded as data URIs) for the MLflow artifact view."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

from mlprunes.report.records import RunRecord
from mlprunes.report.table import html_table, rows

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
"""

CAPTIONS = {
    "params": "Pruning curves are the validation error measured while pruning; points are "
              "networks trained to the end (test error). The dashed line is the Pareto front of "
              "those networks.",
    "flops": "Multiply-accumulates of convolutions and linear layers per image.",
    "macs": "Training compute spent on each network (forward + backward taken as three "
            "forward passes). A pruning curve starts at its base network's cost and adds its "
            "fine-tuning, which runs the masked network at full width.",
    "latency": "Measured by evaluate runs: the compressed network at batch 1 on the device "
               "that ran them.",
}


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def best_by_group(records: list[RunRecord]) -> list[tuple[str, RunRecord]]:
    """The lowest test error in each group of trained networks."""
    best: dict[str, RunRecord] = {}
    for r in records:
        if r.stage in ("train", "scratch", "family-member", "prune") and r.test_error is not None:
            if r.group not in best or r.test_error < best[r.group].test_error:
                best[r.group] = r
    return sorted(best.items(), key=lambda kv: kv[1].test_error)


def render(records: list[RunRecord], plots: dict[str, dict[str, Path]], title: str,
           subtitle: str = "") -> str:
    table = rows(records)
    figures = "\n".join(
        f'<figure id="plot-{axis}"><img alt="{html.escape(axis)} plot" src="{_image(p["png"])}">'
        f"<figcaption>{html.escape(CAPTIONS.get(axis, ''))}</figcaption></figure>"
        for axis, p in plots.items())
    best = "\n".join(
        f"<li><b>{html.escape(group)}</b>: {r.test_error:.2f}% test error with "
        f"{(r.params or 0):,.0f} params ({html.escape(r.name)})</li>" for group, r in
        best_by_group(records))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(subtitle)} {len(table)} runs; made {stamp} by mlprunes compare.</p>
<h2>Best network of each group</h2>
<ul class="best">{best}</ul>
<h2>Plots</h2>
<div class="plots">{figures}</div>
<h2>Runs</h2>
{html_table(table)}
</body></html>
"""
