"""One row per run: the table behind the plots, as CSV and as HTML."""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any, Sequence

from mlprunes.report.records import RunRecord, replicate_groups

COLUMNS = ["run_id", "run_name", "group", "stage", "criterion", "seed", "replicate", "arch",
           "params", "flops",
           "test_error", "training_epochs", "train_macs", "latency_ms", "latency_masked_ms", "base_run_id",
           "prune_run_id", "source_run_id", "parent_run_id"]


def rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    order = {"train": 0, "prune": 1, "scratch": 2, "finetune": 3, "family-member": 4,
             "evaluate": 5}
    out = []
    for r in sorted(records, key=lambda r: (order.get(r.stage, 9), r.group, r.params or 0)):
        out.append({
            "run_id": r.run_id, "run_name": r.name, "group": r.group, "stage": r.stage,
            "criterion": r.criterion, "seed": r.seed, "replicate": r.replicate,
            "arch": r.spec.name if r.spec is not None else "",
            "params": r.params, "flops": r.flops, "test_error": r.test_error,
            "training_epochs": r.epochs, "train_macs": r.train_macs,
            "latency_ms": r.latency_ms,
            "latency_masked_ms": r.latency_masked_ms, "base_run_id": r.base_run_id,
            "prune_run_id": r.prune_run_id, "source_run_id": r.source_run_id,
            "parent_run_id": r.parent_run_id,
        })
    return out


def write_csv(table: Sequence[dict[str, Any]], path: Path,
              columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV (in the run table's columns unless given): missing values empty, whole
    floats as integers."""
    columns = list(COLUMNS if columns is None else columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow({k: "" if row.get(k) is None else _plain(row[k]) for k in columns})
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if key == "train_macs":
        return f"{value:.3g}"
    if key in ("params", "flops"):
        return f"{value:,.0f}"
    if key in ("test_error",):
        return f"{value:.2f}"
    if key in ("training_epochs", "latency_ms", "latency_masked_ms"):
        return f"{value:.3g}"
    if key.endswith("run_id"):
        return f'<code title="{html.escape(str(value))}">{html.escape(str(value)[:8])}</code>'
    return html.escape(str(value))


HTML_COLUMNS = [("run_name", "Run"), ("group", "Group"), ("stage", "Stage"), ("arch", "Arch."),
                ("params", "Params"), ("flops", "FLOPs"), ("test_error", "Test error %"),
                ("training_epochs", "Training (epochs)"), ("train_macs", "Training (MACs)"),
                ("latency_ms", "Latency b1 (ms)"),
                ("run_id", "Run ID"), ("base_run_id", "Base run"),
                ("prune_run_id", "Prune run"), ("source_run_id", "Source run")]


def html_table(table: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in HTML_COLUMNS)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(k, row.get(k))}</td>" for k, _ in HTML_COLUMNS) + "</tr>"
        for row in table)
    return f'<table id="runs"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


CONFIG_COLUMNS = ["configuration", "group", "stage", "arch", "n", "seeds", "params",
                  "test_error_mean", "test_error_std", "test_error_min", "test_error_max",
                  "run_ids"]


def configurations(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per configuration (runs that differ only in seed): mean, std and n of the test
    error, the mean parameter count, and its runs."""
    from mlprunes.report.answers import config_label
    from mlprunes.report.stats import mean, std

    order = {"train": 0, "prune": 1, "scratch": 2, "finetune": 3, "family-member": 4}
    out = []
    for runs in replicate_groups([r for r in records if r.stage != "evaluate"]):
        errors = [r.test_error for r in runs if r.test_error is not None]
        sizes = [r.params for r in runs if r.params is not None]
        archs = sorted({r.spec.name for r in runs if r.spec is not None})
        out.append({
            "configuration": config_label(runs[0]), "group": runs[0].group,
            "stage": runs[0].stage, "arch": archs[0] if len(archs) == 1 else
            (f"{len(archs)} architectures" if archs else ""), "n": len(runs),
            "seeds": ",".join(str(r.seed) for r in runs if r.seed is not None),
            "params": mean(sizes) if sizes else None,
            "test_error_mean": mean(errors) if errors else None,
            "test_error_std": std(errors) if len(errors) > 1 else None,
            "test_error_min": min(errors) if errors else None,
            "test_error_max": max(errors) if errors else None,
            "run_ids": ",".join(r.run_id for r in runs)})
    return sorted(out, key=lambda row: (order.get(row["stage"], 9), row["group"],
                                        -(row["params"] or 0)))


def configurations_html(table: list[dict[str, Any]]) -> str:
    head = ("<tr><th>Configuration</th><th>Group</th><th>Arch.</th><th>Params (mean)</th>"
            "<th>Test error % (mean \u00b1 std)</th><th>n</th><th>Runs</th></tr>")
    body = []
    for row in table:
        error = row["test_error_mean"]
        cell = "" if error is None else f"{error:.2f}" + (
            f" \u00b1 {row['test_error_std']:.2f}" if row["test_error_std"] is not None else "")
        runs = " ".join(f'<code title="{html.escape(r)}">{html.escape(r[:8])}</code>'
                        for r in row["run_ids"].split(","))
        body.append(f"<tr><td>{html.escape(row['configuration'])}</td>"
                    f"<td>{html.escape(row['group'])}</td><td>{html.escape(row['arch'])}</td>"
                    f"<td>{_cell('params', row['params'])}</td><td>{cell}</td>"
                    f"<td>{row['n']}</td><td>{runs}</td></tr>")
    return (f'<table id="configurations"><thead>{head}</thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table>")
