"""The `mlprunes` command line, as a declaration: option groups (architecture, data, recipe, run)
each build their config object once; a command builds its job from them, runs it with its stage
and prints the run ID."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from mlprunes.arch import (FAMILIES, GROUP_RULES, ArchError, ArchSpec, GraphSpec, Spec, make_spec,
                           valid_builder)
from mlprunes.counting import count
from mlprunes.engine.recipes import PRESETS as RECIPE_PRESETS, default_preset
from mlprunes.engine.recipes import FINETUNE_PRESET_NAMES
from mlprunes.data import DATASETS
from mlprunes.engine.checkpoint import CheckpointError
from mlprunes.engine.trainer import PRECISIONS, TrainingDiverged
from mlprunes import signals
from mlprunes.errors import Interrupted, StageError
from mlprunes.jobs import (BUDGETS, CRITERIA, DEFAULT_EXPERIMENT, FINETUNE_BUDGETS, CompareJob,
                           DataChoice, DataConfig, EvaluateJob, FamilyJob, FinetuneJob,
                           PruneJob, RecipeChoice, RunConfig, ScratchJob, TrainJob)
from mlprunes.cli_help import Group, examples
from mlprunes.pruning import PruningError
from mlprunes.pruning.loop import SHRINK_EVERY

class NumberList(click.ParamType):
    """A comma-separated list of numbers, e.g. 0.3,0.6,0.8."""
    name = "n1,n2,..."

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            numbers = [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"not a comma-separated list of numbers: {value!r}", param, ctx)
        if not all(math.isfinite(n) for n in numbers):
            self.fail(f"every number must be finite: {value!r}", param, ctx)
        return tuple(self.kind(n) for n in numbers)


def flag(name: str, help: str, default: bool | None = False):
    """A switch, `--x/--no-x`; `--x true` and `--x false` work too (`cli_help.switch_values`),
    as `mlflow run -P x=true` passes it."""
    return click.option(f"{name}/--no-{name[2:]}", default=default,
                        help=help)


@dataclass
class OptionGroup:
    """Options that together build one config object; `apply` adds them to a command and
    hands the command that object (as the keyword `name`) instead of the loose options."""
    name: str
    options: list
    build: Callable[[dict[str, Any]], Any]
    title: str = ""        # the heading its options print under in --help

    def apply(self, command):
        names = {p.name for p in self._params()}

        @functools.wraps(command)
        def wrapper(**kwargs):
            own = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            try:
                value = self.build(own)
            except StageError as err:
                raise click.ClickException(str(err)) from None
            return command(**kwargs, **{self.name: value})

        for option in reversed(self.options):
            wrapper = option(wrapper)
            wrapper.__click_params__[-1].help_group = self.title or self.name.capitalize()
        return wrapper

    def _params(self):
        def dummy():
            pass
        for option in self.options:
            dummy = option(dummy)
        return dummy.__click_params__


# -- the option groups ----------------------------------------------------------------------------

class JsonObject(click.ParamType):
    """A JSON object of plain values, e.g. '{"width_per_group": 32}'."""
    name = "json"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            self.fail(f"not valid JSON ({err.msg}): {value!r}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"must be a JSON object such as '{{\"depth\": 20}}', got {value!r}",
                      param, ctx)
        return parsed


@dataclass(frozen=True)
class ArchChoice:
    family: str
    depth: int | None
    width: float | None
    growth: int | None
    bottle: float | None
    num_classes: int | None
    round_to: int = 1
    args: dict | None = None
    groups: str | None = None
    allow_module: tuple[str, ...] = ()
    input_size: int | None = None

    def spec(self, default_classes: int = 10, default_size: int | None = None) -> Spec:
        if self.allow_module:
            from mlprunes.nets.builders import allow_modules
            allow_modules(self.allow_module)
        try:
            spec = make_spec(self.family, depth=self.depth, width=self.width,
                             growth=self.growth, bottle=self.bottle,
                             num_classes=(default_classes if self.num_classes is None
                                          else self.num_classes),
                             args=self.args, groups=self.groups,
                             input_size=(default_size if self.input_size is None
                                         else self.input_size))
            return spec.rounded(self.round_to) if self.round_to != 1 else spec
        except ArchError as err:
            raise click.ClickException(str(err)) from None


def _builder(ctx, param, value):
    if value in FAMILIES or valid_builder(value):
        return value
    raise click.BadParameter(f"{value!r} is not a network: use wrn, densenet, resnet, vgg, "
                             f"torchvision:NAME (e.g. torchvision:resnet18) or "
                             f"package.module:factory")


ARCH = OptionGroup("arch", [
    click.option("--arch", "family", default="wrn", show_default=True, callback=_builder,
                 metavar="NETWORK",
                 help="wrn (WideResNet), densenet (DenseNet-BC), resnet (He et al.'s CIFAR "
                      "ResNet-d), vgg (CIFAR VGG with BN), torchvision:NAME (any torchvision "
                      "classifier), or package.module:factory (your own nn.Module; its module "
                      "must be allowed, see --allow-module)."),
    click.option("--depth", type=int, default=None,
                 help="Depth [default: 40 for wrn (6n+4), 100 for densenet (6n+4), 56 for "
                      "resnet (6n+2), 16 for vgg (11, 13, 16, 19)]."),
    click.option("--width", type=float, default=None, help="WRN widening factor k [default: 2]."),
    click.option("--growth", type=int, default=None,
                 help="DenseNet-BC growth rate k [default: 12]."),
    click.option("--bottle", type=float, default=None,
                 help="Uniform bottleneck: every block's middle width (every group's width) "
                      "times Z."),
    click.option("--num-classes", type=int, default=None,
                 help="Output classes [default: from the dataset, 10 without one]."),
    click.option("--round-to", type=int, default=1, show_default=True, metavar="R",
                 help="Every block's middle width to the nearest multiple of R (at least R): "
                      "widths that hardware computes fast, and that --round-to R pruning "
                      "keeps."),
    click.option("--arch-args", "args", type=JsonObject(), default=None,
                 help="Keyword arguments of a torchvision or own builder, as a JSON object "
                      "(plain values only)."),
    click.option("--groups", type=click.Choice(list(GROUP_RULES)), default=None,
                 help="Which channel groups of a traced network are prunable: internal (no "
                      "residual add or concatenation couples them: the paper's rule) or all "
                      "[default: internal for resnet, all for the others]."),
    click.option("--input-size", type=int, default=None, metavar="N",
                 help="Image size a traced network is traced at, N x N [default: the data's "
                      "--image-size, else 32]; it must take the data's images."),
    click.option("--allow-module", multiple=True, metavar="MODULE",
                 help="Allow this module (and its submodules) to provide --arch "
                      "package.module:factory builders on this machine (also "
                      "MLPRUNES_ALLOWED_MODULES, comma-separated). Repeatable."),
], lambda o: ArchChoice(**o), "Architecture")

DATA = OptionGroup("data", [
    click.option("--dataset", type=click.Choice(list(DATASETS)), default=None,
                 help="Dataset [default: cifar10; for later stages, the base run's]."),
    click.option("--data-dir", default=None, help="Where the dataset lives [default: data]."),
    flag("--download", "Download CIFAR through torchvision if it is missing.", None),
    click.option("--val-split", type=float, default=None,
                 help="Fraction of the training set held out for validation [default: 0, "
                      "validate on the test set, as the paper's code does]."),
    click.option("--image-size", type=int, default=None,
                 help="Image size for imagefolder and shapes [default: 32]."),
    click.option("--shapes-train", type=int, default=None,
                 help="shapes: training images [default: 5000]."),
    click.option("--shapes-test", type=int, default=None,
                 help="shapes: test images [default: 1000]."),
    click.option("--data-seed", type=int, default=None,
                 help="Seed of generated data and of the validation split [default: 0]."),
], lambda o: DataChoice(**o), "Data")

def recipe_group(pruning: bool, finetune: bool = False) -> OptionGroup:
    """The recipe options, their defaults said as what they mean for training, for the
    fine-tuning between prunes, or for fine-tuning after pruning."""
    presets = list(FINETUNE_PRESET_NAMES if finetune else RECIPE_PRESETS)
    if finetune:
        what = "Fine-tuning recipe (after pruning)"
        texts = {
            "preset": "liu: Liu et al.'s CIFAR fine-tuning (40 epochs, constant lr 1e-3, "
                      "batch 64, weight decay 1e-4); base: the base run's recipe at a tenth "
                      "of its lr [default: liu].",
            "epochs": "Fine-tuning epochs [default: the preset's; with --budget scratch-e or "
                      "scratch-b, those of that run].",
            "batch-size": "[default: the preset's].",
            "lr": "Learning rate [default: the preset's].",
            "schedule": "lr schedule [default: the preset's].",
            "pad": "Random-crop padding [default: the preset's].",
        }
    elif pruning:
        what = "Fine-tuning recipe (between prunes)"
        texts = {
            "preset": "Recipe preset [default: the base run's; its pruning variant].",
            "epochs": "Horizon of a step or cosine --schedule, in passes over the data; "
                      "pruning itself runs --prunes x --prune-every steps [default: none, "
                      "as the constant schedule needs none].",
            "batch-size": "[default: the preset's, 128 wrn / 64 densenet].",
            "lr": "Fine-tuning learning rate [default: 8e-4 wrn / 1e-3 densenet, the "
                  "paper's].",
            "schedule": "lr schedule [default: constant, as the paper's pruning].",
            "pad": "Random-crop padding [default: zero, as the paper's pruning script].",
        }
    else:
        what = "Training recipe"
        texts = {
            "preset": "Recipe preset [default: the network's family].",
            "epochs": "Training epochs [default: the preset's, 200 wrn / 300 densenet].",
            "batch-size": "[default: the preset's, 128 wrn / 64 densenet].",
            "lr": "Learning rate [default: the preset's, 0.1].",
            "schedule": "lr schedule [default: step].",
            "pad": "Random-crop padding [default: reflect, as the paper's training script].",
        }
    return OptionGroup("recipe", [
        click.option("--preset", type=click.Choice(presets), default=None,
                     help=texts["preset"]),
        click.option("--epochs", type=int, default=None, help=texts["epochs"]),
        click.option("--batch-size", type=int, default=None, help=texts["batch-size"]),
        click.option("--lr", type=float, default=None, help=texts["lr"]),
        click.option("--momentum", type=float, default=None, help="[default: 0.9]."),
        click.option("--weight-decay", type=float, default=None,
                     help="[default: the preset's, 5e-4 wrn / 1e-4 densenet]."),
        click.option("--schedule", type=click.Choice(["step", "cosine", "constant"]),
                     default=None, help=texts["schedule"]),
        click.option("--milestones", type=NumberList(float), default=None,
                     help="Step schedule: lr milestones as fractions of --epochs, e.g. "
                          "0.3,0.6,0.8 [default: the preset's]."),
        click.option("--gamma", type=float, default=None,
                     help="Step schedule: lr factor at each milestone [default: the "
                          "preset's]."),
        click.option("--pad", type=click.Choice(["zero", "reflect"]), default=None,
                     help=texts["pad"]),
    ] + ([] if pruning or finetune else [
        click.option("--bn-l1", type=float, default=None, metavar="LAMBDA",
                     help="Network slimming (Liu et al. 2017): an L1 penalty of LAMBDA on every "
                          "BatchNorm scale, for pruning by --criterion bn-scale (they use "
                          "1e-4 to 1e-5) [default: 0, none]."),
    ]), lambda o: RecipeChoice(**o), what)


RECIPE = recipe_group(pruning=False)
PRUNE_RECIPE = recipe_group(pruning=True)
FINETUNE_RECIPE = recipe_group(pruning=False, finetune=True)


def _run_config(o: dict[str, Any]) -> RunConfig:
    # Bars redraw with carriage returns: right in a terminal, clutter in a saved log.
    progress = o.pop("progress")
    return RunConfig(progress=sys.stderr.isatty() if progress is None else progress,
                     compile=o.pop("compile_"), **o)


RUN = OptionGroup("run", [
    click.option("--device", default="auto", show_default=True,
                 help="cpu, cuda, cuda:1, ... (auto: cuda if there is one)."),
    click.option("--precision", type=click.Choice(list(PRECISIONS)), default="auto",
                 show_default=True,
                 help="auto: bf16 autocast on CUDA, fp32 on CPU; fp32 is the faithful setting."),
    click.option("--channels-last/--no-channels-last", default=None,
                 help="NHWC memory format [default: on for CUDA]."),
    click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
                 help="torch.compile the model."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--progress/--no-progress", default=None,
                 help="Progress bars on stderr [default: when stderr is a terminal]."),
    click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
                 help="MLflow experiment (ignored under `mlflow run`, which sets it)."),
], _run_config, "Run")

run_name_option = click.option("--run-name", default=None,
                               help="MLflow run name [default: derived].")
log_model_option = click.option("--log-model/--no-log-model", default=True, show_default=True,
                                help="Log the final network with mlflow.pytorch.log_model.")


init_option = click.option(
    "--init", type=click.Choice(["fresh", "sliced"]), default="fresh", show_default=True,
    help="fresh: initialise the network for its own widths; sliced: initialise the full "
         "network and cut it to these widths, as the paper's code does.")
max_epoch_factor_option = click.option(
    "--max-epoch-factor", type=float, default=None, metavar="F",
    help="With --budget scratch-b: train at most F times the base run's epochs (Liu et al. "
         "cap it at 2 on ImageNet) [default: no cap, as their CIFAR code].")


def resume_option(stage: str):
    return click.option("--resume-run-id", default=None,
                        help=f"Continue this interrupted {stage} run from its last checkpoint.")


def stage_command(fn):
    """Run against a reachable store; bad input is one clear line and a non-zero exit; a
    signal ends the runs KILLED and exits with 128 + its number; the run ID the command returns
    is the last line of stdout."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlprunes.stages import tracking

        tracking.configure_client()
        with signals.stop_on_signals():
            try:
                tracking.check_tracking_store()
                run_id = fn(*args, **kwargs)
            except (StageError, ArchError, PruningError, CheckpointError,
                    TrainingDiverged) as err:
                raise click.ClickException(str(err)) from None
            except (Interrupted, Exception) as err:
                signum = err.signum if isinstance(err, Interrupted) else signals.received()
                if signum is None and tracking.unreachable(err):  # outside any open run
                    raise click.ClickException(
                        f"lost the MLflow tracking store at {tracking.tracking_uri()} "
                        f"({tracking.reason(err)})") from None
                if signum is None:
                    raise
                click.echo(f"Error: stopped by {signal.Signals(signum).name}; run the same "
                           f"command with --resume-run-id (a pipeline: run it again) to "
                           f"continue from the last checkpoint", err=True)
                sys.exit(128 + signum)
        if run_id is not None:
            with contextlib.suppress(Exception):  # a pointer, never a reason to fail
                click.echo(tracking.ui_hint(tracking.fetch_run(run_id)), err=True)
            click.echo(run_id)
    return wrapper


