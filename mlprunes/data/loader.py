"""A data loader that keeps the whole dataset on the training device as one uint8 tensor.

Batches are slices of a shuffled index; random crop (zero or reflection padding) and horizontal
flip are done
per sample on the whole batch with tensor ops; normalisation happens after augmentation, in the
compute dtype. There is no per-image Python on the hot path and no worker process.

All randomness of a batch comes from a generator seeded by (seed, epoch, batch index), so any
batch can be regenerated on its own: resuming at (epoch, batch) continues the exact stream that
an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


def _mix(*parts: int) -> int:
    """A 63-bit seed from a few integers (SplitMix-style), so nearby epochs are unrelated."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**64 - 1)
        value = (value * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        value ^= value >> 31
    return value & (2**63 - 1)


PAD_MODES = ("zero", "reflect")


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator,
                mode: str = "zero") -> torch.Tensor:
    """Each image cropped back to its size at its own random offset after padding with zeros
    or with its own reflection (the edge pixel not repeated, as numpy's and torch's reflect)."""
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    if padding == 0:
        return images
    n, c, h, w = images.shape
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding of {padding} needs images larger than {padding} "
                         f"pixels, got {h}x{w}")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(c, device=images.device)[None, :, None, None]
    if mode == "zero":
        return F.pad(images, (padding,) * 4)[batch, channels, rows, cols]
    # Reflection as index arithmetic on the image itself: no padded copy, any dtype.
    return images[batch, channels, _reflect(rows - padding, h), _reflect(cols - padding, w)]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside [0, size) mirrored back in about the edge pixels."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class DeviceLoader:
    """Batches of (normalised images, labels) from uint8 images held on `device`.

    `train=True` shuffles each epoch and augments each sample; `train=False` keeps the order and
    the images as they are. `epoch(e, start)` yields epoch e from batch `start` on.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], *, train: bool,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, padding: int = 4, flip: bool = True,
                 drop_last: bool | None = None, seed: int = 0, pad_mode: str = "zero"):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.batch_size = batch_size
        self.train = train
        self.padding = padding if train else 0
        if pad_mode not in PAD_MODES:
            raise ValueError(f"padding mode must be one of {', '.join(PAD_MODES)}, got "
                             f"{pad_mode!r}")
        self.pad_mode = pad_mode
        self.flip = flip and train
        # Training drops a ragged last batch (BN on a handful of samples is noise); eval keeps it.
        self.drop_last = train if drop_last is None else drop_last
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.seed = seed
        scale = 255.0
        self._mean = torch.tensor(mean, device=self.device, dtype=dtype).view(1, -1, 1, 1) * scale
        self._std = torch.tensor(std, device=self.device, dtype=dtype).view(1, -1, 1, 1) * scale
        self._next_epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._next_epoch
        self._next_epoch += 1
        return self.epoch(epoch)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        if len(self) == 0:
            raise ValueError(f"{self.num_samples} samples make no batch of {self.batch_size}")
        order = None
        if self.train:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=g).to(self.device)
        for b in range(start, len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
            index = order[lo:hi] if order is not None else slice(lo, hi)
            yield self._prepare(self.images[index], epoch, b), self.labels[index]

    def _prepare(self, images: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        if self.train:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch, batch, 1))
            images = random_crop(images, self.padding, g, self.pad_mode)
            if self.flip:
                images = random_flip(images, g)
        x = images.to(self.dtype).sub_(self._mean).div_(self._std)
        return x.contiguous(memory_format=self.memory_format)
