"""The README runs as written (issue 12).

Every ``python`` block of README.md, in order and in one namespace, as one
script in a fresh process (the blocks build on each other: the worked
example's data feed the later ones).  The script is run as a file under
``if __name__ == "__main__":`` because the Dask example starts worker
processes, which re-import the main script.  The ``bash`` blocks other than
the install commands at the top (which are CI's own) run under the ``slow``
marker: ``python -m pytest tests/test_readme.py -m slow``.

PyTorch is in the test extra, but a block that imports it is left out when
it is not installed (the rest still runs), so that the README test does not
depend on it.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[str]:
    if not README.exists():
        pytest.skip("README.md is not beside the tests (installed package?)")
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def test_every_code_block_is_marked_with_its_language():
    """Signatures and the like go in ``text`` fences, so that every ``python``
    block is real code (checked below) and nothing else is taken for it."""
    languages = {lang for lang, _ in FENCE.findall(README.read_text())}
    assert languages <= {"python", "bash", "text"}, languages


def runnable(body: str) -> bool:
    """Whether a block can run here: it imports torch only when torch is installed."""
    return "import torch" not in body or importlib.util.find_spec("torch") is not None


def test_python_blocks_run_in_order(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("distributed")
    code = "\n".join(body for body in blocks("python") if runnable(body))
    compile(code, "README.md", "exec")  # a syntax error names the README
    script = tmp_path / "readme_blocks.py"
    script.write_text('if __name__ == "__main__":\n' + textwrap.indent(code, "    ") + "\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]


def install_block(body: str) -> bool:
    return body.lstrip().startswith("pip install")


@pytest.mark.slow
def test_fuzz_command_runs(tmp_path):
    (fuzz,) = [b for b in blocks("bash") if "test_fuzz.py" in b]
    env = dict(os.environ, RANDOM="12345")
    out = subprocess.run(["bash", "-c", fuzz], cwd=README.parent, capture_output=True, text=True,
                         timeout=1800, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_dask_recipe_runs_on_loopback(tmp_path):
    """The scheduler and worker commands, as written, then a client on the
    recipe's address computes a loss; everything listens on 127.0.0.1 only."""
    pytest.importorskip("distributed")
    (recipe,) = [b for b in blocks("bash") if "dask scheduler" in b]
    proc = subprocess.Popen(["bash", "-c", recipe + "\nwait"], cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client_code = textwrap.dedent("""
        import numpy as np, fastsoftmax as fs, fastsoftmax.dask as fsd, dask.array as da
        from distributed import Client
        with Client("tcp://127.0.0.1:8786", timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            X = da.ones((1000, 4), chunks=(250, 4)); y = da.zeros(1000, dtype=int, chunks=250)
            loss, dW = fsd.loss_and_grad(np.zeros((2, 4)), X, y)
            print(round(loss, 6))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", client_code], capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split() == ["0.693147"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        log = proc.communicate(timeout=60)[0]
    assert "0.0.0.0" not in log and "tcp://127.0.0.1:8786" in log, log[-3000:]


def test_bash_blocks_are_known():
    """Every bash block is the install commands or run by a slow test above."""
    for body in blocks("bash"):
        assert install_block(body) or "test_fuzz.py" in body or "dask scheduler" in body, body
