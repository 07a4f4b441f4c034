"""One's own images: an ``.npy`` or ``.npz`` file or an image folder (docs/own_data.rst)."""
import logging
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger(__name__)
HOLDOUT_SEED = 0
NUMPY_MAGIC = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}
"""How NumPy's files start: an ``.npy`` array, an ``.npz`` zip archive (or an empty one)."""


def read_path(path: Path):
    """``(train_x, train_y, test_x, test_y, image_shape)`` of the file or folder ``path``."""
    if not path.exists():
        raise DataError(f"dataset {path}: no such file or folder; give mnist, fashion-mnist, "
                        "kmnist, or the path of an .npy/.npz file or of an image folder", "dataset")
    if path.is_dir():
        return _image_folder(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: unknown data file type {suffix or '(none)'!r}; give an .npy "
                        "or .npz file of images, or an image folder")
    loaded = _load_numpy(path, suffix)
    if suffix == ".npy":
        return _hold_out(*as_images(loaded, str(path)), None, str(path))
    if set(loaded) >= {"train", "test"}:
        (train, shape), (test, test_shape) = (as_images(loaded[k], f"{path}['{k}']")
                                              for k in ("train", "test"))
        if test_shape != shape:
            raise DataError(f"{path}: 'train' images have shape {shape} but 'test' images "
                            f"{test_shape}; both must be the same size")
        if ("train_y" in loaded) != ("test_y" in loaded):
            raise DataError(f"{path} has {'train_y' if 'train_y' in loaded else 'test_y'} but "
                            "not the other; give labels for both splits (train_y, test_y) or "
                            "for neither")
        train_y, test_y = ((as_labels(loaded[k], len(v), f"{path}['{k}']") if k in loaded
                            else None) for k, v in (("train_y", train), ("test_y", test)))
        return train, train_y, test, test_y, shape
    if "x" in loaded:
        x, shape = as_images(loaded["x"], f"{path}['x']")
        y = as_labels(loaded["y"], len(x), f"{path}['y']") if "y" in loaded else None
        return _hold_out(x, shape, y, f"{path}['x']")
    raise DataError(f"{path} holds the arrays {sorted(loaded)}; it needs 'train' and 'test' "
                    "(labels: 'train_y', 'test_y'), or one array 'x' (labels: 'y'), of which a "
                    "tenth is held out as the test set")


def _load_numpy(path: Path, suffix: str):
    """The array of an ``.npy`` file or the arrays of an ``.npz`` archive, read without pickle;
    DataError for a file that is neither or that holds Python objects."""
    with open(path, "rb") as f:
        head = f.read(6)
    if not head.startswith(NUMPY_MAGIC[suffix]):
        kind = "an .npy array file" if suffix == ".npy" else "an .npz archive (a zip file)"
        raise DataError(f"{path} is not {kind}; write the images with "
                        f"np.{'save' if suffix == '.npy' else 'savez'}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with loaded:
                loaded = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "pickle" in text:
            raise DataError(f"{path} holds Python objects (an object array), which pvae does not "
                            "load; save the images as an array of numbers") from None
        raise DataError(f"{path} cannot be read as {suffix} ({text})") from None
    return loaded


def folder_images(path: Path) -> list[tuple[Path, int]]:
    """``(file, class index)`` of every image under the class subfolders of ``path`` (sorted,
    as torchvision's ``ImageFolder`` lists them), following links but reading no folder twice:
    a link to a folder already read (a loop) is skipped, with a warning."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    try:
        classes, index = find_classes(str(path))
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"{path}: not an image folder ({str(err).splitlines()[0]}); it needs "
                        f"one subfolder of images per class, e.g. {path}/cats/1.png") from None
    seen, found = {path.resolve()}, []
    for name in classes:
        for root, dirs, files in os.walk(path / name, followlinks=True):
            real = Path(root).resolve()
            if real in seen:
                log.warning("skipped %s: it leads to %s, a folder already read", root, real)
                dirs.clear()
                continue
            seen.add(real)
            found.append((root, [(Path(root) / f, index[name]) for f in sorted(files)
                                 if f.lower().endswith(IMG_EXTENSIONS)]))
    return [sample for _, samples in sorted(found, key=lambda item: item[0])
            for sample in samples]


def gray_pixels(img, file: Path) -> np.ndarray:
    """One image's gray levels as float32 in [0, 1], scaled by its bit depth (8 or 16 bits)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(img, dtype=np.float64)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise DataError(f"{file} holds 32-bit pixel values (up to {pixels.max():g}); save "
                            "it with 8 or 16 bits per pixel")
        return (pixels / 65535).astype(np.float32)
    if img.mode == "F":
        raise DataError(f"{file} holds floating-point pixels; save it with 8 or 16 bits per "
                        "pixel, or put the images in an .npy file")
    return np.asarray(img.convert("L")).astype(np.float32) / np.float32(255)


