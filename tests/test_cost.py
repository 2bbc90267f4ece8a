"""What a study costs: exact compute where the network is known, list scheduling on G GPUs
bounded by the critical path and by the total, and `mlprunes plan` with a throughput given or
taken from a run."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from mlprunes import arch
from mlprunes.cli import main
from mlprunes.counting import count
from mlprunes.engine.recipes import preset
from mlprunes.jobs import CompareJob, DataConfig, RunConfig, TrainJob
from mlprunes.study.cost import STEP_COST, JobCost, StudyCost, study_cost
from mlprunes.study.graph import Graph
from mlprunes.study.plans import study_graph
from mlprunes.study.studyfile import load_preset
from tests.stage_helpers import TINY_TRAIN, cli


def toy(durations: dict[str, float], needs: dict[str, tuple[str, ...]]) -> StudyCost:
    return StudyCost(tuple(JobCost(n, "train", needs.get(n, ()), 0.0, s, False)
                           for n, s in durations.items()), 1.0, "toy")


def test_list_scheduling_on_a_known_graph():
    # a(4) -> c(1); b(2) -> c; d(3) alone. One GPU: 10. Two, longest ready job first: a and
    # d at 0, b when d ends (3 to 5), then c (5 to 6). (Starting b before d would give 5: list
    # scheduling is a plan, not an optimum.)
    cost = toy({"a": 4, "b": 2, "d": 3, "c": 1}, {"c": ("a", "b")})
    assert cost.makespan(1) == 10
    assert cost.makespan(2) == 6
    assert cost.makespan(3) == 5 == cost.makespan(100) == cost.critical_path()[0]
    assert cost.critical_path()[1] == ["a", "c"]


@pytest.mark.parametrize("name", ["demo", "wrn-40-2"])
def test_a_study_takes_between_its_critical_path_and_its_total(name):
    plan = load_preset(name, ["run.seeds=[0, 1]"])
    spec = arch.make_spec(**plan.arch, num_classes=10)
    cost = study_cost(study_graph(plan, name, RunConfig(progress=False), spec), 1000.0)
    total = sum(j.seconds for j in cost.jobs)
    path = cost.critical_path()[0]
    spans = [cost.makespan(g) for g in (1, 2, 8, 64)]
    assert spans[0] == pytest.approx(total)
    assert all(path - 1e-6 <= s <= total + 1e-6 for s in spans)
    assert spans == sorted(spans, reverse=True)  # more GPUs never take longer here
    assert spans[-1] == pytest.approx(path)      # enough GPUs: only dependencies remain


def test_a_known_network_costs_exactly_three_passes_per_image_seen():
    spec = arch.wrn(16, 1)
    data = DataConfig(dataset="cifar10", val_split=0.1)
    graph = Graph()
    graph.add("base", TrainJob(spec=spec, recipe=preset("wrn").override(epochs=10), data=data))
    graph.add("compare", CompareJob(), after=("base",))
    cost = study_cost(graph, images_per_second=500.0)
    base = cost.jobs[0]
    assert base.macs == STEP_COST * count(spec, (32, 32)).flops * 10 * 45_000
    assert base.seconds == pytest.approx(10 * 45_000 / 500.0)  # the base at the given rate
    assert not base.estimated and cost.jobs[1].macs == 0


def test_plan_prints_the_figures_and_refuses_bad_input():
    runner = CliRunner()
    shown = runner.invoke(main, ["plan", "--preset", "wrn-40-2", "--seeds", "0,1,2", "--gpus",
                                 "1,8,64", "--images-per-second", "5000", "--json"])
    assert shown.exit_code == 0, shown.output
    figures = json.loads(shown.output)
    # Per seed: base, 3 prunes, 12 scratch, 24 fine-tune (4 points, 2 budgets), 7 reduced, a
    # family and 2 evaluations.
    assert len(figures["jobs"]) == 3 * 50 + 1
    assert {j["stage"] for j in figures["jobs"]} >= {"finetune"}
    assert {j["node"].rsplit("-s", 1)[1] for j in figures["jobs"][:-1]} == {"0", "1", "2"}
    assert set(figures["makespan_hours"]) == {"1", "8", "64"}
    assert figures["makespan_hours"]["1"] == pytest.approx(figures["gpu_hours"])
    assert figures["critical_path"][0] == "base-s0"
    for bad, message in [(["--gpus", "0"], "give GPU counts"),
                         (["--seeds", "0,0"], "distinct"), (["--seeds", "a"], "list of seeds"),
                         (["--gpus", "x"], "give GPU counts"),
                         ([], "give one of --images-per-second and --throughput-run-id"),
                         (["--images-per-second", "-3"], "must be a positive number")]:
        args = ["plan", "--preset", "tiny", *bad]
        if "--images-per-second" not in bad and bad:
            args += ["--images-per-second", "100"]
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and message in result.output, (bad, result.output)


def test_plan_takes_the_throughput_from_a_finished_train_run(store):
    from mlflow.tracking import MlflowClient

    run_id = cli(*TINY_TRAIN, "--epochs", "3").run_id
    measured = sorted(m.value for m in MlflowClient().get_metric_history(
        run_id, "images_per_second"))[1]
    result = CliRunner().invoke(main, ["plan", "--preset", "tiny", "--throughput-run-id",
                                       run_id, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    # The run trained the tiny study's own base network: no scaling.
    assert figures["images_per_second"] == pytest.approx(measured)


def test_scratch_b_costs_the_base_networks_compute_per_network():
    plan = load_preset("wrn-40-2", ["family.budgets=[0.25, 0.5]", "family.budget=scratch-b",
                                    "scratch.budgets=['scratch-b']", "run.seeds=[0]"])
    spec = arch.make_spec(**plan.arch, num_classes=10)
    cost = {j.node: j for j in study_cost(study_graph(plan, "p", RunConfig(progress=False),
                                                      spec), 1000.0).jobs}
    base = cost["base"].macs
    assert cost["family"].macs == pytest.approx(2 * base)
    assert cost["scratch-b-fisher-p300"].macs == pytest.approx(base)
    # Capped at the base's epochs, Scratch-B costs what Scratch-E does.
    capped = replace(plan, max_epoch_factor=1.0, scratch_budgets=("scratch-e", "scratch-b"))
    cost = {j.node: j for j in study_cost(study_graph(capped, "p", RunConfig(progress=False),
                                                      spec), 1000.0).jobs}
    assert cost["scratch-b-fisher-p300"].macs == pytest.approx(cost["scratch-fisher-p300"].macs)
    assert cost["scratch-b-fisher-p300"].macs < base and cost["family"].macs < 2 * base
