"""The whole study on a network that is not the seed's: torchvision's ResNet-18, traced, on
16x16 shapes, through `mlflow run` on the Ray executor, and by hand stage by stage: Fisher and
random pruning, scratch, family, a uniform-width baseline, evaluate, export and compare."""

import json
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlprunes.arch import ArchSpec, GraphSpec
from mlprunes.counting import count
from tests.stage_helpers import cli, read_artifact_text
from tests.test_mlflow_integration import BIN, REPO, env_with_venv

STUDY = REPO / "tests" / "studies" / "torchvision-resnet18.toml"


def _runs_by_stage(experiment: str) -> dict[str, list]:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(run.data.tags.get("mlprunes.stage", "?"), []).append(run)
    return out


def test_the_study_of_a_torchvision_network_runs_under_mlflow_run_on_ray(store, tmp_path):
    pytest.importorskip("ray")
    done = subprocess.run(
        [str(BIN / "mlflow"), "run", str(REPO), "-e", "main", "--env-manager", "local",
         "--experiment-name", "any-cnn", "-P", f"study={STUDY}", "-P", "executor=ray"],
        env=env_with_venv(MLFLOW_TRACKING_URI=store), capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[ray] started base" in done.stderr
    runs = _runs_by_stage("any-cnn")
    counts = {stage: len(r) for stage, r in runs.items()}
    assert counts == {"pipeline": 1, "train": 2, "prune": 2, "scratch": 2, "family": 1,
                      "family-member": 1, "evaluate": 2, "compare": 1}, counts
    assert all(r.info.status == "FINISHED" for rs in runs.values() for r in rs)
    (pipeline,) = runs["pipeline"]
    assert pipeline.data.params["executor"] == "ray"

    trains = {r.data.tags["mlflow.runName"]: r for r in runs["train"]}
    base = ArchSpec.from_json(trains["train-base"].data.params["arch_spec"])
    uniform = ArchSpec.from_json(trains["train-reduced-bottle0.5"].data.params["arch_spec"])
    assert isinstance(base, GraphSpec) and base.builder == "torchvision:resnet18"
    assert trains["train-base"].data.params["arch"] == "torchvision:resnet18"
    assert uniform.names == base.names
    assert list(uniform.mids) == [w // 2 for w in base.mids]     # Liu et al.'s uniform network

    prunes = {r.data.tags["mlprunes.criterion"]: r for r in runs["prune"]}
    assert set(prunes) == {"fisher", "random"}
    for run in prunes.values():
        assert run.data.metrics["channels_left"] == base.prunable_channels - 12
        assert run.data.metrics["params"] < count(base, 16).params
    # A prune run's history speaks of the group channels of the network it started from.
    history = json.loads(read_artifact_text(prunes["fisher"].info.run_id,
                                            "prune_history.json", tmp_path))
    assert len(history) == 12 and all(0 <= i < base.prunable_channels for i in history)
    final = ArchSpec.from_json(read_artifact_text(prunes["fisher"].info.run_id,
                                                  "final_arch.json", tmp_path))
    for scratch in runs["scratch"]:
        spec = ArchSpec.from_json(scratch.data.params["arch_spec"])
        assert spec.names == base.names and scratch.data.metrics["params"] == count(
            spec, 16).params
    assert ArchSpec.from_json(runs["scratch"][0].data.params["arch_spec"]).mids in (
        final.mids, ArchSpec.from_json(read_artifact_text(
            prunes["random"].info.run_id, "final_arch.json", tmp_path)).mids)
    (member,) = runs["family-member"]
    assert member.data.metrics["params"] <= 0.6 * count(base, 16).params

    (compare,) = runs["compare"]
    answers = json.loads(read_artifact_text(compare.info.run_id, "answers.json", tmp_path))
    assert [a["question"] for a in answers] == [1, 2, 3, 4]
    table = read_artifact_text(compare.info.run_id, "runs.csv", tmp_path)
    assert "Uniform width" in table and "Fisher prune + fine-tune" in table


def test_every_stage_by_hand_on_a_traced_network(store, tmp_path):
    data = ["--dataset", "shapes", "--image-size", "16", "--shapes-train", "128",
            "--shapes-test", "64", "--no-progress"]
    base = cli("train", "--arch", "resnet", "--depth", "20", "--epochs", "1",
               "--batch-size", "64", "--no-log-model", *data).run_id
    pruned = cli("prune", "--base-run-id", base, "--criterion", "l1-mean", "--prunes", "30",
                 "--prune-every", "1", "--save-every", "10", "--round-to", "2",
                 "--no-progress").run_id
    client = MlflowClient()
    run = client.get_run(pruned)
    assert run.data.params["arch"] == "resnet" and run.data.params["groups"] == "internal"
    widths = json.loads(read_artifact_text(pruned, "checkpoint_widths.json", tmp_path))
    assert all(w % 2 == 0 and w >= 2 for ws in widths.values() for w in ws)
    scratch = cli("scratch", "--prune-run-id", pruned, "--params-budget", "250000",
                  "--no-progress", "--no-log-model")
    assert scratch.exit_code == 0, scratch.stderr
    evaluated = cli("evaluate", "--run-id", pruned, "--match-run-id", base)
    evaluation = client.get_run(evaluated.run_id)
    metrics = evaluation.data.metrics
    assert metrics["params"] < metrics["matched_params"]
    # Latency is timed in turn for the three networks, or refused on a busy machine.
    assert ("latency_compressed_b1_ms" in metrics and "latency_matched_b1_ms" in metrics
            ) or "mlprunes.latency_refused" in evaluation.data.tags
    out = tmp_path / "net.onnx"
    exported = cli("export", "--run-id", pruned, "--prunes", "20", "--format", "onnx",
                   "--out", str(out))
    assert exported.exit_code == 0 and out.stat().st_size > 0, exported.stderr

    # More prunes than the groups can lose (each keeps one) is one line before any run.
    too_many = cli("prune", "--base-run-id", base, "--prunes", "400")
    assert too_many.exit_code != 0 and len(too_many.error_lines) == 1
    assert "each of its groups keeps at least one" in too_many.stderr


def test_bad_networks_are_one_line_before_any_run(store):
    cases = {
        ("--arch", "os:system"): "not allowed",
        ("--arch", "torchvision:resnext50_32x4d"): "layer1.0.conv2 is a grouped convolution",
        ("--arch", "torchvision:no_such_net"): "torchvision has no classifier",
        ("--arch", "resnet", "--depth", "21"): "6n+2",
        ("--arch", "torchvision:resnet18", "--arch-args", '{"bogus": 1}'): "bogus",
        ("--arch", "torchvision:resnet18", "--depth", "18"): "--arch-args",
        ("--arch", "resnet", "--groups", "all"): "option-A",
        ("--arch", "vgg", "--image-size", "8"): "cannot take an input",
    }
    for args, needle in cases.items():
        result = cli("train", *args, "--dataset", "shapes", "--epochs", "1", "--no-progress")
        assert result.exit_code != 0, args
        assert len(result.error_lines) == 1 and needle in result.stderr, (args, result.stderr)
    assert MlflowClient().search_experiments(filter_string="name = 'mlprunes'") == [] or all(
        not MlflowClient().search_runs([e.experiment_id])
        for e in MlflowClient().search_experiments())
