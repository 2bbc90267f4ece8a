"""Top-1 and top-5 error (percent) and mean loss of a model over a loader."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def evaluate(model: nn.Module, loader, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong1 = torch.zeros((), device=device, dtype=torch.long)
    wrong5 = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    context = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    try:
        for x, y in loader.epoch(0):
            with context:
                out = model(x)
            out = out.float()
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            k = min(5, out.shape[1])
            top = out.topk(k, dim=1).indices
            hit = top == y[:, None]
            wrong1 += (~hit[:, 0]).sum()
            wrong5 += (~hit.any(dim=1)).sum()
            seen += len(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return {"error": 100.0 * wrong1.item() / seen, "top5_error": 100.0 * wrong5.item() / seen,
            "loss": loss_sum.item() / seen, "samples": seen}
