"""The run contract: what a stage's MLflow run is called, tagged and holds, and how later stages
and the pipeline read it. Stages share nothing but this and run IDs.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlprunes.arch import ArchError, ArchSpec, GraphSpec
from mlprunes.counting import count_params
from mlprunes.engine.checkpoint import (CheckpointError, checkpoint_bound, load_checkpoint,
                                        model_from_checkpoint)
from mlprunes.engine.recipes import Recipe
from mlprunes.errors import Claimed, StageError
from mlprunes.jobs import KEY_VERSION, DataConfig, Job
from mlprunes.nets import build
from mlprunes.pruning import spec_after
from mlprunes.stages import digests, kept, liveness, tracking

# -- stages ------------------------------------------------------------------------------------
TRAIN, PRUNE, SCRATCH, FAMILY = "train", "prune", "scratch", "family"
FAMILY_MEMBER, EVALUATE, COMPARE, PIPELINE = "family-member", "evaluate", "compare", "pipeline"
FINETUNE = "finetune"
TRAINED = (TRAIN, SCRATCH, FAMILY_MEMBER)          # runs holding a network trained from scratch
RESUMABLE = (TRAIN, SCRATCH, PRUNE, FINETUNE)       # stages that take --resume-run-id
EVALUABLE = (*TRAINED, PRUNE, FINETUNE)
STUDY_STAGES = (*EVALUABLE, EVALUATE)               # the runs a comparison is made of

# -- tags --------------------------------------------------------------------------------------
TAG_STAGE = "mlprunes.stage"
TAG_CONFIG = "mlprunes.config_key"                  # the job's key: equal keys, reusable runs
TAG_REPLICATE = "mlprunes.replicate_key"            # the key without the seed: replicates share it
TAG_KEY_VERSION = "mlprunes.key_version"
TAG_PRESET = "mlprunes.preset"
TAG_CRITERION = "mlprunes.criterion"
TAG_BASE_RUN = "mlprunes.base_run_id"
TAG_PRUNE_RUN = "mlprunes.prune_run_id"
TAG_SOURCE_RUN = "mlprunes.source_run_id"
TAG_SOURCE_STAGE = "mlprunes.source_stage"
TAG_MATCHED_RUN = "mlprunes.matched_run_id"         # on an evaluate run: the network timed beside
TAG_FAMILY_RUN = "mlprunes.family_run_id"
TAG_FAMILY_MEMBERS = "mlprunes.member_run_ids"
TAG_FINAL_MIDS = "mlprunes.final_mids"       # a prune run's final middle widths
TAG_PIPELINE_STEP = "mlprunes.pipeline_step"
TAG_STUDY_RUNS = "mlprunes.study_run_ids"           # on a pipeline run: the runs it used
TAG_STUDY_PARENT = "mlprunes.study_parent_run_id"   # on a compare run: the pipeline compared
TAG_COMPARE_RUN = "mlprunes.compare_run_id"
TAG_REUSED_RUNS = "mlprunes.reused_runs"
TAG_COMPARED_RUNS = "mlprunes.compared_runs"
TAG_HEARTBEAT = liveness.TAG_HEARTBEAT              # "<time> <host> <pid> <start>" of a live run
TAG_LATENCY_REFUSED = "mlprunes.latency_refused"    # on an evaluate run: why no latency

# -- artifacts ---------------------------------------------------------------------------------
CHECKPOINTS = "checkpoints"
LAST = "checkpoints/last.pt"                        # each epoch, to resume training
FINAL = "checkpoints/final.pt"                      # the trained (or pruned, compressed) network
ARCH = "arch.json"
PRUNE_HISTORY = "prune_history.json"
PRUNING_CURVE = "pruning_curve.csv"
PROFILE_ARCH = "profile_arch.json"
FINAL_ARCH = "final_arch.json"                 # a prune run's network after its last prune
CHECKPOINT_WIDTHS = "checkpoint_widths.json"   # a prune run's widths at each saved checkpoint
FAMILY_TABLE = "family.csv"
PIPELINE_TABLE = "pipeline_runs.csv"
STUDY_FILE = "study.toml"                           # on a pipeline run: the study it ran
_PRUNE_CHECKPOINT = re.compile(r"checkpoints/prunes_(\d+)\.pt$")


def prune_checkpoint(prunes: int) -> str:
    """A prune run's masked checkpoint after `prunes` prunes."""
    return f"{CHECKPOINTS}/prunes_{prunes:05d}.pt"