# -- the commands ---------------------------------------------------------------------------------

@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlprunes")
@click.option("--allow-module", "allowed", multiple=True, metavar="MODULE",
              help="Allow this module (and its submodules) to provide package.module:factory "
                   "networks to every command, e.g. `mlprunes --allow-module mynets prune ...` "
                   "(also MLPRUNES_ALLOWED_MODULES, comma-separated). Repeatable.")
def main(allowed: tuple[str, ...] = ()) -> None:
    """Structured channel pruning of WideResNets, DenseNet-BCs and any CNN, tracked with
    MLflow."""
    if allowed:
        from mlprunes.nets.builders import allow_modules
        allow_modules(allowed)


@main.command(short_help="A network's size, computed without building it.")
@examples('mlprunes describe --arch wrn --depth 40 --width 2',
          'mlprunes describe --arch densenet --bottle 0.5 --json')
@ARCH.apply
@click.option("--image-size", type=int, default=None,
              help="Input height and width for the FLOP count [default: --input-size, else "
                   "32].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def describe(arch: ArchChoice, image_size, as_json):
    """Print a network's parameters, FLOPs and prunable channels without building it."""
    if image_size is None:
        image_size = arch.input_size if arch.input_size is not None else 32
    spec = arch.spec(default_size=image_size)
    if image_size < 1:
        raise click.BadParameter("must be positive", param_hint="--image-size")
    counts = count(spec, image_size)
    summary = {"name": spec.name, "params": counts.params, "flops": counts.flops,
               "prunable_channels": spec.prunable_channels, "prunable_blocks": spec.num_blocks,
               "image_size": image_size, "arch": spec.to_dict()}
    if as_json:
        click.echo(json.dumps(summary))
        return
    custom = " (custom middle widths)" if spec.mids != spec.full_mids() else ""
    click.echo(f"{spec.name}{custom}")
    click.echo(f"  params             {counts.params:,}")
    click.echo(f"  flops (MACs/image) {counts.flops:,} at {image_size}x{image_size}")
    unit = "groups" if isinstance(spec, GraphSpec) else "blocks"
    click.echo(f"  prunable channels  {spec.prunable_channels:,} in {spec.num_blocks} {unit}")
    if isinstance(spec, GraphSpec):
        for name, width in zip(spec.names, spec.mids):
            click.echo(f"    {name:<40} {width}")
    else:
        click.echo(f"  middle widths      {list(spec.mids)}")


@main.command(short_help="Train a network from scratch: a base or a reduced baseline.")
@examples('mlprunes train --arch wrn --depth 40 --width 2 --dataset cifar10 --download',
          'mlprunes train --arch wrn --depth 16 --width 1 --dataset shapes --epochs 30 '
          '--schedule cosine')
@ARCH.apply
@DATA.apply
@RECIPE.apply
@RUN.apply
@run_name_option
@click.option("--checkpoint-every", type=int, default=1, show_default=True,
              help="Epochs between resumable checkpoints.")
@log_model_option
@resume_option("train")
@stage_command
def train(arch: ArchChoice, data: DataChoice, recipe: RecipeChoice, run: RunConfig, run_name,
          checkpoint_every, log_model, resume_run_id):
    """Train a network (full, reduced, or --bottle Z) from scratch as one MLflow run."""
    from mlprunes.stages import train as stage
    from mlprunes.stages.common import dataset_classes

    data_config = data.over(DataConfig())
    spec = arch.spec(default_classes=dataset_classes(data_config),
                     default_size=data_config.image_size)
    preset = recipe.preset or default_preset(spec.family)
    bottle = f"-bottle{arch.bottle:g}" if arch.bottle is not None else ""
    bottle += f"-r{arch.round_to}" if arch.round_to != 1 else ""
    job = TrainJob(spec=spec, recipe=recipe.resolve(preset), data=data_config, preset=preset,
                   run=run, run_name=run_name or f"train-{spec.name}{bottle}",
                   checkpoint_every=checkpoint_every, log_model=log_model)
    return stage.run(job, resume_run_id=resume_run_id)


@main.command(short_help="Fine-tune a trained network while pruning its channels.")
@examples('mlprunes prune --base-run-id $BASE --criterion fisher --prunes 900',
          'mlprunes prune --base-run-id $BASE --prunes 60 --prune-every 3   # small data',
          'mlprunes prune --base-run-id $BASE --flops-penalty 0.1 --round-to 8 --prunes 100')
@click.option("--base-run-id", required=True, help="The train run whose network to prune.")
@click.option("--criterion", type=click.Choice(CRITERIA), default="fisher", show_default=True,
              help="Channel saliency.")
@click.option("--prunes", type=int, required=True,
              help="Prunes to make: one channel each (R with --round-to R).")
@click.option("--prune-every", type=int, default=100, show_default=True,
              help="Fine-tuning steps before each prune: the paper's 100 is about a quarter "
                   "of an epoch of CIFAR (50,000 images, batch 128). On a small data set take "
                   "about a tenth of an epoch, so fine-tuning does not overfit between prunes: "
                   "the demo's 1,800 images at batch 64 (28 steps an epoch) use 3.")
@click.option("--save-every", type=int, default=100, show_default=True,
              help="Prunes between masked checkpoints (and at the end).")
@click.option("--val-every", type=int, default=10, show_default=True,
              help="Prunes between validation passes (and at the start and end).")
@flag("--keep-one", "Never prune a block's last channel (its last R with --round-to R).")
@click.option("--round-to", type=int, default=1, show_default=True, metavar="R",
              help="Channels per prune, all from one block, so that every width stays a "
                   "multiple of R; the base network's widths must be multiples of R.")
@click.option("--flops-penalty", type=float, default=0.0, show_default=True, metavar="BETA",
              help="Cost-aware Fisher (Theis et al.): prune the channel minimising its "
                   "estimated loss increase (nats) plus BETA times the change in GFLOPs per "
                   "image; 0 is plain Fisher. Fisher only.")
@click.option("--shrink-every", type=click.IntRange(min=0), default=SHRINK_EVERY,
              show_default=True, metavar="K",
              help="Every K prunes, fine-tune on the network cut to its surviving channels "
                   "(weights, BN statistics, momentum and saliency carried over) instead of "
                   "the masked full-width one: the same computation in fewer MACs (how much "
                   "less time depends on the network and device); 0 fine-tunes the masked "
                   "network throughout. Checkpoints stay full-width masked ones.")
@DATA.apply
@PRUNE_RECIPE.apply
@RUN.apply
@run_name_option
@log_model_option
@resume_option("prune")
@stage_command
def prune(base_run_id, criterion, prunes, prune_every, save_every, val_every, keep_one,
          round_to, flops_penalty, shrink_every, data: DataChoice, recipe: RecipeChoice,
          run: RunConfig, run_name, log_model, resume_run_id):
    """Fine-tune a trained network and prune its channels (Fisher, L1 or random), one (or
    --round-to R) at a time."""
    from mlprunes.stages import prune as stage

    job = PruneJob(base_run_id=base_run_id, criterion=criterion, prunes=prunes,
                   prune_every=prune_every, save_every=save_every, val_every=val_every,
                   keep_one=keep_one, round_to=round_to, flops_penalty=flops_penalty,
                   shrink_every=shrink_every, recipe=recipe, data=data, run=run,
                   run_name=run_name, log_model=log_model)
    return stage.run(job, resume_run_id=resume_run_id)


@main.command(short_help="Train a pruned architecture from scratch.")
@examples('mlprunes scratch --prune-run-id $PRUNE --prunes 900',
          'mlprunes scratch --prune-run-id $PRUNE --params-budget 500000 --budget scratch-b')
@click.option("--prune-run-id", required=True, help="The prune run whose architecture to use.")
@click.option("--prunes", type=int, default=None, help="Use the architecture after N prunes.")
@click.option("--params-budget", type=int, default=None,
              help="Or: the first architecture with at most P parameters.")
@click.option("--macs-reduction", type=float, default=None, metavar="R",
              help="Or: the architecture at the saved checkpoint nearest R times fewer MACs "
                   "than the prune run's start (where a leaderboard reads it).")
@click.option("--budget", type=click.Choice(BUDGETS), default="scratch-e", show_default=True,
              help="scratch-e: the base run's epochs; scratch-b: the base run's epochs times "
                   "its FLOPs over this network's (the integer part), the same training "
                   "compute.")
@max_epoch_factor_option
@init_option
@RUN.apply
@run_name_option
@log_model_option
@resume_option("scratch")
@stage_command
def scratch(prune_run_id, prunes, params_budget, macs_reduction, budget, max_epoch_factor, init,
            run: RunConfig, run_name, log_model, resume_run_id):
    """Train a pruned architecture from a fresh init (the paper's 'from scratch')."""
    from mlprunes.stages import scratch as stage

    if sum(v is not None for v in (prunes, params_budget, macs_reduction)) != 1:
        raise click.UsageError("give exactly one of --prunes, --params-budget and "
                               "--macs-reduction")
    job = ScratchJob(prune_run_id=prune_run_id, prunes=prunes, params_budget=params_budget,
                     macs_reduction=macs_reduction,
                     budget=budget, max_epoch_factor=max_epoch_factor, init=init, run=run,
                     run_name=run_name, log_model=log_model)
    return stage.run(job, resume_run_id=resume_run_id)


@main.command(short_help="Fine-tune a pruned network on from its weights.")
@examples('mlprunes finetune --prune-run-id $PRUNE --prunes 900',
          'mlprunes finetune --prune-run-id $PRUNE --prunes 900 --budget scratch-e',
          'mlprunes finetune --prune-run-id $PRUNE --params-budget 500000 --preset base')
@click.option("--prune-run-id", required=True, help="The prune run whose network to fine-tune.")
@click.option("--prunes", type=int, default=None,
              help="The network at the checkpoint after N prunes (one the prune run saved).")
@click.option("--params-budget", type=int, default=None,
              help="Or: the first saved checkpoint with at most P parameters.")
@click.option("--budget", type=click.Choice(FINETUNE_BUDGETS), default="recipe",
              show_default=True,
              help="The epochs: the recipe's; or those of the Scratch-E (the base run's) or "
                   "Scratch-B run of this architecture, for a comparison at equal epochs.")
@max_epoch_factor_option
@DATA.apply
@FINETUNE_RECIPE.apply
@RUN.apply
@run_name_option
@log_model_option
@resume_option("finetune")
@stage_command
def finetune(prune_run_id, prunes, params_budget, budget, max_epoch_factor, data: DataChoice,
             recipe: RecipeChoice, run: RunConfig, run_name, log_model, resume_run_id):
    """Fine-tune a prune run's network, compressed, from its weights (the field's step after
    pruning)."""
    from mlprunes.stages import finetune as stage

    if (prunes is None) == (params_budget is None):
        raise click.UsageError("give exactly one of --prunes and --params-budget")
    job = FinetuneJob(prune_run_id=prune_run_id, prunes=prunes, params_budget=params_budget,
                      budget=budget, max_epoch_factor=max_epoch_factor, recipe=recipe,
                      data=data, run=run, run_name=run_name, log_model=log_model)
    return stage.run(job, resume_run_id=resume_run_id)


@main.command(short_help="Scale a pruned width profile to budgets; train each.")
@examples('mlprunes family --prune-run-id $PRUNE --prunes 900 --budgets 200000,400000')
@click.option("--prune-run-id", required=True, help="The prune run whose profile to scale.")
@click.option("--prunes", type=int, required=True, help="Take the width profile after N prunes.")
@click.option("--budgets", type=NumberList(int), required=True,
              help="Parameter budgets, e.g. 200000,400000.")
@click.option("--budget", type=click.Choice(BUDGETS), default="scratch-e", show_default=True)
@max_epoch_factor_option
@init_option
@click.option("--round-to", type=int, default=None, metavar="R",
              help="Members' widths: the scaled profile rounded to multiples of R [default: "
                   "the prune run's --round-to].")
@RUN.apply
@run_name_option
@log_model_option
@stage_command
def family(prune_run_id, prunes, budgets, budget, max_epoch_factor, init, round_to,
           run: RunConfig, run_name, log_model):
    """Scale one pruned width profile to several budgets; train each from scratch."""
    from mlprunes.stages import family as stage

    job = FamilyJob(prune_run_id=prune_run_id, prunes=prunes, budgets=budgets, budget=budget,
                    max_epoch_factor=max_epoch_factor, init=init, round_to=round_to, run=run,
                    run_name=run_name, log_model=log_model)
    return stage.run(job)


@main.command(short_help="Test error, size and latency of a run's network.")
@examples('mlprunes evaluate --run-id $PRUNE --prunes 900',
          'mlprunes evaluate --run-id $PRUNE --match-run-id $REDUCED --batch-size 64')
@click.option("--run-id", required=True, help="A train, prune, scratch or family member run.")
@click.option("--prunes", type=int, default=None,
              help="For a prune run: the checkpoint at N prunes [default: its last, or the "
                   "one nearest --match-run-id's size].")
@click.option("--match-run-id", default=None,
              help="A trained network to time in turn with this one (a reduced baseline of "
                   "about the same size); a prune run is taken at its saved checkpoint nearest "
                   "that network's parameter count.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Latency batch size (batch 1 is always measured too).")
@click.option("--repeats", type=int, default=20, show_default=True)
@RUN.apply
@run_name_option
@stage_command
def evaluate(run_id, prunes, match_run_id, batch_size, repeats, run: RunConfig, run_name):
    """Test error, params, FLOPs and latency (masked vs compressed) of a run's network."""
    from mlprunes.stages import evaluate as stage

    job = EvaluateJob(run_id=run_id, prunes=prunes, match_run_id=match_run_id or None,
                      batch_size=batch_size, repeats=repeats, run=run, run_name=run_name)
    return stage.run(job)


@main.command(short_help="Export a compressed network: ONNX, pt2 or TorchScript.")
@click.option("--run-id", required=True, help="A train, prune, scratch or family member run.")
@click.option("--prunes", type=int, default=None,
              help="For a prune run: the network at its checkpoint after N prunes [default: "
                   "its last checkpoint].")
@click.option("--format", "fmt", type=click.Choice(["onnx", "pt2", "torchscript"]),
              required=True, help="onnx (needs the onnx extra), pt2 (torch.export) or "
                                  "torchscript (traced).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file to write.")
@click.option("--log-artifact/--no-log-artifact", default=False, show_default=True,
              help="Also log the file on the run, under exports/.")
@stage_command
def export(run_id, prunes, fmt, out, log_artifact):
    """Write a run's network, compressed, as ONNX, pt2 or TorchScript, checked against it.

    The file is run on a batch beside the masked network it came from; if their outputs
    differ, it is deleted and the command fails. The path is the last line of stdout.

    \b
    Example:
      mlprunes export --run-id $PRUNE --prunes 900 --format onnx --out wrn-p900.onnx
      mlprunes export --run-id $BASE --format pt2 --out wrn.pt2 --log-artifact
    """
    from mlprunes.stages import export as stage

    click.echo(stage.run(run_id, prunes, fmt, out, log_artifact))


@main.command(short_help="Answers, plots and a report over finished runs.")
@examples('mlprunes compare --parent-run-id $PIPELINE',
          'mlprunes compare --experiment mlprunes --register wrn-40-2-pruned')
@click.option("--experiment", default=None,
              help="Compare the finished runs of this experiment [default: mlprunes, or the "
                   "experiment `mlflow run` chose].")
@click.option("--run-ids", default=None, help="Or: these runs (comma-separated).")
@click.option("--parent-run-id", default=None, help="Or: the runs of this pipeline run.")
@click.option("--register", "register_as", default=None, metavar="NAME",
              help="Register the networks on the Pareto front of parameters and test error "
                   "in the Model Registry as versions of NAME, with aliases by size "
                   "(params-23k), smallest and most-accurate.")
@run_name_option
@stage_command
def compare(experiment, run_ids, parent_run_id, register_as, run_name):
    """Gather a study's finished runs into one table (and plots) as a compare run."""
    from mlprunes.stages import compare as stage

    ids = tuple(r.strip() for r in (run_ids or "").split(",") if r.strip())
    job = CompareJob(experiment=experiment, run_ids=ids, parent_run_id=parent_run_id,
                     register=register_as, run_name=run_name)
    return stage.run(job)


class SeedList(click.ParamType):
    """Seeds as a comma-separated list, e.g. 0,1,2 (empty: the study's own)."""
    name = "S1,S2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            seeds = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"not a comma-separated list of seeds: {value!r}", param, ctx)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            self.fail(f"seeds must be distinct and not negative: {value!r}", param, ctx)
        return seeds


def seed_sets(seeds: tuple[int, ...] | None) -> list[str]:
    """--seeds as the study-file override it stands for."""
    return [f"run.seeds={list(seeds)}"] if seeds else []


def study_options(fn):
    """Which study: a preset or a study file, with fields overridden."""
    fn = click.option("--seeds", type=SeedList(), default=None,
                      help="Repeat the whole study for these seeds, e.g. 0,1,2; each seed's "
                           "runs start from its own base network [default: the study's "
                           "run.seeds].")(fn)
    fn = click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                      help="Override a field of the study, e.g. --set prune.prunes=300 "
                           "--set 'run.seeds=[0, 1, 2]' (VALUE is TOML; a bare word is a "
                           "string). Several may be given in one, separated by ';'.")(fn)
    fn = click.option("--study", "study_file", default=None, metavar="FILE",
                      help="A study file (TOML); `mlprunes study show demo` prints one to "
                           "start from.")(fn)
    return click.option("--preset", default=None,
                        help="A shipped study: demo (shapes, minutes on a CPU), tiny (a "
                             "smoke test), wrn-40-2, densenet-bc-100 (CIFAR-10, the paper's "
                             "settings, for a GPU) [default: demo].")(fn)


