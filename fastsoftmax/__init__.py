"""fastsoftmax: fast, exact softmax-regression loss and gradient kernels for the CPU."""

from ._threading import choose_threading_layer

choose_threading_layer()  # before any parallel kernel runs: TBB when available

from ._api import loss_and_grad, loss_and_grad_logits  # noqa: E402
from ._primitives import log_softmax, logsumexp, softmax  # noqa: E402
from ._hessian import HessianProduct, hessian, hessian_product, loss_grad_hessp  # noqa: E402

__version__ = "0.1.0"

# SoftmaxRegression is left out of __all__: it needs the optional scikit-learn,
# and "from fastsoftmax import *" must work without it.
__all__ = [
    "loss_and_grad", "loss_and_grad_logits", "softmax", "log_softmax", "logsumexp",
    "loss_grad_hessp", "hessian_product", "hessian", "HessianProduct",
    "__version__",
]


def __getattr__(name: str):
    # The estimator needs scikit-learn, an optional extra: import it on first use.
    if name == "SoftmaxRegression":
        try:
            from .estimator import SoftmaxRegression
        except ImportError as exc:
            raise ImportError(
                "fastsoftmax.SoftmaxRegression needs scikit-learn (>= 1.6); install it with "
                "pip install 'fastsoftmax[sklearn]'") from exc
        return SoftmaxRegression
    raise AttributeError(f"module 'fastsoftmax' has no attribute {name!r}")
