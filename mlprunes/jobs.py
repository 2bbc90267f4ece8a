"""Jobs: what each stage computes, as small frozen dataclasses with one key each. No MLflow.

A job holds what determines its result (the network, recipe and data for `train`; the base run,
criterion and schedule for `prune`; ...) plus how and where to run it (device, run name), which
its fields mark as not part of the key. `job.key` is a digest of the rest, computed one way for
every stage: equal keys, interchangeable runs, so a study reuses a finished run with the key it
needs and resumes an interrupted one. Input runs are run IDs, or `Ref`s to other jobs of a study
graph that the executor replaces by run IDs once those jobs have run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar

from mlprunes.arch import ArchSpec
from mlprunes.engine.recipes import FINETUNE_PRESET_NAMES, Recipe, finetune_preset, preset
from mlprunes.errors import StageError
from mlprunes.pruning.loop import SHRINK_EVERY, PruneSchedule
from mlprunes.pruning.saliency import CRITERIA as SALIENCY_CRITERIA

# Part of every key: bumped when what a key means changes, so that runs made by an older
# mlprunes are never taken for runs of the new one (they are re-run, not half-reused).
KEY_VERSION = 4

BUDGETS = ("scratch-e", "scratch-b")
# A fine-tune run's epochs: its recipe's, or those of the Scratch-E / Scratch-B run of the same
# architecture, so that question 2 compares networks trained for equal epochs.
FINETUNE_BUDGETS = ("recipe", *BUDGETS)
# How fine-tune runs are named by budget: finetune-e-fisher-p170 has Scratch-E's epochs.
FINETUNE_TAGS = {"recipe": "", "scratch-e": "-e", "scratch-b": "-b"}
BUDGET_NAMES = {"scratch-e": "Scratch-E", "scratch-b": "Scratch-B"}
DEFAULT_EXPERIMENT = "mlprunes"
CRITERIA = tuple(SALIENCY_CRITERIA)       # the pruning criteria a job may name


@dataclass(frozen=True)
class Ref:
    """An input run that another job of a study graph will make: the node's name."""
    node: str

    def __str__(self) -> str:
        return f"<{self.node}>"


RunRef = str | Ref


def setting(default: Any = None) -> Any:
    """A field that says how or where to run, not what: left out of the key."""
    return field(default=default, metadata={"key": False})


def _input(default: Any = None) -> Any:
    """A field naming an input run (a run ID or a Ref): the study graph's edges."""
    return field(default=default, metadata={"input": True})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str = setting("data")   # where the data lives is not part of the result
    download: bool = setting(False)
    val_split: float = 0.0
    image_size: int | None = None
    shapes_train: int = 5000
    shapes_test: int = 1000
    data_seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "DataConfig":
        """The data settings a finished run logged, so that later stages see the same data."""
        kwargs: dict[str, Any] = {}
        for name, parse in _DATA_PARAMS.items():
            if params.get(name, "") != "":
                try:
                    kwargs[name] = parse(params[name])
                except ValueError:
                    raise StageError(f"the run's param {name}={params[name]!r} is not a valid "
                                     f"value") from None
        return cls(**kwargs)


_DATA_PARAMS = {"dataset": str, "data_dir": str, "download": lambda v: v == "true",
                "val_split": float, "image_size": int, "shapes_train": int,
                "shapes_test": int, "data_seed": int}


@dataclass(frozen=True)
class DataChoice:
    """Data options that override an input run's (None: as that run had them)."""
    dataset: str | None = None
    data_dir: str | None = setting(None)
    download: bool | None = setting(None)
    val_split: float | None = None
    image_size: int | None = None
    shapes_train: int | None = None
    shapes_test: int | None = None
    data_seed: int | None = None

    def over(self, base: DataConfig) -> DataConfig:
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                                if getattr(self, f.name) is not None})


