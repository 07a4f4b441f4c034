"""Labels in the model (docs/labels.rst): the label site ``"y"``, the classifier q(y|x) of the
semi-supervised M2 model, the one-hot input of p(x|z,y) and q(z|x,y), and the checks of labels."""
from typing import Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from .nets import mlp

LABEL_SITE = "y"
UNLABELLED = -1
"""The label of a training example whose label is not given (semi-supervised training)."""
SUPERVISIONS = ("none", "conditional", "semi")


class Classifier(nn.Module):
    """q_φ(y|x) = Categorical(softmax(f_φ(x))), f an MLP to ``num_classes`` logits."""

    def __init__(self, x_dim: int, num_classes: int, hidden_dims: Sequence[int] = (200, 200),
                 activation: str = "tanh"):
        super().__init__()
        self.num_classes = int(num_classes)
        self.net = mlp(x_dim, hidden_dims, self.num_classes, activation)

    def forward(self, x: torch.Tensor) -> dist.Categorical:
        return dist.Categorical(logits=self.net(x))


def join_label(a: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[a, one-hot(y)] along the last dim, the batch dims of ``a`` and ``y`` broadcast: under
    parallel enumeration y is (C, 1) and a (B, D), giving (C, B, D + C)."""
    code = F.one_hot(y.long(), num_classes).to(a.dtype)
    shape = torch.broadcast_shapes(a.shape[:-1], code.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), code.expand(shape + code.shape[-1:])], -1)


def check_labels(y, n: int, num_classes: int, unlabelled: bool = False) -> torch.Tensor:
    """``y`` as int64 after the checks: a tensor of ``n`` whole numbers in 0 … K − 1 (and
    :data:`UNLABELLED` where ``unlabelled``); DataError naming the problem and the fix."""
    if not isinstance(y, torch.Tensor):
        raise DataError(f"labels y must be a torch.Tensor of class indices, got "
                        f"{type(y).__name__}; wrap a NumPy array with torch.from_numpy")
    if y.dim() != 1 or y.shape[0] != n:
        raise DataError(f"labels y must hold one class per example, shape ({n},), got "
                        f"{tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        nan = y.is_floating_point() and bool(torch.isnan(y).any())
        raise DataError("labels y contain NaN; drop those examples or mark them unlabelled (-1)"
                        if nan else f"labels y must be whole class indices (an integer tensor), "
                        f"got dtype {y.dtype}; pass y.long() if they are whole numbers")
    low = UNLABELLED if unlabelled else 0
    if n and (int(y.min()) < low or int(y.max()) >= num_classes):
        allowed = f"0 … {num_classes - 1}" + (" or -1 (unlabelled)" if unlabelled else "")
        raise DataError(f"labels y must lie in {allowed} for {num_classes} classes, got values "
                        f"from {int(y.min())} to {int(y.max())}")
    return y.long()


@torch.no_grad()
def conditional_samples(vae, n: int) -> torch.Tensor:
    """E[x|z_j, y=c] of a labelled ``vae`` for the classes c = 0 … K − 1 (rows) and ``n`` draws
    z_j ~ p(z) (columns, one z down each column): a (K·n, x_dim) tensor, row-major."""
    z = vae.prior().sample((n,))
    y = torch.arange(vae.num_classes, device=z.device)[:, None]
    return vae.likelihood.mean(join_label(z, y, vae.num_classes)).reshape(-1, vae.x_dim)


def classifier_term(vae, x: torch.Tensor, y: torch.Tensor) -> None:
    """M2's auxiliary term as a Pyro model: y observed under ``vae``'s classifier q(y|x), scaled
    by α with ``poutine.scale``; paired with an empty guide its loss is −α·Σ log q(y|x). The
    classifier's weights enter as the module's tensors (as in ``fit``'s step), not as
    ``pyro.param`` sites."""
    if vae.classifier is None:
        raise ConfigError("only the semi-supervised model has a classifier q(y|x)")
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=vae.config.alpha):
        pyro.sample("y_aux", vae.classifier(x), obs=y)
