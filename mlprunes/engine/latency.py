"""Wall-clock latency of a model on its current device: median of repeated runs after warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 20,
              warmup: int = 3) -> list[float]:
    """Seconds per call of `fn`, `repeats` times after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def measure_latency(model: nn.Module, batch_size: int = 1, image_size: int = 32,
                    repeats: int = 20, warmup: int = 3,
                    memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Median seconds of one eval-mode forward pass of a batch of random images."""
    param = next(model.parameters())
    x = torch.randn(batch_size, 3, image_size, image_size, device=param.device,
                    dtype=param.dtype).contiguous(memory_format=memory_format)
    was_training = model.training
    model.eval()
    try:
        return statistics.median(time_call(lambda: model(x), param.device, repeats, warmup))
    finally:
        model.train(was_training)
