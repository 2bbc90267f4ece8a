"""The `scratch` and `family` stages: pruned architectures trained from a fresh init.

`scratch` rebuilds the architecture a prune run reached after N prunes (or the first point under
a parameter budget) from its prune history. `family` takes that architecture's per-block width
profile and scales it to other parameter budgets ("prune once, get a family"). Both train with
the base network's recipe: the same epochs (Scratch-E) or, for `scratch-b`, epochs scaled so that
the training FLOPs equal the base network's (Liu et al., ICLR 2019).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from mlflow.entities import Run

from mlprunes.arch import ArchSpec
from mlprunes.counting import count, count_params, scale_to_budget
from mlprunes.pruning import spec_after
from mlprunes.stages import tracking
from mlprunes.stages.common import DataConfig, recipe_from_params
from mlprunes.stages.prune import base_data_config
from mlprunes.stages.train import TrainJob, run_training

BUDGETS = ("scratch-e", "scratch-b")


@dataclass
class PrunedSource:
    """What a finished prune run offers: its starting network, history and base run."""
    prune_run: Run
    base_run: Run
    spec: ArchSpec
    history: list[int]

    @property
    def run_id(self) -> str:
        return self.prune_run.info.run_id

    def spec_at(self, prunes: int) -> ArchSpec:
        if not 0 <= prunes <= len(self.history):
            raise tracking.StageError(
                f"--prunes {prunes} is beyond what prune run {self.run_id} saved: its history "
                f"has {len(self.history)} prunes")
        return spec_after(self.spec, self.history[:prunes])

    def prunes_for_budget(self, params_budget: int) -> int:
        """The fewest prunes at which the network has at most `params_budget` parameters."""
        for n in range(len(self.history) + 1):
            if count_params(self.spec_at(n)) <= params_budget:
                return n
        smallest = count_params(self.spec_at(len(self.history)))
        raise tracking.StageError(
            f"--params-budget {params_budget:,} is below the smallest network prune run "
            f"{self.run_id} reached ({smallest:,} params after {len(self.history)} prunes)")


def load_pruned_source(prune_run_id: str) -> PrunedSource:
    run = tracking.get_run(prune_run_id, stage="prune")
    base_id = run.data.tags.get(tracking.TAG_BASE_RUN)
    base = tracking.get_run(base_id, stage="train", finished=False)
    with tracking.scratch_dir("source") as tmp:
        history_path = tracking.download_artifact(prune_run_id, "prune_history.json", tmp)
        arch_path = tracking.download_artifact(prune_run_id, "arch.json", tmp)
        history = [int(i) for i in json.loads(history_path.read_text())]
        spec = ArchSpec.from_json(arch_path.read_text())
    return PrunedSource(run, base, spec, history)


def scratch_epochs(source: PrunedSource, spec: ArchSpec, budget: str, image_size) -> int:
    base_epochs = int(source.base_run.data.params["epochs"])
    if budget == "scratch-e":
        return base_epochs
    # Scratch-B: the same training compute as the base network (FLOPs x epochs).
    ratio = count(source.spec, image_size).flops / max(1, count(spec, image_size).flops)
    return max(1, int(round(base_epochs * ratio)))


def scratch_job(source: PrunedSource, spec: ArchSpec, budget: str, data: DataConfig,
                **job_fields) -> TrainJob:
    if budget not in BUDGETS:
        raise tracking.StageError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    recipe = recipe_from_params(source.base_run.data.params)
    size = data.image_size or 32
    recipe = replace(recipe, epochs=scratch_epochs(source, spec, budget, (size, size)))
    preset = source.base_run.data.tags.get(tracking.TAG_PRESET, spec.family)
    return TrainJob(spec=spec, recipe=recipe, data=data, preset=preset, **job_fields)


def source_data(source: PrunedSource) -> DataConfig:
    return base_data_config(source.prune_run)


def scale_family(spec: ArchSpec, budget: int) -> ArchSpec:
    try:
        return scale_to_budget(spec, budget)
    except ValueError as err:
        raise tracking.StageError(str(err)) from None


def lineage_tags(source: PrunedSource) -> dict[str, str]:
    return {tracking.TAG_PRUNE_RUN: source.run_id,
            tracking.TAG_BASE_RUN: source.base_run.info.run_id,
            "mlprunes.criterion": source.prune_run.data.params.get("criterion", "")}


def run_scratch(source: PrunedSource, *, prunes: int, budget: str, data: DataConfig,
                parent_run_id: str | None = None, resume_run_id: str | None = None,
                **job_fields) -> str:
    spec = source.spec_at(prunes)
    job = scratch_job(source, spec, budget, data, stage="scratch",
                      tags=lineage_tags(source),
                      extra_params={"prune_run_id": source.run_id, "prunes": prunes,
                                    "budget": budget},
                      **job_fields)
    if job.run_name is None:
        crit = source.prune_run.data.params.get("criterion", "pruned")
        job.run_name = f"scratch-{crit}-{source.spec.name}-p{prunes}"
    return run_training(job, parent_run_id=parent_run_id, resume_run_id=resume_run_id)
