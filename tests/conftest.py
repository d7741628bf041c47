import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# The default profile (CI's) is derandomized: the same examples on every run,
# so a commit's result does not depend on the draw.  "thorough" draws new
# examples every run, ten times as many.
settings.register_profile(
    "default", deadline=None, max_examples=60, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=600,
                          derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=["serial", "parallel-small-tiles"])
def kernel_path(request, monkeypatch):
    """Run a test on both code paths of the fused kernel.

    "serial": one chunk, no parallel region, default tiles (what small
    problems use); "parallel-small-tiles": the parallel kernel even for tiny
    problems (never run inline on the calling thread), with 3-row tiles so
    that every chunk has several tiles and the last tile is partial (the
    full Hessian's products in blocks of two features, and its direct
    sums for two classes only), and the
    compiled passes over parameter-sized arrays (``_vectors``) at any size.
    The sparse column passes (Newton-CG's, from X's transpose) run in one
    part on "serial", in 4 parts of 3-row tiles on the other.
    The per-tile products run on the micro-kernels (``_tile_gemm``) or on
    BLAS whatever the shape: the micro-kernels for float64 on the serial
    path and for float32 on the parallel one (3-row tiles: their one-row
    blocks), BLAS for the other two, so that each dtype runs both.
    """
    import fastsoftmax._dispatch as policy

    if request.param == "serial":
        monkeypatch.setattr(policy, "SERIAL_WORK", 2**62)
        monkeypatch.setattr(policy, "SPARSE_COLUMN_PARTS", 1)
        monkeypatch.setattr(policy, "tile_gemm", lambda n, K, itemsize: itemsize == 8)
    else:
        monkeypatch.setattr(policy, "tile_gemm", lambda n, K, itemsize: itemsize == 4)
        monkeypatch.setattr(policy, "SERIAL_WORK", 0)
        monkeypatch.setattr(policy, "INLINE_WORK", 0)
        monkeypatch.setattr(policy, "COMPILED_VECTOR_MIN_ENTRIES", 0)
        monkeypatch.setattr(policy, "tile_rows", lambda n, K, itemsize: 3)
        monkeypatch.setattr(policy, "hessian_plan", lambda nt, K, classes: (3, 2, classes == 2))
        monkeypatch.setattr(policy, "logits_tile_rows", lambda K: 3)
        monkeypatch.setattr(policy, "sparse_column_tile_rows", lambda K: 3)
        monkeypatch.setattr(policy, "SPARSE_COLUMN_PARTS", 4)
    return request.param
