"""Is a study's base network trained to convergence? Train it for several epoch counts (the
study file's data and recipe otherwise) and print the test error of each, with no tracking
store: more epochs should change the error by less than a point.

    python benchmarks/convergence.py --preset demo --epochs 30,60,120 --seeds 0,1 \\
        --test-images 4000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from mlprunes.arch import make_spec
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.trainer import Trainer, fit, seed_everything
from mlprunes.jobs import RunConfig
from mlprunes.nets import build
from mlprunes.stages.common import load_splits, make_loaders
from mlprunes.study.studyfile import load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--epochs", default="30,60,120")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--test-images", type=int, default=None,
                        help="a larger generated test set than the study's, for less noise")
    args = parser.parse_args()
    plan = load_preset(args.preset)
    data = plan.data if args.test_images is None else replace(plan.data,
                                                              shapes_test=args.test_images)
    splits = load_splits(data)
    spec = make_spec(**plan.arch, num_classes=splits.num_classes)
    family = plan.arch.get("family", "wrn")
    for epochs in (int(e) for e in args.epochs.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            recipe = replace(plan.train_recipe(family), epochs=epochs)
            run = RunConfig(seed=seed, progress=False)
            seed_everything(seed)
            loaders = make_loaders(splits, recipe.batch_size, run)
            trainer = Trainer(build(spec), recipe, loaders.train, progress=False)
            start = time.perf_counter()
            fit(trainer)
            error = evaluate(trainer.model, loaders.test)["error"]
            print(f"{spec.name} {recipe.schedule} epochs={epochs} seed={seed} "
                  f"test_error={error:.2f}% ({len(splits.test)} test images) "
                  f"seconds={time.perf_counter() - start:.0f}", flush=True)


if __name__ == "__main__":
    main()
