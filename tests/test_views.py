"""A study's saved views in MLflow's UI: what the experiment tags hold, that each view's filter
finds exactly its study's runs, that two studies' views do not mix, run colours, and the plain
link where the UI's version has not been checked. (The browser test opens them.)"""

import json
import re
from urllib.parse import unquote

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.search_utils import SearchUtils

from mlprunes.report.colours import shade, style
from mlprunes.stages import views
from tests.stage_helpers import cli
from tests.test_mlflow_integration import free_port, start_server

# What MLflow 3.17's UI takes from a saved view's state (its search facets, and the page state
# it keeps in a view, less the per-session parts it leaves out).
SEARCH_FACETS = {"searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter",
                 "modelVersionFilter", "datasetsFilter"}
PAGE_STATE = {"selectedColumns", "columnOrder", "columnWidths", "runsHiddenMode",
              "compareRunCharts", "compareRunSections", "viewMaximized", "runListHidden",
              "isAccordionReordered", "groupBy", "groupsExpanded", "useGroupedValuesInCharts",
              "hideEmptyCharts", "globalLineChartConfig", "chartsSearchFilter"}


def study_runs(client, pipeline_id: str) -> dict[str, set[str]]:
    """A pipeline's network runs by stage, family members included, read from its own tags."""
    pipeline = client.get_run(pipeline_id)
    ids = pipeline.data.tags["mlprunes.study_run_ids"].split(",")
    runs = [client.get_run(i) for i in ids]
    for family in [r for r in runs if r.data.tags["mlprunes.stage"] == "family"]:
        runs += [client.get_run(m)
                 for m in family.data.tags["mlprunes.member_run_ids"].split(",")]
    by_stage: dict[str, set[str]] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["mlprunes.stage"], set()).add(r.info.run_id)
    return by_stage


def saved_views(client, experiment_id: str) -> dict[str, tuple[dict, dict]]:
    """The experiment's saved views by key: the envelope, checked as the UI checks it, and the
    state it holds."""
    found = {}
    for tag, value in client.get_experiment(experiment_id).tags.items():
        if not tag.startswith("mlflow.sharedViewState."):
            continue
        outer = json.loads(value)
        assert isinstance(outer["name"], str) and isinstance(outer["state"], str)
        assert isinstance(outer["createdAt"], int) and outer["updatedAt"] >= outer["createdAt"]
        state = json.loads(outer["state"])   # plain JSON: it fits in a tag
        assert set(state) <= SEARCH_FACETS | PAGE_STATE
        found[tag.removeprefix("mlflow.sharedViewState.")] = (outer, state)
    return found


def matched(client, experiment_id: str, state: dict) -> set[str]:
    """The runs a view's filter finds, as the UI's search would."""
    return {r.info.run_id for r in client.search_runs([experiment_id], state["searchFilter"],
                                                       max_results=1000)}


