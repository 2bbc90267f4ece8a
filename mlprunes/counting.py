"""Parameters and FLOPs of a network, computed from its description without building it.

Parameters are trainable parameters (BN running statistics are buffers and not counted), equal
to `sum(p.numel() for p in build(spec).parameters())`. FLOPs are multiply-accumulates per image
of the conv and linear layers at the given input size; BN, ReLU, pooling, additions and
concatenations are not counted, as is usual in the pruning literature.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlprunes.arch import ArchSpec, GraphSpec, Spec
from mlprunes.nets.densenet import transition_out
from mlprunes.nets.wrn import needs_shortcut_conv

Size = tuple[int, int]


@dataclass(frozen=True)
class Counts:
    params: int
    flops: int
    outputs: int = 0   # values the conv and linear layers produce per image

    @property
    def cost_flops(self) -> int:
        """Floating-point operations per image as Theis et al. (2018) count a layer's cost:
        H * W * C_out * (2 * C_in * K^2 + 1), a multiply and an add per weight and one more
        per output, i.e. 2 * MACs + outputs."""
        return 2 * self.flops + self.outputs


def count(spec: ArchSpec, image_size: int | Size = 32) -> Counts:
    """Parameters and MACs per image of `spec` at `image_size` (an int for square images)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(size) < 1:
        raise ValueError(f"image size must be positive, got {image_size!r}")
    if isinstance(spec, GraphSpec):
        from mlprunes.groups import count_graph   # a traced network is counted from its layers
        return Counts(*count_graph(spec, size))
    tally = _Tally()
    if spec.family == "wrn":
        _count_wrn(spec, size, tally)
    else:
        _count_densenet(spec, size, tally)
    return Counts(tally.params, tally.flops, tally.outputs)


def count_params(spec: ArchSpec) -> int:
    return count(spec).params


def size_metrics(spec: ArchSpec, image_size: int | Size = 32) -> dict[str, float]:
    """A network's size as the stages log it: parameters, MACs per image, prunable channels."""
    counts = count(spec, image_size)
    return {"params": counts.params, "flops": counts.flops,
            "channels_left": spec.prunable_channels}


def training_macs(flops_per_image: float, images: int) -> float:
    """Multiply-accumulates spent training on `images` images: forward and backward, taken as
    three forward passes (the usual estimate)."""
    return 3.0 * flops_per_image * images


class _Tally:
    def __init__(self) -> None:
        self.params = 0
        self.flops = 0
        self.outputs = 0

    def conv(self, cin: int, cout: int, kernel: int, size: Size, stride: int = 1) -> Size:
        """Add a bias-free conv with 'same' padding; return its output size."""
        out = conv_out_size(size, kernel, stride)
        weights = cin * cout * kernel * kernel
        self.params += weights
        self.flops += weights * out[0] * out[1]
        self.outputs += cout * out[0] * out[1]
        return out

    def bn(self, channels: int) -> None:
        self.params += 2 * channels

    def linear(self, cin: int, cout: int) -> None:
        self.params += cin * cout + cout
        self.flops += cin * cout
        self.outputs += cout


def conv_out_size(size: Size, kernel: int, stride: int) -> Size:
    pad = kernel // 2
    return tuple((d + 2 * pad - kernel) // stride + 1 for d in size)


def _count_wrn(spec: ArchSpec, size: Size, t: _Tally) -> None:
    channels = spec.stage_channels
    size = t.conv(3, channels[0], 3, size)
    in_ch = channels[0]
    mids = iter(spec.mids)
    for stage, out_ch in enumerate(channels[1:]):
        for b in range(spec.blocks_per_stage):
            stride = 2 if stage > 0 and b == 0 else 1
            mid = next(mids)
            shortcut = needs_shortcut_conv(in_ch, out_ch, stride)
            if mid > 0 or shortcut:
                t.bn(in_ch)
            if shortcut:
                t.conv(in_ch, out_ch, 1, size, stride)
            if mid > 0:
                inner = t.conv(in_ch, mid, 3, size, stride)
                t.bn(mid)
                t.conv(mid, out_ch, 3, inner)
            size = conv_out_size(size, 3, stride)
            in_ch = out_ch
    t.bn(in_ch)
    t.linear(in_ch, spec.num_classes)


def _count_densenet(spec: ArchSpec, size: Size, t: _Tally) -> None:
    k = spec.growth
    channels = 2 * k
    size = t.conv(3, channels, 3, size)
    mids = iter(spec.mids)
    for stage in range(3):
        for _ in range(spec.blocks_per_stage):
            mid = next(mids)
            if mid > 0:
                t.bn(channels)
                t.conv(channels, mid, 1, size)
                t.bn(mid)
                t.conv(mid, k, 3, size)
            channels += k
        if stage < 2:
            out = transition_out(channels, spec.reduction)
            t.bn(channels)
            t.conv(channels, out, 1, size)
            size = (size[0] // 2, size[1] // 2)
            channels = out
    t.bn(channels)
    t.linear(channels, spec.num_classes)


def smallest_params(spec: Spec, round_to: int = 1) -> int:
    """Parameters of the smallest network with this skeleton: every prunable block at zero
    (every group of a traced network at `round_to` channels)."""
    return count_params(spec.with_mids([_floor(spec, round_to)] * spec.num_blocks))


def _floor(spec: Spec, round_to: int = 1) -> int:
    return 0 if spec.can_empty_groups else round_to


def scale_to_budget(spec: ArchSpec, params_budget: int, round_to: int = 1) -> ArchSpec:
    """The width profile of `spec` scaled by one factor so that the network has as many
    parameters as possible without exceeding `params_budget` ("prune once, get a family").

    Widths are round(mid * factor), or with `round_to` R the nearest multiple of R (which may
    be 0); the factor is found by bisection, since the count grows monotonically with it.
    A traced network's groups stay between R (or one channel) and its builder's widths, since
    it is built by cutting the builder's network. Raises ValueError for a budget below the
    smallest network.
    """
    if round_to < 1:
        raise ValueError(f"round_to must be at least 1, got {round_to}")
    smallest = smallest_params(spec, round_to)
    if params_budget < smallest:
        raise ValueError(f"a budget of {params_budget:,} parameters is below the smallest "
                         f"{spec.name} with this skeleton ({smallest:,} parameters, every "
                         f"prunable block " + ("empty)" if spec.can_empty_groups else
                                               f"at {round_to} channel(s))"))
    if not any(spec.mids):
        return spec

    if round_to < 1:
        raise ValueError(f"round_to must be at least 1, got {round_to}")

    floor = _floor(spec, round_to)
    ceiling = spec.full_mids() if isinstance(spec, GraphSpec) else None

    def scaled(factor: float) -> Spec:
        widths = [max(floor, round_to * int(round(m * factor / round_to))) for m in spec.mids]
        if ceiling is not None:
            widths = [min(w, c) for w, c in zip(widths, ceiling)]
        return spec.with_mids(widths)

    if ceiling is not None and count_params(spec.with_mids(ceiling)) < params_budget:
        raise ValueError(f"a budget of {params_budget:,} parameters is above {spec.name} at its "
                         f"builder's own widths ({count_params(spec.with_mids(ceiling)):,}): a "
                         f"traced network's groups cannot grow past them")
    low, high = 0.0, 1.0
    while count_params(scaled(high)) <= params_budget:
        low, high = high, high * 2
        if high > 1e6:
            break
    for _ in range(60):
        mid = (low + high) / 2
        if count_params(scaled(mid)) <= params_budget:
            low = mid
        else:
            high = mid
    return scaled(low)
