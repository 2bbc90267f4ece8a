"""The `mlprunes` command line: thin click commands over the package."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import click

from mlprunes.arch import ArchError, ArchSpec, make_spec
from mlprunes.counting import count
from mlprunes.data import DATASETS
from mlprunes.engine.checkpoint import CheckpointError
from mlprunes.engine.recipes import Recipe, preset
from mlprunes.engine.trainer import PRECISIONS
from mlprunes.pruning import PruningError
from mlprunes.stages.common import DataConfig, RunConfig, dataset_classes
from mlprunes.stages.tracking import (DEFAULT_EXPERIMENT, StageError, check_tracking_store,
                                      configure_client)


def apply_options(command, options):
    """Decorate `command` with `options`, first option first in --help."""
    for option in reversed(options):
        command = option(command)
    return command


def flag(name: str, help: str, default=False):
    """A boolean flag that also takes an explicit value (`--download` or `--download false`),
    so that `mlflow run -P download=true` works: MLflow passes extra parameters as `--key value`."""
    return click.option(name, type=click.BOOL, is_flag=False, flag_value=True, default=default,
                        metavar="[true|false]", help=help)


def arch_options(command):
    """The architecture options every network-building command shares."""
    options = [
        click.option("--arch", "family", type=click.Choice(["wrn", "densenet"]), default="wrn",
                     show_default=True, help="Network family: WideResNet or DenseNet-BC."),
        click.option("--depth", type=int, default=None,
                     help="Depth, 6n+4 [default: 40 for wrn, 100 for densenet]."),
        click.option("--width", type=float, default=None,
                     help="WRN widening factor k [default: 2]."),
        click.option("--growth", type=int, default=None,
                     help="DenseNet-BC growth rate k [default: 12]."),
        click.option("--bottle", type=float, default=None,
                     help="Uniform bottleneck: every block's middle width times Z."),
        click.option("--num-classes", type=int, default=None,
                     help="Output classes [default: from the dataset, 10 without one]."),
    ]
    return apply_options(command, options)


def spec_from_options(family: str, depth: int | None, width: float | None, growth: int | None,
                      bottle: float | None, num_classes: int | None,
                      default_classes: int = 10) -> ArchSpec:
    try:
        return make_spec(family, depth=depth, width=width, growth=growth, bottle=bottle,
                         num_classes=default_classes if num_classes is None else num_classes)
    except ArchError as err:
        raise click.ClickException(str(err)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlprunes")
def main() -> None:
    """Structured channel pruning of WideResNets and DenseNet-BCs, tracked with MLflow."""


@main.command()
@arch_options
@click.option("--image-size", type=int, default=32, show_default=True,
              help="Input height and width for the FLOP count.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def describe(family, depth, width, growth, bottle, num_classes, image_size, as_json):
    """Print a network's parameters, FLOPs and prunable channels without building it."""
    spec = spec_from_options(family, depth, width, growth, bottle, num_classes)
    if image_size < 1:
        raise click.BadParameter("must be positive", param_hint="--image-size")
    counts = count(spec, image_size)
    summary = {
        "name": spec.name,
        "params": counts.params,
        "flops": counts.flops,
        "prunable_channels": spec.prunable_channels,
        "prunable_blocks": spec.num_blocks,
        "image_size": image_size,
        "arch": spec.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{spec.name}" + (" (custom middle widths)" if spec.mids != spec.full_mids()
                                 else ""))
    click.echo(f"  params             {counts.params:,}")
    click.echo(f"  flops (MACs/image) {counts.flops:,} at {image_size}x{image_size}")
    click.echo(f"  prunable channels  {spec.prunable_channels:,} in {spec.num_blocks} blocks")
    click.echo(f"  middle widths      {list(spec.mids)}")


def data_options(command):
    """The dataset options every data-reading command shares."""
    options = [
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
    ]
    return apply_options(command, options)


def recipe_options(command):
    """Overrides of the preset recipe; unset options keep the preset's value."""
    options = [
        click.option("--preset", type=click.Choice(["wrn", "densenet"]), default=None,
                     help="Recipe preset [default: the network's family]."),
        click.option("--epochs", type=int, default=None,
                     help="Training epochs [default: the preset's, 200 wrn / 300 densenet]."),
        click.option("--batch-size", type=int, default=None,
                     help="[default: the preset's, 128 wrn / 64 densenet]."),
        click.option("--lr", type=float, default=None,
                     help="Learning rate [default: the preset's; pruning 8e-4 / 1e-3]."),
        click.option("--momentum", type=float, default=None, help="[default: 0.9]."),
        click.option("--weight-decay", type=float, default=None,
                     help="[default: the preset's, 5e-4 wrn / 1e-4 densenet]."),
        click.option("--schedule", type=click.Choice(["step", "cosine", "constant"]),
                     default=None, help="lr schedule [default: step; constant when pruning]."),
        click.option("--milestones", default=None,
                     help="lr milestones as fractions of the run, e.g. 0.3,0.6,0.8."),
        click.option("--gamma", type=float, default=None, help="lr factor at each milestone."),
    ]
    return apply_options(command, options)


