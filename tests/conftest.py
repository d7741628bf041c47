import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=600)
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
    that every chunk has several tiles and the last tile is partial.
    """
    import fastsoftmax._dispatch as policy

    if request.param == "serial":
        monkeypatch.setattr(policy, "SERIAL_WORK", 2**62)
    else:
        monkeypatch.setattr(policy, "SERIAL_WORK", 0)
        monkeypatch.setattr(policy, "INLINE_WORK", 0)
        monkeypatch.setattr(policy, "tile_rows", lambda n, K, itemsize: 3)
        monkeypatch.setattr(policy, "logits_tile_rows", lambda K: 3)
    return request.param
