"""The `main` entry point: the whole study as child runs of one pipeline run.

Base training, Fisher and L1 pruning, the pruned architectures trained from scratch, a family
scaled from one pruned profile, reduced width / depth / bottleneck baselines, latency
evaluations, then `compare`. A step whose finished run (same stage, same settings) is already in
the experiment is reused, not re-run; an interrupted train or prune run with the same settings is
resumed from its last checkpoint. The runs used are listed on the pipeline run (a tag and
`pipeline_runs.csv`), since a reused run stays the child of the pipeline that first made it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import Any, Callable

import mlflow

from mlprunes.arch import ArchSpec, make_spec
from mlprunes.counting import count_params
from mlprunes.engine.recipes import preset as recipe_preset
from mlprunes.stages import tracking
from mlprunes.stages.common import DataConfig, RunConfig, dataset_classes, load_splits, say
from mlprunes.stages.compare import TAG_STUDY_RUNS, run_compare
from mlprunes.engine.trainer import resolve_device
from mlprunes.stages.evaluate import evaluate_key, run_evaluate
from mlprunes.stages.family import family_key, run_family
from mlprunes.stages.prune import PruneJob, run_pruning, saved_prune_counts
from mlprunes.stages.scratch import (PrunedSource, lineage_tags, load_pruned_source,
                                     scratch_job)
from mlprunes.stages.train import LAST, TrainJob, run_training


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
        raise tracking.StageError(f"unknown pipeline preset {name!r}; choose one of "
                                  f"{', '.join(PLANS)}")
    return PLANS[name]


@dataclass
class Pipeline:
    plan: StudyPlan
    preset: str
    run: RunConfig
    experiment_id: str = ""
    parent_id: str = ""
    used: list[dict[str, str]] = field(default_factory=list)
    _sources: dict[str, PrunedSource] = field(default_factory=dict)

    def source(self, prune_id: str) -> PrunedSource:
        """A prune run's history and architecture, downloaded once for all its steps."""
        if prune_id not in self._sources:
            self._sources[prune_id] = load_pruned_source(prune_id)
        return self._sources[prune_id]

    # -- reuse --------------------------------------------------------------------------------

    def step(self, label: str, key: str, launch: Callable[[str | None], str],
             resumable_artifact: Callable[[str], bool] | None = None) -> str:
        """Run a step once: reuse a finished run with this key, resume an interrupted one,
        or launch it (`launch(resume_run_id)`)."""
        found = tracking.runs_with_key(self.experiment_id, key)
        finished = [r for r in found if r.info.status == "FINISHED"]
        if finished:
            run_id = finished[0].info.run_id
            say(f"[pipeline] {label}: reusing finished run {run_id}")
            return self._record(label, run_id, "reused")
        for r in found:
            if resumable_artifact is not None and resumable_artifact(r.info.run_id):
                say(f"[pipeline] {label}: resuming interrupted run {r.info.run_id}")
                return self._record(label, launch(r.info.run_id), "resumed")
        say(f"[pipeline] {label}: starting")
        return self._record(label, launch(None), "new")

    def _record(self, label: str, run_id: str, how: str) -> str:
        self.used.append({"step": label, "run_id": run_id, "how": how})
        mlflow.set_tag(TAG_STUDY_RUNS, ",".join(u["run_id"] for u in self.used))
        return run_id

    # -- steps --------------------------------------------------------------------------------

    def train(self, label: str, spec: ArchSpec) -> str:
        plan = self.plan
        recipe = recipe_preset(spec.family).override(epochs=plan.epochs,
                                                     batch_size=plan.batch_size)
        job = TrainJob(spec=spec, recipe=recipe, data=plan.data, run=self.run,
                       preset=spec.family, log_model=plan.log_model,
                       run_name=f"train-{label}-{spec.name}",
                       tags={"mlprunes.pipeline_step": label})
        return self.step(label, job.key,
                         lambda resume: run_training(job, self.parent_id, resume),
                         lambda rid: LAST in tracking.list_artifacts(rid, "checkpoints"))

    def prune(self, base_id: str, criterion: str, family: str) -> str:
        plan = self.plan
        recipe = recipe_preset(family, pruning=True).override(batch_size=plan.prune_batch_size)
        job = PruneJob(base_run_id=base_id, criterion=criterion, prunes=plan.prunes,
                       recipe=recipe, data=plan.data, prune_every=plan.prune_every,
                       save_every=plan.save_every, val_every=plan.val_every, run=self.run,
                       preset=family, log_model=plan.log_model)
        return self.step(f"prune-{criterion}", job.key,
                         lambda resume: run_pruning(job, self.parent_id, resume),
                         lambda rid: bool(saved_prune_counts(rid)))

    def scratch(self, prune_id: str, criterion: str, prunes: int) -> str:
        source = self.source(prune_id)
        job = scratch_job(source, source.spec_at(prunes), "scratch-e", self.plan.data,
                          stage="scratch", run=self.run, log_model=self.plan.log_model,
                          run_name=f"scratch-{criterion}-{source.spec.name}-p{prunes}",
                          tags=lineage_tags(source),
                          extra_params={"prune_run_id": prune_id, "prunes": prunes,
                                        "budget": "scratch-e"})
        return self.step(f"scratch-{criterion}-p{prunes}", job.key,
                         lambda resume: run_training(job, self.parent_id, resume),
                         lambda rid: LAST in tracking.list_artifacts(rid, "checkpoints"))

    def family(self, prune_id: str, base_params: int) -> str:
        source = self.source(prune_id)
        prunes = self.plan.prunes
        budgets = [int(base_params * f) for f in self.plan.family_budgets]
        key = family_key(source, prunes, budgets, "scratch-e", self.plan.data, self.run)
        return self.step("family", key, lambda resume: run_family(
            source, prunes=prunes, budgets=budgets, budget="scratch-e", data=self.plan.data,
            run=self.run, experiment="", parent_run_id=self.parent_id,
            log_model=self.plan.log_model))

    def evaluate(self, label: str, run_id: str) -> str:
        key = evaluate_key(run_id, None, 64, resolve_device(self.run.device))
        return self.step(label, key, lambda resume: run_evaluate(
            run_id, batch_size=64, run=self.run, parent_run_id=self.parent_id))


