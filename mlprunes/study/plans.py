"""A study plan and the graph of jobs it makes.

A plan says what a study runs: the base network and its data, the pruning schedule and criteria,
which pruned architectures to train from scratch, the reduced baselines, the family budgets, the
evaluations and the seeds. Plans are written as study files (`studyfile.py`; the presets are
study files in `presets/`). `study_graph` turns one into jobs and their dependencies, before
anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from mlprunes.arch import ArchSpec, make_spec
from mlprunes.counting import count_params
from mlprunes.engine.recipes import Recipe
from mlprunes.engine.recipes import default_preset, preset as recipe_preset
from mlprunes.errors import StageError
from mlprunes.jobs import (FINETUNE_TAGS, CompareJob, DataChoice, DataConfig, EvaluateJob,
                           FamilyJob, FinetuneJob, PruneJob, RecipeChoice, RunConfig, ScratchJob,
                           TrainJob, criterion_label)
from mlprunes.pruning.loop import SHRINK_EVERY
from mlprunes.study.graph import Graph


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study runs, resolved: what a study file says (`studyfile.py` reads and
    writes them; the presets are study files)."""
    data: DataConfig
    arch: dict[str, Any]                       # make_spec arguments of the base network
    train: dict[str, Any]                      # the training recipe: preset and overrides
    prunes: int
    prune_every: int = 100
    save_every: int = 100
    val_every: int = 10
    prune_recipe: dict[str, Any] = field(default_factory=dict)   # fine-tuning: the same
    criteria: tuple[str, ...] = ("fisher", "l1-mean", "random")
    keep_one: bool = False
    shrink_every: int = SHRINK_EVERY           # prunes between cuts to the surviving channels
    round_to: int = 1                          # every width a multiple of this, throughout
    flops_penalty: float = 0.0                 # Theis et al.'s beta for the fisher criterion
    slimming: float = 0.0                      # > 0: bn-scale prunes a base of its own, trained
    #                                            with this L1 on BatchNorm scales (Liu et al.)
    scratch_prunes: tuple[int, ...] = ()       # prune counts whose architectures train anew
    scratch_params_budgets: tuple[int, ...] = ()   # or the first architectures this small
    scratch_macs_reductions: tuple[float, ...] = ()  # or at the checkpoints nearest 1/R MACs
    uniform_macs_reductions: tuple[float, ...] = ()  # uniform-width baselines at 1/R MACs
    scratch_budgets: tuple[str, ...] = ("scratch-e",)
    max_epoch_factor: float | None = None      # Scratch-B's cap (scratch runs and family)
    init: str = "fresh"                        # scratch runs and family: fresh | sliced
    finetune_prunes: tuple[int, ...] = ()      # prune counts whose networks are fine-tuned on
    finetune_params_budgets: tuple[int, ...] = ()  # or the first saved checkpoints this small
    finetune_budgets: tuple[str, ...] = ("scratch-e",)   # recipe | scratch-e | scratch-b
    finetune_criteria: tuple[str, ...] | None = None     # None: every criterion
    finetune_recipe: dict[str, Any] = field(default_factory=dict)  # preset [liu], overrides
    baselines: tuple[dict[str, Any], ...] = ()     # make_spec overrides of the base network
    family_budgets: tuple[float, ...] = ()     # fractions of the base's parameters, or counts
    family_budget: str = "scratch-e"
    evaluate: bool = True
    evaluate_batch_size: int = 64
    seeds: tuple[int, ...] | None = None       # None: the run's own --seed
    log_model: bool = True
    max_jobs: int = 10_000                     # a bound on the study's jobs ([run] max_jobs)
    name: str = "study"
    description: str = ""

    def base_spec(self, num_classes: int) -> ArchSpec:
        """The base network: the [network] section, its widths rounded to `round_to`."""
        return make_spec(**self.arch, num_classes=num_classes,
                         input_size=self.data.image_size).rounded(self.round_to)

    @property
    def epochs(self) -> int:
        return self.train_recipe(self.arch.get("family", "wrn")).epochs

    def train_recipe(self, family: str) -> Recipe:
        overrides = {k: v for k, v in self.train.items() if k != "preset"}
        return recipe_preset(self.train.get("preset", default_preset(family))).override(
            **overrides)