# -- a stage's run -----------------------------------------------------------------------------

@contextmanager
def stage_run(job: Job, run_name: str, tags: dict[str, str], *,
              parent_run_id: str | None = None, resume_run_id: str | None = None,
              experiment: str | None = None) -> Iterator[Run]:
    """The job's one MLflow run, tagged with its stage and key, with a heartbeat while it is
    open. Inside a study (a parent run) a new run claims its key: if another live or finished
    run has it, this one is withdrawn (deleted) and `Claimed` raised before any work."""
    all_tags = {TAG_STAGE: job.stage, TAG_HEARTBEAT: liveness.beat(), **tags}
    if resume_run_id is None:   # a run made before digests keeps reading as it was
        all_tags[digests.TAG_DIGESTS] = "sha256"
    if job.reusable:
        all_tags.update({TAG_CONFIG: job.key, TAG_KEY_VERSION: str(KEY_VERSION),
                         TAG_REPLICATE: replicate_key(job)})
    run_id = resume_run_id
    kept.check()
    if resume_run_id is not None:
        _take_over(resume_run_id, in_study=parent_run_id is not None)
    try:
        with tracking.open_run(experiment=experiment or job.run.experiment, run_name=run_name,
                               tags=all_tags, parent_run_id=parent_run_id,
                               resume_run_id=resume_run_id) as run:
            run_id = run.info.run_id
            if job.reusable and parent_run_id is not None and resume_run_id is None:
                _claim(job, run)
            with heartbeat(run_id):
                yield run
    except tracking.StoreLost as lost:
        if run_id is None or str(lost).endswith(_AGAIN):  # said by an inner run already
            raise
        if job.stage not in RESUMABLE:  # run again from the start, not resumed
            kept.discard(run_id)
            raise tracking.StoreLost(f"{lost}. Once the store answers, {_AGAIN}") from None
        local = kept.newest(run_id)
        where = (f"its latest checkpoint is kept at {local}" if local is not None
                 else "it saved no checkpoint yet")
        raise tracking.StoreLost(f"{lost}; {where}. Once the store answers, continue with "
                                 f"--resume-run-id {run_id} (a pipeline: {_AGAIN})") from None
    except BaseException:
        if run_id is not None:  # kept only if the store lacks the newest checkpoint
            kept.discard_if_uploaded(run_id)
        raise
    else:
        kept.discard(run_id)


_AGAIN = "run the same command again"


def replicate_key(job: Job) -> str:
    """The job's key without its seed, its input runs standing for their own replicate keys
    (an input made before these tags existed stands for itself)."""
    client = MlflowClient()
    inputs = {}
    for name, run_id in job.inputs().items():
        if isinstance(run_id, str):
            inputs[name] = client.get_run(run_id).data.tags.get(TAG_REPLICATE, run_id)
    return job.replicate_key(inputs)


# -- liveness (stages/liveness.py) -----------------------------------------------------------

heartbeat_seconds, alive, heartbeat = liveness.heartbeat_seconds, liveness.alive, liveness.heartbeat
fence = liveness.fence


def _claim(job: Job, run: Run) -> None:
    """The earliest live or finished run with the key keeps the job; a later one withdraws."""
    mine = run.info.run_id
    others = [r for r in runs_with_key(run.info.experiment_id, job.key)
              if r.info.run_id != mine and (r.info.status == "FINISHED" or alive(r))]
    if not others:
        return
    contenders = sorted([*others, run], key=lambda r: (r.info.status != "FINISHED",
                                                       r.info.start_time, r.info.run_id))
    winner = contenders[0].info.run_id
    if winner != mine:
        mlflow.end_run("KILLED")
        MlflowClient().delete_run(mine)
        raise Claimed(winner)


