"""fastsoftmax: fast, exact softmax-regression loss and gradient kernels for the CPU."""

from ._api import loss_and_grad, loss_and_grad_logits

__version__ = "0.1.0"

__all__ = ["loss_and_grad", "loss_and_grad_logits", "__version__"]
