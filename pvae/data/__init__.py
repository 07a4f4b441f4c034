"""Data: the dataset registry (MNIST with an offline route), one's own images, minibatches."""
from .dataset import Dataset, binarize_once, check_subset, minibatches, synthetic
from .registry import DATASETS, DataConfig, load_dataset, load_mnist

MNIST = Dataset
"""The :class:`Dataset` that :func:`load_mnist` returns."""

__all__ = ["Dataset", "MNIST", "DataConfig", "DATASETS", "load_dataset", "load_mnist",
           "minibatches", "synthetic", "binarize_once", "check_subset"]
