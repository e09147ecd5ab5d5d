"""ternref: the executable reference for ternary quantization of neural networks."""

__version__ = "0.1.0"

from ternref.ternary import Ternary  # noqa: E402

__all__ = ["Ternary", "__version__"]
