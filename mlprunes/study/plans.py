"""The shipped study plans (presets) and the graph of jobs a plan makes.

A plan says what a study runs: the base network and its data, the pruning schedule and criteria,
which pruned architectures to train from scratch, the reduced baselines, the family budgets and
the evaluations. `study_graph` turns one into jobs and their dependencies, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mlprunes.arch import ArchSpec, make_spec
from mlprunes.counting import count_params
from mlprunes.engine.recipes import preset as recipe_preset
from mlprunes.errors import StageError
from mlprunes.jobs import (CompareJob, DataChoice, DataConfig, EvaluateJob, FamilyJob,
                           PruneJob, RecipeChoice, RunConfig, ScratchJob, TrainJob)
from mlprunes.study.graph import Graph


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study runs. Presets below; every field can be replaced."""
    data: DataConfig
    arch: dict[str, Any]                       # make_spec arguments of the base network
    epochs: int
    batch_size: int
    prunes: int
    prune_every: int
    save_every: int
    val_every: int
    prune_batch_size: int
    scratch_prunes: tuple[int, ...]            # prune counts whose architectures train anew
    baselines: tuple[dict[str, Any], ...]      # make_spec overrides of the base network
    family_budgets: tuple[float, ...]          # fractions of the base network's parameters
    criteria: tuple[str, ...] = ("fisher", "l1")
    evaluate: bool = True
    log_model: bool = True
    description: str = ""


PLANS: dict[str, StudyPlan] = {
    "demo": StudyPlan(
        # Pruning decisions and curves use a held-out tenth of the training set, not the test set.
        data=DataConfig(dataset="shapes", image_size=16, shapes_train=4000, shapes_test=1000,
                        val_split=0.1),
        arch={"family": "wrn", "depth": 16, "width": 1},
        epochs=25, batch_size=64, prunes=150, prune_every=4, save_every=50, val_every=10,
        prune_batch_size=64, scratch_prunes=(75, 150),
        baselines=({"depth": 10}, {"width": 0.5}, {"width": 0.75}, {"bottle": 0.5},
                   {"bottle": 0.25}),
        family_budgets=(0.3, 0.5),
        description="WRN-16-1 on 16x16 shapes: the whole study in minutes on 2 CPU cores"),
    # Seconds, for smoke tests of the pipeline machinery; not a meaningful study.
    "tiny": StudyPlan(
        data=DataConfig(dataset="shapes", image_size=8, shapes_train=256, shapes_test=64),
        arch={"family": "wrn", "depth": 10, "width": 1},
        epochs=1, batch_size=64, prunes=12, prune_every=2, save_every=6, val_every=4,
        prune_batch_size=64, scratch_prunes=(12,), baselines=({"bottle": 0.5},),
        family_budgets=(0.6,), criteria=("fisher",), evaluate=True, log_model=False,
        description="a seconds-long smoke test of the pipeline"),
    "wrn-40-2": StudyPlan(
        data=DataConfig(dataset="cifar10"),
        arch={"family": "wrn", "depth": 40, "width": 2},
        epochs=200, batch_size=128, prunes=1300, prune_every=100, save_every=100,
        val_every=10, prune_batch_size=128, scratch_prunes=(300, 600, 900, 1200),
        baselines=({"depth": 16}, {"depth": 22}, {"depth": 28}, {"width": 1},
                   {"width": 1.5}, {"bottle": 0.5}, {"bottle": 0.25}),
        family_budgets=(0.1, 0.2, 0.35, 0.5),
        description="the paper's WRN-40-2 study on CIFAR-10 (a GPU job)"),
    "densenet-bc-100": StudyPlan(
        data=DataConfig(dataset="cifar10"),
        arch={"family": "densenet", "depth": 100, "growth": 12},
        epochs=300, batch_size=64, prunes=2300, prune_every=100, save_every=100,
        val_every=10, prune_batch_size=64, scratch_prunes=(500, 1000, 1500, 2000),
        baselines=({"depth": 40}, {"depth": 64}, {"growth": 8}, {"bottle": 0.5},
                   {"bottle": 0.25}),
        family_budgets=(0.15, 0.3, 0.5),
        description="the paper's DenseNet-BC-100 study on CIFAR-10 (a GPU job)"),
}


def plan_for(name: str) -> StudyPlan:
    if name not in PLANS:
        raise StageError(f"unknown pipeline preset {name!r}; choose one of "
                                  f"{', '.join(PLANS)}")
    return PLANS[name]


def study_graph(plan: StudyPlan, preset: str, run: RunConfig, base_spec: ArchSpec,
                pipeline_run_id: str | None = None) -> Graph:
    """The study's jobs: the base network, its prune runs, their architectures trained from
    scratch, reduced baselines, a family, evaluations, and the comparison after all of them."""
    graph = Graph()
    log_model = plan.log_model
    # Later stages read the data their input runs were made with, from where it lives now.
    located = DataChoice(data_dir=plan.data.data_dir, download=plan.data.download)

    def train(label: str, spec: ArchSpec):
        recipe = recipe_preset(spec.family).override(epochs=plan.epochs,
                                                     batch_size=plan.batch_size)
        return graph.add(label, TrainJob(spec=spec, recipe=recipe, data=plan.data,
                                         preset=spec.family, run=run, log_model=log_model,
                                         run_name=f"train-{label}-{spec.name}"))

    base = train("base", base_spec)
    prunes = {c: graph.add(f"prune-{c}", PruneJob(
        base_run_id=base, criterion=c, prunes=plan.prunes, prune_every=plan.prune_every,
        save_every=plan.save_every, val_every=plan.val_every,
        recipe=RecipeChoice(batch_size=plan.prune_batch_size), data=located, run=run,
        log_model=log_model))
        for c in plan.criteria}
    scratch = [graph.add(f"scratch-{c}-p{n}", ScratchJob(prune_run_id=prunes[c], prunes=n,
                                                         data=located, run=run,
                                                         log_model=log_model))
               for c in plan.criteria for n in plan.scratch_prunes]
    reduced = []
    for overrides in plan.baselines:
        spec = make_spec(**{**plan.arch, **overrides}, num_classes=base_spec.num_classes)
        reduced.append(train("reduced-" + "-".join(f"{k}{v}" for k, v in overrides.items()),
                             spec))
    first = plan.criteria[0]
    if plan.family_budgets:
        budgets = tuple(int(count_params(base_spec) * f) for f in plan.family_budgets)
        graph.add("family", FamilyJob(prune_run_id=prunes[first], prunes=plan.prunes,
                                      budgets=budgets, data=located, run=run,
                                      log_model=log_model))
    if plan.evaluate:
        targets = {"evaluate-base": base, f"evaluate-prune-{first}": prunes[first]}
        if scratch:
            targets["evaluate-scratch"] = scratch[-1]
        if reduced:
            targets["evaluate-reduced"] = reduced[0]
        for label, ref in targets.items():
            graph.add(label, EvaluateJob(run_id=ref, batch_size=64, run=run))
    graph.add("compare", CompareJob(experiment=run.experiment, parent_run_id=pipeline_run_id,
                                    run=run, run_name=f"compare-{preset}"),
              after=tuple(graph.names))
    return graph


def with_data_dir(plan: StudyPlan, data_dir: str | None, download: bool) -> StudyPlan:
    """A plan reading its data from `data_dir` (and downloading it if asked)."""
    if data_dir is None and not download:
        return plan
    return replace(plan, data=replace(plan.data, data_dir=data_dir or plan.data.data_dir,
                                      download=download))
