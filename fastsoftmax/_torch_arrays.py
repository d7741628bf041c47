"""Tensors to and from NumPy for :mod:`fastsoftmax.torch`: checks, zero-copy views, dtypes.

The kernels take NumPy arrays; a CPU tensor is handed to them as a view of
its own memory (``Tensor.numpy()``: no copy, its strides kept), and their
results come back as tensors over the NumPy arrays (``torch.from_numpy``:
no copy either).  Only a change of dtype copies: bfloat16 and float16
tensors are computed in float32 (bfloat16's bits are the top half of a
float32's, so the conversion is exact).
"""

from __future__ import annotations

import numpy as np
import torch

#: dtype of the tensors -> dtype the kernels compute in
COMPUTE_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}


def check_tensor(name: str, t) -> None:
    """TypeError unless ``t`` is a tensor in the CPU's memory (a CUDA, meta or other
    device's tensor is named with its device)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise TypeError(
            f"{name} is on device {str(t.device)!r}: fastsoftmax.torch computes on the CPU "
            f"only (its kernels read the tensors' memory through NumPy); move the tensors "
            f"with .cpu(), or use torch.nn.functional.linear_cross_entropy on "
            f"{t.device.type} tensors")
    if t.layout != torch.strided:
        raise TypeError(f"{name} is a {t.layout} tensor: fastsoftmax.torch takes dense "
                        f"(strided) tensors; convert it with .to_dense()")


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the kernels use for ``t``'s dtype; TypeError for other dtypes."""
    try:
        return COMPUTE_DTYPE[t.dtype]
    except KeyError:
        raise TypeError(f"input has dtype {t.dtype}: fastsoftmax.torch takes float32, "
                        f"float64, bfloat16 and float16 tensors") from None


def as_numpy(t: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    """A NumPy array over ``t``'s memory (strides kept, no copy), detached from
    autograd; converted to ``dtype`` (a copy) when given and different."""
    t = t.detach()
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.resolve_neg().numpy()


def as_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor over ``a``'s memory (no copy), converted to ``dtype`` if that differs."""
    t = torch.from_numpy(np.asarray(a))
    return t if t.dtype == dtype else t.to(dtype)
