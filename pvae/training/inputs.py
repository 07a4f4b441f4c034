"""What ``fit`` accepts: training and test data as the VAE's dtype, checked against the VAE
and the ranks of a data-parallel run, and labels checked against the data and the VAE's
supervision; one DataError or ConfigError naming the problem."""
import torch

from ..errors import ConfigError, DataError
from ..model.labels import check_labels
from ..model.vae import VAE
from . import distributed
from .config import TrainConfig


def checked_data(vae: VAE, settings: TrainConfig, **sets) -> list[torch.Tensor | None]:
    """The training and test data (``sets``) as the VAE's dtype, checked against the VAE and
    the ranks of a data-parallel run (DataError/ConfigError naming the problem)."""
    dtype = next((p.dtype for p in vae.parameters() if p.is_floating_point()), torch.float32)
    world, out = distributed.world_size(), []
    for name, x in sets.items():
        if x is None:
            out.append(None)
            continue
        if not isinstance(x, torch.Tensor):
            raise DataError(f"the {name} data must be a torch.Tensor of shape (N, x_dim), got "
                            f"{type(x).__name__}; wrap a NumPy array with torch.from_numpy")
        if x.is_complex() or (x.dim() >= 1 and x.shape[0] == 0):
            why = f"complex ({x.dtype}); pass real pixel values" if x.is_complex() else \
                "empty (0 examples); pass at least one"
            raise DataError(f"the {name} data is {why}")
        x = x.to(dtype)
        vae.check_data(x, probabilities=settings.binarize and name == "training")
        if x.shape[0] < world:
            raise ConfigError(f"{x.shape[0]} {name} example(s) are too few for {world} ranks; "
                              "give at least one per rank")
        out.append(x)
    if not vae.amortized and vae.num_data != out[0].shape[0]:
        raise ConfigError(f"the guide holds parameters for {vae.num_data} examples but the "
                          f"training set has {out[0].shape[0]}; build it with "
                          f"num_data={out[0].shape[0]}")
    if settings.batch_size % world:
        raise ConfigError(f"batch_size {settings.batch_size} is the global batch of {world} "
                          f"ranks and must be a multiple of {world}; each rank takes "
                          f"batch_size / {world} examples of it", "batch_size")
    return out


def checked_labels(vae: VAE, train_x: torch.Tensor, y, test_x, test_y) -> list:
    """The training and test labels, checked against the data and the VAE (-1, unlabelled, in
    semi-supervised training data only); None where the VAE does not read them."""
    kind = vae.supervision
    if kind == "none" and (y is not None or test_y is not None):
        raise ConfigError("labels were given but this VAE has none (supervision 'none'); drop "
                          "y, or build it with supervision='conditional' or 'semi'")
    if kind == "conditional" and (y is None or (test_x is not None and test_y is None)):
        raise ConfigError("the conditional VAE learns p(x|y) from labelled data: pass the labels "
                          "of every example, fit(..., y=labels, test_y=test_labels)")
    pairs = ((train_x, y, kind == "semi"), (test_x, test_y if kind == "conditional" else None,
                                             False))
    return [None if labels is None else check_labels(labels, x.shape[0], vae.num_classes, semi)
            for x, labels, semi in pairs]
