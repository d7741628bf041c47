"""The console command runs end to end (on a tiny shape, without peers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastsoftmax.tools.cli import main


@pytest.fixture
def restore_threads():
    import numba

    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_bench_writes_json(tmp_path, capsys, restore_threads):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--shape", "300x7x3", "--dtype", "float32",
                 "--no-peers", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    impls = {r["impl"] for r in data["results"]}
    assert impls == {"fused", "indexloop", "numpy"}
    assert all(r["median_s"] > 0 and r["dtype"] == "float32" for r in data["results"])
    assert data["floor"]["read_gb_s"] > 0 and data["floor"]["gemm_gflop_s"]["float32"] > 0
    assert data["machine"]["numba_threads"] == 1
    printed = capsys.readouterr().out
    assert "fused" in printed and "vs numpy" in printed


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "speedups.png"
    assert main(["bench", "--quick", "--shape", "200x5x2", "--no-peers", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_shape_is_rejected():
    with pytest.raises(SystemExit):
        main(["bench", "--shape", "10x0x3"])


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastsoftmax", "--help"],
                         capture_output=True, text=True, check=True)
    assert "bench" in out.stdout


def test_check_passes(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "numba" in out and "threading layer" in out


def test_check_reports_failure(monkeypatch, capsys):
    import fastsoftmax.tools.check as check

    monkeypatch.setattr(check, "run_checks",
                        lambda: [check.Check("broken", False, "max abs difference 1")])
    assert main(["check"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_thread_limits_are_restored(restore_threads):
    from threadpoolctl import threadpool_info

    before = sorted((d["filepath"], d["num_threads"]) for d in threadpool_info())
    assert main(["bench", "--quick", "--shape", "200x5x2", "--no-peers", "--threads", "1"]) == 0
    after = sorted((d["filepath"], d["num_threads"]) for d in threadpool_info())
    assert [a for a in after if a[0] in dict(before)] == before


# --- --threads: validated, and restored after an in-process call ---------------

@pytest.mark.parametrize("value", ["0", "-2", "many", "NUMBA_NUM_THREADS+1"])
def test_bad_thread_count_is_an_argparse_error(value, capsys):
    import numba

    if value == "NUMBA_NUM_THREADS+1":
        value = str(numba.config.NUMBA_NUM_THREADS + 1)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--shape", "200x5x2", "--no-peers", "--threads", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "Traceback" not in err
    assert f"between 1 and {numba.config.NUMBA_NUM_THREADS}" in err or "integer" in err


def test_bad_thread_count_from_the_console_gives_no_traceback():
    out = subprocess.run([sys.executable, "-m", "fastsoftmax", "bench", "--threads", "0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "--threads" in out.stderr


def test_numba_thread_count_is_restored(restore_threads):
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("numba has one thread: nothing to restore")
    numba.set_num_threads(most)
    assert main(["bench", "--quick", "--shape", "200x5x2", "--no-peers", "--threads", "1"]) == 0
    assert numba.get_num_threads() == most
    numba.set_num_threads(most - 1 if most > 2 else 1)
    before = numba.get_num_threads()
    assert main(["bench", "--quick", "--shape", "200x5x2", "--no-peers", "--threads", str(most)]) == 0
    assert numba.get_num_threads() == before


# --- check compares every output ----------------------------------------------

def test_check_fails_on_a_wrong_db(monkeypatch):
    """A fused method whose db is off by 1e-4 (dW and loss right) fails both the
    comparison with NumPy and the finite differences."""
    import fastsoftmax as fs
    import fastsoftmax.tools.check as check

    def wrong_db(W, X, y, *, method="fused", **kw):
        out = fs.loss_and_grad(W, X, y, method=method, **kw)
        if method == "fused" and len(out) == 3:
            return out[0], out[1], out[2] + 1e-4
        return out

    monkeypatch.setattr(check, "loss_and_grad", wrong_db)
    checks = check.run_checks()
    failed = {c.name for c in checks if not c.passed}
    assert any(n.startswith("fused = numpy") and "all options" in n for n in failed)
    assert {"fused gradient = finite differences, labels",
            "fused gradient = finite differences, dense"} <= failed
    assert all(c.passed for c in checks if c.name.startswith("indexloop"))
    assert all("(db)" in c.detail for c in checks if not c.passed)


# --- the table fits an 80-column terminal; the floor has its spread -----------

def test_table_fits_80_columns(monkeypatch, capsys):
    """The longest names (shape "many-classes/10", method "torch-linear-ce") in
    both dtypes: nothing cut with "…", no line wider than 80 columns."""
    import fastsoftmax.tools.bench as bench

    monkeypatch.setenv("COLUMNS", "80")
    # the quick shape's name with fewer rows and features, to keep the test short
    monkeypatch.setitem(bench.QUICK_SHAPES, "many-classes/10", (2_000, 16, 1_000))
    assert main(["bench", "--quick", "--shape", "many-classes/10", "--shape", "100000x3x2",
                 "--dtype", "float64", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "..." not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "many-classes/10" in out and "2k·16·1k" in out and "100k·3·2" in out
    assert "f64" in out and "f32" in out and "fused" in out


def test_floor_is_a_median_with_its_range(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--shape", "300x7x3", "--no-peers", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    floor = data["floor"]
    assert floor["probes"] >= 3
    lo, hi = floor["read_gb_s_range"]
    assert 0 < lo <= floor["read_gb_s"] <= hi
    for dtype in ("float64", "float32"):
        lo, hi = floor["gemm_gflop_s_range"][dtype]
        assert 0 < lo <= floor["gemm_gflop_s"][dtype] <= hi
    for r in data["results"]:
        f = r["of_floor"]
        assert 0 < f["min"] <= f["median"] <= f["max"]


def test_check_fails_on_a_wrong_hessian_product(monkeypatch):
    """A fused Hessian product off by 1e-3 relative fails both the comparison
    with NumPy and the finite differences of the gradient; the index-loop one passes."""
    import fastsoftmax as fs
    import fastsoftmax.tools.check as check

    def wrong(W, X, y, V, *, method="fused", **kw):
        out = fs.hessian_product(W, X, y, V, method=method, **kw)
        if method == "fused":
            return tuple(o * (1 + 1e-3) for o in out)
        return out

    monkeypatch.setattr(check, "hessian_product", wrong)
    checks = check.run_checks()
    failed = {c.name for c in checks if not c.passed}
    assert {c.name for c in checks if c.name.startswith("Hessian product fused")} <= failed
    assert "fused Hessian product = finite differences of the gradient" in failed
    assert all(c.passed for c in checks if c.name.startswith("Hessian product indexloop"))
    assert len(failed) == 5


# --- the "head" family: a network's output layer, gradients for X too ---------

def test_bench_head_family(tmp_path, capsys, restore_threads):
    """fs.linear_cross_entropy's methods and PyTorch's two ways (when installed),
    checked against each other and timed; the table compares with the faster torch path."""
    out = tmp_path / "head.json"
    assert main(["bench", "--family", "head", "--quick", "--shape", "200x8x30",
                 "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["family"] == "head"
    impls = {r["impl"] for r in data["results"]}
    assert {"fused", "indexloop", "numpy"} <= impls
    import importlib.util

    peers = {"torch", "torch-linear-ce"}
    if importlib.util.find_spec("torch") is None:
        assert peers <= set(data["skipped"])
    else:
        assert "torch" in impls and peers <= impls | set(data["skipped"])
    assert all(r["dtype"] == "float32" and r["median_s"] > 0 for r in data["results"])
    printed = capsys.readouterr().out
    assert "network head" in printed and "vs torch" in printed and "6mnK" in printed


def test_bench_head_family_without_torch(monkeypatch, capsys):
    """Without PyTorch the peers are skipped with the reason and the speed-up column is empty."""
    import fastsoftmax.tools.head as head

    def missing(*args):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(head, "HEAD_PEERS", {"torch": missing, "torch-linear-ce": missing})
    assert main(["bench", "--family", "head", "--quick", "--shape", "100x4x20",
                 "--dtype", "float64"]) == 0
    printed = capsys.readouterr().out
    assert "skipped torch: not installed" in printed and "fused" in printed


def test_bench_head_family_catches_a_wrong_gradient(monkeypatch):
    """A peer whose dX is off by 1e-2 relative fails the check before any timing."""
    import fastsoftmax as fs
    import fastsoftmax.tools.head as head

    def wrong_dX(W, X, y, b):
        def run():
            loss, dX, dW, db = fs.linear_cross_entropy(X, W, y, b=b, method="numpy")
            return loss, dX * 1.01, dW, db
        return run

    monkeypatch.setattr(head, "HEAD_PEERS", {"wrong": wrong_dX})
    with pytest.raises(RuntimeError, match="wrong disagrees"):
        main(["bench", "--family", "head", "--quick", "--shape", "100x4x20", "--dtype", "float64"])


def test_head_shapes_are_known_names(capsys):
    """The head family's shapes are names --shape accepts (an unknown name lists them)."""
    from fastsoftmax.tools.head import HEAD_QUICK_SHAPES, HEAD_SHAPES

    assert HEAD_SHAPES == {"lm-32k": (4096, 1024, 32_000), "lm-128k": (2048, 2048, 128_256)}
    with pytest.raises(SystemExit):
        main(["bench", "--family", "head", "--shape", "lm-1"])
    err = capsys.readouterr().err
    assert all(name in err for name in [*HEAD_SHAPES, *HEAD_QUICK_SHAPES])


def test_head_floor_counts_three_products():
    from fastsoftmax.tools.bench import Floor

    floor = Floor(read_gb_s=1e9, gemm_gflop_s={"float32": 100.0})
    m, n, K = 4096, 1024, 32_000
    assert floor.seconds(m, n, K, "float32", gemms=3) == pytest.approx(6 * m * n * K / 100e9)
    assert floor.seconds(m, n, K, "float32") == pytest.approx(4 * m * n * K / 100e9)
