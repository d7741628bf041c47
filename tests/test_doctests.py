"""The Examples in the package's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fastsoftmax

#: Optional dependencies: a module that needs a missing one is skipped.
OPTIONAL = {"sklearn", "dask", "distributed", "rich", "matplotlib", "torch", "jax"}


def modules() -> list[str]:
    names = ["fastsoftmax"]
    for info in pkgutil.walk_packages(fastsoftmax.__path__, prefix="fastsoftmax."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # running it would run the CLI
            names.append(info.name)
    return sorted(names)


MODULES = modules()


@pytest.mark.parametrize("name", MODULES)
def test_doctests_pass(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {exc.name}")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


def test_the_documented_examples_are_found():
    """The Examples of the public functions are collected (a finder that misses them fails)."""
    found = {}
    for name in ("fastsoftmax._api", "fastsoftmax._primitives"):
        module = importlib.import_module(name)
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
            found[test.name.rsplit(".", 1)[-1]] = len(test.examples)
    for func in ("loss_and_grad", "softmax", "log_softmax", "logsumexp"):
        assert found.get(func, 0) > 0, (func, found)
