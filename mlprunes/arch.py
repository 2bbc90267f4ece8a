"""The architecture description: one small JSON value that every other part is driven by.

A full network, a uniform bottleneck, a pruned network and a scaled family member differ only in
`mids`, the width of every prunable channel group. Networks are built from it
(`mlprunes.nets.build`), counted from it (`mlprunes.counting`), and rebuilt from a prune history.

Two kinds of description share that interface:
- `ArchSpec`, the seed's two families (`wrn`, `densenet`), whose structure is written out in
  `mlprunes.nets` and whose groups are the middle channels of every block;
- `GraphSpec`, any other network: a builder and its arguments (ours, `resnet` and `vgg`; a
  `torchvision:NAME` classifier; a user's `package.module:factory`), the input shape, and the
  widths of its prunable channel groups, each named after the module that produces it. Which
  layers share a channel is found by a dependency graph (`mlprunes.groups`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

FAMILIES = ("wrn", "densenet")
GRAPH_BUILDERS = ("resnet", "vgg")     # ours, described by their dependency graph
GROUP_RULES = ("internal", "all")


class ArchError(ValueError):
    """An invalid architecture description; `field` names the offending field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"invalid architecture: {field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class ArchSpec:
    """A WRN-d-k or DenseNet-BC-d (k) with explicit per-block middle widths.

    `width` is the WRN widening factor k (stage channels 16, 16k, 32k, 64k); `growth` and
    `reduction` are the DenseNet-BC growth rate and transition compression. Fields of the other
    family are None.
    """

    family: str
    depth: int
    num_classes: int
    mids: tuple[int, ...] = field(default=())
    width: float | None = None
    growth: int | None = None
    reduction: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mids", tuple(self.mids))
        _validate(self)

    # -- derived structure -------------------------------------------------------------------

    @property
    def blocks_per_stage(self) -> int:
        """WRN blocks per stage, or DenseNet-BC bottleneck layers per dense block."""
        return (self.depth - 4) // 6

    @property
    def num_blocks(self) -> int:
        return 3 * self.blocks_per_stage

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """WRN only: channels after the stem and after each of the three stages."""
        k = self.width
        return (16, int(16 * k), int(32 * k), int(64 * k))

    def full_mids(self) -> tuple[int, ...]:
        """Middle widths of the unpruned network of this depth and width/growth."""
        if self.family == "wrn":
            return tuple(c for c in self.stage_channels[1:] for _ in range(self.blocks_per_stage))
        return (4 * self.growth,) * self.num_blocks

    @property
    def prunable_channels(self) -> int:
        return sum(self.mids)

    @property
    def can_empty_groups(self) -> bool:
        """A WRN block emptied is its shortcut, a DenseNet layer adds zeros: blocks may vanish."""
        return True

    @property
    def name(self) -> str:
        """The family member's short name, e.g. `wrn-40-2` or `densenet-bc-100-12` (the middle
        widths are not part of it)."""
        if self.family == "wrn":
            return f"wrn-{self.depth}-{_normalise_number(self.width)}"
        return f"densenet-bc-{self.depth}-{self.growth}"

    # -- variants ------------------------------------------------------------------------------

    def with_mids(self, mids: Iterable[int]) -> "ArchSpec":
        return replace(self, mids=tuple(int(m) for m in mids))

    def rounded(self, multiple: int) -> "ArchSpec":
        """Every middle width at the nearest multiple of `multiple` (a width of 0 stays 0, any
        other is at least `multiple`): the widths that run fast on hardware that computes
        channels in groups."""
        return self.with_mids(round_width(m, multiple) for m in self.mids)

    # -- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mids"] = list(self.mids)
        return {k: v for k, v in data.items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Spec":
        """A description of either kind: one with a `builder` is a `GraphSpec`."""
        if isinstance(data, dict) and "builder" in data:
            return GraphSpec.from_dict(data)
        known = {"family", "depth", "num_classes", "mids", "width", "growth", "reduction"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchError(unknown[0], "unknown field")
        for required in ("family", "depth", "num_classes", "mids"):
            if required not in data:
                raise ArchError(required, "missing")
        return cls(**{k: data[k] for k in known if k in data})

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError("json", f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ArchError("json", "expected a JSON object")
        return cls.from_dict(data)


@dataclass(frozen=True)
class GraphSpec:
    """Any convolutional network: `builder` called with `args` (and `num_classes`), traced at
    `input_size` (channels, height, width), with the widths `mids` of its prunable channel
    groups `names` (each named after the module that produces the channel: `layer1.0.conv1`).

    `groups` is the rule that chose them: `internal`, the channels no residual add or
    concatenation couples (the paper's rule), or `all`. The classifier's outputs are never a
    group. Building, counting and checking the names against the network need the builder,
    which `mlprunes.nets.builders` imports only when it is ours, torchvision's, or in a module
    the user allows; this class itself never imports anything.
    """

    builder: str
    num_classes: int
    names: tuple[str, ...]
    mids: tuple[int, ...]
    args_json: str = "{}"
    input_size: tuple[int, int, int] = (3, 32, 32)
    groups: str = "internal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "mids", tuple(self.mids))
        object.__setattr__(self, "input_size", tuple(self.input_size))
        _validate_graph(self)

    # -- what the rest of mlprunes reads, as of an ArchSpec -----------------------------------

    @property
    def family(self) -> str:
        """The builder, as `--arch` spells it."""
        return self.builder

    @property
    def args(self) -> dict[str, Any]:
        return json.loads(self.args_json)

    @property
    def depth(self) -> int | None:
        return self.args.get("depth")

    width = None
    growth = None
    reduction = None

    @property
    def num_blocks(self) -> int:
        return len(self.mids)

    @property
    def prunable_channels(self) -> int:
        return sum(self.mids)

    @property
    def can_empty_groups(self) -> bool:
        """A group of a traced network keeps at least one channel: nothing in its structure
        says what a layer with no inputs or outputs would become."""
        return False

    def full_mids(self) -> tuple[int, ...]:
        """The group widths of the network its builder makes (needs the builder)."""
        from mlprunes.groups import template_widths   # the network, not this description
        return template_widths(self)

    @property
    def name(self) -> str:
        """`resnet-56`, `vgg-16`, `torchvision-resnet18`, `package.module-factory`; arguments
        other than depth add a short digest of them (the group rule, the classes and the input
        size are not in the name, as a WRN's classes are not in `wrn-40-2`)."""
        args = self.args
        base = self.builder.replace(":", "-")
        if self.builder in GRAPH_BUILDERS and "depth" in args:
            base = f"{base}-{args['depth']}"
        rest = {k: v for k, v in args.items()
                if not (k == "depth" and self.builder in GRAPH_BUILDERS)}
        if rest:
            base += "-" + hashlib.sha1(canonical_json(rest).encode()).hexdigest()[:6]
        return base

    # -- variants --------------------------------------------------------------------------------

    def with_mids(self, mids: Iterable[int]) -> "GraphSpec":
        return replace(self, mids=tuple(int(m) for m in mids))

    def rounded(self, multiple: int) -> "GraphSpec":
        return self.with_mids(round_width(m, multiple) for m in self.mids)

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"builder": self.builder, "args": self.args, "num_classes": self.num_classes,
                "input_size": list(self.input_size), "groups": self.groups,
                "widths": [[n, m] for n, m in zip(self.names, self.mids)]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphSpec":
        known = {"builder", "args", "num_classes", "input_size", "groups", "widths"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchError(unknown[0], "unknown field")
        for required in ("builder", "num_classes", "widths"):
            if required not in data:
                raise ArchError(required, "missing")
        widths = data["widths"]
        if not isinstance(widths, list) or not all(
                isinstance(w, list) and len(w) == 2 for w in widths):
            raise ArchError("widths", "must be a list of [group name, width] pairs")
        args = data.get("args", {})
        if not isinstance(args, dict):
            raise ArchError("args", f"must be a JSON object, got {args!r}")
        input_size = data.get("input_size", [3, 32, 32])
        if not isinstance(input_size, list):
            raise ArchError("input_size", f"must be [channels, height, width], got {input_size!r}")
        try:
            args_json = canonical_json(args)
        except (TypeError, ValueError):
            raise ArchError("args", "must hold plain, finite values") from None
        return cls(builder=data["builder"], num_classes=data["num_classes"],
                   names=tuple(w[0] for w in widths), mids=tuple(w[1] for w in widths),
                   args_json=args_json, input_size=tuple(input_size),
                   groups=data.get("groups", "internal"))

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        return ArchSpec.from_json(text)


Spec = ArchSpec | GraphSpec


def canonical_json(value: Any) -> str:
    """One text per value: keys sorted, no spaces, so that equal arguments key alike."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def round_width(width: int, multiple: int) -> int:
    """`width` at the nearest multiple of `multiple` (halves up), 0 only if it was 0."""
    if multiple < 1:
        raise ArchError("round_to", f"must be at least 1, got {multiple}")
    if width == 0:
        return 0
    return max(multiple, multiple * int(width / multiple + 0.5))


def wrn(depth: int = 40, width: float = 2, num_classes: int = 10,
        bottle: float | None = None) -> ArchSpec:
    """WRN-depth-width; with `bottle` Z every block's middle width is int(out * Z)."""
    return _with_default_mids(dict(family="wrn", depth=depth, width=_normalise_number(width),
                                   num_classes=num_classes), bottle)


def densenet(depth: int = 100, growth: int = 12, num_classes: int = 10,
             reduction: float = 0.5, bottle: float | None = None) -> ArchSpec:
    """DenseNet-BC-depth (growth k); with `bottle` Z every middle width is int(4k * Z)."""
    return _with_default_mids(dict(family="densenet", depth=depth, growth=growth,
                                   reduction=_normalise_number(reduction),
                                   num_classes=num_classes), bottle)


def make_spec(family: str, *, depth: int | None = None, width: float | None = None,
              growth: int | None = None, num_classes: int = 10,
              bottle: float | None = None, args: dict[str, Any] | None = None,
              groups: str | None = None, input_size: int | None = None) -> Spec:
    """Build a description from command-line style options; unset options take the paper's
    defaults (WRN-40-2, DenseNet-BC-100 with k=12, ResNet-56, VGG-16).

    Any builder but `wrn` and `densenet` is traced to find its groups, at `input_size` x
    `input_size` images (default 32; the seed's families ignore it), which needs its code: see
    `mlprunes.nets.builders` for which builders are imported."""
    if family in FAMILIES and (args or groups not in (None, "internal")):
        raise ArchError("args" if args else "groups",
                        f"{family} has its own options (--depth, --width, --growth) and "
                        f"prunes its blocks' middle channels only")
    if family not in FAMILIES:
        if width is not None or growth is not None:
            raise ArchError("width" if width is not None else "growth",
                            f"applies to wrn and densenet only; for {family}, use --bottle "
                            f"(a uniform width multiplier) or its own arguments (--arch-args)")
        from mlprunes.groups import describe   # the network must be traced: not this module
        size = 32 if input_size is None else input_size
        if not _is_int(size) or size < 1:
            raise ArchError("input_size", f"must be a positive integer, got {size!r}")
        return describe(family, args=args or {}, depth=depth, num_classes=num_classes,
                        groups=groups, bottle=bottle, input_size=(3, size, size))
    if family == "wrn":
        if growth is not None:
            raise ArchError("growth", "applies to densenet only; use --width for wrn")
        return wrn(depth=40 if depth is None else depth, width=2 if width is None else width,
                   num_classes=num_classes, bottle=bottle)
    if family == "densenet":
        if width is not None:
            raise ArchError("width", "applies to wrn only; use --growth for densenet")
        return densenet(depth=100 if depth is None else depth,
                        growth=12 if growth is None else growth,
                        num_classes=num_classes, bottle=bottle)
    raise AssertionError("unreachable")


def _with_default_mids(fields: dict[str, Any], bottle: float | None) -> ArchSpec:
    if bottle is not None and not (_is_number(bottle) and bottle > 0):
        raise ArchError("bottle", f"must be a positive finite number, got {bottle!r}")
    # Validate everything but the widths first (with placeholder widths of the right count), so
    # that a bad depth is reported as a bad depth and not as a wrong-length width list.
    probe = ArchSpec(**fields, mids=_placeholder_mids(fields))
    # The full middle width is what a bottleneck multiplies: a WRN block's output, 4k for DenseNet.
    full = probe.full_mids()
    return probe.with_mids(full if bottle is None else (int(m * bottle) for m in full))


def _placeholder_mids(fields: dict[str, Any]) -> tuple[int, ...]:
    depth = fields["depth"]
    if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 10 and (depth - 4) % 6 == 0:
        return (1,) * (3 * ((depth - 4) // 6))
    return ()


def _validate(spec: ArchSpec) -> None:
    if spec.family not in FAMILIES:
        raise ArchError("family", f"must be one of {', '.join(FAMILIES)}, got {spec.family!r}")
    if not _is_int(spec.depth) or spec.depth < 10 or (spec.depth - 4) % 6 != 0:
        kind = "WRN" if spec.family == "wrn" else "DenseNet-BC"
        raise ArchError("depth", f"{kind} depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, "
                                 f"..., 100), got {spec.depth!r}")
    if not _is_int(spec.num_classes) or spec.num_classes < 1:
        raise ArchError("num_classes", f"must be a positive integer, got {spec.num_classes!r}")
    if spec.family == "wrn":
        if spec.growth is not None or spec.reduction is not None:
            raise ArchError("growth" if spec.growth is not None else "reduction",
                            "applies to densenet only")
        if not _is_number(spec.width) or spec.width <= 0:
            raise ArchError("width", f"must be a positive finite number, got {spec.width!r}")
        if int(16 * spec.width) < 1:
            raise ArchError("width", f"too small: int(16 * {spec.width}) is 0 channels")
    else:
        if spec.width is not None:
            raise ArchError("width", "applies to wrn only")
        if not _is_int(spec.growth) or spec.growth < 1:
            raise ArchError("growth", f"must be a positive integer, got {spec.growth!r}")
        if not _is_number(spec.reduction) or not 0 < spec.reduction <= 1:
            raise ArchError("reduction", f"must be in (0, 1], got {spec.reduction!r}")
    if len(spec.mids) != spec.num_blocks:
        raise ArchError("mids", f"needs one width per prunable block ({spec.num_blocks} for "
                                f"depth {spec.depth}), got {len(spec.mids)}")
    for i, m in enumerate(spec.mids):
        if not _is_int(m):
            raise ArchError("mids", f"block {i} width must be an integer, got {m!r}")
        if m < 0:
            raise ArchError("mids", f"block {i} width must be >= 0, got {m}")


_BUILDER = re.compile(r"^(resnet|vgg|torchvision:[A-Za-z_][A-Za-z0-9_]*|"
                      r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*)$")


def valid_builder(builder: Any) -> bool:
    """`resnet`, `vgg`, `torchvision:NAME` or `package.module:factory`: the spelling only."""
    return isinstance(builder, str) and bool(_BUILDER.match(builder))


def _plain_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (int, float)):
        return isinstance(value, int) or math.isfinite(value)
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


def _validate_graph(spec: GraphSpec) -> None:
    if not valid_builder(spec.builder):
        raise ArchError("builder", f"must be wrn, densenet, resnet, vgg, torchvision:NAME or "
                                   f"package.module:factory, got {spec.builder!r}")
    try:
        args = json.loads(spec.args_json)
    except (TypeError, json.JSONDecodeError):
        raise ArchError("args", "must be a JSON object") from None
    if not isinstance(args, dict) or not _plain_json(args):
        raise ArchError("args", "must be a JSON object of plain values (numbers, strings, "
                                "booleans, lists, objects)")
    if "num_classes" in args:
        raise ArchError("args", "num_classes is its own field (--num-classes)")
    if not _is_int(spec.num_classes) or spec.num_classes < 1:
        raise ArchError("num_classes", f"must be a positive integer, got {spec.num_classes!r}")
    if len(spec.input_size) != 3 or not all(_is_int(d) and d >= 1 for d in spec.input_size):
        raise ArchError("input_size", f"must be three positive integers (channels, height, "
                                      f"width), got {list(spec.input_size)!r}")
    if spec.groups not in GROUP_RULES:
        raise ArchError("groups", f"must be one of {', '.join(GROUP_RULES)}, got "
                                  f"{spec.groups!r}")
    if len(spec.names) != len(spec.mids):
        raise ArchError("widths", "needs one width per group name")
    if not all(isinstance(n, str) and n for n in spec.names) or len(set(spec.names)) != len(
            spec.names):
        raise ArchError("widths", "group names must be distinct, non-empty module names")
    for name, m in zip(spec.names, spec.mids):
        if not _is_int(m) or m < 0:
            raise ArchError("widths", f"group {name} width must be an integer >= 0, got {m!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float: NaN and infinity are no width, bottleneck or rate."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _normalise_number(value: Any) -> Any:
    """2.0 -> 2, so that the same network has one JSON form (and one MLflow param string)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
