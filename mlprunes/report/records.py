"""The study's runs as plain records, grouped the way a paper would name them.

Built by the compare stage from MLflow runs; nothing here imports MLflow, so the grouping, the
plots and the report are testable on records made by hand.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field

from mlprunes.arch import ArchSpec, GraphSpec, Spec

CRITERION_NAMES = {"fisher": "Fisher", "l1": "L1", "random": "Random", "l2": "L2",
                   "taylor": "Taylor", "hessian": "Hessian", "bn-scale": "BN scale", "fpgm": "FPGM", "lamp": "LAMP"}
FINETUNE_BUDGET_NAMES = {"scratch-e": " (Scratch-E's epochs)", "scratch-b": " (Scratch-B's epochs)"}


@dataclass
class CurvePoint:
    prunes: int
    params: float
    flops: float
    error: float
    epochs: float          # training spent so far: base epochs + fine-tuning epochs
    macs: float | None = None  # the same in multiply-accumulates


@dataclass
class RunRecord:
    run_id: str
    name: str
    stage: str
    criterion: str = ""
    budget: str = ""
    spec: ArchSpec | None = None
    params: float | None = None
    flops: float | None = None
    test_error: float | None = None
    epochs: float | None = None           # training cost of this network, in epochs (a
    #                                       finetune run's counts its base's and pruning's too)
    train_macs: float | None = None       # ... and in multiply-accumulates
    latency_ms: float | None = None       # evaluate runs: compressed network at batch 1
    latency_masked_ms: float | None = None
    latency: dict[str, float] = field(default_factory=dict)  # evaluate: "compressed_b64" -> ms
    matched_run_id: str = ""              # evaluate: the network timed beside this one
    matched_params: float | None = None
    seed: int | None = None
    replicate: str = ""                   # runs that differ only in seed share it
    data: str = ""                        # dataset and image size: what is comparable
    start_time: int = 0                   # of the run, ms: the newest of duplicates wins
    batch_size: int | None = None         # evaluate: the large batch it timed
    init: str = "fresh"                   # scratch and family members: fresh or sliced
    prunes: int | None = None             # scratch and finetune: the prune count taken
    prior_epochs: float | None = None     # finetune: the epochs before it (base + pruning)
    own_epochs: float | None = None       # finetune: its own epochs (what Scratch-E matches)
    device: str = ""                      # evaluate: the device it timed on
    round_to: int = 1                     # prune: channels per prune
    macs_reduction: float | None = None   # scratch: taken at the checkpoint nearest 1/R MACs
    base_run_id: str = ""
    prune_run_id: str = ""
    source_run_id: str = ""
    parent_run_id: str = ""
    curve: list[CurvePoint] = field(default_factory=list)      # validation error
    test_curve: list[CurvePoint] = field(default_factory=list)  # test error at checkpoints
    group: str = ""

    def __post_init__(self) -> None:
        self.replicate = self.replicate or self.run_id


def criterion_name(criterion: str) -> str:
    return CRITERION_NAMES.get(criterion, criterion.capitalize() if criterion else "Pruned")


def assign_groups(records: list[RunRecord]) -> list[RunRecord]:
    """Name each run's group: `Fisher prune + fine-tune`, `Fisher arch. from scratch`,
    `Reduced width`, ... Train runs are named against the base networks, i.e. the networks
    that some prune run started from."""
    by_id = {r.run_id: r for r in records}
    base_ids = {r.base_run_id for r in records if r.stage == "prune" and r.base_run_id}
    bases = sorted({by_id[b].spec for b in base_ids if b in by_id and by_id[b].spec is not None},
                   key=lambda s: (s.family, s.depth or 0, _size(s)))
    for r in records:
        crit = criterion_name(r.criterion)
        if r.stage == "prune":
            r.group = f"{crit} prune + fine-tune"
        elif r.stage == "scratch":
            r.group = f"{crit} arch. from scratch" + (" (Scratch-B)" if r.budget == "scratch-b"
                                                      else "") + _sliced(r)
        elif r.stage == "finetune":
            r.group = f"{crit} pruned, then fine-tuned" + FINETUNE_BUDGET_NAMES.get(r.budget, "")
        elif r.stage == "family-member":
            r.group = f"{crit} family, scaled from one prune" + _sliced(r)
        elif r.stage == "train":
            r.group = _train_group(r, base_ids, bases)
    for r in records:  # evaluations are named after what they measured
        if r.stage == "evaluate":
            source = by_id.get(r.source_run_id)
            r.group = f"Evaluated: {source.group}" if source is not None else "Evaluated"
    return records


def schedule_caveats(records: list[RunRecord]) -> list[str]:
    """Each prune configuration's schedule against the paper's (its fine-tuning over its
    base's training, the share of channels a prune removes), from its first seed's curve."""
    from mlprunes.pruning.loop import schedule_caveat

    by_id = {r.run_id: r for r in records}
    out = []
    for runs in replicate_groups([r for r in records if r.stage == "prune"]):
        run = runs[0]
        base = by_id.get(run.base_run_id)
        if not run.curve or run.spec is None or base is None or not base.epochs:
            continue
        share = (run.curve[-1].epochs - base.epochs) / base.epochs
        per_prune = run.round_to / run.spec.prunable_channels
        name = re.sub(r"-s\d+(?=-|$)", "", run.name)   # what its seeds share
        out.append(f"{run.group} ({name}): {schedule_caveat(share, per_prune)}.")
    return out


def _sliced(record: RunRecord) -> str:
    return " (sliced init)" if record.init == "sliced" else ""


def _params(spec: Spec) -> float:
    from mlprunes.counting import count_params
    try:
        return count_params(spec)
    except ValueError:
        return 0


def _size(spec: Spec) -> float:
    """The family's size knob: WRN width, DenseNet growth; a traced network has none (its
    reductions are a uniform width multiplier on every group, or another depth)."""
    if isinstance(spec, GraphSpec):
        return 0
    return spec.width if spec.family == "wrn" else spec.growth


def _rounded_full(spec: ArchSpec) -> bool:
    """Whether the widths are the family's own, rounded to a multiple (`--round-to`)."""
    step = math.gcd(*spec.mids)
    full = spec.with_mids(spec.full_mids())
    return step > 1 and full.rounded(step).mids == spec.mids


