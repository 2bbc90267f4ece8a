"""compare on a small real study: the table matches the runs, every group is plotted."""

import json
import math
import re

import pytest
from mlflow.tracking import MlflowClient

from mlprunes.report.pareto import pareto_front
from mlprunes.report.plots import latency_series, series_for
from mlprunes.report.records import RunRecord, assign_groups
from mlprunes.stages.compare import build_records, gather_runs
from tests.stage_helpers import TINY_DATA, cli, read_artifact_text, read_csv

TRAIN = ["train", "--arch", "wrn", "--epochs", "1", "--batch-size", "64", "--no-progress",
         "--no-log-model", *TINY_DATA]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Base WRN-16-1, Fisher and L1 pruning, scratch and family runs, reduced depth, width and
    bottleneck baselines, two evaluations, then compare: a whole (tiny) study."""
    mp = pytest.MonkeyPatch()
    work = tmp_path_factory.mktemp("study")
    mp.chdir(work)
    uri = f"sqlite:///{work}/mlflow.db"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    ids = {"base": cli(*TRAIN, "--depth", "16", "--width", "1").run_id}
    for crit in ("fisher", "l1"):
        ids[crit] = cli("prune", "--base-run-id", ids["base"], "--criterion", crit, "--prunes",
                        "30", "--prune-every", "1", "--save-every", "15", "--val-every", "10",
                        "--no-progress", "--no-log-model").run_id
    ids["scratch"] = cli("scratch", "--prune-run-id", ids["fisher"], "--prunes", "30",
                         "--no-progress", "--no-log-model").run_id
    ids["family"] = cli("family", "--prune-run-id", ids["fisher"], "--prunes", "30",
                        "--budgets", "60000,120000", "--no-progress", "--no-log-model").run_id
    ids["depth"] = cli(*TRAIN, "--depth", "10", "--width", "1").run_id
    ids["width"] = cli(*TRAIN, "--depth", "16", "--width", "0.5").run_id
    ids["bottle"] = cli(*TRAIN, "--depth", "16", "--width", "1", "--bottle", "0.5").run_id
    ids["eval-width"] = cli("evaluate", "--run-id", ids["width"], "--repeats", "2",
                            "--no-progress").run_id
    # The pruned network timed in turn with the reduced width: the study's question 4.
    ids["eval-fisher"] = cli("evaluate", "--run-id", ids["fisher"], "--match-run-id",
                             ids["width"], "--repeats", "2", "--no-progress").run_id
    ids["compare"] = cli("compare").run_id
    yield ids, work
    mp.undo()


GROUPS = {"Full network (pruning base)", "Fisher prune + fine-tune", "L1 prune + fine-tune",
          "Fisher arch. from scratch", "Fisher family, scaled from one prune", "Reduced depth",
          "Reduced width", "Bottleneck"}


def test_table_matches_the_logged_runs(study, tmp_path):
    ids, _ = study
    client = MlflowClient()
    table = read_csv(read_artifact_text(ids["compare"], "runs.csv", tmp_path))
    by_id = {row["run_id"]: row for row in table}
    members = client.search_runs([client.get_run(ids["family"]).info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{ids['family']}'")
    expected = {v for k, v in ids.items() if k not in ("family", "compare")}
    expected |= {m.info.run_id for m in members}
    assert set(by_id) == expected
    for run_id, row in by_id.items():
        run = client.get_run(run_id)
        metrics, params = run.data.metrics, run.data.params
        assert row["stage"] == run.data.tags["mlprunes.stage"]
        assert float(row["params"]) == metrics["params"]
        assert float(row["flops"]) == metrics["flops"]
        assert float(row["test_error"]) == pytest.approx(metrics["test_error"])
        if row["stage"] in ("train", "scratch", "family-member"):
            assert float(row["training_epochs"]) == float(params["epochs"])
        if row["stage"] != "evaluate":
            assert float(row["train_macs"]) == pytest.approx(metrics["train_macs"])
        if row["stage"] == "evaluate":
            assert float(row["latency_ms"]) == pytest.approx(metrics["latency_compressed_b1_ms"])
            assert row["source_run_id"] == params["run_id"]
    assert by_id[ids["scratch"]]["prune_run_id"] == ids["fisher"]
    assert by_id[ids["fisher"]]["base_run_id"] == ids["base"]
    assert {row["group"] for row in table} >= GROUPS


def test_every_group_appears_in_the_plot_data(study):
    ids, _ = study
    records = build_records(gather_runs("mlprunes"))
    for axis in ("params", "flops", "macs"):
        series = series_for(records, axis)
        assert {s.group for s in series} == GROUPS, axis
        curves = [s for s in series if s.kind == "curve"]
        assert {s.run_ids[0] for s in curves} == {ids["fisher"], ids["l1"]}
        # The test curve: the base network, the checkpoint at 15 prunes, the final network.
        assert all(len(s.points) == 3 for s in curves)
    validation = series_for(records, "params", error="validation")
    assert {s.kind for s in validation} == {"curve"}    # test error is never on its axis
    # One point per validation: prunes 0, 10, 20, 30, and the save at 15.
    assert all(len(s.points) == 5 for s in validation)
    fisher_run = next(r for r in records if r.run_id == ids["fisher"])
    base_run = MlflowClient().get_run(ids["base"])
    assert fisher_run.test_curve[0].error == base_run.data.metrics["test_error"]
    checkpoint = MlflowClient().get_metric_history(ids["fisher"], "test_error")
    assert sorted(m.step for m in checkpoint) == [15, 30]   # each checkpoint's, logged once
    fisher = next(s for s in series_for(records, "params") if s.run_ids == [ids["fisher"]])
    params = [x for x, _ in sorted(fisher.points, reverse=True)]
    assert params == sorted(params, reverse=True) and params[0] > params[-1]
    cost = next(s for s in series_for(records, "macs", error="validation")
                if s.run_ids == [ids["fisher"]])
    base_macs = MlflowClient().get_run(ids["base"]).data.metrics["train_macs"]
    spent = sorted(x for x, _ in cost.points)
    assert spent[0] > base_macs and spent == sorted(set(spent))  # continues the base's cost
    tested = next(s for s in series_for(records, "macs") if s.run_ids == [ids["fisher"]])
    assert sorted(tested.points)[0][0] == base_macs     # the test curve starts at the base
    fisher_run = next(r for r in records if r.run_id == ids["fisher"])
    assert fisher_run.curve[0].epochs > 1.0  # the base's epoch plus fine-tuning
    latency = latency_series(records)
    assert {s.group for s in latency} == {"Fisher prune + fine-tune", "Reduced width"}


def test_report_is_self_contained_and_lists_every_run(study, tmp_path):
    ids, _ = study
    client = MlflowClient()
    artifacts = {f.path for f in client.list_artifacts(ids["compare"])}
    assert {"report.html", "runs.csv", "plots"} <= artifacts
    plots = {f.path for f in client.list_artifacts(ids["compare"], "plots")}
    for stem in ("error_vs_params", "error_vs_flops", "error_vs_training_cost",
                 "latency_vs_error", "pruning_curves_validation", "q1_pruned_vs_reduced",
                 "q2_scratch_vs_pruned", "q3_family_vs_pruned", "q4_latency"):
        assert {f"plots/{stem}.png", f"plots/{stem}.svg"} <= plots
    assert {"answers.json", "configurations.csv"} <= artifacts
    html = read_artifact_text(ids["compare"], "report.html", tmp_path)
    assert len(re.findall(r'<img alt="[a-z0-9]+ plot" src="data:image/png;base64,', html)) == 9
    assert html.index('id="answers"') < html.index("<h2>Plots</h2>")
    assert "http://" not in html and "https://" not in html  # nothing needs the network
    table = read_csv(read_artifact_text(ids["compare"], "runs.csv", tmp_path / "t"))
    for row in table:
        assert row["run_id"] in html
    for group in GROUPS:
        assert group in html


def test_a_matched_evaluation_takes_the_checkpoint_nearest_in_size(study, tmp_path):
    ids, _ = study
    client = MlflowClient()
    evaluation = client.get_run(ids["eval-fisher"])
    width = client.get_run(ids["width"]).data.metrics["params"]
    sizes = {m.step: m.value for m in client.get_metric_history(ids["fisher"], "params")}
    nearest = min((15, 30), key=lambda p: abs(math.log(sizes[p] / width)))
    assert evaluation.data.params["checkpoint"].endswith(f"prunes_{nearest:05d}.pt")
    assert evaluation.data.tags["mlprunes.matched_run_id"] == ids["width"]
    metrics = evaluation.data.metrics
    assert metrics["matched_params"] == width and metrics["params"] == sizes[nearest]
    for bs in (1, 64):
        assert metrics[f"latency_matched_b{bs}_ms"] > 0
    answers = json.loads(read_artifact_text(ids["compare"], "answers.json", tmp_path))
    assert [a["question"] for a in answers] == [1, 2, 3, 4]
    q4 = answers[3]["comparisons"]
    assert {c["first"].rsplit(" ", 1)[1] for c in q4} == {"1", "64"}
    # The network it timed is the prune run's own at that checkpoint: one test error.
    at = int(evaluation.data.params["checkpoint"][-8:-3])
    tested = {m.step: m.value for m in client.get_metric_history(ids["fisher"], "test_error")}
    assert metrics["test_error"] == pytest.approx(tested[at])
    assert all(c["verdict"] == "one seed: no interval" for c in q4)
    compare = client.get_run(ids["compare"]).data.metrics
    assert any(k.startswith("q4_") and k.endswith("_diff") for k in compare)


def test_groups_and_pareto_front_on_records_made_by_hand():
    from mlprunes import arch

    base = RunRecord("b", "base", "train", spec=arch.wrn(16, 2))
    records = assign_groups([
        base,
        RunRecord("p", "p", "prune", criterion="l1", base_run_id="b"),
        RunRecord("s", "s", "scratch", criterion="fisher", budget="scratch-b"),
        RunRecord("d", "d", "train", spec=arch.wrn(10, 2)),
        RunRecord("w", "w", "train", spec=arch.wrn(16, 1)),
        RunRecord("dw", "dw", "train", spec=arch.wrn(10, 1)),
        RunRecord("z", "z", "train", spec=arch.wrn(16, 2, bottle=0.5)),
        RunRecord("g", "g", "train", spec=arch.densenet(16, 8)),
        RunRecord("e", "e", "evaluate", source_run_id="w"),
    ])
    assert [r.group for r in records] == [
        "Full network (pruning base)", "L1 prune + fine-tune",
        "Fisher arch. from scratch (Scratch-B)", "Reduced depth", "Reduced width",
        "Reduced depth and width", "Bottleneck", "Trained from scratch",
        "Evaluated: Reduced width"]
    assert pareto_front([(3, 5), (1, 9), (2, 7), (2, 4), (4, 4), (5, 1)]) == [
        (1, 9), (2, 4), (5, 1)]


def test_train_runs_are_named_against_the_smallest_base_they_reduce():
    from mlprunes import arch

    records = assign_groups([
        RunRecord("b1", "b1", "train", spec=arch.wrn(16, 1)),
        RunRecord("b2", "b2", "train", spec=arch.wrn(40, 2)),
        RunRecord("p1", "p1", "prune", base_run_id="b1"),
        RunRecord("p2", "p2", "prune", base_run_id="b2"),
        RunRecord("w", "w", "train", spec=arch.wrn(40, 1)),     # only WRN-40-2 is larger
        RunRecord("d", "d", "train", spec=arch.wrn(10, 1)),     # WRN-16-1 is the nearer base
        RunRecord("big", "big", "train", spec=arch.wrn(40, 4)),  # larger than every base
        RunRecord("c", "c", "train", spec=arch.wrn(16, 1, num_classes=100)),
    ])
    assert {r.run_id: r.group for r in records if r.stage == "train"} == {
        "b1": "Full network (pruning base)", "b2": "Full network (pruning base)",
        "w": "Reduced width", "d": "Reduced depth", "big": "Trained from scratch",
        "c": "Trained from scratch"}


def test_compare_expands_a_family_run_given_by_id(study, tmp_path):
    ids, _ = study
    client = MlflowClient()
    compare_id = cli("compare", "--run-ids", f"{ids['family']},{ids['base']}").run_id
    table = read_csv(read_artifact_text(compare_id, "runs.csv", tmp_path))
    members = client.search_runs([client.get_run(ids["family"]).info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{ids['family']}'")
    assert {r["run_id"] for r in table} == {ids["base"]} | {m.info.run_id for m in members}
