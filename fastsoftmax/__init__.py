"""fastsoftmax: fast, exact softmax-regression loss and gradient kernels for the CPU.

Entry points: :func:`loss_and_grad` (softmax regression),
:func:`linear_cross_entropy` (an output layer: gradients for its input too),
:func:`loss_and_grad_logits` (an output layer's logits), the Hessian products
:func:`loss_grad_hessp`, :func:`hessian_product` and :func:`hessian`, the
row-wise :func:`softmax`, :func:`log_softmax` and :func:`logsumexp`,
``SoftmaxRegression`` and ``SoftmaxRegressionCV`` (need scikit-learn) and :mod:`fastsoftmax.dask` (needs
Dask).  They take NumPy arrays and anything ``np.asarray`` turns into a
numeric array, and ``loss_and_grad`` and the Hessian-vector products also a
SciPy CSR matrix or array for X;
Dask collections, other sparse input and GPU arrays raise ``TypeError``
saying what to do instead.

Threading layer (a process-wide effect of ``import fastsoftmax``): unless
``NUMBA_THREADING_LAYER`` is set, importing the package sets numba's
threading layer for the whole process to TBB when TBB can be loaded (numba's
GNU OpenMP fallback is not fork-safe), and loads ``libtbb`` with
``RTLD_GLOBAL`` to make it loadable.  Both affect every other Numba library
in the same process.  Set ``FASTSOFTMAX_THREADING_LAYER=numba`` before the
import to keep numba's own choice.  ``FASTSOFTMAX_CACHE=0`` compiles every
kernel without numba's on-disk cache.
"""

from ._threading import choose_threading_layer

choose_threading_layer()  # before any parallel kernel runs: TBB when available

from ._api import linear_cross_entropy, loss_and_grad, loss_and_grad_logits  # noqa: E402
from ._primitives import log_softmax, logsumexp, softmax  # noqa: E402
from ._hessian import HessianProduct, hessian, hessian_product, loss_grad_hessp  # noqa: E402

__version__ = "0.1.0"

# SoftmaxRegression and SoftmaxRegressionCV are left out of __all__: it needs the optional scikit-learn,
# and "from fastsoftmax import *" must work without it.
__all__ = [
    "loss_and_grad", "loss_and_grad_logits", "linear_cross_entropy", "softmax", "log_softmax",
    "logsumexp", "loss_grad_hessp", "hessian_product", "hessian", "HessianProduct",
    "__version__",
]


def __getattr__(name: str):
    # The estimator needs scikit-learn, an optional extra: import it on first use.
    if name in ("SoftmaxRegression", "SoftmaxRegressionCV"):
        try:
            from . import estimator, estimator_cv
        except ImportError as exc:
            raise ImportError(
                f"fastsoftmax.{name} needs scikit-learn (>= 1.6); install it with "
                "pip install 'fastsoftmax[sklearn]'") from exc
        return estimator.SoftmaxRegression if name == "SoftmaxRegression" \
            else estimator_cv.SoftmaxRegressionCV
    raise AttributeError(f"module 'fastsoftmax' has no attribute {name!r}")