def load_study(preset: str | None, study_file: str | None, sets: tuple[str, ...]):
    from mlprunes.study.studyfile import load_preset, load_study_file

    if preset and study_file:
        raise click.UsageError("give --preset or --study, not both")
    if study_file:
        return load_study_file(study_file, sets)
    return load_preset(preset or "demo", sets)


@main.command(short_help="Run a whole study, reusing the steps already done.")
@examples('mlprunes pipeline --preset demo --executor ray',
          'mlprunes pipeline --study my.toml --set prune.prunes=500 --seeds 0,1,2')
@study_options
@click.option("--data-dir", default=None, help="Where the study's data lives (CIFAR, or an "
                                               "image folder); overrides data.data_dir.")
@flag("--download", "Download CIFAR if it is missing.")
@RUN.apply
@run_name_option
@click.option("--dry-run", is_flag=True,
              help="Print the study's jobs, keys and dependencies, and which have finished "
                   "runs in the store; run nothing.")
@click.option("--executor", type=click.Choice(["sequential", "ray"]), default="sequential",
              show_default=True,
              help="sequential: one job after another in this process. ray: each job a Ray "
                   "task, independent jobs at once (pip install 'mlprunes[ray]').")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="With --executor ray: an existing cluster ('auto' or host:port), which "
                   "needs a tracking server [default: a local Ray instance on this machine].")
