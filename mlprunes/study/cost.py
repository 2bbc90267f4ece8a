"""What a study costs before it runs: each job's training compute, the total in GPU-hours, the
critical path, and the makespan on a number of GPUs.

Compute is counted in MACs: a training step costs about three forward passes (forward, and a
backward pass of twice the work), so a job's compute is 3 x the network's forward MACs per image
x the images it sees. Time follows from a throughput the user gives, in images per second of the
base network, taken to scale inversely with MACs (a network with half the MACs trains twice as
fast: optimistic for small networks on big GPUs, which the numbers then flatter).

Where a job's network is not known before its inputs have run (a pruned architecture, a family
member), it is estimated: after N of the C prunable channels, MACs x (1 - N/C); a family member
at budget P, MACs x P / the base's parameters. Scratch-B is by definition the base's compute.
A prune run fine-tunes at full width while masked and on the cut network once it shrinks
(`pruning_macs`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from mlprunes.arch import ArchSpec
from mlprunes.counting import count, count_params
from mlprunes.jobs import (CompareJob, DataConfig, EvaluateJob, FamilyJob, FinetuneJob, Job,
                           PruneJob, Ref,
                           ScratchJob, TrainJob)
from mlprunes.study.graph import Graph

STEP_COST = 3          # forward + backward, in forward passes
# Training images per dataset where the number is fixed (an image folder is counted).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}
TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000}


@dataclass(frozen=True)
class JobCost:
    node: str
    stage: str
    needs: tuple[str, ...]
    macs: float            # training (or evaluation) compute
    seconds: float         # at the given throughput
    estimated: bool        # the network is a guess until its inputs have run


@dataclass(frozen=True)
class StudyCost:
    jobs: tuple[JobCost, ...]
    images_per_second: float      # of the base network
    base: str

    @property
    def gpu_hours(self) -> float:
        return sum(j.seconds for j in self.jobs) / 3600

    def critical_path(self) -> tuple[float, list[str]]:
        """The longest chain of jobs, each needing the one before: seconds and node names."""
        finish: dict[str, tuple[float, list[str]]] = {}
        for job in self.jobs:  # in graph order: every need comes before
            before = max((finish[n] for n in job.needs), default=(0.0, []),
                         key=lambda f: f[0])
            finish[job.node] = (before[0] + job.seconds, [*before[1], job.node])
        return max(finish.values(), key=lambda f: f[0])

    def makespan(self, gpus: int) -> float:
        """Seconds to run every job on `gpus` GPUs, one job per GPU at a time, longest ready
        job first (list scheduling): what an executor that starts jobs as soon as their inputs
        exist achieves, give or take."""
        if gpus < 1:
            raise ValueError("gpus must be at least 1")
        remaining = {j.node: set(j.needs) for j in self.jobs}
        by_name = {j.node: j for j in self.jobs}
        ready = [(-j.seconds, j.node) for j in self.jobs if not j.needs]
        heapq.heapify(ready)
        running: list[tuple[float, str]] = []          # (finish time, node)
        now, free = 0.0, gpus
        while ready or running:
            while ready and free:
                _, node = heapq.heappop(ready)
                heapq.heappush(running, (now + by_name[node].seconds, node))
                free -= 1
            now, done = heapq.heappop(running)
            free += 1
            for node, needs in remaining.items():
                if done in needs:
                    needs.discard(done)
                    if not needs:
                        heapq.heappush(ready, (-by_name[node].seconds, node))
        return now


def _images(data: DataConfig, test: bool = False) -> int:
    table = TEST_IMAGES if test else TRAIN_IMAGES
    if data.dataset in table:
        n = table[data.dataset]
    elif data.dataset == "shapes":
        n = data.shapes_test if test else data.shapes_train
    else:  # an image folder: its files, 80/20 unless it has train/ and test/
        n = _folder_images(data.data_dir, test)
    return n if test else int(n * (1 - data.val_split))


def _folder_images(root: str, test: bool) -> int:
    from pathlib import Path

    base = Path(root)
    split = base / ("test" if test else "train")
    files = [p for p in (split if split.is_dir() else base).rglob("*") if p.is_file()]
    return len(files) if split.is_dir() else int(len(files) * (0.2 if test else 0.8))


def study_cost(graph: Graph, images_per_second: float, image_size: int = 32) -> StudyCost:
    """The cost of every job of a study graph, at `images_per_second` for its base network."""
    if not images_per_second > 0:
        raise ValueError(f"a throughput must be positive, got {images_per_second}")
    size = (image_size, image_size)
    specs: dict[str, tuple[ArchSpec, float, bool]] = {}   # node -> (spec, MACs, estimated)
    base_name = next(node.name for node in graph if isinstance(node.job, TrainJob))
    base_macs = count(graph[base_name].job.spec, size).flops
    rate = STEP_COST * base_macs * images_per_second   # MACs per second of training
    data = graph[base_name].job.data
    jobs = []
    for node in graph:
        job = node.job
        macs, estimated = _job_macs(job, graph, specs, size, node.name, data)
        jobs.append(JobCost(node.name, job.stage, node.needs, macs, macs / rate, estimated))
    return StudyCost(tuple(jobs), images_per_second, graph[base_name].job.spec.name)


def _source(ref, graph: Graph, specs) -> tuple[ArchSpec, float, bool, Job]:
    name = ref.node if isinstance(ref, Ref) else ref
    spec, macs, estimated = specs[name]
    return spec, macs, estimated, graph[name].job


def _job_macs(job: Job, graph: Graph, specs, size, name: str,
              data: DataConfig) -> tuple[float, bool]:
    if isinstance(job, TrainJob):
        macs = count(job.spec, size).flops
        specs[name] = (job.spec, macs, False)
        return STEP_COST * macs * job.recipe.epochs * _images(job.data), False
    if isinstance(job, PruneJob):
        spec, macs, estimated, base = _source(job.base_run_id, graph, specs)
        specs[name] = (spec, macs, estimated)
        batch = job.recipe.resolve(base.preset, pruning=True).batch_size
        # Once it shrinks, which channels go (and so its cost) depends on the criterion.
        return (STEP_COST * pruning_macs(spec, size, job) * job.prune_every * batch,
                estimated or job.shrink_every > 0)
    if isinstance(job, (ScratchJob, FinetuneJob)):
        spec, macs, _, prune = _source(job.prune_run_id, graph, specs)
        base = graph[prune.base_run_id.node].job
        if job.prunes is not None:
            left = macs * (1 - job.prunes * prune.round_to / spec.prunable_channels)
        elif getattr(job, "macs_reduction", None) is not None:
            left = macs / job.macs_reduction
        else:
            left = macs * job.params_budget / count_params(spec)
        specs[name] = (spec, left, True)
        images = base.recipe.epochs * _images(base.data)
        if isinstance(job, FinetuneJob) and job.budget == "recipe":
            epochs = job.recipe.resolve_finetune(base.recipe).epochs
            return STEP_COST * left * epochs * _images(base.data), True
        if job.budget == "scratch-b":  # the base's training compute, unless capped
            return STEP_COST * _scratch_b(macs, left, job.max_epoch_factor) * images, True
        return STEP_COST * left * images, True
    if isinstance(job, FamilyJob):
        spec, macs, _, prune = _source(job.prune_run_id, graph, specs)
        base = graph[prune.base_run_id.node].job
        images = base.recipe.epochs * _images(base.data)
        params = count_params(spec)
        if job.budget == "scratch-b":  # each member: the base's training compute, unless capped
            return sum(STEP_COST * _scratch_b(macs, macs * b / params, job.max_epoch_factor)
                       * images for b in job.budgets), True
        return sum(STEP_COST * macs * b / params * images for b in job.budgets), True
    if isinstance(job, EvaluateJob):
        _, macs, estimated, _ = _source(job.run_id, graph, specs)
        return 2 * macs * _images(data, test=True), estimated   # masked and compressed
    if isinstance(job, CompareJob):
        return 0.0, False
    raise TypeError(f"no cost model for {job.stage} jobs")


def pruning_macs(spec: ArchSpec, size, job: PruneJob) -> float:
    """MACs per image summed over a prune run's fine-tuning segments (one before each prune and
    one after the last, of `prune_every` steps each): the masked
    network computes at full width, so without shrinking every segment costs the full
    network's MACs; with `shrink_every` K, the segment after q prunes costs the network cut
    after the last multiple of K. Which channels go depends on the criterion, so the estimate
    takes none: every block loses channels in proportion to its width (the blocks' other
    layers, and a WRN's shortcuts, keep their cost)."""
    full = count(spec, size).flops
    every = job.shrink_every
    segments = job.prunes + 1   # fine-tuning before each prune and once after the last
    if every <= 0:
        return float(full) * segments
    total, cut_flops = 0.0, {}
    channels = spec.prunable_channels
    for q in range(segments):
        held = min(channels, (q // every) * every * job.round_to)
        if held not in cut_flops:
            keep = 1 - held / channels
            cut_flops[held] = count(spec.with_mids(max(0 if spec.can_empty_groups else 1,
                                                       round(m * keep)) for m in spec.mids),
                                    size).flops
        total += cut_flops[held]
    return total


def format_hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f} h" if hours >= 1 else f"{seconds / 60:,.1f} min"


def summary(cost: StudyCost, gpus: Sequence[int]) -> dict:
    """The figures `mlprunes plan` prints, as plain data (for --json)."""
    path_seconds, path = cost.critical_path()
    return {
        "base": cost.base, "images_per_second": cost.images_per_second,
        "jobs": [{"node": j.node, "stage": j.stage, "needs": list(j.needs),
                  "tera_macs": j.macs / 1e12, "gpu_hours": j.seconds / 3600,
                  "estimated": j.estimated} for j in cost.jobs],
        "gpu_hours": cost.gpu_hours,
        "critical_path_hours": path_seconds / 3600, "critical_path": path,
        "makespan_hours": {str(g): cost.makespan(g) / 3600 for g in gpus},
    }


def _scratch_b(base_macs: float, macs: float, cap: float | None) -> float:
    """MACs per image-epoch of the base that a Scratch-B network spends: the base's own, or
    fewer when its epoch factor is capped."""
    return base_macs if cap is None else min(base_macs, macs * cap)
