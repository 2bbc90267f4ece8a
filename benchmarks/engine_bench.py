"""Engine benchmarks: the device-resident loader and a training epoch, each against the plain
torchvision pipeline (DataLoader + PIL transforms) measured in the same run.

    python benchmarks/engine_bench.py                       # CPU: loader and WRN-16-1 epoch
    python benchmarks/engine_bench.py --model-depth 40 --model-width 2 --images 50000 \\
        --precisions fp32,bf16                              # the GPU figures (CUDA device)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mlprunes import arch
from mlprunes.data.loader import DeviceLoader
from mlprunes.engine.recipes import preset
from mlprunes.engine.trainer import Trainer, resolve_device
from mlprunes.nets import build

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILImages(Dataset):
    """The reference: images as PIL, transformed one at a time, as torchvision tutorials do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, like CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_loader(images, labels, batch_size, workers):
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(MEAN, STD)])
    return DataLoader(PILImages(images, labels, transform), batch_size=batch_size, shuffle=True,
                      num_workers=workers, drop_last=True, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def images_per_second(loader, device, limit=None):
    start = time.perf_counter()
    seen = 0
    for i, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        seen += len(y)
        if limit and i + 1 >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def reference_epoch(model, loader, device, lr=0.1):
    """The plain loop: fp32, no channels_last, SGD with the same recipe values."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", default="0,2", help="reference DataLoader worker counts")
    parser.add_argument("--model-depth", type=int, default=16)
    parser.add_argument("--model-width", type=float, default=1)
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    workers = [int(w) for w in args.workers.split(",")]
    print(f"# {args.images} CIFAR-shaped images, batch {args.batch_size}, torch "
          f"{torch.__version__}, device {device}, {torch.get_num_threads()} threads")

    ours = DeviceLoader(images, labels, args.batch_size, MEAN, STD, train=True, device=device)
    images_per_second(ours, device)  # warm-up
    fast = np.median([images_per_second(ours, device) for _ in range(3)])
    print(f"loader: DeviceLoader {fast:,.0f} images/s")
    for w in workers:
        ref = np.median([images_per_second(reference_loader(images, labels, args.batch_size, w),
                                           device) for _ in range(2)])
        print(f"loader: DataLoader+PIL, {w} workers {ref:,.0f} images/s -> ratio "
              f"{fast / ref:.1f}x (target >= 5x)")

    spec = arch.wrn(args.model_depth, args.model_width)
    for precision in args.precisions.split(","):
        torch.manual_seed(0)
        loader = DeviceLoader(images, labels, args.batch_size, MEAN, STD, train=True,
                              device=device, channels_last=device.type == "cuda")
        recipe = preset("wrn").override(epochs=args.epochs + 1, batch_size=args.batch_size)
        trainer = Trainer(build(spec), recipe, loader, precision=precision, progress=False)
        trainer.train_epoch()  # warm-up
        ours_s = np.median([trainer.train_epoch()["seconds"] for _ in range(args.epochs)])
        print(f"epoch {spec.name}: mlprunes Trainer ({precision}) {ours_s:.2f} s")
    for w in workers:
        torch.manual_seed(0)
        model = build(spec).to(device)
        ref_loader = reference_loader(images, labels, args.batch_size, w)
        reference_epoch(model, ref_loader, device)  # warm-up
        ref_s = np.median([reference_epoch(model, ref_loader, device)
                           for _ in range(args.epochs)])
        print(f"epoch {spec.name}: reference loop (fp32, DataLoader+PIL, {w} workers) "
              f"{ref_s:.2f} s -> mlprunes/reference {ours_s / ref_s:.2f}x (target <= 1.0x)")


if __name__ == "__main__":
    main()