def run_options(command):
    options = [
        click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:1, ... (auto: cuda if there is one)."),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), default="auto",
                     show_default=True,
                     help="auto: bf16 autocast on CUDA, fp32 on CPU; fp32 is the faithful "
                          "setting."),
        click.option("--channels-last/--no-channels-last", default=None,
                     help="NHWC memory format [default: on for CUDA]."),
        click.option("--compile", "compile_", type=click.BOOL, is_flag=False, flag_value=True,
                     default=False, metavar="[true|false]", help="torch.compile the model."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bars on stderr [default: when stderr is a terminal]."),
        click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
                     help="MLflow experiment (ignored under `mlflow run`, which sets it)."),
        click.option("--run-name", default=None, help="MLflow run name [default: derived]."),
    ]
    return apply_options(command, options)


def data_config(base: DataConfig | None = None, **given) -> DataConfig:
    base = base or DataConfig()
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def recipe_from_options(preset_name: str, pruning: bool = False, **given) -> Recipe:
    milestones = given.pop("milestones", None)
    if milestones is not None:
        try:
            given["milestones"] = tuple(float(m) for m in milestones.split(",") if m.strip())
        except ValueError:
            raise click.BadParameter(f"not a comma-separated list of fractions: {milestones!r}",
                                     param_hint="--milestones") from None
    try:
        return preset(preset_name, pruning=pruning).override(**given)
    except ValueError as err:
        raise click.ClickException(str(err)) from None


def finish_command(run_id: str) -> None:
    """Every stage prints the run ID it created as its last stdout line."""
    click.echo(run_id)


