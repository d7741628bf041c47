"""Error messages name what the caller passed, in the caller's terms (issue 12)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastsoftmax as fs


def message(call) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return str(info.value)


def test_logits_messages_talk_about_z():
    text = message(lambda: fs.loss_and_grad_logits(np.zeros((3, 6)), [0, 1, 9]))
    assert "Z (one column per class)" in text and "W" not in text and "outside [0, 6)" in text


def test_loss_messages_talk_about_w():
    text = message(lambda: fs.loss_and_grad(np.zeros((6, 2)), np.zeros((3, 2)), [0, 1, 9]))
    assert "W (one row per class)" in text


def test_column_vector_labels_get_a_hint():
    text = message(lambda: fs.loss_and_grad(np.zeros((6, 2)), np.zeros((3, 2)), np.zeros((3, 1))))
    assert "column vector" in text and "y.ravel()" in text
    # with one class, (m, 1) dense targets are legitimate
    fs.loss_and_grad(np.zeros((1, 2)), np.zeros((3, 2)), np.ones((3, 1)))


@pytest.mark.parametrize("call", [
    lambda: fs.loss_and_grad(np.zeros((2, 2)), np.zeros((3, 2)), [0, 1, 1],
                             sample_weight=np.array([-1.0, 1.0, 1.0])),
    lambda: fs.loss_and_grad(np.zeros((2, 2)), np.zeros((3, 2)), [0, 1, 1], l2=np.float64(-1.0)),
    lambda: fs.loss_and_grad(np.zeros((2, 2)), np.zeros((3, 2)), np.array([0.0, 1.5, 1.0])),
    lambda: fs.loss_and_grad(np.zeros((2, 2)), np.zeros((3, 2)), -np.ones((3, 2))),
    lambda: fs.loss_and_grad(np.zeros((2, 2)), np.zeros((3, 2)), [0, 1, 1],
                             label_smoothing=np.float32(2.0)),
])
def test_numbers_print_as_numbers(call):
    text = message(call)
    assert "np.float" not in text and "np.int" not in text, text
    assert re.search(r"-?\d", text)


def test_wrong_length_sample_weight():
    text = message(lambda: fs.loss_and_grad(np.zeros((2, 2)), np.zeros((3, 2)), [0, 1, 1],
                                            sample_weight=[1.0, 1.0]))
    assert "sample_weight" in text and "(3,)" in text and "(2,)" in text and "3 samples" in text


def test_wrong_length_sample_weight_in_fit():
    pytest.importorskip("sklearn")
    text = message(lambda: fs.SoftmaxRegression().fit(np.zeros((3, 2)), [0, 1, 1],
                                                      sample_weight=[1.0, 1.0]))
    assert "sample_weight" in text and "3 samples" in text and "got 2" in text


class FakeFrame:
    """Just enough of a data frame: column dtypes and an array conversion."""

    def __init__(self, columns: dict):
        self._columns = columns
        self.dtypes = {name: np.asarray(v).dtype for name, v in columns.items()}

    def __array__(self, dtype=None, copy=None):
        return np.array(list(zip(*self._columns.values())), dtype=object)


def test_data_frame_with_a_non_numeric_column_names_it():
    frame = FakeFrame({"height": [1.0, 2.0, 3.0], "city": ["a", "b", "c"]})
    text = message(lambda: fs.loss_and_grad(np.zeros((2, 2)), frame, [0, 1, 1]))
    assert "'city'" in text and "height" not in text


def test_pandas_data_frame_with_a_non_numeric_column_names_it():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"height": [1.0, 2.0, 3.0], "city": ["a", "b", "c"]})
    text = message(lambda: fs.loss_and_grad(np.zeros((2, 2)), frame, [0, 1, 1]))
    assert "'city'" in text


def test_fit_on_dask_with_unknown_chunks_gives_the_hint():
    pytest.importorskip("sklearn")
    da = pytest.importorskip("dask.array")
    import dask

    X = da.from_array(np.arange(20.0).reshape(10, 2), chunks=(5, 2))
    y = da.from_array(np.arange(10) % 2, chunks=5)
    keep = X[:, 0] > 3
    with dask.config.set(scheduler="synchronous"):
        text = message(lambda: fs.SoftmaxRegression().fit(X[keep], y[keep]))
    assert "compute_chunk_sizes()" in text