def study_graph(plan: StudyPlan, preset: str, run: RunConfig, base_spec: ArchSpec,
                pipeline_run_id: str | None = None) -> Graph:
    """The study's jobs for each of its seeds (the base network, its prune runs, their
    architectures trained from scratch, reduced baselines, a family, evaluations), and the
    comparison after all of them."""
    seeds = plan.seeds if plan.seeds is not None else (run.seed,)
    if len(seeds) > 1:   # bounded before the whole graph is made: from one seed's jobs
        per_seed = len(study_graph(replace(plan, seeds=seeds[:1]), preset, run, base_spec)) - 1
        if per_seed * len(seeds) + 1 > plan.max_jobs:
            raise StageError(f"the study has {per_seed * len(seeds) + 1:,} jobs ({per_seed} per "
                             f"seed, {len(seeds):,} seeds), more than its bound of "
                             f"{plan.max_jobs:,}; raise it with [run] max_jobs (or --set "
                             f"run.max_jobs=N) if that is meant")
    graph = Graph()
    made = {}
    uniform = tuple(u for u in uniform_baselines(plan, base_spec) if u not in plan.baselines)
    for seed in seeds:
        suffix = f"-s{seed}" if len(seeds) > 1 else ""
        made[suffix] = (replace(run, seed=seed),
                        _one_seed(graph, plan, replace(run, seed=seed), base_spec, suffix,
                                  uniform))
    if plan.evaluate:
        # Latency is measured once everything has trained, so that no training shares the
        # machine with a timing.
        trained = tuple(graph.names)
        for suffix, (seed_run, refs) in made.items():
            _evaluations(graph, plan, seed_run, refs, suffix, trained)
    graph.add("compare", CompareJob(experiment=run.experiment, parent_run_id=pipeline_run_id,
                                    run=run, run_name=f"compare-{preset}"),
              after=tuple(graph.names))
    if len(graph) > plan.max_jobs:
        raise StageError(f"the study has {len(graph):,} jobs, more than its bound of "
                         f"{plan.max_jobs:,}; raise it with [run] max_jobs (or --set "
                         f"run.max_jobs=N) if that is meant")
    return graph