def test_two_studies_in_one_experiment_get_views_that_do_not_mix(store):
    client = MlflowClient()
    first = cli("pipeline", "--preset", "tiny", "--no-progress")
    second = cli("pipeline", "--preset", "tiny", "--set", "name=tiny two", "--seeds", "1",
                 "--no-progress")
    experiment_id = client.get_run(first.run_id).info.experiment_id
    found = saved_views(client, experiment_id)
    assert len(found) == 6   # three views of each study

    seen: dict[str, set[str]] = {}
    for result, study in ((first, "tiny"), (second, "tiny two")):
        runs = study_runs(client, result.run_id)
        mine = {key: v for key, v in found.items() if v[0]["name"].startswith(f"{study}: ")}
        assert sorted(v[0]["name"] for v in mine.values()) == [
            f"{study}: pruning curves", f"{study}: sizes", f"{study}: training curves"]
        by_name = {v[0]["name"].removeprefix(f"{study}: "): (key, v[1])
                   for key, v in mine.items()}

        key, state = by_name["pruning curves"]
        assert matched(client, experiment_id, state) == runs["prune"]
        # Flat (sorted by name: by creation time they stay folded under their pipeline run),
        # every run drawn, val_error against params first.
        assert state["orderByKey"] == "tags.`mlflow.runName`"
        assert state["runsHiddenMode"] == "SHOW_ALL"
        chart = state["compareRunCharts"][0]
        assert (chart["type"], chart["metricKey"], chart["xAxisKey"],
                chart["selectedXAxisMetricKey"]) == ("LINE", "val_error", "metric", "params")
        assert not chart["useGlobalXaxisKey"]
        assert {c["metricSectionId"] for c in state["compareRunCharts"]} == {
            s["uuid"] for s in state["compareRunSections"]}

        trained = runs["train"] | runs["scratch"] | runs["family-member"]
        assert matched(client, experiment_id, by_name["training curves"][1]) == trained
        sizes = by_name["sizes"][1]
        assert matched(client, experiment_id, sizes) == trained | runs["prune"]
        assert (sizes["compareRunCharts"][0]["xaxis"]["key"],
                sizes["compareRunCharts"][0]["yaxis"]["key"]) == ("params", "test_error")
        seen[study] = trained | runs["prune"]

        # The link printed beside the run's own, and in both descriptions.
        link = re.findall(r"Pruning curves: (\S+)", result.stderr)[-1]
        assert link == (f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?"
                        f"viewStateShareKey={key}&compareRunsMode=CHART"
                        f"&workflowType=machine_learning")
        pipeline = client.get_run(result.run_id)
        compare = client.get_run(pipeline.data.tags["mlprunes.compare_run_id"])
        route = link.removeprefix("http://127.0.0.1:5000/")
        for run in (pipeline, compare):
            assert f"**Pruning curves:** [in MLflow's chart view]({route})" in \
                run.data.tags["mlflow.note.content"]
    assert not seen["tiny"] & seen["tiny two"]  # different seeds: no run in common

    # The study changed (another seed) and run again under its name: its three views are the
    # same ones, updated, and show what it holds now (the runs that left it are untagged).
    changed = cli("pipeline", "--preset", "tiny", "--seeds", "1", "--no-progress")
    later = saved_views(client, experiment_id)
    assert set(later) == set(found)
    for key, (outer, _) in later.items():
        assert outer["createdAt"] == found[key][0]["createdAt"]
        if outer["name"].startswith("tiny: "):
            assert outer["updatedAt"] > found[key][0]["updatedAt"]
    pruning = next(state for outer, state in later.values()
                   if outer["name"] == "tiny: pruning curves")
    assert matched(client, experiment_id, pruning) == study_runs(client, changed.run_id)["prune"]


def test_a_pipeline_compared_from_another_experiment_keeps_its_views_with_its_runs(store):
    client = MlflowClient()
    study = cli("pipeline", "--preset", "tiny", "--experiment", "elsewhere", "--no-progress")
    again = cli("compare", "--parent-run-id", study.run_id, "--experiment", "mlprunes")
    assert again.exit_code == 0, again.stderr
    elsewhere = client.get_experiment_by_name("elsewhere").experiment_id
    assert client.get_run(again.run_id).info.experiment_id != elsewhere
    assert f"/#/experiments/{elsewhere}/runs?viewStateShareKey=" in re.findall(
        r"Pruning curves: (\S+)", again.stderr)[-1]
    pruning = next(state for outer, state in saved_views(client, elsewhere).values()
                   if outer["name"] == "tiny: pruning curves")
    assert matched(client, elsewhere, pruning) == study_runs(client, study.run_id)["prune"]


def test_under_mlflow_run_the_views_are_named_after_the_study(store, monkeypatch):
    """`mlflow run -e main` logs the entry point's own `preset` param ('' when a study file is
    given, or none) on the pipeline's run before the pipeline starts."""
    client = MlflowClient()
    experiment_id = client.create_experiment("mlprunes")
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "preset", "''")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    # As in the process `mlflow run` starts (restored after, so no later test inherits it).
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", experiment_id)
    assert cli("pipeline", "--preset", "tiny", "--no-progress").run_id == run.info.run_id
    assert sorted(outer["name"] for outer, _ in saved_views(client, experiment_id).values()) \
        == ["tiny: pruning curves", "tiny: sizes", "tiny: training curves"]
    assert "Study **tiny**" in client.get_run(run.info.run_id).data.tags["mlflow.note.content"]


def test_runs_get_their_report_colour_in_a_shade_per_seed_and_a_users_colour_stays(store):
    client = MlflowClient()
    result = cli("pipeline", "--preset", "tiny", "--seeds", "0,1", "--no-progress")
    prunes = sorted((r for r in client.search_runs(
        [client.get_run(result.run_id).info.experiment_id], "tags.`mlprunes.stage` = 'prune'")),
        key=lambda r: int(r.data.params["seed"]))
    fisher = style("Fisher prune + fine-tune")[0]
    assert [r.data.tags["mlflow.runColor"] for r in prunes] == [fisher, shade(fisher, 1)]
    assert shade(fisher, 1) != fisher
    base = next(r for r in client.search_runs(
        [prunes[0].info.experiment_id], "tags.`mlflow.runName` = 'train-base-s0'"))
    assert base.data.tags["mlflow.runColor"] == style("Full network")[0]

    # A colour picked in the UI (it writes the same tag) is not painted over by the next
    # comparison.
    client.set_tag(prunes[0].info.run_id, "mlflow.runColor", "#ff00ff")
    assert cli("compare", "--parent-run-id", result.run_id).exit_code == 0
    assert client.get_run(prunes[0].info.run_id).data.tags["mlflow.runColor"] == "#ff00ff"
    assert client.get_run(prunes[1].info.run_id).data.tags["mlflow.runColor"] == \
        shade(fisher, 1)


