"""The study as a person sees it: the pipeline's printed link opened on `mlflow server` at
127.0.0.1, the pipeline run's description, the runs, a prune run's metric charts, the HTML
report and the Models page, in headless Chromium (Debian's `chromium`, driven by Playwright).
Screenshots go to $MLPRUNES_SCREENSHOT_DIR (default: the test's tmp folder)."""

import os
import re
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlprunes.stages import views

from tests.stage_helpers import cli
from tests.test_mlflow_integration import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # .ci/run installs it; say so where it is missing
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)


# The traces of the chart of val_error against params, once it has a line for every run (Plotly
# keeps them on the plot's element).
CURVES_DRAWN = """(runs) => {
    for (const plot of document.querySelectorAll('.js-plotly-plot')) {
        const title = plot.layout && plot.layout.xaxis && plot.layout.xaxis.title;
        const traces = (plot.data || []).filter(t => t.metricKey === 'val_error' && t.uuid);
        if (!title || title.text !== 'params' || !traces.length) continue;
        if (new Set(traces.map(t => t.uuid)).size < runs) return null;
        return traces.map(t => ({uuid: t.uuid, x: Array.from(t.x), y: Array.from(t.y),
                                 color: t.marker && t.marker.color}));
    }
    return null;
}"""


def close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant side panel on first load; it hides part of the page."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