@click.option("--cpus-per-job", type=float, default=1.0, show_default=True,
              help="With --executor ray: CPUs each job reserves.")
@click.option("--gpus-per-job", type=float, default=0.0, show_default=True,
              help="With --executor ray: GPUs each job reserves (1 to train on a GPU each).")
@stage_command
def pipeline(preset, study_file, sets, seeds, data_dir, download, run: RunConfig, run_name,
             dry_run, executor, ray_address, cpus_per_job, gpus_per_job):
    """Run a whole study as child runs of one pipeline run, reusing finished steps."""
    from mlprunes.stages import pipeline as stage
    from mlprunes.study.plans import with_data_dir

    plan = with_data_dir(load_study(preset or None, study_file or None,
                                    (*sets, *seed_sets(seeds))), data_dir, download)
    if dry_run:
        print_plan(stage.dry_run(plan, run))
        return None
    if executor == "sequential" and (ray_address or cpus_per_job != 1 or gpus_per_job != 0):
        raise click.UsageError("--ray-address, --cpus-per-job and --gpus-per-job apply to "
                               "--executor ray")
    choice = stage.ExecutorChoice(executor, ray_address or None, cpus_per_job, gpus_per_job)
    return stage.run_pipeline(plan, run, run_name=run_name, executor=choice)


