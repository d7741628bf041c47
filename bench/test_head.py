"""A network's output layer (head) in PyTorch: loss forward and backward, float32.

Three ways to get the loss and the gradients for the input, the weights and
the bias of a linear layer followed by cross-entropy, on the same tensors:

- ``fastsoftmax.torch``: ``fastsoftmax.torch.linear_cross_entropy`` + backward;
- ``torch-linear-ce``: ``torch.nn.functional.linear_cross_entropy`` + backward
  (when this torch has it);
- ``torch-ce-of-logits``: ``F.cross_entropy(F.linear(X, W, b), y)`` + backward.

Each is checked against the last computed in float64 before it is timed
(the check is the warm-up).  The thread counts (torch's intra-op pool and
numba's) are recorded in ``extra_info``; both default to the machine's
cores.  Shapes: (m, n, K) = (1024, 512, 8192), or (64, 16, 50) under
FASTSOFTMAX_BENCH_TINY=1; larger language-model heads are a matter of
editing ``SHAPES``.  Numbers from a shared or loaded machine mean little.
"""

from __future__ import annotations

import numba
import pytest

from conftest import sized

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    pytest.skip("torch not installed", allow_module_level=True)

import fastsoftmax.torch as fst  # noqa: E402

#: name -> (m, n, K): samples (tokens), hidden size, classes (vocabulary)
SHAPES = sized({"head-medium": (1024, 512, 8192)}, {"head-tiny": (64, 16, 50)})


def torch_linear_ce(X, W, y, b):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("F.linear_cross_entropy not installed (torch too old)")
    return F.linear_cross_entropy(X, W, y, linear_bias=b)


def torch_ce_of_logits(X, W, y, b):
    return F.cross_entropy(F.linear(X, W, b), y)


def fastsoftmax_lce(X, W, y, b):
    return fst.linear_cross_entropy(X, W, y, linear_bias=b)


IMPLS = {"fastsoftmax.torch": fastsoftmax_lce, "torch-linear-ce": torch_linear_ce,
         "torch-ce-of-logits": torch_ce_of_logits}


def make_head(m: int, n: int, K: int, dtype=torch.float32):
    """Hidden states X (m, n), weights W (K, n) and bias b (K,) that require grad,
    labels y (m,): logits of a few units, as in a trained head."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(m, n, generator=g).to(dtype).requires_grad_()
    W = (torch.randn(K, n, generator=g) / n**0.5).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(K, generator=g)).to(dtype).requires_grad_()
    y = torch.randint(0, K, (m,), generator=g)
    return X, W, y, b


def forward_backward(fn, X, W, y, b):
    """The loss, and the three gradients left in .grad."""
    for t in (X, W, b):
        t.grad = None
    loss = fn(X, W, y, b)
    loss.backward()
    return loss


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_head(benchmark, shape, impl):
    m, n, K = SHAPES[shape]
    X, W, y, b = make_head(m, n, K)
    fn = IMPLS[impl]
    leaves64 = [t.detach().double().requires_grad_() for t in (X, W, b)]
    ref = forward_backward(torch_ce_of_logits, leaves64[0], leaves64[1], y, leaves64[2])
    got = forward_backward(fn, X, W, y, b)  # warm-up (compilation) and check
    torch.testing.assert_close(got.double(), ref.detach(), rtol=2e-3, atol=0)
    for name, t, r in zip(("dX", "dW", "db"), (X, W, b), leaves64):
        scale = float(r.grad.abs().max())
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=2e-3, atol=2e-3 * scale,
                                   msg=lambda msg, name=name: f"{impl} {name}: {msg}")
    benchmark.group = f"{shape} ({m}x{n}x{K}) float32, loss + backward"
    benchmark.extra_info.update(shape=shape, m=m, n=n, K=K, dtype="float32", impl=impl,
                                torch_threads=torch.get_num_threads(),
                                numba_threads=numba.get_num_threads())
    benchmark(forward_backward, fn, X, W, y, b)
