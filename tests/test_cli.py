"""The console command runs end to end (on a tiny shape, without peers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastsoftmax.cli import main


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
    import fastsoftmax._check as check

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