@dataclass(frozen=True)
class RecipeChoice:
    """A recipe preset (None: the input's) and overrides of its values (None: the preset's)."""
    preset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    milestones: tuple[float, ...] | None = None
    gamma: float | None = None
    pad: str | None = None
    bn_l1: float | None = None

    def key_settings(self) -> dict[str, Any]:
        """Every field, `bn_l1` only when given: jobs made before it existed keep their keys."""
        data = {f.name: key_settings(getattr(self, f.name)) for f in fields(self)}
        if self.bn_l1 is None:
            data.pop("bn_l1")
        return data

    def resolve(self, default_preset: str, pruning: bool = False) -> Recipe:
        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preset"}
        try:
            return preset(self.preset or default_preset, pruning=pruning).override(**overrides)
        except ValueError as err:
            raise StageError(str(err)) from None

    def resolve_finetune(self, base: Recipe) -> Recipe:
        """The fine-tuning recipe: a fine-tuning preset (`liu` unless told; `base`: the base
        run's recipe `base` at a tenth of its learning rate) with these overrides."""
        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preset"}
        try:
            return finetune_preset(self.preset or "liu", base).override(**overrides)
        except ValueError as err:
            raise StageError(str(err)) from None


@dataclass(frozen=True)
class RunConfig:
    """How and where to run (device, speed options, progress, experiment) and the seed."""
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    progress: bool = True
    experiment: str = DEFAULT_EXPERIMENT

    def __post_init__(self) -> None:
        from mlprunes.engine.trainer import resolve_device

        if not self.experiment.strip():
            raise StageError("--experiment must name an experiment, got an empty name")
        try:
            resolve_device(self.device)
        except ValueError as err:
            raise StageError(f"--device: {err}") from None

    def key_settings(self) -> dict[str, Any]:
        """Of how a job runs, what changes its result: the seed, and the precision as it takes
        effect (`auto` is bf16 on a GPU and fp32 on a CPU, two different results)."""
        from mlprunes.engine.trainer import autocast_dtype, resolve_device

        device = resolve_device(self.device)
        bf16 = autocast_dtype(self.precision, device) is not None
        return {"seed": self.seed, "precision": "bf16" if bf16 else "fp32"}


def key_settings(value: Any) -> Any:
    """The part of a value that goes into a key: dataclasses field by field, leaving out the
    fields marked `setting()`; objects with their own `key_settings`."""
    if isinstance(value, Ref):
        raise ValueError(f"a job with an unresolved input ({value}) has no key yet")
    if hasattr(value, "key_settings"):
        return value.key_settings()
    if is_dataclass(value):
        return {f.name: key_settings(getattr(value, f.name)) for f in fields(value)
                if f.metadata.get("key", True)}
    if isinstance(value, (list, tuple)):
        return [key_settings(v) for v in value]
    return value


