"""dSprites (Matthey et al. 2017) generated in code to the published factor grid: 3 shapes × 6
scales × 40 orientations × 32 × 32 positions, 64 × 64 binary images, rendered on demand (each
image is one of 720 sprites shifted by whole pixels; docs/uses.rst says how it differs from the
released file). Labels are the factors' indices, one column each, in :data:`FACTORS` order."""
import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

FACTORS = ("shape", "scale", "orientation", "position_x", "position_y")
SIZES = (3, 6, 40, 32, 32)
VALUES = (np.array([1.0, 2.0, 3.0]), np.linspace(0.5, 1.0, 6), np.linspace(0.0, 2 * math.pi, 40),
          np.linspace(0.0, 1.0, 32), np.linspace(0.0, 1.0, 32))
"""The released file's ``latents_values`` per factor (shape 1 square, 2 ellipse, 3 heart)."""
SIDE, PATCH, HALF = 64, 33, 10.0
"""Image side; a sprite's box (centre 16.5 px from its corner, the centre of position 0); the
half-side in pixels of the square at scale 1 (a rotated sprite stays inside its box)."""
NUM_IMAGES = math.prod(SIZES)
TEST_FRACTION, SPLIT_SEED, SUPERSAMPLE = 0.1, 0, 4
CHUNK = 16384


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside the heart (x² + y² − 1)³ ≤ x² y³, scaled into [−1, 1]², point down (v grows up)."""
    x, y = 1.139 * u, 1.118 * v + 0.118
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether (u, v), in units of the half-side, is inside the square, ellipse or heart."""
    if shape == 0:
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == 1:
        return u * u + 4 * v * v <= 1
    return _heart(u, v)


@functools.cache
def sprites() -> np.ndarray:
    """The 720 sprites, (shape, scale, orientation) in grid order, each (PATCH, PATCH) uint8 at
    the centre of its box: a pixel is on when more than half of its 4 × 4 sub-pixels are inside
    the shape rotated counter-clockwise by the orientation; drawn once (0.4 CPU s), read-only."""
    ticks = (np.arange(PATCH * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - PATCH / 2
    dx, dy = np.meshgrid(ticks, -ticks)  # image columns go right, rows go down: y up
    out = np.empty((3, 6, 40, PATCH, PATCH), np.uint8)
    for s, scale in enumerate(VALUES[1]):
        for o, angle in enumerate(VALUES[2]):
            c, n = math.cos(angle), math.sin(angle)
            u, v = (c * dx + n * dy) / (HALF * scale), (-n * dx + c * dy) / (HALF * scale)
            for shape in range(3):
                cover = _inside(shape, u, v).reshape(PATCH, SUPERSAMPLE, PATCH, SUPERSAMPLE)
                out[shape, s, o] = cover.mean((1, 3)) > 0.5
    out = out.reshape(-1, PATCH, PATCH)
    out.flags.writeable = False
    return out


def render(classes: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """The images (n, 64, 64) uint8 0/1 of the factor indices ``classes`` (n, 5): the sprite
    placed with its centre at pixel 16.5 + position index, in x (column) and y (row)."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1, len(SIZES))
    table = sprites() if table is None else table
    canvas = np.zeros((table.shape[0], SIDE + SIDE // 2, SIDE + SIDE // 2), np.uint8)
    canvas[:, SIDE // 2:SIDE // 2 + PATCH, SIDE // 2:SIDE // 2 + PATCH] = table
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (SIDE, SIDE), axis=(1, 2))
    sprite = (classes[:, 0] * SIZES[1] + classes[:, 1]) * SIZES[2] + classes[:, 2]
    return windows[sprite, SIDE // 2 - classes[:, 4], SIDE // 2 - classes[:, 3]]


def classes_of(index: np.ndarray) -> np.ndarray:
    """The factor indices (n, 5) of grid rows ``index`` (the released order: y fastest)."""
    return np.stack(np.unravel_index(np.asarray(index, dtype=np.int64), SIZES), axis=1)


def values_of(classes: np.ndarray) -> np.ndarray:
    """The factor values (n, 5) float64 of the factor indices ``classes``."""
    return np.stack([VALUES[k][classes[:, k]] for k in range(len(SIZES))], axis=1)


def _free_bytes() -> float:
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


@dataclass(frozen=True)
class Rows:
    """Rows ``index`` of the grid, rendered only by :meth:`tensor`; ``rows[key]`` selects."""

    index: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(n, 4096), like the tensor it renders to."""
        return (len(self.index), SIDE * SIDE)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> "Rows":
        key = key.cpu().numpy() if isinstance(key, torch.Tensor) else key
        return Rows(np.atleast_1d(self.index[key]))

    def tensor(self) -> torch.Tensor:
        """The images as (n, 4096) float32 0/1; DataError if they would not fit in memory."""
        need = 4.0 * SIDE * SIDE * len(self.index)
        if need > 0.8 * _free_bytes():
            raise DataError(f"dsprites: {len(self.index)} images need {need / 2**30:.1f} GiB "
                            f"as float32, more than the {_free_bytes() / 2**30:.1f} GiB free; "
                            "take fewer with --train-subset N (e.g. 100000) and --test-subset N")
        out, table = torch.empty(self.shape), sprites()
        for start in range(0, len(self.index), CHUNK):
            rows = self.index[start:start + CHUNK]
            out[start:start + len(rows)] = torch.from_numpy(
                render(classes_of(rows), table).reshape(len(rows), -1))
        return out


def read_dsprites(data_dir=None):
    """``(train, train_y, test, test_y, (64, 64))``: a fixed random tenth of the grid (seed 0)
    is the test set, the rest the training set, each in that random order; images are
    :class:`Rows` (rendered when taken), labels the factor indices (n, 5) int64."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES)
    n_test = int(NUM_IMAGES * TEST_FRACTION)
    test, train = perm[:n_test], perm[n_test:]
    return (Rows(train), torch.from_numpy(classes_of(train)), Rows(test),
            torch.from_numpy(classes_of(test)), (SIDE, SIDE))
