import torch

from mlprunes.data.loader import DeviceLoader

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def coded_images(n=64, size=16):
    """Channel 0 is a left-to-right ramp (reveals crop offset and flip), channel 1 is a code of
    the label (reveals label alignment), channel 2 is constant 200. All values > 0, so the zero
    padding a crop brings in is recognisable."""
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    images[:, 0] = (10 + 10 * torch.arange(size)).to(torch.uint8)[None, None, :]
    images[:, 1] = (20 + 20 * labels).to(torch.uint8)[:, None, None]
    images[:, 2] = 200
    return images, labels


def raw(x):
    """Undo the loader's normalisation back to pixel values."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return (x * std + mean).round()


def test_crops_and_flips_are_per_sample_and_labels_stay_aligned():
    images, labels = coded_images()
    loader = DeviceLoader(images, labels, 32, MEAN, STD, train=True, seed=3)
    offsets, flips = set(), set()
    for x, y in loader.epoch(0):
        pixels = raw(x)
        for img, label in zip(pixels, y):
            inside = img[2] == 200  # not padding
            assert inside.any()
            assert torch.all(img[1][inside] == 20 + 20 * label)  # label travels with its image
            row = img[0][inside.any(dim=1).nonzero()[0, 0]]
            ramp = row[row > 0]
            flipped = bool(ramp[0] > ramp[-1])
            flips.add(flipped)
            first_col = int((row > 0).nonzero()[0 if not flipped else -1, 0])
            offsets.add((first_col, int(inside.any(dim=1).nonzero()[0, 0]), flipped))
    assert flips == {True, False}
    assert len(offsets) > 10  # many different crops within the epoch, not one per batch


def test_each_training_epoch_is_a_permutation_and_differs_by_epoch():
    images, labels = coded_images(n=100)
    loader = DeviceLoader(images, labels, 10, MEAN, STD, train=True, seed=0)
    first = torch.cat([y for _, y in loader.epoch(0)])
    second = torch.cat([y for _, y in loader.epoch(1)])
    assert sorted(first.tolist()) == sorted(labels.tolist())
    assert not torch.equal(first, second)


def test_batches_regenerate_exactly_from_epoch_and_position():
    images, labels = coded_images(n=96)
    a = DeviceLoader(images, labels, 16, MEAN, STD, train=True, seed=5)
    b = DeviceLoader(images, labels, 16, MEAN, STD, train=True, seed=5)
    full = list(a.epoch(2))
    tail = list(b.epoch(2, start=3))
    assert len(tail) == len(full) - 3
    for (x1, y1), (x2, y2) in zip(full[3:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_seed = DeviceLoader(images, labels, 16, MEAN, STD, train=True, seed=6)
    assert not torch.equal(next(iter(other_seed.epoch(2)))[0], full[0][0])


def test_eval_loader_keeps_order_and_images_and_the_last_batch():
    images, labels = coded_images(n=50)
    loader = DeviceLoader(images, labels, 16, MEAN, STD, train=False)
    batches = list(loader.epoch(0))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)
    assert torch.equal(raw(x).to(torch.uint8), images)


def test_training_drops_the_ragged_batch_and_channels_last_is_honoured():
    images, labels = coded_images(n=50)
    loader = DeviceLoader(images, labels, 16, MEAN, STD, train=True, channels_last=True)
    assert len(loader) == 3
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_reflect_padding_crops_each_sample_from_its_mirror_image():
    import pytest
    import torch.nn.functional as F

    from mlprunes.data.loader import random_crop

    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    reference = {mode: F.pad(images.float(), (3,) * 4, mode=mode)
                 for mode in ("constant", "reflect")}
    for mode, torch_mode in (("reflect", "reflect"), ("zero", "constant")):
        out = random_crop(images, 3, torch.Generator().manual_seed(5), mode=mode)
        g = torch.Generator().manual_seed(5)          # the offsets the crop drew
        dy, dx = torch.randint(0, 7, (6,), generator=g), torch.randint(0, 7, (6,), generator=g)
        assert out.dtype == torch.uint8
        for i in range(6):
            window = reference[torch_mode][i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
            assert torch.equal(out[i].float(), window), (mode, i)
    # A reflection needs a pixel to mirror: padding as wide as the image is refused.
    with pytest.raises(ValueError, match="reflect"):
        random_crop(images, 8, torch.Generator(), mode="reflect")


def test_the_loader_pads_as_its_recipe_says():
    images, labels = coded_images()
    zero = DeviceLoader(images, labels, 64, MEAN, STD, train=True, flip=False)
    mirror = DeviceLoader(images, labels, 64, MEAN, STD, train=True, flip=False,
                          pad_mode="reflect")
    (x0, _), (x1, _) = next(iter(zero)), next(iter(mirror))
    assert (raw(x0)[:, 2] == 0).any()          # zero padding shows as black pixels
    assert (raw(x1)[:, 2] == 200).all()        # a mirror of a constant channel is constant
