"""Core benchmarks: what masks, the Fisher hook and compression cost or save on this machine.

Each figure is a ratio against a reference measured in the same run, interleaved, so that the
machine's state affects both sides alike. Run:

    python benchmarks/core_bench.py                    # WRN-40-2, NCHW
    python benchmarks/core_bench.py --channels-last    # the same in NHWC
    python benchmarks/core_bench.py --arch torchvision:resnet18    # any network
    python benchmarks/core_bench.py --arch torchvision:mobilenet_v2 --groups all

A traced network (anything but wrn and densenet) is pruned to half of each group's channels,
chosen at random, for the latency comparison; WRN and DenseNet-BC lose half of all their
prunable channels, chosen at random across blocks, as before.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from mlprunes import arch
from mlprunes.counting import count
from mlprunes.engine.latency import measure_latency
from mlprunes.nets import build, prunable_units
from mlprunes.pruning import FisherSaliency, Pruner, RandomSaliency, compress


def train_step(model, optimiser, x, y):
    optimiser.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimiser.step()


def bench_training_step(spec, batch_size, rounds, device, memory_format):
    """Median seconds per SGD step, plain vs masked with the Fisher hook accumulating."""
    torch.manual_seed(0)
    plain = build(spec).to(device, memory_format=memory_format).train()
    masked = build(spec, masked=True).to(device, memory_format=memory_format).train()
    pruner = Pruner(masked, FisherSaliency())
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, spec.num_classes, (batch_size,), device=device)
    models = {"plain": plain, "masked+fisher": masked}
    optimisers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                  for k, m in models.items()}
    times = {k: [] for k in models}
    for k in models:  # warm-up
        for _ in range(2):
            train_step(models[k], optimisers[k], x, y)
    for _ in range(rounds):
        for k in models:  # interleaved, so drift in the machine hits both alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(models[k], optimisers[k], x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - start)
    assert any(t is not None for t in pruner.saliency._totals), "Fisher hook never ran"
    return {k: statistics.median(v) for k, v in times.items()}


def bench_compressed_latency(spec, batch_sizes, repeats, device, memory_format):
    """Median eval latency of a masked model with half its channels pruned at random, and of
    its compressed form."""
    torch.manual_seed(0)
    masked = build(spec, masked=True).to(device, memory_format=memory_format).eval()
    if isinstance(spec, arch.GraphSpec):
        for unit in prunable_units(masked):   # half of every group, at random
            mask = torch.zeros(unit.mid)
            mask[torch.randperm(unit.mid)[:max(1, unit.mid // 2)]] = 1
            unit.set_mask(mask)
    else:
        pruner = Pruner(masked, RandomSaliency(0))
        for _ in range(spec.prunable_channels // 2):
            pruner.prune()
    compact = compress(masked).to(memory_format=memory_format).eval()
    results = {}
    for bs in batch_sizes:
        m_times, c_times = [], []
        for _ in range(3):  # alternate the two a few times
            m_times.append(measure_latency(masked, bs, repeats=repeats, memory_format=memory_format))
            c_times.append(measure_latency(compact, bs, repeats=repeats, memory_format=memory_format))
        m, c = statistics.median(m_times), statistics.median(c_times)
        results[bs] = (m, c)
    return compact.spec, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="wrn",
                        help="wrn, densenet, resnet, vgg, torchvision:NAME, ...")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--groups", default=None, help="internal or all (traced networks)")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--eval-batches", default="1,64,128")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.arch == "wrn":
        spec = arch.wrn(args.depth or 40, args.width or 2)
    else:
        spec = arch.make_spec(args.arch, depth=args.depth, width=args.width, groups=args.groups)
    print(f"# {spec.name}, torch {torch.__version__}, {platform.processor() or platform.machine()}"
          f", {torch.get_num_threads()} threads, device {device}, "
          f"{'channels_last' if args.channels_last else 'contiguous'}")

    step = bench_training_step(spec, args.train_batch, args.rounds, device, memory_format)
    ratio = step["masked+fisher"] / step["plain"]
    print(f"training step, batch {args.train_batch}: plain {step['plain'] * 1e3:.1f} ms, "
          f"masked+fisher {step['masked+fisher'] * 1e3:.1f} ms, ratio {ratio:.3f}x "
          f"(target <= {'1.10' if isinstance(spec, arch.GraphSpec) else '1.05'}x)")

    batches = [int(b) for b in args.eval_batches.split(",")]
    compact_spec, latency = bench_compressed_latency(spec, batches, args.repeats, device,
                                                     memory_format)
    print(f"half pruned at random: params {count(spec).params:,} -> "
          f"{count(compact_spec).params:,}, MACs {count(spec).flops:,} -> "
          f"{count(compact_spec).flops:,}")
    for bs, (m, c) in latency.items():
        print(f"eval latency, batch {bs}: masked {m * 1e3:.2f} ms, compressed {c * 1e3:.2f} ms, "
              f"ratio {c / m:.3f}x (target <= 0.7x)")


if __name__ == "__main__":
    main()
