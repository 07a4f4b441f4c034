"""The one dataset registry: the data a run trains on, picked by name or given by path."""
import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checks import SEED_LIMIT, setting, validate
from ..errors import ConfigError, DataError
from .dataset import Dataset, binarize_once, check_subset, keep_labels
from . import dsprites
from .mnist import network_timeout, read_mnist
from .own import as_images, read_path


def torchvision_dataset(name: str, cls_name: str) -> Callable:
    """The loader of torchvision's dataset class ``cls_name``, downloading it if missing."""

    def load(root: str | Path):
        import torchvision

        cls, root = getattr(torchvision.datasets, cls_name), Path(root)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(network_timeout())
        try:
            splits = [cls(str(root), train=train, download=True) for train in (True, False)]
        except Exception as err:  # offline: URLError, RuntimeError, OSError, timeouts
            text = str(err).strip().splitlines()
            raise DataError(f"could not get {name} with torchvision ("
                            f"{text[-1] if text else repr(err)}); run once with internet access, "
                            f"or copy its raw files into {root / cls_name / 'raw'}") from None
        finally:
            socket.setdefaulttimeout(previous)
        (train_x, shape), (test_x, _) = (as_images(s.data.numpy(), f"{cls_name} ({root})")
                                         for s in splits)
        return train_x, splits[0].targets.clone(), test_x, splits[1].targets.clone(), shape

    return load


DATASETS: dict[str, Callable] = {
    "mnist": read_mnist,
    "fashion-mnist": torchvision_dataset("fashion-mnist", "FashionMNIST"),
    "kmnist": torchvision_dataset("kmnist", "KMNIST"),
    "dsprites": dsprites.read_dsprites,
}
"""Loaders by name: ``loader(data_dir) -> (train_x, train_y, test_x, test_y, image_shape)``, the
labels int64 class indices (or factor values, one column each), or None for data without
labels; the images may be rows rendered when taken (:class:`pvae.data.dsprites.Rows`)."""
FACTOR_GRIDS = {"dsprites": dsprites}
"""Datasets whose labels are known factors of variation (``FACTORS``, ``SIZES``, ``render``)."""


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """The labels ``"0-4"`` or ``"1,3,7"`` (or ``"0-2,5"``) name, sorted; None for None."""
    if text is None:
        return None
    out: set[int] = set()
    try:
        for part in str(text).replace(" ", "").split(","):
            low, _, high = part.partition("-")
            out.update(range(int(low), int(high or low) + 1))
    except ValueError:
        out = set()
    if not out or min(out) < 0:
        raise ConfigError(f"classes must list labels like 0-4 or 1,3,7, got {text!r}", "classes")
    return tuple(sorted(out))


def keep_classes(x, y: torch.Tensor, classes: tuple[int, ...], what: str):
    """``(x, y)`` of the examples whose label (first column of 2-d labels) is in ``classes``."""
    label = y if y.dim() == 1 else y[:, 0]
    idx = torch.isin(label, torch.tensor(classes, dtype=label.dtype)).nonzero().squeeze(1)
    if idx.numel() == 0:
        have = ",".join(map(str, label.unique().tolist()[:20]))
        raise DataError(f"--classes {','.join(map(str, classes))}: {what} has no images of "
                        f"those classes (its labels: {have})")
    return x[idx], y[idx]


