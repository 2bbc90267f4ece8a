"""Channel groups of any network: found by a dependency graph, masked in place, counted and cut.

A channel group is a set of channels that must go together: a conv's output channel, the BN
that normalises it, the next layers' input channels, and across a residual add or a
concatenation every layer that adds into or reads the same channel. Torch-Pruning's
`DependencyGraph` finds them by tracing the network, so nothing here is written for one
architecture. A group is named after the first module (in `named_modules` order) that produces
it, `layer1.0.conv1`, and its channels are numbered as that module's output channels.

Masks. A masked network keeps its full width; each group's 0/1 mask is folded into the
per-channel affine of every member that produces the channel: a BN's weight and bias, or the
weight rows and bias of a conv or linear layer that no BN of the group follows. For m in
{0, 1}, bn(x) * m == x_hat * (gamma * m) + beta * m, so a masked step costs a C-element product
per layer, not a full-size one, and a channel masked at every producer is zero wherever it is
read: exactly the network with that channel removed (`compress`).

Fisher. Theis et al.'s estimate for removing a channel everywhere it appears is, per sample, the
sum over the producers and positions of a * dL/da (a the producer's masked output; through a
ReLU, z * dL/dz = relu(z) * dL/d relu(z), so a BN's output serves as well as the ReLU's), then
0.5 * the mean over samples of its square. `ChannelGroup.observe` delivers that per-sample sum.

Refused before any run, in one line naming the layer: grouped convolutions that are not
depthwise, parametrised layers of other kinds inside a group, parameters outside any layer, and
any network whose graph Torch-Pruning cannot build or prune (channel shuffle, for one).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlprunes.arch import ArchError, GraphSpec, GROUP_RULES, canonical_json
from mlprunes.nets.builders import first_line as _first_line

PerSampleObserver = Callable[[torch.Tensor], None]   # (N, width) per-sample sums of a * g

_PARAMETRISED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


@dataclass(frozen=True)
class Member:
    """One module's share of a group: which of its channels (`index`, on its output side,
    `role="out"`, or its input side, `"in"`) carry which group channel (`root`)."""
    module: str
    role: str
    index: tuple[int, ...]
    root: tuple[int, ...]


@dataclass(frozen=True)
class GroupInfo:
    name: str
    width: int
    members: tuple[Member, ...]
    masked: tuple[Member, ...]     # the producers whose per-channel affine carries the mask
    coupled: bool                  # a residual add or a concatenation couples it


# -- tracing ----------------------------------------------------------------------------------------

def analyse(model: nn.Module, input_size: Sequence[int], rule: str = "all",
            label: str = "the network") -> list[GroupInfo]:
    """The prunable channel groups of `model` (traced at `input_size`, channels first), in the
    order of `named_modules`, under `rule` (`internal` or `all`); the classifier's outputs and
    anything feeding the output unchanged are never a group."""
    import torch_pruning as tp
    from torch_pruning import ops

    if rule not in GROUP_RULES:
        raise ArchError("groups", f"must be one of {', '.join(GROUP_RULES)}, got {rule!r}")
    names = {m: n for n, m in model.named_modules()}
    _refuse_unsupported(model, label)
    was_training = model.training
    model.eval()
    try:
        example = torch.randn(1, *input_size)
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        except Exception as err:  # Torch-Pruning fails in many ways on what it cannot trace
            raise ArchError("arch", f"{label}: its dependency graph cannot be built at input "
                                    f"{list(input_size)} ({type(err).__name__}: "
                                    f"{_first_line(err)})") from None
        groups, seen = [], set()
        modules = dict(model.named_modules())
        for name, module in model.named_modules():
            if (not isinstance(module, (nn.Conv2d, nn.Linear)) or module in seen
                    or module not in graph.module2node or _depthwise(module)):
                continue
            width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            prune_fn = (tp.prune_conv_out_channels if isinstance(module, nn.Conv2d)
                        else tp.prune_linear_out_channels)
            try:
                group = graph.get_pruning_group(module, prune_fn, list(range(width)))
            except Exception as err:
                raise ArchError("arch", f"{label}: the channels of {name} cannot be grouped "
                                        f"({type(err).__name__}: {_first_line(err)})") from None
            info, is_output = _group_info(graph, group, name, width, names, ops, label)
            for member in info.members:
                if member.role == "out":
                    seen.add(modules[member.module])
            if is_output or (rule == "internal" and info.coupled):
                continue
            groups.append(info)
    finally:
        model.train(was_training)
    return groups


def _group_info(graph, group, name: str, width: int, names, ops, label: str):
    members, coupled, is_output = [], False, False
    producers_followed_by_bn = set()
    bn_nodes = set()
    for item in group:
        node, target = item.dep.target, item.dep.target.module
        if node.type == ops.OPTYPE.OUTPUT:
            is_output = True
        if node.type == ops.OPTYPE.CONCAT:
            coupled = True
        if node.type == ops.OPTYPE.ELEMENTWISE and any(
                op in str(node.name) for op in ("AddBackward", "SubBackward")):
            coupled = True
        if isinstance(target, nn.Parameter):
            raise ArchError("arch", f"{label}: a parameter outside any layer "
                                    f"({graph._param_to_name.get(target, '?')}) shares the "
                                    f"channels of {name}; such parameters cannot be pruned here")
        if not isinstance(target, nn.Module) or target not in names:
            continue
        if not isinstance(target, _PARAMETRISED) and any(True for _ in target.parameters()):
            raise ArchError("arch", f"{label}: {names[target]} ({type(target).__name__}) shares "
                                    f"the channels of {name}; only Conv2d, Linear and "
                                    f"BatchNorm2d layers can be pruned here")
        if not any(True for _ in target.parameters(recurse=False)):
            continue
        role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
        if isinstance(target, nn.BatchNorm2d):
            role = "out"
            bn_nodes.add(node)
        if role == "out" and not node.outputs and not isinstance(target, nn.BatchNorm2d):
            is_output = True   # the last layer: its outputs are the network's
        members.append(Member(names[target], role, tuple(int(i) for i in item.idxs),
                              tuple(int(r) for r in item.root_idxs)))
    for item in group:
        node = item.dep.target
        if isinstance(node.module, (nn.Conv2d, nn.Linear)) and any(
                out in bn_nodes for out in node.outputs):
            producers_followed_by_bn.add(names[node.module])
    members = _merge(members)
    modules = dict(graph.model.named_modules())
    masked = tuple(m for m in members if m.role == "out" and (
        isinstance(modules[m.module], nn.BatchNorm2d) or m.module not in producers_followed_by_bn))
    producers = [m for m in members if m.role == "out" and isinstance(
        modules[m.module], (nn.Conv2d, nn.Linear)) and not _depthwise(modules[m.module])]
    coupled = coupled or len(producers) > 1
    return GroupInfo(name, width, tuple(members), masked, coupled), is_output


def _merge(members: list[Member]) -> list[Member]:
    """One member per (module, role): a module reached twice in the graph shares one entry."""
    merged: dict[tuple[str, str], Member] = {}
    for m in members:
        key = (m.module, m.role)
        if key in merged:
            old = merged[key]
            pairs = dict(zip(old.index, old.root))
            pairs.update(zip(m.index, m.root))
            m = Member(m.module, m.role, tuple(pairs), tuple(pairs.values()))
        merged[key] = m
    return list(merged.values())


def _refuse_unsupported(model: nn.Module, label: str) -> None:
    """What is refused before tracing (a transformer can take minutes to trace, to no end)."""
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) and not isinstance(
                module, _PARAMETRISED):
            raise ArchError("arch", f"{label}: {name or 'the network'} ({type(module).__name__}) "
                                    f"holds parameters of its own; only networks whose "
                                    f"parameters are in Conv2d, Linear and BatchNorm2d layers "
                                    f"can be pruned here")
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not _depthwise(module):
            raise ArchError("arch", f"{label}: {name} is a grouped convolution (groups="
                                    f"{module.groups}) that is not depthwise: its channels "
                                    f"cannot be pruned correctly by the dependency graph")
        if isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)):
            raise ArchError("arch", f"{label}: {name} is a {type(module).__name__}; only 2-D "
                                    f"convolutions are supported")


def _depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


# -- templates: the network a builder makes, traced once per process ------------------------------

@functools.lru_cache(maxsize=4)   # whole networks (a VGG is half a GB): only the latest few
def _template(builder: str, args_json: str, num_classes: int) -> tuple[nn.Module, tuple]:
    """The builder's full network (kept for its structure only: copy it before changing it),
    and the names of its Conv2d/BatchNorm2d/Linear layers in the order they were constructed."""
    from mlprunes.nets.builders import call
    model, order = _recording_construction(lambda: call(builder, json.loads(args_json),
                                                        num_classes))
    return model, order


@functools.lru_cache(maxsize=32)
def _skeleton(builder: str, args_json: str, num_classes: int, input_size: tuple[int, ...],
              rule: str) -> tuple[GroupInfo, ...]:
    model, _ = _template(builder, args_json, num_classes)
    label = builder
    _check_output(model, input_size, num_classes, label)
    infos = tuple(analyse(copy.deepcopy(model), input_size, rule, label))
    _check_masks_remove(model, infos, input_size, label)
    return infos


def skeleton(spec: GraphSpec) -> tuple[GroupInfo, ...]:
    """The groups of `spec`'s builder's full network."""
    from mlprunes.nets.builders import check_permitted
    check_permitted(spec.builder)   # before the cache: a traced builder is not thereby allowed
    return _skeleton(spec.builder, spec.args_json, spec.num_classes, spec.input_size,
                     spec.groups)


def _check_masks_remove(model: nn.Module, infos: Sequence[GroupInfo], input_size,
                        label: str) -> None:
    """A masked channel must be a removed one: zero at every producer must read as nothing
    wherever the channel is read. Anything between that maps zero elsewhere (a sigmoid before
    the next conv) breaks it, so every group is tried once on the builder's network, masked at
    random and cut, and the first group whose cut network computes otherwise is refused."""
    if not infos:
        return
    probe = GraphSpec(builder=label, num_classes=1, names=tuple(g.name for g in infos),
                      mids=tuple(g.width for g in infos), input_size=tuple(input_size))

    def differs(which: Sequence[int]) -> bool:
        masked = copy.deepcopy(model).eval()
        groups = _install(masked, infos)
        generator = torch.Generator().manual_seed(0)
        keeps = []
        for g, group in enumerate(groups):
            mask = torch.ones(group.mid)
            if g in which and group.mid > 1:
                mask[torch.randperm(group.mid, generator=generator)[:group.mid // 2]] = 0
            group.set_mask(mask)
            keeps.append(mask.nonzero().flatten().tolist())
        try:
            compact = _slice(_unmasked_copy(masked), probe, keeps)
        except Exception:
            return True
        batch = torch.randn(2, *input_size, generator=generator)
        with torch.no_grad():
            a, b = masked(batch), compact.eval()(batch)
        return a.shape != b.shape or float((a - b).abs().max()) > 1e-4 * max(
            1.0, float(a.abs().max()))

    if not differs(range(len(infos))):
        return
    bad = next((g for g in range(len(infos)) if differs([g])), None)
    where = f"group {infos[bad].name}" if bad is not None else "its groups together"
    raise ArchError("arch", f"{label}: {where} cannot be pruned by masking: a masked channel "
                            f"does not vanish where it is read (an operation between its "
                            f"producer and its readers maps zero elsewhere, e.g. a sigmoid); "
                            f"try --groups internal")


def template_widths(spec: GraphSpec) -> tuple[int, ...]:
    return tuple(g.width for g in skeleton(spec))


def _check_output(model: nn.Module, input_size, num_classes: int, label: str) -> None:
    """In eval mode and in training mode (where some networks add auxiliary outputs), a batch
    of images must give (N, num_classes) class scores."""
    model = copy.deepcopy(model)
    for mode in ("eval", "train"):
        model.train(mode == "train")
        try:
            with torch.no_grad():
                out = model(torch.randn(2, *input_size))
        except Exception as err:
            raise ArchError("input_size", f"{label} cannot take an input of "
                                          f"{list(input_size)} ({type(err).__name__}: "
                                          f"{_first_line(err)})") from None
        if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            hint = (" (a network with auxiliary outputs needs them off, e.g. --arch-args "
                    "'{\"aux_logits\": false}')" if isinstance(out, tuple) else
                    " (does its factory take num_classes?)"
                    if isinstance(out, torch.Tensor) and out.dim() == 2 else "")
            raise ArchError("arch", f"{label} gives {shape} in {mode} mode for two inputs, not "
                                    f"[2, {num_classes}] class scores{hint}")


def describe(builder: str, *, args: dict[str, Any], depth: int | None = None,
             num_classes: int = 10, groups: str | None = None, bottle: float | None = None,
             input_size: Sequence[int] = (3, 32, 32)) -> GraphSpec:
    """The description of `builder(**args)` at full width (or each group times `bottle`, at
    least one channel: Liu et al.'s uniform network)."""
    from mlprunes.arch import _is_number
    args = dict(args)
    if depth is not None:
        if builder not in ("resnet", "vgg"):
            raise ArchError("depth", f"applies to wrn, densenet, resnet and vgg; pass "
                                     f"{builder}'s own arguments with --arch-args")
        args["depth"] = depth
    elif builder in ("resnet", "vgg"):
        args.setdefault("depth", 56 if builder == "resnet" else 16)
    if bottle is not None and not (_is_number(bottle) and bottle > 0):
        raise ArchError("bottle", f"must be a positive finite number, got {bottle!r}")
    try:
        args_json = canonical_json(args)
    except (TypeError, ValueError):
        raise ArchError("args", "must hold plain, finite values") from None
    rule = groups or default_rule(builder)
    if builder == "resnet" and rule == "all":
        raise ArchError("groups", "resnet's option-A shortcut couples the stages by zero "
                                  "padding, which the dependency graph cannot follow: only "
                                  "--groups internal (each block's inner channels)")
    probe = GraphSpec(builder=builder, num_classes=num_classes, names=(), mids=(),
                      args_json=args_json, input_size=tuple(input_size), groups=rule)
    infos = skeleton(probe)
    if not infos:
        raise ArchError("groups", f"{builder} has no prunable channel groups under "
                                  f"--groups {rule}" + (" (try --groups all)"
                                                        if rule == "internal" else ""))
    widths = [g.width if bottle is None else max(1, int(g.width * bottle)) for g in infos]
    spec = GraphSpec(builder=builder, num_classes=num_classes,
                     names=tuple(g.name for g in infos), mids=tuple(widths),
                     args_json=probe.args_json, input_size=probe.input_size, groups=rule)
    if len(spec.to_json()) > MAX_DESCRIPTION:
        raise ArchError("groups", f"{builder} has {len(infos)} groups under --groups {rule}: "
                                  f"its description ({len(spec.to_json()):,} characters) is "
                                  f"over MLflow's {MAX_DESCRIPTION:,}-character param limit"
                                  + ("; try --groups internal" if rule == "all" else ""))
    return spec


MAX_DESCRIPTION = 6000   # MLflow's limit on a param value: `arch_spec` is logged as one


def default_rule(builder: str) -> str:
    """The paper's rule for residual networks; every group elsewhere."""
    return "internal" if builder == "resnet" else "all"


def check_names(spec: GraphSpec) -> None:
    """The description's groups are its network's: same names, in the same order."""
    infos = skeleton(spec)
    expected = tuple(g.name for g in infos)
    if spec.names != expected:
        missing = [n for n in expected if n not in spec.names]
        extra = [n for n in spec.names if n not in expected]
        detail = (f"unknown group {extra[0]!r}" if extra else
                  f"no width for group {missing[0]!r}" if missing else "the order differs")
        raise ArchError("widths", f"do not match the groups of {spec.builder} under --groups "
                                  f"{spec.groups} ({len(expected)} groups; {detail})")
    for info, width in zip(infos, spec.mids):
        if width > info.width:
            raise ArchError("widths", f"group {info.name} is {width} wide, more than the "
                                      f"{info.width} channels {spec.builder} has")


# -- building at any widths ---------------------------------------------------------------------------

def build_graph(spec: GraphSpec, masked: bool = False, init: str = "fresh") -> nn.Module:
    """`spec`'s network: the builder's full network cut to the widths (`sliced`: its trained
    or initial weights kept), or built anew at them with the builder's own init (`fresh`).
    `masked` installs a mask on every group."""
    check_names(spec)
    if init not in ("fresh", "sliced"):
        raise ValueError(f"init must be fresh or sliced, got {init!r}")
    if any(m == 0 for m in spec.mids):
        empty = next(n for n, m in zip(spec.names, spec.mids) if m == 0)
        raise ArchError("widths", f"group {empty} of {spec.name} is 0 wide; a group of a traced "
                                  f"network keeps at least one channel")
    _, order = _template(spec.builder, spec.args_json, spec.num_classes)
    if tuple(spec.mids) == template_widths(spec):
        model = _call(spec)   # the builder's own network, freshly initialised
    else:
        sliced = _slice(_call(spec), spec, keep=[list(range(w)) for w in spec.mids])
        model = sliced if init == "sliced" else _rebuild_at(spec, sliced, order)
    model.train()
    model.spec = spec
    if masked:
        install_masks(model, spec)
    return model


def _call(spec: GraphSpec) -> nn.Module:
    from mlprunes.nets.builders import call
    return call(spec.builder, spec.args, spec.num_classes)


def _slice(model: nn.Module, spec: GraphSpec, keep: list[list[int]],
           names: Sequence[str] | None = None) -> nn.Module:
    """Cut `model` (the builder's network at the widths its groups now have) to the channels
    `keep[g]` of each group g (of `names`, by default the description's), by Torch-Pruning's
    group pruning."""
    import torch_pruning as tp
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(
        1, *spec.input_size))
    modules = dict(model.named_modules())
    for name, kept in zip(spec.names if names is None else names, keep):
        root = modules[name]
        width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        drop = sorted(set(range(width)) - set(int(k) for k in kept))
        if not drop:
            continue
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else \
            tp.prune_linear_out_channels
        # Torch-Pruning's group pruning of the layers (not a Pruner's prune: no saliency here)
        graph.get_pruning_group(root, fn, drop).prune(None, False)
    return model