class Job:
    """What all jobs share: a stage name, a key, and input runs."""
    stage: ClassVar[str]
    reusable: ClassVar[bool] = True   # may a finished run with the same key stand in for it?
    # Fields added after runs were made with this stage: in the key only when set, so that
    # those runs keep their keys.
    keyed_when_set: ClassVar[tuple[str, ...]] = ()

    def key_settings(self) -> dict[str, Any]:
        """The fields that make the key (not those marked `setting()`, nor a later field left
        unset)."""
        out = {f.name: key_settings(getattr(self, f.name)) for f in fields(self)
               if f.metadata.get("key", True)}
        for name in self.keyed_when_set:
            if getattr(self, name) is None:
                out.pop(name)
        return out

    @property
    def key(self) -> str:
        text = json.dumps({"stage": self.stage, "key_version": KEY_VERSION, **key_settings(self),
                           **self.key_extra()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def key_extra(self) -> dict[str, Any]:
        """What else changes this stage's result (evaluate: the device it measures on)."""
        return {}

    def replicate_key(self, input_keys: dict[str, str]) -> str:
        """The key of this job's configuration whatever its seed: runs that differ only in
        their seed, or in inputs that differ only in theirs, are replicates and share it.
        `input_keys` gives each input field's run's replicate key."""
        settings = key_settings(self)
        settings["run"].pop("seed")
        settings.update(input_keys)
        text = json.dumps({"stage": self.stage, "key_version": KEY_VERSION, **settings,
                           **self.key_extra()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def inputs(self) -> dict[str, RunRef]:
        """The input runs, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("input") and getattr(self, f.name) is not None}

    def refs(self) -> list[Ref]:
        """The study-graph jobs this one needs."""
        found = []
        for value in self.inputs().values():
            found += [v for v in (value if isinstance(value, tuple) else (value,))
                      if isinstance(v, Ref)]
        return found

    def resolved(self, run_ids: dict[str, str]) -> "Job":
        """This job with each Ref replaced by the run ID of the node it names."""
        def sub(value):
            if isinstance(value, Ref):
                return run_ids[value.node]
            if isinstance(value, tuple):
                return tuple(sub(v) for v in value)
            return value
        return replace(self, **{name: sub(value) for name, value in self.inputs().items()})


def _at_least(job: Job, names: tuple[str, ...], low: int) -> None:
    for name in names:
        value = getattr(job, name)
        if value is not None and value < low:
            raise StageError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


@dataclass(frozen=True)
class TrainJob(Job):
    """A network trained from a fresh init (the base network, or a reduced baseline)."""
    stage: ClassVar[str] = "train"
    spec: ArchSpec
    recipe: Recipe
    data: DataConfig = DataConfig()
    preset: str = "wrn"                       # the recipe preset; pruning inherits it
    run: RunConfig = RunConfig()
    run_name: str | None = setting()
    checkpoint_every: int = setting(1)        # epochs between resumable checkpoints
    log_model: bool = setting(True)

    def __post_init__(self) -> None:
        _at_least(self, ("checkpoint_every",), 1)
        if self.recipe.epochs < 1:
            raise StageError(f"--epochs must be at least 1 to train a network, got "
                             f"{self.recipe.epochs}")


@dataclass(frozen=True)
class PruneJob(Job):
    """A trained network fine-tuned and pruned one channel (or round_to) at a time."""
    stage: ClassVar[str] = "prune"
    base_run_id: RunRef = _input()
    criterion: str = "fisher"
    prunes: int = 0
    prune_every: int = 100
    save_every: int = 100
    val_every: int = 10
    keep_one: bool = False
    round_to: int = 1                         # channels per prune, all from one block
    flops_penalty: float = 0.0                # Theis et al.'s beta, nats per GFLOP (fisher)
    # Prunes between cuts of the network being fine-tuned to its surviving channels (0: only
    # masked). A setting, as --compile is: the same computation, only its float sums' order
    # differs, so runs made either way stand in for each other.
    shrink_every: int = setting(SHRINK_EVERY)
    recipe: RecipeChoice = RecipeChoice()     # over the fine-tuning preset of the base's family
    data: DataChoice = DataChoice()           # over the base run's data
    run: RunConfig = RunConfig()
    run_name: str | None = setting()
    log_model: bool = setting(True)

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise StageError(f"--criterion must be one of {', '.join(CRITERIA)}, got "
                             f"{self.criterion!r}")
        _at_least(self, ("round_to",), 1)
        if not (math.isfinite(self.flops_penalty) and self.flops_penalty >= 0):
            raise StageError(f"--flops-penalty must be a finite number >= 0, got "
                             f"{self.flops_penalty}")
        if self.flops_penalty > 0 and self.criterion != "fisher":
            raise StageError(f"--flops-penalty weighs Fisher's estimated loss increase against "
                             f"the FLOPs a prune saves; {self.criterion} estimates no loss "
                             f"increase (use --criterion fisher)")
        self.schedule  # noqa: B018 (validates)

    def key_extra(self) -> dict[str, Any]:
        # l1-mean once counted a traced layer's pruned inputs in its filters' means; its runs
        # from before are not reused for the criterion it is now.
        return {"l1_mean": "live-inputs"} if self.criterion == "l1-mean" else {}

    @property
    def schedule(self) -> PruneSchedule:
        try:
            return PruneSchedule(self.prunes, self.prune_every, self.val_every, self.save_every,
                                 self.shrink_every)
        except ValueError as err:
            raise StageError(f"--{err}") from None


@dataclass(frozen=True)
class ScratchJob(Job):
    """The architecture a prune run reached, trained from a fresh init."""
    stage: ClassVar[str] = "scratch"
    prune_run_id: RunRef = _input()
    prunes: int | None = None                 # the architecture after this many prunes,
    params_budget: int | None = None          # or the first with at most this many params,
    macs_reduction: float | None = None       # or at the saved checkpoint nearest 1/R MACs
    budget: str = "scratch-e"
    max_epoch_factor: float | None = None     # Scratch-B: cap on epochs / base epochs
    init: str = "fresh"                       # fresh | sliced (from a full-network init)
    data: DataChoice = DataChoice()           # over the prune run's data
    run: RunConfig = RunConfig()
    run_name: str | None = setting()
    log_model: bool = setting(True)
    keyed_when_set: ClassVar[tuple[str, ...]] = ("macs_reduction",)

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.prunes, self.params_budget,
                                       self.macs_reduction)) != 1:
            raise StageError("give exactly one of --prunes, --params-budget and "
                             "--macs-reduction")
        if self.macs_reduction is not None and not (math.isfinite(self.macs_reduction)
                                                    and self.macs_reduction > 1):
            raise StageError(f"--macs-reduction is how many times fewer MACs, more than 1, got "
                             f"{self.macs_reduction}")
        _check_budget(self.budget, self.max_epoch_factor)
        _check_init(self.init)
        _at_least(self, ("prunes", "params_budget"), 0)


@dataclass(frozen=True)
class FinetuneJob(Job):
    """A prune run's network at one checkpoint, compressed, fine-tuned on from its weights:
    the field's third step (train, prune, fine-tune)."""
    stage: ClassVar[str] = "finetune"
    prune_run_id: RunRef = _input()
    prunes: int | None = None                 # the checkpoint after this many prunes,
    params_budget: int | None = None          # or the first saved one this small
    budget: str = "recipe"                    # recipe | scratch-e | scratch-b: the epochs
    max_epoch_factor: float | None = None     # scratch-b: cap on epochs / base epochs
    recipe: RecipeChoice = RecipeChoice()     # over a fine-tuning preset [liu]
    data: DataChoice = DataChoice()           # over the prune run's data
    run: RunConfig = RunConfig()
    run_name: str | None = setting()
    checkpoint_every: int = setting(1)        # epochs between resumable checkpoints
    log_model: bool = setting(True)

    def __post_init__(self) -> None:
        if (self.prunes is None) == (self.params_budget is None):
            raise StageError("give exactly one of --prunes and --params-budget")
        _at_least(self, ("prunes", "params_budget"), 0)
        _at_least(self, ("checkpoint_every",), 1)
        if self.budget not in FINETUNE_BUDGETS:
            raise StageError(f"--budget must be one of {', '.join(FINETUNE_BUDGETS)}, got "
                             f"{self.budget!r}")
        if self.budget != "recipe" and self.recipe.epochs is not None:
            raise StageError(f"--budget {self.budget} sets the epochs (those of the "
                             f"{BUDGET_NAMES[self.budget]} run of this architecture); drop "
                             f"--epochs, or use --budget recipe")
        if self.max_epoch_factor is not None:
            if self.budget != "scratch-b":
                raise StageError("--max-epoch-factor applies to --budget scratch-b")
            _check_budget(self.budget, self.max_epoch_factor)
        if self.recipe.preset is not None and self.recipe.preset not in FINETUNE_PRESET_NAMES:
            raise StageError(f"--preset must be one of {', '.join(FINETUNE_PRESET_NAMES)} "
                             f"(fine-tuning presets), got {self.recipe.preset!r}")
        # The default preset, named: `--preset liu` and no --preset are one job, one key.
        object.__setattr__(self, "recipe", replace(self.recipe,
                                                   preset=self.recipe.preset or "liu"))
        if self.recipe.epochs is not None and self.recipe.epochs < 1:
            raise StageError(f"--epochs must be at least 1 to fine-tune, got "
                             f"{self.recipe.epochs}")


@dataclass(frozen=True)
class FamilyJob(Job):
    """One pruned width profile scaled to several parameter budgets, each trained anew."""
    stage: ClassVar[str] = "family"
    prune_run_id: RunRef = _input()
    prunes: int = 0
    budgets: tuple[int, ...] = ()
    budget: str = "scratch-e"
    max_epoch_factor: float | None = None     # Scratch-B: cap on epochs / base epochs
    init: str = "fresh"                       # fresh | sliced (from a full-network init)
    round_to: int | None = None               # members' widths: multiples of this [the
    #                                           prune run's --round-to]
    data: DataChoice = DataChoice()           # over the prune run's data
    run: RunConfig = RunConfig()
    run_name: str | None = setting()
    log_model: bool = setting(True)

    def __post_init__(self) -> None:
        _check_init(self.init)
        if not self.budgets:
            raise StageError("--budgets needs at least one parameter budget")
        if not all(math.isfinite(b) and b >= 1 for b in self.budgets):
            raise StageError(f"--budgets must be positive parameter counts, got "
                             f"{','.join(str(b) for b in self.budgets)}")
        object.__setattr__(self, "budgets", tuple(int(b) for b in self.budgets))
        _check_budget(self.budget, self.max_epoch_factor)
        _at_least(self, ("prunes",), 0)
        _at_least(self, ("round_to",), 1)

    def member(self, params_budget: int) -> "FamilyMemberJob":
        return FamilyMemberJob(prune_run_id=self.prune_run_id, prunes=self.prunes,
                               params_budget=params_budget, budget=self.budget,
                               max_epoch_factor=self.max_epoch_factor, init=self.init,
                               round_to=self.round_to, data=self.data, run=self.run)


@dataclass(frozen=True)
class FamilyMemberJob(Job):
    """One member of a family: a child run of the family run, keyed on its own so that an
    interrupted family does not retrain the members it finished."""
    stage: ClassVar[str] = "family-member"
    prune_run_id: RunRef = _input()
    prunes: int = 0
    params_budget: int = 0
    budget: str = "scratch-e"
    max_epoch_factor: float | None = None
    init: str = "fresh"
    round_to: int | None = None
    data: DataChoice = DataChoice()
    run: RunConfig = RunConfig()


@dataclass(frozen=True)
class EvaluateJob(Job):
    """Test error, size and measured latency (masked vs compressed) of a run's network."""
    stage: ClassVar[str] = "evaluate"
    run_id: RunRef = _input()
    prunes: int | None = None                 # of a prune run: the checkpoint at N prunes
    match_run_id: RunRef | None = _input()    # a network to time beside it; a prune run is
    #                                           then taken at its checkpoint nearest its size
    batch_size: int = 64
    repeats: int = setting(20)
    run: RunConfig = RunConfig()
    run_name: str | None = setting()

    def __post_init__(self) -> None:
        _at_least(self, ("batch_size", "repeats"), 1)

    def key_extra(self) -> dict[str, Any]:
        from mlprunes.engine.trainer import resolve_device

        return {"device": str(resolve_device(self.run.device))}


@dataclass(frozen=True)
class CompareJob(Job):
    """Plots, table and report over a study's finished runs. Always made anew: it reads the
    store as it is now."""
    stage: ClassVar[str] = "compare"
    reusable: ClassVar[bool] = False
    experiment: str | None = None             # compare this experiment's runs [the current],
    run_ids: tuple[RunRef, ...] = _input(())  # or these runs,
    parent_run_id: str | None = None          # or those a pipeline run lists
    register: str | None = None               # a registered model for the Pareto front
    run: RunConfig = RunConfig()
    run_name: str | None = setting()

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_ids", tuple(self.run_ids))
        if self.register is not None and (not self.register.strip()
                                          or any(c in self.register for c in "/:")):
            raise StageError(f"--register needs a model name without / or :, got "
                             f"{self.register!r}")


def criterion_label(criterion: str, flops_penalty: float = 0.0, round_to: int = 1) -> str:
    """How run names and reports name a pruning method: the criterion, with Theis et al.'s
    FLOPs penalty and the channels per prune when they are not the paper's
    (`fisher+flops0.3-r8`)."""
    return (criterion + (f"+flops{flops_penalty:g}" if flops_penalty else "")
            + (f"-r{round_to}" if round_to > 1 else ""))


INITS = ("fresh", "sliced")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise StageError(f"--init must be one of {', '.join(INITS)}, got {init!r}")


def _check_budget(budget: str, max_epoch_factor: float | None = None) -> None:
    if budget not in BUDGETS:
        raise StageError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if max_epoch_factor is not None:
        if budget != "scratch-b":
            raise StageError("--max-epoch-factor applies to --budget scratch-b")
        if not (math.isfinite(max_epoch_factor) and max_epoch_factor >= 1):
            raise StageError(f"--max-epoch-factor must be at least 1 (Scratch-B trains at "
                             f"least the base's epochs), got {max_epoch_factor}")