def load_dataset(dataset: str = "mnist", data_dir: str | Path = "data", binarize: bool = True,
                 train_subset: int | None = None, test_subset: int | None = None,
                 classes: str | None = None) -> Dataset:
    """The :class:`Dataset` ``dataset`` (a name of :data:`DATASETS` or a path), of the labels
    ``classes`` only (``"0-4"``), the first ``*_subset`` examples of each split; with
    ``binarize`` the test images binarized once. With class labels, ``num_classes`` is the
    largest label of either split plus one (0 for factors, which are not classes)."""
    for name, n in (("train_subset", train_subset), ("test_subset", test_subset)):
        check_subset(name, n, None)
    keep = parse_classes(classes)
    loader = DATASETS.get(dataset)
    train_x, train_y, test_x, test_y, shape = (loader(data_dir) if loader is not None else
                                               read_path(Path(dataset)))
    if keep is not None:
        train_x, train_y = keep_classes(train_x, train_y, keep, f"the training set of {dataset}")
        test_x, test_y = keep_classes(test_x, test_y, keep, f"the test set of {dataset}")
    for name, n, x in (("train_subset", train_subset, train_x),
                       ("test_subset", test_subset, test_x)):
        check_subset(name, n, x.shape[0], str(dataset))
    classes = 0
    if train_y is None:
        train_y, test_y = (torch.zeros(len(v), dtype=torch.int64) for v in (train_x, test_x))
    elif train_y.dim() == 1:
        classes = int(torch.cat([train_y, test_y]).max()) + 1
    ntr, nte = int(train_subset or train_x.shape[0]), int(test_subset or test_x.shape[0])
    train_x, test_x = (x.tensor() if isinstance(x, dsprites.Rows) else x
                       for x in (train_x[:ntr], test_x[:nte]))
    if binarize:
        test_x = binarize_once(test_x)
    return Dataset(str(dataset), train_x, train_y[:ntr].clone(), test_x, test_y[:nte].clone(),
                   tuple(shape), classes)


def load_mnist(data_dir: str | Path = "data", binarize: bool = True,
               train_subset: int | None = None, test_subset: int | None = None) -> Dataset:
    """MNIST flattened to (N, 784) float32: :func:`load_dataset` of ``"mnist"``."""
    return load_dataset("mnist", data_dir, binarize, train_subset, test_subset)


@dataclass(frozen=True)
class DataConfig:
    """The data section of a run's configuration: which data, where, how much of it. A
    ``dataset`` that is no registry name is a path, kept absolute (from wherever it is read)."""

    dataset: str = setting("mnist", "mnist, fashion-mnist, kmnist, dsprites, or an .npy/.npz "
                           "file or an image folder of one's own", metavar="NAME|PATH")
    data_dir: str = setting("data", "where the named datasets live or are fetched to")
    train_subset: int | None = setting(None, "train on the first N training images (default: "
                                       "all)", low=1, metavar="N")
    test_subset: int | None = setting(None, "evaluate on the first N test images (default: "
                                      "all)", low=1, metavar="N")
    classes: str | None = setting(None, "keep only the images of these labels, e.g. 0-4 or "
                                  "1,3,7 (dsprites: its shape, 0-2)", metavar="LIST")
    labelled: int | None = setting(None, "supervision semi: keep N training labels, balanced "
                                   "over the classes, and drop the rest (0: none, clustering; "
                                   "default: all)", low=0, metavar="N")
    labelled_seed: int = setting(0, "supervision semi: seed of the choice of the labels kept",
                                 low=0, high=SEED_LIMIT)

    def __post_init__(self) -> None:
        validate(self)
        if not self.dataset.strip():
            raise ConfigError("dataset is empty; give mnist, fashion-mnist, kmnist, dsprites, or "
                              "the path of an .npy/.npz file or of an image folder", "dataset")
        if self.dataset not in DATASETS:
            path = os.path.abspath(os.path.expanduser(self.dataset))
            object.__setattr__(self, "dataset", path)
        parse_classes(self.classes)

    def load(self, binarize: bool) -> Dataset:
        """The :class:`Dataset` this section names (:func:`load_dataset`), ``labelled`` of its
        training labels kept (:func:`~pvae.data.dataset.keep_labels`)."""
        data = load_dataset(self.dataset, self.data_dir, binarize, self.train_subset,
                            self.test_subset, self.classes)
        if self.labelled is None or not data.num_classes:
            return data
        return dataclasses.replace(data, train_y=keep_labels(
            data.train_y, self.labelled, data.num_classes, self.labelled_seed))

    def replace(self, **changes) -> "DataConfig":
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)
