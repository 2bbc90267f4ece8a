"""A small procedurally generated image dataset: ten classes of coloured shapes and textures.

Made on the fly from a seed, so tests and the offline demo need no download. Every image is one
shape or textured patch of a random colour, position, size, aspect ratio and slight tilt on a
noisy, blotchy background of another random colour. The nuisances keep it from being trivially
easy (a small CNN learns it well, but not perfectly, in a minute of CPU time), so that pruning
curves have an error to move. Every class is left/right symmetric and tilts are drawn
symmetrically, so the horizontal flips of the training augmentation never change a class.

Rendering is vectorised: each mask comes from a signed distance (in pixels, negative inside)
evaluated on whole batches of images at once, with a one-pixel soft edge.
"""

from __future__ import annotations

import numpy as np
import torch

SHAPE_CLASSES = (
    "circle", "square", "triangle", "ring", "cross",
    "diamond", "hstripes", "vstripes", "checkerboard", "dots",
)
_TEXTURES = {"hstripes", "vstripes", "checkerboard", "dots"}

# Images are rendered in chunks so that large image sizes do not need all float masks at once.
_CHUNK = 1024
_BLOTCH_GRID = 4


def make_shapes(n: int, image_size: int, seed: int,
                stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images (uint8, N x 3 x S x S) and their labels (int64), balanced over the classes.

    The result depends only on (`n`, `image_size`, `seed`, `stream`): train and test use
    different streams of the same seed, so neither changes when the other's size does.
    """
    # SeedSequence wants non-negative entries; the modulus keeps distinct seeds distinct.
    rng = np.random.default_rng([seed % 2**64, stream])
    params = _sample_params(rng, n, image_size)
    noise_key = int(rng.integers(2**63))
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = {k: v[start:stop] for k, v in params.items()}
        noise_rng = np.random.default_rng([noise_key, start])
        images[start:stop] = _render(chunk, image_size, noise_rng)
    return torch.from_numpy(images), torch.from_numpy(params["label"].astype(np.int64))


def _sample_params(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Every random choice for `n` images, drawn up front so that rendering is deterministic."""
    k = len(SHAPE_CLASSES)
    # Balanced: each class appears n // k or n // k + 1 times, in a random order.
    label = rng.permutation(np.arange(n) % k)
    texture = np.isin(label, [SHAPE_CLASSES.index(t) for t in _TEXTURES])
    # Textures get bigger patches than shapes, so that several periods of the pattern show.
    half = np.where(texture, rng.uniform(0.28, 0.42, n), rng.uniform(0.16, 0.34, n)) * size
    aspect = rng.uniform(0.85, 1.18, n)
    # A symmetric range of tilts: a flipped image is as likely as the original.
    angle = rng.uniform(-np.pi / 8, np.pi / 8, n)
    cx = rng.uniform(half * 0.9, size - half * 0.9)
    cy = rng.uniform(half * 0.9, size - half * 0.9)
    period = rng.uniform(0.15, 0.24, n) * size
    phase = rng.uniform(0.0, 1.0, (n, 2))
    bg = rng.uniform(0.0, 1.0, (n, 3))
    fg = rng.uniform(0.0, 1.0, (n, 3))
    # Resample foreground colours too close to their background: the shape must stay visible.
    for _ in range(100):
        close = np.linalg.norm(fg - bg, axis=1) < 0.3
        if not close.any():
            break
        fg[close] = rng.uniform(0.0, 1.0, (int(close.sum()), 3))
    # Smooth colour blotches over the background (a coarse random field, upsampled).
    blotches = rng.uniform(-1.0, 1.0, (n, 3, _BLOTCH_GRID, _BLOTCH_GRID))
    blotches *= rng.uniform(0.05, 0.25, n)[:, None, None, None]
    noise_std = rng.uniform(0.03, 0.12, n)
    return dict(label=label, half=half, aspect=aspect, angle=angle, cx=cx, cy=cy, period=period,
                phase=phase, bg=bg, fg=fg, blotches=blotches, noise_std=noise_std)


def _render(p: dict[str, np.ndarray], size: int, noise_rng: np.random.Generator) -> np.ndarray:
    """uint8 images (n x 3 x S x S) for one chunk of parameters."""
    n = len(p["label"])
    f32 = np.float32
    axis = np.arange(size, dtype=f32) + 0.5  # pixel centres
    y = axis[None, :, None]
    x = axis[None, None, :]
    mask = np.empty((n, size, size), dtype=f32)
    for k, name in enumerate(SHAPE_CLASSES):
        idx = np.flatnonzero(p["label"] == k)
        if idx.size == 0:
            continue
        q = {key: v[idx].astype(f32) if v.dtype.kind == "f" else v[idx] for key, v in p.items()}
        mask[idx] = _mask(name, q, x, y)
    # Background colour plus blotches, bilinearly upsampled from the coarse grid.
    up = _upsample_matrix(_BLOTCH_GRID, size)
    img = up @ p["blotches"].astype(f32) @ up.T
    img += p["bg"].astype(f32)[:, :, None, None]
    # img = bg + m * (fg - bg), in place: these are the largest arrays made here.
    fg = p["fg"].astype(f32)[:, :, None, None]
    img += mask[:, None] * (fg - img)
    noise = noise_rng.standard_normal(img.shape, dtype=f32)
    noise *= p["noise_std"].astype(f32)[:, None, None, None]
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255
    img += 0.5
    return img.astype(np.uint8)


def _mask(name: str, q: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Soft 0..1 masks (n x S x S) of one class, from a signed distance in pixels."""
    col = (slice(None), None, None)
    half, aspect = q["half"][col], q["aspect"][col]
    cos, sin = np.cos(q["angle"])[col], np.sin(q["angle"])[col]
    ox, oy = x - q["cx"][col], y - q["cy"][col]
    dx, dy = cos * ox + sin * oy, cos * oy - sin * ox
    # Shape coordinates: the shape's half-extent is 1; aspect stretches x against y.
    u, v = dx / (half * aspect), dy * aspect / half
    au, av = np.abs(u), np.abs(v)
    if name == "circle":
        d = np.sqrt(u * u + v * v) - 1.0
    elif name == "square":
        d = np.maximum(au, av) - 0.8
    elif name == "triangle":
        # Upright equilateral triangle (image y points down), vertices at radius 1.1.
        d = np.maximum(v - 0.55, 0.866 * au - 0.5 * v - 0.55)
    elif name == "ring":
        d = np.abs(np.sqrt(u * u + v * v) - 0.75) - 0.25
    elif name == "cross":
        w = 0.3
        d = np.minimum(np.maximum(au - 1.0, av - w), np.maximum(au - w, av - 1.0))
    elif name == "diamond":
        d = (au + av - 1.05) * 0.7071
    else:
        return _texture(name, q, dx, dy, np.maximum(au, av) - 0.9)
    return np.clip(0.5 - d * half, 0.0, 1.0)


def _texture(name: str, q: dict[str, np.ndarray], dx: np.ndarray, dy: np.ndarray,
             patch: np.ndarray) -> np.ndarray:
    """A periodic pattern cut to a rectangular patch (`patch` is its distance in shape units)."""
    col = (slice(None), None, None)
    period, half = q["period"][col], q["half"][col]
    px, py = q["phase"][:, 0][col], q["phase"][:, 1][col]
    inside = np.clip(0.5 - patch * half, 0.0, 1.0)

    def bars(t: np.ndarray, phase: np.ndarray) -> np.ndarray:
        # Bars half a period wide: distance from the bar's centre line, minus its half-width.
        frac = np.mod(t / period + phase, 1.0)
        return np.clip(0.5 - (np.abs(frac - 0.5) - 0.25) * period, 0.0, 1.0)

    if name == "hstripes":
        pattern = bars(dy, py)
    elif name == "vstripes":
        pattern = bars(dx, px)
    elif name == "checkerboard":
        bx, by = bars(dx, px), bars(dy, py)
        pattern = bx * (1 - by) + by * (1 - bx)
    else:  # dots on a square lattice
        fx = (np.mod(dx / period + px, 1.0) - 0.5) * period
        fy = (np.mod(dy / period + py, 1.0) - 0.5) * period
        pattern = np.clip(0.5 - (np.sqrt(fx * fx + fy * fy) - 0.3 * period), 0.0, 1.0)
    return inside * pattern


def _upsample_matrix(grid: int, size: int) -> np.ndarray:
    """The size x grid matrix of bilinear weights that stretches `grid` points over `size`."""
    pos = np.clip((np.arange(size) + 0.5) * grid / size - 0.5, 0, grid - 1)
    lo = np.minimum(np.floor(pos).astype(int), grid - 2)
    w = pos - lo
    m = np.zeros((size, grid), dtype=np.float32)
    m[np.arange(size), lo] = 1 - w
    m[np.arange(size), lo + 1] = w
    return m
