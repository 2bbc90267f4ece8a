"""The builders a `GraphSpec` names, and the rule for which of them may be imported.

A later stage rebuilds a network from the description an earlier run logged, and a tracking
store can be edited by anyone who can write to it. If a description could name any callable,
a tampered store could name `os:system` with a shell command for its arguments. So a builder is
imported only if it is one of:

- ours: `resnet` (He et al.'s CIFAR ResNet-d) and `vgg` (the CIFAR VGG of Liu et al. 2017);
- a classifier of `torchvision.models` (`torchvision:resnet18`), by torchvision's own list;
- a `package.module:factory` whose module, or a package above it, is allowed on this machine:
  `MLPRUNES_ALLOWED_MODULES` (comma-separated, e.g. `mynets,lab.models`) or `--allow-module`.

Anything else is refused in one line and nothing is imported. Arguments are plain JSON values,
bound against the factory's signature before it is called.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable

from torch import nn

from mlprunes.arch import ArchError

ALLOWED_ENV = "MLPRUNES_ALLOWED_MODULES"


def allowed_modules() -> tuple[str, ...]:
    return tuple(m.strip() for m in os.environ.get(ALLOWED_ENV, "").split(",") if m.strip())


def allow_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Add modules to this process's allow-list (and so to the jobs it starts, which inherit
    the environment)."""
    current = list(allowed_modules())
    for module in modules:
        if module not in current:
            current.append(module)
    os.environ[ALLOWED_ENV] = ",".join(current)


def _within(module_name: str, allowed: tuple[str, ...]) -> bool:
    return any(module_name == a or module_name.startswith(a + ".") for a in allowed)


def _ours() -> dict[str, Callable[..., nn.Module]]:
    from mlprunes.nets.resnet import cifar_resnet
    from mlprunes.nets.vgg import cifar_vgg
    return {"resnet": cifar_resnet, "vgg": cifar_vgg}


def check_permitted(builder: str) -> None:
    """Refuse, without importing anything, a builder the rule above does not allow."""
    if builder in ("resnet", "vgg"):
        return
    if ":" not in builder:
        raise ArchError("arch", f"unknown builder {builder!r}: use wrn, densenet, resnet, vgg, "
                                f"torchvision:NAME or package.module:factory")
    module_name = builder.partition(":")[0]
    if module_name == "torchvision":
        return
    if not _within(module_name, allowed_modules()):
        raise ArchError("arch", f"builder {builder!r} is not imported: its module is not "
                                f"allowed on this machine (allow it with --allow-module "
                                f"{module_name.split('.')[0]} or {ALLOWED_ENV})")


def resolve(builder: str) -> Callable[..., nn.Module]:
    """The factory a builder names, imported only under the rule above."""
    check_permitted(builder)
    ours = _ours()
    if builder in ours:
        return ours[builder]
    module_name, _, attr = builder.partition(":")
    if module_name == "torchvision":
        import torchvision.models as models
        names = set(models.list_models(module=models))
        if attr not in names:
            raise ArchError("arch", f"torchvision has no classifier {attr!r} (torchvision."
                                    f"models.list_models() lists {len(names)}, e.g. resnet18, "
                                    f"mobilenet_v2)")
        return models.get_model_builder(attr)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import can fail in any way its code can
        raise ArchError("arch", f"builder {builder!r} does not import ({type(err).__name__}: "
                                f"{first_line(err)}); its code must be importable wherever "
                                f"the study's jobs run") from None
    factory = getattr(module, attr, None)
    if not (inspect.isfunction(factory) or inspect.isclass(factory)):
        raise ArchError("arch", f"{module_name} has no function or class {attr!r}")
    # Only what the allowed module defines itself: a name it merely imported (`from os import
    # system`) is not a network factory the user allowed.
    defined_in = getattr(factory, "__module__", "") or ""
    if not _within(defined_in, allowed_modules()):
        raise ArchError("arch", f"{builder} is {defined_in}.{factory.__qualname__}, defined "
                                f"outside the allowed modules: it is not called")
    return factory


def call(builder: str, args: dict[str, Any], num_classes: int) -> nn.Module:
    """`builder(**args, num_classes=...)`, checked: arguments that its signature takes, a
    factory that does not fail, and an `nn.Module` back."""
    factory = resolve(builder)
    kwargs = dict(args)
    pretrained = sorted(k for k in kwargs if k.startswith("weights") or k == "pretrained")
    if pretrained:
        raise ArchError("args", f"{pretrained[0]}: networks are trained here from their "
                                f"builder's own init, never downloaded (the study's question "
                                f"is about training them)")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if "num_classes" in params or takes_any:
            kwargs["num_classes"] = num_classes
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            raise ArchError("args", f"{builder} does not take these arguments ({err})") from None
    else:
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except Exception as err:  # a user's factory can fail in any way
        raise ArchError("arch", f"{builder}({_show(kwargs)}) failed: {type(err).__name__}: "
                                f"{first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ArchError("arch", f"{builder} returned {type(model).__name__} {model!r:.40}, not "
                                f"an nn.Module")
    return model


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def first_line(err: BaseException) -> str:
    """An error's first line, or its type when it says nothing."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