def test_an_unchecked_mlflow_version_gets_the_plain_link_and_the_click_to_make(store,
                                                                              monkeypatch):
    monkeypatch.setattr(views, "VIEWS_SHOWN_TO_WORK", ("0.1",))
    client = MlflowClient()
    result = cli("pipeline", "--preset", "tiny", "--no-progress")
    assert result.exit_code == 0
    experiment_id = client.get_run(result.run_id).info.experiment_id
    assert saved_views(client, experiment_id) == {}   # no view it may misread
    assert "the gear above the charts and choose X-axis: Metric, then params" in result.stderr
    link = re.findall(r"Pruning curves: (\S+)", result.stderr)[-1]
    assert "viewStateShareKey" not in link and "orderByKey=tags.%60mlflow.runName%60" in link
    pipeline = client.get_run(result.run_id)
    compare = client.get_run(pipeline.data.tags["mlprunes.compare_run_id"])
    for run in (pipeline, compare):   # the descriptions say the same, and promise no view
        note = run.data.tags["mlflow.note.content"]
        assert "X-axis: Metric, then params" in note and "saved views" not in note
    query = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))
    prunes = {r.info.run_id for r in client.search_runs([experiment_id], unquote(
        query["searchFilter"]))}
    assert prunes == {r.info.run_id for r in client.search_runs(
        [experiment_id], "tags.`mlprunes.stage` = 'prune'")}


def test_a_view_that_cannot_be_written_never_fails_the_run(store, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("experiment tags are read-only here")

    monkeypatch.setattr("mlflow.tracking.MlflowClient.set_experiment_tag", refuse)
    result = cli("pipeline", "--preset", "tiny", "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert ("[views] the MLflow UI views of 'tiny' were not written (experiment tags are "
            "read-only here)") in result.stderr
    assert "Pruning curves:" not in result.stderr


@pytest.mark.parametrize("name", ["tiny", "my study", "Étude n°2", "a/b:c'd`e", "x" * 300])
def test_any_study_name_makes_a_tag_key_and_a_link_that_work(name):
    key = views.scope_key(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,49}", key)   # a tag key, and plain in a URL
    for view in views.VIEWS:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", views.view_key(name, view))
    for curves in (views.PRUNING, views.TRAINING, ""):   # filters MLflow's search parses
        assert SearchUtils.parse_search_filter(views.search_filter(name, curves))


def test_a_state_too_long_for_a_tag_is_deflated_and_reads_back():
    state = views.view_state("tiny", views.VIEWS[0])
    small = views.envelope("tiny: pruning curves", state, 1, 2)
    assert json.loads(json.loads(small)["state"]) == state
    big = {**state, "columnWidths": {f"metrics.`m{i}`": 100 + i for i in range(2000)}}
    packed = views.envelope("tiny: pruning curves", big, 1, 2)
    assert len(packed) <= views.MAX_TAG_VALUE
    assert json.loads(packed)["state"].startswith("deflate;")
    assert views.read_view(packed) == ("tiny: pruning curves", big)


def test_the_version_guard_reads_major_and_minor_and_an_unknown_version_is_unchecked():
    assert views.ui_reads_views("3.17.2") and views.ui_reads_views("3.17.0rc1")
    assert not views.ui_reads_views("3.18.0") and not views.ui_reads_views("2.17.1")
    assert not views.ui_reads_views(None) and not views.ui_reads_views("<html>3.17</html>")


def test_the_ui_version_is_the_tracking_servers_own(tmp_path, monkeypatch):
    with start_server(tmp_path / "server") as url:
        monkeypatch.setattr(views.tracking, "tracking_uri", lambda: url)
        assert views.ui_version() == mlflow.__version__
    # A server that does not answer: unknown, so unchecked (the plain link).
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(views.tracking, "tracking_uri", lambda: closed)
    assert views.ui_version() is None