def _recording_construction(make: Callable[[], nn.Module],
                            overrides: dict[int, dict[str, int]] | None = None):
    """Run `make` with Conv2d, BatchNorm2d and Linear construction observed: return the model
    and the names of those layers in construction order. With `overrides`, the k-th layer
    constructed gets those constructor arguments instead (its channel counts): the builder's own
    code, and so its own init, at other widths."""
    with _CONSTRUCTION_LOCK:   # the patch is process-wide: one recording at a time
        return _record(make, overrides)


_CONSTRUCTION_LOCK = threading.RLock()


def _record(make, overrides):
    constructed: list[nn.Module] = []
    saved = {cls: cls.__dict__.get("__init__") for cls in _PARAMETRISED}
    originals = {cls: cls.__init__ for cls in _PARAMETRISED}

    def patched(cls):
        original = originals[cls]
        signature = inspect.signature(original)

        def __init__(self, *args, **kwargs):
            k = len(constructed)
            constructed.append(self)
            if overrides and k in overrides:
                bound = signature.bind(self, *args, **kwargs)
                bound.arguments.update(overrides[k])
                args, kwargs = bound.args[1:], bound.kwargs
            original(self, *args, **kwargs)
        return __init__

    try:
        for cls in _PARAMETRISED:
            cls.__init__ = patched(cls)
        model = make()
    finally:
        for cls, init in saved.items():
            if init is None:
                del cls.__init__
            else:
                cls.__init__ = init
    names = {id(m): n for n, m in model.named_modules()}
    return model, tuple(names.get(id(m)) for m in constructed)