def get_run(run_id: str, *, stage: str | tuple[str, ...] | None = None,
            finished: bool = True) -> Run:
    """The run with this ID, checked to be of the expected stage and finished."""
    run = tracking.fetch_run(run_id)
    if run.info.lifecycle_stage == "deleted":  # in the trash: not an input, nor resumable
        raise StageError(f"no run with ID {run_id!r} in the tracking store at "
                         f"{mlflow.get_tracking_uri()} (it was deleted)")
    stages = (stage,) if isinstance(stage, str) else stage
    actual = run.data.tags.get(TAG_STAGE)
    if stages is not None and actual not in stages:
        wanted = " or ".join(f"'{s}'" for s in stages)
        raise StageError(f"run {run_id} is a {actual!r} run, not a {wanted} run"
                         if actual else f"run {run_id} is not an mlprunes run (no "
                         f"{TAG_STAGE} tag); expected a {wanted} run")
    if finished and run.info.status != "FINISHED":
        raise StageError(f"run {run_id} ({actual}) has status {run.info.status}, not FINISHED; "
                         f"finish or re-run it first")
    return run


def runs_with_key(experiment_id: str, key: str) -> list[Run]:
    """Runs tagged with this job key, newest first."""
    return tracking.runs_tagged(experiment_id, TAG_CONFIG, key)


def check_resumable(run_id: str, job: Job, parent_run_id: str | None = None) -> None:
    """Only an unfinished run of the job's stage, started with the same key, is resumed."""
    # A stage's own entry point under `mlflow run` already has a run to attach to; inside the
    # pipeline (a run is active) a step may reopen an interrupted child.
    if os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        raise StageError("--resume-run-id cannot be used under `mlflow run`, which starts a "
                         "run of its own; call `mlprunes` directly to resume")
    run = get_run(run_id, stage=job.stage, finished=False)
    if run.info.status == "FINISHED":
        raise StageError(f"run {run_id} has already finished; there is nothing to resume")
    if run.data.tags.get(TAG_CONFIG) != job.key:
        raise StageError(f"run {run_id} was started with other settings; resume it with the "
                         f"options it ran with (its params show them)")
    _refuse_if_alive(run, in_study=parent_run_id is not None)


def _refuse_if_alive(run: Run, in_study: bool) -> None:
    where = alive(run)
    if where is None:
        return
    if in_study:  # a pipeline's step: wait for that process instead
        raise Claimed(run.info.run_id)
    raise StageError(f"run {run.info.run_id} is running on {where}; wait for it or stop that "
                     f"process (a run whose heartbeat is {3 * heartbeat_seconds():.0f} s old "
                     f"is taken over)")


def _take_over(run_id: str, in_study: bool) -> None:
    liveness.take_over(run_id, lambda run: _refuse_if_alive(run, in_study))


def can_resume(run_id: str, stage: str) -> bool:
    """Whether an interrupted run of this stage saved what it needs to continue."""
    if stage not in RESUMABLE:
        return False
    if kept.newest(run_id) is not None:  # kept on this machine, perhaps never uploaded
        return True
    if stage == PRUNE:
        return bool(saved_prune_counts(run_id))
    return LAST in tracking.list_artifacts(run_id, CHECKPOINTS)


# -- reading what a finished run holds ---------------------------------------------------------

def data_of(run: Run) -> DataConfig:
    """The data a run was made with, so that later stages see the same."""
    return DataConfig.from_params(run.data.params)


def recipe_of(run: Run) -> Recipe:
    """The training recipe a run logged."""
    try:
        return Recipe.from_params(run.data.params)
    except (KeyError, ValueError) as err:
        raise StageError(f"cannot read the training recipe from run {run.info.run_id}'s params "
                         f"({err})") from None


def preset_of(run: Run) -> str:
    """The recipe preset a run trained with (later stages default to its fine-tuning twin)."""
    return run.data.tags.get(TAG_PRESET) or run.data.params.get("arch", "wrn")


def saved_prune_counts(run_id: str) -> list[int]:
    """The prune counts at which a prune run saved a masked checkpoint."""
    found = (_PRUNE_CHECKPOINT.search(p) for p in tracking.list_artifacts(run_id, CHECKPOINTS))
    return sorted(int(m.group(1)) for m in found if m)


