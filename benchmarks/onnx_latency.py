"""Eager PyTorch against ONNX Runtime (CPU) for a compressed WRN-40-2 at half its channels.

Every block keeps half its middle channels (the first half: latency depends on widths, not on
which channels), the network is compressed, exported to ONNX (the `export` command's path,
checked against the masked network) and timed in turn with eager PyTorch, round after round,
at batch 1 and 64, both with torch's thread count. Run:

    python benchmarks/onnx_latency.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from mlprunes import arch
from mlprunes.counting import count
from mlprunes.engine.export import check_export, export_network, load_exported
from mlprunes.engine.latency import measure_latencies
from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import compress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import onnxruntime

    torch.manual_seed(0)
    spec = arch.wrn(40, 2)
    masked = build(spec, masked=True).eval()
    for block in prunable_blocks(masked):
        block.mask[block.mid // 2:] = 0
    compact = compress(masked).eval()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads")
    print(f"# {compact.spec.name} at half its channels: {count(compact.spec).flops / 1e6:.1f}M "
          f"MACs (full {count(spec).flops / 1e6:.1f}M), mids {list(compact.spec.mids)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_network(compact, "onnx", Path(tmp) / "wrn.onnx", torch.randn(2, 3, 32, 32))
        worst = check_export("onnx", path, masked, torch.randn(8, 3, 32, 32))
        print(f"# ONNX export matches the masked network to {worst:.1e}")
        runtime = load_exported("onnx", path)
        for batch in (1, 64):
            timed = measure_latencies({"eager": compact}, batch_size=batch,
                                      repeats=args.repeats, others={"onnxruntime": runtime})
            eager, ort = timed["eager"], timed["onnxruntime"]
            print(f"batch {batch:3d}: eager {eager.median * 1e3:7.2f} ms (spread "
                  f"{eager.spread:.2f})  onnxruntime {ort.median * 1e3:7.2f} ms (spread "
                  f"{ort.spread:.2f})  onnxruntime / eager = {ort.median / eager.median:.2f}")


if __name__ == "__main__":
    main()
