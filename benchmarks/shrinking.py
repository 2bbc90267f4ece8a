"""A prune run on a network that shrinks, against the masked run: the same channels, the same
curves, and how much less time. Each case trains its base network once in a temporary store,
then runs the prune stage (`mlprunes prune`, as a user does) with each --shrink-every, and
prints wall times as ratios to the masked run measured in the same session.

    python benchmarks/shrinking.py demo        # the demo's base network and prune schedule
    python benchmarks/shrinking.py wrn-16-2    # WRN-16-2, 90% of its channels, 32-pixel shapes
    python benchmarks/shrinking.py cuts        # what one cut costs, per network

Run it with nothing else on the machine: two heavy jobs at once distort every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    # The demo study's base training and prune schedule (study/presets/demo.toml).
    "demo": dict(
        train=["--arch", "wrn", "--depth", "16", "--width", "1", "--epochs", "30",
               "--batch-size", "64", "--schedule", "cosine"],
        data=["--dataset", "shapes", "--image-size", "16", "--shapes-train", "2000",
              "--shapes-test", "2000", "--val-split", "0.1"],
        prune=["--criterion", "fisher", "--prunes", "170", "--prune-every", "3",
               "--val-every", "10", "--save-every", "20", "--batch-size", "64"],
        shrink=[0, 10, 1, 50]),
    # WRN-16-2 (448 prunable channels) to 90% of them gone, on CIFAR-sized images.
    "wrn-16-2": dict(
        train=["--arch", "wrn", "--depth", "16", "--width", "2", "--epochs", "3",
               "--batch-size", "64", "--schedule", "cosine"],
        data=["--dataset", "shapes", "--image-size", "32", "--shapes-train", "2000",
              "--shapes-test", "500", "--val-split", "0.1"],
        prune=["--criterion", "fisher", "--prunes", "403", "--prune-every", "3",
               "--val-every", "20", "--save-every", "100", "--batch-size", "64"],
        shrink=[0, 10]),
}


def mlprunes(*args: str, env: dict) -> tuple[str, float]:
    """Run `mlprunes ARGS`; return (the run ID it prints last, wall seconds)."""
    exe = str(Path(sys.executable).parent / "mlprunes")
    start = time.perf_counter()
    done = subprocess.run([exe, *args, "--no-progress"], env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"mlprunes {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1], seconds


def artifact(client, run_id: str, path: str, folder: str):
    return json.loads(Path(client.download_artifacts(run_id, path, folder)).read_text())


def compare_case(name: str) -> None:
    from mlflow.tracking import MlflowClient

    case = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        os.environ.update(env)
        base, seconds = mlprunes("train", *case["train"], *case["data"], "--no-log-model",
                                 env=env)
        print(f"{name}: base network trained in {seconds:.0f} s (run {base})")
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        results = {}
        for every in case["shrink"]:
            run_id, seconds = mlprunes("prune", "--base-run-id", base, *case["prune"],
                                       "--shrink-every", str(every), "--no-log-model", env=env)
            folder = tempfile.mkdtemp(dir=tmp)
            history = artifact(client, run_id, "prune_history.json", folder)
            curve = {m.step: m.value for m in client.get_metric_history(run_id, "val_error")}
            losses = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
            metrics = client.get_run(run_id).data.metrics
            results[every] = (seconds, history, curve, losses, metrics)
        masked_seconds, masked_history, masked_curve, masked_losses, masked_metrics = results[0]
        print(f"{'shrink-every':>12} {'wall s':>8} {'ratio':>6} {'same prunes':>12} "
              f"{'max |d val_err|':>16} {'max |d val_loss|':>17} {'test err':>9} "
              f"{'train TMACs':>12}")
        for every, (seconds, history, curve, losses, metrics) in results.items():
            same = next((i for i, (a, b) in enumerate(zip(history, masked_history)) if a != b),
                        len(history))
            # Up to the first prune that differs: after it, the two runs prune other networks.
            steps = [s for s in curve if s <= same]
            d_err = max(abs(curve[s] - masked_curve[s]) for s in steps)
            d_loss = max(abs(losses[s] - masked_losses[s]) for s in steps)
            print(f"{every:>12} {seconds:>8.1f} {seconds / masked_seconds:>6.2f} "
                  f"{same:>5} of {len(history):<5} {d_err:>16.3g} {d_loss:>17.3g} "
                  f"{metrics['test_error']:>8.2f}% {metrics['train_macs'] / 1e12:>12.2f}")


def cuts() -> None:
    """The cost of one cut (copy, compression of the indices, masks, check) per network, against
    the cost of one fine-tuning step of the full network at batch 64, both at 32 pixels."""
    import torch

    from mlprunes.arch import make_spec, wrn
    from mlprunes.data.loader import DeviceLoader
    from mlprunes.engine.recipes import preset
    from mlprunes.engine.trainer import Trainer
    from mlprunes.nets import build, prunable_units
    from mlprunes.pruning.shrink import cut

    specs = [wrn(16, 2), wrn(40, 2), make_spec("resnet", depth=56), make_spec("vgg", depth=16),
             make_spec("torchvision:resnet18"), make_spec("torchvision:mobilenet_v2")]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (256, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (256,), generator=generator)
    print(f"{'network':<28} {'cut s':>7} {'step s':>7} {'cut / step':>10}")
    for spec in specs:
        model = build(spec, masked=True)
        for unit in prunable_units(model):   # a tenth of every unit's channels masked
            mask = torch.ones(unit.mid)
            mask[:unit.mid // 10] = 0
            unit.set_mask(mask)
        start = time.perf_counter()
        cut(model, (3, 32, 32))
        cut_seconds = time.perf_counter() - start
        loader = DeviceLoader(images, labels, 64, (0.5,) * 3, (0.25,) * 3, train=True, seed=0)
        trainer = Trainer(model, preset("wrn", pruning=True), loader, progress=False)
        trainer.train_steps(2)
        step = trainer.train_steps(6)["seconds"] / 6
        print(f"{spec.name:<28} {cut_seconds:>7.2f} {step:>7.3f} {cut_seconds / step:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=[*CASES, "cuts"])
    args = parser.parse_args()
    if args.case == "cuts":
        cuts()
    else:
        compare_case(args.case)


if __name__ == "__main__":
    main()
