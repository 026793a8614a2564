"""runtime.fp32_products: which library runs the network's fp32 matrix products, decided once per CPU kind.

`auto` takes oneDNN where it was measured clearly faster than MKL (MKL's paths on AMD CPUs: 1.3-1.4x at the
measured shapes, docs/benchmarks.md), MKL elsewhere. The two libraries' results are compared with each other
and with DeepMind's model in tests/test_model_trunk.py and tests/test_model_whole.py.
"""

import json
import sys

import pytest

from af2cpu.config import Fp32Products
from af2cpu.errors import ConfigError
from af2cpu.model.options import Options
from af2cpu.runtime import products


@pytest.mark.parametrize("speedup, expected", [(0.8, "mkl"), (1.1, "mkl"), (1.15, "onednn"), (1.4, "onednn")])
def test_auto_takes_onednn_only_where_it_was_measured_clearly_faster(speedup, expected):
    assert products.resolve_products("auto", speedup=speedup) is Fp32Products(expected)
    # an explicit choice is kept whatever was measured
    for asked in ("mkl", "onednn"):
        assert products.resolve_products(asked, speedup=speedup) is Fp32Products(asked)


def test_a_name_that_is_no_library_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="fp32_products='openblas'.*auto, mkl, onednn"):
        Options(fp32_products="openblas")
    with pytest.raises(ConfigError, match="auto, mkl, onednn"):
        products.resolve_products("openblas")


def test_the_speedup_is_measured_once_per_cpu_kept_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    products.onednn_speedup.cache_clear()
    try:
        speedup = products.onednn_speedup()
        (kept,) = (tmp_path / "af2cpu" / "cpu").glob("fp32-onednn-speedup-*.json")
        record = json.loads(kept.read_text())
        assert speedup == record["speedup"] > 0 and record["mkl_gflops"] > 0 and record["onednn_gflops"] > 0
        assert record["shapes"] == [list(shape) for shape in products.SHAPES]
        # Every later process reads the kept figure: one decision per CPU kind, whatever the noise.
        for kept_speedup, library in ((2.0, Fp32Products.onednn), (0.9, Fp32Products.mkl)):
            kept.write_text(json.dumps({**record, "speedup": kept_speedup}))
            products.onednn_speedup.cache_clear()
            assert products.resolve_products("auto") is library
            assert Options(fp32_products="auto").onednn_products is (library is Fp32Products.onednn)
        # MKL capped (MKL_ENABLE_INSTRUCTIONS) is another kind of CPU for MKL: measured for itself.
        monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
        products.onednn_speedup.cache_clear()
        products.onednn_speedup()
        assert len(list(kept.parent.glob("fp32-onednn-speedup-*.json"))) == 2
    finally:
        products.onednn_speedup.cache_clear()


def test_options_decide_where_the_network_runs_not_where_it_is_planned():
    """A planning process (the CLI, `slurm script`) builds Options without importing torch or measuring."""
    import subprocess

    code = ("import sys; from af2cpu.model.options import Options; o = Options(fp32_products='auto'); "
            "print(o.fp32_products.value, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["auto", "False"]


def test_inductors_cache_is_kept_per_kind_of_cpu(monkeypatch):
    """Inductor's graph cache does not tell CPUs apart: one filled with AVX512 code and read with AVX2 gave NaN
    (tests/test_model_precision.py's compiled block, torch 2.13), so af2cpu keeps one folder per CPU kind."""
    from af2cpu.model.alphafold import compile_cache_for_this_cpu

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    native = compile_cache_for_this_cpu("/cache/inductor")
    assert native == compile_cache_for_this_cpu("/cache/inductor")  # the same CPU: the same folder
    assert native.startswith("/cache/inductor/cpu-")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # PyTorch's kernels and inductor's vectors kept to AVX2
    assert compile_cache_for_this_cpu("/cache/inductor") != native
