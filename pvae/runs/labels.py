"""What a run with labels adds (docs/labels.rst): the labels it trained with, the accuracy of the
classifier q(y|x) (and of its clusters under the best one-to-one matching with the classes),
and the conditional model's log p(x|y) under keys of its own."""
import numpy as np
import torch

from ..data.dataset import Dataset
from ..errors import DataError
from ..model.vae import VAE

GIVEN_Y = {"test_elbo": "test_elbo_given_y", "test_log_px": "test_log_px_given_y",
           "test_log_px_ais": "test_log_px_given_y_ais"}
"""The conditional model's keys: its bounds and estimates are of log p(x|y), not log p(x)."""


def check_labelled(supervision: str, data: Dataset) -> None:
    """DataError when ``supervision`` needs labels that ``data`` does not have."""
    if supervision != "none" and not data.num_classes:
        raise DataError(f"supervision {supervision} needs labels and the dataset {data.name} has "
                        "none; give an .npz with train_y and test_y (or x with y), an image "
                        "folder with a subfolder per class, or a named dataset, or use "
                        "supervision none")
    if supervision != "none" and data.num_classes < 2:
        raise DataError(f"the labels of {data.name} hold one class only; supervision "
                        f"{supervision} needs at least two")


def training_labels(vae: VAE, data: Dataset) -> dict:
    """The label arguments of ``fit`` for ``vae`` on ``data``: ``y`` (-1 where dropped) and,
    for the conditional model, ``test_y``; none without labels."""
    if vae.supervision == "none":
        return {}
    labels = {"y": data.train_y}
    return {**labels, "test_y": data.test_y} if vae.supervision == "conditional" else labels


def evaluation_labels(vae: VAE, y: torch.Tensor) -> dict:
    """The keyword arguments of an estimator for ``vae``: the labels ``y`` for the conditional
    model (log p(x|y)); none otherwise (the semi-supervised one sums y exactly)."""
    return {"y": y} if vae.supervision == "conditional" else {}


def given_y(metrics: dict) -> dict:
    """A conditional run's estimator entries under the ``_given_y`` keys of :data:`GIVEN_Y`."""
    out = {}
    for key, value in metrics.items():
        base = key.removesuffix("_stderr")
        out[GIVEN_Y[base] + key[len(base):] if base in GIVEN_Y else key] = value
    return out


def label_record(data: Dataset) -> dict:
    """``n_labelled`` and ``labelled_per_class``: the training labels a run kept."""
    kept = data.train_y[data.train_y >= 0]
    return {"n_labelled": int(kept.numel()),
            "labelled_per_class": torch.bincount(kept, minlength=data.num_classes).tolist()}


def cluster_accuracy(predicted: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """The accuracy of ``predicted`` clusters under the one-to-one map of clusters to classes
    that maximises it (Hungarian algorithm on the K × K table of counts)."""
    from scipy.optimize import linear_sum_assignment

    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (predicted, y), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / max(1, len(y)))


def accuracy_metrics(vae: VAE, x: torch.Tensor, y: torch.Tensor) -> dict:
    """``test_accuracy`` of argmax q(y|x) and ``test_cluster_accuracy`` (its clusters matched
    to the classes one to one) on ``x``; none without a classifier."""
    if vae.classifier is None:
        return {}
    predicted = torch.cat([vae.predict(x[i:i + 1000]) for i in range(0, x.shape[0], 1000)])
    predicted, y = predicted.cpu().numpy(), y.cpu().numpy()
    return {"test_accuracy": float((predicted == y).mean()),
            "test_cluster_accuracy": cluster_accuracy(predicted, y, vae.num_classes)}


def label_rows(metrics: dict) -> list[tuple[str, str]]:
    """The summary rows of a run's label entries."""
    rows = []
    if metrics.get("n_labelled") is not None:
        rows.append(("training labels", str(metrics["n_labelled"])))
    if metrics.get("test_accuracy") is not None:
        rows += [(label, f"{100 * metrics[key]:.2f}%") for label, key in (
            ("test accuracy, argmax q(y|x)", "test_accuracy"),
            ("clusters matched to classes", "test_cluster_accuracy"))]
    return rows