def run_pipeline(preset: str, *, run: RunConfig = RunConfig(),
                 experiment: str = tracking.DEFAULT_EXPERIMENT,
                 plan: StudyPlan | None = None) -> str:
    plan = plan or plan_for(preset)
    load_splits(plan.data)  # missing data is one error before the pipeline run starts
    base_spec = make_spec(**plan.arch, num_classes=dataset_classes(plan.data))
    with tracking.stage_run("pipeline", experiment=experiment, run_name=f"pipeline-{preset}",
                            tags={tracking.TAG_PRESET: preset}) as parent:
        tracking.log_params({"preset": preset, "base_arch": base_spec.to_json(),
                             "epochs": plan.epochs, "prunes": plan.prunes,
                             "dataset": plan.data.dataset, "seed": run.seed})
        pipe = Pipeline(plan, preset, run, parent.info.experiment_id, parent.info.run_id)
        say(f"[pipeline] {preset}: {plan.description}; run {parent.info.run_id}")

        base_id = pipe.train("base", base_spec)
        prune_ids = {c: pipe.prune(base_id, c, base_spec.family) for c in plan.criteria}
        scratch_ids = [pipe.scratch(prune_ids[c], c, n)
                       for c in plan.criteria for n in plan.scratch_prunes]
        baseline_ids = []
        for overrides in plan.baselines:
            spec = make_spec(**{**plan.arch, **overrides}, num_classes=base_spec.num_classes)
            label = "reduced-" + "-".join(f"{k}{v}" for k, v in overrides.items())
            baseline_ids.append(pipe.train(label, spec))
        if plan.family_budgets:
            pipe.family(prune_ids[plan.criteria[0]], count_params(base_spec))
        if plan.evaluate:
            pipe.evaluate("evaluate-base", base_id)
            pipe.evaluate(f"evaluate-prune-{plan.criteria[0]}", prune_ids[plan.criteria[0]])
            if scratch_ids:
                pipe.evaluate("evaluate-scratch", scratch_ids[-1])
            if baseline_ids:
                pipe.evaluate("evaluate-reduced", baseline_ids[0])
        compare_id = run_compare(experiment, parent_run_id=parent.info.run_id,
                                 study_parent_run_id=parent.info.run_id,
                                 run_name=f"compare-{preset}")
        pipe.used.append({"step": "compare", "run_id": compare_id, "how": "new"})
        with tracking.scratch_dir("pipeline") as tmp:
            with open(tmp / "pipeline_runs.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["step", "run_id", "how"])
                writer.writeheader()
                writer.writerows(pipe.used)
            mlflow.log_artifact(str(tmp / "pipeline_runs.csv"))
        reused = [u["run_id"] for u in pipe.used if u["how"] == "reused"]
        mlflow.set_tags({"mlprunes.compare_run_id": compare_id,
                         "mlprunes.reused_runs": ",".join(reused)})
        mlflow.log_metrics({"runs_new": sum(u["how"] == "new" for u in pipe.used),
                            "runs_reused": len(reused),
                            "runs_resumed": sum(u["how"] == "resumed" for u in pipe.used)})
        say(f"[pipeline] done: {len(pipe.used)} steps, {len(reused)} reused; compare run "
            f"{compare_id}")
        return parent.info.run_id

