"""Procedural style images: seeded, licence-free, the same bytes on every run.

For demos, tests and air-gapped machines: bold colours and strong textures,
the kind of image a style network learns something visible from.

- ``waves``: layered, domain-warped sine bands in blues and foam white, with dark edges
- ``mosaic``: Voronoi tiles in saturated colours, shaded, with dark grout
- ``stripes``: wobbly diagonal stripes in reds, oranges, yellows and black
- ``dots``: pop-art halftone: dots of varying size in two screens on a bright ground
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stylepipe.io import atomic_path

KINDS = ("waves", "mosaic", "stripes", "dots")
DEFAULT_SIZE = 512


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    return x, y


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinear value noise in [0, 1]: a cheap, seeded, smooth random field."""
    lattice = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)  # smoothstep: no visible grid
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _palette(colours: list[str]) -> np.ndarray:
    return np.array([[int(c[k : k + 2], 16) for k in (1, 3, 5)] for c in colours], np.float64)


def waves(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    warp = _smooth_noise(rng, size, 4) - 0.5
    field = np.zeros_like(x)
    for k in range(4):  # layered swells of different wavelengths
        freq = rng.uniform(4, 9) * (k + 1) ** 0.6
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * (y * freq + 0.35 * np.sin(2 * np.pi * x * rng.uniform(1, 3)) + warp * 1.5) + phase) / (k + 1)
    field = (field - field.min()) / (field.max() - field.min())
    palette = _palette(["#0b1e4a", "#123f8c", "#1f6fc0", "#5fa8e0", "#b9dcf2", "#f6fbff"])
    bands = np.minimum((field * len(palette)).astype(int), len(palette) - 1)
    img = palette[bands]
    # dark outline where the band changes: the woodcut look
    edge = (np.diff(bands, axis=0, prepend=bands[:1]) != 0) | (np.diff(bands, axis=1, prepend=bands[:, :1]) != 0)
    img[edge] = _palette(["#06122e"])[0]
    return img


def mosaic(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    n = 140
    seeds = rng.random((n, 2))
    colours = _palette(["#d7263d", "#f46036", "#ffd23f", "#1b998b", "#2e86ab", "#7b2cbf", "#f5f3f0", "#3bb273"])
    tile_colour = colours[rng.integers(0, len(colours), n)] * rng.uniform(0.75, 1.1, (n, 1))
    # nearest and second-nearest seed: the grout is where they are almost tied
    from scipy.spatial import cKDTree

    points = np.stack([x.ravel(), y.ravel()], axis=1)
    dist, order = cKDTree(seeds).query(points, k=2)
    d1, d2 = dist[:, 0].reshape(size, size), dist[:, 1].reshape(size, size)
    nearest = order[:, 0].reshape(size, size)
    # exact distance to the bisector of the two nearest seeds
    spacing = np.linalg.norm(seeds[order[:, 0]] - seeds[order[:, 1]], axis=-1).reshape(size, size)
    gap = (d2**2 - d1**2) / (2 * np.maximum(spacing, 1e-9))
    # each tile a little darker towards its rim, as if bevelled
    img = tile_colour[nearest] * (1.0 - 0.3 * np.clip(np.minimum(d1, d2) / 0.09, 0, 1))[..., None]
    img = img * (0.9 + 0.2 * _smooth_noise(rng, size, 32)[..., None])  # glazed tile surface
    grout = gap < 0.004
    img[grout] = _palette(["#1a1a1a"])[0] + rng.normal(0, 6, (int(grout.sum()), 3))
    return img


def stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    wobble = 0.08 * (_smooth_noise(rng, size, 3) - 0.5)
    t = (x + y) * 0.5 + wobble + 0.02 * np.sin(2 * np.pi * 6 * (x - y))
    widths = rng.uniform(0.012, 0.05, 80)
    edges = np.cumsum(widths)
    index = np.searchsorted(edges, (t % edges[-1]))
    palette = _palette(["#c1121f", "#f77f00", "#fcbf49", "#1d1d1d", "#eae2b7", "#780000"])
    img = palette[rng.integers(0, len(palette), len(widths))][index]
    brush = 0.85 + 0.3 * _smooth_noise(rng, size, 48)  # uneven paint
    return img * brush[..., None]


def dots(size: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    ground = _palette(["#ffe600"])[0]
    img = np.broadcast_to(ground, (size, size, 3)).copy()
    tone = _smooth_noise(rng, size, 3)
    for colour, angle, pitch, weight in ((["#ff2e88"], 0.26, 0.045, 1.0), (["#00a6ed"], 1.1, 0.032, 0.7)):
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        fu, fv = (u / pitch) % 1 - 0.5, (v / pitch) % 1 - 0.5
        radius = 0.12 + 0.38 * (tone if weight == 1.0 else 1 - tone) * weight
        inside = fu**2 + fv**2 < radius**2
        img[inside] = _palette(colour)[0]
    # black outlines of a few big shapes: the comic-book panel feel
    ring = np.abs(np.hypot(x - 0.62, y - 0.4) - 0.3) < 0.012
    img[ring] = 10
    return img


_GENERATORS = {"waves": waves, "mosaic": mosaic, "stripes": stripes, "dots": dots}


def generate(kind: str, size: int = DEFAULT_SIZE, seed: int = 0) -> Image.Image:
    """The ``kind`` style image, ``size`` × ``size`` RGB; same arguments, same pixels."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown generated style {kind!r}: choose one of {', '.join(KINDS)}")
    # one stream per kind, so adding a kind never changes the others
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    pixels = _GENERATORS[kind](size, rng)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def save_generated(kind: str, path: str | Path, size: int = DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write the style image as PNG (atomically); the bytes are deterministic."""
    with atomic_path(path) as tmp:
        generate(kind, size, seed).save(tmp, format="PNG", optimize=False)
    return Path(path)
