"""One colour per group of runs, shared by the report's plots and the MLflow UI's run colours,
so that the two read alike.

Groups a reader compares side by side get related colours: pruned curves blues and greens (one
colour per criterion), from-scratch pruned architectures oranges, families pinks and purples,
reduced baselines reds and purples. In the UI each replicate (seed) of a group gets a shade of
the group's colour: the report draws their mean in the colour itself.
"""

from __future__ import annotations

import colorsys
import re

STYLES = [
    # Fine-tuned after pruning: the pruned curve's colour family, a marker of its own (before
    # the "Fisher prune" prefix, which would take them too).
    ("Fisher pruned, then fine-tuned", "#17becf", "d"),
    ("L1 pruned, then fine-tuned", "#98df8a", "d"),
    ("Random pruned, then fine-tuned", "#525252", "d"),
    ("Fisher prune", "#1f77b4", "."), ("L1 prune", "#2ca02c", "."),
    ("L1-mean prune", "#a1d99b", "."), ("L1-layer prune", "#41ab5d", "."),
    ("L1-signed prune", "#00441b", "."),
    ("L2 prune", "#006d2c", "."), ("LAMP prune", "#74c476", "."),
    ("Taylor prune", "#6baed6", "."), ("Hessian prune", "#00a087", "."),
    ("BN scale prune", "#08306b", "."), ("FPGM prune", "#3182bd", "."),
    ("Random prune", "#7f7f7f", "."), ("Fisher arch. from scratch (Scratch-B)", "#8c564b", "P"),
    ("Fisher arch", "#ff7f0e", "o"), ("L1 arch", "#bcbd22", "s"),
    ("Random arch", "#c7c7c7", "o"), ("Fisher family", "#e377c2", "D"),
    ("L1 family", "#ce6dbd", "D"), ("Full network", "#000000", "*"),
    ("Reduced depth and width", "#ad494a", "<"), ("Reduced depth", "#d62728", "v"),
    # Width (WRN) and growth (DenseNet) are one kind of reduction, never in one study.
    ("Reduced width", "#9467bd", "^"), ("Reduced growth", "#9467bd", "^"),
    ("Bottleneck", "#bd9e39", "X"), ("Uniform width", "#7b4173", "^"),
    ("Smaller network", "#843c39", "v"),
    ("Trained from scratch", "#393b79", "h"),
]
OTHER = ("#333333", "o")

# Lightness steps of the shades of one colour, seed by seed: seed 0 has the colour itself, the
# next ones alternate lighter and darker, further each time.
_SHADE_STEPS = (0.0, 0.16, -0.12, 0.30, -0.22, 0.42, -0.30)


# A criterion's label may carry its FLOPs penalty and channels per prune (`Fisher+flops0.3-r8
# prune`): its colour is the criterion's.
_LABEL_SUFFIX = re.compile(r"(\+flops[0-9.e-]+)?(-r\d+)?(?= )")


def style(group: str) -> tuple[str, str]:
    """A group's colour and marker: those of the first entry of STYLES that its name (its
    criterion's label suffixes aside) starts with."""
    group = _LABEL_SUFFIX.sub("", group, count=1)
    for prefix, colour, marker in STYLES:
        if group.startswith(prefix):
            return colour, marker
    return OTHER


def shade(colour: str, index: int) -> str:
    """The `index`-th shade of a `#rrggbb` colour (0: the colour itself)."""
    if index == 0:
        return colour
    # Past the last step the shades repeat: more replicates than that are told apart by name.
    step = _SHADE_STEPS[1 + (index - 1) % (len(_SHADE_STEPS) - 1)]
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, light, s = colorsys.rgb_to_hls(r, g, b)
    if not 0.1 <= light + step <= 0.9:   # past black or white: the other way, so shades differ
        step = -step
    light = min(0.9, max(0.1, light + step))
    return "#" + "".join(f"{round(c * 255):02x}" for c in colorsys.hls_to_rgb(h, light, s))


def run_colour(group: str, seed: int | None) -> str:
    """A run's colour: its group's, in the shade of its seed (seed 0: the colour itself), so
    that a run shared by two studies has one colour in both."""
    return shade(style(group)[0], seed or 0)
