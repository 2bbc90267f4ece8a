"""The `mlprunes` command line: thin click commands over the package."""

from __future__ import annotations

import json

import click

from mlprunes.arch import ArchError, ArchSpec, make_spec
from mlprunes.counting import count


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
    for option in reversed(options):
        command = option(command)
    return command


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


if __name__ == "__main__":
    main()
