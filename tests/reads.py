"""A count of the reads that bring a tensor's values back to the host (each a device sync on
CUDA), for the tests that a loop reads per epoch or per pass, not per step."""
from torch.overrides import TorchFunctionMode


class Reads(TorchFunctionMode):
    """Within ``with Reads() as reads:``, ``reads.count`` counts ``item``, ``tolist``,
    ``numpy``, ``cpu`` and the ``bool``/``float``/``int``/index conversions of tensors."""

    NAMES = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.NAMES
        return func(*args, **(kwargs or {}))
