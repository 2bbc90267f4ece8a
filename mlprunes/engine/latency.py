"""Wall-clock latency of models on their current device, with the spread of the repeats.

Networks compared with each other are timed in turn, round after round (A B A B ...), so that a
change in the machine's load during the measurement falls on all of them alike rather than on
whichever was timed while it lasted. A measurement whose repeats disagree (a busy machine) says
so through its spread; whoever logs it decides whether to trust it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

# The most a trustworthy measurement's repeats may spread: the middle half of them within half
# of their median. An idle machine stays well inside it (a few percent); another job competing
# for the cores does not.
MAX_SPREAD = 0.5
# Fewer repeats than this say too little about their spread to refuse a figure on it.
MIN_REPEATS_TO_JUDGE = 5


@dataclass(frozen=True)
class Latency:
    """Seconds per call, one per repeat."""
    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range over median: 0 for identical repeats."""
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return (q3 - q1) / self.median

    @property
    def steady(self) -> bool:
        return len(self.times) < MIN_REPEATS_TO_JUDGE or self.spread <= MAX_SPREAD


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: Mapping[str, Callable[[], object]], device: torch.device,
               repeats: int = 20, warmup: int = 3) -> dict[str, Latency]:
    """Each of `fns` called `repeats` times, in turn, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _synchronise(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _synchronise(device)
            times[name].append(time.perf_counter() - start)
    return {name: Latency(tuple(t)) for name, t in times.items()}


@torch.no_grad()
def measure_latencies(models: Mapping[str, nn.Module], batch_size: int = 1,
                      image_size: int = 32, repeats: int = 20, warmup: int = 3,
                      memory_format: torch.memory_format = torch.contiguous_format,
                      others: Mapping[str, Callable[[torch.Tensor], object]] | None = None
                      ) -> dict[str, Latency]:
    """Eval-mode forward passes of one batch of random images through each model (all on one
    device), timed in turn; `others` are other runtimes (ONNX Runtime) called with the same
    batch, timed in the same rounds."""
    param = next(next(iter(models.values())).parameters())
    x = torch.randn(batch_size, 3, image_size, image_size, device=param.device,
                    dtype=param.dtype).contiguous(memory_format=memory_format)
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    try:
        fns = {name: (lambda m=model: m(x)) for name, model in models.items()}
        fns.update({name: (lambda f=fn: f(x)) for name, fn in (others or {}).items()})
        return time_calls(fns, param.device, repeats, warmup)
    finally:
        for name, model in models.items():
            model.train(modes[name])


def measure_latency(model: nn.Module, batch_size: int = 1, image_size: int = 32,
                    repeats: int = 20, warmup: int = 3,
                    memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Median seconds of one eval-mode forward pass of a batch of random images."""
    return measure_latencies({"model": model}, batch_size, image_size, repeats, warmup,
                             memory_format)["model"].median