@main.command("plan", short_help="What a study costs, before it runs.")
@examples('mlprunes plan --preset wrn-40-2 --gpus 1,8')
@study_options
@click.option("--gpus", default="1", show_default=True, metavar="G1,G2,...",
              help="GPU counts to give the makespan for.")
@click.option("--images-per-second", type=float, default=None,
              help="Training throughput of the base network on one GPU.")
@click.option("--throughput-run-id", default=None, metavar="ID",
              help="Or: take it from a finished train run's images_per_second, scaled by "
                   "MACs to the base network.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def plan_command(preset, study_file, sets, seeds, gpus, images_per_second, throughput_run_id,
                 as_json):
    """What a study costs before it runs: each job's compute, GPU-hours, the critical path and
    the makespan on each number of GPUs."""
    from mlprunes.stages.common import dataset_classes
    from mlprunes.study.cost import format_hours, study_cost, summary
    from mlprunes.study.plans import study_graph

    try:
        counts = [int(g) for g in gpus.split(",") if g.strip()]
        if not counts or min(counts) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{gpus!r}: give GPU counts such as 1,8,64",
                                 param_hint="--gpus") from None
    if (images_per_second is None) == (throughput_run_id is None):
        raise click.UsageError("give one of --images-per-second and --throughput-run-id")
    try:
        chosen = load_study(preset, study_file, [*sets, *seed_sets(seeds)])
        spec = chosen.base_spec(dataset_classes(chosen.data))
        size = chosen.data.image_size or 32
        if throughput_run_id is not None:
            from mlprunes.stages import pipeline as stage, tracking

            tracking.configure_client()
            tracking.check_tracking_store()
            images_per_second = stage.throughput_of(throughput_run_id, spec, size)
        if not (images_per_second > 0 and math.isfinite(images_per_second)):
            raise StageError(f"--images-per-second must be a positive number, got "
                             f"{images_per_second}")
        graph = study_graph(chosen, chosen.name, RunConfig(progress=False), spec)
        cost = study_cost(graph, images_per_second, size)
    except (StageError, ArchError) as err:
        raise click.ClickException(str(err)) from None
    figures = summary(cost, counts)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    width = max(len(j.node) for j in cost.jobs)
    click.echo(f"{'job':<{width}}  {'stage':<8}  {'TMACs':>10}  {'GPU time':>10}")
    for j in cost.jobs:
        mark = " ~" if j.estimated else ""
        click.echo(f"{j.node:<{width}}  {j.stage:<8}  {j.macs / 1e12:>10,.1f}  "
                   f"{format_hours(j.seconds):>10}{mark}")
    path_seconds, path = cost.critical_path()
    click.echo(f"\n{chosen.name}: {len(cost.jobs)} jobs, {cost.gpu_hours:,.1f} GPU-hours at "
               f"{images_per_second:,.0f} images/s of {cost.base} (~: estimated before its "
               f"inputs exist)")
    click.echo(f"critical path {format_hours(path_seconds)}: {' -> '.join(path)}")
    for g in counts:
        click.echo(f"makespan on {g} GPU{'s' if g > 1 else ''}: "
                   f"{format_hours(cost.makespan(g))}")