def _rebuild_at(spec: GraphSpec, sliced: nn.Module, order: tuple) -> nn.Module:
    """The builder run again with every layer at the sliced network's widths, so that its init
    sees the narrower shapes; checked layer by layer against the sliced network."""
    modules = dict(sliced.named_modules())
    overrides = {}
    for k, name in enumerate(order):
        target = modules.get(name) if name is not None else None
        if isinstance(target, nn.Conv2d):
            overrides[k] = {"in_channels": target.in_channels,
                            "out_channels": target.out_channels, "groups": target.groups}
        elif isinstance(target, nn.BatchNorm2d):
            overrides[k] = {"num_features": target.num_features}
        elif isinstance(target, nn.Linear):
            overrides[k] = {"in_features": target.in_features,
                            "out_features": target.out_features}
    try:
        model, _ = _recording_construction(lambda: _call(spec), overrides)
        expected = {k: v.shape for k, v in sliced.state_dict().items()}
        got = {k: v.shape for k, v in model.state_dict().items()}
        if expected != got:
            wrong = next(k for k in expected if got.get(k) != expected[k])
            raise ValueError(f"{wrong} is {tuple(got.get(wrong, ()))}, not "
                             f"{tuple(expected[wrong])}")
        model.eval()(torch.randn(1, *spec.input_size))
    except ArchError:
        raise
    except Exception as err:
        raise ArchError("init", f"{spec.builder} cannot be built anew at these widths "
                                f"({type(err).__name__}: {_first_line(err)}); use --init "
                                f"sliced") from None
    return model.train()


