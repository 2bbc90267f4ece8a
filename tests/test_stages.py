"""Real stages on tiny settings against a real local tracking store, chained by run IDs."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlprunes.arch import ArchSpec
from mlprunes.counting import count_params
from mlprunes.pruning import spec_after
from tests.stage_helpers import TINY_TRAIN, all_runs, cli, read_artifact_text, read_csv


@pytest.fixture
def base_run(store):
    return cli(*TINY_TRAIN).run_id


def prune_args(base_id, *extra, prunes=8):
    return ["prune", "--base-run-id", base_id, "--prunes", str(prunes), "--prune-every", "2",
            "--save-every", "4", "--val-every", "2", "--no-progress", "--no-log-model", *extra]


def test_train_prune_scratch_chain_by_printed_run_ids(base_run, tmp_path):
    client = MlflowClient()
    base = client.get_run(base_run)
    assert base.info.status == "FINISHED"
    assert base.data.tags["mlprunes.stage"] == "train"
    assert base.data.tags["mlflow.runName"] == "train-wrn-10-1"
    assert base.data.params["epochs"] == "1" and base.data.params["dataset"] == "shapes"
    assert ArchSpec.from_json(base.data.params["arch_spec"]).name == "wrn-10-1"
    assert base.data.params["arch"] == "wrn" and base.data.params["depth"] == "10"
    for key in ("train_loss", "train_error", "val_error", "val_loss", "lr", "epoch_seconds",
                "images_per_second", "test_error", "params", "flops", "train_macs"):
        assert key in base.data.metrics, key
    assert base.data.metrics["params"] == 77_850
    # One epoch of 192 images at batch 64: 3 steps, forward + backward at 3x the MACs.
    assert base.data.metrics["train_macs"] == 3 * base.data.metrics["flops"] * 192
    assert [m.step for m in client.get_metric_history(base_run, "train_loss")] == [1]

    result = cli(*prune_args(base_run))
    prune_id = result.run_id
    prune = client.get_run(prune_id)
    # Where to look, on stderr: the run's page, in model-training mode, and how to serve it.
    link = (f"http://127.0.0.1:5000/#/experiments/{prune.info.experiment_id}/runs/{prune_id}"
            f"?workflowType=machine_learning")
    assert f"MLflow UI: {link}" in result.stderr
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stderr
    assert MlflowClient().get_experiment(prune.info.experiment_id).tags[
        "mlflow.experimentKind"] == "custom_model_development"
    assert prune.data.tags["mlprunes.stage"] == "prune"
    assert prune.data.tags["mlprunes.base_run_id"] == base_run
    assert prune.data.tags["mlflow.runName"] == "prune-fisher-wrn-10-1"
    artifacts = {f.path for f in client.list_artifacts(prune_id)}
    assert {"arch.json", "prune_history.json", "pruning_curve.csv"} <= artifacts
    saved = {f.path for f in client.list_artifacts(prune_id, "checkpoints")}
    assert {"checkpoints/prunes_00004.pt", "checkpoints/prunes_00008.pt"} <= saved
    history = json.loads(read_artifact_text(prune_id, "prune_history.json", tmp_path))
    assert len(history) == 8 and len(set(history)) == 8
    # One curve point per validation, stepped by prunes done, params falling as channels go.
    curve = read_csv(read_artifact_text(prune_id, "pruning_curve.csv", tmp_path))
    assert [int(r["prunes"]) for r in curve] == [0, 2, 4, 6, 8]
    steps = [m.step for m in client.get_metric_history(prune_id, "val_error")]
    assert steps == [0, 2, 4, 6, 8]
    params = [m.value for m in client.get_metric_history(prune_id, "params")]
    spec = ArchSpec.from_json(read_artifact_text(prune_id, "arch.json", tmp_path))
    assert params[0] == count_params(spec) and params[-1] == count_params(spec_after(spec, history))
    assert [m.value for m in client.get_metric_history(prune_id, "channels_left")][-1] == 112 - 8
    # What it made, at the end and at each checkpoint; how to read its steps.
    final = spec_after(spec, history)
    assert ArchSpec.from_json(read_artifact_text(prune_id, "final_arch.json", tmp_path)) == final
    assert json.loads(prune.data.params["final_mids"]) == list(final.mids)
    assert json.loads(prune.data.tags["mlprunes.final_mids"]) == list(final.mids)
    widths = json.loads(read_artifact_text(prune_id, "checkpoint_widths.json", tmp_path))
    assert widths == {"4": list(spec_after(spec, history[:4]).mids), "8": list(final.mids)}
    assert "A step is one prune" in prune.data.tags["mlflow.note.content"]

    scratch_id = cli("scratch", "--prune-run-id", prune_id, "--prunes", "8", "--no-progress",
                     "--no-log-model").run_id
    scratch = client.get_run(scratch_id)
    assert scratch.data.tags["mlprunes.stage"] == "scratch"
    assert scratch.data.tags["mlprunes.prune_run_id"] == prune_id
    assert scratch.data.tags["mlprunes.base_run_id"] == base_run
    assert ArchSpec.from_json(scratch.data.params["arch_spec"]) == spec_after(spec, history)
    assert scratch.data.metrics["params"] == count_params(spec_after(spec, history))
    assert scratch.data.params["epochs"] == base.data.params["epochs"]  # scratch-e
    assert scratch.data.params["init"] == "fresh" and scratch.data.params["pad"] == "reflect"
    assert client.get_run(prune_id).data.params["pad"] == "zero"   # as the paper's scripts

    sliced_id = cli("scratch", "--prune-run-id", prune_id, "--prunes", "8", "--init", "sliced",
                    "--no-progress", "--no-log-model").run_id
    sliced = client.get_run(sliced_id)
    assert sliced.data.params["init"] == "sliced"
    assert sliced.data.tags["mlprunes.config_key"] != scratch.data.tags["mlprunes.config_key"]
    assert sliced.data.metrics["params"] == scratch.data.metrics["params"]


def test_scratch_by_budget_scratch_b_family_evaluate_and_compare(base_run, tmp_path):
    client = MlflowClient()
    prune_id = cli(*prune_args(base_run, "--criterion", "l1")).run_id
    history = json.loads(read_artifact_text(prune_id, "prune_history.json", tmp_path))
    spec = ArchSpec.from_json(read_artifact_text(prune_id, "arch.json", tmp_path))
    budget = count_params(spec_after(spec, history[:5]))
    by_budget = cli("scratch", "--prune-run-id", prune_id, "--params-budget", str(budget),
                    "--budget", "scratch-b", "--max-epoch-factor", "1.5", "--no-progress",
                    "--no-log-model").run_id
    run = client.get_run(by_budget)
    assert run.data.params["prunes"] == "5"
    assert run.data.metrics["params"] <= budget
    # Scaled by FLOPs, capped at 1.5 and cut to its integer part: 1 base epoch -> 1.
    factor = float(run.data.params["epoch_factor"])
    assert 1 < factor <= 1.5 and run.data.params["max_epoch_factor"] == "1.5"
    base_epochs = int(client.get_run(base_run).data.params["epochs"])
    assert int(run.data.params["epochs"]) == max(1, int(base_epochs * factor))

    budgets = [40_000, 60_000]
    family_id = cli("family", "--prune-run-id", prune_id, "--prunes", "8", "--budgets",
                    ",".join(map(str, budgets)), "--no-progress", "--no-log-model").run_id
    members = client.search_runs([client.get_run(family_id).info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{family_id}'")
    assert len(members) == 2
    sizes = sorted(m.data.metrics["params"] for m in members)
    assert all(s <= b for s, b in zip(sizes, budgets)) and sizes[0] < sizes[1]
    assert all(m.data.tags["mlprunes.stage"] == "family-member" for m in members)

    eval_id = cli("evaluate", "--run-id", prune_id, "--repeats", "2", "--batch-size", "8",
                  "--no-progress").run_id
    metrics = client.get_run(eval_id).data.metrics
    assert client.get_run(eval_id).data.tags["mlprunes.source_run_id"] == prune_id
    for key in ("test_error", "params", "flops", "latency_masked_b1_ms",
                "latency_compressed_b1_ms", "latency_masked_b8_ms", "speedup_b8",
                "latency_onnx_b1_ms", "latency_onnx_b8_ms", "onnx_speedup_b8"):
        assert metrics[key] > 0, key
    assert metrics["params"] == count_params(spec_after(spec, history))

    compare_id = cli("compare").run_id
    compare = client.get_run(compare_id)
    note = compare.data.tags["mlflow.note.content"]
    assert (f"(#/experiments/{compare.info.experiment_id}/runs/{compare_id}/artifacts/"
            f"report.html?workflowType=machine_learning)") in note
    assert "**Answers**" in note and "1. **" in note
    table = read_csv(read_artifact_text(compare_id, "runs.csv", tmp_path))
    by_id = {r["run_id"]: r for r in table}
    finished = [r for r in all_runs() if r.info.status == "FINISHED"
                and r.data.tags.get("mlprunes.stage") in ("train", "prune", "scratch",
                                                          "family-member", "evaluate")]
    assert set(by_id) == {r.info.run_id for r in finished}
    for r in finished:
        row = by_id[r.info.run_id]
        assert float(row["params"]) == r.data.metrics["params"]
        assert float(row["test_error"]) == pytest.approx(r.data.metrics["test_error"])


@pytest.mark.parametrize("make_args, fragment", [
    (lambda ids: ["prune", "--base-run-id", "0123456789abcdef0123456789abcdef", "--prunes", "2"],
     "no run with ID '0123456789abcdef0123456789abcdef'"),
    (lambda ids: ["prune", "--base-run-id", ids["prune"], "--prunes", "2"],
     "is a 'prune' run, not a 'train' run"),
    (lambda ids: ["scratch", "--prune-run-id", ids["base"], "--prunes", "2"],
     "is a 'train' run, not a 'prune' run"),
    (lambda ids: ["prune", "--base-run-id", ids["unfinished"], "--prunes", "2"],
     "has status RUNNING, not FINISHED"),
    (lambda ids: ["prune", "--base-run-id", ids["empty"], "--prunes", "2"],
     "has no artifact 'checkpoints/final.pt'"),
    (lambda ids: ["scratch", "--prune-run-id", ids["prune"], "--prunes", "100"],
     "--prunes 100 is beyond what prune run"),
    (lambda ids: ["family", "--prune-run-id", ids["prune"], "--prunes", "4", "--budgets", "100"],
     "below the smallest"),
    (lambda ids: ["prune", "--base-run-id", ids["base"], "--prunes", "5000"],
     "--prunes 5000 is more than the 112 channels"),
    (lambda ids: ["train", "--depth", "11"], "depth: WRN depth must be 6n+4"),
    (lambda ids: ["scratch", "--prune-run-id", ids["prune"], "--params-budget", "10"],
     "--params-budget 10 is below the smallest network"),
    (lambda ids: [*TINY_TRAIN, "--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
    (lambda ids: [*TINY_TRAIN, "--batch-size", "500"], "is smaller than one batch (500)"),
    (lambda ids: prune_args(ids["base"], "--resume-run-id", ids["prune"]), "has already finished"),
    (lambda ids: prune_args(ids["base"], "--resume-run-id", ids["stray_prune"]),
     "was started with other settings"),
    (lambda ids: ["evaluate", "--run-id", ids["base"], "--batch-size", "0"],
     "--batch-size must be at least 1, got 0"),
    (lambda ids: prune_args(ids["base"], "--criterion", "l1-mean", "--flops-penalty", "0.5"),
     "--flops-penalty weighs Fisher's estimated loss increase"),
    (lambda ids: prune_args(ids["base"], "--round-to", "12"),
     "block(s) [0, 1, 2] have widths [16, 32, 64]"),
    (lambda ids: prune_args(ids["base"], "--round-to", "8", prunes=15),
     "--prunes 15 is more than the 14 prunes of 8 channels"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(base_run, make_args, fragment):
    client = MlflowClient()
    prune_id = cli(*prune_args(base_run)).run_id
    exp = client.get_run(base_run).info.experiment_id
    unfinished = client.create_run(exp, tags={"mlprunes.stage": "train"}).info.run_id
    empty = client.create_run(exp, tags={"mlprunes.stage": "train"}).info.run_id
    client.set_terminated(empty, "FINISHED")
    stray_prune = client.create_run(exp, tags={"mlprunes.stage": "prune",
                                               "mlprunes.config_key": "other"}).info.run_id
    ids = {"base": base_run, "prune": prune_id, "unfinished": unfinished, "empty": empty,
           "stray_prune": stray_prune}
    before = {r.info.run_id for r in all_runs()}

    result = cli(*make_args(ids))
    assert result.exit_code != 0
    assert len(result.error_lines) == 1, result.stderr
    assert fragment in result.error_lines[0]
    assert result.stdout.strip() == ""
    assert {r.info.run_id for r in all_runs()} == before  # no run was started


def test_unreachable_tracking_server_is_one_clear_error(store, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    result = cli(*TINY_TRAIN)
    assert result.exit_code != 0
    assert result.error_lines == [f"Error: cannot reach the MLflow tracking store at "
                                  f"http://127.0.0.1:{port}: Connection refused"]


def test_the_logged_model_loads_and_matches_the_final_checkpoint(store, tmp_path):
    import torch

    from mlprunes.engine.checkpoint import load_checkpoint, model_from_checkpoint

    args = [a for a in TINY_TRAIN if a != "--no-log-model"]
    run_id = cli(*args).run_id
    # Named after its network, with its test metrics linked, so the Models page ranks it.
    [found] = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'",
                                          output_format="list")
    assert found.name == "wrn-10-1"
    assert {m.key for m in found.metrics} >= {"test_error", "params", "flops"}
    logged = mlflow.pytorch.load_model(f"runs:/{run_id}/wrn-10-1")
    path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                               artifact_path="checkpoints/final.pt",
                                               dst_path=str(tmp_path))
    model = model_from_checkpoint(load_checkpoint(path)).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(logged(x), model(x))


def test_round_to_and_flops_penalty_through_prune_scratch_and_family(base_run, tmp_path):
    """WRN-10-1 (widths 16, 32, 64), 4 prunes of 8 channels with cost-aware Fisher: the
    history holds 32 channels, each checkpoint's widths are multiples of 8, and a scratch run
    at 2 prunes and a family member are too."""
    client = MlflowClient()
    prune_id = cli(*prune_args(base_run, "--round-to", "8", "--flops-penalty", "0.5",
                               prunes=4)).run_id
    prune = client.get_run(prune_id)
    assert prune.data.params["round_to"] == "8" and prune.data.params["flops_penalty"] == "0.5"
    assert prune.data.tags["mlprunes.criterion"] == "fisher+flops0.5-r8"
    assert prune.data.tags["mlflow.runName"] == "prune-fisher+flops0.5-r8-wrn-10-1"
    history = json.loads(read_artifact_text(prune_id, "prune_history.json", tmp_path))
    spec = ArchSpec.from_json(read_artifact_text(prune_id, "arch.json", tmp_path))
    assert len(history) == 32 and len(set(history)) == 32
    for n in range(5):
        assert all(m % 8 == 0 for m in spec_after(spec, history[:8 * n]).mids)
    channels = {m.step: m.value for m in client.get_metric_history(prune_id, "channels_left")}
    assert channels == {0: 112, 2: 96, 4: 80}

    scratch_id = cli("scratch", "--prune-run-id", prune_id, "--prunes", "2", "--no-progress",
                     "--no-log-model").run_id
    scratch = client.get_run(scratch_id)
    assert ArchSpec.from_json(scratch.data.params["arch_spec"]) == spec_after(spec, history[:16])
    assert scratch.data.tags["mlprunes.criterion"] == "fisher+flops0.5-r8"

    # No --round-to: a family scales a profile pruned 8 at a time to multiples of 8.
    family_id = cli("family", "--prune-run-id", prune_id, "--prunes", "4", "--budgets", "40000",
                    "--no-progress", "--no-log-model").run_id
    assert client.get_run(family_id).data.params["round_to"] == "8"
    members = read_csv(read_artifact_text(family_id, "family.csv", tmp_path))
    widths = json.loads(members[0]["mids"])
    assert all(w % 8 == 0 for w in widths) and int(members[0]["params"]) <= 40000


def test_compare_registers_the_pareto_front_with_aliases_by_size(store, monkeypatch):
    """A base network, its pruned child and a smaller network trained on its own: the
    registered versions are exactly the runs no other run beats in both size and error."""
    import torch

    logged = [a for a in TINY_TRAIN if a != "--no-log-model"]
    base = cli(*logged).run_id
    pruned = cli("prune", "--base-run-id", base, "--prunes", "40", "--prune-every", "1",
                 "--save-every", "40", "--no-progress").run_id
    smaller = list(logged)
    smaller[smaller.index("--width") + 1] = "0.5"
    cli(*smaller).run_id
    client = MlflowClient()
    networks = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") in ("train", "prune")]
    points = {r.info.run_id: (r.data.metrics["params"], r.data.metrics["test_error"])
              for r in networks}
    front = {i for i, (p, e) in points.items()
             if not any(q <= p and f <= e and (q, f) != (p, e) for q, f in points.values())}
    assert pruned in points and len(points) == 3

    # As a fresh process would: no experiment chosen by earlier commands.
    import mlflow.tracking.fluent as fluent
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    result = cli("compare", "--register", "tiny-front")
    versions = client.search_model_versions("name = 'tiny-front'")
    assert {v.run_id for v in versions} == front
    assert len(versions) == len(front)
    again = cli("compare", "--register", "tiny-front")    # nothing registered twice
    assert again.exit_code == 0
    assert len(client.search_model_versions("name = 'tiny-front'")) == len(front)
    model = client.get_registered_model("tiny-front")
    smallest = min(front, key=lambda i: points[i][0])
    accurate = min(front, key=lambda i: points[i][1])
    by_version = {v.version: v.run_id for v in versions}
    assert by_version[model.aliases["smallest"]] == smallest
    assert by_version[model.aliases["most-accurate"]] == accurate
    assert all(f"params-{points[i][0] / 1e3:.3g}k".replace(".", "_") in model.aliases
               for i in front)
    net = mlflow.pytorch.load_model("models:/tiny-front@smallest")   # by alias, as users will
    assert net(torch.randn(2, 3, 8, 8)).shape[0] == 2
    note = client.get_run(result.run_id).data.tags["mlflow.note.content"]
    assert "**Registered** as `tiny-front`" in note
    # Networks of other data do not compete with these: refused before any run.
    other = list(logged)
    other[other.index("--image-size") + 1] = "12"
    cli(*other).run_id
    mixed = cli("compare", "--register", "tiny-front")
    assert mixed.exit_code != 0 and "kinds of data" in mixed.error_lines[0]
    assert cli("compare", "--register", "a/b").error_lines[0].startswith(
        "Error: --register needs a model name without / or :")