def _one_seed(graph: Graph, plan: StudyPlan, run: RunConfig, base_spec: ArchSpec,
              suffix: str, uniform: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    log_model = plan.log_model
    # Later stages read the data their input runs were made with, from where it lives now.
    located = DataChoice(data_dir=plan.data.data_dir, download=plan.data.download)

    def train(label: str, spec: ArchSpec):
        return graph.add(label + suffix, TrainJob(
            spec=spec, recipe=plan.train_recipe(spec.family), data=plan.data,
            preset=plan.train.get("preset", default_preset(spec.family)), run=run,
            log_model=log_model,
            run_name=f"train-{label}{suffix}"))

    base = train("base", base_spec)
    bases = {c: base for c in plan.criteria}
    if plan.slimming and "bn-scale" in plan.criteria:
        # Network slimming prunes a base trained for it: the same network and recipe, with an
        # L1 penalty on its BatchNorm scales.
        bases["bn-scale"] = graph.add("base-slimming" + suffix, replace(
            graph[base.node].job, recipe=replace(plan.train_recipe(base_spec.family),
                                                 bn_l1=plan.slimming),
            run_name=f"train-base-slimming{suffix}"))
    prunes = {c: graph.add(f"prune-{c}{suffix}", PruneJob(
        base_run_id=bases[c], criterion=c, prunes=plan.prunes, prune_every=plan.prune_every,
        save_every=plan.save_every, val_every=plan.val_every, keep_one=plan.keep_one,
        shrink_every=plan.shrink_every, round_to=plan.round_to,
        flops_penalty=plan.flops_penalty if c == "fisher" else 0.0,
        recipe=RecipeChoice(**plan.prune_recipe), data=located, run=run, log_model=log_model,
        run_name=f"prune-{_label(plan, c)}{suffix}"))
        for c in plan.criteria}
    scratch = []
    sliced = "-sliced" if plan.init == "sliced" else ""
    for c in plan.criteria:
        for budget in plan.scratch_budgets:
            tag = "" if budget == "scratch-e" else "-b"
            points = [("p", {"prunes": n}) for n in plan.scratch_prunes]
            points += [("params", {"params_budget": n}) for n in plan.scratch_params_budgets]
            points += [("x", {"macs_reduction": r}) for r in plan.scratch_macs_reductions]
            for letter, where in points:
                value = next(iter(where.values()))
                point = f"{letter}{value:g}" if isinstance(value, float) else f"{letter}{value}"
                cap = plan.max_epoch_factor if budget == "scratch-b" else None
                scratch.append(graph.add(f"scratch{tag}-{c}-{point}{suffix}", ScratchJob(
                    prune_run_id=prunes[c], **where, budget=budget, max_epoch_factor=cap,
                    init=plan.init,
                    data=located, run=run,
                    log_model=log_model,
                    run_name=f"scratch{tag}-{_label(plan, c)}-{point}{sliced}{suffix}")))
    finetune_criteria = (plan.criteria if plan.finetune_criteria is None
                         else plan.finetune_criteria)
    for c in finetune_criteria:
        for budget in plan.finetune_budgets:
            tag = FINETUNE_TAGS[budget]
            points = [("p", {"prunes": n}) for n in plan.finetune_prunes]
            points += [("params", {"params_budget": n}) for n in plan.finetune_params_budgets]
            for letter, where in points:
                point = f"{letter}{next(iter(where.values()))}"
                cap = plan.max_epoch_factor if budget == "scratch-b" else None
                graph.add(f"finetune{tag}-{c}-{point}{suffix}", FinetuneJob(
                    prune_run_id=prunes[c], **where, budget=budget, max_epoch_factor=cap,
                    recipe=RecipeChoice(**plan.finetune_recipe), data=located, run=run,
                    log_model=log_model,
                    run_name=f"finetune{tag}-{_label(plan, c)}-{point}{suffix}"))
    reduced = []
    for overrides in (*plan.baselines, *uniform):
        spec = make_spec(**baseline_network(plan.arch, overrides),
                         num_classes=base_spec.num_classes,
                         input_size=plan.data.image_size).rounded(plan.round_to)
        label = baseline_label(overrides)
        reduced.append(train(f"reduced-{label}", spec))
    first = plan.criteria[0]
    if plan.family_budgets:
        base_params = count_params(base_spec)
        budgets = tuple(int(base_params * f) if f <= 1 else int(f)
                        for f in plan.family_budgets)
        graph.add(f"family{suffix}", FamilyJob(
            prune_run_id=prunes[first], prunes=plan.prunes, budgets=budgets,
            # round_to left to the stage: the prune run's, which is the study's (and so the
            # key is the one `mlprunes family` typed by hand makes).
            budget=plan.family_budget, init=plan.init, data=located, run=run,
            log_model=log_model,
            max_epoch_factor=(plan.max_epoch_factor if plan.family_budget == "scratch-b"
                              else None),
            run_name=f"family-{_label(plan, first)}-p{plan.prunes}{sliced}{suffix}"))
    return {"base": base, "pruned": prunes[first], "reduced": reduced}


def uniform_baselines(plan: StudyPlan, base_spec: ArchSpec) -> list[dict[str, Any]]:
    """For each of the plan's `uniform_macs_reductions` R, the base network with every
    prunable width scaled by one factor (`bottle`), found so that its MACs are nearest 1/R of
    the base's: the uniform-width network a leaderboard sets beside each criterion."""
    from mlprunes.counting import count

    size = (plan.data.image_size or 32,) * 2
    target_of = count(base_spec, size).flops
    out = []
    for r in plan.uniform_macs_reductions:
        low, high = 1e-3, 1.0
        for _ in range(30):   # MACs grow with the factor: bisect on it
            mid = (low + high) / 2
            spec = make_spec(**{**plan.arch, "bottle": mid}, num_classes=base_spec.num_classes,
                             input_size=plan.data.image_size).rounded(plan.round_to)
            low, high = (mid, high) if count(spec, size).flops < target_of / r else (low, mid)
        out.append({"bottle": round((low + high) / 2, 4)})
    return out


def baseline_network(network: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A reduced baseline's network: the base's with the overrides; one of another builder
    (`{arch = "torchvision:resnet34"}`) takes none of the base's own options."""
    family = overrides.get("family", network.get("family", "wrn"))
    if family != network.get("family", "wrn"):
        return dict(overrides)
    return {**network, **overrides}


def baseline_label(overrides: dict[str, Any]) -> str:
    """A reduced baseline's name: what it changes (`depth10`, `bottle0.5`, `resnet34`)."""
    parts = []
    for k, v in overrides.items():
        if k == "family":
            parts.append(re.sub(r"[^A-Za-z0-9_]+", "-", str(v).removeprefix("torchvision:")))
        elif isinstance(v, dict):
            parts.append("-".join(f"{a}{b}" for a, b in v.items()))
        else:
            parts.append(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}")
    return "-".join(parts)


def _label(plan: StudyPlan, criterion: str) -> str:
    return criterion_label(criterion, plan.flops_penalty if criterion == "fisher" else 0.0,
                           plan.round_to)


def _evaluations(graph: Graph, plan: StudyPlan, run: RunConfig, refs: dict[str, Any],
                 suffix: str, after: tuple[str, ...]) -> None:
    """The base network's test error and latency; the first criterion's pruned network at the
    size of the first reduced baseline, timed in turn with it (the study's question 4), or its
    final network when there is no baseline."""
    first = plan.criteria[0]
    targets = {"evaluate-base": EvaluateJob(run_id=refs["base"], run=run,
                                            batch_size=plan.evaluate_batch_size)}
    if refs["reduced"]:
        targets[f"evaluate-{first}-vs-reduced"] = EvaluateJob(
            run_id=refs["pruned"], match_run_id=refs["reduced"][0], run=run,
            batch_size=plan.evaluate_batch_size)
    else:
        targets[f"evaluate-prune-{first}"] = EvaluateJob(
            run_id=refs["pruned"], run=run, batch_size=plan.evaluate_batch_size)
    for label, job in targets.items():
        graph.add(label + suffix, job, after=after)


def with_data_dir(plan: StudyPlan, data_dir: str | None, download: bool) -> StudyPlan:
    """A plan reading its data from `data_dir` (and downloading it if asked)."""
    if data_dir is None and not download:
        return plan
    return replace(plan, data=replace(plan.data, data_dir=data_dir or plan.data.data_dir,
                                      download=download or plan.data.download))