def stage_command(fn):
    """Turn StageError and other bad input into one clear line and a non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        configure_client()
        try:
            check_tracking_store()
            return fn(*args, **kwargs)
        except (StageError, ArchError, PruningError, CheckpointError) as err:
            raise click.ClickException(str(err)) from None
    return wrapper


@main.command()
@arch_options
@data_options
@recipe_options
@run_options
@click.option("--checkpoint-every", type=int, default=1, show_default=True,
              help="Epochs between resumable checkpoints.")
@click.option("--log-model/--no-log-model", default=True, show_default=True,
              help="Log the final network with mlflow.pytorch.log_model.")
@click.option("--resume-run-id", default=None,
              help="Continue this interrupted train run from its last checkpoint.")
@stage_command
def train(family, depth, width, growth, bottle, num_classes, dataset, data_dir, download,
          val_split, image_size, shapes_train, shapes_test, data_seed, preset, epochs,
          batch_size, lr, momentum, weight_decay, schedule, milestones, gamma, device,
          precision, channels_last, compile_, seed, progress, experiment, run_name,
          checkpoint_every, log_model, resume_run_id):
    """Train a network (full, reduced, or --bottle Z) from scratch as one MLflow run."""
    from mlprunes.stages.train import TrainJob, run_training

    data = data_config(dataset=dataset, data_dir=data_dir, download=download,
                       val_split=val_split, image_size=image_size, shapes_train=shapes_train,
                       shapes_test=shapes_test, data_seed=data_seed)
    classes = num_classes or dataset_classes(data)
    spec = spec_from_options(family, depth, width, growth, bottle, classes)
    preset_name = preset or family
    recipe = recipe_from_options(preset_name, epochs=epochs, batch_size=batch_size, lr=lr,
                                 momentum=momentum, weight_decay=weight_decay,
                                 schedule=schedule, milestones=milestones, gamma=gamma)
    job = TrainJob(spec=spec, recipe=recipe, data=data, preset=preset_name,
                   run=RunConfig(device=device, precision=precision,
                                 channels_last=channels_last, compile=compile_, seed=seed,
                                 progress=show_progress(progress)),
                   experiment=experiment,
                   run_name=run_name or f"train-{spec.name}"
                   + (f"-bottle{bottle:g}" if bottle is not None else ""),
                   checkpoint_every=checkpoint_every, log_model=log_model)
    finish_command(run_training(job, resume_run_id=resume_run_id))


@main.command()
@click.option("--base-run-id", required=True, help="The train run whose network to prune.")
@click.option("--criterion", type=click.Choice(["fisher", "l1", "random"]), default="fisher",
              show_default=True, help="Channel saliency.")
@click.option("--prunes", type=int, required=True, help="Channels to prune, one at a time.")
@click.option("--prune-every", type=int, default=100, show_default=True,
              help="Fine-tuning steps between prunes.")
@click.option("--save-every", type=int, default=100, show_default=True,
              help="Prunes between masked checkpoints (and at the end).")
@click.option("--val-every", type=int, default=10, show_default=True,
              help="Prunes between validation passes (and at the start and end).")
@flag("--keep-one", "Never prune a block's last channel.")
@data_options
@recipe_options
@run_options
@click.option("--log-model/--no-log-model", default=True, show_default=True)
@click.option("--resume-run-id", default=None,
              help="Continue this interrupted prune run from its last checkpoint.")
@stage_command
def prune(base_run_id, criterion, prunes, prune_every, save_every, val_every, keep_one,
          dataset, data_dir, download, val_split, image_size, shapes_train, shapes_test,
          data_seed, preset, epochs, batch_size, lr, momentum, weight_decay, schedule,
          milestones, gamma, device, precision, channels_last, compile_, seed, progress,
          experiment, run_name, log_model, resume_run_id):
    """Fine-tune a trained network and prune it channel by channel (Fisher, L1 or random)."""
    from mlprunes.stages.prune import PruneJob, base_data_config, run_pruning
    from mlprunes.stages.tracking import TAG_PRESET, get_run

    base = get_run(base_run_id, stage="train")
    data = data_config(base_data_config(base), dataset=dataset, data_dir=data_dir,
                       download=download, val_split=val_split, image_size=image_size,
                       shapes_train=shapes_train, shapes_test=shapes_test, data_seed=data_seed)
    preset_name = preset or base.data.tags.get(TAG_PRESET) or base.data.params.get("family", "wrn")
    recipe = recipe_from_options(preset_name, pruning=True, epochs=epochs,
                                 batch_size=batch_size, lr=lr, momentum=momentum,
                                 weight_decay=weight_decay, schedule=schedule,
                                 milestones=milestones, gamma=gamma)
    job = PruneJob(base_run_id=base_run_id, criterion=criterion, prunes=prunes, recipe=recipe,
                   data=data, prune_every=prune_every, save_every=save_every,
                   val_every=val_every, keep_one=keep_one, preset=preset_name,
                   run=RunConfig(device=device, precision=precision,
                                 channels_last=channels_last, compile=compile_, seed=seed,
                                 progress=show_progress(progress)),
                   experiment=experiment, run_name=run_name, log_model=log_model)
    finish_command(run_pruning(job, resume_run_id=resume_run_id))


def run_config(device, precision, channels_last, compile_, seed, progress) -> RunConfig:
    return RunConfig(device=device, precision=precision, channels_last=channels_last,
                     compile=compile_, seed=seed, progress=show_progress(progress))


def show_progress(progress: bool | None) -> bool:
    """Bars redraw with carriage returns: right in a terminal, clutter in a saved log."""
    import sys

    return sys.stderr.isatty() if progress is None else progress


@main.command()
@click.option("--prune-run-id", required=True, help="The prune run whose architecture to use.")
@click.option("--prunes", type=int, default=None, help="Use the architecture after N prunes.")
@click.option("--params-budget", type=int, default=None,
              help="Or: the first architecture with at most P parameters.")
@click.option("--budget", type=click.Choice(["scratch-e", "scratch-b"]), default="scratch-e",
              show_default=True,
              help="scratch-e: the base run's epochs; scratch-b: epochs scaled to the base "
                   "run's training FLOPs.")
@run_options
@click.option("--log-model/--no-log-model", default=True, show_default=True)
@click.option("--resume-run-id", default=None,
              help="Continue this interrupted scratch run from its last checkpoint.")
@stage_command
def scratch(prune_run_id, prunes, params_budget, budget, device, precision, channels_last,
            compile_, seed, progress, experiment, run_name, log_model, resume_run_id):
    """Train a pruned architecture from a fresh init (the paper's 'from scratch')."""
    from mlprunes.stages.scratch import load_pruned_source, run_scratch, source_data

    if (prunes is None) == (params_budget is None):
        raise click.UsageError("give exactly one of --prunes and --params-budget")
    source = load_pruned_source(prune_run_id)
    if params_budget is not None:
        prunes = source.prunes_for_budget(params_budget)
    source.spec_at(prunes)  # refuses a count beyond the history before any run starts
    finish_command(run_scratch(
        source, prunes=prunes, budget=budget, data=source_data(source),
        run=run_config(device, precision, channels_last, compile_, seed, progress),
        experiment=experiment, run_name=run_name, log_model=log_model,
        resume_run_id=resume_run_id))


@main.command()
@click.option("--prune-run-id", required=True, help="The prune run whose profile to scale.")
@click.option("--prunes", type=int, required=True,
              help="Take the width profile after N prunes.")
@click.option("--budgets", required=True, help="Parameter budgets, e.g. 200000,400000.")
@click.option("--budget", type=click.Choice(["scratch-e", "scratch-b"]), default="scratch-e",
              show_default=True)
@run_options
@click.option("--log-model/--no-log-model", default=True, show_default=True)
@stage_command
def family(prune_run_id, prunes, budgets, budget, device, precision, channels_last, compile_,
           seed, progress, experiment, run_name, log_model):
    """Scale one pruned width profile to several budgets; train each from scratch."""
    from mlprunes.stages.family import run_family
    from mlprunes.stages.scratch import load_pruned_source, source_data

    try:
        values = [int(float(b)) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of numbers: {budgets!r}",
                                 param_hint="--budgets") from None
    source = load_pruned_source(prune_run_id)
    finish_command(run_family(
        source, prunes=prunes, budgets=values, budget=budget, data=source_data(source),
        run=run_config(device, precision, channels_last, compile_, seed, progress),
        experiment=experiment, run_name=run_name, log_model=log_model))


@main.command()
@click.option("--run-id", required=True, help="A train, prune, scratch or family member run.")
@click.option("--prunes", type=int, default=None,
              help="For a prune run: the checkpoint at N prunes [default: its last].")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Latency batch size (batch 1 is always measured too).")
@click.option("--repeats", type=int, default=20, show_default=True)
@run_options
@stage_command
def evaluate(run_id, prunes, batch_size, repeats, device, precision, channels_last, compile_,
             seed, progress, experiment, run_name):
    """Test error, params, FLOPs and latency (masked vs compressed) of a run's network."""
    from mlprunes.stages.evaluate import run_evaluate

    finish_command(run_evaluate(
        run_id, prunes=prunes, batch_size=batch_size, repeats=repeats,
        run=run_config(device, precision, channels_last, compile_, seed, progress),
        experiment=experiment, run_name=run_name))


@main.command()
@click.option("--experiment", default=None,
              help="Compare the finished runs of this experiment [default: mlprunes, or the "
                   "experiment `mlflow run` chose].")
@click.option("--run-ids", default=None, help="Or: these runs (comma-separated).")
@click.option("--parent-run-id", default=None, help="Or: the runs of this pipeline run.")
@click.option("--run-name", default=None)
@stage_command
def compare(experiment, run_ids, parent_run_id, run_name):
    """Gather a study's finished runs into one table (and plots) as a compare run."""
    from mlprunes.stages.compare import run_compare

    ids = [r.strip() for r in (run_ids or "").split(",") if r.strip()]
    finish_command(run_compare(experiment or current_experiment(), ids, parent_run_id,
                               run_name))


def current_experiment() -> str:
    """Under `mlflow run`, the experiment it chose; else the default."""
    import os

    import mlflow

    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if exp_id:
        exp = mlflow.get_experiment(exp_id)
        if exp is not None:
            return exp.name
    return DEFAULT_EXPERIMENT


@main.command()
@click.option("--preset", default="demo", show_default=True,
              help="demo (shapes, minutes on a CPU), tiny (a smoke test), wrn-40-2, "
                   "densenet-bc-100 (CIFAR-10, the paper's settings, for a GPU).")
@click.option("--data-dir", default=None, help="Where CIFAR lives, for the CIFAR presets.")
@flag("--download", "Download CIFAR if it is missing.")
@run_options
@stage_command
def pipeline(preset, data_dir, download, device, precision, channels_last, compile_, seed,
             progress, experiment, run_name):
    """Run the whole study as child runs of one pipeline run, reusing finished steps."""
    from mlprunes.stages.pipeline import plan_for, run_pipeline

    plan = plan_for(preset)
    if data_dir is not None or download:
        plan = replace(plan, data=replace(plan.data, data_dir=data_dir or plan.data.data_dir,
                                          download=download))
    finish_command(run_pipeline(
        preset, run=run_config(device, precision, channels_last, compile_, seed, progress),
        experiment=experiment, plan=plan))


if __name__ == "__main__":
    main()
