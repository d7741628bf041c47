"""Other libraries' loss-and-gradient, set up for side-by-side timing.

Each factory takes ``(W, X, y, b)`` (NumPy arrays, one float dtype, class
labels) and returns a zero-argument callable computing the mean cross-entropy
loss and its gradients, returned as ``(loss, dW, db)`` NumPy values so they
can be checked against :func:`fastsoftmax.loss_and_grad` (the head peers,
:data:`HEAD_PEERS`: ``(loss, dX, dW, db)``, against
:func:`fastsoftmax.linear_cross_entropy`); or raises
``ImportError`` when the library is not installed.  The data are converted to
the library's own types once, outside the callable, so only the computation
is timed.  Thread counts follow ``numba.get_num_threads()`` where the library
allows setting them at run time.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np

Runner = Callable[[], tuple]


def sklearn_loss_gradient(W, X, y, b) -> Runner:
    """scikit-learn's ``LinearModelLoss.loss_gradient`` (multinomial loss).

    This is the private object ``LogisticRegression(solver="lbfgs")`` calls
    once per iteration; it lives in ``sklearn.linear_model._linear_loss``.
    """
    from sklearn._loss.loss import HalfMultinomialLoss
    from sklearn.linear_model._linear_loss import LinearModelLoss

    K, n = W.shape
    model = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=K), fit_intercept=True)
    coef = np.hstack([W, b[:, None]])  # (K, n + 1), the intercept last
    y_float = y.astype(X.dtype)
    threads = numba.get_num_threads()

    def run():
        loss, grad = model.loss_gradient(coef, X, y_float, n_threads=threads)
        return float(loss), grad[:, :n], grad[:, n]

    return run


def _torch_setup(W, X, y, b):
    import torch

    torch.set_num_threads(numba.get_num_threads())
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    yt = torch.from_numpy(y.astype(np.int64))
    Wt = torch.from_numpy(W.copy()).requires_grad_()
    bt = torch.from_numpy(b.copy()).requires_grad_()
    return torch, Xt, yt, Wt, bt


def _torch_runner(loss_of, Wt, bt) -> Runner:
    def run():
        Wt.grad = None
        bt.grad = None
        loss = loss_of()
        loss.backward()
        return float(loss.item()), Wt.grad.numpy(), bt.grad.numpy()

    return run


def torch_cross_entropy(W, X, y, b) -> Runner:
    """PyTorch: ``F.cross_entropy(F.linear(X, W, b), y)`` and ``backward()``."""
    torch, Xt, yt, Wt, bt = _torch_setup(W, X, y, b)
    F = torch.nn.functional
    return _torch_runner(lambda: F.cross_entropy(F.linear(Xt, Wt, bt), yt), Wt, bt)


def torch_linear_cross_entropy(W, X, y, b) -> Runner:
    """PyTorch's fused ``F.linear_cross_entropy`` (torch >= 2.10) and ``backward()``."""
    torch, Xt, yt, Wt, bt = _torch_setup(W, X, y, b)
    F = torch.nn.functional
    if not hasattr(F, "linear_cross_entropy"):
        raise ImportError("torch.nn.functional.linear_cross_entropy needs a newer PyTorch")
    return _torch_runner(lambda: F.linear_cross_entropy(Xt, Wt, yt, linear_bias=bt), Wt, bt)


def jax_value_and_grad(W, X, y, b) -> Runner:
    """JAX: ``jit(value_and_grad(loss))`` of the log-sum-exp formulation.

    Enables JAX's 64-bit mode (a process-wide setting) so float64 stays float64.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def loss(W, b, X, y):
        z = X @ W.T + b
        picked = jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - picked)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    args = (jnp.asarray(W), jnp.asarray(b), jnp.asarray(X), jnp.asarray(y))

    def run():
        value, (gW, gb) = step(*args)
        gW.block_until_ready()
        return float(value), np.asarray(gW), np.asarray(gb)

    return run


def _torch_head_runner(loss_of, Xt, Wt, bt) -> Runner:
    def run():
        for t in (Xt, Wt, bt):
            t.grad = None
        loss = loss_of()
        loss.backward()
        return float(loss.item()), Xt.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy()

    return run


def torch_head_cross_entropy(W, X, y, b) -> Runner:
    """A network's head in PyTorch: ``F.cross_entropy(F.linear(X, W, b), y)`` and
    ``backward()`` with the gradients for X, W and b: ``(loss, dX, dW, db)``."""
    torch, Xt, yt, Wt, bt = _torch_setup(W, X, y, b)
    Xt = Xt.clone().requires_grad_()
    F = torch.nn.functional
    return _torch_head_runner(lambda: F.cross_entropy(F.linear(Xt, Wt, bt), yt), Xt, Wt, bt)


def torch_head_linear_cross_entropy(W, X, y, b) -> Runner:
    """A network's head in PyTorch: ``F.linear_cross_entropy`` (torch >= 2.10) and
    ``backward()`` with the gradients for X, W and b: ``(loss, dX, dW, db)``."""
    torch, Xt, yt, Wt, bt = _torch_setup(W, X, y, b)
    Xt = Xt.clone().requires_grad_()
    F = torch.nn.functional
    if not hasattr(F, "linear_cross_entropy"):
        raise ImportError("torch.nn.functional.linear_cross_entropy needs a newer PyTorch")
    return _torch_head_runner(lambda: F.linear_cross_entropy(Xt, Wt, yt, linear_bias=bt),
                              Xt, Wt, bt)


#: name -> factory, in the order they are shown
PEERS: dict[str, Callable[..., Runner]] = {
    "sklearn": sklearn_loss_gradient,
    "torch": torch_cross_entropy,
    "torch-linear-ce": torch_linear_cross_entropy,
    "jax": jax_value_and_grad,
}

#: the "head" family's peers (gradients for X too): name -> factory, in the order they are shown
HEAD_PEERS: dict[str, Callable[..., Runner]] = {
    "torch": torch_head_cross_entropy,
    "torch-linear-ce": torch_head_linear_cross_entropy,
}