def _train_group(r: RunRecord, base_ids: set[str], bases: list[ArchSpec]) -> str:
    """Name a train run against the smallest base network it is a reduction of."""
    if r.run_id in base_ids:
        return "Full network (pruning base)"
    spec = r.spec
    if spec is None:
        return "Trained from scratch"
    try:
        full = spec.full_mids()
    except ValueError:   # a traced network whose builder is not allowed here: no name for it
        return "Trained from scratch"
    if spec.mids != full and not _rounded_full(spec):
        return "Uniform width" if isinstance(spec, GraphSpec) else "Bottleneck"
    if isinstance(spec, GraphSpec) and any(
            isinstance(b, GraphSpec) and b.builder != spec.builder
            and b.num_classes == spec.num_classes and (r.params or 0) < _params(b) for b in bases):
        return "Smaller network"   # another builder (torchvision:resnet18 for a resnet50)
    candidates = [b for b in bases if b.family == spec.family
                  and b.num_classes == spec.num_classes
                  and (spec.depth or 0) <= (b.depth or 0) and _size(spec) <= _size(b)]
    if not candidates:  # larger than every base, or of another kind: no reduction to name
        return "Trained from scratch"
    base = candidates[0]
    depth_differs, size_differs = spec.depth != base.depth, _size(spec) != _size(base)
    if depth_differs and size_differs:
        return "Reduced depth and width"
    if depth_differs:
        return "Reduced depth"
    if size_differs:
        return "Reduced width" if spec.family == "wrn" else "Reduced growth"
    return "Full network"


def replicate_groups(records: list[RunRecord],
                     configuration=lambda r: r.replicate) -> list[list[RunRecord]]:
    """Runs grouped by configuration (their key without the seed, or what `configuration`
    says of them), one run per seed (the newest: a configuration run twice with one seed is not
    two replicates), each group in seed order and the groups in the order their first run
    came."""
    newest: dict[tuple[str, int | None], RunRecord] = {}
    for r in records:
        key = (configuration(r), r.seed)
        seen = newest.get(key)
        if seen is None or r.start_time > seen.start_time:
            newest[key] = r
    groups: dict[str, list[RunRecord]] = {}
    for (replicate, _), r in newest.items():
        groups.setdefault(replicate, []).append(r)
    return [sorted(g, key=lambda r: (r.seed is None, r.seed or 0)) for g in groups.values()]