def test_mlflow_ui_shows_the_runs_the_charts_and_the_report(store, tmp_path):
    # Two seeds: the answers have intervals.
    result = cli("pipeline", "--preset", "tiny", "--seeds", "0,1", "--no-progress",
                 "--set", "run.log_model=true")   # models named after their networks
    pipeline_id = result.run_id
    # The link the pipeline printed last: its own run, in model-training mode, on the address
    # `mlflow ui` serves by default (this test's server has a port of its own).
    link = re.findall(r"MLflow UI: (\S+)", result.stderr)[-1]
    assert link.startswith("http://127.0.0.1:5000/#/experiments/")
    assert link.endswith(f"/runs/{pipeline_id}?workflowType=machine_learning")
    client = MlflowClient()
    pipeline = client.get_run(pipeline_id)
    exp = pipeline.info.experiment_id
    compare_id = pipeline.data.tags["mlprunes.compare_run_id"]
    prune_id = next(r.info.run_id for r in client.search_runs([exp])
                    if r.data.tags.get("mlprunes.stage") == "prune")
    assert ".".join(mlflow.__version__.split(".")[:2]) in views.VIEWS_SHOWN_TO_WORK, (
        f"MLflow {mlflow.__version__}: check that its UI draws the saved views (this test), "
        f"then add it to views.VIEWS_SHOWN_TO_WORK")
    curves_link = re.findall(r"Pruning curves: (\S+)", result.stderr)[-1]
    prune_runs = {}   # run ID -> its (params, val_error) at each validation step
    for r in client.search_runs([exp], "tags.`mlprunes.stage` = 'prune'"):
        size = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "params")}
        prune_runs[r.info.run_id] = sorted(
            (size[m.step], m.value) for m in client.get_metric_history(r.info.run_id,
                                                                       "val_error"))
    assert len(prune_runs) == 2 and all(len(p) > 2 for p in prune_runs.values())
    shots = Path(os.environ.get("MLPRUNES_SCREENSHOT_DIR", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)

    # The UI reads the same store and the same local artifacts a user's `mlflow ui` would.
    with start_server(tmp_path / "ui", backend=store, cwd=Path.cwd()) as url:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            base = f"{url}/#/experiments/{exp}"
            assert client.get_experiment(exp).name == "mlprunes"

            page.goto(link.replace("http://127.0.0.1:5000", url))
            # Model-training mode shows the run's overview, its description rendered.
            page.get_by_text("Report:").first.wait_for(timeout=60_000)
            close_assistant(page)
            for text in ("Study", "tiny", "Answers", "report.html"):
                page.get_by_text(text).first.wait_for(timeout=10_000)
            page.get_by_text("mlprunes").first.wait_for(timeout=10_000)   # the experiment
            assert page.get_by_text("Detect issues").count() == 0           # not GenAI's page
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "pipeline_run.png"))
            # Its description's report link opens the compare run's report (in a new tab).
            with page.context.expect_page() as opened:
                page.get_by_role("link", name="report.html").first.click()
            tab = opened.value
            tab.frame_locator("iframe").first.get_by_text("Answers").first.wait_for(
                timeout=60_000)
            assert f"/runs/{compare_id}/artifacts/report.html" in tab.url
            tab.close()

            page.goto(f"{base}/runs?workflowType=machine_learning")
            page.get_by_text("pipeline-tiny").first.wait_for(timeout=60_000)
            close_assistant(page)
            # The stages are the pipeline run's children: expand it.
            page.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').first.click()
            for name in ("prune-fisher-s0", "train-base-s1", "compare-tiny",
                         "scratch-fisher-p12-s0", "family-fisher-p12-s1"):
                page.get_by_text(name).first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "runs.png"))

            page.goto(f"{base}/runs/{prune_id}/model-metrics?workflowType=machine_learning")
            for metric in ("params", "channels_left", "flops"):
                page.get_by_text(metric, exact=True).first.wait_for(timeout=60_000)
            # Charts below the fold render lazily: filter to the pruning curve's own charts.
            page.get_by_placeholder("Search metric charts").fill("val_")
            for metric in ("val_error", "val_loss"):
                page.get_by_text(metric, exact=True).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let the charts draw
            page.screenshot(path=str(shots / "prune_metrics.png"))

            page.goto(f"{base}/runs/{compare_id}/artifacts/report.html"
                      "?workflowType=machine_learning")
            report = page.frame_locator("iframe").first
            report.get_by_text("Lowest error in each group").wait_for(timeout=60_000)
            report.get_by_text("Fisher prune + fine-tune").first.wait_for(timeout=10_000)
            # The Answers come first: each question, its comparisons and their verdicts.
            for q in (1, 2, 3, 4):
                report.locator(f"section#q{q}").wait_for(timeout=10_000)
            assert report.locator("table.answers tbody tr").count() >= 4
            assert report.locator("img").count() >= 7   # latency ones need a steady machine
            assert report.locator("table#runs tbody tr").count() >= 14
            assert report.locator("table#configurations tbody tr").count() >= 5
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "answers.png"))
            report.locator("h2", has_text="Plots").scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "report.png"))

            # The Models page lists the logged networks by name, with their metrics.
            page.goto(f"{base}/models?workflowType=machine_learning")
            page.get_by_text("wrn-10-1-fisher-p12").first.wait_for(timeout=60_000)
            page.get_by_text("wrn-10-1-fisher-p12-scratch-e").first.wait_for(timeout=10_000)
            page.get_by_text("wrn-10-1", exact=True).first.wait_for(timeout=10_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "models.png"))

            # The printed "Pruning curves" link, in a fresh profile (nothing remembered), with
            # no other click: the study's prune runs against params.
            fresh = browser.new_context(viewport={"width": 1500, "height": 950})
            view = fresh.new_page()
            view.goto(curves_link.replace("http://127.0.0.1:5000", url))
            view.get_by_text("tiny: pruning curves").first.wait_for(timeout=60_000)
            drawn = view.wait_for_function(CURVES_DRAWN, arg=len(prune_runs), timeout=60_000)
            traces = drawn.json_value()
            close_assistant(view)   # drawn before any click; this one clears the screenshot
            view.wait_for_timeout(1000)
            view.screenshot(path=str(shots / "pruning_curves.png"))
            fresh.close()
            browser.close()
    # One line per prune run (the UI draws each twice: smoothed, and its original faintly),
    # each with a point per validation step, paired with params at that same step: no point
    # moved to another step's size, no vertical segment.
    assert {t["uuid"] for t in traces} == set(prune_runs)
    for run_id, expected in prune_runs.items():
        lines = [t for t in traces if t["uuid"] == run_id]
        assert len(lines) == 2
        for t in lines:
            assert sorted(zip(t["x"], t["y"])) == expected
        assert lines[0]["color"] == client.get_run(run_id).data.tags["mlflow.runColor"]
    for name in ("pipeline_run.png", "runs.png", "prune_metrics.png", "answers.png",
                 "report.png", "models.png", "pruning_curves.png"):
        assert (shots / name).stat().st_size > 10_000