@main.group()
def study() -> None:
    """Study files: print a preset's, check your own."""


@study.command("show")
@examples('mlprunes study show demo > my-study.toml')
@click.argument("name")
def study_show(name):
    """Print the study file of preset NAME, to start your own from."""
    from mlprunes.study.studyfile import preset_text

    try:
        click.echo(preset_text(name), nl=False)
    except StageError as err:
        raise click.ClickException(str(err)) from None


@study.command("check")
@examples('mlprunes study check my-study.toml --set prune.prunes=100')
@click.argument("file", required=False)
@click.option("--preset", default=None, help="Check a preset instead of a file.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a field, as for `pipeline`.")
@click.option("--resolved", is_flag=True, help="Print the study with every default filled in "
                                                "and the overrides applied.")
def study_check(file, preset, sets, resolved):
    """Check a study file and print the jobs it makes and what each needs (nothing is run and
    the tracking store is not read)."""
    from mlprunes.stages.common import dataset_classes
    from mlprunes.study.executor import EmptyStore, plan
    from mlprunes.study.plans import study_graph
    from mlprunes.study.studyfile import study_toml

    try:
        chosen = load_study(preset, file, sets)
        if resolved:
            click.echo(study_toml(chosen), nl=False)
            return
        spec = chosen.base_spec(dataset_classes(chosen.data))
        graph = study_graph(chosen, chosen.name, RunConfig(progress=False), spec)
        print_plan(plan(graph, EmptyStore()))
    except (StageError, ArchError) as err:
        raise click.ClickException(str(err)) from None


def print_plan(steps) -> None:
    """The dry run's table: one job a line, in the order they would run."""
    width = max(len(s.node) for s in steps)
    click.echo(f"{'job':<{width}}  {'stage':<8}  {'key':<20}  {'status':<16}  needs")
    for i, s in enumerate(steps):
        status = s.status + (f" {s.run_id}" if s.run_id else "")
        everything = i > 1 and list(s.needs) == [p.node for p in steps[:i]]
        needs = "(all above)" if everything else ",".join(s.needs) or "-"
        if len(s.needs) > 4 and not everything:  # an evaluation waiting for every training
            needs = f"{','.join(s.needs[:2])} and {len(s.needs) - 2} more"
        click.echo(f"{s.node:<{width}}  {s.stage:<8}  {s.key or '(after inputs)':<20}  "
                   f"{status:<16}  {needs}")
    counts = {st: sum(s.status == st for s in steps) for st in ("finished", "would resume")}
    click.echo(f"{len(steps)} jobs: {counts['finished']} finished, {counts['would resume']} "
               f"to resume, {len(steps) - sum(counts.values())} to run")


if __name__ == "__main__":
    main()
