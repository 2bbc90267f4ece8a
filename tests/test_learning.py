"""Learning where it should learn: tiny networks on the generated shapes data, on the CPU."""

import pytest

from mlprunes import arch
from mlprunes.data import load_data
from mlprunes.data.loader import DeviceLoader
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.recipes import preset
from mlprunes.engine.trainer import Trainer, fit, seed_everything
from mlprunes.nets import build

CHANCE_ERROR = 90.0  # 10 balanced classes


@pytest.fixture(scope="module")
def shapes():
    return load_data("shapes", image_size=16, shapes_train=3000, shapes_test=500, seed=0)


@pytest.mark.parametrize("spec", [arch.wrn(10, 2), arch.densenet(16, 12)], ids=lambda s: s.name)
def test_tiny_networks_learn_shapes_well_above_chance(shapes, spec):
    seed_everything(0)
    train = DeviceLoader(shapes.train.images, shapes.train.labels, 64, shapes.mean, shapes.std,
                         train=True)
    test = DeviceLoader(shapes.test.images, shapes.test.labels, 500, shapes.mean, shapes.std,
                        train=False)
    recipe = preset(spec.family).override(epochs=12, batch_size=64, lr=0.1, schedule="cosine")
    trainer = Trainer(build(spec), recipe, train, progress=False)
    epochs = []
    fit(trainer, test, callbacks=[lambda epoch, metrics: epochs.append(metrics)])
    final = evaluate(trainer.model, test)
    assert len(epochs) == 12
    assert epochs[-1]["train_loss"] < 0.75 * epochs[0]["train_loss"]
    # Well above chance: at most two thirds of chance's error (chance is 90%).
    assert final["error"] < 60.0, final
    assert final["top5_error"] < final["error"]


def test_an_imagefolder_tree_trains(tmp_path):
    """A class-per-folder tree of PNGs (made here) loads, and a network learns it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for name, colour in colours.items():
        folder = tmp_path / "tree" / name
        folder.mkdir(parents=True)
        for i in range(40):
            pixels = np.clip(rng.normal(colour, 40, size=(20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    data = load_data("imagefolder", tmp_path / "tree", image_size=12, seed=0)
    assert data.classes == sorted(colours) and data.image_size == (12, 12)
    assert len(data.train) == 96 and len(data.test) == 24
    seed_everything(0)
    train = DeviceLoader(data.train.images, data.train.labels, 16, data.mean, data.std,
                         train=True)
    test = DeviceLoader(data.test.images, data.test.labels, 64, data.mean, data.std,
                        train=False)
    spec = arch.wrn(10, 1, num_classes=3)
    trainer = Trainer(build(spec), preset("wrn").override(epochs=4, batch_size=16, lr=0.05),
                      train, progress=False)
    fit(trainer)
    assert evaluate(trainer.model, test)["error"] < 30.0  # chance: 66.7%
