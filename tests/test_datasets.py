import math
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlprunes.data import DATASETS, SHAPE_CLASSES, DatasetError, ImageSet, load_data

# -- fake CIFAR folders in the real pickle format -----------------------------------------------


def fake_rows(n: int, first_id: int, rng: np.random.Generator) -> np.ndarray:
    """Random uint8 image rows whose first two bytes spell a unique id, so a test can tell
    exactly which image went where."""
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n)
    rows[:, 0], rows[:, 1] = ids // 256, ids % 256
    return rows


def image_ids(images: torch.Tensor) -> list[int]:
    """The ids fake_rows wrote: bytes 0 and 1 of a row are red pixels (0, 0) and (0, 1)."""
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


def dump(path: Path, obj, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows = fake_rows(per_batch, (i - 1) * per_batch, rng)
        labels = rng.integers(0, 10, per_batch).tolist()
        dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                          "data": rows, "labels": labels})
        train_rows.append(rows)
        train_labels += labels
    test_rows = fake_rows(n_test, 1000, rng)
    test_labels = rng.integers(0, 10, n_test).tolist()
    dump(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    names = [f"class{i}" for i in range(10)]
    dump(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return dict(train=np.concatenate(train_rows), train_labels=train_labels, test=test_rows,
                test_labels=test_labels, names=names)


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 4) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = fake_rows(n, 0, rng)
        fine = rng.integers(0, 100, n).tolist()
        coarse = [(f + 7) % 20 for f in fine]  # differs from fine: the loader must pick fine
        dump(folder / split, {"data": rows, "fine_labels": fine, "coarse_labels": coarse})
        out[split], out[f"{split}_labels"] = rows, fine
    out["names"] = [f"fine{i}" for i in range(100)]
    dump(folder / "meta", {"fine_label_names": out["names"],
                           "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return out


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as the real CIFAR files do, instead of the
    _codecs.encode calls that Python 3 uses at protocol 2."""

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    """A pickle shaped like one written by Python 2's cPickle and numpy 1 (keys and class names
    as byte strings, arrays rebuilt by numpy.core.multiarray._reconstruct)."""
    import io

    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


# -- CIFAR ----------------------------------------------------------------------------------------


def test_cifar10_loads_fake_folder(tmp_path):
    raw = write_cifar10(tmp_path)
    data = load_data("cifar10", data_dir=tmp_path)
    assert data.name == "cifar10" and data.classes == raw["names"] and data.num_classes == 10
    assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (5, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.train.images.is_contiguous() and data.image_size == (32, 32)
    # Batches 1..5 in order, then each row's 3072 bytes are the R, G, B planes, row-major.
    assert data.train.labels.tolist() == raw["train_labels"]
    assert data.test.labels.tolist() == raw["test_labels"]
    assert torch.equal(data.train.images.reshape(30, -1), torch.from_numpy(raw["train"]))
    c, y, x = 2, 5, 7
    assert data.train.images[13, c, y, x] == raw["train"][13, c * 1024 + y * 32 + x]
    assert data.test.images[4, 1, 31, 0] == raw["test"][4, 1024 + 31 * 32]
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)
    assert data.val is None and data.eval_set is data.test


def test_cifar100_loads_fine_labels(tmp_path):
    raw = write_cifar100(tmp_path)
    data = load_data("cifar100", data_dir=str(tmp_path))
    assert data.classes == raw["names"] and data.num_classes == 100
    assert data.train.labels.tolist() == raw["train_labels"]
    assert data.test.labels.tolist() == raw["test_labels"]
    assert torch.equal(data.test.images.reshape(4, -1), torch.from_numpy(raw["test"]))
    assert data.train.images[3, 0, 10, 20] == raw["train"][3, 10 * 32 + 20]
    assert data.mean == (0.5071, 0.4865, 0.4409) and data.std == (0.2673, 0.2564, 0.2762)


def test_cifar_reads_python2_pickles(tmp_path):
    raw = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(py2_pickle(
        {b"data": raw["test"], b"labels": raw["test_labels"], b"batch_label": b"testing"}))
    (folder / "batches.meta").write_bytes(py2_pickle(
        {b"label_names": [n.encode() for n in raw["names"]]}))
    assert b"numpy.core.multiarray" in (folder / "test_batch").read_bytes()
    data = load_data("cifar10", data_dir=tmp_path)
    assert data.classes == raw["names"]
    assert torch.equal(data.test.images.reshape(5, -1), torch.from_numpy(raw["test"]))


def test_missing_cifar_names_the_path_and_download(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_data("cifar10", data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in message
    assert "--download" in message and "\n" not in message


def test_missing_cifar_file_is_named(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DatasetError, match="CIFAR-100 not found") as err:
        load_data("cifar100", data_dir=tmp_path)
    assert str(tmp_path / "cifar-100-python" / "test") in str(err.value)


def test_default_data_dir_is_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_data("cifar10")
    assert str(Path("data") / "cifar-10-batches-py" / "data_batch_1") in str(err.value)
    write_cifar10(tmp_path / "data")
    assert len(load_data("cifar10").train) == 30


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "labels", "not_dict",
                                    "code"])
def test_corrupt_cifar_batch_is_a_dataset_error(tmp_path, damage):
    raw = write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if damage == "garbage":
        path.write_bytes(b"this is not a pickle at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "wrong_shape":
        dump(path, {"data": raw["train"][:6, :3071], "labels": [0] * 6})
    elif damage == "labels":
        dump(path, {"data": raw["train"][:6], "labels": [0, 1, 2, 3, 4, 10]})
    elif damage == "not_dict":
        dump(path, [1, 2, 3])
    else:  # a pickle that would run code when loaded
        dump(path, {"data": raw["train"][:6], "labels": [0] * 6, "x": print})
    with pytest.raises(DatasetError, match="corrupt CIFAR-10 file") as err:
        load_data("cifar10", data_dir=tmp_path)
    assert str(path) in str(err.value)


def test_download_only_when_asked(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            print("Downloading ...")  # must not reach stdout, which carries run IDs
            if not (Path(root) / "cifar-10-batches-py").exists():
                write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(DatasetError, match="not found"):
        load_data("cifar10", data_dir=tmp_path)
    assert calls == []
    data = load_data("cifar10", data_dir=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)] and len(data.train) == 30
    assert "Downloading" not in capsys.readouterr().out


def test_download_failure_is_a_dataset_error(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    def offline(root, train=True, download=False):
        print("Downloading https://www.cs.toronto.edu/...")
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetError, match="could not download CIFAR-100.*unreachable"):
        load_data("cifar100", data_dir=tmp_path, download=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "Downloading" in captured.err


def test_cifar_cannot_be_resized(tmp_path):
    write_cifar10(tmp_path)
    assert load_data("cifar10", data_dir=tmp_path, image_size=32).image_size == (32, 32)
    with pytest.raises(DatasetError, match="32x32"):
        load_data("cifar10", data_dir=tmp_path, image_size=24)


# -- ImageFolder --------------------------------------------------------------------------------


def class_colour(c: int, i: int) -> tuple[int, int, int]:
    """A solid colour naming class c and image i, unchanged by resizing."""
    return (40 * c + 20, 10 * i + 5, 200)


def write_tree(root: Path, classes=("ant", "bee", "cat"), per_class=10, first=0) -> None:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(first, first + per_class):
            size = (20 + i, 12 + c)  # varied, non-square sizes: everything gets resized
            image = Image.new("RGB", size, class_colour(c, i))
            if i % 3 == 1:
                image = image.convert("RGBA")  # other modes are converted to RGB
            image.save(root / name / f"{i:03d}.png")


def identities(images: ImageSet) -> list[tuple[int, int]]:
    """(class, image) identities read back from the colours write_tree used."""
    centre = images.images[:, :, 4, 4].tolist()
    return [((r - 20) // 40, (g - 5) // 10) for r, g, _ in centre]


def test_imagefolder_single_tree_is_split_stratified(tmp_path):
    write_tree(tmp_path)
    data = load_data("imagefolder", data_dir=tmp_path, image_size=16, seed=3)
    assert data.classes == ["ant", "bee", "cat"] and data.image_size == (16, 16)
    assert data.train.images.shape == (24, 3, 16, 16) and data.test.images.shape == (6, 3, 16, 16)
    assert data.train.images.dtype == torch.uint8
    assert data.train.labels.bincount().tolist() == [8, 8, 8]
    assert data.test.labels.bincount().tolist() == [2, 2, 2]
    train, test = identities(data.train), identities(data.test)
    assert [c for c, _ in train] == data.train.labels.tolist()
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 30
    # Solid colours survive the resize exactly, whatever the source mode.
    assert torch.all(data.train.images[:, 2] == 200)
    again = load_data("imagefolder", data_dir=tmp_path, image_size=16, seed=3)
    assert identities(again.test) == test
    other = load_data("imagefolder", data_dir=tmp_path, image_size=16, seed=4)
    assert identities(other.test) != test


def test_imagefolder_statistics_come_from_training_images(tmp_path):
    write_tree(tmp_path)
    data = load_data("imagefolder", data_dir=tmp_path)
    assert data.image_size == (32, 32)
    x = data.train.images.double() / 255
    assert data.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    std = x.std(dim=(0, 2, 3), unbiased=False).tolist()
    assert data.std[:2] == pytest.approx(std[:2])
    # Blue is 200 everywhere: its std is floored at one grey level, not zero (no division by 0).
    assert std[2] == 0 and data.std[2] == pytest.approx(1 / 255)


def test_imagefolder_train_test_subfolders(tmp_path):
    write_tree(tmp_path / "train", per_class=4)
    write_tree(tmp_path / "test", per_class=2, first=4)
    data = load_data("imagefolder", data_dir=tmp_path, image_size=8)
    assert data.classes == ["ant", "bee", "cat"]
    assert len(data.train) == 12 and len(data.test) == 6
    assert sorted(identities(data.test)) == [(c, i) for c in range(3) for i in (4, 5)]


def test_imagefolder_subfolders_must_agree(tmp_path):
    write_tree(tmp_path / "train", classes=("ant", "bee"), per_class=2)
    write_tree(tmp_path / "test", classes=("ant", "cow"), per_class=2)
    with pytest.raises(DatasetError, match=r"different classes.*\['bee'\].*\['cow'\]"):
        load_data("imagefolder", data_dir=tmp_path)


def test_imagefolder_train_without_test(tmp_path):
    write_tree(tmp_path / "train", per_class=2)
    with pytest.raises(DatasetError, match="no test/ folder"):
        load_data("imagefolder", data_dir=tmp_path)


def test_imagefolder_missing_or_empty(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_data("imagefolder", data_dir=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(err.value)
    with pytest.raises(DatasetError) as err:
        load_data("imagefolder", data_dir=tmp_path)
    assert f"no images found in {tmp_path}" in str(err.value)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_data("imagefolder", data_dir=tmp_path)


def test_imagefolder_unreadable_image(tmp_path):
    write_tree(tmp_path, per_class=2)
    bad = tmp_path / "bee" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image") as err:
        load_data("imagefolder", data_dir=tmp_path)
    assert str(bad) in str(err.value)


# -- shapes -------------------------------------------------------------------------------------


def test_shapes_defaults_are_fast_balanced_and_well_formed():
    start = time.perf_counter()
    data = load_data("shapes")
    elapsed = time.perf_counter() - start
    # Vectorised generation takes a fraction of a second; a per-image loop would take many.
    assert elapsed < 3.0, f"generating shapes took {elapsed:.2f} s"
    assert data.name == "shapes" and data.classes == list(SHAPE_CLASSES)
    assert len(data.classes) == 10 and len(set(data.classes)) == 10
    assert data.train.images.shape == (5000, 3, 32, 32)
    assert data.test.images.shape == (1000, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert data.train.images.is_contiguous()
    assert data.train.labels.bincount(minlength=10).tolist() == [500] * 10
    assert data.test.labels.bincount(minlength=10).tolist() == [100] * 10
    # Images use the full range of colours, not a constant or washed-out canvas.
    assert data.train.images.min() == 0 and data.train.images.max() == 255
    assert all(0.3 < m < 0.7 for m in data.mean) and all(0.15 < s < 0.45 for s in data.std)


def test_shapes_are_deterministic_per_seed_and_differ_across_seeds():
    a = load_data("shapes", seed=1, shapes_train=200, shapes_test=50)
    b = load_data("shapes", seed=1, shapes_train=200, shapes_test=50)
    c = load_data("shapes", seed=2, shapes_train=200, shapes_test=50)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.images, b.test.images) and a.mean == b.mean
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.test.images, c.test.images)
    # Train and test come from different streams, not the same images twice.
    assert not torch.equal(a.train.images[:50], a.test.images)


def test_shapes_sizes_and_streams():
    small = load_data("shapes", seed=5, shapes_train=105, shapes_test=30, image_size=24)
    assert small.train.images.shape == (105, 3, 24, 24) and small.image_size == (24, 24)
    counts = small.train.labels.bincount(minlength=10)
    assert counts.max() - counts.min() <= 1
    # The test set does not depend on how many training images were asked for.
    bigger = load_data("shapes", seed=5, shapes_train=300, shapes_test=30, image_size=24)
    assert torch.equal(small.test.images, bigger.test.images)


def test_shapes_bad_sizes():
    with pytest.raises(DatasetError, match="shapes_train"):
        load_data("shapes", shapes_train=0)
    with pytest.raises(DatasetError, match="at least 8"):
        load_data("shapes", image_size=4)
    with pytest.raises(DatasetError, match="image size"):
        load_data("shapes", image_size=0)


def shape_masks(angle: float, size: int = 32) -> np.ndarray:
    """Every class's mask (10 x S x S), centred and untilted unless `angle` says otherwise."""
    from mlprunes.data import shapes

    axis = np.arange(size, dtype=np.float32) + 0.5
    q = {k: np.array([v], dtype=np.float32) for k, v in dict(
        half=0.4 * size, aspect=1.0, angle=angle, cx=size / 2, cy=size / 2,
        period=0.2 * size).items()}
    q["phase"] = np.array([[0.5, 0.5]], dtype=np.float32)  # a bar or dot on the centre line
    return np.concatenate([shapes._mask(name, q, axis[None, None, :], axis[None, :, None])
                           for name in SHAPE_CLASSES])


def test_shapes_classes_are_distinct_and_survive_flips():
    masks = shape_masks(0.0)
    # Each class is its own mirror image, so horizontal flips never change the class...
    assert np.allclose(masks, masks[:, :, ::-1], atol=1e-4)
    # ...and a flipped tilt is the opposite tilt, which is drawn as often.
    assert np.allclose(shape_masks(0.3)[:, :, ::-1], shape_masks(-0.3), atol=1e-4)
    # hstripes and vstripes are not mirror images of each other: they differ by a transpose.
    assert np.allclose(masks[6], masks[7].T, atol=1e-4)
    for k in range(10):
        assert 0.05 < masks[k].mean() < 0.7, f"{SHAPE_CLASSES[k]} covers {masks[k].mean():.2f}"
    differences = np.abs(masks[:, None] - masks[None]).mean(axis=(2, 3))
    assert differences[~np.eye(10, dtype=bool)].min() > 0.05


# -- validation hold-out and arguments ----------------------------------------------------------


def test_val_split_holds_out_a_seeded_disjoint_part(tmp_path):
    write_cifar10(tmp_path, per_batch=10)
    data = load_data("cifar10", data_dir=tmp_path, val_split=0.2, seed=7)
    assert len(data.train) == 40 and len(data.val) == 10 and data.eval_set is data.val
    train, val = image_ids(data.train.images), image_ids(data.val.images)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(50))
    assert train == sorted(train) and val == sorted(val)
    full = load_data("cifar10", data_dir=tmp_path)
    assert data.val.labels.tolist() == full.train.labels[val].tolist()
    def val_ids(seed: int) -> list[int]:
        held_out = load_data("cifar10", data_dir=tmp_path, val_split=0.2, seed=seed).val
        return image_ids(held_out.images)

    assert val_ids(7) == val and val_ids(8) != val
    assert data.test.labels.tolist() == full.test.labels.tolist()


def test_val_split_counts_and_statistics():
    data = load_data("shapes", shapes_train=300, shapes_test=20, val_split=0.1)
    assert len(data.train) == 270 and len(data.val) == 30
    x = data.train.images.double() / 255
    assert data.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    tiny = load_data("shapes", shapes_train=20, shapes_test=10, val_split=0.01)
    assert len(tiny.val) == 1 and len(tiny.train) == 19


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, "0.1", True])
def test_bad_val_split(bad):
    with pytest.raises(DatasetError, match=r"val_split must be a fraction in \[0, 1\)"):
        load_data("shapes", shapes_train=20, shapes_test=10, val_split=bad)


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError) as err:
        load_data("mnist")
    message = str(err.value)
    assert "mnist" in message and all(name in message for name in DATASETS)
    assert DATASETS == ("cifar10", "cifar100", "imagefolder", "shapes")


def test_image_set_checks_its_tensors():
    ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(DatasetError):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(DatasetError):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    labels = ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1],
                                                                                 dtype=torch.int32))
    assert labels.labels.dtype == torch.int64


@pytest.mark.parametrize("side", [8200, 14000])  # over our bound; over PIL's own as well
def test_an_image_claiming_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, side):
    write_tree(tmp_path)
    bomb = tmp_path / "bee" / "bomb.png"
    Image.new("1", (side, side)).save(bomb)  # one bit per pixel: tiny on disk
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DatasetError, match=f"image {bomb} .*pixels.*shrink it first"):
        load_data("imagefolder", data_dir=tmp_path, image_size=16, seed=0)
