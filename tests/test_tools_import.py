"""The library apart from its tools: ``import fastsoftmax`` pulls in no tool or heavy optional
dependency, and the tools use the library only through its public names."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

import fastsoftmax

#: what ``import fastsoftmax`` must not import (checked in a fresh process)
HEAVY = ("rich", "matplotlib", "sklearn", "dask", "distributed", "torch", "jax",
         "fastsoftmax.tools")

TOOLS = pathlib.Path(fastsoftmax.__file__).parent / "tools"

#: the only library modules below the public API the tools may use, with the names they may take
ALLOWED_PRIVATE = {"fastsoftmax._jit": {"parallel_kernel", "serial_kernel"},
                   "fastsoftmax._threading": {"active_layer"}}


def test_import_fastsoftmax_imports_no_tool():
    code = ("import sys, fastsoftmax\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_check_above_can_fail():
    """The same probe sees a module that was imported (so the empty answer means something)."""
    code = ("import sys, fastsoftmax, fastsoftmax.tools.cli, rich.console\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "rich" in out.stdout.split() and "fastsoftmax.tools" in out.stdout.split()


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda p: p.name)
def test_tools_use_public_names_only(path):
    """Every import of the library in a tool module is public, or listed in ALLOWED_PRIVATE."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("fastsoftmax"):
            parts = node.module.split(".")
            if any(p.startswith("_") for p in parts):
                assert node.module in ALLOWED_PRIVATE, (path.name, node.module)
                assert {a.name for a in node.names} <= ALLOWED_PRIVATE[node.module], path.name
            assert not any(a.name.startswith("_") and a.name != "__version__"
                           for a in node.names), (path.name, node.module)
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module in {"bench", "check", "head", "memory", "peers", "problems", "cli"}, (path.name, node.module)
            assert not any(a.name.startswith("_") for a in node.names), (path.name, node.module)
        elif isinstance(node, ast.Import):
            for a in node.names:
                assert not (a.name.startswith("fastsoftmax.") and "._" in a.name), (path.name, a.name)


def test_library_does_not_import_tools():
    """No library module imports the tools (``__main__`` runs the command line, so it may)."""
    for path in pathlib.Path(fastsoftmax.__file__).parent.glob("*.py"):
        if path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ("fastsoftmax." if node.level else "") + (node.module or "")
                assert not module.startswith("fastsoftmax.tools"), path.name
                assert not (node.level and node.module is None
                            and any(a.name == "tools" for a in node.names)), path.name
