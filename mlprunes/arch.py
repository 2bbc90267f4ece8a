"""The architecture description: one small JSON value that every other part is driven by.

A full network, a uniform bottleneck, a pruned network and a scaled family member differ only in
`mids`, the middle width of every prunable block (the outputs of a WRN block's first conv, the
bottleneck width of a DenseNet-BC layer). Networks are built from it (`mlprunes.nets.build`),
counted from it without being built (`mlprunes.counting`), and rebuilt from a prune history.
"""

from __future__ import annotations

import math

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

FAMILIES = ("wrn", "densenet")


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
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        known = {"family", "depth", "num_classes", "mids", "width", "growth", "reduction"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchError(unknown[0], "unknown field")
        for required in ("family", "depth", "num_classes", "mids"):
            if required not in data:
                raise ArchError(required, "missing")
        return cls(**{k: data[k] for k in known if k in data})

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchError("json", f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ArchError("json", "expected a JSON object")
        return cls.from_dict(data)


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
              bottle: float | None = None) -> ArchSpec:
    """Build a description from command-line style options; unset options take the paper's
    defaults (WRN-40-2, DenseNet-BC-100 with k=12)."""
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
    raise ArchError("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")


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
