"""A compressed network in the formats people deploy with, checked against the masked network
it came from. Free of any tracking store: the `export` command finds the network, this writes
and checks it.

Formats: `onnx` (opset of the dynamo exporter, batch size free; checked in ONNX Runtime),
`pt2` (`torch.export`, loadable with `torch.export.load`), `torchscript` (`torch.jit.trace`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import torch
from torch import nn

FORMATS = ("onnx", "pt2", "torchscript")
# Exported and masked networks compute in float32 through different kernels: they agree to
# about 1e-6 here; a wrong export (a lost channel, a wrong slice) differs by orders more.
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export that cannot be made, or that does not compute what the masked network does."""


def _batch() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=65536)


def export_network(model: nn.Module, fmt: str, path: str | Path, example: torch.Tensor) -> Path:
    """Write `model` (eval mode, on the CPU) to `path` in `fmt`, with a free batch size where
    the format has one."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    example = example.to("cpu")
    with torch.no_grad():
        if fmt == "onnx":
            _require("onnxscript", "ONNX export")
            torch.onnx.export(model, (example,), str(path), dynamo=True,
                              input_names=["images"], output_names=["logits"],
                              dynamic_shapes={"x": {0: _batch()}}, verbose=False)
        elif fmt == "pt2":
            program = torch.export.export(model, (example,),
                                          dynamic_shapes={"x": {0: _batch()}})
            torch.export.save(program, str(path))
        else:
            torch.jit.save(torch.jit.trace(model, example), str(path))
    return path


def onnx_available() -> bool:
    """Whether the onnx extra is installed (export and ONNX Runtime)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript"))


def load_exported(fmt: str, path: str | Path,
                  threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported network as a function of a CPU batch, run by the format's own runtime
    (ONNX Runtime with `threads` intra-op threads: as many as torch uses, by default, so that
    timings compare like with like)."""
    path = str(path)
    if fmt == "onnx":
        ort = _require("onnxruntime", "running an ONNX export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Its threads otherwise spin for a while after each call, taking the cores from
        # whatever runs next: eager PyTorch, when the two are timed in turn.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "pt2":
        module = torch.export.load(path).module()
        return lambda x: module(x)
    module = torch.jit.load(path)
    return lambda x: module(x)


def check_export(fmt: str, path: str | Path, reference: nn.Module, batch: torch.Tensor) -> float:
    """Run the exported network and `reference` (the masked network, eval mode) on `batch`;
    return the largest absolute difference of their outputs, or raise ExportError if it is
    above TOLERANCE."""
    reference = reference.to("cpu").eval()
    with torch.no_grad():
        want = reference(batch)
        got = load_exported(fmt, path)(batch)
    if got.shape != want.shape:
        Path(path).unlink(missing_ok=True)
        raise ExportError(f"the {fmt} export gives outputs of shape {tuple(got.shape)}, the "
                          f"masked network {tuple(want.shape)}")
    worst = float((got - want).abs().max())
    if not worst <= TOLERANCE:
        Path(path).unlink(missing_ok=True)
        raise ExportError(f"the {fmt} export differs from the masked network by up to {worst:.3g}"
                          f" on a batch of {len(batch)} (more than {TOLERANCE:g}); not keeping "
                          f"{path}")
    return worst


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"{what} needs the {module} package: pip install 'mlprunes[onnx]'"
                          ) from None