# -- masks -------------------------------------------------------------------------------------------

class _Masked:
    """What every masked producer adds to its layer: a `channel_mask` buffer over its own
    channels, and an observer that sees its masked output (for Fisher)."""

    masked = True   # what a checkpoint looks for to call a network masked

    def _mask_setup(self, channels: int) -> None:
        self.register_buffer("channel_mask", torch.ones(channels))
        # One observer per group this layer produces channels for (a BN after a
        # concatenation normalises several groups' channels).
        self.activation_observers: dict[int, Callable[[torch.Tensor], None]] = {}

    def _observed(self, out: torch.Tensor) -> torch.Tensor:
        if self.activation_observers and out.requires_grad:
            for observer in self.activation_observers.values():
                observer(out)
        return out


class MaskedBatchNorm2d(_Masked, nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.channel_mask.to(x.dtype if self.weight is None else self.weight.dtype)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        stats = not self.training or self.track_running_stats
        if self.weight is None:
            out = F.batch_norm(x, self.running_mean if stats else None,
                               self.running_var if stats else None, None, None, use_batch,
                               factor, self.eps) * mask.view(1, -1, 1, 1)
        else:
            out = F.batch_norm(x, self.running_mean if stats else None,
                               self.running_var if stats else None, self.weight * mask,
                               self.bias * mask, use_batch, factor, self.eps)
        return self._observed(out)


class MaskedConv2d(_Masked, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.channel_mask.to(self.weight.dtype)
        bias = None if self.bias is None else self.bias * mask
        return self._observed(self._conv_forward(x, self.weight * mask.view(-1, 1, 1, 1), bias))


class MaskedLinear(_Masked, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.channel_mask.to(self.weight.dtype)
        bias = None if self.bias is None else self.bias * mask
        return self._observed(F.linear(x, self.weight * mask.view(-1, 1), bias))


_MASKED = {nn.BatchNorm2d: MaskedBatchNorm2d, nn.Conv2d: MaskedConv2d, nn.Linear: MaskedLinear}


def _mask_module(module: nn.Module, name: str) -> None:
    if isinstance(module, _Masked):
        return
    cls = type(module)
    base = next((b for b in _MASKED if isinstance(module, b)), None)
    if base is None or cls.forward is not base.forward:
        raise ArchError("arch", f"{name} ({cls.__name__}) has a forward of its own: its "
                                f"channels cannot be masked")
    masked_cls = _MASKED[base] if cls is base else type(
        f"Masked{cls.__name__}", (_MASKED[base], cls), {})
    module.__class__ = masked_cls
    module._unmasked_class = cls
    module._mask_setup(_channels(module))


def _unmask_module(module: nn.Module) -> None:
    if not isinstance(module, _Masked):
        return
    module.__class__ = module.__dict__.pop("_unmasked_class")
    del module._buffers["channel_mask"]
    module.__dict__.pop("activation_observers", None)


class ChannelGroup:
    """One group of a masked network: its width, its mask (read through `mask`, written with
    `set_mask` or `drop`), the filters L1 criteria score, and the per-sample Fisher sums."""

    def __init__(self, info: GroupInfo, modules: dict[str, nn.Module],
                 model: nn.Module | None = None):
        self.name = info.name
        self.mid = info.width
        self.masked = True
        self._root = modules[info.name]
        self._producers = [(modules[m.module], torch.tensor(m.index), torch.tensor(m.root))
                           for m in info.masked]
        # A producer whose channels are exactly the group's, in order, needs no gather.
        self._identity = [len(m.index) == info.width == _channels(modules[m.module])
                          and list(m.index) == list(m.root) == list(range(info.width))
                          for m in info.masked]
        # Every member, by name, found through the model when a criterion asks: a reference to
        # each layer here would make copying the model walk it once per group (the observers
        # lead back to the groups), past the stack on a DenseNet-121; the model is the root of
        # any copy of it, so a copy's groups find the copy's layers.
        self._model = model
        self._member_names = [(m.module, m.role, torch.tensor(m.index), torch.tensor(m.root))
                              for m in info.members]
        self._pending: torch.Tensor | None = None
        self._outstanding = 0    # outputs observed in this forward whose gradient is to come
        self._placed: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _indices(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Producer k's (index, root) on `device`, copied there once: a copy per step would
        make a GPU wait for the host at every layer."""
        placed = self._placed.get((k, device))
        if placed is None:
            _, index, root = self._producers[k]
            placed = self._placed[(k, device)] = (index.to(device), root.to(device))
        return placed

    @property
    def mask(self) -> torch.Tensor:
        module = self._producers[0][0]
        index, root = self._indices(0, module.channel_mask.device)
        values = module.channel_mask.index_select(0, index)
        out = torch.ones(self.mid, device=values.device, dtype=values.dtype)
        return out.index_copy_(0, root, values)

    def set_mask(self, mask: torch.Tensor) -> None:
        for k, (module, _, _) in enumerate(self._producers):
            device = module.channel_mask.device
            index, root = self._indices(k, device)
            module.channel_mask.index_copy_(
                0, index, mask.to(device, module.channel_mask.dtype).index_select(0, root))

    def drop(self, channel: int) -> None:
        mask = self.mask
        mask[channel] = 0
        self.set_mask(mask)

    def filters(self, dead: DeadInputs | None = None) -> torch.Tensor:
        """Each channel's filter in the module the group is named after, one row per channel;
        the input columns of channels already pruned (`dead`) read as zeros."""
        return _live(self._root, self._root.weight.detach(), dead).flatten(1)

    def inputs(self) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
        """The layers that read this group's channels: (module, its input index, the group
        channel of each), so that a criterion can leave pruned channels out of their filters."""
        return [(module, index, root) for module, role, index, root in self._members
                if role == "in" and not isinstance(module, nn.BatchNorm2d)
                and not _depthwise(module)]

    @property
    def _members(self) -> list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]:
        if self._model is None:
            raise ValueError("this channel group was made without its model")
        modules = dict(self._model.named_modules())
        return [(modules[name], role, index, root)
                for name, role, index, root in self._member_names]

    def parts(self, dead: DeadInputs | None = None,
              weight: Callable[[nn.Module], torch.Tensor] | None = None
              ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Every weight the group's channels carry, as (kind, rows, group channel of each row),
        one entry per member layer, as Torch-Pruning's group importance reads them: a conv or
        linear layer's output rows ("out"), a BatchNorm's scales ("bn"), a consumer's input
        columns ("in"; a linear layer after a flatten has several per channel). `weight` reads
        another tensor of each layer's weight's shape in its place (Hessian's w^2 h)."""
        out = []
        for module, role, index, root in self._members:
            if isinstance(module, nn.BatchNorm2d) and not module.affine:
                continue
            weight_ = module.weight.detach() if weight is None else weight(module)
            index, root = index.to(weight_.device), root.to(weight_.device)
            if isinstance(module, nn.BatchNorm2d):
                out.append(("bn", weight_.index_select(0, index)[:, None], root))
            elif role == "out" or _depthwise(module):   # a depthwise conv's channels: rows
                rows = _live(module, weight_, dead).index_select(0, index)
                out.append(("out", rows.flatten(1), root))
            else:
                # The consumer's rows for its own pruned outputs (another group's channels)
                # read as zeros: the network cut to its surviving channels has none of them.
                rows = _dead_rows_zeroed(module, weight_, dead)
                out.append(("in", rows.transpose(0, 1).index_select(0, index).flatten(1),
                            root))
        return out

    def outputs(self) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
        """The convs and linear layers that produce this group's channels: (module, its output
        index, the group channel of each), so that a criterion can leave a pruned channel's
        rows out where another group's criterion reads the layer."""
        return [(module, index, root) for module, role, index, root in self._members
                if role == "out" and isinstance(module, (nn.Conv2d, nn.Linear))
                and not _depthwise(module)]

    def layers(self) -> list[nn.Module]:
        """The layers whose weights `parts` reads, each once."""
        seen: dict[int, nn.Module] = {}
        for module, _, _, _ in self._members:
            if not (isinstance(module, nn.BatchNorm2d) and not module.affine):
                seen.setdefault(id(module), module)
        return list(seen.values())

    def observe(self, callback: PerSampleObserver | None) -> None:
        """Call `callback` once per backward pass with the (N, width) per-sample sums over
        every producer, every call of it and every position of a * dL/da; None stops."""
        self._pending, self._outstanding = None, 0
        for k, (module, _, _) in enumerate(self._producers):
            if callback is None:
                module.activation_observers.pop(id(self), None)
            else:
                module.activation_observers[id(self)] = functools.partial(
                    self._hook, k, callback)

    def start_forward(self) -> None:
        self._pending, self._outstanding = None, 0

    def _hook(self, k: int, callback: PerSampleObserver, out: torch.Tensor) -> None:
        # Counted per call, not per layer: a layer run twice in one forward reports twice, and
        # the group's sum is complete when every output seen has had its gradient.
        self._outstanding += 1
        out.register_hook(functools.partial(self._accumulate, k, callback, out.detach()))

    def _accumulate(self, k: int, callback, activation: torch.Tensor, grad: torch.Tensor):
        # In fp32 whatever autocast ran the step in: squares of bf16 products lose the ranking.
        product = activation.float() * grad.float()
        if isinstance(self._producers[k][0], nn.Linear):   # channels last: (N, ..., C)
            per_channel = product.reshape(product.shape[0], -1, product.shape[-1]).sum(1)
        else:                                             # channels first: (N, C, ...)
            per_channel = product.flatten(2).sum(2) if product.dim() > 2 else product
        if self._identity[k]:   # the producer's channels are the group's, in order
            self._pending = per_channel if self._pending is None else \
                self._pending.add_(per_channel)
        else:
            index, root = self._indices(k, per_channel.device)
            share = per_channel.index_select(1, index)
            if self._pending is None:
                self._pending = share.new_zeros(share.shape[0], self.mid)
            self._pending.index_add_(1, root, share)
        self._outstanding -= 1
        if self._outstanding <= 0:
            total, self._pending, self._outstanding = self._pending, None, 0
            callback(total)


class DeadInputs(dict):
    """Per layer, the input channels whose producers are pruned: their weights stay (the masks
    act on the producers' outputs) but carry nothing, so magnitude criteria read them as zeros.
    `rows` holds, per layer, its own pruned output rows, which a consumer's columns must leave
    out likewise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows: dict[nn.Module, torch.Tensor] = {}


def _dead_rows_zeroed(module: nn.Module, weight: torch.Tensor,
                      dead: DeadInputs | None) -> torch.Tensor:
    """`weight` with the rows of `module`'s pruned outputs zeroed (a copy, only if any)."""
    gone = getattr(dead, "rows", {}).get(module)   # (a dict of no inputs is falsy, not empty)
    if gone is None or not len(gone):
        return weight
    weight = weight.clone()
    weight[gone.to(weight.device)] = 0
    return weight


def _live(module: nn.Module, weight: torch.Tensor, dead: DeadInputs | None) -> torch.Tensor:
    """`weight` with the columns of `module`'s dead inputs zeroed (a copy, only if any)."""
    gone = dead.get(module) if dead else None
    if gone is None or not len(gone) or _depthwise(module):
        return weight
    weight = weight.clone()
    weight[:, gone.to(weight.device)] = 0
    return weight


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def install_masks(model: nn.Module, spec: GraphSpec) -> list[ChannelGroup]:
    """Fold a mask (all ones) into every group's producers; `model.channel_groups` lists them
    in the order of `spec.names`."""
    infos = analyse(model, spec.input_size, spec.groups, spec.builder)
    by_name = {g.name: g for g in infos}
    chosen = []
    for name, width in zip(spec.names, spec.mids):
        info = by_name.get(name)
        if info is None or info.width != width:
            raise ArchError("widths", f"group {name} of {spec.builder} is not "
                                      f"{width} channels wide in the network built")
        chosen.append(info)
    return _install(model, chosen)


def _install(model: nn.Module, infos: Sequence[GroupInfo]) -> list[ChannelGroup]:
    modules = dict(model.named_modules())
    groups = []
    for info in infos:
        for member in info.masked:
            _mask_module(modules[member.module], member.module)
        groups.append(ChannelGroup(info, modules, model))
    model.channel_groups = groups
    model.register_forward_pre_hook(_new_forward)
    return groups


def _drop_forward_reset(model: nn.Module) -> None:
    for key, hook in list(model._forward_pre_hooks.items()):
        if hook is _new_forward:
            del model._forward_pre_hooks[key]


def _new_forward(model: nn.Module, inputs) -> None:
    """Each forward starts every group's per-sample sums afresh: a forward with no backward
    (the gradients never came) leaves nothing behind that the next step would miscount."""
    for group in model.__dict__.get("channel_groups", ()):
        group.start_forward()


def is_graph_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "spec", None), GraphSpec)


# -- compression -----------------------------------------------------------------------------------

def compress_graph(model: nn.Module, check: bool = True) -> nn.Module:
    """The masked network's surviving channels as a physically smaller network (Torch-Pruning's
    group pruning of a copy), checked against the masked network on a batch."""
    groups = getattr(model, "channel_groups", None)
    if not groups:
        raise ValueError("compress needs a masked model: build(spec, masked=True)")
    spec: GraphSpec = model.spec
    keeps = [g.mask.nonzero().flatten().tolist() for g in groups]
    if any(not k for k in keeps):
        empty = next(g.name for g, k in zip(groups, keeps) if not k)
        raise ArchError("widths", f"group {empty} has no channel left; a group of {spec.name} "
                                  f"keeps at least one")
    param = next(model.parameters())
    compact = _slice(_unmasked_copy(model).cpu().float(), spec, keeps)
    compact.spec = spec.with_mids(len(k) for k in keeps)
    compact.to(device=param.device, dtype=param.dtype)
    compact.train(model.training)
    if check:
        check_same(model, compact, spec)
    return compact


def _unmasked_copy(model: nn.Module) -> nn.Module:
    """A copy of a masked network with its layers plain again (masks, groups, hooks gone)."""
    # The groups (reached through the layers' observers while a criterion is attached) are not
    # copied: the copy drops them below, and copying them walks the network once per group,
    # deep enough to overflow the stack on a DenseNet-121.
    memo = {id(g): g for g in model.__dict__.get("channel_groups", ())}
    plain = copy.deepcopy(model, memo)
    for module in plain.modules():
        _unmask_module(module)
    plain.__dict__.pop("channel_groups", None)
    _drop_forward_reset(plain)
    return plain


def check_same(masked: nn.Module, compact: nn.Module, spec: GraphSpec,
               tolerance: float = 1e-3) -> None:
    """Masked and compressed give the same outputs on a batch (eval mode), or one error."""
    gap = output_gap(masked, compact, spec.input_size)
    if gap is None or gap > tolerance:
        raise ArchError("arch", f"{spec.builder}: the compressed network does not compute what "
                                f"the masked one does (largest difference "
                                f"{'shape' if gap is None else f'{gap:.3g}'} of its output's "
                                f"scale); this network cannot be pruned correctly by its graph")


def output_gap(reference: nn.Module, other: nn.Module, input_size) -> float | None:
    """The largest difference between two networks' outputs on a fixed random batch, in eval
    mode, over the reference output's scale (at least 1); None if their shapes differ. Both
    are left in the modes they were in."""
    param = next(reference.parameters())
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(4, *input_size, generator=generator).to(param.device, param.dtype)
    modes = reference.training, other.training
    reference.eval(), other.eval()
    try:
        with torch.no_grad():
            a, b = reference(batch), other(batch)
    finally:
        reference.train(modes[0]), other.train(modes[1])
    if a.shape != b.shape:
        return None
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


# -- counting ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layer:
    kind: str                 # conv, linear, bn, other
    shape: tuple[int, ...]    # conv: (out, in, groups, kh, kw); linear: (out, in); bn: (c,)
    bias: bool
    params: int               # other: its parameters, counted as they are
    positions: int = 1        # output positions per image (conv: H*W; linear: tokens)


@functools.lru_cache(maxsize=64)
def _layers(builder: str, args_json: str, num_classes: int,
            image_size: tuple[int, int], channels: int) -> dict[str, _Layer]:
    model, _ = _template(builder, args_json, num_classes)
    model = copy.deepcopy(model).eval()
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def record(mod, inputs, output, name=name):
                # Summed over calls: a layer run twice does its work twice.
                positions[name] = positions.get(name, 0) + (
                    int(output[0, 0].numel()) if isinstance(mod, nn.Conv2d)
                    else int(output[0].numel() // output.shape[-1]))
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.randn(1, channels, *image_size))
    except Exception as err:
        raise ArchError("input_size", f"{builder} cannot take an input of "
                                      f"{[channels, *image_size]} ({type(err).__name__}: "
                                      f"{_first_line(err)})") from None
    finally:
        for hook in hooks:
            hook.remove()
    layers = {}
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            layers[name] = _Layer("conv", (module.out_channels, module.in_channels,
                                           module.groups, *module.kernel_size),
                                  module.bias is not None, 0, positions.get(name, 0))
        elif isinstance(module, nn.Linear):
            layers[name] = _Layer("linear", (module.out_features, module.in_features),
                                  module.bias is not None, 0, positions.get(name, 0))
        elif isinstance(module, nn.BatchNorm2d):
            layers[name] = _Layer("bn", (module.num_features,), module.weight is not None, 0)
        elif own:
            layers[name] = _Layer("other", (), False, own)
    return layers


def count_graph(spec: GraphSpec, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(parameters, MACs per image, conv and linear outputs per image) of `spec`'s network,
    from its full network's layers and how many channels each group takes from each."""
    infos = skeleton(spec)
    layers = _layers(spec.builder, spec.args_json, spec.num_classes, tuple(image_size),
                     spec.input_size[0])   # after skeleton(spec), which checks the builder
    removed: dict[tuple[str, str], int] = {}
    for info, width in zip(infos, _widths_for(spec, infos)):
        gone = info.width - width
        if gone <= 0:
            continue
        for member in info.members:
            per_channel = len(member.index) // info.width
            key = (member.module, member.role)
            removed[key] = removed.get(key, 0) + gone * per_channel
    params = flops = outputs = 0
    for name, layer in layers.items():
        out_gone, in_gone = removed.get((name, "out"), 0), removed.get((name, "in"), 0)
        if layer.kind == "conv":
            out, cin, groups, kh, kw = layer.shape
            out, cin = out - out_gone, cin - in_gone
            if groups > 1 and groups == layer.shape[0] == layer.shape[1]:
                weights = out * kh * kw   # depthwise: one filter per channel, in == out
            else:
                weights = out * (cin // groups) * kh * kw
            params += weights + (out if layer.bias else 0)
            flops += weights * layer.positions
            outputs += out * layer.positions
        elif layer.kind == "linear":
            out, cin = layer.shape[0] - out_gone, layer.shape[1] - in_gone
            params += out * cin + (out if layer.bias else 0)
            flops += out * cin * layer.positions
            outputs += out * layer.positions
        elif layer.kind == "bn":
            params += 2 * (layer.shape[0] - out_gone) if layer.bias else 0
        else:
            params += layer.params
    return params, flops, outputs


def _widths_for(spec: GraphSpec, infos) -> tuple[int, ...]:
    if len(spec.mids) != len(infos):
        check_names(spec)
    return spec.mids
