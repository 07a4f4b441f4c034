import sys
from pathlib import Path

import pyro
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' tensors are tiny: intra-op threads only add contention on 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from an empty param store, fixed seeds and validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(torch.float32)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist_dir():
    """MNIST's raw files in the repository's data/ folder, fetched once by pvae's own routes."""
    from pvae.data.mnist import ensure_mnist

    return ensure_mnist(REPO / "data")


def make_part(cls, **kwargs):
    """``cls(...)`` with those of ``kwargs`` its constructor takes (shared sizes and options)."""
    import inspect

    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in params})