def _image_folder(path: Path):
    from PIL import Image, UnidentifiedImageError

    samples = folder_images(path)
    images, size = [], None
    for file, _ in samples:
        try:
            with Image.open(file) as img:
                pixels = gray_pixels(img, file)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{file} is not a readable image ({err})") from None
        size = size or pixels.shape
        if pixels.shape != size:
            raise DataError(f"{file} is {pixels.shape[1]}x{pixels.shape[0]} pixels but "
                            f"{samples[0][0]} is {size[1]}x{size[0]}; all images must "
                            "have one size")
        images.append(pixels)
    if not images:
        raise DataError(f"{path} holds no images")
    x, shape = as_images(np.stack(images), str(path))
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return _hold_out(x, shape, labels, str(path))


def _hold_out(x: torch.Tensor, shape: tuple[int, ...], y: torch.Tensor | None, source: str):
    n = x.shape[0]
    if n < 2:
        raise DataError(f"{source} holds {n} image, too few to hold a test set out; give at "
                        "least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    test, train = perm[:max(1, n // 10)].sort().values, perm[max(1, n // 10):].sort().values
    return x[train], None if y is None else y[train], x[test], None if y is None else y[test], \
        shape


def as_labels(array, n: int, source: str) -> torch.Tensor:
    """The labels ``array`` as int64 class indices, one per image of ``n``; DataError naming
    ``source`` for another length, floats (NaN among them) or negative values."""
    a = np.asarray(array)
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"{source} has shape {a.shape}; labels need one class per image, "
                        f"shape ({n},)")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise DataError(f"{source} contains {int(np.isnan(a).sum())} NaN labels; drop those "
                        "images or give their classes")
    if a.dtype.kind not in "iu":
        raise DataError(f"{source} holds {a.dtype} values; labels must be whole class indices "
                        "0, 1, 2, ... (an integer array)")
    if n and a.min() < 0:
        raise DataError(f"{source} holds the label {int(a.min())}; classes are numbered 0, 1, "
                        "2, ...")
    return torch.from_numpy(a.astype(np.int64))


def as_images(array, source: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(x, image_shape)``: the images ``array`` as (N, H·W) float32 in [0, 1] (whole numbers
    0–255 divided by 255); DataError naming ``source`` for anything else."""
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{source} holds {a.dtype} values; images must be numbers")
    if a.ndim not in (2, 3):
        raise DataError(f"{source} has shape {a.shape}; expected images (N, H, W) or "
                        "flattened images (N, D)")
    if a.size == 0:
        raise DataError(f"{source} is empty (shape {a.shape}); it needs at least one image")
    a = a.astype(np.float64 if a.dtype.kind == "f" else np.int64)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{source} contains {int((~np.isfinite(a)).sum())} NaN/Inf values; "
                        "clean or drop those images")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 255 or (hi > 1 and not np.all(a == np.round(a))):
        raise DataError(f"{source} has values in [{lo:g}, {hi:g}]; images must lie in [0, 1] "
                        "or be whole numbers 0-255")
    x = torch.from_numpy(a.reshape(a.shape[0], -1)).float()
    shape = tuple(int(s) for s in a.shape[1:])
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        shape = (math.isqrt(shape[0]),) * 2
    return (x.div_(255.0) if hi > 1 else x), shape
