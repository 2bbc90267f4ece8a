"""Per-sample weight gradients of conv, linear and BatchNorm layers, from what a layer's forward
hook and its output's gradient hook see: the sum over a batch of each sample's squared gradient,
which a batch-summed `.grad` cannot give (it squares the sum instead of summing the squares).

For a conv, sample n's gradient is the gradient of <conv(x_n, W), dL/dy_n> with respect to W,
taken per sample with `torch.func.vmap` (stride, padding mode, dilation and groups as the layer
has them). For a linear layer it is dL/dy_n^T x_n, summed over any positions between. For a
BatchNorm it is the scale's, sum_hw dL/dy_n * x_hat_n, with x_hat normalised by the statistics
the forward used (the batch's in training, the running ones in evaluation); the batch statistics
are held constant, as per-sample gradients of a batch-normalised network usually are.
"""

from __future__ import annotations

import torch
from torch import nn

# Samples per vmap call: bounds the (samples, *weight) tensor a chunk materialises.
_CHUNK_ELEMENTS = 1 << 24


def supported(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))


def squared_sum(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """sum_n (dL/dW)_n^2 over the batch, for a layer that read `x` and whose output has
    gradient `grad`; the shape of the layer's weight, in fp32."""
    x, grad = x.detach().float(), grad.detach().float()
    if isinstance(module, nn.Conv2d):
        return _conv(module, x, grad)
    if isinstance(module, nn.Linear):
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        grad = grad.reshape(grad.shape[0], -1, grad.shape[-1])
        return _chunked(module, x, grad, lambda xs, gs: torch.einsum("nko,nki->noi", gs, xs))
    if isinstance(module, nn.BatchNorm2d):
        return torch.einsum("nchw,nchw->nc", grad, _normalised(module, x)).pow(2).sum(0)
    raise TypeError(f"no per-sample gradient for {type(module).__name__}")


def _conv(module: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    weight = module.weight.detach().float()

    def one(xn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        def inner(w: torch.Tensor) -> torch.Tensor:
            return (module._conv_forward(xn[None], w, None) * gn[None]).sum()
        return torch.func.grad(inner)(weight)

    return _chunked(module, x, grad, torch.func.vmap(one))


def _chunked(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, per_sample) -> torch.Tensor:
    step = max(1, _CHUNK_ELEMENTS // module.weight.numel())
    total = torch.zeros(module.weight.shape, device=x.device)
    for i in range(0, x.shape[0], step):
        total += per_sample(x[i:i + step], grad[i:i + step]).pow(2).sum(0)
    return total


def _normalised(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if bn.training or bn.running_mean is None:
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean.float(), bn.running_var.float()
    return (x - mean[None, :, None, None]) * torch.rsqrt(var + bn.eps)[None, :, None, None]