def resume_checkpoint(run_id: str, artifact: str | None, tmp: Path, map_location: Any,
                      progress: Callable[[dict[str, Any]], int]) -> dict[str, Any] | None:
    """The checkpoint to continue an interrupted run from: its `artifact` in the store or the
    copy this machine kept (`kept.py`), whichever got further; None if it saved none. The
    kept copy is the newer one when the store was lost before it could take the upload."""
    candidates = []
    if artifact is not None:
        candidates.append(load_run_checkpoint(run_id, artifact, tmp, map_location))
    local = kept.newest(run_id)
    if local is not None:
        try:
            checkpoint = load_checkpoint(local, map_location=map_location)
        except CheckpointError as err:
            raise StageError(f"run {run_id}'s checkpoint kept on this machine: {err}; delete "
                             f"it to resume from the store's") from None
        checkpoint["kept_at"] = str(local)
        candidates.append(checkpoint)
    if not candidates:
        return None
    chosen = max(candidates, key=progress)
    if "kept_at" in chosen and kept.pending(run_id):  # the store gets what it missed
        digests.log_file(Path(chosen["kept_at"]), CHECKPOINTS)
        kept.uploaded(Path(chosen["kept_at"]))
    return chosen


def load_run_checkpoint(run_id: str, artifact: str, tmp: Path,
                        map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint artifact of a run, read safely (no larger than the run's network allows);
    errors name the run and the artifact."""
    path = tracking.download_artifact(run_id, artifact, tmp)
    try:
        checkpoint = load_checkpoint(path, map_location=map_location,
                                     max_bytes=_checkpoint_bound(run_id))
    except CheckpointError as err:
        raise StageError(f"run {run_id}'s {artifact}: {str(err).replace(str(path), 'file')}"
                         ) from None
    named = _PRUNE_CHECKPOINT.search(artifact)
    if named is not None:   # a prune checkpoint holds the prune count its name says
        held = checkpoint.get("meta", {}).get("prunes")
        if held != int(named.group(1)):
            raise StageError(f"run {run_id}'s {artifact} holds the network after {held} prunes, "
                             f"not {int(named.group(1))}; the artifact was replaced")
    return checkpoint


def _checkpoint_bound(run_id: str) -> int | None:
    logged = tracking.fetch_run(run_id).data.params.get("arch_spec")
    try:
        return checkpoint_bound(count_params(ArchSpec.from_json(logged))) if logged else None
    except (ArchError, ValueError, TypeError):
        return None   # refused with its reason where the architecture is checked


def check_logged_arch(run: Run, spec: ArchSpec, artifact: str) -> None:
    """A checkpoint must hold the network its run says it made (`arch_spec`): an artifact
    replaced by another network's is refused, not silently used."""
    logged = run.data.params.get("arch_spec")
    if not logged:
        return
    try:
        expected = ArchSpec.from_json(logged)
    except (ArchError, ValueError, TypeError):
        raise StageError(f"run {run.info.run_id}'s arch_spec param is not a valid architecture"
                         ) from None
    if expected != spec:
        raise StageError(f"run {run.info.run_id}'s {artifact} holds {spec.name} with middle "
                         f"widths {list(spec.mids)}, but the run made {expected.name} with "
                         f"{list(expected.mids)}; the artifact was replaced")


def arch_params(spec: ArchSpec) -> dict[str, Any]:
    """The architecture as options (`arch` is the family, as on the command line) and as the
    full description (`arch_spec`, JSON)."""
    options = {"arch": spec.family, "depth": spec.depth, "num_classes": spec.num_classes}
    if isinstance(spec, GraphSpec):
        options.update(depth=spec.depth if spec.depth is not None else "",
                       arch_args=spec.args_json, groups=spec.groups)
    elif spec.family == "wrn":
        options["width"] = spec.width
    else:
        options.update(growth=spec.growth, reduction=spec.reduction)
    return {**options, "arch_spec": spec.to_json()}


@dataclass
class PrunedSource:
    """What a finished prune run offers: its starting network, history and base run. The
    history lists channels; a prune removed `round_to` of them."""
    prune_run: Run
    base_run: Run
    spec: ArchSpec
    history: list[int]

    @property
    def run_id(self) -> str:
        return self.prune_run.info.run_id

    @property
    def criterion(self) -> str:
        """The pruning method's label (`criterion_label`), as run names use it."""
        data = self.prune_run.data
        return data.tags.get(TAG_CRITERION) or data.params.get("criterion", "pruned")

    @property
    def round_to(self) -> int:
        return int(self.prune_run.data.params.get("round_to", 1))

    @property
    def prunes_done(self) -> int:
        return len(self.history) // self.round_to

    def spec_at(self, prunes: int) -> ArchSpec:
        if not 0 <= prunes <= self.prunes_done:
            raise StageError(
                f"--prunes {prunes} is beyond what prune run {self.run_id} saved: its history "
                f"has {self.prunes_done} prunes")
        return spec_after(self.spec, self.history[:prunes * self.round_to])

    def prunes_for_budget(self, params_budget: int, among: list[int] | None = None) -> int:
        """The fewest prunes at which the network has at most `params_budget` parameters
        (of the prune counts `among`, e.g. those with a saved checkpoint; any by default)."""
        counts = range(self.prunes_done + 1) if among is None else sorted(among)
        for n in counts:
            if count_params(self.spec_at(n)) <= params_budget:
                return n
        last = self.prunes_done if among is None else max(among, default=0)
        smallest = count_params(self.spec_at(last))
        where = "prune run" if among is None else "the checkpoints saved by prune run"
        raise StageError(
            f"--params-budget {params_budget:,} is below the smallest network {where} "
            f"{self.run_id} reached ({smallest:,} params after {last} prunes)")

    def prunes_nearest_macs(self, reduction: float, among: list[int], image_size) -> int:
        """Of the prune counts `among` (those with a saved checkpoint), the one whose network's
        MACs are nearest the starting network's over `reduction`, in ratio."""
        from mlprunes.counting import count

        target = count(self.spec, image_size).flops / reduction
        if not among:
            raise StageError(f"prune run {self.run_id} saved no checkpoint")
        return min(sorted(among), key=lambda n: abs(math.log(
            max(1.0, count(self.spec_at(n), image_size).flops) / target)))

    def lineage_tags(self) -> dict[str, str]:
        return {TAG_PRUNE_RUN: self.run_id, TAG_BASE_RUN: self.base_run.info.run_id,
                TAG_CRITERION: self.prune_run.data.tags.get(
                    TAG_CRITERION, self.prune_run.data.params.get("criterion", ""))}


_sources: dict[tuple[str, str], PrunedSource] = {}


def load_pruned_source(prune_run_id: str) -> PrunedSource:
    """A finished prune run's source, read once per process (a finished run never changes)."""
    cache_key = (mlflow.get_tracking_uri(), prune_run_id)
    if cache_key not in _sources:
        _sources[cache_key] = _read_pruned_source(prune_run_id)
    return _sources[cache_key]


def _read_pruned_source(prune_run_id: str) -> PrunedSource:
    run = get_run(prune_run_id, stage=PRUNE)
    base = get_run(run.data.tags.get(TAG_BASE_RUN, ""), stage=TRAIN, finished=False)
    with tracking.scratch_dir("source") as tmp:
        history_text = tracking.download_artifact(prune_run_id, PRUNE_HISTORY, tmp).read_text()
        arch_text = tracking.download_artifact(prune_run_id, ARCH, tmp).read_text()
        widths_text = (tracking.download_artifact(prune_run_id, CHECKPOINT_WIDTHS, tmp)
                       .read_text() if CHECKPOINT_WIDTHS in tracking.list_artifacts(prune_run_id)
                       else None)
    try:
        spec = ArchSpec.from_json(arch_text)
        history = json.loads(history_text)
        widths = None if widths_text is None else json.loads(widths_text)
    except (ValueError, TypeError, ArchError) as err:
        raise StageError(f"prune run {prune_run_id}'s {PRUNE_HISTORY} or {ARCH} is not valid "
                         f"({err})") from None
    check_logged_arch(run, spec, ARCH)
    round_to = int(run.data.params.get("round_to", 1))
    problem = _history_problem(history, spec, round_to)
    if problem is None:
        problem = _against_run(run, spec, history, round_to, widths)
    if problem is not None:
        raise StageError(f"prune run {prune_run_id}'s {PRUNE_HISTORY}: {problem}")
    return PrunedSource(run, base, spec, history)


def _history_problem(history: Any, spec: ArchSpec, round_to: int) -> str | None:
    """What is wrong with a prune history, read strictly: distinct channel indices of the
    network, as integers (not strings, booleans or floats), whole prunes of `round_to`."""
    if not isinstance(history, list):
        return f"must be a list of channel indices, got {type(history).__name__}"
    bad = next((c for c in history if type(c) is not int
                or not 0 <= c < spec.prunable_channels), None)
    if bad is not None or any(type(c) is not int for c in history):
        return (f"holds {bad!r}, not a channel index of {spec.name} (integers from 0 to "
                f"{spec.prunable_channels - 1})")
    if len(set(history)) != len(history):
        return "names a channel more than once"
    if len(history) % round_to:
        return f"has {len(history)} channels, not whole prunes of {round_to}"
    return None


def _against_run(run: Run, spec: ArchSpec, history: list[int], round_to: int,
                 widths: Any) -> str | None:
    """Where a history disagrees with what its run recorded beside it: the final widths (tag
    and param) and the widths at each saved checkpoint."""
    final = list(spec_after(spec, history).mids)
    recorded = run.data.tags.get(TAG_FINAL_MIDS) or run.data.params.get("final_mids")
    if recorded is not None:
        try:
            said = json.loads(recorded)
        except ValueError:
            return f"the run's final_mids ({recorded!r}) is not a list of widths"
        if said != final:
            return (f"it ends at middle widths {final}, but the run recorded final_mids "
                    f"{said}")
    if widths is None:
        return None
    if not isinstance(widths, dict):
        return f"its {CHECKPOINT_WIDTHS} is not a table of widths by prune count"
    for prunes, mids in widths.items():
        if not prunes.isdigit() or int(prunes) * round_to > len(history):
            return f"its {CHECKPOINT_WIDTHS} names a checkpoint at {prunes!r} prunes it never made"
        expected = list(spec_after(spec, history[:int(prunes) * round_to]).mids)
        if mids != expected:
            return (f"after {prunes} prunes it gives middle widths {expected}, but "
                    f"{CHECKPOINT_WIDTHS} recorded {mids}")
    return None


# -- a run's network, as evaluate and export read it ------------------------------------------

def source_checkpoint(run_id: str, stage: str, prunes: int | None,
                      near_params: float | None = None) -> str:
    """The artifact to evaluate: a trained run's final network, or a prune run's masked
    checkpoint at `prunes` (by default its last, or the one whose parameter count is nearest
    `near_params` on a log scale)."""
    if stage != PRUNE:
        if prunes is not None:
            raise StageError("--prunes applies to prune runs only")
        tracking.require_artifact(run_id, FINAL)
        return FINAL
    counts = saved_prune_counts(run_id)
    if not counts:
        raise StageError(f"prune run {run_id} saved no masked checkpoint")
    if prunes is None and near_params is not None:
        prunes = nearest_in_size(counts, tracking.metric_steps(run_id, "params"), near_params)
    if prunes is None:
        prunes = counts[-1]
    if prunes not in counts:
        raise StageError(f"prune run {run_id} saved no checkpoint at {prunes} prunes; it has "
                         f"{', '.join(map(str, counts))}")
    return prune_checkpoint(prunes)


def nearest_in_size(counts: list[int], params_at: dict[int, float], params: float) -> int:
    """Of the saved prune counts, the one whose network is nearest `params` in ratio (the
    last when no count has its size logged)."""
    sized = [c for c in counts if params_at.get(c, 0) > 0]
    if not sized or params <= 0:
        return counts[-1]
    return min(sized, key=lambda c: abs(math.log(params_at[c] / params)))


def load_network(run_id: str, artifact: str, source, device, tmp):
    """The masked network of a run's checkpoint (a trained network with every mask on: what
    pruning would start from)."""
    checkpoint = load_run_checkpoint(run_id, artifact, tmp)
    stage = source.data.tags.get(TAG_STAGE)
    if artifact != FINAL or stage != PRUNE:  # a prune run's final is compressed
        check_logged_arch(source, checkpoint["spec"], artifact)
    try:
        model = model_from_checkpoint(checkpoint)
    except CheckpointError as err:
        raise StageError(f"run {run_id}'s {artifact}: {err}") from None
    if checkpoint["masked"]:
        masked = model
    else:
        masked = build(model.spec, masked=True, init="sliced")   # its weights are loaded next
        masked.load_state_dict(model.state_dict(), strict=False)
    return masked.to(device).eval()
