"""Does rounding widths to multiples of R make a pruned network faster on this CPU?

WRN-40-2 is pruned (random criterion, seeded; latency depends on the widths, not on which
channels) until its MACs are at most half the full network's, once one channel at a time
(R = 1) and once 8 channels at a time from one block (R = 8). The compressed networks and the
full one are timed in turn, round after round, at batch 1 and 64, with R = 1's widths rounded
to multiples of 8 afterwards (R=1/8) beside them. Run:

    python benchmarks/round_to_latency.py [--fraction 0.5] [--repeats 30]
"""

from __future__ import annotations

import argparse
import platform

import torch

from mlprunes import arch
from mlprunes.counting import count
from mlprunes.engine.latency import measure_latencies
from mlprunes.nets import build
from mlprunes.pruning import Pruner, RandomSaliency, compress, spec_after


def pruned_to(spec, fraction: float, round_to: int, seed: int = 0):
    """The compressed network of `spec` pruned until its MACs are at most `fraction` of the
    full network's."""
    torch.manual_seed(seed)
    model = build(spec, masked=True)
    pruner = Pruner(model, RandomSaliency(seed), round_to=round_to)
    target = fraction * count(spec).flops
    while count(spec_after(spec, pruner.history)).flops > target:
        pruner.prune()
    return compress(model).eval(), spec_after(spec, pruner.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    spec = arch.wrn(40, 2)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    models = {"full": build(spec).eval()}
    specs = {"full": spec}
    for r in (1, 8):
        models[f"R={r}"], specs[f"R={r}"] = pruned_to(spec, args.fraction, r)
    # R = 1's own profile with each width at its nearest multiple of 8: rounding alone, the
    # profile kept (R = 8 pruning also changes which blocks lose channels).
    specs["R=1/8"] = specs["R=1"].rounded(8)
    models["R=1/8"] = build(specs["R=1/8"]).eval()
    for name, s in specs.items():
        c = count(s)
        odd = sum(1 for m in s.mids if m % 8)
        print(f"{name:6s} MACs {c.flops / 1e6:7.1f}M  params {c.params / 1e3:6.0f}k  "
              f"widths not a multiple of 8: {odd:2d} of {len(s.mids)}  mids {list(s.mids)}")
    for batch in (1, 64):
        times = measure_latencies(models, batch_size=batch, repeats=args.repeats, warmup=3)
        full = times["full"].median
        row = "\n    ".join(f"{n:6s} {t.median * 1e3:7.2f} ms ({t.median / full:.2f}x full, spread "
                        f"{t.spread:.2f})" for n, t in times.items())
        print(f"batch {batch:3d}:\n    {row}")
        print(f"batch {batch:3d}: R=8 / R=1 = {times['R=8'].median / times['R=1'].median:.2f}, "
              f"R=1/8 / R=1 = {times['R=1/8'].median / times['R=1'].median:.2f}")


if __name__ == "__main__":
    main()
